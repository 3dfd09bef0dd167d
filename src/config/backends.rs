//! `backends:`: the MCP servers vmcp aggregates, how each is spoken to, and
//! which of its tools, prompts and resources clients see, under which names.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::BackendAuthConfig;

/// One backend MCP server: exactly one of `url` (Streamable HTTP) or `command` (stdio).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendConfig {
    /// `[a-z0-9-]+`, unique; the tool/prompt prefix in `prefix` conflict mode.
    pub name: String,
    /// Streamable HTTP endpoint, e.g. `http://127.0.0.1:9001/mcp`.
    #[serde(default)]
    pub url: Option<String>,
    /// Static HTTP headers sent with every request to this backend (`${VAR}` for secrets).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Which protocol era vmcp speaks to this (HTTP) backend: `handshake`
    /// (the default: a backend session per client session, which keeps a
    /// stateful server's per-session state), `stateless` (MCP 2026-07-28: no
    /// backend session at all), or `auto` (stateless if its `server/discover`
    /// names 2026-07-28, probed once and again after a failure).
    #[serde(default)]
    pub era: BackendEra,
    /// How a `url` backend is spoken to: `streamable_http` (the default) or
    /// `sse` (MCP 2024-11-05's HTTP+SSE: a GET stream and POSTs to the
    /// endpoint it names; such a session is never resumed on another replica).
    #[serde(default)]
    pub transport: HttpTransport,
    /// How vmcp authenticates to this (HTTP) backend beyond static headers:
    /// OAuth client credentials, token exchange, or (explicitly) passthrough.
    #[serde(default)]
    pub auth: Option<BackendAuthConfig>,
    /// Program and arguments of a stdio backend (one child process per session).
    #[serde(default)]
    pub command: Option<Vec<String>>,
    /// Extra environment for the stdio child process. A child otherwise gets
    /// only a minimal environment (see [`crate::backend::StdioBackend`]).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Names of vmcp's own environment variables passed on to the stdio child
    /// (resolved when the config is loaded; `env` wins). Never `VMCP_*`.
    #[serde(default)]
    pub inherit_env: Vec<String>,
    /// The server in this pod (sidecar mode): its backend sessions are valid
    /// only on the replica that opened them, so a session served elsewhere
    /// re-initializes it instead of resuming, and sessions are pinned.
    #[serde(default)]
    pub local: bool,
    /// Which tools of this backend are exposed, and under which names.
    #[serde(default)]
    pub tools: ItemFilter,
    /// Which prompts of this backend are exposed, and under which names.
    #[serde(default)]
    pub prompts: ItemFilter,
    /// This backend's own bound on one answer (a tool that returns files);
    /// unset: `session.max_response_bytes`.
    #[serde(default)]
    pub max_response_bytes: Option<usize>,
    /// How long an unused connection to this backend is kept for reuse
    /// (HTTP backends); unset: 4 s. Keep it below the server's own idle
    /// timeout (uvicorn's and Node's: 5 s), or vmcp races the server's close.
    #[serde(default, with = "super::duration::optional")]
    pub keep_alive: Option<std::time::Duration>,
}

/// See [`BackendConfig::transport`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HttpTransport {
    #[default]
    StreamableHttp,
    Sse,
}

/// See [`BackendConfig::era`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BackendEra {
    #[default]
    Handshake,
    Stateless,
    Auto,
}

/// Allow/deny lists and renames for one kind of item of one backend.
/// Patterns are exact names or end with `*` (a prefix match); `deny` wins over `allow`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ItemFilter {
    /// When non-empty, only matching items are exposed.
    #[serde(default)]
    pub allow: Vec<String>,
    /// Matching items are never exposed.
    #[serde(default)]
    pub deny: Vec<String>,
    /// Backend name → client-facing name; applied before any prefix.
    #[serde(default)]
    pub rename: BTreeMap<String, String>,
}
