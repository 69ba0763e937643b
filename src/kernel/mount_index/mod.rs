//! The daemon's own mount table without reading `/proc/self/mountinfo` at each arm.
//!
//! With a thousand containers a node has three thousand mounts, and mountinfo prints every
//! overlay's layer list: reading it costs 10–20 ms, at every arm. Where the kernel has
//! `listmount` and `statmount` with mount options (Linux 6.10+), the table is kept as an
//! index by unique mount id (never reused): an arm with no mount change since the last
//! reads nothing (mountinfo's `POLLPRI` says so); after a change, mount notifications
//! (6.15+) name each mount attached, detached or moved, and only those are read again
//! (`statmount`), with the mounts a moved one carried along; where there are none, or after
//! a change none names (a remount), every mount is listed (`listmount`) and read again.
//! Elsewhere mountinfo is read as before.
//!
//! The rooms: `statmount` the raw calls and the reply's layout, `watch` what tells the index
//! that mounts changed, this file the index and the daemon's table.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use super::mountinfo::{MountEntry, MountInfoError, read_mountinfo};

mod statmount;
mod watch;

use statmount::{list_mounts, list_once, read_mount};
use watch::{ChangeWatch, Changed};

/// The first kernel whose `statmount` gives mount options.
const FIRST_KERNEL: (u32, u32) = (6, 10);

/// The daemon's mount table kept by unique mount id: a mount is read (`statmount`) when it
/// first appears and again when a notification says it moved; nothing is read while no
/// change is flagged.
#[derive(Debug, Default)]
pub struct MountIndex {
    /// Unique ids in ascending order, one per entry of `table`.
    ids: Vec<u64>,
    table: Arc<Vec<MountEntry>>,
    watch: Option<ChangeWatch>,
    /// Never asks for mount notifications (as on kernels before 6.15).
    no_notifications: bool,
}

impl MountIndex {
    /// An empty index of the calling thread's mount namespace: the first
    /// [`MountIndex::table`] reads every mount.
    pub fn new() -> Self {
        Self::default()
    }

    /// An index that does without mount notifications, as on kernels before 6.15 (every
    /// mount is read again after a change): for tests of that path on newer kernels.
    pub fn without_notifications() -> Self {
        Self {
            no_notifications: true,
            ..Self::default()
        }
    }

    /// True where the kernel names the mounts that changed (Linux 6.15+ mount
    /// notifications); elsewhere every mount is read again after any change.
    pub fn has_notifications(&self) -> bool {
        self.watch.as_ref().is_some_and(|w| w.notify.is_some())
    }

    /// The mount table now, in mount order (`Err` where the kernel lacks the calls).
    pub fn table(&mut self) -> std::io::Result<Arc<Vec<MountEntry>>> {
        self.refresh()
    }

    fn refresh(&mut self) -> std::io::Result<Arc<Vec<MountEntry>>> {
        let refreshed = self.bring_up_to_date();
        if refreshed.is_err() {
            // Half brought up to date: the next look reads every mount again.
            self.watch = None;
        }
        refreshed
    }

    /// Brings the index up to date: nothing read without a flagged change; the mounts a
    /// notification names read again; else every mount listed and read.
    fn bring_up_to_date(&mut self) -> std::io::Result<Arc<Vec<MountEntry>>> {
        match &self.watch {
            None => {
                // Watching first: a change from here on is flagged for the next look.
                self.watch = Some(ChangeWatch::open(!self.no_notifications)?);
                self.read_every_mount()?;
            }
            Some(watch) => match watch.changed()? {
                Changed::Nothing => {}
                Changed::Mounts(ids) => self.read_again(ids)?,
                Changed::Unknown => self.read_every_mount()?,
            },
        }
        Ok(Arc::clone(&self.table))
    }

    fn read_every_mount(&mut self) -> std::io::Result<()> {
        let ids = list_mounts()?;
        let mut buf = vec![0u64; 8192];
        let mut kept = Vec::with_capacity(ids.len());
        let mut table = Vec::with_capacity(ids.len());
        for id in ids {
            // `None`: unmounted between the listing and now.
            if let Some(entry) = read_mount(id, &mut buf)? {
                kept.push(id);
                table.push(entry);
            }
        }
        self.ids = kept;
        self.table = Arc::new(table);
        Ok(())
    }

    /// Reads the mounts a notification named (attached, detached or moved) and, below a
    /// moved one, every mount it carried along (their mount points changed with it, and no
    /// notification names them).
    fn read_again(&mut self, mut named: Vec<u64>) -> std::io::Result<()> {
        named.sort_unstable();
        named.dedup();
        let mut buf = vec![0u64; 8192];
        let mut read: Vec<(u64, Option<MountEntry>)> = Vec::with_capacity(named.len());
        let mut moved: Vec<u64> = Vec::new();
        for id in named {
            let now = read_mount(id, &mut buf)?;
            if let (Some(e), Ok(at)) = (&now, self.ids.binary_search(&id)) {
                if self.table[at].mount_point != e.mount_point
                    || self.table[at].parent_id != e.parent_id
                {
                    moved.push(self.table[at].mount_id);
                }
            }
            read.push((id, now));
        }
        let carried = self.below(&moved);
        let table = Arc::make_mut(&mut self.table);
        for at in carried {
            let id = self.ids[at];
            if read.iter().all(|(r, _)| *r != id) {
                read.push((id, read_mount(id, &mut buf)?));
            }
        }
        for (id, now) in read {
            match (self.ids.binary_search(&id), now) {
                (Ok(at), Some(e)) => table[at] = e,
                (Ok(at), None) => {
                    self.ids.remove(at);
                    table.remove(at);
                }
                (Err(at), Some(e)) => {
                    self.ids.insert(at, id);
                    table.insert(at, e);
                }
                (Err(_), None) => {}
            }
        }
        Ok(())
    }

    /// The positions of the mounts below the mounts with these (legacy) ids, at any depth.
    fn below(&self, parents: &[u64]) -> Vec<usize> {
        let mut inside: std::collections::HashSet<u64> = parents.iter().copied().collect();
        let mut found = Vec::new();
        if inside.is_empty() {
            return found;
        }
        // A child may have a lower id than its parent (mounted before a move): look again
        // until a pass finds nothing new.
        loop {
            let before = found.len();
            for (at, e) in self.table.iter().enumerate() {
                if inside.contains(&e.parent_id) && inside.insert(e.mount_id) {
                    found.push(at);
                }
            }
            if found.len() == before {
                return found;
            }
        }
    }
}

/// Whether the index is used: decided once, by comparing it with mountinfo.
enum Source {
    Unknown,
    Index(MountIndex),
    MountInfo,
}

static DAEMON_TABLE: Mutex<Source> = Mutex::new(Source::Unknown);

/// This process's mount table, as `read_mountinfo` gives it (in mount order), from the
/// index where the kernel has `listmount` and `statmount` with options, else from
/// `/proc/self/mountinfo`.
pub fn daemon_mount_table() -> Result<Arc<Vec<MountEntry>>, MountInfoError> {
    let mut source = DAEMON_TABLE.lock().unwrap_or_else(PoisonError::into_inner);
    if matches!(*source, Source::Unknown) {
        *source = first_use();
    }
    if let Source::Index(index) = &mut *source {
        match index.refresh() {
            Ok(table) => return Ok(table),
            Err(e) => {
                log::warn!("mount index: {e}: reading /proc/self/mountinfo from now on");
                *source = Source::MountInfo;
            }
        }
    }
    drop(source);
    read_mountinfo().map(Arc::new)
}

/// The daemon's mount table read anew, every mount (`None` where the index is not used:
/// mountinfo is read fresh each time anyway). For a caller whose paths disagree with the
/// table: a directory renamed above a mount point changes its mount point, and neither
/// mountinfo's `POLLPRI` nor a notification says so.
pub fn daemon_mount_table_read_again() -> Option<Arc<Vec<MountEntry>>> {
    let mut source = DAEMON_TABLE.lock().unwrap_or_else(PoisonError::into_inner);
    let Source::Index(index) = &mut *source else {
        return None;
    };
    match index.read_every_mount() {
        Ok(()) => Some(Arc::clone(&index.table)),
        Err(e) => {
            log::warn!("mount index: {e}: reading /proc/self/mountinfo from now on");
            *source = Source::MountInfo;
            drop(source);
            read_mountinfo().ok().map(Arc::new)
        }
    }
}

/// Builds the index and checks it against mountinfo once (the same mounts, field by
/// field, where neither changed in between); a kernel without the calls, or whose index
/// differs, keeps mountinfo.
fn first_use() -> Source {
    let release = super::features::kernel_release();
    if super::features::parse_version(&release).is_none_or(|v| v < FIRST_KERNEL) {
        log::debug!("mount index: kernel {release} before 6.10: reading /proc/self/mountinfo");
        return Source::MountInfo;
    }
    for _ in 0..3 {
        let mut index = MountIndex::default();
        let table = match index.refresh() {
            Ok(t) => t,
            Err(e) => {
                log::debug!("mount index unavailable ({e}): reading /proc/self/mountinfo");
                return Source::MountInfo;
            }
        };
        let Ok(text) = read_mountinfo() else {
            return Source::MountInfo;
        };
        if list_mounts().is_ok_and(|ids| ids != index.ids) {
            continue; // mounts changed meanwhile: compare again
        }
        return match differences(&table, &text) {
            None => {
                log::debug!("mount index: listmount/statmount ({} mounts)", table.len());
                Source::Index(index)
            }
            Some(why) => {
                log::info!("mount index differs from mountinfo ({why}): reading mountinfo");
                Source::MountInfo
            }
        };
    }
    Source::MountInfo
}

/// What differs between two mount tables, ignoring order and, where one of them lacks it,
/// the mount source.
pub fn differences(index: &[MountEntry], mountinfo: &[MountEntry]) -> Option<String> {
    if index.len() != mountinfo.len() {
        return Some(format!(
            "{} mounts listed, {} in mountinfo",
            index.len(),
            mountinfo.len()
        ));
    }
    let by_id: HashMap<u64, &MountEntry> = mountinfo.iter().map(|m| (m.mount_id, m)).collect();
    for m in index {
        let Some(other) = by_id.get(&m.mount_id) else {
            return Some(format!("mount {} is not in mountinfo", m.mount_id));
        };
        let mut same = (*other).clone();
        if m.source.is_empty() {
            same.source.clear();
        }
        if *m != same {
            return Some(format!("mount {}: {m:?} against {other:?}", m.mount_id));
        }
    }
    None
}

/// `Ok` if `listmount` answers here (Linux 6.8+, no seccomp filter refusing it).
pub fn listmount_works() -> std::io::Result<()> {
    let mut one = [0u64; 1];
    list_once(0, &mut one).map(|_| ())
}

/// The mount table through `listmount`/`statmount` alone (no fallback), for tests and
/// `doctor`: `Err` where the kernel lacks them.
pub fn table_by_statmount() -> std::io::Result<Vec<MountEntry>> {
    let mut index = MountIndex::default();
    index.refresh().map(|t| t.as_ref().clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_index_is_the_mount_table_of_mountinfo() {
        let release = crate::kernel::features::kernel_release();
        if list_mounts().is_err()
            || crate::kernel::features::parse_version(&release).is_none_or(|v| v < FIRST_KERNEL)
        {
            eprintln!("skipping: kernel {release} has no listmount or statmount options");
            return;
        }
        let mut last = None;
        for _ in 0..5 {
            let index = table_by_statmount().expect("statmount of every mount");
            let text = read_mountinfo().expect("mountinfo");
            assert!(
                index.iter().any(|m| m.super_options.contains(&b'=')),
                "no mount has options: {index:?}"
            );
            match differences(&index, &text) {
                None => return,
                Some(why) => last = Some(why),
            }
        }
        panic!("the index differs from mountinfo: {last:?}");
    }
}
