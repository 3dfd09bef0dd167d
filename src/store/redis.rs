//! Session metadata in Redis, shared by every replica.
//!
//! Key layout (`P` = `store.redis.key_prefix`, default `vmcp:`):
//! - `P` + `session:{ID}`: the metadata JSON, TTL = `session.idle_timeout`,
//!   extended by touches;
//! - `P` + `closed:{ID}`: a tombstone left by DELETE (same TTL), so that a
//!   replica still holding the session can never write it back;
//! - `P` + `identity-salt`: the key of the identity hashes (created once, no TTL;
//!   every replica that holds it writes it back if it goes missing);
//! - `P` + `events:{ID}`: the session's last client-stream events, for
//!   `Last-Event-ID` on another replica: a sorted set scored by event id
//!   (microsecond-based, below 2^53, so exact as a score), members
//!   `{id}:{message}`, capped in count and expiring with the session;
//! - channel `P` + `closed`: the ids of deleted sessions, for other replicas.
//!
//! The `{ID}` hash tag keeps a session's keys in one Redis Cluster slot, so
//! each multi-key write is one atomic Lua script. No command scans keys.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::{BoxFuture, FutureExt};
use futures_util::stream::{BoxStream, StreamExt};
use redis::aio::ConnectionManager;
use redis::{AsyncCommands, Script};
use tokio::sync::{mpsc, OnceCell};

use super::{SessionMetadata, SessionStore, StoreError, StoredEvent, Touch};
use crate::telemetry::Metrics;

/// How long one Redis command may take before the store counts as unavailable.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(1);

const UPDATE: &str = r"
if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1";

const TOUCH: &str = r"
if redis.call('EXISTS', KEYS[2]) == 1 then return 2 end
if redis.call('PEXPIRE', KEYS[1], ARGV[1]) == 1 then return 0 end
return 1";

const APPEND_EVENT: &str = r"
redis.call('ZADD', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZREMRANGEBYRANK', KEYS[1], 0, -(tonumber(ARGV[3]) + 1))
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return 1";

const DELETE: &str = r"
redis.call('DEL', KEYS[3])
local n = redis.call('DEL', KEYS[1])
redis.call('SET', KEYS[2], '1', 'PX', ARGV[1])
redis.call('PUBLISH', ARGV[2], ARGV[3])
return n";

pub struct RedisStore {
    client: redis::Client,
    conn: OnceCell<ConnectionManager>,
    prefix: String,
    ttl_ms: u64,
    metrics: Metrics,
    scripts: Arc<Scripts>,
}

struct Scripts {
    update: Script,
    touch: Script,
    delete: Script,
    append_event: Script,
}

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

impl RedisStore {
    /// Parses the URL; connects lazily, so a replica starts while Redis is down.
    pub fn new(url: &str, prefix: &str, ttl: Duration, metrics: Metrics) -> Result<Self, StoreError> {
        let client = redis::Client::open(url).map_err(|e| StoreError::Unavailable(format!("redis URL: {e}")))?;
        Ok(Self {
            client,
            conn: OnceCell::new(),
            prefix: prefix.to_owned(),
            ttl_ms: ttl.as_millis().max(1) as u64,
            metrics,
            scripts: Arc::new(Scripts {
                update: Script::new(UPDATE),
                touch: Script::new(TOUCH),
                delete: Script::new(DELETE),
                append_event: Script::new(APPEND_EVENT),
            }),
        })
    }

    fn session_key(&self, id: &str) -> String {
        format!("{}session:{{{id}}}", self.prefix)
    }

    fn tombstone_key(&self, id: &str) -> String {
        format!("{}closed:{{{id}}}", self.prefix)
    }

    fn events_key(&self, id: &str) -> String {
        format!("{}events:{{{id}}}", self.prefix)
    }

    fn salt_key(&self) -> String {
        format!("{}identity-salt", self.prefix)
    }

    fn channel(&self) -> String {
        format!("{}closed", self.prefix)
    }

    /// The shared connection; it reconnects by itself after Redis comes back.
    async fn conn(&self) -> Result<ConnectionManager, StoreError> {
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(COMMAND_TIMEOUT))
            .set_response_timeout(Some(COMMAND_TIMEOUT))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_millis(500));
        self.conn
            .get_or_try_init(|| self.client.get_connection_manager_with_config(config))
            .await
            .cloned()
            .map_err(unavailable)
    }

    /// Runs one store operation with its metrics.
    async fn timed<T>(
        &self,
        op: &'static str,
        fut: impl std::future::Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let started = Instant::now();
        let result = tokio::time::timeout(COMMAND_TIMEOUT * 3, fut)
            .await
            .unwrap_or_else(|_| Err(unavailable("redis did not answer in time")));
        let outcome = if result.is_ok() { "ok" } else { "error" };
        self.metrics.store_operations.with_label_values(&[op, outcome]).inc();
        self.metrics
            .store_duration
            .with_label_values(&[op])
            .observe(started.elapsed().as_secs_f64());
        result
    }
}

fn encode(meta: &SessionMetadata) -> Result<String, StoreError> {
    serde_json::to_string(meta).map_err(|e| StoreError::Corrupt(e.to_string()))
}

impl SessionStore for RedisStore {
    fn put(&self, meta: &SessionMetadata) -> BoxFuture<'_, Result<(), StoreError>> {
        let (key, json) = (self.session_key(&meta.id), encode(meta));
        self.timed("put", async move {
            let mut conn = self.conn().await?;
            conn.pset_ex::<_, _, ()>(key, json?, self.ttl_ms)
                .await
                .map_err(unavailable)
        })
        .boxed()
    }

    fn update(&self, meta: &SessionMetadata) -> BoxFuture<'_, Result<bool, StoreError>> {
        let (key, tomb, json) = (self.session_key(&meta.id), self.tombstone_key(&meta.id), encode(meta));
        self.timed("update", async move {
            let mut conn = self.conn().await?;
            let mut call = self.scripts.update.key(key);
            call.key(tomb).arg(json?).arg(self.ttl_ms);
            let written: i64 = call.invoke_async(&mut conn).await.map_err(unavailable)?;
            Ok(written == 1)
        })
        .boxed()
    }

    fn get<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<SessionMetadata>, StoreError>> {
        self.timed("get", async move {
            let mut conn = self.conn().await?;
            let json: Option<String> = conn.get(self.session_key(id)).await.map_err(unavailable)?;
            json.map(|j| serde_json::from_str(&j).map_err(|e| StoreError::Corrupt(e.to_string())))
                .transpose()
        })
        .boxed()
    }

    fn touch<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Touch, StoreError>> {
        self.timed("touch", async move {
            let mut conn = self.conn().await?;
            let mut call = self.scripts.touch.key(self.session_key(id));
            call.key(self.tombstone_key(id)).arg(self.ttl_ms);
            let found: i64 = call.invoke_async(&mut conn).await.map_err(unavailable)?;
            Ok(match found {
                0 => Touch::Alive,
                2 => Touch::Deleted,
                _ => Touch::Missing,
            })
        })
        .boxed()
    }

    fn delete<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<bool, StoreError>> {
        self.timed("delete", async move {
            let mut conn = self.conn().await?;
            let mut call = self.scripts.delete.key(self.session_key(id));
            call.key(self.tombstone_key(id))
                .key(self.events_key(id))
                .arg(self.ttl_ms)
                .arg(self.channel())
                .arg(id);
            let removed: i64 = call.invoke_async(&mut conn).await.map_err(unavailable)?;
            Ok(removed > 0)
        })
        .boxed()
    }

    fn ping(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        self.timed("ping", async move {
            let mut conn = self.conn().await?;
            redis::cmd("PING")
                .query_async::<String>(&mut conn)
                .await
                .map(drop)
                .map_err(unavailable)
        })
        .boxed()
    }

    fn deletions(&self) -> BoxStream<'static, String> {
        let (tx, rx) = mpsc::channel(1024);
        tokio::spawn(follow_deletions(self.client.clone(), self.channel(), tx));
        futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|id| (id, rx)) }).boxed()
    }

    fn identity_salt(&self) -> BoxFuture<'_, Result<Vec<u8>, StoreError>> {
        self.timed("salt", async move {
            let mut conn = self.conn().await?;
            let key = self.salt_key();
            let mut fresh = [0u8; 32];
            getrandom::fill(&mut fresh).map_err(unavailable)?;
            let fresh: String = fresh.iter().map(|b| format!("{b:02x}")).collect();
            let _: bool = conn.set_nx(&key, fresh).await.map_err(unavailable)?;
            let salt: Option<String> = conn.get(&key).await.map_err(unavailable)?;
            salt.map(String::into_bytes)
                .ok_or_else(|| unavailable("the identity salt vanished while it was read"))
        })
        .boxed()
    }

    fn keep_identity_salt<'a>(&'a self, salt: &'a [u8]) -> BoxFuture<'a, Result<bool, StoreError>> {
        self.timed("salt_keep", async move {
            let mut conn = self.conn().await?;
            conn.set_nx(self.salt_key(), salt).await.map_err(unavailable)
        })
        .boxed()
    }

    fn append_event<'a>(
        &'a self,
        session: &'a str,
        event: &'a StoredEvent,
        keep: usize,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        self.timed("append_event", async move {
            let mut conn = self.conn().await?;
            let mut call = self.scripts.append_event.key(self.events_key(session));
            call.arg(event.id)
                .arg(format!("{}:{}", event.id, event.data))
                .arg(keep)
                .arg(self.ttl_ms);
            call.invoke_async::<i64>(&mut conn).await.map_err(unavailable)?;
            Ok(())
        })
        .boxed()
    }

    fn events_between<'a>(
        &'a self,
        session: &'a str,
        after: u64,
        before: u64,
    ) -> BoxFuture<'a, Result<Vec<StoredEvent>, StoreError>> {
        self.timed("events", async move {
            let mut conn = self.conn().await?;
            let members: Vec<String> = conn
                .zrangebyscore(self.events_key(session), format!("({after}"), format!("({before}"))
                .await
                .map_err(unavailable)?;
            Ok(members.iter().filter_map(|m| decode_event(m)).collect())
        })
        .boxed()
    }
}

fn decode_event(member: &str) -> Option<StoredEvent> {
    let (id, data) = member.split_once(':')?;
    Some(StoredEvent {
        id: id.parse().ok()?,
        data: data.to_owned(),
    })
}

/// Subscribes to the deletion channel, reconnecting until nobody listens.
async fn follow_deletions(client: redis::Client, channel: String, tx: mpsc::Sender<String>) {
    loop {
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
                    tracing::warn!("redis deletion feed ended; resubscribing");
                }
                Err(e) => tracing::warn!(error = %e, "cannot subscribe to the redis deletion feed"),
            },
            Err(e) => tracing::debug!(error = %e, "redis unreachable for the deletion feed"),
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

    #[test]
    fn event_members_decode() {
        let e = decode_event(r#"17:{"a":"b:c"}"#).unwrap();
        assert_eq!((e.id, e.data.as_str()), (17, r#"{"a":"b:c"}"#));
        assert!(decode_event("x:y").is_none());
        assert!(decode_event("no colon").is_none());
    }
}
