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
    /// Bound of each request to the issuer (metadata, key set, introspection).
    #[serde(default = "default_fetch_timeout", with = "duration")]
    pub fetch_timeout: Duration,
    /// Opaque (non-JWT) access tokens, validated by asking the issuer
    /// (RFC 7662); unset: only JWTs are accepted.
    #[serde(default)]
    pub introspection: Option<IntrospectionConfig>,
}

/// vmcp as a client of the issuer's introspection endpoint (RFC 7662);
/// its `Debug` leaves the secret out.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IntrospectionConfig {
    /// The endpoint; discovered from the issuer's metadata
    /// (`introspection_endpoint`) when unset.
    #[serde(default)]
    pub endpoint: Option<String>,
    pub client_id: String,
    /// `${VAR}` from a Secret; never logged.
    pub client_secret: String,
    /// `client_secret_basic` (the default) or `client_secret_post`.
    #[serde(default)]
    pub auth_method: ClientAuthMethod,
    /// How long an answer is used before the token is introspected again:
    /// a revoked token keeps working on a replica for at most this long.
    #[serde(default = "default_introspection_cache", with = "duration")]
    pub cache_ttl: Duration,
    /// Introspection requests in flight at most (per replica); more wait,
    /// within `fetch_timeout`. Tokens already answered never wait.
    #[serde(default = "default_introspection_concurrency")]
    pub max_concurrent: usize,
}

impl std::fmt::Debug for IntrospectionConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IntrospectionConfig")
            .field("endpoint", &self.endpoint)
            .field("client_id", &self.client_id)
            .field("auth_method", &self.auth_method)
            .field("cache_ttl", &self.cache_ttl)
            .field("max_concurrent", &self.max_concurrent)
            .finish_non_exhaustive()
    }
}

fn default_introspection_cache() -> Duration {
    Duration::from_secs(60)
}

fn default_introspection_concurrency() -> usize {
    16
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

/// How vmcp authenticates to one backend (`backends[].auth`). Static headers
/// (`backends[].headers`) need none of this. The client's own token is never
/// sent on unless `passthrough` says so for that backend.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum BackendAuthConfig {
    /// vmcp's own identity toward the backend: an OAuth client credentials
    /// token (RFC 6749 §4.4), requested for the backend's resource (RFC 8707),
    /// cached and refreshed before it expires. Every caller's requests carry it.
    ClientCredentials(TokenClientConfig),
    /// The caller's access token exchanged (RFC 8693) for one whose audience
    /// is this backend, cached per caller token until it expires. Needs
    /// `auth.inbound`, so that the token exchanged is one vmcp validated.
    TokenExchange(TokenClientConfig),
    /// The caller's access token sent to the backend unchanged. The MCP
    /// security guidance forbids this (a token for vmcp is not one for the
    /// backend): only for a backend that shares vmcp's audience on purpose.
    Passthrough {},
}

impl BackendAuthConfig {
    /// Whether requests need the caller's token (exchange, passthrough).
    pub fn needs_caller(&self) -> bool {
        !matches!(self, Self::ClientCredentials(_))
    }
}

/// An OAuth client of an authorization server's token endpoint.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenClientConfig {
    /// The token endpoint; discovered from `issuer`'s metadata when unset.
    #[serde(default)]
    pub token_url: Option<String>,
    /// The authorization server (RFC 8414 or OpenID Connect discovery).
    #[serde(default)]
    pub issuer: Option<String>,
    pub client_id: String,
    /// `${VAR}` from a Secret; never logged.
    pub client_secret: String,
    /// `client_secret_basic` (the default) or `client_secret_post`.
    #[serde(default)]
    pub auth_method: ClientAuthMethod,
    /// RFC 8707 `resource` asked for: the backend's URL unless set.
    #[serde(default)]
    pub resource: Option<String>,
    /// RFC 8693 `audience` (for servers that name audiences rather than URLs).
    #[serde(default)]
    pub audience: Option<String>,
    /// Scopes asked for, space-separated.
    #[serde(default)]
    pub scope: Option<String>,
    /// A token is renewed this long before it expires.
    #[serde(default = "default_refresh_before", with = "duration")]
    pub refresh_before: Duration,
    /// Bound of each request to the authorization server.
    #[serde(default = "default_fetch_timeout", with = "duration")]
    pub timeout: Duration,
}

/// Everything but the secret.
impl std::fmt::Debug for TokenClientConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenClientConfig")
            .field("token_url", &self.token_url)
            .field("issuer", &self.issuer)
            .field("client_id", &self.client_id)
            .field("auth_method", &self.auth_method)
            .field("resource", &self.resource)
            .field("audience", &self.audience)
            .field("scope", &self.scope)
            .field("refresh_before", &self.refresh_before)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientAuthMethod {
    #[default]
    ClientSecretBasic,
    ClientSecretPost,
}

fn default_refresh_before() -> Duration {
    Duration::from_secs(30)
}
