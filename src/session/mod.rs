//! The **runtime** half of a client session: live backend sessions, the
//! routing table and the aggregated capabilities. Never serialised; the
//! metadata half is `crate::store::SessionMetadata`.
//!
//! Locking: the state is behind a `std` read/write lock that is only held to
//! copy out `Arc`s (and to count the call in), never across network I/O.
//! `close()` takes the write lock to refuse new calls, then waits for the
//! in-flight ones before it closes the backend sessions.

mod call_streams;
mod calls;
mod events;
mod factory;
pub mod guard;
mod heal;
mod id;
mod identity;
mod inflight;
mod listen;
mod manager;
mod relay;
mod requests;
mod shared;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use serde_json::{json, Value};

use crate::aggregate::Catalog;
use crate::backend::{BackendError, BackendSession, CallContext, Params, Reply};
use crate::store::{unix_ms, SessionMetadata};
use crate::telemetry::Meter;

pub use call_streams::CallStream;
pub use calls::CallTicket;
pub use events::{Event, Subscription};
pub use factory::SessionFactory;
pub use id::{is_well_formed, new_session_id};
pub use identity::{Caller, IdentityHasher};
pub use manager::{CloseReason, Limits, ManagerError, ResolveError, SessionManager};

use inflight::{Inflight, InflightGuard};

#[cfg(test)]
mod tests;

/// Why a session operation failed.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("session is closed")]
    Closed,
    #[error("unknown tool `{0}`")]
    UnknownTool(String),
    #[error("unknown prompt `{0}`")]
    UnknownPrompt(String),
    #[error("no backend serves resource `{0}`")]
    UnknownResource(String),
    #[error("invalid params: {0}")]
    InvalidParams(String),
    #[error("backend `{0}` is not available in this session")]
    BackendUnavailable(String),
    #[error("this session already has {0} requests in flight; retry later")]
    Busy(usize),
    #[error("backend `{backend}`: {error}")]
    Backend { backend: String, error: BackendError },
    /// The request's guard refused it (policy, rate limit): no backend traffic.
    #[error(transparent)]
    Refused(#[from] guard::Refusal),
}

type Backends = Arc<HashMap<Arc<str>, Arc<BackendSession>>>;
struct State {
    closed: bool,
    backends: Backends,
    /// What each backend listed (so re-initializing one backend can rebuild
    /// the catalog) and the catalog: shared with the sessions that have the same.
    tables: Arc<shared::Tables>,
}

/// One client session on this replica.
pub struct Session {
    id: String,
    /// The metadata at creation; `metadata_now()` adds the current backend sessions.
    meta: SessionMetadata,
    state: RwLock<State>,
    inflight: Inflight,
    /// Woken when the session closes (streams end with it).
    closing: tokio::sync::Notify,
    /// How many client GET streams have opened; the newest is the session's.
    streams: AtomicU64,
    /// Woken when a GET stream opens (the one before it ends).
    new_stream: tokio::sync::Notify,
    /// Milliseconds since the manager's epoch of the last request (for the reaper).
    last_seen: AtomicU64,
    /// Same clock: when the store last extended this session's lifetime.
    last_store_touch: AtomicU64,
    instructions: Arc<String>,
    factory: Arc<SessionFactory>,
    /// Serialises self-heal, so concurrent 404s re-initialize a backend once.
    heal: tokio::sync::Mutex<()>,
    /// Server-to-client messages for the client's GET stream, numbered and kept for resumption.
    events: events::EventLog,
    /// Serialises `publish`, so streams see event ids in order.
    publishing: tokio::sync::Mutex<()>,
    /// Client requests a backend is serving now (for cancellation).
    calls: calls::Calls,
    /// The relaying streams of calls, for resumption.
    call_streams: call_streams::CallStreams,
    /// The backend listeners, while a client stream is open.
    listening: listen::ListenSlot,
    /// The replica's circuit recoveries this session has caught up with:
    /// when more have happened, it opens the backends it lacks.
    seen_recoveries: AtomicU64,
    /// The caller's latest access token, if a backend acts on it (`backends[].auth`).
    caller: Option<Arc<crate::backend::CallerToken>>,
}

/// What a call needs, copied out from under the lock.
struct View<'a> {
    backends: Backends,
    catalog: Arc<Catalog>,
    _guard: InflightGuard<'a>,
}

impl Session {
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Keeps the access token of the caller's latest request (a refreshed
    /// one replaces the old) for the backends that act on it.
    pub fn refresh_caller(&self, bearer: Option<&str>) {
        if let (Some(held), Some(bearer)) = (&self.caller, bearer) {
            held.refresh(bearer);
        }
    }

    pub(crate) fn caller(&self) -> Option<&Arc<crate::backend::CallerToken>> {
        self.caller.as_ref()
    }

    /// The metadata as it is now: current backend session ids, last use now.
    pub fn metadata_now(&self) -> SessionMetadata {
        let mut meta = self.meta.clone();
        meta.backends = self.backend_sessions();
        meta.last_seen_ms = unix_ms();
        meta
    }

    /// The subject that created this session, if inbound authentication named one.
    pub fn subject(&self) -> Option<&crate::store::SubjectRef> {
        self.meta.subject.as_ref()
    }

    /// The identity hash this session is bound to (`None`: anonymous).
    pub fn identity(&self) -> Option<&str> {
        self.meta.identity.as_deref()
    }

    /// The id of the newest event (what a priming event carries).
    pub fn last_event_id(&self) -> u64 {
        self.events.last_id()
    }

    /// Whether the client speaks 2025-11-25 or later, whose streams start with
    /// a priming event (older clients may choke on its empty data).
    pub fn primes_streams(&self) -> bool {
        self.meta.protocol_version.as_str() >= "2025-11-25"
    }

    /// Tracks a client request while a backend serves it, so the client can cancel it.
    pub fn track_call(&self, id: &Value) -> CallTicket {
        self.calls.track(id)
    }

    /// A new relaying call stream, resumable by its event ids.
    pub fn open_call_stream(&self) -> Arc<CallStream> {
        self.call_streams.open()
    }

    /// The call stream a `Last-Event-ID` belongs to, and how much of it was seen.
    pub fn resume_call_stream(&self, last_event_id: &str) -> Option<(Arc<CallStream>, usize)> {
        self.call_streams.resume(last_event_id)
    }

    /// The gateway's `instructions` for the client's `initialize` result.
    pub fn instructions(&self) -> &str {
        &self.instructions
    }

    /// What the gateway advertises: tools, prompts and resources always (their
    /// lists may change as backends come and go), completions if any backend has them.
    pub fn capabilities(&self) -> Value {
        let state = self.read();
        let mut caps = json!({
            "tools": { "listChanged": true },
            "prompts": { "listChanged": true },
            "resources": { "listChanged": true },
        });
        if state.backends.values().any(|b| b.has_capability("completions")) {
            caps["completions"] = json!({});
        }
        if state.backends.values().any(|b| b.has_capability("logging")) {
            caps["logging"] = json!({});
        }
        let subscribes = |b: &Arc<BackendSession>| {
            b.init_result()
                .pointer("/capabilities/resources/subscribe")
                .and_then(Value::as_bool)
                == Some(true)
        };
        if state.backends.values().any(subscribes) {
            caps["resources"]["subscribe"] = json!(true);
        }
        caps
    }

    /// The backend sessions' records, as they are now, in name order.
    pub fn backend_sessions(&self) -> Vec<crate::store::BackendRecord> {
        let mut records: Vec<_> = self.read().backends.values().map(|b| b.record()).collect();
        records.sort_by(|a, b| a.name.cmp(&b.name));
        records
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        // A poisoned lock only means a panic elsewhere; the state itself is plain data.
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts the call in and copies out what it needs; refuses when closed.
    fn enter(&self) -> Result<View<'_>, SessionError> {
        self.enter_bounded(true)
    }

    /// `bounded`: refuse past `session.max_calls` (requests that reach a
    /// backend); lists served from the catalog are not bounded.
    fn enter_bounded(&self, bounded: bool) -> Result<View<'_>, SessionError> {
        let state = self.read();
        if state.closed {
            return Err(SessionError::Closed);
        }
        let limit = self.factory.max_calls();
        if bounded && self.inflight.count() >= limit {
            return Err(SessionError::Busy(limit));
        }
        Ok(View {
            backends: Arc::clone(&state.backends),
            catalog: Arc::clone(&state.tables.catalog),
            _guard: self.inflight.enter(),
        })
    }

    pub(crate) fn touch(&self, now_ms: u64) {
        self.last_seen.fetch_max(now_ms, Ordering::Relaxed);
    }

    pub(crate) fn last_seen(&self) -> u64 {
        self.last_seen.load(Ordering::Relaxed)
    }

    pub(crate) fn last_store_touch(&self) -> &AtomicU64 {
        &self.last_store_touch
    }

    pub fn inflight(&self) -> usize {
        self.inflight.count()
    }

    pub fn is_closed(&self) -> bool {
        self.read().closed
    }

    /// A client GET stream opens: it becomes the session's, and the one
    /// before it ends. The spec forbids sending a message on two streams, and
    /// a client whose stream died unseen (a NAT forgot it) must get its new
    /// one at once; what the old one missed, it resumes with `Last-Event-ID`.
    /// Returns the stream's number for [`Session::superseded`].
    pub fn open_stream(&self) -> u64 {
        let mine = self.streams.fetch_add(1, Ordering::SeqCst) + 1;
        self.new_stream.notify_waiters();
        mine
    }

    /// Resolves once a newer GET stream than `mine` has opened.
    pub async fn superseded(&self, mine: u64) {
        crate::sync::wait_until(&self.new_stream, || self.streams.load(Ordering::SeqCst) != mine).await;
    }

    /// Resolves once the session is closed (at once if it is).
    pub async fn closed(&self) {
        crate::sync::wait_until(&self.closing, || self.is_closed()).await;
    }

    /// `logging/setLevel`: applied to every backend that supports logging.
    pub async fn set_log_level(&self, params: Value) -> Result<Value, SessionError> {
        let view = self.enter()?;
        let targets: Vec<Arc<str>> = view
            .backends
            .iter()
            .filter(|(_, b)| b.has_capability("logging"))
            .map(|(name, _)| Arc::clone(name))
            .collect();
        let own = CallContext::default(); // nothing to relay, no one to cancel
        let calls = targets
            .iter()
            .map(|name| self.forward(&view, name, "logging/setLevel", Params::Tree(&params), &own));
        for result in futures_util::future::join_all(calls).await {
            if let Err(e) = result {
                tracing::debug!(session.id = %self.id, error = %e, "logging/setLevel not applied");
            }
        }
        Ok(json!({}))
    }

    /// Sends a call to `backend`; if the backend forgot our backend session
    /// (404: the call was not executed), re-initializes it and retries once.
    async fn forward(
        &self,
        view: &View<'_>,
        backend: &str,
        method: &'static str,
        params: Params<'_>,
        ctx: &CallContext,
    ) -> Result<Reply, SessionError> {
        let session = view
            .backends
            .get(backend)
            .ok_or_else(|| SessionError::BackendUnavailable(backend.to_owned()))?;
        tracing::Span::current().record("backend", backend);
        let result = match self.send(session, method, params, ctx).await {
            Err(BackendError::SessionExpired) => {
                // Boxed: rare, and 5.9 KB in every call's state otherwise.
                let healed = Box::pin(self.heal(backend, session)).await?;
                self.send(&healed, method, params, ctx).await
            }
            other => other,
        };
        result.map_err(|error| SessionError::Backend {
            backend: backend.to_owned(),
            error,
        })
    }

    async fn send(
        &self,
        session: &BackendSession,
        method: &'static str,
        params: Params<'_>,
        ctx: &CallContext,
    ) -> Result<Reply, BackendError> {
        let metrics = self.factory.metrics();
        let started = std::time::Instant::now();
        let result = session
            .call_through(method, Some(params), self.factory.call_timeout(), ctx)
            .await;
        session.backend().called(&result);
        let outcome = result.as_ref().map_or_else(BackendError::outcome, |_| "ok");
        let meter = result.is_ok().then(|| {
            session.backend().call_meters().get(method, || {
                Meter::new(
                    metrics.backend_calls.with_label_values(&[session.name(), method, "ok"]),
                    metrics
                        .backend_call_duration
                        .with_label_values(&[session.name(), method]),
                )
            })
        });
        match meter.flatten() {
            Some(meter) => meter.record(started),
            None => {
                metrics
                    .backend_calls
                    .with_label_values(&[session.name(), method, outcome])
                    .inc();
                metrics
                    .backend_call_duration
                    .with_label_values(&[session.name(), method])
                    .observe(started.elapsed().as_secs_f64());
            }
        }
        result
    }

    /// Refuses new calls, waits for in-flight ones (at most `calls_for`),
    /// then ends every backend session in parallel, each under the backend's
    /// notice bound. Idempotent. Callers on a request path or in the reaper
    /// run it in the background (see `SessionManager`).
    pub async fn close(&self, calls_for: Duration) {
        self.shut(true, calls_for).await;
    }

    /// Like `close()`, but leaves HTTP backend sessions open on the backends so
    /// that another replica can resume them (stdio children are still killed).
    pub async fn release(&self, calls_for: Duration) {
        self.shut(false, calls_for).await;
    }

    /// Refuses new calls and ends the backend sessions in the background,
    /// without waiting for the calls in flight: for a call of this very
    /// session that learns the session is gone (it must not wait on itself).
    pub(crate) fn abandon(&self) {
        let Some(backends) = self.refuse_calls() else { return };
        tokio::spawn(async move {
            futures_util::future::join_all(backends.values().map(|b| b.close())).await;
        });
    }

    /// Marks the session closed and takes its backend sessions; `None` if it was already.
    fn refuse_calls(&self) -> Option<Backends> {
        let mut state = self.write();
        if state.closed {
            return None;
        }
        state.closed = true;
        let backends = std::mem::take(&mut state.backends);
        drop(state);
        self.closing.notify_waiters();
        Some(backends)
    }

    async fn shut(&self, end_backend_sessions: bool, calls_for: Duration) {
        let Some(backends) = self.refuse_calls() else { return };
        if tokio::time::timeout(calls_for, self.inflight.wait_idle())
            .await
            .is_err()
        {
            tracing::info!(session.id = %self.id, waited = ?calls_for, calls = self.inflight(), "closing with calls still in flight");
        }
        if end_backend_sessions {
            futures_util::future::join_all(backends.values().map(|b| b.close())).await;
        } else {
            futures_util::future::join_all(backends.values().map(|b| b.release())).await;
        }
        tracing::debug!(session.id = %self.id, end_backend_sessions, "session shut");
    }
}

/// The lists a session serves, with their result key.
#[derive(Debug, Clone, Copy)]
pub enum ListKind {
    Tools,
    Prompts,
    Resources,
    ResourceTemplates,
}

impl ListKind {
    fn key(self) -> &'static str {
        match self {
            Self::Tools => "tools",
            Self::Prompts => "prompts",
            Self::Resources => "resources",
            Self::ResourceTemplates => "resourceTemplates",
        }
    }

    /// The list's id in policies (`Vmcp::List::"tools"`).
    pub fn list_name(self) -> &'static str {
        match self {
            Self::Tools => "tools",
            Self::Prompts => "prompts",
            Self::Resources => "resources",
            Self::ResourceTemplates => "resource_templates",
        }
    }
}

fn str_param<'a>(params: &'a Value, key: &str) -> Result<&'a str, SessionError> {
    params
        .get(key)
        .and_then(Value::as_str)
        .ok_or_else(|| SessionError::InvalidParams(format!("`{key}` must be a string")))
}
