//! The sessions of this replica: creation under a `max_sessions` cap, lookup,
//! DELETE, shutdown, and the idle reaper.
//!
//! The reaper sleeps until the earliest recorded deadline (like mini-redis's
//! purge task). Requests only bump an atomic `last_seen`; when an entry comes
//! due the reaper checks the real deadline and reschedules it if the session
//! was used since. So the request path never touches the reaper's set, yet a
//! session is closed (backend sessions included) at its expiry, not lazily.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use serde_json::Value;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{id, Session, SessionFactory};
use crate::store::{SessionStore, StoreError};
use crate::telemetry::Metrics;

#[derive(Debug, thiserror::Error)]
pub enum ManagerError {
    #[error("this replica holds its maximum of {0} sessions")]
    Full(usize),
    #[error("this replica is shutting down")]
    Draining,
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Random(#[from] id::RandomError),
}

/// Why a session ended (the `reason` label of `vmcp_sessions_closed_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    Delete,
    Idle,
    Shutdown,
}

impl CloseReason {
    fn label(self) -> &'static str {
        match self {
            Self::Delete => "delete",
            Self::Idle => "idle",
            Self::Shutdown => "shutdown",
        }
    }
}

pub struct SessionManager {
    factory: SessionFactory,
    store: Arc<dyn SessionStore>,
    metrics: Metrics,
    idle_timeout: Duration,
    max_sessions: usize,
    sessions: RwLock<HashMap<String, Arc<Session>>>,
    /// Sessions held plus sessions being created, for the `max_sessions` cap.
    reserved: AtomicUsize,
    /// `(deadline, id)`: one entry per live session, possibly stale (see module doc).
    deadlines: Mutex<BTreeSet<(Instant, String)>>,
    reaper_wake: Notify,
    epoch: Instant,
    draining: CancellationToken,
}

/// Releases a `max_sessions` reservation unless the session was kept.
struct Reservation<'a>(&'a AtomicUsize, bool);

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        if !self.1 {
            self.0.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

impl SessionManager {
    pub fn new(
        factory: SessionFactory,
        store: Arc<dyn SessionStore>,
        metrics: Metrics,
        idle_timeout: Duration,
        max_sessions: usize,
    ) -> Self {
        Self {
            factory,
            store,
            metrics,
            idle_timeout,
            max_sessions,
            sessions: RwLock::default(),
            reserved: AtomicUsize::new(0),
            deadlines: Mutex::default(),
            reaper_wake: Notify::new(),
            epoch: Instant::now(),
            draining: CancellationToken::new(),
        }
    }

    pub fn store(&self) -> &Arc<dyn SessionStore> {
        &self.store
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Creates a session: reserves a slot, opens the backends, records metadata.
    pub async fn create(
        &self,
        client_init: Value,
        protocol_version: String,
        identity: Option<String>,
    ) -> Result<Arc<Session>, ManagerError> {
        if self.draining.is_cancelled() {
            return Err(ManagerError::Draining);
        }
        if self.reserved.fetch_add(1, Ordering::AcqRel) >= self.max_sessions {
            self.reserved.fetch_sub(1, Ordering::AcqRel);
            return Err(ManagerError::Full(self.max_sessions));
        }
        let mut reservation = Reservation(&self.reserved, false);
        let id = id::new_session_id()?;
        let session = Arc::new(
            self.factory
                .create(id.clone(), client_init, protocol_version, identity)
                .await,
        );
        if let Err(e) = self.store.put(session.metadata()).await {
            session.close().await;
            return Err(e.into());
        }
        session.touch(self.now_ms());
        self.write_sessions()
            .insert(id.clone(), Arc::clone(&session));
        reservation.1 = true;
        self.schedule(Instant::now() + self.idle_timeout, id);
        self.metrics.sessions_created.inc();
        self.metrics.sessions_active.inc();
        Ok(session)
    }

    /// The live session `id`, marked as used now.
    pub fn get(&self, id: &str) -> Option<Arc<Session>> {
        let session = self
            .sessions
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .cloned()?;
        session.touch(self.now_ms());
        Some(session)
    }

    /// Ends session `id` (client DELETE); `false` if it is unknown.
    pub async fn delete(&self, id: &str) -> Result<bool, ManagerError> {
        let removed = self.remove(id, CloseReason::Delete).await;
        let stored = self.store.delete(id).await?;
        Ok(removed || stored)
    }

    /// Removes and closes `id` if it is live here.
    async fn remove(&self, id: &str, reason: CloseReason) -> bool {
        let Some(session) = self.write_sessions().remove(id) else {
            return false;
        };
        self.reserved.fetch_sub(1, Ordering::AcqRel);
        self.metrics.sessions_active.dec();
        self.metrics
            .sessions_closed
            .with_label_values(&[reason.label()])
            .inc();
        session.close().await;
        tracing::info!(session.id = %id, reason = reason.label(), "session ended");
        true
    }

    fn write_sessions(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<String, Arc<Session>>> {
        self.sessions.write().unwrap_or_else(|p| p.into_inner())
    }

    pub fn len(&self) -> usize {
        self.sessions
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn schedule(&self, deadline: Instant, id: String) {
        let mut deadlines = self.deadlines.lock().unwrap_or_else(|p| p.into_inner());
        let earliest = deadlines.first().is_none_or(|(d, _)| deadline < *d);
        deadlines.insert((deadline, id));
        drop(deadlines);
        if earliest {
            self.reaper_wake.notify_one();
        }
    }

    /// Closes every session idle past its deadline; returns the next deadline.
    async fn reap(&self) -> Option<Instant> {
        let now = Instant::now();
        let due: Vec<(Instant, String)> = {
            let mut deadlines = self.deadlines.lock().unwrap_or_else(|p| p.into_inner());
            let mut due = Vec::new();
            while deadlines.first().is_some_and(|(d, _)| *d <= now) {
                due.extend(deadlines.pop_first());
            }
            due
        };
        for (_, id) in due {
            let Some(session) = self
                .sessions
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .get(&id)
                .cloned()
            else {
                continue; // deleted meanwhile
            };
            let real = self.epoch + Duration::from_millis(session.last_seen()) + self.idle_timeout;
            let busy = session.inflight() > 0;
            if real > now || busy {
                // Used since it was scheduled, or busy right now: not idle.
                self.schedule(if busy { now + self.idle_timeout } else { real }, id);
                continue;
            }
            self.remove(&id, CloseReason::Idle).await;
            if let Err(e) = self.store.delete(&id).await {
                tracing::warn!(session.id = %id, error = %e, "expired session not removed from the store");
            }
        }
        self.deadlines
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .first()
            .map(|(d, _)| *d)
    }

    /// Runs the idle reaper until `shutdown` fires.
    pub async fn run_reaper(self: Arc<Self>, shutdown: CancellationToken) {
        loop {
            let next = self.reap().await;
            let sleep = async {
                match next {
                    Some(when) => tokio::time::sleep_until(when).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = sleep => {}
                _ = self.reaper_wake.notified() => {}
                _ = shutdown.cancelled() => return,
            }
        }
    }

    /// Stops creating sessions (the replica is going away).
    pub fn start_draining(&self) {
        self.draining.cancel();
    }

    pub fn is_draining(&self) -> bool {
        self.draining.is_cancelled()
    }

    /// Closes every session of this replica, waiting for their in-flight calls.
    pub async fn close_all(&self) {
        let ids: Vec<String> = self
            .sessions
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .cloned()
            .collect();
        futures_util::future::join_all(ids.iter().map(|id| self.remove(id, CloseReason::Shutdown)))
            .await;
    }
}
