//! Token-bucket rate limits on calls (`tools/call`, `prompts/get`,
//! `resources/read`), configured under `limits:`.
//!
//! A rule has one bucket per caller (`per: principal`) or one for everyone
//! (`per: global`) and applies to the calls its `match` selects. A call must
//! find a token in the bucket of every rule it matches, and takes one from
//! each only if all have one (all-or-nothing), so a refusal by one rule never
//! spends another rule's tokens. Buckets hold up to `burst` tokens and refill
//! continuously at `rate` per `per_interval`.
//!
//! With [`LimitBackend::Memory`] the buckets are this replica's own; with
//! [`LimitBackend::Redis`] every replica shares them: one Lua script takes
//! each decision atomically over all the buckets it touches, on Redis's clock
//! (see [`redis`](self) for the key layout). A call that matches no rule
//! costs no Redis round trip, and a limiter without rules
//! ([`Limiter::is_empty`]) can be skipped by the caller altogether.
//!
//! The caller asks once per client request: a listing that fans out to every
//! backend is one request (and is not a call, so no rule applies to it).
//! When the store fails, `limits.on_store_error` decides (allow: fail open,
//! the default; deny: fail closed); the outage is logged once, when it
//! starts, and once when it ends, and every failed decision is counted.

mod memory;
mod redis;

use std::time::Duration;

use prometheus::{IntCounter, IntCounterVec, Opts, Registry};
use serde_json::{json, Value};

pub use crate::config::CallKind;
use crate::config::{LimitScope, LimitsConfig, OnStoreError, RedisConfig, StoreConfig, StoreKind};

// A refused call is answered with `crate::mcp::jsonrpc::RATE_LIMITED`
// (-32052), HTTP 429 and `Retry-After`.

/// How long a caller refused because the store is down is told to wait.
const STORE_DOWN_RETRY: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum LimitsError {
    #[error("limit metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    /// `store.redis` does not describe a Redis (URL, nodes).
    #[error("limits redis: {0}")]
    RedisConfig(String),
    /// The bucket store did not answer (decided by `on_store_error`).
    #[error("limits store: {0}")]
    Store(String),
}

/// Where the buckets live.
#[derive(Debug, Clone)]
pub enum LimitBackend {
    /// In this replica's memory.
    Memory,
    /// In Redis (one server, Sentinel or Cluster, as `store.redis` says),
    /// shared by every replica that uses the same Redis and key prefix.
    Redis(Box<RedisConfig>),
}

impl LimitBackend {
    /// Redis when the session store is Redis (the same server and key
    /// prefix), else memory.
    pub fn from_store(store: &StoreConfig) -> Self {
        match (&store.kind, &store.redis) {
            (StoreKind::Redis, Some(r)) => Self::Redis(Box::new(r.clone())),
            _ => Self::Memory,
        }
    }
}

/// What one request calls.
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    /// The backend serving the call.
    pub backend: &'a str,
    /// The client-facing tool or prompt name; `None` for `resources/read`.
    pub tool: Option<&'a str>,
    pub kind: CallKind,
}

/// Why a call was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitCause {
    /// The rule's bucket had no token.
    Exhausted,
    /// The bucket store did not answer and `on_store_error` is `deny`.
    StoreUnavailable,
}

/// A refused call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limited {
    /// The rule that refused it (with several, the one to wait longest for).
    pub rule: String,
    /// When the rule will have a token again (not a promise: others may take it).
    pub retry_after: Duration,
    pub cause: LimitCause,
}

impl Limited {
    /// Whole seconds for an HTTP `Retry-After` header (at least 1).
    pub fn retry_after_secs(&self) -> u64 {
        self.retry_after.as_millis().div_ceil(1000).max(1) as u64
    }

    /// The JSON-RPC error message.
    pub fn message(&self) -> String {
        match self.cause {
            LimitCause::Exhausted => format!("rate limit `{}` exceeded", self.rule),
            LimitCause::StoreUnavailable => format!("rate limit `{}` cannot be checked now", self.rule),
        }
    }

    /// The JSON-RPC error `data`: `{"rule", "retry_after_ms", "retry_after"}`
    /// (`retry_after` in whole seconds, as the header).
    pub fn error_data(&self) -> Value {
        json!({
            "rule": self.rule,
            "retry_after_ms": self.retry_after.as_millis() as u64,
            "retry_after": self.retry_after_secs(),
        })
    }
}

/// A bucket's shape: capacity in tokens and refill in tokens per millisecond.
#[derive(Debug, Clone, Copy)]
struct Spec {
    capacity: f64,
    per_ms: f64,
}

impl Spec {
    /// Milliseconds until a bucket holding `tokens` has one.
    fn wait_ms(&self, tokens: f64) -> u64 {
        ((1.0 - tokens) / self.per_ms).ceil().max(1.0) as u64
    }

    /// Milliseconds for an empty bucket to fill (after which a missing one is the same).
    fn fill_ms(&self) -> u64 {
        (self.capacity / self.per_ms).ceil() as u64
    }
}

/// One bucket of one decision: the rule (its index) and the caller for
/// per-principal rules.
struct Claim<'a> {
    rule: usize,
    name: &'a str,
    spec: Spec,
    principal: Option<&'a str>,
}

/// `Ok(None)`: every bucket had a token and one was taken from each;
/// `Ok(Some((i, wait)))`: `claims[i]` refused, nothing was taken.
type Decision = Result<Option<(usize, Duration)>, LimitsError>;

struct Rule {
    name: String,
    scope: LimitScope,
    backends: Vec<String>,
    tools: Vec<String>,
    kinds: Vec<CallKind>,
    spec: Spec,
    allowed: IntCounter,
    limited: IntCounter,
    denied: IntCounter,
}

impl Rule {
    fn matches(&self, target: &Target<'_>) -> bool {
        // Lists count only where a rule asks for them (a limit of N calls stays one of calls).
        if target.kind == CallKind::List && !self.kinds.contains(&CallKind::List) {
            return false;
        }
        (self.backends.is_empty() || self.backends.iter().any(|b| b == target.backend))
            && (self.kinds.is_empty() || self.kinds.contains(&target.kind))
            && (self.tools.is_empty()
                || target
                    .tool
                    .is_some_and(|t| self.tools.iter().any(|p| pattern_matches(p, t))))
    }
}

/// An exact name, or a prefix when the pattern ends with `*`.
fn pattern_matches(pattern: &str, name: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => name.starts_with(prefix),
        None => pattern == name,
    }
}

enum Store {
    Memory(memory::MemoryBuckets),
    Redis(Box<redis::RedisBuckets>),
}

/// The rate limiter of one replica.
pub struct Limiter {
    rules: Vec<Rule>,
    store: Store,
    on_store_error: OnStoreError,
    store_errors: IntCounter,
}

impl Limiter {
    /// Compiles the rules and registers the metrics into `registry`; a Redis
    /// backend connects lazily (a replica starts while Redis is down).
    pub fn new(config: &LimitsConfig, backend: LimitBackend, registry: &Registry) -> Result<Self, LimitsError> {
        let decisions = IntCounterVec::new(
            Opts::new(
                "vmcp_limit_decisions_total",
                "Rate limit decisions, by rule and outcome (allowed, limited, denied: store down and on_store_error deny)",
            ),
            &["rule", "outcome"],
        )?;
        let store_errors = IntCounter::new(
            "vmcp_limit_store_errors_total",
            "Rate limit decisions the bucket store failed to take (on_store_error applied)",
        )?;
        registry.register(Box::new(decisions.clone()))?;
        registry.register(Box::new(store_errors.clone()))?;
        let rules = config
            .rules
            .iter()
            .map(|r| Rule {
                name: r.name.clone(),
                scope: r.per,
                backends: r.matches.backends.clone(),
                tools: r.matches.tools.clone(),
                kinds: r.matches.kinds.clone(),
                spec: Spec {
                    capacity: f64::from(r.capacity()),
                    per_ms: f64::from(r.rate) / (r.per_interval.as_secs_f64() * 1000.0).max(1.0),
                },
                allowed: decisions.with_label_values(&[r.name.as_str(), "allowed"]),
                limited: decisions.with_label_values(&[r.name.as_str(), "limited"]),
                denied: decisions.with_label_values(&[r.name.as_str(), "denied"]),
            })
            .collect();
        let store = match backend {
            LimitBackend::Memory => Store::Memory(memory::MemoryBuckets::new()),
            LimitBackend::Redis(config) => Store::Redis(Box::new(redis::RedisBuckets::new(&config)?)),
        };
        Ok(Self {
            rules,
            store,
            on_store_error: config.on_store_error,
            store_errors,
        })
    }

    /// No rules: nothing is ever limited.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// One request by `principal` (a stable key of the caller, e.g. `s:<hash>`
    /// or `anonymous`) to `target`: admitted, or refused by a rule.
    pub async fn admit(&self, principal: &str, target: &Target<'_>) -> Result<(), Limited> {
        let claims: Vec<Claim<'_>> = self
            .rules
            .iter()
            .enumerate()
            .filter(|(_, r)| r.matches(target))
            .map(|(i, r)| Claim {
                rule: i,
                name: &r.name,
                spec: r.spec,
                principal: (r.scope == LimitScope::Principal).then_some(principal),
            })
            .collect();
        if claims.is_empty() {
            return Ok(());
        }
        let decision: Decision = match &self.store {
            Store::Memory(m) => Ok(m.take(&claims)),
            Store::Redis(r) => r.take(&claims).await,
        };
        match decision {
            Ok(None) => {
                claims.iter().for_each(|c| self.rules[c.rule].allowed.inc());
                Ok(())
            }
            Ok(Some((i, retry_after))) => {
                let rule = &self.rules[claims[i].rule];
                rule.limited.inc();
                Err(Limited {
                    rule: rule.name.clone(),
                    retry_after,
                    cause: LimitCause::Exhausted,
                })
            }
            Err(_) => {
                self.store_errors.inc();
                match self.on_store_error {
                    OnStoreError::Allow => {
                        claims.iter().for_each(|c| self.rules[c.rule].allowed.inc());
                        Ok(())
                    }
                    OnStoreError::Deny => {
                        let rule = &self.rules[claims[0].rule];
                        rule.denied.inc();
                        Err(Limited {
                            rule: rule.name.clone(),
                            retry_after: STORE_DOWN_RETRY,
                            cause: LimitCause::StoreUnavailable,
                        })
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
