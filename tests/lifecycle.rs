//! Session lifecycle end to end: partial failure, in-flight calls, DELETE,
//! idle expiry, the session cap, concurrency and graceful shutdown.

mod support;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde_json::json;
use support::{config_yaml, hanging_url, refused_url, Replica, TestBackend};

#[tokio::test]
async fn hanging_and_refusing_backends_are_left_out_within_the_timeout() {
    let good = TestBackend::start("good").await;
    let (hung, _hold) = hanging_url().await;
    let refused = refused_url().await;
    let yaml = config_yaml(
        &[("good", &good.url), ("hung", &hung), ("refused", &refused)],
        "session:\n  init_timeout: 700ms\n",
    );
    let replica = Replica::start(&yaml).await;
    let mut client = replica.client();
    let started = Instant::now();
    let init = client.initialize().await;
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(650),
        "waited for the hung backend's timeout ({took:?})"
    );
    assert!(
        took < Duration::from_millis(700 + 1500),
        "session created within timeout + margin ({took:?})"
    );
    let instructions = init.result()["instructions"].as_str().unwrap();
    assert!(instructions.contains("Unavailable"), "{instructions}");
    assert!(
        instructions.contains("hung") && instructions.contains("refused"),
        "{instructions}"
    );
    let tools = client.list_names("tools/list", "tools").await;
    assert!(tools.iter().all(|t| t.starts_with("good_")), "{tools:?}");
    assert_eq!(
        client.call_tool("good_echo", json!({"message": "ok"})).await.text(),
        "good:ok"
    );
    assert_eq!(
        replica.metric("vmcp_backend_inits_total{backend=\"hung\",outcome=\"timeout\"}"),
        1.0
    );
    assert_eq!(
        replica.metric("vmcp_backend_inits_total{backend=\"refused\",outcome=\"unreachable\"}"),
        1.0
    );
}

#[tokio::test]
async fn a_session_with_no_healthy_backend_is_still_created_and_says_so() {
    let refused = refused_url().await;
    let replica = Replica::start(&config_yaml(&[("down", &refused)], "")).await;
    let mut client = replica.client();
    let init = client.initialize().await;
    assert!(init.result()["instructions"]
        .as_str()
        .unwrap()
        .contains("no backend is available"));
    assert!(client.list_names("tools/list", "tools").await.is_empty());
}

#[tokio::test]
async fn delete_answers_at_once_and_closes_backend_sessions_after_the_call_in_flight() {
    let backend = TestBackend::start("slowpoke").await;
    let replica = Replica::start(&config_yaml(&[("slowpoke", &backend.url)], "")).await;
    let mut client = replica.client();
    client.initialize().await;
    let caller = client.via(&replica.url);
    let slow = tokio::spawn(async move { caller.call_tool("slowpoke_slow", json!({"ms": 800})).await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    assert_eq!(client.delete().await, http::StatusCode::NO_CONTENT);
    assert!(
        started.elapsed() < Duration::from_millis(400),
        "DELETE did not wait for the in-flight call ({:?})",
        started.elapsed()
    );
    assert_eq!(
        backend.stats.sessions_dropped.load(Ordering::SeqCst),
        0,
        "the backend session outlives the call"
    );
    let slow = slow.await.unwrap();
    assert_eq!(slow.text(), "slept 800", "the in-flight call completed normally");
    // The backend session was DELETEd once the call had finished.
    wait_until(|| backend.stats.sessions_dropped.load(Ordering::SeqCst) == 1).await;
    assert_eq!(
        client.call_tool("slowpoke_echo", json!({})).await.status,
        http::StatusCode::NOT_FOUND
    );
    assert_eq!(client.delete().await, http::StatusCode::NOT_FOUND);
    assert_eq!(replica.metric("vmcp_sessions_closed_total{reason=\"delete\"}"), 1.0);
}

#[tokio::test]
async fn idle_sessions_expire_at_their_deadline_and_close_backend_sessions() {
    let backend = TestBackend::start("b").await;
    let replica = Replica::start(&config_yaml(
        &[("b", &backend.url)],
        "session:\n  idle_timeout: 400ms\n",
    ))
    .await;
    let mut busy = replica.client();
    busy.initialize().await;
    let mut idle = replica.client();
    idle.initialize().await;
    // Keep one session in use past the other's deadline.
    for _ in 0..6 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(busy.call_tool("b_echo", json!({})).await.status, http::StatusCode::OK);
    }
    // The idle one was closed by the reaper without any request touching it.
    assert_eq!(backend.stats.sessions_dropped.load(Ordering::SeqCst), 1);
    assert_eq!(replica.metric("vmcp_sessions_closed_total{reason=\"idle\"}"), 1.0);
    assert_eq!(
        idle.call_tool("b_echo", json!({})).await.status,
        http::StatusCode::NOT_FOUND
    );
    assert_eq!(busy.call_tool("b_echo", json!({})).await.status, http::StatusCode::OK);
}

#[tokio::test]
async fn initialize_beyond_max_sessions_gets_503_with_retry_after() {
    let backend = TestBackend::start("b").await;
    let replica = Replica::start(&config_yaml(&[("b", &backend.url)], "session:\n  max_sessions: 2\n")).await;
    let (mut one, mut two) = (replica.client(), replica.client());
    one.initialize().await;
    two.initialize().await;
    let third = replica
        .client()
        .post_raw(
            json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
                "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}})
            .to_string(),
            &[],
        )
        .await;
    assert_eq!(third.status, http::StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(third.headers.get("retry-after").unwrap(), "1");
    assert_eq!(third.error_code(), -32603);
    assert_eq!(third.body["id"], 1);
    // A freed slot is reusable.
    assert_eq!(one.delete().await, http::StatusCode::NO_CONTENT);
    replica.client().initialize().await;
}

#[tokio::test]
async fn fifty_concurrent_sessions_keep_their_own_backend_state() {
    let (a, b) = (TestBackend::start("a").await, TestBackend::start("b").await);
    let replica = Replica::start(&config_yaml(&[("a", &a.url), ("b", &b.url)], "")).await;
    let tasks: Vec<_> = (0..50)
        .map(|i| {
            let url = replica.url.clone();
            tokio::spawn(async move {
                let mut client = support::Client::new(&url);
                client.initialize().await;
                for n in 1..=5 {
                    let tool = if i % 2 == 0 { "a_counter" } else { "b_counter" };
                    assert_eq!(client.call_tool(tool, json!({})).await.text(), n.to_string());
                }
                assert_eq!(
                    client
                        .call_tool("a_echo", json!({"message": i.to_string()}))
                        .await
                        .text(),
                    format!("a:{i}")
                );
                assert_eq!(client.delete().await, http::StatusCode::NO_CONTENT);
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("session task");
    }
    assert_eq!(a.stats.sessions_opened.load(Ordering::SeqCst), 50);
    assert_eq!(replica.metric("vmcp_sessions_active"), 0.0);
    assert_eq!(replica.metric("vmcp_sessions_created_total"), 50.0);
}

#[tokio::test]
async fn graceful_shutdown_finishes_in_flight_calls_and_closes_backend_sessions() {
    let backend = TestBackend::start("b").await;
    let mut replica = Replica::start(&config_yaml(&[("b", &backend.url)], "http:\n  drain_delay: 100ms\n")).await;
    let mut client = replica.client();
    client.initialize().await;
    let caller = client.via(&replica.url);
    let slow = tokio::spawn(async move { caller.call_tool("b_slow", json!({"ms": 600})).await });
    tokio::time::sleep(Duration::from_millis(150)).await;
    replica.shutdown().await;
    assert_eq!(slow.await.unwrap().text(), "slept 600");
    wait_until(|| backend.stats.sessions_dropped.load(Ordering::SeqCst) == 1).await;
    assert_eq!(replica.metric("vmcp_sessions_closed_total{reason=\"shutdown\"}"), 1.0);
}

/// Polls `cond` for up to 5 s (backend-side cleanup is asynchronous).
async fn wait_until(cond: impl Fn() -> bool) {
    for _ in 0..100 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("condition not reached within 5 s");
}
