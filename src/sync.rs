//! Locks that survive a poisoned mutex: a panic elsewhere never leaves the
//! small maps and counters kept behind these locks half-written in a way
//! that matters more than refusing every later request would.

use std::sync::{Mutex, MutexGuard};

/// Locks `m`, taking the data even if a holder panicked.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
