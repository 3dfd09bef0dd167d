//! No backend session leaks, whatever ends a client session: an
//! `init_timeout` that fires after the backend's handshake, a client that
//! hangs up mid-initialize, or a DELETE that reaches a replica holding no
//! runtime for the session (the backend sessions listed in the metadata are
//! ended there).

mod support;

use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::json;
use support::redis::RedisServer;
use support::{config_yaml, eventually, Options, Replica, TestBackend};

fn slow_lister() -> Options {
    Options {
        list_delay: Some(Duration::from_millis(1500)),
        ..Options::default()
    }
}

#[tokio::test]
async fn a_backend_session_opened_before_init_timeout_fired_is_deleted() {
    let backend = TestBackend::start_with("slow", slow_lister()).await;
    let replica = Replica::start(&config_yaml(
        &[("slow", &backend.url)],
        "session:\n  init_timeout: 300ms\n",
    ))
    .await;
    let mut client = replica.client();
    let init = client.initialize().await;
    assert!(init.result()["instructions"].as_str().unwrap().contains("Unavailable"));
    assert_eq!(
        backend.stats.sessions_opened.load(Ordering::SeqCst),
        1,
        "the handshake went through"
    );
    eventually("the timed-out backend session is DELETEd", || async {
        backend.stats.sessions_dropped.load(Ordering::SeqCst) == 1
    })
    .await;
}

#[tokio::test]
async fn a_client_that_hangs_up_mid_initialize_leaves_no_backend_session() {
    let backend = TestBackend::start_with("slow", slow_lister()).await;
    let replica = Replica::start(&config_yaml(
        &[("slow", &backend.url)],
        "session:\n  init_timeout: 5s\n",
    ))
    .await;
    let client = replica.client();
    let init = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}});
    let gone = tokio::time::timeout(Duration::from_millis(400), client.post_raw(init.to_string(), &[])).await;
    assert!(gone.is_err(), "the client gave up before the answer");
    eventually("the handshake happened", || async {
        backend.stats.sessions_opened.load(Ordering::SeqCst) == 1
    })
    .await;
    for _ in 0..100 {
        if backend.stats.sessions_dropped.load(Ordering::SeqCst) == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        backend.stats.sessions_dropped.load(Ordering::SeqCst),
        1,
        "backend session DELETEd"
    );
    assert_eq!(replica.metric("vmcp_sessions_active"), 0.0);
}

#[tokio::test]
async fn delete_where_no_replica_holds_the_session_ends_its_backend_sessions() {
    let redis = RedisServer::start().await;
    let backend = TestBackend::start("b").await;
    let yaml = config_yaml(
        &[("b", &backend.url)],
        &format!(
            "store:\n  kind: redis\n  redis: {{ url: \"{}\", key_prefix: \"t:\" }}\n",
            redis.url()
        ),
    );
    let mut first = Replica::start(&yaml).await;
    let mut client = first.client();
    client.initialize().await;
    assert_eq!(client.call_tool("b_counter", json!({})).await.text(), "1");
    // A graceful stop with a shared store keeps the backend session for others.
    first.shutdown().await;
    assert_eq!(backend.stats.sessions_dropped.load(Ordering::SeqCst), 0);
    let second = Replica::start(&yaml).await;
    let via_second = client.via(&second.url);
    assert_eq!(via_second.delete().await, http::StatusCode::NO_CONTENT);
    eventually("the stored backend session is DELETEd", || async {
        backend.stats.sessions_dropped.load(Ordering::SeqCst) == 1
    })
    .await;
    assert_eq!(
        second.metric("vmcp_session_rebuilds_total"),
        0.0,
        "nothing rebuilt to delete it"
    );
    assert_eq!(
        via_second.call_tool("b_counter", json!({})).await.status,
        http::StatusCode::NOT_FOUND
    );
}
