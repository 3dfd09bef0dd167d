//! `auth`: who may call vmcp.

use std::time::Duration;

use serde::Deserialize;

use super::duration;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// vmcp as an OAuth 2.1 resource server; unset (the default): any
    /// `Authorization` header is accepted as is and only binds the session.
    pub inbound: Option<InboundAuthConfig>,
}

/// JWT access tokens validated against the issuer's keys (MCP authorization,
/// RFC 9068 access tokens, RFC 8707 audiences, RFC 9728 metadata).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InboundAuthConfig {
    /// The authorization server's issuer identifier (`iss` of its tokens);
    /// its metadata is discovered from it unless `jwks_uri` is given.
    pub issuer: String,
    /// This MCP server's canonical resource URI, the public URL of `/mcp`
    /// (e.g. `https://mcp.example.com/mcp`): tokens must name it in `aud`.
    pub audience: String,
    /// The issuer's key set, if not discovered from its metadata.
    #[serde(default)]
    pub jwks_uri: Option<String>,
    /// Signature algorithms accepted (never `none`).
    #[serde(default = "default_algorithms")]
    pub algorithms: Vec<String>,
    /// Scopes every token must carry (403 `insufficient_scope` otherwise).
    #[serde(default)]
    pub required_scopes: Vec<String>,
    /// The claim that lists the caller's groups or roles.
    #[serde(default = "default_groups_claim")]
    pub groups_claim: String,
    /// Clock skew allowed on `exp` and `nbf`.
    #[serde(default = "default_leeway", with = "duration")]
    pub leeway: Duration,
    /// A token signed with a key the cached set does not hold makes vmcp
    /// fetch the set again, at most this often (key rotation without a
    /// request flood reaching the issuer).
    #[serde(default = "default_jwks_refresh", with = "duration")]
    pub jwks_min_refresh: Duration,
    /// How long a fetched key set is used before it is fetched again.
    #[serde(default = "default_jwks_ttl", with = "duration")]
    pub jwks_ttl: Duration,
    /// Bound of each request to the issuer (metadata, key set).
    #[serde(default = "default_fetch_timeout", with = "duration")]
    pub fetch_timeout: Duration,
}

fn default_algorithms() -> Vec<String> {
    ["RS256", "PS256", "ES256"].map(String::from).to_vec()
}

fn default_groups_claim() -> String {
    "groups".into()
}

fn default_leeway() -> Duration {
    Duration::from_secs(30)
}

fn default_jwks_refresh() -> Duration {
    Duration::from_secs(10)
}

fn default_jwks_ttl() -> Duration {
    Duration::from_secs(600)
}

fn default_fetch_timeout() -> Duration {
    Duration::from_secs(5)
}
