//! The mapping gate's entries each unit made: a budget per unit for the entries made while
//! it runs (a container that copies and deletes files in a loop fills its own budget, not
//! the map every unit shares), and its disarm removes exactly its own entries.

use std::collections::{HashSet, VecDeque};

use crate::kernel::mapping_gate::FileKey;

/// Entries a unit may make while it runs (files written and judged allowed, allowed execs),
/// beyond those of its image at arm. Past it the oldest such entry goes (its file is judged
/// again when next exec'd or written).
pub const RUNTIME_BUDGET: usize = 8192;

/// One unit's entries in the gate's `allowed` and `loaders` maps.
#[derive(Debug, Default)]
pub struct GateKeys {
    /// Entered at arm (the image's code files): kept until disarm.
    pinned: HashSet<FileKey>,
    /// Entered while the unit runs, oldest first.
    runtime: VecDeque<FileKey>,
    members: HashSet<FileKey>,
}

impl GateKeys {
    /// The keys entered at arm.
    pub fn pinned(keys: impl IntoIterator<Item = FileKey>) -> Self {
        GateKeys {
            pinned: keys.into_iter().collect(),
            ..Default::default()
        }
    }

    /// Notes an entry made while the unit runs; returns the entry to remove from the gate
    /// when the unit's budget is full (its oldest run-time entry).
    pub fn add(&mut self, key: FileKey) -> Option<FileKey> {
        if self.pinned.contains(&key) || !self.members.insert(key) {
            return None;
        }
        self.runtime.push_back(key);
        if self.runtime.len() <= RUNTIME_BUDGET {
            return None;
        }
        let oldest = self.runtime.pop_front()?;
        self.members.remove(&oldest);
        Some(oldest)
    }

    /// Every key the unit entered.
    pub fn all(&self) -> impl Iterator<Item = &FileKey> {
        self.pinned.iter().chain(self.runtime.iter())
    }

    /// How many entries the unit holds.
    pub fn len(&self) -> usize {
        self.pinned.len() + self.runtime.len()
    }

    /// How many of them were made while the unit ran.
    pub fn runtime_len(&self) -> usize {
        self.runtime.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(ino: u64) -> FileKey {
        FileKey { dev: 7, ino }
    }

    #[test]
    fn a_unit_past_its_budget_gives_up_its_oldest_runtime_entry_never_an_image_one() {
        let mut k = GateKeys::pinned([key(1), key(2)]);
        assert_eq!(k.add(key(1)), None, "an image entry is not counted again");
        for i in 0..RUNTIME_BUDGET as u64 {
            assert_eq!(k.add(key(100 + i)), None);
        }
        assert_eq!(k.add(key(100)), None, "an entry already held");
        assert_eq!(
            k.add(key(5)),
            Some(key(100)),
            "the oldest runtime entry goes"
        );
        assert_eq!(k.add(key(6)), Some(key(101)));
        assert_eq!(k.len(), 2 + RUNTIME_BUDGET);
        assert!(k.all().any(|x| *x == key(1)) && k.all().any(|x| *x == key(6)));
        assert!(!k.all().any(|x| *x == key(100)));
    }
}
