//! Who is asking is checked before any work is done for them: a request for
//! a session this replica has never seen, with the wrong credentials (or
//! none), gets the 404 of an unknown session without the session being
//! rebuilt (no backend touched, no slot taken).

mod support;

use std::sync::atomic::Ordering;

use serde_json::json;
use support::redis::RedisServer;
use support::{config_yaml, Replica, TestBackend};

#[tokio::test]
async fn a_foreign_session_is_not_rebuilt_for_another_identity() {
    let redis = RedisServer::start().await;
    let backend = TestBackend::start("b").await;
    let yaml = config_yaml(
        &[("b", &backend.url)],
        &format!(
            "store:\n  kind: redis\n  redis: {{ url: \"{}\", key_prefix: \"t:\" }}\n",
            redis.url()
        ),
    );
    let (first, second) = (Replica::start(&yaml).await, Replica::start(&yaml).await);
    let mut alice = first.client();
    alice.token = Some("alice-token".into());
    alice.initialize().await;
    assert_eq!(alice.call_tool("b_counter", json!({})).await.text(), "1");
    let calls_before = backend.stats.calls.load(Ordering::SeqCst);

    for token in [Some("mallory-token"), None] {
        let mut mallory = alice.via(&second.url);
        mallory.token = token.map(str::to_owned);
        let reply = mallory.call_tool("b_counter", json!({})).await;
        assert_eq!(reply.status, http::StatusCode::NOT_FOUND, "{token:?}");
        assert_eq!(
            mallory.request("tools/list", json!({})).await.status,
            http::StatusCode::NOT_FOUND
        );
    }
    assert_eq!(
        second.metric("vmcp_session_rebuilds_total"),
        0.0,
        "nothing rebuilt for a stranger"
    );
    assert_eq!(second.metric("vmcp_backend_rebuilds_total"), 0.0, "no backend touched");
    assert_eq!(second.metric("vmcp_sessions_active"), 0.0, "no slot taken");
    assert_eq!(backend.stats.calls.load(Ordering::SeqCst), calls_before);

    // The owner of the credentials is served there, with the backend state kept.
    let via_second = alice.via(&second.url);
    assert_eq!(via_second.call_tool("b_counter", json!({})).await.text(), "2");
    assert_eq!(second.metric("vmcp_session_rebuilds_total{outcome=\"ok\"}"), 1.0);
}
