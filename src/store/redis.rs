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
//! - `P` + `sessions`: the index of live sessions (for the admin API's
//!   listing), a sorted set of ids scored by when each expires (Unix ms),
//!   refreshed by touches and pruned of expired members on every write and
//!   listing, so it never grows beyond the live sessions;
//! - `P` + `subject:{H}`: the same for the sessions of one subject (`H`: a
//!   hash of issuer and subject), expiring with its newest session;
//! - channel `P` + `closed`: the ids of deleted sessions, for other replicas.
//!
//! The `{ID}` hash tag keeps a session's keys in one Redis Cluster slot, so
//! each multi-key write is one atomic Lua script. The indexes are hints
//! written next to it, each index by commands on its own key only (one slot
//! each, a pipeline per index): a listing reads each session's own key, the
//! truth, with one `MGET` (split by slot on a cluster). No command scans keys.
//! Connections (one server, Sentinel, Cluster) are in [`redis_conn`](super::redis_conn).

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::{BoxFuture, FutureExt};
use futures_util::stream::{BoxStream, StreamExt};
use redis::{AsyncCommands, Script};
use tokio::sync::mpsc;

use super::redis_conn::{RedisConn, RedisConnector, Timeouts};
use super::{unix_ms, Page, SessionMetadata, SessionStore, StoreError, StoredEvent, SubjectRef, Touch, MAX_PAGE};
use crate::config::RedisConfig;
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
    redis: Arc<RedisConnector>,
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
    /// Reads the topology (URL, Sentinel or Cluster); connects lazily, so a
    /// replica starts while Redis is down.
    pub fn new(config: &RedisConfig, ttl: Duration, metrics: Metrics) -> Result<Self, StoreError> {
        let timeouts = Timeouts {
            command: COMMAND_TIMEOUT,
            retries: 2,
            max_delay: Duration::from_millis(500),
        };
        let redis = RedisConnector::new(config, timeouts).map_err(|e| StoreError::Unavailable(e.to_string()))?;
        Ok(Self {
            redis: Arc::new(redis),
            prefix: config.key_prefix.clone(),
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

    fn index_key(&self) -> String {
        format!("{}sessions", self.prefix)
    }

    fn subject_key(&self, issuer: &str, subject: &str) -> String {
        format!("{}subject:{{{}}}", self.prefix, subject_hash(issuer, subject))
    }

    /// Records (or refreshes) a live session in the indexes, and drops the
    /// index entries of sessions that expired. One pipeline per index key
    /// (a cluster refuses a pipeline over two slots), both sent at once.
    async fn index(&self, conn: &mut RedisConn, id: &str, subject: Option<&SubjectRef>) -> Result<(), StoreError> {
        let now = unix_ms();
        let mut all = redis::pipe();
        all.zadd(self.index_key(), id, now + self.ttl_ms)
            .ignore()
            .zrembyscore(self.index_key(), "-inf", format!("({now}"))
            .ignore();
        let Some(s) = subject else {
            return all.query_async::<()>(conn).await.map_err(unavailable);
        };
        let key = self.subject_key(&s.issuer, &s.subject);
        let mut theirs = redis::pipe();
        theirs
            .zadd(&key, id, now + self.ttl_ms)
            .ignore()
            .pexpire(&key, self.ttl_ms as i64)
            .ignore();
        let mut other = conn.clone();
        let (a, b) = tokio::join!(all.query_async::<()>(conn), theirs.query_async::<()>(&mut other));
        a.and(b).map_err(unavailable)
    }

    /// Index entries after `cursor` (`score:id`), `limit` + 1 at most.
    async fn index_after(
        &self,
        conn: &mut RedisConn,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(String, f64)>, StoreError> {
        let key = self.index_key();
        let want = limit as isize + 1;
        let Some(cursor) = cursor else {
            let now = unix_ms();
            return conn
                .zrangebyscore_limit_withscores(&key, now, "+inf", 0, want)
                .await
                .map_err(unavailable);
        };
        let (score, after) = cursor
            .split_once(':')
            .and_then(|(s, id)| Some((s.parse::<u64>().ok()?, id)))
            .ok_or(StoreError::Cursor)?;
        // Members of equal score come in byte order of the member.
        let ties: Vec<String> = conn
            .zrangebyscore_limit(&key, score, score, 0, MAX_PAGE as isize * 4)
            .await
            .map_err(unavailable)?;
        let mut found: Vec<(String, f64)> = ties
            .into_iter()
            .filter(|id| id.as_str() > after)
            .map(|id| (id, score as f64))
            .collect();
        let rest: Vec<(String, f64)> = conn
            .zrangebyscore_limit_withscores(&key, format!("({score}"), "+inf", 0, want)
            .await
            .map_err(unavailable)?;
        found.extend(rest);
        found.truncate(limit + 1);
        Ok(found)
    }

    fn salt_key(&self) -> String {
        format!("{}identity-salt", self.prefix)
    }

    fn channel(&self) -> String {
        format!("{}closed", self.prefix)
    }

    /// The shared connection; it reconnects by itself after Redis comes
    /// back (or finds the new master, or follows the cluster's slots).
    async fn conn(&self) -> Result<RedisConn, StoreError> {
        self.redis.conn().await.map_err(unavailable)
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

/// Hex of the first 16 bytes of SHA-256 over the length-prefixed pair.
fn subject_hash(issuer: &str, subject: &str) -> String {
    use sha2::{Digest, Sha256};
    let mut hasher = Sha256::new();
    for part in [issuer, subject] {
        hasher.update((part.len() as u64).to_be_bytes());
        hasher.update(part.as_bytes());
    }
    hex::encode(&hasher.finalize()[..16])
}

fn decode(json: &str) -> Result<SessionMetadata, StoreError> {
    serde_json::from_str(json).map_err(|e| StoreError::Corrupt(e.to_string()))
}

fn encode(meta: &SessionMetadata) -> Result<String, StoreError> {
    serde_json::to_string(meta).map_err(|e| StoreError::Corrupt(e.to_string()))
}

impl SessionStore for RedisStore {
    fn put(&self, meta: &SessionMetadata) -> BoxFuture<'_, Result<(), StoreError>> {
        let (key, json) = (self.session_key(&meta.id), encode(meta));
        let (id, subject) = (meta.id.clone(), meta.subject.clone());
        self.timed("put", async move {
            let mut conn = self.conn().await?;
            conn.pset_ex::<_, _, ()>(key, json?, self.ttl_ms)
                .await
                .map_err(unavailable)?;
            self.index(&mut conn, &id, subject.as_ref()).await
        })
        .boxed()
    }

    fn update(&self, meta: &SessionMetadata) -> BoxFuture<'_, Result<bool, StoreError>> {
        let (key, tomb, json) = (self.session_key(&meta.id), self.tombstone_key(&meta.id), encode(meta));
        let (id, subject) = (meta.id.clone(), meta.subject.clone());
        self.timed("update", async move {
            let mut conn = self.conn().await?;
            let mut call = self.scripts.update.key(key);
            call.key(tomb).arg(json?).arg(self.ttl_ms);
            let written: i64 = call.invoke_async(&mut conn).await.map_err(unavailable)?;
            if written == 1 {
                self.index(&mut conn, &id, subject.as_ref()).await?;
            }
            Ok(written == 1)
        })
        .boxed()
    }

    fn get<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<SessionMetadata>, StoreError>> {
        self.timed("get", async move {
            let mut conn = self.conn().await?;
            let json: Option<String> = conn.get(self.session_key(id)).await.map_err(unavailable)?;
            json.as_deref().map(decode).transpose()
        })
        .boxed()
    }

    fn touch<'a>(&'a self, id: &'a str, subject: Option<&'a SubjectRef>) -> BoxFuture<'a, Result<Touch, StoreError>> {
        self.timed("touch", async move {
            let mut conn = self.conn().await?;
            let mut call = self.scripts.touch.key(self.session_key(id));
            call.key(self.tombstone_key(id)).arg(self.ttl_ms);
            let found: i64 = call.invoke_async(&mut conn).await.map_err(unavailable)?;
            let touch = match found {
                0 => Touch::Alive,
                2 => Touch::Deleted,
                _ => Touch::Missing,
            };
            if touch == Touch::Alive {
                self.index(&mut conn, id, subject).await?;
            }
            Ok(touch)
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
            // The tombstone is what counts; a stale index entry is skipped and pruned.
            if let Err(e) = conn.zrem::<_, _, ()>(self.index_key(), id).await {
                tracing::debug!(session.id = %id, error = %e, "session left in the index");
            }
            Ok(removed > 0)
        })
        .boxed()
    }

    fn list<'a>(&'a self, cursor: Option<&'a str>, limit: usize) -> BoxFuture<'a, Result<Page, StoreError>> {
        let limit = limit.clamp(1, MAX_PAGE);
        self.timed("list", async move {
            let mut conn = self.conn().await?;
            let mut entries = self.index_after(&mut conn, cursor, limit).await?;
            let more = entries.len() > limit;
            entries.truncate(limit);
            let next_cursor = entries
                .last()
                .filter(|_| more)
                .map(|(id, score)| format!("{}:{id}", *score as u64));
            let found: Vec<Option<String>> = if entries.is_empty() {
                Vec::new()
            } else {
                let keys: Vec<String> = entries.iter().map(|(id, _)| self.session_key(id)).collect();
                redis::cmd("MGET")
                    .arg(keys)
                    .query_async(&mut conn)
                    .await
                    .map_err(unavailable)?
            };
            let mut sessions = Vec::with_capacity(found.len());
            for json in found.iter().flatten() {
                match decode(json) {
                    Ok(meta) => sessions.push(meta),
                    Err(e) => tracing::warn!(error = %e, "a stored session does not decode; not listed"),
                }
            }
            Ok(Page { sessions, next_cursor })
        })
        .boxed()
    }

    fn sessions_of<'a>(&'a self, issuer: &'a str, subject: &'a str) -> BoxFuture<'a, Result<Vec<String>, StoreError>> {
        self.timed("sessions_of", async move {
            let mut conn = self.conn().await?;
            let key = self.subject_key(issuer, subject);
            let now = unix_ms();
            let (ids,): (Vec<String>,) = redis::pipe()
                .zrembyscore(&key, "-inf", format!("({now}"))
                .ignore()
                .zrange(&key, 0, -1)
                .query_async(&mut conn)
                .await
                .map_err(unavailable)?;
            Ok(ids)
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
        tokio::spawn(super::redis_conn::follow(Arc::clone(&self.redis), self.channel(), tx));
        futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|id| (id, rx)) }).boxed()
    }

    fn identity_salt(&self) -> BoxFuture<'_, Result<Vec<u8>, StoreError>> {
        self.timed("salt", async move {
            let mut conn = self.conn().await?;
            let key = self.salt_key();
            let mut fresh = [0u8; 32];
            getrandom::fill(&mut fresh).map_err(unavailable)?;
            let fresh = hex::encode(fresh);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subject_hashes_separate_issuer_from_subject() {
        let a = subject_hash("https://idp", "alice");
        assert_eq!(a.len(), 32);
        assert_eq!(a, subject_hash("https://idp", "alice"));
        assert_ne!(a, subject_hash("https://id", "palice"));
    }

    #[test]
    fn event_members_decode() {
        let e = decode_event(r#"17:{"a":"b:c"}"#).unwrap();
        assert_eq!((e.id, e.data.as_str()), (17, r#"{"a":"b:c"}"#));
        assert!(decode_event("x:y").is_none());
        assert!(decode_event("no colon").is_none());
    }
}
