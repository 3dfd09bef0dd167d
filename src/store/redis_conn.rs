//! Connections to Redis in its three topologies, for the session store and
//! the rate limiter (`store.redis`):
//!
//! - **one server** (`url`): a [`ConnectionManager`], which reconnects by
//!   itself when the server comes back;
//! - **Sentinel** (`sentinel`): the sentinels name the master; a
//!   [`ConnectionManager`] talks to it. A command that fails as a dead or
//!   demoted master would (I/O error, timeout, `READONLY`) marks the
//!   connection stale, and the next command asks the sentinels again (at
//!   most every [`RESOLVE_EVERY`]), so a promoted replica is found within a
//!   command or two of the promotion;
//! - **Cluster** (`cluster`): the crate's async cluster client, which follows
//!   `MOVED`/`ASK`, refreshes its slot map after a failover and retries a
//!   bounded number of times.
//!
//! Every mode hands out a [`RedisConn`], one `ConnectionLike` for the
//! crate's commands, pipelines and scripts. Multi-key commands must stay in
//! one slot (the cluster client refuses a cross-slot pipeline); `MGET` is the
//! exception, split by slot by the cluster client.
//!
//! Deletion notifications use classic `PUBLISH`/`SUBSCRIBE`: on a cluster a
//! `PUBLISH` (from a script too) reaches the subscribers of every node over
//! the cluster bus, so the subscriber connects to any one node. Sharded
//! pub/sub (`SSUBSCRIBE`, Redis 7) would have to subscribe on every shard to
//! hear every slot, and the crate's cluster subscriptions need RESP3.
//!
//! Passwords go into connection settings, never into a URL or a log line.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType};
use redis::{
    Cmd, ConnectionInfo, ErrorKind, IntoConnectionInfo, Pipeline, RedisError, RedisFuture, ServerErrorKind, Value,
};
use tokio::sync::{mpsc, OnceCell};

use crate::config::{parse_node, RedisConfig};
use crate::sync::lock;

/// The sentinels are asked for the master at most this often.
pub const RESOLVE_EVERY: Duration = Duration::from_millis(250);

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("redis configuration: {0}")]
    Config(String),
    #[error("{0}")]
    Redis(#[from] RedisError),
    #[error("the sentinels did not name a master in time")]
    SentinelTimeout,
}

/// How long commands may take and how hard a connection tries again.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// Connecting, and each command's answer.
    pub command: Duration,
    /// Retries of a failed command (cluster) or reconnection attempts (one server, master).
    pub retries: usize,
    /// The longest wait between two of them.
    pub max_delay: Duration,
}

/// The shared connection of one topology; connects on first use, so a
/// replica starts while Redis is down.
pub struct RedisConnector {
    mode: Mode,
    timeouts: Timeouts,
}

// One per connector, made once: the size of the variants does not matter.
#[allow(clippy::large_enum_variant)]
enum Mode {
    Single {
        client: redis::Client,
        conn: OnceCell<ConnectionManager>,
    },
    Sentinel(SentinelMode),
    Cluster(ClusterMode),
}

struct ClusterMode {
    client: redis::cluster::ClusterClient,
    /// The nodes as given, for the deletion subscriber.
    nodes: Vec<ConnectionInfo>,
    next_node: AtomicUsize,
    conn: OnceCell<ClusterConnection>,
}

struct SentinelMode {
    /// Also serialises the questions to the sentinels.
    client: tokio::sync::Mutex<SentinelClient>,
    master: Mutex<Option<Master>>,
    stale: Arc<AtomicBool>,
    resolved_at: Mutex<Option<Instant>>,
}

#[derive(Clone)]
struct Master {
    addr: String,
    conn: ConnectionManager,
}

/// One connection of any topology (cheap to clone: all are multiplexed).
#[derive(Clone)]
pub enum RedisConn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
    /// The master's connection, and the flag its failures raise.
    Sentinel(ConnectionManager, Arc<AtomicBool>),
}

/// Whether an error looks like a dead or demoted master.
fn master_lost(e: &RedisError) -> bool {
    e.is_io_error()
        || e.is_timeout()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || matches!(
            e.kind(),
            ErrorKind::Server(ServerErrorKind::ReadOnly | ServerErrorKind::MasterDown | ServerErrorKind::BusyLoading)
        )
}

impl ConnectionLike for RedisConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Single(c) => c.req_packed_command(cmd),
            Self::Cluster(c) => c.req_packed_command(cmd),
            Self::Sentinel(c, stale) => Box::pin(async move {
                let result = c.req_packed_command(cmd).await;
                if result.as_ref().is_err_and(master_lost) {
                    stale.store(true, Ordering::Relaxed);
                }
                result
            }),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Self::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
            Self::Sentinel(c, stale) => Box::pin(async move {
                let result = c.req_packed_commands(pipeline, offset, count).await;
                if result.as_ref().is_err_and(master_lost) {
                    stale.store(true, Ordering::Relaxed);
                }
                result
            }),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(c) | Self::Sentinel(c, _) => c.get_db(),
            Self::Cluster(c) => c.get_db(),
        }
    }
}

/// `redis[s]://host:port` with the data nodes' credentials set apart.
fn node_info(
    node: &str,
    tls: bool,
    username: Option<&str>,
    password: Option<&str>,
) -> Result<ConnectionInfo, ConnectError> {
    let (host, port) = parse_node(node).ok_or_else(|| ConnectError::Config(format!("`{node}` is not host:port")))?;
    let scheme = if tls { "rediss" } else { "redis" };
    let info = format!("{scheme}://{host}:{port}").into_connection_info()?;
    let mut settings = info.redis_settings().clone();
    if let Some(user) = username {
        settings = settings.set_username(user);
    }
    if let Some(pw) = password {
        settings = settings.set_password(pw);
    }
    Ok(info.set_redis_settings(settings))
}

impl RedisConnector {
    /// Reads the topology from the config; connects nothing yet.
    pub fn new(config: &RedisConfig, timeouts: Timeouts) -> Result<Self, ConnectError> {
        // An empty value (an unset chart value, `${VAR}` of an empty variable) is no value.
        let given = |v: &Option<String>| v.as_deref().filter(|v| !v.is_empty()).map(str::to_owned);
        let (user, pw) = (given(&config.username), given(&config.password));
        let (user, pw) = (user.as_deref(), pw.as_deref());
        let mode = match (&config.url, &config.sentinel, &config.cluster) {
            (Some(url), None, None) => {
                let mut info = url
                    .as_str()
                    .into_connection_info()
                    .map_err(|e| ConnectError::Config(format!("redis URL: {e}")))?;
                if user.is_some() || pw.is_some() {
                    let mut settings = info.redis_settings().clone();
                    if let Some(user) = user {
                        settings = settings.set_username(user);
                    }
                    if let Some(pw) = pw {
                        settings = settings.set_password(pw);
                    }
                    info = info.set_redis_settings(settings);
                }
                Mode::Single {
                    client: redis::Client::open(info)?,
                    conn: OnceCell::new(),
                }
            }
            (None, Some(s), None) => {
                let sentinels = s
                    .nodes
                    .iter()
                    .map(|n| node_info(n, config.tls, None, None).map(|i| i.addr().clone()))
                    .collect::<Result<Vec<_>, _>>()?;
                let mut builder = SentinelClientBuilder::new(sentinels, &s.master_name, SentinelServerType::Master)?;
                if config.tls {
                    builder = builder
                        .set_client_to_redis_tls_mode(redis::TlsMode::Secure)
                        .set_client_to_sentinel_tls_mode(redis::TlsMode::Secure);
                }
                if let Some(user) = user {
                    builder = builder.set_client_to_redis_username(user);
                }
                if let Some(pw) = pw {
                    builder = builder.set_client_to_redis_password(pw);
                }
                if let Some(user) = given(&s.username) {
                    builder = builder.set_client_to_sentinel_username(user);
                }
                if let Some(pw) = given(&s.password) {
                    builder = builder.set_client_to_sentinel_password(pw);
                }
                Mode::Sentinel(SentinelMode {
                    client: tokio::sync::Mutex::new(builder.build()?),
                    master: Mutex::new(None),
                    stale: Arc::new(AtomicBool::new(false)),
                    resolved_at: Mutex::new(None),
                })
            }
            (None, None, Some(nodes)) => {
                let nodes = nodes
                    .iter()
                    .map(|n| node_info(n, config.tls, user, pw))
                    .collect::<Result<Vec<_>, _>>()?;
                let client = ClusterClientBuilder::new(nodes.clone())
                    .connection_timeout(timeouts.command)
                    .response_timeout(timeouts.command)
                    .retries(timeouts.retries as u32)
                    .min_retry_wait(50)
                    .max_retry_wait(timeouts.max_delay.as_millis() as u64)
                    .build()?;
                Mode::Cluster(ClusterMode {
                    client,
                    nodes,
                    next_node: AtomicUsize::new(0),
                    conn: OnceCell::new(),
                })
            }
            _ => {
                return Err(ConnectError::Config(
                    "give exactly one of url, sentinel and cluster".into(),
                ))
            }
        };
        Ok(Self { mode, timeouts })
    }

    fn manager_config(&self) -> ConnectionManagerConfig {
        ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.timeouts.command))
            .set_response_timeout(Some(self.timeouts.command))
            .set_number_of_retries(self.timeouts.retries)
            .set_max_delay(self.timeouts.max_delay)
    }

    /// The shared connection (the current master's, with Sentinel).
    pub async fn conn(&self) -> Result<RedisConn, ConnectError> {
        match &self.mode {
            Mode::Single { client, conn } => {
                let config = self.manager_config();
                let c = conn
                    .get_or_try_init(|| client.get_connection_manager_with_config(config))
                    .await?;
                Ok(RedisConn::Single(c.clone()))
            }
            Mode::Cluster(c) => {
                let c = c.conn.get_or_try_init(|| c.client.get_async_connection()).await?;
                Ok(RedisConn::Cluster(c.clone()))
            }
            Mode::Sentinel(s) => self.master(s).await,
        }
    }

    /// Whether commands are spread over a cluster's slots.
    pub fn is_cluster(&self) -> bool {
        matches!(self.mode, Mode::Cluster(_))
    }

    fn current(s: &SentinelMode) -> Option<RedisConn> {
        let master = lock(&s.master).clone()?;
        Some(RedisConn::Sentinel(master.conn, Arc::clone(&s.stale)))
    }

    async fn master(&self, s: &SentinelMode) -> Result<RedisConn, ConnectError> {
        if !s.stale.load(Ordering::Relaxed) {
            if let Some(c) = Self::current(s) {
                return Ok(c);
            }
        }
        let mut sentinel = s.client.lock().await;
        // Another caller may have found the master while this one waited.
        let recent = lock(&s.resolved_at).is_some_and(|t| t.elapsed() < RESOLVE_EVERY);
        if let Some(c) = Self::current(s).filter(|_| recent || !s.stale.load(Ordering::Relaxed)) {
            return Ok(c);
        }
        *lock(&s.resolved_at) = Some(Instant::now());
        let asked = tokio::time::timeout(self.timeouts.command * 2, sentinel.async_get_client()).await;
        let client = asked.map_err(|_| ConnectError::SentinelTimeout)??;
        let addr = client.get_connection_info().addr().to_string();
        s.stale.store(false, Ordering::Relaxed);
        let known = lock(&s.master).clone();
        if let Some(c) = known.filter(|m| m.addr == addr) {
            return Ok(RedisConn::Sentinel(c.conn, Arc::clone(&s.stale)));
        }
        let conn = client.get_connection_manager_with_config(self.manager_config()).await?;
        tracing::info!(master = %addr, "redis sentinel named a new master; connected to it");
        *lock(&s.master) = Some(Master {
            addr,
            conn: conn.clone(),
        });
        Ok(RedisConn::Sentinel(conn, Arc::clone(&s.stale)))
    }

    /// A client for one subscription: the server, the current master, or
    /// the next cluster node (any node hears every `PUBLISH`).
    pub async fn pubsub_client(&self) -> Result<redis::Client, ConnectError> {
        match &self.mode {
            Mode::Single { client, .. } => Ok(client.clone()),
            Mode::Cluster(c) => {
                let i = c.next_node.fetch_add(1, Ordering::Relaxed) % c.nodes.len().max(1);
                let node = c
                    .nodes
                    .get(i)
                    .cloned()
                    .ok_or_else(|| ConnectError::Config("no cluster node".into()))?;
                Ok(redis::Client::open(node)?)
            }
            Mode::Sentinel(s) => {
                let mut sentinel = s.client.lock().await;
                let asked = tokio::time::timeout(self.timeouts.command * 2, sentinel.async_get_client()).await;
                Ok(asked.map_err(|_| ConnectError::SentinelTimeout)??)
            }
        }
    }
}

/// Subscribes to `channel` and forwards its messages to `tx`, reconnecting
/// (to the next node, the new master) until nobody listens.
pub async fn follow(redis: Arc<RedisConnector>, channel: String, tx: mpsc::Sender<String>) {
    loop {
        let client = match redis.pubsub_client().await {
            Ok(client) => client,
            Err(e) => {
                tracing::debug!(error = %e, "no redis server to subscribe to yet");
                if tx.is_closed() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        match client.get_async_pubsub().await {
            Ok(mut pubsub) => match pubsub.subscribe(&channel).await {
                Ok(()) => {
                    let mut messages = pubsub.on_message();
                    while let Some(msg) = messages.next().await {
                        if let Ok(id) = msg.get_payload::<String>() {
                            if tx.send(id).await.is_err() {
                                return;
                            }
                        }
                    }
                    tracing::warn!("redis subscription ended; resubscribing");
                }
                Err(e) => tracing::warn!(error = %e, "cannot subscribe to the redis channel"),
            },
            Err(e) => tracing::debug!(error = %e, "redis unreachable for the subscription"),
        }
        if tx.is_closed() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Timeouts = Timeouts {
        command: Duration::from_secs(1),
        retries: 1,
        max_delay: Duration::from_millis(100),
    };

    #[test]
    fn every_topology_builds_without_connecting() {
        let single = RedisConfig {
            url: Some("redis://127.0.0.1:1/0".into()),
            password: Some("pw".into()),
            ..RedisConfig::default()
        };
        assert!(!RedisConnector::new(&single, T).unwrap().is_cluster());
        let cluster = RedisConfig {
            cluster: Some(vec!["127.0.0.1:1".into(), "[::1]:2".into()]),
            ..RedisConfig::default()
        };
        assert!(RedisConnector::new(&cluster, T).unwrap().is_cluster());
        let sentinel = RedisConfig {
            sentinel: Some(crate::config::SentinelConfig {
                master_name: "mymaster".into(),
                nodes: vec!["127.0.0.1:1".into()],
                ..Default::default()
            }),
            ..RedisConfig::default()
        };
        assert!(RedisConnector::new(&sentinel, T).is_ok());
        assert!(RedisConnector::new(&RedisConfig::default(), T).is_err());
    }

    #[test]
    fn passwords_stay_out_of_the_address() {
        let info = node_info("10.0.0.1:6379", false, Some("u"), Some("secret")).unwrap();
        assert!(!info.addr().to_string().contains("secret"));
        assert_eq!(info.redis_settings().password(), Some("secret"));
    }
}
