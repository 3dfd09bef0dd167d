//! Two replicas on one real Redis: sessions continue on either replica with
//! backend state intact, survive a killed replica, heal lost backend sessions,
//! expire, end everywhere on DELETE, stay bound to their caller, and ride out
//! a Redis restart.

mod support;

use std::sync::atomic::Ordering;
use std::time::Duration;

use http::StatusCode;
use redis::AsyncCommands;
use serde_json::{json, Value};
use support::process::VmcpProcess;
use support::redis::RedisServer;
use support::{eventually, Client, Options, Replica, TestBackend};

fn yaml(redis: &RedisServer, backends: &[(&str, &str)], extra: &str) -> String {
    let mut y = support::config_yaml(backends, "");
    y.push_str(&format!(
        "store:\n  kind: redis\n  touch_interval: 200ms\n  redis: {{ url: \"{}\", key_prefix: \"t:\" }}\n{extra}",
        redis.url()
    ));
    y
}

async fn counter(client: &Client, tool: &str) -> String {
    let reply = client.call_tool(tool, json!({})).await;
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    reply.text()
}

#[tokio::test]
async fn a_session_continues_on_another_replica_with_backend_state() {
    let redis = RedisServer::start().await;
    let counter_backend = TestBackend::start("c").await;
    let config = yaml(&redis, &[("c", &counter_backend.url)], "");
    let (a, b) = (Replica::start(&config).await, Replica::start(&config).await);
    let mut on_a = a.client();
    on_a.initialize().await;
    assert_eq!(counter(&on_a, "c_counter").await, "1");
    assert_eq!(counter(&on_a, "c_counter").await, "2");
    let on_b = on_a.via(&b.url);
    assert_eq!(counter(&on_b, "c_counter").await, "3", "B resumed A's backend session");
    assert_eq!(
        counter_backend.stats.sessions_opened.load(Ordering::SeqCst),
        1,
        "no new backend handshake"
    );
    assert_eq!(
        b.metric("vmcp_backend_rebuilds_total{backend=\"c\",outcome=\"resumed\"}"),
        1.0
    );
    assert_eq!(b.metric("vmcp_session_rebuilds_total{outcome=\"ok\"}"), 1.0);
    // Back on A, the same backend session still counts on.
    assert_eq!(counter(&on_a, "c_counter").await, "4");

    // The stored metadata: one key per session, JSON, with a TTL.
    let mut conn = redis.conn().await;
    let key = format!("t:session:{{{}}}", on_a.session.as_deref().unwrap());
    let stored: String = conn.get(&key).await.unwrap();
    let meta: Value = serde_json::from_str(&stored).unwrap();
    assert_eq!(meta["backends"][0]["name"], "c");
    assert_eq!(meta["backends"][0]["transport"], "streamable_http");
    assert!(meta["backends"][0]["session_id"].is_string());
    let ttl: i64 = conn.pttl(&key).await.unwrap();
    assert!(ttl > 0, "the key expires with the idle timeout");
}

#[tokio::test]
async fn a_killed_replica_loses_nothing() {
    let redis = RedisServer::start().await;
    let counter_backend = TestBackend::start("c").await;
    let config = yaml(&redis, &[("c", &counter_backend.url)], "");
    let a = VmcpProcess::start(&config).await;
    let b = Replica::start(&config).await;
    let mut on_a = Client::new(&a.url);
    on_a.initialize().await;
    assert_eq!(counter(&on_a, "c_counter").await, "1");
    assert_eq!(counter(&on_a, "c_counter").await, "2");
    a.kill().await;
    let on_b = on_a.via(&b.url);
    assert_eq!(counter(&on_b, "c_counter").await, "3");
    assert_eq!(counter_backend.stats.sessions_opened.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_restarted_backend_is_reinitialized_alone() {
    let redis = RedisServer::start().await;
    let alpha = TestBackend::start("alpha").await;
    let beta = TestBackend::start("beta").await;
    let config = yaml(&redis, &[("alpha", &alpha.url), ("beta", &beta.url)], "");
    let a = Replica::start(&config).await;
    let mut client = a.client();
    client.initialize().await;
    assert_eq!(counter(&client, "alpha_counter").await, "1");
    assert_eq!(counter(&client, "beta_counter").await, "1");
    let stored_before = stored_backend_ids(&redis, client.session.as_deref().unwrap()).await;

    // alpha restarts: all its sessions are gone.
    let addr = alpha.addr.clone();
    drop(alpha);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let alpha = TestBackend::start_at("alpha", Options::default(), &addr).await;

    assert_eq!(
        counter(&client, "alpha_counter").await,
        "1",
        "a fresh alpha session, call retried once"
    );
    assert_eq!(counter(&client, "alpha_counter").await, "2");
    assert_eq!(counter(&client, "beta_counter").await, "2", "beta untouched");
    assert_eq!(beta.stats.sessions_opened.load(Ordering::SeqCst), 1);
    assert_eq!(alpha.stats.sessions_opened.load(Ordering::SeqCst), 1);
    assert_eq!(
        a.metric("vmcp_backend_rebuilds_total{backend=\"alpha\",outcome=\"reinitialized\"}"),
        1.0
    );
    let stored_after = stored_backend_ids(&redis, client.session.as_deref().unwrap()).await;
    assert_ne!(
        stored_before["alpha"], stored_after["alpha"],
        "new alpha session id stored"
    );
    assert_eq!(stored_before["beta"], stored_after["beta"]);

    // Another replica picks up the healed session with alpha's new state.
    let b = Replica::start(&config).await;
    assert_eq!(counter(&client.via(&b.url), "alpha_counter").await, "3");
}

async fn stored_backend_ids(redis: &RedisServer, session: &str) -> Value {
    let stored: String = redis
        .conn()
        .await
        .get(format!("t:session:{{{session}}}"))
        .await
        .unwrap();
    let meta: Value = serde_json::from_str(&stored).unwrap();
    let mut ids = serde_json::Map::new();
    for b in meta["backends"].as_array().unwrap() {
        ids.insert(b["name"].as_str().unwrap().to_owned(), b["session_id"].clone());
    }
    Value::Object(ids)
}

#[tokio::test]
async fn sessions_expire_in_redis_with_the_idle_timeout() {
    let redis = RedisServer::start().await;
    let backend = TestBackend::start("c").await;
    let config = yaml(&redis, &[("c", &backend.url)], "session:\n  idle_timeout: 800ms\n");
    let (a, b) = (Replica::start(&config).await, Replica::start(&config).await);
    let mut client = a.client();
    client.initialize().await;
    tokio::time::sleep(Duration::from_millis(1300)).await;
    assert_eq!(
        client.via(&b.url).call_tool("c_echo", json!({})).await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        client.call_tool("c_echo", json!({})).await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(a.metric("vmcp_sessions_closed_total{reason=\"idle\"}"), 1.0);
    eventually("backend session closed", || async {
        backend.stats.sessions_dropped.load(Ordering::SeqCst) == 1
    })
    .await;
}

#[tokio::test]
async fn delete_on_one_replica_ends_the_session_everywhere() {
    let redis = RedisServer::start().await;
    let backend = TestBackend::start("c").await;
    let config = yaml(&redis, &[("c", &backend.url)], "");
    let (a, b) = (Replica::start(&config).await, Replica::start(&config).await);
    let mut on_a = a.client();
    on_a.initialize().await;
    let on_b = on_a.via(&b.url);
    assert_eq!(counter(&on_b, "c_counter").await, "1");
    assert_eq!(on_b.delete().await, StatusCode::NO_CONTENT);
    assert_eq!(on_b.call_tool("c_echo", json!({})).await.status, StatusCode::NOT_FOUND);
    eventually("A dropped its runtime", || async {
        on_a.call_tool("c_echo", json!({})).await.status == StatusCode::NOT_FOUND
    })
    .await;
    assert_eq!(on_a.delete().await, StatusCode::NOT_FOUND);
    eventually("backend session closed", || async {
        backend.stats.sessions_dropped.load(Ordering::SeqCst) == 1
    })
    .await;
    assert_eq!(a.metric("vmcp_sessions_active"), 0.0);
}

#[tokio::test]
async fn sessions_are_bound_to_the_callers_identity_on_every_replica() {
    let redis = RedisServer::start().await;
    let backend = TestBackend::start("c").await;
    let config = yaml(&redis, &[("c", &backend.url)], "");
    let (a, b) = (Replica::start(&config).await, Replica::start(&config).await);
    let mut owner = a.client();
    owner.token = Some("token-one".into());
    owner.initialize().await;

    let mut thief = owner.via(&b.url);
    thief.token = Some("token-two".into());
    assert_eq!(thief.call_tool("c_echo", json!({})).await.status, StatusCode::NOT_FOUND);
    thief.token = None;
    assert_eq!(thief.call_tool("c_echo", json!({})).await.status, StatusCode::NOT_FOUND);
    assert_eq!(
        thief.delete().await,
        StatusCode::NOT_FOUND,
        "no DELETE by a stranger either"
    );
    assert_eq!(
        counter(&owner.via(&b.url), "c_counter").await,
        "1",
        "the owner still gets in on B"
    );

    // The token itself is nowhere in Redis.
    let stored: String = redis
        .conn()
        .await
        .get(format!("t:session:{{{}}}", owner.session.as_deref().unwrap()))
        .await
        .unwrap();
    assert!(!stored.contains("token-one"));

    // An anonymous session cannot be taken over by an authenticated caller.
    let mut anonymous = a.client();
    anonymous.initialize().await;
    let mut intruder = anonymous.via(&b.url);
    intruder.token = Some("token-one".into());
    assert_eq!(
        intruder.call_tool("c_echo", json!({})).await.status,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn twenty_concurrent_first_requests_rebuild_a_foreign_session_once() {
    let redis = RedisServer::start().await;
    let backend = TestBackend::start("c").await;
    let config = yaml(&redis, &[("c", &backend.url)], "");
    let (a, b) = (Replica::start(&config).await, Replica::start(&config).await);
    let mut on_a = a.client();
    on_a.initialize().await;
    let calls: Vec<_> = (0..20)
        .map(|_| {
            let on_b = on_a.via(&b.url);
            tokio::spawn(async move { on_b.call_tool("c_counter", json!({})).await })
        })
        .collect();
    let mut seen = Vec::new();
    for call in calls {
        let reply = call.await.unwrap();
        assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
        seen.push(reply.text().parse::<u32>().unwrap());
    }
    seen.sort();
    assert_eq!(seen, (1..=20).collect::<Vec<_>>(), "one backend session served all 20");
    assert_eq!(b.metric("vmcp_session_rebuilds_total{outcome=\"ok\"}"), 1.0);
    assert_eq!(
        b.metric("vmcp_backend_rebuilds_total{backend=\"c\",outcome=\"resumed\"}"),
        1.0
    );
    assert_eq!(backend.stats.sessions_opened.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn redis_down_then_back() {
    let mut redis = RedisServer::start().await;
    let backend = TestBackend::start("c").await;
    let config = yaml(&redis, &[("c", &backend.url)], "");
    let (a, b) = (Replica::start(&config).await, Replica::start(&config).await);
    let http = support::http();
    let ready = |r: &Replica| http.get(format!("{}/readyz", r.base)).send();
    let mut live = a.client();
    live.initialize().await;
    assert_eq!(counter(&live, "c_counter").await, "1");

    redis.stop().await;
    // Live sessions keep serving their traffic.
    assert_eq!(counter(&live, "c_counter").await, "2");
    assert_eq!(counter(&live, "c_counter").await, "3");
    // New sessions and foreign rebuilds fail clearly.
    let mut newcomer = a.client();
    let refused = newcomer
        .post_raw(
            json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
                "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}})
            .to_string(),
            &[],
        )
        .await;
    assert_eq!(
        (refused.status, refused.error_code()),
        (StatusCode::SERVICE_UNAVAILABLE, -32603)
    );
    assert!(refused.headers.contains_key("retry-after"));
    let foreign = live.via(&b.url).call_tool("c_echo", json!({})).await;
    assert_eq!(
        (foreign.status, foreign.error_code()),
        (StatusCode::SERVICE_UNAVAILABLE, -32603)
    );
    // Readiness is about the replica, not the store: A stays in the Service.
    eventually("A sees the store down", || async { a.metric("vmcp_store_up") == 0.0 }).await;
    assert_eq!(ready(&a).await.unwrap().status(), StatusCode::OK);

    redis.start_again().await; // empty: it lost every key
    eventually("A sees the store again", || async { a.metric("vmcp_store_up") == 1.0 }).await;
    newcomer.initialize().await;
    assert_eq!(counter(&live, "c_counter").await, "4");
    // The live session's metadata is written again by its next touch, so B can rebuild it.
    eventually("metadata re-stored", || async {
        let _ = live.call_tool("c_echo", json!({})).await;
        redis
            .conn()
            .await
            .exists::<_, bool>(format!("t:session:{{{}}}", live.session.as_deref().unwrap()))
            .await
            .unwrap()
    })
    .await;
    assert_eq!(counter(&live.via(&b.url), "c_counter").await, "5");
}

/// Backend URLs may carry credentials; the shared store is not the place for
/// them. The stored target is the URL without userinfo and query, and a
/// session still resumes on another replica with it.
#[tokio::test]
async fn backend_url_secrets_are_not_stored_in_redis() {
    const PASSWORD: &str = "url-password-Qz71kVf";
    const TOKEN: &str = "query-token-Hs82mWd";
    let redis = RedisServer::start().await;
    let counter_backend = TestBackend::start("c").await;
    let url = counter_backend
        .url
        .replace("http://", &format!("http://user:{PASSWORD}@"))
        + &format!("?token={TOKEN}");
    let config = yaml(&redis, &[("c", &url)], "");
    let (a, b) = (Replica::start(&config).await, Replica::start(&config).await);
    let mut on_a = a.client();
    on_a.initialize().await;
    assert_eq!(counter(&on_a, "c_counter").await, "1");
    let stored: String = redis
        .conn()
        .await
        .get(format!("t:session:{{{}}}", on_a.session.as_deref().unwrap()))
        .await
        .unwrap();
    assert!(!stored.contains(PASSWORD), "password stored: {stored}");
    assert!(!stored.contains(TOKEN), "query token stored: {stored}");
    assert_eq!(
        counter(&on_a.via(&b.url), "c_counter").await,
        "2",
        "B resumed A's backend session"
    );
}
