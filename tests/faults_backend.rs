//! A hung backend (it accepts and then says nothing) costs the calls that
//! go to it their own timeout and nothing else: the call is answered on
//! time, DELETE answers at once, and the idle reaper keeps closing every
//! other session. The backend is frozen by a TCP proxy in front of a real
//! MCP server.

mod support;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde_json::json;
use support::proxy::FreezableProxy;
use support::{config_yaml, Replica, TestBackend};

/// At most this long for anything that must not wait on the hung backend.
const PROMPT: Duration = Duration::from_secs(10);

async fn within<T>(what: &str, fut: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(PROMPT, fut)
        .await
        .unwrap_or_else(|_| panic!("{what}: no answer within {PROMPT:?}"))
}

#[tokio::test]
async fn a_call_to_a_frozen_backend_is_answered_at_its_timeout() {
    let backend = TestBackend::start("b").await;
    let proxy = FreezableProxy::start(&backend.addr).await;
    let yaml = config_yaml(
        &[("b", &proxy.url)],
        "session:\n  call_timeout: 1s\n  close_timeout: 500ms\n",
    );
    let replica = Replica::start(&yaml).await;
    let mut client = replica.client();
    client.initialize().await;
    assert_eq!(
        client.call_tool("b_echo", json!({"message": "hi"})).await.text(),
        "b:hi"
    );
    proxy.freeze();
    let started = Instant::now();
    let reply = within("tools/call", client.call_tool("b_echo", json!({"message": "x"}))).await;
    let took = started.elapsed();
    assert_eq!(reply.error_code(), -32001, "{:?}", reply.body);
    assert!(
        took < Duration::from_millis(2500),
        "answered at the call timeout, took {took:?}"
    );
    // The cancellation notice to the frozen backend does not hold the next call either.
    let started = Instant::now();
    let reply = within("second tools/call", client.call_tool("b_echo", json!({}))).await;
    assert!(reply.body.get("error").is_some());
    assert!(
        started.elapsed() < Duration::from_millis(2500),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn delete_answers_at_once_while_the_backend_is_frozen() {
    let backend = TestBackend::start("b").await;
    let proxy = FreezableProxy::start(&backend.addr).await;
    let yaml = config_yaml(
        &[("b", &proxy.url)],
        "session:\n  call_timeout: 30s\n  close_timeout: 500ms\n",
    );
    let replica = Replica::start(&yaml).await;
    let mut client = replica.client();
    client.initialize().await;
    proxy.freeze();
    // A call hangs on the frozen backend (its timeout is far away)...
    let caller = client.via(&replica.url);
    let hung = tokio::spawn(async move { caller.call_tool("b_echo", json!({})).await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    // ...and DELETE does not wait for it, nor for the backend session's DELETE.
    let started = Instant::now();
    assert_eq!(within("DELETE", client.delete()).await, http::StatusCode::NO_CONTENT);
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "DELETE took {:?}",
        started.elapsed()
    );
    assert_eq!(
        client.call_tool("b_echo", json!({})).await.status,
        http::StatusCode::NOT_FOUND
    );
    assert_eq!(replica.metric("vmcp_sessions_active"), 0.0);
    hung.abort();
}

#[tokio::test]
async fn the_reaper_keeps_expiring_sessions_while_one_backend_hangs() {
    let (hung, ok) = (TestBackend::start("hung").await, TestBackend::start("ok").await);
    let proxy = FreezableProxy::start(&hung.addr).await;
    let yaml = config_yaml(
        &[("hung", &proxy.url), ("ok", &ok.url)],
        "session:\n  idle_timeout: 600ms\n  init_timeout: 300ms\n  close_timeout: 500ms\n",
    );
    let replica = Replica::start(&yaml).await;
    let mut first = replica.client();
    first.initialize().await;
    proxy.freeze();
    // Created while `hung` is frozen: it has only `ok`.
    let mut second = replica.client();
    second.initialize().await;
    // Both expire: the first one's close must not hold up the second one's.
    for _ in 0..100 {
        if replica.metric("vmcp_sessions_closed_total{reason=\"idle\"}") == 2.0
            && ok.stats.sessions_dropped.load(Ordering::SeqCst) == 2
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(replica.metric("vmcp_sessions_closed_total{reason=\"idle\"}"), 2.0);
    assert_eq!(
        ok.stats.sessions_dropped.load(Ordering::SeqCst),
        2,
        "both `ok` backend sessions closed"
    );
    assert_eq!(replica.metric("vmcp_sessions_active"), 0.0);
}

#[tokio::test]
async fn a_session_cannot_pile_up_calls_past_max_calls() {
    let backend = TestBackend::start("b").await;
    let yaml = config_yaml(&[("b", &backend.url)], "session:\n  max_calls: 2\n");
    let replica = Replica::start(&yaml).await;
    let mut client = replica.client();
    client.initialize().await;
    let slow: Vec<_> = (0..2)
        .map(|_| {
            let caller = client.via(&replica.url);
            tokio::spawn(async move { caller.call_tool("b_slow", json!({"ms": 800})).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let refused = client.call_tool("b_echo", json!({})).await;
    assert_eq!(refused.status, http::StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(refused.error_code(), -32051);
    assert!(refused.headers.get("retry-after").is_some());
    // Lists come from the catalog: not bounded.
    assert!(!client.list_names("tools/list", "tools").await.is_empty());
    for call in slow {
        assert_eq!(call.await.unwrap().text(), "slept 800");
    }
    assert_eq!(
        client.call_tool("b_echo", json!({"message": "again"})).await.text(),
        "b:again"
    );
}

#[tokio::test]
async fn calls_to_a_backend_answering_in_event_streams_reuse_its_connections() {
    // rmcp, the Python and the TypeScript SDKs answer POSTs with an event
    // stream that ends after the response. Dropped unread at the response,
    // each call's connection was closed: a TCP (and TLS) connect per call,
    // and a socket in TIME_WAIT on vmcp's side for a minute (at ~470 calls/s
    // to one backend, no ephemeral port left to connect from).
    let backend = TestBackend::start("b").await;
    let proxy = FreezableProxy::start(&backend.addr).await;
    let replica = Replica::start(&config_yaml(&[("b", &proxy.url)], "")).await;
    let mut client = replica.client();
    client.initialize().await;
    assert_eq!(client.call_tool("b_echo", json!({"message": "a"})).await.text(), "b:a");
    let before = proxy.accepted.load(Ordering::SeqCst);
    for i in 0..20 {
        let reply = client.call_tool("b_echo", json!({"message": i.to_string()})).await;
        assert_eq!(reply.text(), format!("b:{i}"));
    }
    let opened = proxy.accepted.load(Ordering::SeqCst) - before;
    assert!(opened <= 1, "20 calls opened {opened} connections");
}

#[tokio::test]
async fn a_backend_ending_idle_connections_at_five_seconds_loses_no_call() {
    // uvicorn and Node close a keep-alive connection idle for 5 s. A call
    // written on one as its server closed it was lost: vmcp cannot know
    // whether the server read it, so it may not resend it. The proxy plays
    // that race at its worst: a request on a connection idle 5 s is dropped.
    let backend = TestBackend::start("b").await;
    let proxy = FreezableProxy::start(&backend.addr).await;
    proxy.close_idle_after(Duration::from_secs(5));
    let replica = Replica::start(&config_yaml(&[("b", &proxy.url)], "")).await;
    let mut client = replica.client();
    client.initialize().await;
    assert_eq!(client.call_tool("b_echo", json!({"message": "a"})).await.text(), "b:a");
    tokio::time::sleep(Duration::from_millis(5500)).await;
    let reply = within("tools/call", client.call_tool("b_echo", json!({"message": "b"}))).await;
    assert_eq!(reply.text(), "b:b", "{:?}", reply.body);
    assert_eq!(backend.stats.calls.load(Ordering::SeqCst), 2);
}
