//! The engine's settings and their defaults (the daemon's settings re-export the
//! defaults, so both say the same numbers).

use std::time::Duration;

/// Engine settings.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Hashing threads. Zero starts none, so every miss is answered by its time budget
    /// (used by tests to make timeouts deterministic).
    pub hash_workers: usize,
    /// How long an exec may wait for its file to be hashed before policy answers.
    pub hash_timeout: Duration,
    /// Files cached per unit.
    pub cache_capacity: usize,
    /// Emit an `allow` record for every miss (debug aid).
    pub record_misses: bool,
    /// Script control (opt-in): the `comm` names of interpreters whose opens of files on a
    /// unit's tmpfs mounts are judged like execs. Empty: off.
    pub interpreters: Vec<Vec<u8>>,
    /// How long a loader exec may wait for its thread to be seen blocked before policy
    /// answers (`loader-unobservable`). The thread cannot proceed without the answer; on a
    /// saturated node it may wait for a CPU to go back to sleep (up to ~0.1 s measured on
    /// two busy cores), so this is far longer than any such wait.
    pub loader_wait: Duration,
    /// Library control (opt-in): opens of shared objects on a unit's filesystems are judged
    /// by content like execs (`FAN_OPEN_PERM`; notifications in audit mode).
    pub library_control: bool,
}

/// How long an exec may wait for its file to be hashed.
pub const DEFAULT_HASH_TIMEOUT: Duration = Duration::from_millis(2000);
/// Files cached per container.
pub const DEFAULT_CACHE_CAPACITY: usize = 65_536;
/// How long a loader exec may wait for its thread to be seen blocked.
pub const DEFAULT_LOADER_WAIT: Duration = Duration::from_secs(10);

/// Threads for a setting of `n`: 0 (and the default) means one per core.
pub fn threads(n: usize) -> usize {
    if n > 0 {
        n
    } else {
        std::thread::available_parallelism().map_or(2, |n| n.get())
    }
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            hash_workers: threads(0),
            hash_timeout: DEFAULT_HASH_TIMEOUT,
            cache_capacity: DEFAULT_CACHE_CAPACITY,
            record_misses: false,
            interpreters: Vec::new(),
            loader_wait: DEFAULT_LOADER_WAIT,
            library_control: false,
        }
    }
}
