//! Locks that survive a poisoned mutex: a panic elsewhere never leaves the
//! small maps and counters kept behind these locks half-written in a way
//! that matters more than refusing every later request would.

use std::sync::{Arc, Mutex, MutexGuard};

/// Resolves once `holds()` is true: checked at once, then after each
/// `notify_waiters` on `notify` (enabled before each check, so a
/// notification between the check and the wait is not missed).
pub async fn wait_until(notify: &tokio::sync::Notify, holds: impl Fn() -> bool) {
    loop {
        let mut notified = std::pin::pin!(notify.notified());
        notified.as_mut().enable();
        if holds() {
            return;
        }
        notified.await;
    }
}

/// Locks `m`, taking the data even if a holder panicked.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The last value seen, shared: a value equal to it comes back as the same
/// `Arc` (cloned only when it differs). What 100k sessions of one backend
/// each got alike (its `initialize` result, capabilities, the gateway's
/// instructions) is then held once.
pub struct Interned<T>(Mutex<Option<Arc<T>>>);

impl<T> Default for Interned<T> {
    fn default() -> Self {
        Self(Mutex::new(None))
    }
}

impl<T: PartialEq + Clone> Interned<T> {
    pub fn share(&self, value: &T) -> Arc<T> {
        let mut last = lock(&self.0);
        match last.as_ref() {
            Some(known) if **known == *value => Arc::clone(known),
            _ => {
                let fresh = Arc::new(value.clone());
                *last = Some(Arc::clone(&fresh));
                fresh
            }
        }
    }
}
