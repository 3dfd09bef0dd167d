//! Fault paths of the affinity layer (issue 10, items 2, 3 and 5), on real
//! processes, sockets and redis-server:
//! - an owner that dies after a request reached it: a call never runs twice,
//!   the client is told the outcome is unknown, reads are served elsewhere;
//! - `http.allowed_hosts` holds across a hop (judged on the client's Host);
//! - a Redis outage leaves every replica ready and its sessions serving.

mod support;

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use http::StatusCode;
use serde_json::{json, Value};
use support::client::Reply;
use support::process::VmcpProcess;
use support::redis::RedisServer;
use support::{deps, eventually, Client, Replica, TestBackend};
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;

const HOP_KEY: &str = "faults-hop-key-0123456789";

/// The JSON-RPC code for "the owner failed after the request was sent".
const OUTCOME_UNKNOWN: i64 = -32050;

fn cluster_yaml(
    redis: &RedisServer,
    backend: &str,
    members: &BTreeMap<String, String>,
    me: &str,
    extra: &str,
) -> String {
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

fn served_by(reply: &Reply) -> String {
    reply
        .headers
        .get("x-vmcp-replica")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("?")
        .to_owned()
}

/// A replica "owner" that reads each request and dies without answering
/// (what a SIGKILL between reading a request and answering it looks like).
async fn swallowing_owner(addr: &str) -> tokio::task::JoinHandle<()> {
    let listener = TcpListener::bind(addr).await.expect("bind the dead owner's port");
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 65536];
                let mut seen = Vec::new();
                // Read the whole request (headers and body), then drop the socket.
                while let Ok(Ok(n)) = tokio::time::timeout(Duration::from_millis(200), stream.read(&mut buf)).await {
                    if n == 0 {
                        break;
                    }
                    seen.extend_from_slice(&buf[..n]);
                }
            });
        }
    })
}

/// A replica "owner" that reads each request, begins a JSON answer (its
/// head and a few bytes of a 200-byte body) and then, if `stall`, sends
/// nothing more for 10 s, else closes the connection.
async fn cutting_owner(addr: &str, stall: bool) -> tokio::task::JoinHandle<()> {
    let listener = TcpListener::bind(addr).await.expect("bind the owner's port");
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                use tokio::io::AsyncWriteExt;
                let mut buf = vec![0u8; 65536];
                while let Ok(Ok(n)) = tokio::time::timeout(Duration::from_millis(100), stream.read(&mut buf)).await {
                    if n == 0 {
                        return;
                    }
                }
                let head = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 200\r\n\r\n";
                let _ = stream
                    .write_all(format!("{head}{{\"jsonrpc\":\"2.0\",").as_bytes())
                    .await;
                if stall {
                    tokio::time::sleep(Duration::from_secs(10)).await;
                }
            });
        }
    })
}

#[tokio::test]
async fn an_owners_answer_that_breaks_off_is_an_error_not_a_cut_response() {
    let redis = RedisServer::start().await;
    let backend = TestBackend::start("c").await;
    let m = members(&["a", "b"]);
    let extra = "  body_read_timeout: 500ms\n";
    let a = VmcpProcess::start_on(port(&m["a"]), &cluster_yaml(&redis, &backend.url, &m, "a", extra)).await;
    let b = VmcpProcess::start_on(port(&m["b"]), &cluster_yaml(&redis, &backend.url, &m, "b", extra)).await;
    let mut client = Client::new(&a.url);
    assert_eq!(served_by(&client.initialize().await), "a");
    let via_b = client.via(&b.url);
    a.kill().await;
    for stall in [false, true] {
        let owner = cutting_owner(&m["a"], stall).await;
        let call = via_b.call_tool("c_echo", json!({"message": "x"})).await;
        assert_eq!(call.status, StatusCode::BAD_GATEWAY, "stall {stall}: {call:?}");
        assert_eq!(call.error_code(), OUTCOME_UNKNOWN, "stall {stall}: {call:?}");
        let list = via_b.request("tools/list", json!({})).await;
        assert_eq!(list.status, StatusCode::OK, "a read is retried here: {list:?}");
        assert_eq!(served_by(&list), "b");
        owner.abort();
        let _ = owner.await;
    }
    assert_eq!(
        backend.stats.calls.load(Ordering::SeqCst),
        0,
        "the call never ran anywhere"
    );
}

#[tokio::test]
async fn a_call_whose_owner_dies_after_receiving_it_runs_once_and_reports_an_unknown_outcome() {
    let redis = RedisServer::start().await;
    let backend = TestBackend::start("c").await;
    let m = members(&["a", "b"]);
    let a = VmcpProcess::start_on(port(&m["a"]), &cluster_yaml(&redis, &backend.url, &m, "a", "")).await;
    let b = VmcpProcess::start_on(port(&m["b"]), &cluster_yaml(&redis, &backend.url, &m, "b", "")).await;
    let mut client = Client::new(&a.url);
    assert_eq!(served_by(&client.initialize().await), "a");

    // A slow call with a side effect enters at b, which forwards it to its owner a.
    let via_b = client.via(&b.url);
    let call = tokio::spawn(async move {
        let reply = via_b
            .post_raw(
                json!({"jsonrpc": "2.0", "id": "side-effect-1", "method": "tools/call",
                       "params": {"name": "c_slow", "arguments": {"ms": 1500}}})
                .to_string(),
                &[("mcp-protocol-version", "2025-06-18")],
            )
            .await;
        (via_b, reply)
    });
    let stats = std::sync::Arc::clone(&backend.stats);
    eventually("the call reached the backend through a", || {
        let stats = std::sync::Arc::clone(&stats);
        async move { stats.calls.load(Ordering::SeqCst) == 1 }
    })
    .await;
    a.kill().await;
    let (via_b, reply) = tokio::time::timeout(Duration::from_secs(20), call)
        .await
        .expect("the call is answered")
        .expect("task");
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY, "{reply:?}");
    assert_eq!(reply.error_code(), OUTCOME_UNKNOWN, "{reply:?}");
    assert_eq!(reply.body["id"], "side-effect-1");
    assert!(reply.body["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .contains("outcome unknown"));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        backend.stats.calls.load(Ordering::SeqCst),
        1,
        "the call ran exactly once"
    );

    // The owner's address now accepts requests and dies on each one.
    let _dead_owner = swallowing_owner(&m["a"]).await;
    let list = via_b.request("tools/list", json!({})).await;
    assert_eq!(list.status, StatusCode::OK, "{list:?}");
    assert!(
        list.result()["tools"].as_array().is_some_and(|t| !t.is_empty()),
        "a read is retried here: {list:?}"
    );
    assert_eq!(served_by(&list), "b");
    let again = via_b.call_tool("c_echo", json!({"message": "x"})).await;
    assert_eq!(again.error_code(), OUTCOME_UNKNOWN, "{again:?}");
    assert_eq!(backend.stats.calls.load(Ordering::SeqCst), 1, "never run by b");
    let notification = via_b
        .post_raw(
            json!({"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 1}}).to_string(),
            &[],
        )
        .await;
    assert_eq!(notification.status, StatusCode::BAD_GATEWAY, "{notification:?}");
    assert_eq!(notification.error_code(), OUTCOME_UNKNOWN);
    assert_eq!(
        b.metric("vmcp_requests_forwarded_total{outcome=\"outcome_unknown\"}")
            .await,
        3.0
    );
    assert_eq!(
        b.metric("vmcp_requests_forwarded_total{outcome=\"retried\"}").await,
        1.0
    );
}

#[tokio::test]
async fn an_owner_that_refuses_connections_is_served_around() {
    let redis = RedisServer::start().await;
    let backend = TestBackend::start("c").await;
    let m = members(&["a", "b"]);
    let a = VmcpProcess::start_on(port(&m["a"]), &cluster_yaml(&redis, &backend.url, &m, "a", "")).await;
    let b = VmcpProcess::start_on(port(&m["b"]), &cluster_yaml(&redis, &backend.url, &m, "b", "")).await;
    let mut client = Client::new(&a.url);
    client.initialize().await;
    a.kill().await;
    // Nothing listens on a's port: the request provably never reached it.
    let reply = client.via(&b.url).call_tool("c_echo", json!({"message": "hi"})).await;
    assert_eq!((reply.text(), served_by(&reply)), ("c:hi".to_owned(), "b".to_owned()));
    assert_eq!(backend.stats.calls.load(Ordering::SeqCst), 1);
    assert_eq!(b.metric("vmcp_requests_forwarded_total{outcome=\"failed\"}").await, 1.0);
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

async fn get_text(url: &str) -> (StatusCode, String) {
    let resp = support::http().get(url).send().await.expect("GET");
    let status = resp.status();
    (status, resp.text().await.unwrap_or_default())
}

#[tokio::test]
async fn a_redis_outage_keeps_the_replica_ready_and_its_sessions_serving() {
    let mut redis = RedisServer::start().await;
    let backend = TestBackend::start("c").await;
    let yaml = format!(
        "backends:\n  - name: c\n    url: {}\nstore:\n  kind: redis\n  redis: {{ url: \"{}\", key_prefix: \"r:\" }}\n",
        backend.url,
        redis.url()
    );
    let replica = Replica::start(&yaml).await;
    let other = Replica::start(&yaml).await;
    let readyz = format!("{}/readyz", replica.base);
    let mut client = replica.client();
    client.initialize().await;
    // A session this replica does not hold: serving it needs the store.
    let mut foreign = other.client();
    foreign.initialize().await;
    let foreign = foreign.via(&replica.url);
    eventually("the store is seen up", || async {
        replica.metric("vmcp_store_up") == 1.0
    })
    .await;
    assert_eq!(get_text(&readyz).await.0, StatusCode::OK);

    redis.stop().await;
    eventually("the store is seen down", || async {
        replica.metric("vmcp_store_up") == 0.0
    })
    .await;
    let (status, text) = get_text(&readyz).await;
    assert_eq!(status, StatusCode::OK, "readiness is about this replica: {text}");
    assert!(text.contains("store: down"), "{text}");

    let call = tokio::time::timeout(
        Duration::from_secs(10),
        client.call_tool("c_echo", json!({"message": "x"})),
    )
    .await
    .expect("a session held here answers without Redis");
    assert_eq!(call.text(), "c:x");

    let rebuild = tokio::time::timeout(Duration::from_secs(15), foreign.call_tool("c_echo", json!({})))
        .await
        .expect("a foreign session answers without Redis");
    assert_eq!(rebuild.status, StatusCode::SERVICE_UNAVAILABLE, "{rebuild:?}");
    assert!(rebuild.headers.contains_key("retry-after"), "{rebuild:?}");

    let fresh = replica.client();
    let init = tokio::time::timeout(
        Duration::from_secs(15),
        fresh.post_raw(
            json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
                "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}})
            .to_string(),
            &[],
        ),
    )
    .await
    .expect("initialize answers without Redis");
    assert_eq!(init.status, StatusCode::SERVICE_UNAVAILABLE, "{init:?}");
    assert!(init.headers.contains_key("retry-after"), "{init:?}");

    redis.start_again().await;
    for _ in 0..100 {
        if replica.metric("vmcp_store_up") == 1.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(replica.metric("vmcp_store_up"), 1.0, "the store is seen up again");
    let (status, text) = get_text(&readyz).await;
    assert_eq!((status, text.as_str()), (StatusCode::OK, "ready\n"));
    let mut again = replica.client();
    eventually_initialize(&mut again).await;
    assert_eq!(client.call_tool("c_echo", json!({"message": "y"})).await.text(), "c:y");
}

/// `initialize` until it works (the Redis client reconnects on its own schedule).
async fn eventually_initialize(client: &mut Client) {
    for _ in 0..100 {
        let reply = client
            .post_raw(
                json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
                    "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}})
                .to_string(),
                &[],
            )
            .await;
        if reply.status == StatusCode::OK {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("initialize did not recover after Redis came back");
}
