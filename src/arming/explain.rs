//! `driftlock explain`: a file as the container sees it, hashed and judged by the engine.

use super::*;

/// How long `explain` may spend hashing the file it is asked about.
const EXPLAIN_HASH_BUDGET: std::time::Duration = std::time::Duration::from_secs(10);

impl Armer {
    /// Hashes `path` (escaped, as unit `id` sees it) and asks the engine why it would or
    /// would not run there: under the configuration in force, or under the allow entries a
    /// candidate configuration file (`against`, escaped) gives the unit.
    pub fn explain(
        &self,
        id: &str,
        path: &str,
        against: Option<&str>,
    ) -> Result<crate::engine::Explanation, ExplainError> {
        use nix::fcntl::OFlag;
        use std::os::fd::AsFd;
        let status = self.engine.status()?;
        let unit = status
            .units
            .iter()
            .find(|u| u.id == id)
            .ok_or_else(|| ExplainError::UnknownId(id.to_string()))?;
        let bytes = unescape(path).map_err(|e| ExplainError::BadPath(e.to_string()))?;
        let shown = escape_bytes(&bytes);
        let open_err = |source: nix::Error| ExplainError::Open {
            path: shown.clone(),
            source,
        };
        let fd = match unit.pid {
            // As the container sees it: resolved inside its root.
            Some(pid) => crate::kernel::open_in_root_of(pid, &bytes).map_err(open_err)?,
            None => nix::fcntl::open(
                std::ffi::OsStr::from_bytes(&bytes),
                OFlag::O_RDONLY | OFlag::O_CLOEXEC | OFlag::O_NONBLOCK,
                nix::sys::stat::Mode::empty(),
            )
            .map_err(open_err)?,
        };
        // Bounded like an exec's hash: a client must not hold an arming thread on a huge file.
        let deadline = Some(Instant::now() + EXPLAIN_HASH_BUDGET);
        let d = crate::baseline::hash_fd(fd.as_fd(), &mut Vec::new(), true, deadline).map_err(
            |source| ExplainError::Hash {
                path: shown.clone(),
                source,
            },
        )?;
        let candidate = match against {
            None => None,
            Some(file) => {
                let file = unescape(file).map_err(|e| ExplainError::BadPath(e.to_string()))?;
                let config = crate::config::Config::load(std::path::Path::new(
                    std::ffi::OsStr::from_bytes(&file),
                ))
                .map_err(|e| ExplainError::Candidate(e.to_string()))?;
                Some(config.allowed_for(&crate::config::Identity {
                    image: unit.image_name.as_deref(),
                    namespace: unit.namespace.as_deref(),
                    container: unit.container_name.as_deref(),
                }))
            }
        };
        let mut e = self.engine.explain(crate::engine::ExplainQuery {
            id: id.to_string(),
            digests: d,
            path: bytes,
            candidate,
        })?;
        e.path = shown;
        e.against = against.map(str::to_string);
        Ok(e)
    }
}
