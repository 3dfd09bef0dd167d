//! Backend MCP servers: the per-replica registry and per-session clients.
//!
//! A [`Backend`] is shared by every session of a replica (one pooled HTTP
//! client per Streamable HTTP backend); a [`BackendSession`] is what one client
//! session holds for one backend. For HTTP that is only an id and a few
//! negotiated fields (no task, no connection), so a replica can hold 100k of
//! them. A stdio backend needs a process per session, and gets one.
//!
//! Requests and results cross this layer as JSON values: the gateway renames
//! and routes, it does not need typed results, and untyped values keep fields
//! that a typed round-trip would drop.

pub(crate) mod client;
mod credentials;
mod egress;
pub mod health;
mod http;
mod params;
mod reply;
mod session;
mod sse;
mod stateless;
mod stdio;
mod stdio_client;
mod stdio_lines;
mod subscriptions;

use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::BoxStream;
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::BackendConfig;
use crate::store::{BackendRecord, BackendTarget};

pub use self::credentials::CallerToken;
use self::health::{Circuit, Tripped};
pub use self::http::HttpBackend;
pub use self::params::{Params, ToolCall};
pub use self::reply::Reply;
pub use self::session::BackendSession;
use self::session::Conn;
pub use self::stdio::StdioBackend;

/// Why a backend request failed, classified so the front door can answer well.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BackendError {
    /// The backend answered with a JSON-RPC error: relayed as is.
    #[error("backend error {code}: {message}")]
    Rpc {
        code: i32,
        message: String,
        data: Option<Value>,
    },
    /// The backend no longer knows our backend session (HTTP 404).
    #[error("backend session expired")]
    SessionExpired,
    #[error("backend did not answer within {0:?}")]
    Timeout(Duration),
    #[error("backend unreachable: {0}")]
    Transport(String),
    #[error("backend broke the protocol: {0}")]
    Protocol(String),
    /// The backend refused vmcp's credentials, or none could be had for it
    /// (`backends[].auth`): the client's error, naming the backend.
    #[error("cannot authenticate to the backend: {0}")]
    Credentials(String),
    /// The client cancelled the request; the backend was told.
    #[error("request cancelled by the client")]
    Cancelled,
    /// An answer (or one event of its stream) bigger than
    /// its `max_response_bytes`: not read further, its connection closed.
    #[error("backend answer larger than {0} bytes (max_response_bytes)")]
    TooLarge(usize),
}

impl BackendError {
    /// `outcome` label for metrics.
    pub fn outcome(&self) -> &'static str {
        match self {
            Self::Rpc { .. } => "rpc_error",
            Self::SessionExpired => "expired",
            Self::Timeout(_) => "timeout",
            Self::Transport(_) => "unreachable",
            Self::Protocol(_) => "protocol_error",
            Self::Cancelled => "cancelled",
            Self::Credentials(_) => "unauthorized",
            Self::TooLarge(_) => "too_large",
        }
    }
}

/// A message a backend sent on its own: progress, a log line, a list
/// change, or a request to the client.
#[derive(Debug)]
pub struct FromBackend {
    pub backend: Arc<str>,
    pub message: Value,
}

/// What travels with one client request down to its backend: where the
/// backend's messages about it go, and the client's cancellation.
#[derive(Default)]
pub struct CallContext {
    relay: Option<mpsc::UnboundedSender<FromBackend>>,
    cancel: CancellationToken,
}

impl CallContext {
    pub fn new(relay: mpsc::UnboundedSender<FromBackend>, cancel: CancellationToken) -> Self {
        Self {
            relay: Some(relay),
            cancel,
        }
    }

    fn relay(&self, backend: &str, message: Value) {
        if let Some(relay) = &self.relay {
            // A closed relay: the client's request is over; nothing to tell.
            let _ = relay.send(FromBackend {
                backend: Arc::from(backend),
                message,
            });
        }
    }
}

/// How one configured backend is reached.
pub enum Transport {
    Http(HttpBackend),
    Stdio(StdioBackend),
    /// MCP 2024-11-05's HTTP+SSE (`backends[].transport: sse`).
    Sse(Box<self::sse::SseBackend>),
}

/// The bounds of a backend's waits that are not a call's own
/// `call_timeout`, and of what it may send.
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    /// One TCP (and TLS) connect, and a probe's whole handshake.
    pub connect: Duration,
    /// Every message nobody waits for: a cancellation notice, a client's
    /// answer, the backend-session DELETE, opening the backend's GET stream.
    pub notice: Duration,
    /// The most bytes of one answer (of one event, on a stream).
    pub max_answer: usize,
    /// How long an unused connection to the backend is kept for reuse.
    pub keep_alive: Duration,
}

/// One configured backend, shared by every session of this replica.
pub struct Backend {
    pub config: BackendConfig,
    /// Index in the configured backend list (aggregation order).
    pub position: usize,
    transport: Transport,
    circuit: Circuit,
    bounds: Bounds,
    capabilities: crate::sync::Interned<Value>,
    /// The name, shared by every session's tables (keys of 100k maps).
    shared_name: Arc<str>,
    /// Where it is, as session metadata records it (shared strings).
    target: BackendTarget,
    /// Its `backend_calls{outcome="ok"}` and duration children, per method.
    call_meters: crate::telemetry::MeterSlots,
}

impl Backend {
    /// Builds the shared client for `config` (no I/O).
    pub fn new(config: BackendConfig, position: usize, bounds: Bounds, circuit: Circuit) -> Result<Self, BackendError> {
        let transport = match (&config.url, &config.command) {
            (Some(url), _) if config.transport == crate::config::HttpTransport::Sse => {
                Transport::Sse(Box::new(self::sse::SseBackend::new(url, &config.headers, bounds)?))
            }
            (Some(url), _) => Transport::Http(HttpBackend::new(
                url,
                &config.headers,
                config.auth.as_ref(),
                config.era,
                bounds,
            )?),
            (None, Some(command)) => Transport::Stdio(StdioBackend::new(
                command.clone(),
                config.env.clone(),
                bounds.max_answer,
            )),
            (None, None) => {
                return Err(BackendError::Protocol(format!(
                    "backend {} has no url or command",
                    config.name
                )))
            }
        };
        let target = match &transport {
            // Without userinfo and query: the store is shared, and is not
            // the place for a URL's credentials (it only tells whether a
            // backend moved).
            Transport::Http(h) => BackendTarget::StreamableHttp {
                url: Arc::from(crate::redact::url(h.url())),
            },
            Transport::Stdio(s) => BackendTarget::Stdio {
                command: s.command().to_vec(),
            },
            Transport::Sse(s) => BackendTarget::Sse {
                url: Arc::from(crate::redact::url(s.url())),
            },
        };
        Ok(Self {
            position,
            transport,
            circuit,
            bounds,
            capabilities: crate::sync::Interned::default(),
            shared_name: Arc::from(config.name.as_str()),
            target,
            call_meters: crate::telemetry::MeterSlots::new(crate::mcp::Command::METHOD_LABELS),
            config,
        })
    }

    pub fn circuit(&self) -> &Circuit {
        &self.circuit
    }

    /// The shared copy of capabilities equal to the last ones seen (every
    /// session's metadata records them; the memory store keeps them all).
    pub fn shared_capabilities(&self, caps: &Value) -> Arc<Value> {
        self.capabilities.share(caps)
    }

    /// Tells the circuit how opening a backend session went.
    pub fn opened<T>(self: &Arc<Self>, result: &Result<T, BackendError>) {
        match result {
            Ok(_) | Err(BackendError::Rpc { .. } | BackendError::SessionExpired | BackendError::Cancelled) => {
                self.circuit.succeeded()
            }
            Err(
                e @ (BackendError::Timeout(_)
                | BackendError::Transport(_)
                | BackendError::Protocol(_)
                | BackendError::TooLarge(_)),
            ) => self.trip(e),
            // About a caller's token or the authorization server, not the backend's health.
            Err(BackendError::Credentials(_)) => {}
        }
    }

    /// The metric children of this backend's successful calls, per method.
    pub fn call_meters(&self) -> &crate::telemetry::MeterSlots {
        &self.call_meters
    }

    /// Tells the circuit how a call went: only "cannot reach it at all" counts
    /// against the backend (a slow tool is not a sick backend).
    pub fn called<T>(self: &Arc<Self>, result: &Result<T, BackendError>) {
        match result {
            Ok(_) | Err(BackendError::Rpc { .. }) => self.circuit.succeeded(),
            Err(e @ BackendError::Transport(_)) => self.trip(e),
            Err(_) => {}
        }
    }

    fn trip(self: &Arc<Self>, e: &BackendError) {
        if let Tripped::Opened(wait) = self.circuit.failed(&e.to_string()) {
            tokio::spawn(Arc::clone(self).probe(wait));
        }
    }

    /// Half-open probes until the backend answers a handshake: one at a
    /// time, after `wait`, then twice as long while it keeps failing.
    async fn probe(self: Arc<Self>, mut wait: Duration) {
        let hello = serde_json::json!({
            "protocolVersion": crate::mcp::LATEST_VERSION,
            "capabilities": {},
            "clientInfo": { "name": "vmcp-probe", "version": env!("CARGO_PKG_VERSION") },
        });
        loop {
            tokio::time::sleep(wait).await;
            if self.circuit.probing().is_none() {
                return; // closed meanwhile (a session got through)
            }
            let limit = self.bounds.connect;
            match tokio::time::timeout(limit, self.connect(&hello, None)).await {
                Ok(Ok(session)) => {
                    session.close().await;
                    self.circuit.succeeded();
                    return;
                }
                // It answered, refusing a probe that has no caller token to act for.
                Ok(Err(BackendError::Credentials(_))) => {
                    self.circuit.succeeded();
                    return;
                }
                Ok(Err(e)) => tracing::debug!(backend = self.name(), error = %e, "probe failed"),
                Err(_) => tracing::debug!(backend = self.name(), ?limit, "probe timed out"),
            }
            match self.circuit.probe_failed() {
                Some(next) => wait = next,
                None => return,
            }
        }
    }

    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// The name as a shared string (no allocation per session).
    pub fn shared_name(&self) -> &Arc<str> {
        &self.shared_name
    }

    /// Where this backend is, as recorded in session metadata.
    pub fn target(&self) -> BackendTarget {
        self.target.clone()
    }

    /// Whether its requests act on the caller's token (`backends[].auth`).
    pub fn needs_caller(&self) -> bool {
        matches!(&self.transport, Transport::Http(h) if h.needs_caller())
    }

    /// Opens a new backend session: `initialize` + `notifications/initialized`.
    /// `caller`: the client session's token, for a backend that acts on it.
    pub async fn connect(
        self: &Arc<Self>,
        client_init: &Value,
        caller: Option<&Arc<CallerToken>>,
    ) -> Result<BackendSession, BackendError> {
        let conn = match &self.transport {
            Transport::Http(h) => Conn::Http(h.connect(backend_init_params(client_init), caller.cloned()).await?),
            Transport::Stdio(s) => Conn::Stdio(s.connect(backend_init_params(client_init), self.name()).await?),
            Transport::Sse(s) => Conn::Stdio(s.connect(backend_init_params(client_init), self.name()).await?),
        };
        Ok(BackendSession {
            backend: Arc::clone(self),
            conn,
        })
    }
}

impl Backend {
    /// Takes over a stored backend session without a handshake, so the backend
    /// keeps its per-session state. Only Streamable HTTP sessions with an id can
    /// be resumed; `None` means the caller must [`Backend::connect`] afresh.
    pub fn resume(
        self: &Arc<Self>,
        record: &BackendRecord,
        caller: Option<&Arc<CallerToken>>,
    ) -> Option<BackendSession> {
        let (Transport::Http(http), Some(session_id)) = (&self.transport, &record.session_id) else {
            return None;
        };
        if record.target != self.target {
            return None; // the backend moved: its old sessions are elsewhere
        }
        let version = record.protocol_version.as_deref()?.to_owned();
        let capabilities = record
            .capabilities
            .as_deref()
            .cloned()
            .unwrap_or_else(|| serde_json::json!({}));
        let conn = Conn::Http(http.resume(session_id, version, capabilities, caller.cloned()).ok()?);
        Some(BackendSession {
            backend: Arc::clone(self),
            conn,
        })
    }
}

/// A protocol version as a shared string: the few known ones are allocated
/// once per process, not once per backend session record.
fn shared_version(version: &str) -> Arc<str> {
    static KNOWN: std::sync::OnceLock<Vec<Arc<str>>> = std::sync::OnceLock::new();
    let known = KNOWN.get_or_init(|| crate::mcp::SUPPORTED_VERSIONS.iter().map(|v| Arc::from(*v)).collect());
    known
        .iter()
        .find(|v| &***v == version)
        .map_or_else(|| Arc::from(version), Arc::clone)
}

/// The `initialize` params sent to a backend: the client's own, so a backend
/// asks (sampling, elicitation, roots) only what the client can answer, minus
/// tasks, which the gateway does not relay.
fn backend_init_params(client_init: &Value) -> Value {
    let mut params = client_init.clone();
    if let Some(caps) = params.get_mut("capabilities").and_then(Value::as_object_mut) {
        caps.remove("tasks");
    }
    params
}

/// The standard JSON-RPC error codes the gateway uses.
pub mod codes {
    pub const PARSE_ERROR: i32 = -32700;
    pub const INVALID_REQUEST: i32 = -32600;
    pub const METHOD_NOT_FOUND: i32 = -32601;
    pub const INVALID_PARAMS: i32 = -32602;
    pub const INTERNAL_ERROR: i32 = -32603;
}

/// Converts a backend's JSON-RPC error object into a [`BackendError::Rpc`].
pub(crate) fn rpc_error(error: &rmcp::model::ErrorData) -> BackendError {
    BackendError::Rpc {
        code: error.code.0,
        message: error.message.to_string(),
        data: error.data.clone(),
    }
}
