//! Opening a session's backend sessions: in parallel, at most
//! `max_backend_init_concurrency` at a time, each under its own
//! `init_timeout`. A backend that fails or hangs is logged and left out; the
//! session goes on with the rest (even with none).

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, RwLock};
use std::time::Instant;

use futures_util::future::BoxFuture;
use futures_util::stream::{self, StreamExt};
use serde_json::{json, Value};

use super::{inflight::Inflight, Session, State};
use crate::aggregate::{Catalog, Listing};
use crate::backend::{Backend, BackendError, BackendSession};
use crate::config::{AggregationConfig, SessionConfig};
use crate::store::{unix_ms, SessionMetadata};
use crate::telemetry::Metrics;

/// Backend pages followed at most per list, against a backend that never ends its cursor chain.
const MAX_LIST_PAGES: usize = 1000;

/// Builds sessions from the configured backends.
pub struct SessionFactory {
    backends: Vec<Arc<Backend>>,
    session: SessionConfig,
    aggregation: AggregationConfig,
    metrics: Metrics,
}

/// A backend that could not be opened, and why (for logs and instructions).
struct Failure {
    backend: String,
    reason: String,
}

impl SessionFactory {
    pub fn new(
        backends: Vec<Arc<Backend>>,
        session: SessionConfig,
        aggregation: AggregationConfig,
        metrics: Metrics,
    ) -> Self {
        Self {
            backends,
            session,
            aggregation,
            metrics,
        }
    }

    /// Opens one backend session per backend and assembles the session.
    pub async fn create(
        &self,
        id: String,
        client_init: Value,
        protocol_version: String,
        identity: Option<String>,
    ) -> Session {
        let started = Instant::now();
        // Boxed futures: rustc cannot prove a closure-built stream `Send` for every lifetime.
        let opens: Vec<BoxFuture<'_, Result<(BackendSession, Listing), Failure>>> = self
            .backends
            .iter()
            .map(|b| Box::pin(self.open(b, &client_init)) as _)
            .collect();
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
        // Keep config order, so priority and listing order do not depend on who answered first.
        healthy.sort_by_key(|(s, _)| self.backends.iter().position(|b| b.name() == s.name()));
        self.metrics
            .session_create_duration
            .observe(started.elapsed().as_secs_f64());
        if healthy.is_empty() && !self.backends.is_empty() {
            tracing::warn!(session.id = %id, "session created with no healthy backend");
        }
        let catalog = {
            let pairs: Vec<_> = healthy
                .iter()
                .map(|(s, l)| (&s.backend().config, l))
                .collect();
            Catalog::build(&self.aggregation, &pairs)
        };
        let now = unix_ms();
        let meta = SessionMetadata {
            id: id.clone(),
            created_at_ms: now,
            last_seen_ms: now,
            identity,
            protocol_version,
            client_init,
            backends: healthy.iter().map(|(s, _)| s.record()).collect(),
        };
        let instructions = instructions(&healthy, &failed);
        let backends: HashMap<Arc<str>, Arc<BackendSession>> = healthy
            .into_iter()
            .map(|(s, _)| (Arc::from(s.name()), Arc::new(s)))
            .collect();
        Session {
            id,
            meta,
            state: RwLock::new(State {
                closed: false,
                backends: Arc::new(backends),
                catalog: Arc::new(catalog),
            }),
            inflight: Inflight::default(),
            last_seen: AtomicU64::new(0),
            call_timeout: self.session.call_timeout,
            page_size: self.aggregation.page_size,
            metrics: self.metrics.clone(),
            instructions,
        }
    }

    /// Handshake and listing of one backend, under the per-backend timeout.
    async fn open(
        &self,
        backend: &Arc<Backend>,
        client_init: &Value,
    ) -> Result<(BackendSession, Listing), Failure> {
        let started = Instant::now();
        let timeout = self.session.init_timeout;
        let result =
            match tokio::time::timeout(timeout, connect_and_list(backend, client_init)).await {
                Ok(r) => r,
                Err(_) => Err(BackendError::Timeout(timeout)),
            };
        let name = backend.name();
        let outcome = result.as_ref().map_or_else(BackendError::outcome, |_| "ok");
        self.metrics
            .backend_inits
            .with_label_values(&[name, outcome])
            .inc();
        self.metrics
            .backend_init_duration
            .with_label_values(&[name])
            .observe(started.elapsed().as_secs_f64());
        result.map_err(|e| {
            tracing::warn!(backend = name, error = %e, "backend left out of the session");
            Failure {
                backend: name.to_owned(),
                reason: e.to_string(),
            }
        })
    }
}

async fn connect_and_list(
    backend: &Arc<Backend>,
    client_init: &Value,
) -> Result<(BackendSession, Listing), BackendError> {
    let session = backend.connect(client_init).await?;
    match list_everything(&session).await {
        Ok(listing) => Ok((session, listing)),
        Err(e) => {
            session.close().await;
            Err(e)
        }
    }
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
        listing.resource_templates =
            list_all(session, "resources/templates/list", "resourceTemplates").await?;
    }
    Ok(listing)
}

/// Follows `nextCursor` until the backend's list ends.
async fn list_all(
    session: &BackendSession,
    method: &str,
    key: &str,
) -> Result<Vec<Value>, BackendError> {
    let mut items = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..MAX_LIST_PAGES {
        let params = cursor.as_ref().map(|c| json!({ "cursor": c }));
        // The outer init timeout bounds the whole listing; this one never fires first.
        let mut page = session
            .request(method, params, std::time::Duration::MAX / 4)
            .await?;
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
fn instructions(healthy: &[(BackendSession, Listing)], failed: &[Failure]) -> String {
    let mut text = if healthy.is_empty() {
        String::from("vmcp: no backend is available in this session; tools, prompts and resources are empty.")
    } else {
        let names: Vec<&str> = healthy.iter().map(|(s, _)| s.name()).collect();
        format!("vmcp aggregates these MCP servers: {}.", names.join(", "))
    };
    if !failed.is_empty() {
        let down: Vec<String> = failed
            .iter()
            .map(|f| format!("{} ({})", f.backend, f.reason))
            .collect();
        text.push_str(&format!(" Unavailable: {}.", down.join("; ")));
    }
    for (session, _) in healthy {
        if let Some(own) = session
            .init_result()
            .get("instructions")
            .and_then(Value::as_str)
        {
            text.push_str(&format!("\n\n[{}] {}", session.name(), own));
        }
    }
    text
}
