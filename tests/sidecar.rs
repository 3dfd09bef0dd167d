//! Sidecar mode: N pods, each a vmcp replica next to its own stateful MCP
//! server (`backends[].local`), static membership, one Redis. Sessions are
//! pinned to the pod that created them: entering anywhere keeps the
//! server's per-session state, adding a pod moves no session, a pod's death
//! moves only its sessions (re-initialized there, and the client is told),
//! and a drained pod fails no call. A 2026-07-28 caller's pooled session
//! stays on the pod that created it the same way.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::json;
use support::process::VmcpProcess;
use support::redis::RedisServer;
use support::{deps, Client, TestBackend};

const HOP_KEY: &str = "sidecar-test-hop-key-0123";

struct Pod {
    id: String,
    vmcp: VmcpProcess,
    _server: TestBackend,
}

fn pod_yaml(redis: &RedisServer, me: &str, server: &str, members: &BTreeMap<String, String>) -> String {
    let list: Vec<String> = members.iter().map(|(id, addr)| format!("{id}: \"{addr}\"")).collect();
    format!(
        "replica_id: {me}
backends:
  - name: server
    url: {server}
    local: true
store:
  kind: redis
  touch_interval: 200ms
  redis: {{ url: \"{}\", key_prefix: \"sc:\" }}
membership:
  kind: static
  members: {{ {} }}
affinity:
  hop_key: {HOP_KEY}
  release_grace: 300ms
http:
  drain_delay: 1s
  shutdown_timeout: 5s
",
        redis.url(),
        list.join(", ")
    )
}

async fn start_pod(redis: &RedisServer, id: &str, members: &BTreeMap<String, String>) -> Pod {
    let server = TestBackend::start("server").await;
    let port: u16 = members[id]
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("port");
    let vmcp = VmcpProcess::start_on(port, &pod_yaml(redis, id, &server.url, members)).await;
    Pod {
        id: id.to_owned(),
        vmcp,
        _server: server,
    }
}

fn with_ports(ids: &[&str]) -> BTreeMap<String, String> {
    ids.iter()
        .map(|id| (id.to_string(), format!("127.0.0.1:{}", deps::free_port())))
        .collect()
}

fn served_by(reply: &support::client::Reply) -> String {
    reply
        .headers
        .get("x-vmcp-replica")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("?")
        .to_owned()
}

/// Calls `server_counter` entering at `entry`; returns (count, replica that served it).
async fn count(client: &Client, entry: &str) -> (u64, String) {
    let reply = client.via(entry).call_tool("server_counter", json!({})).await;
    (reply.text().parse().expect("a count"), served_by(&reply))
}

/// Pods a, b and c, each knowing the three.
async fn three_pods(redis: &RedisServer) -> (BTreeMap<String, String>, Vec<Pod>) {
    let members = with_ports(&["a", "b", "c"]);
    let mut pods = Vec::new();
    for id in ["a", "b", "c"] {
        pods.push(start_pod(redis, id, &members).await);
    }
    (members, pods)
}

/// Pod d joins: started, and every other pod told (SIGHUP with the new list).
async fn scale_out(redis: &RedisServer, members: &mut BTreeMap<String, String>, pods: &mut Vec<Pod>) {
    members.insert("d".into(), format!("127.0.0.1:{}", deps::free_port()));
    pods.push(start_pod(redis, "d", members).await);
    for pod in &pods[..pods.len() - 1] {
        pod.vmcp
            .reconfigure(&pod_yaml(redis, &pod.id, &pod._server.url, members));
    }
    tokio::time::sleep(Duration::from_millis(800)).await; // past release_grace
}

fn entries(pods: &[Pod]) -> Vec<String> {
    pods.iter().map(|p| p.vmcp.url.clone()).collect()
}

#[tokio::test]
async fn sessions_stay_on_their_pod_through_scale_out_and_move_only_when_it_dies() {
    let redis = RedisServer::start().await;
    let (mut members, mut pods) = three_pods(&redis).await;

    // Nine sessions, created round-robin; every call, entering anywhere, sees the same server state.
    let mut sessions = Vec::new();
    for s in 0..9 {
        let mut client = Client::new(&pods[s % 3].vmcp.url);
        let owner = served_by(&client.initialize().await);
        assert_eq!(owner, pods[s % 3].id, "a session belongs to the pod that created it");
        for (n, entry) in entries(&pods).iter().enumerate() {
            assert_eq!(count(&client, entry).await, (n as u64 + 1, owner.clone()));
        }
        sessions.push((client, owner, 3u64));
    }

    // Scale out: pod d joins. No session moves.
    scale_out(&redis, &mut members, &mut pods).await;
    for (client, owner, seen) in &mut sessions {
        for entry in entries(&pods) {
            *seen += 1;
            assert_eq!(
                count(client, &entry).await,
                (*seen, owner.clone()),
                "state kept after scale-out"
            );
        }
    }
    let mut fresh = Client::new(&pods[3].vmcp.url);
    assert_eq!(
        served_by(&fresh.initialize().await),
        "d",
        "new sessions use the new pod"
    );

    // Pod b dies (SIGKILL, its server with it): only b's sessions move, with their server state reset.
    let dead = pods.remove(1);
    dead.vmcp.kill().await;
    drop(dead._server);
    for (client, owner, seen) in &mut sessions {
        if owner == "b" {
            let (n, now) = count(client, &pods[0].vmcp.url).await;
            assert_eq!(n, 1, "re-initialized on its new pod");
            assert_ne!(now, "b");
            for entry in entries(&pods) {
                assert_eq!(
                    count(client, &entry).await.1,
                    now,
                    "every replica agrees on the new pod"
                );
            }
            *owner = now;
            *seen = 1 + pods.len() as u64;
            // The client is told: a log line naming the backend, and the lists as changed.
            let mut stream = client.via(&pods[0].vmcp.url).get_events(Some("0")).await;
            let mut told = (false, false);
            while let Some(event) = stream.next_message().await {
                match event.data["method"].as_str() {
                    Some("notifications/message") => told.0 = event.data["params"]["logger"] == "vmcp",
                    Some("notifications/tools/list_changed") => told.1 = true,
                    _ => {}
                }
                if told == (true, true) {
                    break;
                }
            }
            assert_eq!(told, (true, true), "reset announced");
        } else {
            for entry in entries(&pods) {
                *seen += 1;
                assert_eq!(
                    count(client, &entry).await,
                    (*seen, owner.clone()),
                    "other sessions untouched"
                );
            }
        }
    }
    let mut reinitialized = 0.0;
    for pod in &pods {
        reinitialized += pod
            .vmcp
            .metric("vmcp_backend_rebuilds_total{backend=\"server\",outcome=\"reinitialized\"}")
            .await;
        assert_eq!(
            pod.vmcp
                .metric("vmcp_backend_rebuilds_total{backend=\"server\",outcome=\"resumed\"}")
                .await,
            0.0,
            "a pod-local server's sessions are never resumed elsewhere"
        );
    }
    assert_eq!(reinitialized, 3.0, "b's three sessions, once each");
}

#[tokio::test]
async fn a_draining_pod_finishes_its_calls_and_none_fails() {
    let redis = RedisServer::start().await;
    let members = with_ports(&["a", "b"]);
    let a = start_pod(&redis, "a", &members).await;
    let b = start_pod(&redis, "b", &members).await;
    let mut clients = Vec::new();
    for _ in 0..4 {
        let mut client = Client::new(&a.vmcp.url);
        assert_eq!(served_by(&client.initialize().await), "a");
        clients.push(client.via(&b.vmcp.url)); // everything enters at b from now on
    }
    // Calls in flight on a when it gets SIGTERM, and calls all through its drain and after.
    let running: Vec<_> = clients
        .iter()
        .map(|c| {
            let c = c.via(&c.url);
            tokio::spawn(async move { c.call_tool("server_slow", json!({"ms": 800})).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(200)).await;
    a.vmcp.signal_term();
    let mut failed = Vec::new();
    let started = std::time::Instant::now();
    while started.elapsed() < Duration::from_secs(3) {
        for client in &clients {
            let reply = client.call_tool("server_echo", json!({"message": "x"})).await;
            if reply.body.get("error").is_some() || !reply.status.is_success() {
                failed.push(reply.body.clone());
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for call in running {
        assert_eq!(
            call.await.unwrap().text(),
            "slept 800",
            "in-flight calls finish on the draining pod"
        );
    }
    assert!(failed.is_empty(), "no call failed during the drain: {failed:?}");
    a.vmcp.wait().await;
}

/// `server_counter` as a 2026-07-28 caller `token` (no session: its pooled
/// one), entering at `entry`; returns (count, replica that served it).
async fn count_stateless(token: &str, entry: &str) -> (u64, String) {
    let version = "2026-07-28";
    let body = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {
        "name": "server_counter", "arguments": {},
        "_meta": {"io.modelcontextprotocol/protocolVersion": version,
                  "io.modelcontextprotocol/clientCapabilities": {}}}});
    let response = support::http()
        .post(entry)
        .bearer_auth(token)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", version)
        .header("mcp-method", "tools/call")
        .header("mcp-name", "server_counter")
        .body(body.to_string())
        .send()
        .await
        .expect("sent");
    let by = response
        .headers()
        .get("x-vmcp-replica")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("?")
        .to_owned();
    let answer: serde_json::Value = response.json().await.expect("JSON");
    let text = answer["result"]["content"][0]["text"].as_str().unwrap_or_default();
    (text.parse().unwrap_or_else(|_| panic!("a count: {answer}")), by)
}

#[tokio::test]
async fn stateless_callers_keep_their_pods_server_state_through_scale_out() {
    let redis = RedisServer::start().await;
    let (mut members, mut pods) = three_pods(&redis).await;
    // Sixteen callers, each with its pooled session on some pod.
    let mut callers = Vec::new();
    for c in 0..16 {
        let token = format!("caller-{c}");
        let (n, home) = count_stateless(&token, &entries(&pods)[c % 3]).await;
        assert_eq!(n, 1);
        callers.push((token, home, 1u64));
    }
    // Scale out: pod d joins. No caller's pool moves: its server state stays.
    scale_out(&redis, &mut members, &mut pods).await;
    for (token, home, seen) in &mut callers {
        for entry in entries(&pods) {
            *seen += 1;
            assert_eq!(
                count_stateless(token, &entry).await,
                (*seen, home.clone()),
                "{token}: state kept after scale-out"
            );
        }
    }

    // The home of caller-0's pool dies: its callers go on elsewhere, all
    // entries agreeing where (a fresh server session there), the others untouched.
    let dead = callers[0].1.clone();
    let at = pods.iter().position(|p| p.id == dead).expect("its pod");
    let pod = pods.remove(at);
    pod.vmcp.kill().await;
    drop(pod._server);
    for (token, home, seen) in &mut callers {
        if *home == dead {
            let (n, now) = count_stateless(token, &entries(&pods)[0]).await;
            assert_eq!(n, 1, "{token}: a fresh server session on its new pod");
            assert_ne!(now, dead);
            (*home, *seen) = (now, 1);
        }
        for entry in entries(&pods) {
            *seen += 1;
            assert_eq!(count_stateless(token, &entry).await, (*seen, home.clone()), "{token}");
        }
    }
}
