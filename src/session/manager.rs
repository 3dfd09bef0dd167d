//! The sessions of this replica: creation under a `max_sessions` cap, lookup
//! (rebuilding sessions created elsewhere from the store), DELETE, shutdown,
//! and the idle reaper.
//!
//! The reaper sleeps until the earliest recorded deadline (like mini-redis's
//! purge task). Requests only bump an atomic `last_seen`; when an entry comes
//! due the reaper checks the real deadline and reschedules it if the session
//! was used since. So the request path never touches the reaper's set, yet a
//! session is closed (backend sessions included) at its expiry, not lazily.
//!
//! With a shared store the request path does not wait for Redis either: the
//! session's store lifetime is extended by a background touch at most once per
//! `touch_interval`, and deletions on other replicas arrive on a feed.
//!
//! Closing never runs on a caller's path or in the reaper: a session leaves
//! the table at once and its close (wait for in-flight calls, end backend
//! sessions, each bounded) runs as a tracked task, so one hung backend holds
//! up nothing but its own close, and shutdown can wait for all of them.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use futures_util::StreamExt;
use serde_json::Value;
use tokio::sync::{Notify, OnceCell};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{id, Caller, IdentityHasher, Session, SessionFactory};
use crate::affinity::{Membership, Placement};
use crate::store::{BackendRecord, Owner, SessionStore, StoreError, SubjectRef, Touch};
use crate::sync::lock;
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

/// Why a request's session cannot be served.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ResolveError {
    /// Unknown, expired, deleted, or bound to another identity (never say which).
    #[error("session not found")]
    NotFound,
    #[error("session store unavailable: {0}")]
    Unavailable(String),
    #[error("this replica holds its maximum of {0} sessions")]
    Full(usize),
}

/// Why a session ended here (the `reason` label of `vmcp_sessions_closed_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    Delete,
    Idle,
    Shutdown,
    /// The runtime was given up while the session lives on for other replicas.
    Released,
}

impl CloseReason {
    fn label(self) -> &'static str {
        match self {
            Self::Delete => "delete",
            Self::Idle => "idle",
            Self::Shutdown => "shutdown",
            Self::Released => "released",
        }
    }
}

/// Knobs of the manager, from `session.*` and `store.*`.
#[derive(Debug, Clone)]
pub struct Limits {
    pub idle_timeout: Duration,
    pub max_sessions: usize,
    pub touch_interval: Duration,
    /// Whether other replicas share the store (then runtimes are released, not closed, at shutdown).
    pub shared_store: bool,
    /// How long the runtime of a session that moved to another replica is kept.
    pub release_grace: Duration,
    /// How long a closing session waits for its calls in flight (DELETE, idle, moved).
    pub close_timeout: Duration,
    /// The same at shutdown, where the replica's own deadline bounds it too.
    pub call_timeout: Duration,
}

type Rebuild = Arc<OnceCell<Result<Arc<Session>, ResolveError>>>;

pub struct SessionManager {
    factory: Arc<SessionFactory>,
    store: Arc<dyn SessionStore>,
    identity: IdentityHasher,
    metrics: Metrics,
    limits: Limits,
    membership: Arc<Membership>,
    sessions: RwLock<HashMap<String, Arc<Session>>>,
    /// Sessions held plus sessions being created, for the `max_sessions` cap.
    reserved: AtomicUsize,
    /// Foreign sessions being rebuilt: concurrent requests share one rebuild.
    rebuilding: Mutex<HashMap<String, Rebuild>>,
    /// `(deadline, id)`: one entry per live session, possibly stale (see module doc).
    deadlines: Mutex<BTreeSet<(Instant, String)>>,
    reaper_wake: Notify,
    epoch: Instant,
    draining: CancellationToken,
    /// Sessions closing in the background.
    closing: TaskTracker,
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
        factory: Arc<SessionFactory>,
        identity: IdentityHasher,
        metrics: Metrics,
        limits: Limits,
        membership: Arc<Membership>,
    ) -> Self {
        Self {
            membership,
            store: Arc::clone(factory.store()),
            factory,
            identity,
            metrics,
            limits,
            sessions: RwLock::default(),
            reserved: AtomicUsize::new(0),
            rebuilding: Mutex::default(),
            deadlines: Mutex::default(),
            reaper_wake: Notify::new(),
            epoch: Instant::now(),
            draining: CancellationToken::new(),
            closing: TaskTracker::new(),
        }
    }

    pub fn store(&self) -> &Arc<dyn SessionStore> {
        &self.store
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn reserve(&self) -> Option<Reservation<'_>> {
        if self.reserved.fetch_add(1, Ordering::AcqRel) >= self.limits.max_sessions {
            self.reserved.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(Reservation(&self.reserved, false))
    }

    /// Creates a session bound to the caller.
    pub async fn create(
        &self,
        client_init: Value,
        protocol_version: String,
        caller: impl Into<Caller<'_>>,
        bearer: Option<&str>,
    ) -> Result<Arc<Session>, ManagerError> {
        self.create_as(None, client_init, protocol_version, caller.into(), bearer)
            .await
    }

    /// [`Self::create`] with a given id (a pooled session), else a new one.
    async fn create_as(
        &self,
        id: Option<String>,
        client_init: Value,
        protocol_version: String,
        caller: Caller<'_>,
        bearer: Option<&str>,
    ) -> Result<Arc<Session>, ManagerError> {
        if self.draining.is_cancelled() {
            return Err(ManagerError::Draining);
        }
        let mut reservation = self.reserve().ok_or(ManagerError::Full(self.limits.max_sessions))?;
        let owner = Owner {
            identity: self.identity.identify(self.store.as_ref(), caller).await?,
            subject: match caller {
                Caller::Subject { issuer, subject } => Some(SubjectRef {
                    issuer: issuer.to_owned(),
                    subject: subject.to_owned(),
                }),
                _ => None,
            },
            replica: Some(self.membership.self_id().to_owned()),
        };
        let id = match id {
            Some(id) => id,
            None => self.mint_id()?,
        };
        let token = self.factory.caller_token(bearer);
        let session = Arc::new(
            self.factory
                .create(id, client_init, protocol_version, owner, token)
                .await,
        );
        if let Err(e) = self.store.put(&session.metadata_now()).await {
            self.close_later(session, CloseReason::Delete);
            return Err(e.into());
        }
        reservation.1 = true;
        self.adopt(&session);
        self.metrics.sessions_created.inc();
        Ok(session)
    }

    /// A new session id that this replica owns, so the client's next requests
    /// need no hop (a few tries: each id lands here with probability 1/N).
    fn mint_id(&self) -> Result<String, id::RandomError> {
        let mut random = [0u8; 16];
        getrandom::fill(&mut random).map_err(|e| id::RandomError::new(e.to_string()))?;
        if let Some(pinned) = self.membership.mint_pinned(&random) {
            return Ok(pinned);
        }
        let mut id = id::new_session_id()?;
        for _ in 0..64 {
            if self.membership.place(&id) == Placement::Local {
                break;
            }
            id = id::new_session_id()?;
        }
        Ok(id)
    }

    /// Starts tracking a session that is now live here.
    fn adopt(&self, session: &Arc<Session>) {
        let now = self.now_ms();
        session.touch(now);
        session.last_store_touch().store(now, Ordering::Relaxed);
        self.write_sessions()
            .insert(session.id().to_owned(), Arc::clone(session));
        self.schedule(Instant::now() + self.limits.idle_timeout, session.id().to_owned());
        self.metrics.sessions_active.inc();
    }

    /// The ids of the sessions held here now.
    fn session_ids(&self) -> Vec<String> {
        self.sessions
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .cloned()
            .collect()
    }

    fn local(&self, id: &str) -> Option<Arc<Session>> {
        self.sessions.read().unwrap_or_else(|p| p.into_inner()).get(id).cloned()
    }

    /// The session a request names, if the caller may use it: the live one
    /// here, or one rebuilt from the store if another replica created it.
    /// `bearer`: the request's access token, kept for backends that act on it.
    pub async fn resolve(
        self: &Arc<Self>,
        id: &str,
        caller: impl Into<Caller<'_>>,
        bearer: Option<&str>,
    ) -> Result<Arc<Session>, ResolveError> {
        let identity = self
            .identity
            .identify(self.store.as_ref(), caller)
            .await
            .map_err(|e| ResolveError::Unavailable(e.to_string()))?;
        self.resolve_as(id, identity.as_deref(), bearer).await
    }

    /// [`Self::resolve`] for a caller whose identity is already computed.
    pub(super) async fn resolve_as(
        self: &Arc<Self>,
        id: &str,
        identity: Option<&str>,
        bearer: Option<&str>,
    ) -> Result<Arc<Session>, ResolveError> {
        let session = match self.local(id) {
            Some(s) => s,
            // Boxed: a rebuild's future (a store read, backend sessions
            // resumed) would otherwise size every request's state.
            None => Box::pin(self.rebuild_once(id, identity, bearer)).await?,
        };
        if session.identity() != identity {
            // Not a warning: any client that knows an id could flood the log with it.
            tracing::debug!(session.id = %id, "request for a session bound to another identity");
            return Err(ResolveError::NotFound);
        }
        session.refresh_caller(bearer);
        session.touch(self.now_ms());
        self.touch_store(&session);
        session.regain_if_recovered();
        Ok(session)
    }

    /// Ends session `id` for a client DELETE. `false` if unknown to this caller.
    pub async fn delete(self: &Arc<Self>, id: &str, caller: impl Into<Caller<'_>>) -> Result<bool, ResolveError> {
        let identity = self
            .identity
            .identify(self.store.as_ref(), caller)
            .await
            .map_err(|e| ResolveError::Unavailable(e.to_string()))?;
        let local = self.local(id);
        let (owner, stored) = match &local {
            Some(session) => (session.identity().map(str::to_owned), None),
            None => match self.store.get(id).await {
                Ok(Some(meta)) => (meta.identity, Some(meta.backends)),
                Ok(None) => return Ok(false),
                Err(e) => return Err(ResolveError::Unavailable(e.to_string())),
            },
        };
        if owner != identity {
            tracing::debug!(session.id = %id, "DELETE for a session bound to another identity");
            return Ok(false);
        }
        // The tombstone first: once it is written no replica can write the
        // session back, so closing can no longer race with a rebuild. If it
        // cannot be written the session stays as it was (503, try again).
        self.store
            .delete(id)
            .await
            .map_err(|e| ResolveError::Unavailable(e.to_string()))?;
        self.end_here(id, stored);
        Ok(true)
    }

    /// Ends session `id` whoever it is bound to (the admin API): the
    /// tombstone first, as for a client DELETE, so every replica drops it.
    /// `false` if neither this replica nor the store knew it.
    pub async fn delete_any(self: &Arc<Self>, id: &str) -> Result<bool, StoreError> {
        let stored = match self.local(id) {
            Some(_) => None,
            None => self.store.get(id).await?.map(|meta| meta.backends),
        };
        let existed = self.store.delete(id).await?;
        Ok(self.end_here(id, stored) || existed)
    }

    /// Drops the runtime of a deleted session, or (when this replica has
    /// none) ends the backend sessions its metadata lists; `true` if it was live here.
    /// (A replica that still holds a runtime closes it from the deletion feed.)
    fn end_here(self: &Arc<Self>, id: &str, stored: Option<Vec<BackendRecord>>) -> bool {
        if self.remove(id, CloseReason::Delete) {
            return true;
        }
        if let Some(records) = stored {
            let factory = Arc::clone(&self.factory);
            self.closing.spawn(async move { factory.close_stored(&records).await });
        }
        false
    }

    /// Removes `id` if it is live here, at once; it is closed (or only its
    /// runtime released) in the background.
    fn remove(&self, id: &str, reason: CloseReason) -> bool {
        let Some(session) = self.write_sessions().remove(id) else {
            return false;
        };
        self.reserved.fetch_sub(1, Ordering::AcqRel);
        self.metrics.sessions_active.dec();
        self.metrics.sessions_closed.with_label_values(&[reason.label()]).inc();
        tracing::info!(session.id = %id, reason = reason.label(), "session ended here");
        self.close_later(session, reason);
        true
    }

    /// Closes (or releases) a session that is no longer in the table, as a tracked task.
    fn close_later(&self, session: Arc<Session>, reason: CloseReason) {
        let keep_backends =
            reason == CloseReason::Released || (reason == CloseReason::Shutdown && self.limits.shared_store);
        let calls_for = match reason {
            CloseReason::Shutdown => self.limits.call_timeout,
            _ => self.limits.close_timeout,
        };
        self.closing.spawn(async move {
            if keep_backends {
                session.release(calls_for).await;
            } else {
                session.close(calls_for).await;
            }
        });
    }

    fn write_sessions(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<String, Arc<Session>>> {
        self.sessions.write().unwrap_or_else(|p| p.into_inner())
    }

    pub fn len(&self) -> usize {
        self.sessions.read().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Stops creating sessions (the replica is going away).
    pub fn start_draining(&self) {
        self.draining.cancel();
    }

    pub fn is_draining(&self) -> bool {
        self.draining.is_cancelled()
    }

    /// Ends every session here, waiting for their in-flight calls. With a
    /// shared store the backend sessions stay open for the next replica.
    pub async fn close_all(&self) {
        let ids = self.session_ids();
        for id in &ids {
            self.remove(id, CloseReason::Shutdown);
        }
        self.closing.close();
        self.closing.wait().await;
    }
}

mod background;
mod pool;
mod rebuild;
