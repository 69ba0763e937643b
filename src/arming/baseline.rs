//! A unit's baseline: from the store, shared between units of one image, or
//! snapshotted; checked against what a container changed before it was armed.

use super::*;

impl Armer {
    /// The copy of `baseline` other units of its image already hold, or a new shared one:
    /// fifty containers of one large image hold its baseline once.
    pub(super) fn share(&self, baseline: Baseline) -> Arc<Baseline> {
        let mut shared = self
            .shared_baselines
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        shared.retain(|_, w| w.strong_count() > 0);
        if let Some(existing) = shared
            .get(baseline.key())
            .and_then(std::sync::Weak::upgrade)
        {
            if *existing == baseline {
                return existing;
            }
        }
        let arc = Arc::new(baseline);
        shared.insert(arc.key().to_vec(), Arc::downgrade(&arc));
        arc
    }

    /// The unit's baseline: the stored one for its image key, or a snapshot (stored under
    /// that key) of the image, never of the container's writable state: an overlay rootfs is
    /// snapshotted through its lower layers alone; any other rootfs is snapshotted at its
    /// container's first arm only, and that baseline is reused at every later arm of the same
    /// container (a restart), never taken again. Returns the baseline, where it came from,
    /// and how many files the snapshot skipped.
    pub(super) fn obtain_baseline(
        &self,
        req: &UnitRequest,
        unit: &ResolvedUnit,
        view: &UnitView,
        origin: ArmOrigin,
    ) -> Result<(Baseline, Provenance, usize), ArmError> {
        let indicators = self.indicators.as_ref();
        // A new indicator list means new snapshots: it is part of the store key.
        let with_indicators = |mut k: Vec<u8>| {
            if let Some(i) = indicators {
                k.extend_from_slice(format!("\0indicators:{}", i.digest()).as_bytes());
            }
            k
        };
        let requested = match req.image_key.as_deref() {
            Some(k) => Some(unescape(k).map_err(|e| ArmError::BadPath {
                field: "image_key",
                reason: e.to_string(),
            })?),
            None => None,
        };
        let overlay =
            layers::overlay_at(&unit.rootfs, &unit.mounts, unit.rootfs_stat.mnt_id_legacy);
        if origin == ArmOrigin::Rearm {
            if let Some(exact) = &requested {
                if let Some(b) = self.store.load(exact).map_err(state_dir_error)? {
                    return Ok(self.checked_baseline(req, b, Provenance::Stored, 0));
                }
                if overlay.is_none() {
                    return Err(ArmError::BaselineGone {
                        id: req.id.clone(),
                        key: escape_bytes(exact),
                    });
                }
                log::warn!(
                    "unit {:?}: its stored baseline is gone; snapshotting its image layers again",
                    req.id
                );
            }
        }
        let key = match (origin, requested) {
            (ArmOrigin::Request, Some(k)) => with_indicators(k),
            _ => match overlay {
                Some(entry) => with_indicators(layers_key(req, unit, entry)?),
                None if origin == ArmOrigin::Rearm => {
                    return Err(ArmError::BaselineGone {
                        id: req.id.clone(),
                        key: "(none recorded)".into(),
                    });
                }
                None => with_indicators(container_key(req, unit)),
            },
        };
        let limits = crate::baseline::SnapshotLimits::default();
        let threads = self.snapshot_threads;
        let take = || -> Result<crate::baseline::Snapshot, ArmError> {
            let snapshot = |root: &std::path::Path| {
                crate::baseline::snapshot_limited(root, key.clone(), threads, indicators, limits)
                    .map_err(|e| ArmError::Store(e.into()))
            };
            match overlay {
                Some(entry) => {
                    let lower = layers::mount_lower_view(entry).map_err(ArmError::Layers)?;
                    let mut snap = snapshot(&crate::kernel::overlay::fd_path(&lower))?;
                    let mut source = unit.rootfs.as_os_str().as_bytes().to_vec();
                    source.extend_from_slice(b" (image layers)");
                    snap.baseline = snap.baseline.with_source(source);
                    Ok(snap)
                }
                None => snapshot(&view.access(&unit.rootfs)),
            }
        };
        let (baseline, provenance, snap) = self.store.load_or_else(&key, take, state_dir_error)?;
        let skipped = snap.as_ref().map_or(0, |s| s.errors.len());
        // Each skipped file with its reason (a few: the count says the rest).
        for e in snap.iter().flat_map(|s| s.errors.iter()).take(10) {
            log::warn!("unit {:?}: snapshot skipped {e}", req.id);
        }
        Ok(self.checked_baseline(req, baseline, provenance, skipped))
    }

    /// Logs what an operator must know about a unit's baseline, and passes it on.
    pub(super) fn checked_baseline(
        &self,
        req: &UnitRequest,
        baseline: Baseline,
        provenance: Provenance,
        skipped: usize,
    ) -> (Baseline, Provenance, usize) {
        for bad in baseline.known_bad() {
            log::error!(
                "unit {:?}: {} in the image matches known-bad indicator {}; its execution will be denied",
                req.id,
                escape_bytes(&bad.path),
                bad.indicator
            );
        }
        if skipped > 0 {
            log::warn!(
                "unit {:?}: the snapshot skipped {skipped} files (they will be denied)",
                req.id
            );
        }
        (baseline, provenance, skipped)
    }
}

/// The store key of a container's image layers: its lowerdir, and where a lower layer
/// lies outside a runtime's layer store (it may have changed since another container of
/// the same lowerdir was snapshotted), that tree's state; if that cannot be read, the
/// container's own key (its layers snapshotted for it alone).
fn layers_key(
    req: &UnitRequest,
    unit: &ResolvedUnit,
    entry: &crate::kernel::mountinfo::MountEntry,
) -> Result<Vec<u8>, ArmError> {
    let mut key = derive_image_key(&unit.rootfs, &unit.mounts, unit.rootfs_stat.mnt_id_legacy)
        .ok_or_else(|| ArmError::Layers("the overlay shows no lowerdir".into()))?;
    match layers::mutable_layers_state(entry) {
        Ok(None) => {}
        Ok(Some(state)) => {
            key.extend_from_slice(b"\0layers-state:");
            key.extend_from_slice(state.as_bytes());
        }
        Err(e) => {
            log::warn!(
                "unit {:?}: {e}; its layers are snapshotted for it alone",
                req.id
            );
            key.extend_from_slice(b"\0");
            key.extend_from_slice(&container_key(req, unit));
        }
    }
    Ok(key)
}
