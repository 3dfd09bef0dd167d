//! Counting in-flight calls so that `close()` can wait for them.

use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::Notify;

#[derive(Default)]
pub struct Inflight {
    count: AtomicUsize,
    idle: Notify,
}

/// Held for the duration of one call; dropping it ends the call.
pub struct InflightGuard<'a>(&'a Inflight);

impl Inflight {
    /// Registers a call. Callers do this under the session's read lock so that
    /// `close()` (which takes the write lock) sees every call that got in.
    pub fn enter(&self) -> InflightGuard<'_> {
        self.count.fetch_add(1, Ordering::AcqRel);
        InflightGuard(self)
    }

    pub fn count(&self) -> usize {
        self.count.load(Ordering::Acquire)
    }

    /// Resolves once no call is in flight.
    pub async fn wait_idle(&self) {
        crate::sync::wait_until(&self.idle, || self.count() == 0).await;
    }
}

impl Drop for InflightGuard<'_> {
    fn drop(&mut self) {
        if self.0.count.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn wait_idle_waits_for_the_last_guard() {
        let inflight = Arc::new(Inflight::default());
        assert_eq!(inflight.count(), 0);
        inflight.wait_idle().await;
        let held = Arc::clone(&inflight);
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let _guard = held.enter();
            let _ = tx.send(());
            tokio::time::sleep(Duration::from_secs(5)).await;
        });
        rx.await.unwrap();
        let start = tokio::time::Instant::now();
        inflight.wait_idle().await;
        assert!(start.elapsed() >= Duration::from_secs(5));
        task.await.unwrap();
    }
}
