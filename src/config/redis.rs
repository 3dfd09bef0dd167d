//! `store.redis`: where Redis is (one server, Sentinel or Cluster) and how
//! to authenticate; connected by [`crate::store::redis_conn`].

use serde::Deserialize;

/// Where Redis is: exactly one of `url` (one server), `sentinel` or `cluster`.
#[derive(Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisConfig {
    /// One server: `redis://` or `rediss://` URL; credentials may come from `${VAR}`.
    #[serde(default)]
    pub url: Option<String>,
    /// Redis Sentinel: the master is asked of the sentinels, and again after a failover.
    #[serde(default)]
    pub sentinel: Option<SentinelConfig>,
    /// Redis Cluster: `host:port` of some of its nodes (the others are discovered).
    #[serde(default)]
    pub cluster: Option<Vec<String>>,
    /// ACL user for the data nodes (the master, the cluster's nodes, or the
    /// URL's server, whose own user it replaces).
    #[serde(default)]
    pub username: Option<String>,
    /// Password for the data nodes (`${VAR}`), replacing the URL's if any.
    #[serde(default)]
    pub password: Option<String>,
    /// TLS to sentinels and data nodes (`sentinel`, `cluster`; a URL says it with `rediss://`).
    #[serde(default)]
    pub tls: bool,
    #[serde(default = "default_key_prefix")]
    pub key_prefix: String,
}

/// `store.redis.sentinel`.
#[derive(Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SentinelConfig {
    /// The name the sentinels monitor the master under (`mymaster`).
    pub master_name: String,
    /// `host:port` of the sentinels (any one answering is enough).
    pub nodes: Vec<String>,
    /// ACL user for the sentinels themselves, when they require one.
    #[serde(default)]
    pub username: Option<String>,
    /// Password for the sentinels themselves (`requirepass` in sentinel.conf).
    #[serde(default)]
    pub password: Option<String>,
}

/// Never prints passwords, nor a URL's credentials.
impl std::fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisConfig")
            .field("url", &self.url.as_deref().map(crate::redact::url))
            .field("sentinel", &self.sentinel)
            .field("cluster", &self.cluster)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("tls", &self.tls)
            .field("key_prefix", &self.key_prefix)
            .finish()
    }
}

impl std::fmt::Debug for SentinelConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SentinelConfig")
            .field("master_name", &self.master_name)
            .field("nodes", &self.nodes)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

pub(super) fn default_key_prefix() -> String {
    "vmcp:".into()
}

/// `host:port` (`[v6]:port` too): a host with nothing a URL would read as
/// credentials or a path, and a non-zero port.
pub fn parse_node(node: &str) -> Option<(String, u16)> {
    let (host, port) = node.rsplit_once(':')?;
    let port: u16 = port.parse().ok().filter(|p| *p > 0)?;
    let bare = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    let ok = !bare.is_empty()
        && bare
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':'))
        && (bare.len() == host.len()) != bare.contains(':');
    ok.then(|| (host.to_owned(), port))
}
