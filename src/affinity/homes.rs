//! Where callers' pooled sessions live under pinned placement.
//!
//! A pinned session's id names its replica. A 2026-07-28 caller's pooled
//! session cannot carry one: its id is a hash every replica computes from the
//! caller alone. So under pinned placement a pool's home is the replica that
//! created it, as its record in the store says (`SessionMetadata::replica`),
//! read once per pool and remembered here: adding a replica then moves no
//! pool, as it moves no pinned session, and a pod-local server keeps each
//! caller's state. Remembered homes are never wrong for long: a pool
//! re-created elsewhere is served where a request is sent, and a home that
//! is gone is skipped by placement.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::sync::lock;

/// How many homes a replica remembers; past that it starts over (each pool
/// then costs one more store read).
const CAP: usize = 100_000;

#[derive(Default)]
pub struct PoolHomes {
    homes: Mutex<HashMap<String, Arc<str>>>,
}

impl PoolHomes {
    /// The home remembered for `pool`.
    pub fn get(&self, pool: &str) -> Option<Arc<str>> {
        lock(&self.homes).get(pool).cloned()
    }

    /// Remembers `home` for `pool`; returns it.
    pub fn remember(&self, pool: &str, home: &str) -> Arc<str> {
        let home: Arc<str> = Arc::from(home);
        let mut homes = lock(&self.homes);
        if homes.len() >= CAP {
            homes.clear();
        }
        homes.insert(pool.to_owned(), Arc::clone(&home));
        home
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn homes_are_remembered_and_bounded() {
        let homes = PoolHomes::default();
        assert_eq!(homes.get("p-1"), None);
        homes.remember("p-1", "a");
        assert_eq!(homes.get("p-1").as_deref(), Some("a"));
        for i in 0..CAP {
            homes.remember(&format!("p-x{i}"), "b");
        }
        assert!(lock(&homes.homes).len() <= CAP);
    }
}
