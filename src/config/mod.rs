//! The YAML configuration: types, defaults, loading and validation.
//!
//! Loading is three steps so that every error can name the file and the field:
//! parse the YAML into a generic tree, expand `${VAR}` references in every string
//! through an injectable [`Lookup`] (tests never touch the process environment),
//! then deserialize into [`Config`] with the field path tracked, and validate.
//! The key names are an interface (DESIGN.md §7): operators' tooling writes them.

mod admin;
mod audit;
mod auth;
mod backends;
mod expand;
mod limits;
mod policy;
mod redis;
mod validate;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

pub use admin::AdminConfig;
pub use audit::{AuditConfig, AuditSink};
pub use auth::{
    AuthConfig, BackendAuthConfig, ClientAuthMethod, InboundAuthConfig, IntrospectionConfig, TokenClientConfig,
};
pub use backends::{BackendConfig, BackendEra, HttpTransport, ItemFilter};
pub use expand::{Lookup, ProcessEnv};
pub use limits::{CallKind, LimitMatch, LimitRule, LimitScope, LimitsConfig, OnStoreError};
pub use policy::PolicyConfig;
pub use redis::{parse_node, RedisConfig, SentinelConfig};

/// Everything that can go wrong while loading a configuration file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{file}: cannot read: {source}")]
    Read { file: PathBuf, source: std::io::Error },
    #[error("{file}: invalid YAML: {message}")]
    Syntax { file: PathBuf, message: String },
    #[error("{file}: field `{field}`: {message}")]
    Field {
        file: PathBuf,
        field: String,
        message: String,
    },
}

/// The whole configuration of one replica.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Address of the MCP endpoint (and of health and metrics unless `admin_listen` is set).
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Optional separate address for `/healthz`, `/readyz`, `/metrics` and
    /// the admin API (`/admin/...`, served there only).
    #[serde(default)]
    pub admin_listen: Option<SocketAddr>,
    /// This replica's id; `VMCP_REPLICA_ID` overrides it.
    #[serde(default = "default_replica_id")]
    pub replica_id: String,
    /// The backend MCP servers, in priority order.
    #[serde(default)]
    pub backends: Vec<BackendConfig>,
    #[serde(default)]
    pub session: SessionConfig,
    #[serde(default)]
    pub aggregation: AggregationConfig,
    #[serde(default)]
    pub store: StoreConfig,
    #[serde(default)]
    pub membership: MembershipConfig,
    #[serde(default)]
    pub affinity: AffinityConfig,
    #[serde(default)]
    pub http: HttpConfig,
    #[serde(default)]
    pub log: LogConfig,
    #[serde(default)]
    pub auth: AuthConfig,
    /// The admin API's credential (the API is off without one).
    #[serde(default)]
    pub admin: AdminConfig,
    /// Cedar policies over what callers may list and call.
    #[serde(default)]
    pub policy: PolicyConfig,
    /// Token-bucket rate limits on calls (none by default).
    #[serde(default)]
    pub limits: LimitsConfig,
    /// The audit log of calls and refusals (off by default).
    #[serde(default)]
    pub audit: AuditConfig,
}

/// The client-session lifecycle knobs.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SessionConfig {
    /// A session unused this long is closed with its backend sessions.
    #[serde(with = "duration")]
    pub idle_timeout: Duration,
    /// Per-backend deadline for opening a backend session (handshake and listing).
    #[serde(with = "duration")]
    pub init_timeout: Duration,
    /// How many backend sessions one client session opens at once.
    pub max_backend_init_concurrency: usize,
    /// Sessions one replica holds at most; `initialize` beyond it gets 503.
    pub max_sessions: usize,
    /// Requests one session may have at its backends at once (calls whose
    /// client stream went away included); more get 429.
    pub max_calls: usize,
    /// Deadline of one forwarded call to a backend.
    #[serde(with = "duration")]
    pub call_timeout: Duration,
    /// The most bytes of one backend answer (of one event, on an SSE
    /// stream): a bigger one fails that request (-32603) and no more of it
    /// is read, so one answer cannot make a replica hold more than this.
    pub max_response_bytes: usize,
    /// Deadline of every notice to a backend that nobody waits for (the
    /// cancellation sent after a timeout, the backend-session DELETE at close)
    /// and of the wait for in-flight calls when a session closes.
    #[serde(with = "duration")]
    pub close_timeout: Duration,
    /// Key of the identity hashes that bind sessions to callers; the same on
    /// every replica. Unset: a random key kept in the store.
    pub identity_key: Option<String>,
    /// The per-backend circuit breaker.
    pub circuit: CircuitConfig,
}

/// When a backend's circuit opens and how often it is probed.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CircuitConfig {
    /// Consecutive failures to open a backend session (or reach the backend) that open it.
    pub failures: u32,
    /// How long new sessions skip the backend before the first probe.
    #[serde(with = "duration")]
    pub open_for: Duration,
    /// The longest wait between probes (it doubles while they fail).
    #[serde(with = "duration")]
    pub max_open_for: Duration,
}

impl Default for CircuitConfig {
    fn default() -> Self {
        Self {
            failures: 1,
            open_for: Duration::from_secs(5),
            max_open_for: Duration::from_secs(60),
        }
    }
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self {
            idle_timeout: Duration::from_secs(30 * 60),
            init_timeout: Duration::from_secs(5),
            max_backend_init_concurrency: 10,
            max_sessions: 100_000,
            max_calls: 128,
            call_timeout: Duration::from_secs(300),
            max_response_bytes: 16 * 1024 * 1024,
            close_timeout: Duration::from_secs(2),
            identity_key: None,
            circuit: CircuitConfig::default(),
        }
    }
}

/// How name conflicts between backends are resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ConflictMode {
    /// Every tool and prompt is exposed as `{backend}{separator}{name}`.
    #[default]
    Prefix,
    /// Names are kept; on a clash the backend first in `priority` (or config order) wins.
    Priority,
    /// Names are kept; clashes must be resolved with per-backend `rename`s.
    Manual,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AggregationConfig {
    pub conflict: ConflictMode,
    pub separator: String,
    /// Backend names, highest priority first; unnamed backends follow in config order.
    pub priority: Vec<String>,
    /// Items per page of `tools/list`, `resources/list`, ... answered to clients.
    pub page_size: usize,
}

impl Default for AggregationConfig {
    fn default() -> Self {
        Self {
            conflict: ConflictMode::Prefix,
            separator: "_".into(),
            priority: Vec::new(),
            page_size: 100,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    #[default]
    Memory,
    Redis,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    pub kind: StoreKind,
    pub redis: Option<RedisConfig>,
    /// A session's store lifetime is extended at most this often (and at
    /// least every `session.idle_timeout / 4`), in the background.
    #[serde(with = "duration")]
    pub touch_interval: Duration,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            kind: StoreKind::Memory,
            redis: None,
            touch_interval: Duration::from_secs(15),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum MembershipKind {
    #[default]
    Static,
    Kubernetes,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MembershipConfig {
    pub kind: MembershipKind,
    /// `static`: replica id → `host:port` of its MCP listener (this replica included).
    /// Empty: a single replica. Reloaded from the file on SIGHUP.
    pub members: BTreeMap<String, String>,
    /// `kubernetes`: the headless Service whose EndpointSlices list the replicas.
    pub kubernetes: Option<KubernetesMembership>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KubernetesMembership {
    /// Name of the headless Service (label `kubernetes.io/service-name`).
    pub service: String,
    /// Namespace; default: the pod's own (from its service account).
    #[serde(default)]
    pub namespace: Option<String>,
    /// Port of the MCP listener on each pod; default: the port of `listen`.
    #[serde(default)]
    pub port: Option<u16>,
}

/// Getting each session's requests to its owner replica.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AffinityConfig {
    /// Shared secret that authenticates replica-to-replica hops (HMAC-SHA256);
    /// required with more than one replica. Use `${VMCP_HOP_KEY}`.
    pub hop_key: Option<String>,
    /// A hop header older or newer than this is refused (clock skew + transit).
    #[serde(with = "duration")]
    pub hop_max_age: Duration,
    /// How long a replica keeps the runtime of a session it no longer owns.
    #[serde(with = "duration")]
    pub release_grace: Duration,
    /// Connecting to the owner may take this long before the request is served here.
    #[serde(with = "duration")]
    pub connect_timeout: Duration,
    /// How sessions are placed; unset: `pinned` if a backend is `local`, else `hashed`.
    pub placement: Option<PlacementMode>,
}

/// How a session finds its owner replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PlacementMode {
    /// A session stays with the replica that created it while that replica is
    /// a member (its id names it, authenticated); only new sessions and
    /// sessions of departed replicas are placed by hashing.
    Pinned,
    /// Every session is placed by rendezvous hashing over the live members.
    Hashed,
}

impl Config {
    /// The placement in force: as configured, else pinned when a backend is pod-local.
    pub fn placement(&self) -> PlacementMode {
        self.affinity
            .placement
            .unwrap_or(if self.backends.iter().any(|b| b.local) {
                PlacementMode::Pinned
            } else {
                PlacementMode::Hashed
            })
    }
}

impl Default for AffinityConfig {
    fn default() -> Self {
        Self {
            hop_key: None,
            hop_max_age: Duration::from_secs(30),
            release_grace: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(1),
            placement: None,
        }
    }
}

/// Front-door HTTP limits and shutdown.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Largest accepted request body; larger ones get 413.
    pub max_body_bytes: usize,
    /// A client must send a request's line and headers within this long of
    /// their first byte (of the accept, for a connection's first request),
    /// else the connection is closed (slowloris).
    #[serde(with = "duration")]
    pub header_read_timeout: Duration,
    /// How long an idle keep-alive connection waits for its next request.
    /// Longer than load balancers keep theirs (60 s for AWS's and nginx's,
    /// 600 s for Google's), so that vmcp never closes a connection one of
    /// them is about to reuse.
    #[serde(with = "duration")]
    pub idle_timeout: Duration,
    /// Most client connections held at once on the MCP listener; at it, the
    /// connections idle the longest are closed to make room, and a new one is
    /// refused only when none is idle. Unset: three quarters of the file
    /// descriptor limit (the rest is for backends, children and Redis).
    pub max_connections: Option<usize>,
    /// The whole body of a POST must arrive within this long, else 408.
    #[serde(with = "duration")]
    pub body_read_timeout: Duration,
    /// Most messages in one JSON-RPC batch; a longer batch is refused whole
    /// (400, -32600) and none of it runs: a batch's requests run concurrently,
    /// so this bounds the fan-out one POST can cause.
    pub max_batch: usize,
    /// How long a stopping replica waits for in-flight requests.
    #[serde(with = "duration")]
    pub shutdown_timeout: Duration,
    /// On SIGTERM, how long a replica reports not-ready but keeps serving, so
    /// load balancers stop sending to it first.
    #[serde(with = "duration")]
    pub drain_delay: Duration,
    /// Host names accepted in `Host` and `Origin` on `/mcp` (DNS rebinding
    /// protection). Unset: `localhost`, `127.0.0.1` and `[::1]` when `listen`
    /// is a loopback address, anything otherwise. `[]`: anything.
    pub allowed_hosts: Option<Vec<String>>,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            max_body_bytes: 4 * 1024 * 1024,
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(620),
            max_connections: None,
            body_read_timeout: Duration::from_secs(30),
            max_batch: 64,
            shutdown_timeout: Duration::from_secs(20),
            drain_delay: Duration::from_secs(5),
            allowed_hosts: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `text` (default) or `json`; `VMCP_LOG_FORMAT` overrides it.
    pub format: LogFormat,
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8080))
}

fn default_replica_id() -> String {
    "vmcp-0".into()
}

impl Config {
    /// Reads, expands, parses and validates `file`, resolving `${VAR}` and the
    /// `VMCP_*` overrides through `lookup`.
    pub fn load(file: &Path, lookup: &dyn Lookup) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(file).map_err(|source| ConfigError::Read {
            file: file.to_owned(),
            source,
        })?;
        Self::parse(&text, file, lookup)
    }

    /// Like [`Config::load`] for text already in memory; `file` only names errors.
    pub fn parse(text: &str, file: &Path, lookup: &dyn Lookup) -> Result<Self, ConfigError> {
        let syntax = |e: serde_yaml_ng::Error| ConfigError::Syntax {
            file: file.to_owned(),
            message: e.to_string(),
        };
        let mut tree: serde_yaml_ng::Value = serde_yaml_ng::from_str(text).map_err(syntax)?;
        if tree.is_null() {
            tree = serde_yaml_ng::Value::Mapping(Default::default());
        }
        expand::expand_tree(&mut tree, lookup).map_err(|(field, message)| ConfigError::Field {
            file: file.to_owned(),
            field,
            message,
        })?;
        let mut config: Config = serde_path_to_error::deserialize(tree).map_err(|e| {
            let field = e.path().to_string();
            ConfigError::Field {
                file: file.to_owned(),
                field,
                message: e.into_inner().to_string(),
            }
        })?;
        config.apply_overrides(lookup);
        validate::validate(&config).map_err(|(field, message)| ConfigError::Field {
            file: file.to_owned(),
            field,
            message,
        })?;
        config.resolve_inherited_env(lookup);
        Ok(config)
    }

    /// Copies the variables each stdio backend's `inherit_env` names into its
    /// `env` (unset ones are skipped; an explicit `env` entry wins).
    fn resolve_inherited_env(&mut self, lookup: &dyn Lookup) {
        for backend in &mut self.backends {
            for name in &backend.inherit_env {
                if let Some(value) = lookup.get(name) {
                    backend.env.entry(name.clone()).or_insert(value);
                }
            }
        }
    }

    /// Environment overrides for values that differ per pod or are secret.
    fn apply_overrides(&mut self, lookup: &dyn Lookup) {
        if let Some(id) = lookup.get("VMCP_REPLICA_ID").filter(|v| !v.is_empty()) {
            self.replica_id = id;
        }
        if let Some(key) = lookup.get("VMCP_HOP_KEY").filter(|v| !v.is_empty()) {
            self.affinity.hop_key = Some(key);
        }
        if let Some(key) = lookup.get("VMCP_IDENTITY_KEY").filter(|v| !v.is_empty()) {
            self.session.identity_key = Some(key);
        }
        if let Some(url) = lookup.get("VMCP_REDIS_URL").filter(|v| !v.is_empty()) {
            // The URL replaces a sentinel or cluster of the file; credentials and prefix stay.
            let mut redis = self.store.redis.take().unwrap_or_else(|| RedisConfig {
                key_prefix: redis::default_key_prefix(),
                ..RedisConfig::default()
            });
            redis.url = Some(url);
            redis.sentinel = None;
            redis.cluster = None;
            self.store.redis = Some(redis);
        }
        match lookup.get("VMCP_LOG_FORMAT").as_deref() {
            Some("json") => self.log.format = LogFormat::Json,
            Some("text") => self.log.format = LogFormat::Text,
            _ => {}
        }
    }
}

/// vmcp's own variables (hop key, Redis URL, ...), whatever the case: never
/// given to a backend.
pub fn is_vmcp_variable(name: &str) -> bool {
    name.get(..5).is_some_and(|p| p.eq_ignore_ascii_case("VMCP_"))
}

/// Humantime durations (`250ms`, `5s`, `30m`) for serde.
mod duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(&text)
            .map_err(|e| serde::de::Error::custom(format!("`{text}` is not a duration like 250ms, 5s or 30m: {e}")))
    }

    /// The same for an optional field (with `#[serde(default)]`).
    pub mod optional {
        use std::time::Duration;

        use serde::Deserializer;

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
            super::deserialize(d).map(Some)
        }
    }
}

#[cfg(test)]
mod tests;
