//! Buckets in Redis, shared by every replica.
//!
//! Key layout (`P` = `store.redis.key_prefix`, default `vmcp:`):
//! - `P` + `limit:{limits}:` + rule + `:g`: the bucket of a global rule;
//! - `P` + `limit:{limits}:` + rule + `:p:` + `H`: a caller's bucket of a
//!   per-principal rule, `H` the hex of the first 16 bytes of SHA-256 of the
//!   principal key (never the raw key: it may be long or odd).
//!
//! Each is a hash `{t: tokens, ts: ms}` whose TTL is the time it takes to
//! fill, after which a missing bucket and a full one are the same.
//!
//! One Lua script takes a whole decision: it reads every bucket of the call,
//! refills each on Redis's clock (`TIME`, so replicas' clocks do not matter),
//! and takes a token from each only if all have one. Every limit key carries
//! the same hash tag, `{limits}`: the buckets of one decision are then in
//! one Redis Cluster slot, as a multi-key script needs. A tag per principal
//! would spread the keys, but a call that matches a per-principal rule and a
//! global rule would then touch two slots, and a bucket's key cannot depend
//! on which other rules a call matched. The same holds with Sentinel (the
//! store's connection finds the master after a failover) and on a cluster
//! (one slot for every bucket: one node takes every decision).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use redis::Script;
use tokio::time::Instant;

use super::{Claim, Decision, LimitsError};
use crate::config::RedisConfig;
use crate::store::redis_conn::{RedisConnector, Timeouts};

/// The longest one decision may wait for Redis (connecting included).
const DECISION_TIMEOUT: Duration = Duration::from_millis(500);
/// After a failure, decisions skip Redis this long (`on_store_error` applies
/// at once instead of every call waiting for a dead server).
const BACKOFF: Duration = Duration::from_millis(500);

/// KEYS: the buckets; ARGV: capacity, tokens per ms, TTL in ms, per key.
/// Returns `{1}` (taken) or `{0, i, wait_ms}` (key `i`, 1-based, refused).
const TAKE: &str = r"
local now = redis.call('TIME')
now = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local tokens = {}
local worst, wait = 0, 0
for i = 1, #KEYS do
  local cap = tonumber(ARGV[3 * i - 2])
  local rate = tonumber(ARGV[3 * i - 1])
  local b = redis.call('HMGET', KEYS[i], 't', 'ts')
  local t, ts = tonumber(b[1]), tonumber(b[2])
  if t == nil or ts == nil then
    t = cap
  elseif now > ts then
    t = math.min(cap, t + (now - ts) * rate)
  end
  tokens[i] = t
  if t < 1 then
    local w = math.max(1, math.ceil((1 - t) / rate))
    if w > wait then worst, wait = i, w end
  end
end
if worst > 0 then return {0, worst, wait} end
for i = 1, #KEYS do
  redis.call('HSET', KEYS[i], 't', tostring(tokens[i] - 1), 'ts', tostring(now))
  redis.call('PEXPIRE', KEYS[i], ARGV[3 * i])
end
return {1}";

pub(super) struct RedisBuckets {
    redis: RedisConnector,
    prefix: String,
    script: Script,
    /// Set while Redis is failing (the outage is logged once).
    down: AtomicBool,
    /// Decisions skip Redis until then.
    skip_until: Mutex<Option<Instant>>,
}

fn store_error(e: impl std::fmt::Display) -> LimitsError {
    LimitsError::Store(e.to_string())
}

impl RedisBuckets {
    /// Reads the topology (URL, Sentinel or Cluster); connects on first use.
    pub(super) fn new(config: &RedisConfig) -> Result<Self, LimitsError> {
        let timeouts = Timeouts {
            command: DECISION_TIMEOUT,
            retries: 1,
            max_delay: Duration::from_millis(200),
        };
        let redis = RedisConnector::new(config, timeouts).map_err(|e| LimitsError::RedisConfig(e.to_string()))?;
        Ok(Self {
            redis,
            prefix: config.key_prefix.clone(),
            script: Script::new(TAKE),
            down: AtomicBool::new(false),
            skip_until: Mutex::new(None),
        })
    }

    fn key(&self, claim: &Claim<'_>) -> String {
        match claim.principal {
            None => format!("{}limit:{{limits}}:{}:g", self.prefix, claim.name),
            Some(p) => format!("{}limit:{{limits}}:{}:p:{}", self.prefix, claim.name, principal_hash(p)),
        }
    }

    /// One decision over `claims` (not empty).
    pub(super) async fn take(&self, claims: &[Claim<'_>]) -> Decision {
        let skip = self.skip_until.lock().map(|s| *s).unwrap_or_default();
        if skip.is_some_and(|until| Instant::now() < until) {
            return Err(LimitsError::Store("redis failed a moment ago".into()));
        }
        let result = tokio::time::timeout(DECISION_TIMEOUT, self.run(claims))
            .await
            .unwrap_or_else(|_| Err(store_error("redis did not answer in time")));
        match &result {
            Ok(_) => {
                if self.down.swap(false, Ordering::Relaxed) {
                    tracing::info!("rate limit store is answering again");
                }
            }
            Err(e) => {
                if let Ok(mut s) = self.skip_until.lock() {
                    *s = Some(Instant::now() + BACKOFF);
                }
                if !self.down.swap(true, Ordering::Relaxed) {
                    tracing::warn!(error = %e, "rate limit store unavailable; applying limits.on_store_error until it answers");
                }
            }
        }
        result
    }

    async fn run(&self, claims: &[Claim<'_>]) -> Decision {
        let mut conn = self.redis.conn().await.map_err(store_error)?;
        let mut invocation = self.script.prepare_invoke();
        for claim in claims {
            invocation
                .key(self.key(claim))
                .arg(claim.spec.capacity)
                .arg(claim.spec.per_ms.to_string())
                .arg(claim.spec.fill_ms().saturating_add(1000));
        }
        let reply: Vec<i64> = invocation.invoke_async(&mut conn).await.map_err(store_error)?;
        match reply.as_slice() {
            [1] => Ok(None),
            [0, i, wait] if *i >= 1 && (*i as usize) <= claims.len() => {
                Ok(Some((*i as usize - 1, Duration::from_millis((*wait).max(1) as u64))))
            }
            other => Err(store_error(format!("unexpected script reply {other:?}"))),
        }
    }
}

/// Hex of the first 16 bytes of SHA-256 of the principal key.
fn principal_hash(principal: &str) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(&Sha256::digest(principal.as_bytes())[..16])
}

#[cfg(test)]
mod tests {
    #[test]
    fn principal_keys_are_hashed() {
        let h = super::principal_hash("s:some odd {key} with spaces");
        assert_eq!(h.len(), 32);
        assert!(h.chars().all(|c| c.is_ascii_hexdigit()));
    }
}
