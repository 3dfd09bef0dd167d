//! Rate limits on a real `redis-server`: buckets shared by two limiters (two
//! replicas), exact under concurrency, and `on_store_error` while Redis is down.

#[allow(dead_code)]
#[path = "support/deps.rs"]
mod deps;
#[allow(dead_code)]
#[path = "support/redis.rs"]
mod redis_server;

use std::time::Duration;

use prometheus::Registry;
use redis::AsyncCommands;
use redis_server::RedisServer;
use vmcp::config::{LimitMatch, LimitRule, LimitScope, LimitsConfig, OnStoreError};
use vmcp::limits::{CallKind, LimitBackend, LimitCause, Limiter, Target};

const PREFIX: &str = "vmcp-test:";

const SEARCH: Target<'static> = Target {
    backend: "alpha",
    tool: Some("alpha_search"),
    kind: CallKind::Tool,
};

fn rule(name: &str, per: LimitScope, rate: u32, matches: LimitMatch) -> LimitRule {
    LimitRule {
        name: name.into(),
        per,
        matches,
        rate,
        per_interval: Duration::from_secs(60),
        burst: None,
    }
}

/// A limiter ("replica") on `redis`, with its own registry.
fn replica(redis: &RedisServer, rules: Vec<LimitRule>, on_store_error: OnStoreError) -> (Limiter, Registry) {
    let registry = Registry::new();
    let config = LimitsConfig { on_store_error, rules };
    let backend = LimitBackend::Redis(Box::new(vmcp::config::RedisConfig {
        url: Some(redis.url()),
        key_prefix: PREFIX.into(),
        ..Default::default()
    }));
    (Limiter::new(&config, backend, &registry).unwrap(), registry)
}

fn metric(registry: &Registry, name: &str, labels: &[(&str, &str)]) -> u64 {
    registry
        .gather()
        .iter()
        .filter(|f| f.name() == name)
        .flat_map(|f| f.get_metric())
        .filter(|m| {
            let have: Vec<_> = m.get_label().iter().map(|l| (l.name(), l.value())).collect();
            labels.iter().all(|l| have.contains(l))
        })
        .map(|m| m.get_counter().get_value() as u64)
        .sum()
}

#[tokio::test]
async fn n_per_minute_holds_across_two_replicas() {
    let mut redis = RedisServer::start().await;
    let rules = || vec![rule("per-caller", LimitScope::Principal, 10, LimitMatch::default())];
    let (a, reg_a) = replica(&redis, rules(), OnStoreError::Allow);
    let (b, reg_b) = replica(&redis, rules(), OnStoreError::Allow);
    let mut ok = 0;
    let mut refusals = Vec::new();
    for i in 0..16 {
        let limiter = if i % 2 == 0 { &a } else { &b };
        match limiter.admit("s:caller-1", &SEARCH).await {
            Ok(()) => ok += 1,
            Err(limited) => refusals.push(limited),
        }
    }
    assert_eq!(ok, 10, "exactly N of N+k calls over both replicas");
    assert_eq!(refusals.len(), 6);
    for limited in &refusals {
        assert_eq!(
            (limited.rule.as_str(), limited.cause),
            ("per-caller", LimitCause::Exhausted)
        );
        // One token per 6 s, and the first was taken less than a second ago.
        assert!(
            limited.retry_after > Duration::from_secs(4) && limited.retry_after <= Duration::from_secs(6),
            "{:?}",
            limited.retry_after
        );
    }
    let allowed = |r: &Registry| {
        metric(
            r,
            "vmcp_limit_decisions_total",
            &[("rule", "per-caller"), ("outcome", "allowed")],
        )
    };
    let limited = |r: &Registry| {
        metric(
            r,
            "vmcp_limit_decisions_total",
            &[("rule", "per-caller"), ("outcome", "limited")],
        )
    };
    assert_eq!(
        (allowed(&reg_a) + allowed(&reg_b), limited(&reg_a) + limited(&reg_b)),
        (10, 6)
    );

    // Another caller has its own bucket.
    a.admit("s:caller-2", &SEARCH).await.unwrap();

    // The keys: one hash tag, hashed principals, a TTL of about a refill.
    let mut conn = redis.conn().await;
    let keys: Vec<String> = conn.keys(format!("{PREFIX}*")).await.unwrap();
    assert_eq!(keys.len(), 2, "{keys:?}");
    for key in &keys {
        assert!(key.starts_with("vmcp-test:limit:{limits}:per-caller:p:"), "{key}");
        assert!(!key.contains("caller-"), "raw principal in {key}");
        let ttl: i64 = conn.pttl(key).await.unwrap();
        assert!(ttl > 50_000 && ttl <= 61_000, "{key}: ttl {ttl}");
    }
    redis.stop().await;
}

#[tokio::test]
async fn concurrent_calls_on_two_replicas_take_exactly_n() {
    let mut redis = RedisServer::start().await;
    let rules = || {
        vec![
            rule("everyone", LimitScope::Global, 25, LimitMatch::default()),
            rule("per-caller", LimitScope::Principal, 1000, LimitMatch::default()),
        ]
    };
    let (a, _) = replica(&redis, rules(), OnStoreError::Deny);
    let (b, _) = replica(&redis, rules(), OnStoreError::Deny);
    let calls = (0..80).map(|i| {
        let limiter = if i % 2 == 0 { &a } else { &b };
        let principal = format!("s:{}", i % 7);
        async move { limiter.admit(&principal, &SEARCH).await }
    });
    let results = futures_util::future::join_all(calls).await;
    let ok = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(ok, 25);
    assert!(results
        .iter()
        .filter_map(|r| r.as_ref().err())
        .all(|l| l.rule == "everyone" && l.cause == LimitCause::Exhausted));
    redis.stop().await;
}

#[tokio::test]
async fn a_global_rule_is_shared_by_callers_and_matching_selects_calls() {
    let mut redis = RedisServer::start().await;
    let rules = || {
        vec![
            rule(
                "search",
                LimitScope::Global,
                3,
                LimitMatch {
                    tools: vec!["alpha_search*".into()],
                    ..Default::default()
                },
            ),
            rule(
                "beta",
                LimitScope::Principal,
                2,
                LimitMatch {
                    backends: vec!["beta".into()],
                    ..Default::default()
                },
            ),
        ]
    };
    let (a, _) = replica(&redis, rules(), OnStoreError::Allow);
    let (b, _) = replica(&redis, rules(), OnStoreError::Allow);
    a.admit("s:1", &SEARCH).await.unwrap();
    b.admit("s:2", &SEARCH).await.unwrap();
    a.admit("s:3", &SEARCH).await.unwrap();
    assert_eq!(b.admit("s:4", &SEARCH).await.unwrap_err().rule, "search");
    let searching_more = Target {
        tool: Some("alpha_search_all"),
        ..SEARCH
    };
    assert_eq!(a.admit("s:5", &searching_more).await.unwrap_err().rule, "search");
    // Other tools of alpha are not limited.
    let fetch = Target {
        tool: Some("alpha_fetch"),
        ..SEARCH
    };
    for _ in 0..5 {
        a.admit("s:1", &fetch).await.unwrap();
    }
    // Backend beta: per caller, whatever is called.
    let read = Target {
        backend: "beta",
        tool: None,
        kind: CallKind::Resource,
    };
    a.admit("s:1", &read).await.unwrap();
    b.admit("s:1", &read).await.unwrap();
    assert_eq!(a.admit("s:1", &read).await.unwrap_err().rule, "beta");
    b.admit("s:2", &read).await.unwrap();
    redis.stop().await;
}

#[tokio::test]
async fn redis_down_fails_open_or_closed_as_configured_and_recovers() {
    let mut redis = RedisServer::start().await;
    let rules = || {
        vec![rule(
            "search",
            LimitScope::Principal,
            2,
            LimitMatch {
                tools: vec!["alpha_search".into()],
                ..Default::default()
            },
        )]
    };
    let (open, reg_open) = replica(&redis, rules(), OnStoreError::Allow);
    let (closed, reg_closed) = replica(&redis, rules(), OnStoreError::Deny);
    open.admit("s:1", &SEARCH).await.unwrap();
    closed.admit("s:1", &SEARCH).await.unwrap();
    assert!(open.admit("s:1", &SEARCH).await.is_err(), "the bucket is shared");

    redis.stop().await;
    for _ in 0..5 {
        open.admit("s:1", &SEARCH).await.unwrap();
        let refused = closed.admit("s:1", &SEARCH).await.unwrap_err();
        assert_eq!(refused.cause, LimitCause::StoreUnavailable);
        assert_eq!(refused.rule, "search");
        assert!(refused.retry_after > Duration::ZERO);
    }
    assert_eq!(metric(&reg_open, "vmcp_limit_store_errors_total", &[]), 5);
    assert_eq!(metric(&reg_closed, "vmcp_limit_store_errors_total", &[]), 5);
    assert_eq!(
        metric(&reg_closed, "vmcp_limit_decisions_total", &[("outcome", "denied")]),
        5
    );
    // A call no rule matches never reaches Redis, so the outage does not touch it.
    let fetch = Target {
        tool: Some("alpha_fetch"),
        ..SEARCH
    };
    closed.admit("s:1", &fetch).await.unwrap();
    assert_eq!(metric(&reg_closed, "vmcp_limit_store_errors_total", &[]), 5);

    // Redis is back (empty): decisions are taken there again, shared again.
    redis.start_again().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match closed.admit("s:9", &SEARCH).await {
            Ok(()) => break,
            Err(l) if l.cause == LimitCause::StoreUnavailable && tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(l) => panic!("limits did not recover: {l:?}"),
        }
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while open.admit("s:9", &fetch).await.is_ok() && open.admit("s:9", &SEARCH).await.is_ok() {
        // `open` admits while its own backoff lasts; once it asks Redis, s:9's
        // bucket (one token left after `closed` took one) runs out.
        assert!(tokio::time::Instant::now() < deadline, "open never reached Redis again");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let refused = closed.admit("s:9", &SEARCH).await.unwrap_err();
    assert_eq!(refused.cause, LimitCause::Exhausted);
    redis.stop().await;
}
