//! The memory backend and the matching, on tokio's paused clock.

use std::time::Duration;

use prometheus::Registry;

use super::*;
use crate::config::{LimitMatch, LimitRule};

fn rule(name: &str, per: LimitScope, rate: u32, interval: Duration, matches: LimitMatch) -> LimitRule {
    LimitRule {
        name: name.into(),
        per,
        matches,
        rate,
        per_interval: interval,
        burst: None,
    }
}

fn limiter(rules: Vec<LimitRule>) -> (Limiter, Registry) {
    let registry = Registry::new();
    let config = LimitsConfig {
        on_store_error: OnStoreError::Allow,
        rules,
    };
    let limiter = Limiter::new(&config, LimitBackend::Memory, &registry).unwrap();
    (limiter, registry)
}

const TOOL: Target<'static> = Target {
    backend: "alpha",
    tool: Some("alpha_search"),
    kind: CallKind::Tool,
};

fn count(registry: &Registry, rule: &str, outcome: &str) -> u64 {
    registry
        .gather()
        .iter()
        .filter(|f| f.name() == "vmcp_limit_decisions_total")
        .flat_map(|f| f.get_metric())
        .filter(|m| {
            let labels: Vec<_> = m.get_label().iter().map(|l| (l.name(), l.value())).collect();
            labels.contains(&("rule", rule)) && labels.contains(&("outcome", outcome))
        })
        .map(|m| m.get_counter().get_value() as u64)
        .sum()
}

#[tokio::test(start_paused = true)]
async fn a_bucket_refills_at_its_rate() {
    let (limiter, registry) = limiter(vec![rule(
        "r",
        LimitScope::Principal,
        3,
        Duration::from_secs(60),
        LimitMatch::default(),
    )]);
    for _ in 0..3 {
        limiter.admit("a", &TOOL).await.unwrap();
    }
    let limited = limiter.admit("a", &TOOL).await.unwrap_err();
    assert_eq!(limited.rule, "r");
    assert_eq!(limited.cause, LimitCause::Exhausted);
    assert_eq!(limited.retry_after, Duration::from_secs(20), "one token per 20 s");
    assert_eq!(limited.retry_after_secs(), 20);
    assert_eq!(limited.error_data()["retry_after_ms"], 20_000);

    tokio::time::advance(Duration::from_secs(15)).await;
    let limited = limiter.admit("a", &TOOL).await.unwrap_err();
    assert_eq!(limited.retry_after, Duration::from_secs(5));
    tokio::time::advance(Duration::from_secs(5)).await;
    limiter.admit("a", &TOOL).await.unwrap();
    assert!(limiter.admit("a", &TOOL).await.is_err());

    // A long pause refills up to the burst, not beyond.
    tokio::time::advance(Duration::from_secs(3600)).await;
    for _ in 0..3 {
        limiter.admit("a", &TOOL).await.unwrap();
    }
    assert!(limiter.admit("a", &TOOL).await.is_err());
    assert_eq!(count(&registry, "r", "allowed"), 7);
    assert_eq!(count(&registry, "r", "limited"), 4);
}

#[tokio::test(start_paused = true)]
async fn principals_have_their_own_buckets_and_global_is_shared() {
    let (limiter, _) = limiter(vec![
        rule(
            "mine",
            LimitScope::Principal,
            2,
            Duration::from_secs(60),
            LimitMatch::default(),
        ),
        rule(
            "all",
            LimitScope::Global,
            3,
            Duration::from_secs(60),
            LimitMatch::default(),
        ),
    ]);
    limiter.admit("a", &TOOL).await.unwrap();
    limiter.admit("a", &TOOL).await.unwrap();
    assert_eq!(limiter.admit("a", &TOOL).await.unwrap_err().rule, "mine");
    // b has its own per-principal bucket, but the global one has one token left.
    limiter.admit("b", &TOOL).await.unwrap();
    assert_eq!(limiter.admit("b", &TOOL).await.unwrap_err().rule, "all");
    assert_eq!(limiter.admit("c", &TOOL).await.unwrap_err().rule, "all");
}

#[tokio::test(start_paused = true)]
async fn a_refusal_takes_no_token_from_the_other_rules() {
    let (limiter, _) = limiter(vec![
        rule(
            "big",
            LimitScope::Principal,
            3,
            Duration::from_secs(60),
            LimitMatch::default(),
        ),
        rule(
            "search",
            LimitScope::Principal,
            1,
            Duration::from_secs(60),
            LimitMatch {
                tools: vec!["alpha_search*".into()],
                ..Default::default()
            },
        ),
    ]);
    let other = Target {
        tool: Some("alpha_fetch"),
        ..TOOL
    };
    limiter.admit("a", &TOOL).await.unwrap();
    for _ in 0..5 {
        assert_eq!(limiter.admit("a", &TOOL).await.unwrap_err().rule, "search");
    }
    // `big` lost one token only, to the admitted call.
    limiter.admit("a", &other).await.unwrap();
    limiter.admit("a", &other).await.unwrap();
    assert_eq!(limiter.admit("a", &other).await.unwrap_err().rule, "big");
}

#[tokio::test(start_paused = true)]
async fn rules_match_backends_names_and_kinds() {
    let m = |backends: &[&str], tools: &[&str], kinds: &[CallKind]| LimitMatch {
        backends: backends.iter().map(|s| s.to_string()).collect(),
        tools: tools.iter().map(|s| s.to_string()).collect(),
        kinds: kinds.to_vec(),
    };
    let minute = Duration::from_secs(60);
    let (limiter, _) = limiter(vec![
        rule("beta", LimitScope::Global, 1, minute, m(&["beta"], &[], &[])),
        rule("exact", LimitScope::Global, 1, minute, m(&[], &["alpha_fetch"], &[])),
        rule(
            "prompts",
            LimitScope::Global,
            1,
            minute,
            m(&[], &[], &[CallKind::Prompt]),
        ),
    ]);
    // `alpha_search` on alpha matches nothing: never limited.
    for _ in 0..10 {
        limiter.admit("a", &TOOL).await.unwrap();
    }
    let beta = Target {
        backend: "beta",
        tool: None,
        kind: CallKind::Resource,
    };
    limiter.admit("a", &beta).await.unwrap();
    assert_eq!(limiter.admit("a", &beta).await.unwrap_err().rule, "beta");
    let fetch = Target {
        tool: Some("alpha_fetch"),
        ..TOOL
    };
    limiter.admit("a", &fetch).await.unwrap();
    assert_eq!(limiter.admit("a", &fetch).await.unwrap_err().rule, "exact");
    let prompt = Target {
        tool: Some("alpha_fetch2"),
        kind: CallKind::Prompt,
        ..TOOL
    };
    limiter.admit("a", &prompt).await.unwrap();
    assert_eq!(limiter.admit("a", &prompt).await.unwrap_err().rule, "prompts");
    assert!(pattern_matches("a*", "a") && pattern_matches("a*", "abc") && !pattern_matches("a*", "ba"));
    assert!(pattern_matches("*", "anything") && !pattern_matches("ab", "abc"));
}

#[tokio::test(start_paused = true)]
async fn burst_caps_the_bucket_and_idle_buckets_are_dropped() {
    let mut r = rule(
        "r",
        LimitScope::Principal,
        10,
        Duration::from_secs(1),
        LimitMatch::default(),
    );
    r.burst = Some(2);
    let (limiter, _) = limiter(vec![r]);
    limiter.admit("a", &TOOL).await.unwrap();
    limiter.admit("a", &TOOL).await.unwrap();
    let limited = limiter.admit("a", &TOOL).await.unwrap_err();
    assert_eq!(limited.retry_after, Duration::from_millis(100));
    let Store::Memory(m) = &limiter.store else {
        unreachable!()
    };
    for i in 0..2000 {
        limiter.admit(&format!("p{i}"), &TOOL).await.unwrap();
    }
    assert!(m.len() <= 2001);
    // Every bucket fills in 200 ms; the next sweep (by time) drops them all.
    tokio::time::advance(Duration::from_secs(11)).await;
    limiter.admit("z", &TOOL).await.unwrap();
    assert_eq!(
        m.len(),
        1,
        "full buckets are dropped (a missing bucket is full): only z's is left"
    );
}

#[tokio::test]
async fn no_rules_is_empty_and_admits_everything() {
    let (limiter, _) = limiter(Vec::new());
    assert!(limiter.is_empty());
    limiter.admit("a", &TOOL).await.unwrap();
}

#[test]
fn limited_renders_its_error() {
    let l = Limited {
        rule: "r".into(),
        retry_after: Duration::from_millis(1200),
        cause: LimitCause::Exhausted,
    };
    assert_eq!(l.retry_after_secs(), 2);
    assert_eq!(
        l.error_data(),
        serde_json::json!({"rule": "r", "retry_after_ms": 1200, "retry_after": 2})
    );
    assert!(l.message().contains("`r`"));
}

#[test]
fn the_backend_follows_the_session_store() {
    use crate::config::{RedisConfig, StoreConfig, StoreKind};
    assert!(matches!(
        LimitBackend::from_store(&StoreConfig::default()),
        LimitBackend::Memory
    ));
    let redis = StoreConfig {
        kind: StoreKind::Redis,
        redis: Some(RedisConfig {
            cluster: Some(vec!["r:6379".into()]),
            key_prefix: "p:".into(),
            ..Default::default()
        }),
        ..Default::default()
    };
    match LimitBackend::from_store(&redis) {
        LimitBackend::Redis(r) => assert_eq!((r.cluster, r.key_prefix.as_str()), (Some(vec!["r:6379".into()]), "p:")),
        LimitBackend::Memory => panic!("expected the store's redis"),
    }
}
