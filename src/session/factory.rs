//! Opening a session's backend sessions: in parallel, at most
//! `max_backend_init_concurrency` at a time, each under its own
//! `init_timeout`. A backend that fails or hangs is logged and left out; the
//! session goes on with the rest (even with none).
//!
//! [`SessionFactory::restore`] does the same for a session another replica
//! created: it **resumes** each stored HTTP backend session (no handshake, so
//! the backend keeps its state) and re-initializes only those the backend no
//! longer knows (404) and stdio backends (their process lived elsewhere).

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use futures_util::stream::{self, StreamExt};
use serde_json::{json, Value};

use super::{inflight::Inflight, Session, State};
use crate::aggregate::{Catalog, Listing};
use crate::backend::{Backend, BackendError, BackendSession, CallerToken};
use crate::config::{AggregationConfig, SessionConfig};
use crate::store::{unix_ms, BackendRecord, Owner, SessionMetadata, SessionStore};
use crate::telemetry::Metrics;

/// Backend pages followed at most per list, against a backend that never ends its cursor chain.
const MAX_LIST_PAGES: usize = 1000;

/// Builds sessions from the configured backends.
pub struct SessionFactory {
    backends: Vec<Arc<Backend>>,
    session: SessionConfig,
    aggregation: Arc<AggregationConfig>,
    metrics: Metrics,
    store: Arc<dyn SessionStore>,
    /// Circuits closed so far on this replica (see `backend::health`).
    recoveries: Arc<AtomicU64>,
    /// Listings and catalogs shared by the sessions that have the same ones.
    shared: super::shared::Shared,
}

/// A backend that could not be opened, and why (for logs and instructions).
struct Failure {
    backend: String,
    reason: String,
}

/// An open backend session and what it listed.
pub(crate) type Opened = (BackendSession, Listing);

/// How a backend session was obtained (the `outcome` of `vmcp_backend_rebuilds_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Created,
    Resumed,
    Reinitialized,
}

impl SessionFactory {
    pub fn new(
        backends: Vec<Arc<Backend>>,
        session: SessionConfig,
        aggregation: AggregationConfig,
        metrics: Metrics,
        store: Arc<dyn SessionStore>,
    ) -> Self {
        let recoveries = backends
            .first()
            .map(|b| Arc::clone(b.circuit().recoveries()))
            .unwrap_or_default();
        Self {
            backends,
            session,
            aggregation: Arc::new(aggregation),
            metrics,
            store,
            recoveries,
            shared: Default::default(),
        }
    }

    /// Opens one backend session per backend and assembles a new session.
    pub async fn create(
        self: &Arc<Self>,
        id: String,
        client_init: Value,
        protocol_version: String,
        owner: Owner,
        caller: Option<Arc<CallerToken>>,
    ) -> Session {
        let started = Instant::now();
        let recoveries = self.recoveries();
        let opens: Vec<_> = self
            .backends
            .iter()
            .map(|b| self.open(b, &client_init, None, caller.as_ref()))
            .collect();
        let (healthy, failed) = self.open_all(opens).await;
        self.metrics
            .session_create_duration
            .observe(started.elapsed().as_secs_f64());
        if healthy.is_empty() && !self.backends.is_empty() {
            tracing::warn!(session.id = %id, "session created with no healthy backend");
        }
        let instructions = self.shared.instructions(&instructions(&healthy, &failed));
        let now = unix_ms();
        let meta = SessionMetadata {
            id,
            created_at_ms: now,
            last_seen_ms: now,
            identity: owner.identity,
            subject: owner.subject,
            replica: owner.replica,
            protocol_version,
            client_init: Arc::new(client_init),
            backends: Vec::new(),
        };
        self.assemble(meta, healthy, instructions, recoveries, caller)
    }

    /// The holder of a client session's access token, if a backend acts on it.
    pub fn caller_token(&self, bearer: Option<&str>) -> Option<Arc<CallerToken>> {
        let bearer = bearer?;
        self.backends
            .iter()
            .any(|b| b.needs_caller())
            .then(|| Arc::new(CallerToken::new(bearer)))
    }

    /// Rebuilds a session from its stored metadata: every configured backend
    /// is resumed from its record where possible, else opened afresh.
    pub async fn restore(self: &Arc<Self>, meta: SessionMetadata, caller: Option<Arc<CallerToken>>) -> Session {
        let recoveries = self.recoveries();
        let opens: Vec<_> = self
            .backends
            .iter()
            .map(|b| {
                self.open(
                    b,
                    &meta.client_init,
                    meta.backends.iter().find(|r| &*r.name == b.name()),
                    caller.as_ref(),
                )
            })
            .collect();
        let (healthy, _) = self.open_all(opens).await;
        self.assemble(meta, healthy, Arc::default(), recoveries, caller)
    }

    /// Re-initializes one backend for an existing session (self-heal).
    pub(crate) async fn reopen(
        &self,
        backend: &Arc<Backend>,
        client_init: &Value,
        caller: Option<&Arc<CallerToken>>,
    ) -> Result<Opened, BackendError> {
        self.open(backend, client_init, None, caller)
            .await
            .map_err(|f| BackendError::Transport(f.reason))
    }

    async fn open_all(&self, opens: Vec<BoxFuture<'_, Result<Opened, Failure>>>) -> (Vec<Opened>, Vec<Failure>) {
        let opened: Vec<_> = stream::iter(opens)
            .buffer_unordered(self.session.max_backend_init_concurrency)
            .collect()
            .await;
        let (mut healthy, mut failed) = (Vec::new(), Vec::new());
        for result in opened {
            match result {
                Ok(pair) => healthy.push(pair),
                Err(f) => failed.push(f),
            }
        }
        // Config order, so priority and listing order do not depend on who answered first.
        healthy.sort_by_key(|(s, _)| self.backends.iter().position(|b| b.name() == s.name()));
        (healthy, failed)
    }

    fn assemble(
        self: &Arc<Self>,
        mut meta: SessionMetadata,
        healthy: Vec<Opened>,
        instructions: Arc<String>,
        recoveries: u64,
        caller: Option<Arc<CallerToken>>,
    ) -> Session {
        // The live backend sessions are the truth (`Session::metadata_now`
        // reads them); a copy of their records here would cost ~0.6 KB per
        // backend session for nothing.
        meta.backends = Vec::new();
        let mut backends = HashMap::new();
        let mut listings = HashMap::new();
        for (session, listing) in healthy {
            let name = Arc::clone(session.backend().shared_name());
            listings.insert(Arc::clone(&name), self.shared.listing(&name, listing));
            backends.insert(name, Arc::new(session));
        }
        let tables = self.shared.tables(&self.aggregation, &backends, listings);
        Session {
            id: meta.id.clone(),
            meta,
            state: RwLock::new(State {
                closed: false,
                backends: Arc::new(backends),
                tables,
            }),
            inflight: Inflight::default(),
            closing: tokio::sync::Notify::new(),
            streams: std::sync::atomic::AtomicU64::new(0),
            new_stream: tokio::sync::Notify::new(),
            last_seen: AtomicU64::new(0),
            last_store_touch: AtomicU64::new(0),
            instructions,
            factory: Arc::clone(self),
            heal: tokio::sync::Mutex::new(()),
            events: super::events::EventLog::new(super::events::first_id_now()),
            publishing: tokio::sync::Mutex::new(()),
            calls: super::calls::Calls::default(),
            call_streams: Default::default(),
            listening: super::listen::ListenSlot::default(),
            seen_recoveries: AtomicU64::new(recoveries),
            caller,
        }
    }

    /// Opens (or resumes, given a `record`) one backend under the per-backend timeout.
    fn open<'a>(
        &'a self,
        backend: &'a Arc<Backend>,
        client_init: &'a Value,
        record: Option<&'a BackendRecord>,
        caller: Option<&'a Arc<CallerToken>>,
    ) -> BoxFuture<'a, Result<Opened, Failure>> {
        Box::pin(async move {
            if backend.circuit().is_open() {
                self.metrics
                    .backend_inits
                    .with_label_values(&[backend.name(), "circuit_open"])
                    .inc();
                return Err(Failure {
                    backend: backend.name().to_owned(),
                    reason: "circuit open: it failed recently and is being probed".into(),
                });
            }
            let started = Instant::now();
            let timeout = self.session.init_timeout;
            let result = tokio::time::timeout(timeout, open_or_resume(backend, client_init, record, caller))
                .await
                .unwrap_or(Err(BackendError::Timeout(timeout)));
            backend.opened(&result);
            self.record_open(backend.name(), record.is_some(), started.elapsed(), &result);
            result.map(|(opened, _)| opened).map_err(|e| {
                tracing::warn!(backend = backend.name(), error = %e, "backend left out of the session");
                Failure {
                    backend: backend.name().to_owned(),
                    reason: e.to_string(),
                }
            })
        })
    }

    fn record_open(
        &self,
        name: &str,
        restoring: bool,
        took: Duration,
        result: &Result<(Opened, Outcome), BackendError>,
    ) {
        let outcome = result.as_ref().map_or_else(BackendError::outcome, |_| "ok");
        self.metrics.backend_inits.with_label_values(&[name, outcome]).inc();
        self.metrics
            .backend_init_duration
            .with_label_values(&[name])
            .observe(took.as_secs_f64());
        if restoring {
            let label = match result {
                Ok((_, Outcome::Resumed)) => "resumed",
                Ok(_) => "reinitialized",
                Err(_) => "failed",
            };
            self.metrics.backend_rebuilds.with_label_values(&[name, label]).inc();
            tracing::info!(backend = name, outcome = label, "backend session restored");
        }
    }

    /// Ends the backend sessions a session's metadata lists, for a session
    /// no replica holds (each DELETE bounded by the backend's notice bound).
    pub(crate) async fn close_stored(&self, records: &[BackendRecord]) {
        let closes = records.iter().filter_map(|record| {
            let backend = self.backends.iter().find(|b| b.name() == &*record.name)?;
            let session = backend.resume(record, None)?;
            Some(async move { session.close().await })
        });
        futures_util::future::join_all(closes).await;
    }

    /// The shared copies of listings and catalogs.
    pub(crate) fn shared(&self) -> &super::shared::Shared {
        &self.shared
    }

    /// How many backend circuits have closed on this replica so far.
    pub(crate) fn recoveries(&self) -> u64 {
        self.recoveries.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Whether backend `name` is the server in this pod (`backends[].local`).
    pub(crate) fn is_local(&self, name: &str) -> bool {
        self.backends.iter().any(|b| b.name() == name && b.config.local)
    }

    /// Every configured backend.
    pub(crate) fn backends(&self) -> &[Arc<Backend>] {
        &self.backends
    }

    pub(crate) fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    pub(crate) fn max_calls(&self) -> usize {
        self.session.max_calls
    }

    pub(crate) fn call_timeout(&self) -> Duration {
        self.session.call_timeout
    }

    pub(crate) fn aggregation(&self) -> &Arc<AggregationConfig> {
        &self.aggregation
    }

    pub(crate) fn store(&self) -> &Arc<dyn SessionStore> {
        &self.store
    }
}

/// Resumes the stored backend session if it can, else opens a new one.
async fn open_or_resume(
    backend: &Arc<Backend>,
    client_init: &Value,
    record: Option<&BackendRecord>,
    caller: Option<&Arc<CallerToken>>,
) -> Result<(Opened, Outcome), BackendError> {
    // A pod-local backend's sessions live in that pod's server only: never resumed elsewhere.
    let resumable = record.filter(|_| !backend.config.local);
    if let Some(resumed) = resumable.and_then(|r| backend.resume(r, caller)) {
        match list_everything(&resumed).await {
            Ok(listing) => return Ok(((resumed, listing), Outcome::Resumed)),
            Err(BackendError::SessionExpired) => {} // the backend forgot it: start over
            Err(e) => return Err(e),
        }
    }
    let session = backend.connect(client_init, caller).await?;
    match list_everything(&session).await {
        Ok(listing) => Ok((
            (session, listing),
            if record.is_some() {
                Outcome::Reinitialized
            } else {
                Outcome::Created
            },
        )),
        Err(e) => {
            session.close().await;
            Err(e)
        }
    }
}

/// The catalog of the given backends, in config order.
pub(crate) fn build_catalog(
    aggregation: &AggregationConfig,
    backends: &HashMap<Arc<str>, Arc<BackendSession>>,
    listings: &HashMap<Arc<str>, Arc<Listing>>,
) -> Catalog {
    let mut pairs: Vec<_> = listings
        .iter()
        .filter_map(|(name, listing)| backends.get(name).map(|s| (&s.backend().config, listing.as_ref())))
        .collect();
    // Catalog::build orders by `aggregation.priority`, then by the order given here.
    pairs.sort_by_key(|(config, _)| backends.get(config.name.as_str()).map(|s| s.backend().position));
    Catalog::build(aggregation, &pairs)
}

/// Every tool, prompt, resource and template the backend advertises.
pub(crate) async fn list_everything(session: &BackendSession) -> Result<Listing, BackendError> {
    let mut listing = Listing::default();
    if session.has_capability("tools") {
        listing.tools = list_all(session, "tools/list", "tools").await?;
    }
    if session.has_capability("prompts") {
        listing.prompts = list_all(session, "prompts/list", "prompts").await?;
    }
    if session.has_capability("resources") {
        listing.resources = list_all(session, "resources/list", "resources").await?;
        listing.resource_templates = list_all(session, "resources/templates/list", "resourceTemplates").await?;
    }
    Ok(listing)
}

/// Follows `nextCursor` until the backend's list ends.
async fn list_all(session: &BackendSession, method: &str, key: &str) -> Result<Vec<Value>, BackendError> {
    let mut items = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..MAX_LIST_PAGES {
        let params = cursor.as_ref().map(|c| json!({ "cursor": c }));
        // The caller's init timeout bounds the whole listing; this one never fires first.
        let mut page = session.request(method, params.as_ref(), Duration::MAX / 4).await?;
        if let Some(Value::Array(chunk)) = page.get_mut(key).map(Value::take) {
            items.extend(chunk);
        }
        match page.get("nextCursor").and_then(Value::as_str) {
            Some(next) if !next.is_empty() => cursor = Some(next.to_owned()),
            _ => return Ok(items),
        }
    }
    Err(BackendError::Protocol(format!(
        "{method}: more than {MAX_LIST_PAGES} pages"
    )))
}

/// The gateway's `instructions`: which backends this session has, with theirs.
fn instructions(healthy: &[Opened], failed: &[Failure]) -> String {
    let mut text = if healthy.is_empty() {
        String::from("vmcp: no backend is available in this session; tools, prompts and resources are empty.")
    } else {
        let names: Vec<&str> = healthy.iter().map(|(s, _)| s.name()).collect();
        format!("vmcp aggregates these MCP servers: {}.", names.join(", "))
    };
    if !failed.is_empty() {
        let down: Vec<String> = failed.iter().map(|f| format!("{} ({})", f.backend, f.reason)).collect();
        text.push_str(&format!(" Unavailable: {}.", down.join("; ")));
    }
    for (session, _) in healthy {
        if let Some(own) = session.init_result().get("instructions").and_then(Value::as_str) {
            text.push_str(&format!("\n\n[{}] {}", session.name(), own));
        }
    }
    text
}
