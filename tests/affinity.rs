//! N replicas behind "any replica" entry points behave like one server: every
//! call runs on its session's owner, a killed owner is replaced without the
//! client noticing, a new replica takes over only its share, a SIGTERMed
//! replica drains without failing calls, and hops cannot be forged.

mod support;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use http::StatusCode;
use serde_json::json;
use support::process::VmcpProcess;
use support::redis::RedisServer;
use support::{deps, Client, Replica, TestBackend};
use vmcp::affinity::ring::{Member, Ring};
use vmcp::affinity::{HopTarget, Hops};

const HOP_KEY: &str = "test-hop-key-0123456789";

fn cluster_yaml(redis: &RedisServer, backend: &str, members: &BTreeMap<String, String>, me: &str) -> String {
    let list: Vec<String> = members.iter().map(|(id, addr)| format!("{id}: \"{addr}\"")).collect();
    format!(
        "replica_id: {me}
backends:
  - name: c
    url: {backend}
store:
  kind: redis
  touch_interval: 200ms
  redis: {{ url: \"{}\", key_prefix: \"t:\" }}
membership:
  kind: static
  members: {{ {} }}
affinity:
  hop_key: {HOP_KEY}
  release_grace: 300ms
http:
  drain_delay: 500ms
  shutdown_timeout: 5s
",
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

fn served_by(reply: &support::client::Reply) -> String {
    reply
        .headers
        .get("x-vmcp-replica")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("?")
        .to_owned()
}

async fn start_processes(
    redis: &RedisServer,
    backend: &TestBackend,
    m: &BTreeMap<String, String>,
) -> Vec<(String, VmcpProcess)> {
    let mut replicas = Vec::new();
    for (id, addr) in m {
        let process = VmcpProcess::start_on(port(addr), &cluster_yaml(redis, &backend.url, m, id)).await;
        replicas.push((id.clone(), process));
    }
    replicas
}

#[tokio::test]
async fn every_call_runs_on_the_sessions_owner_whatever_the_entry_replica() {
    let redis = RedisServer::start().await;
    let backend = TestBackend::start("c").await;
    let m = members(&["a", "b", "c"]);
    let replicas = start_processes(&redis, &backend, &m).await;
    for s in 0..6 {
        let (entry_id, entry) = &replicas[s % 3];
        let mut client = Client::new(&entry.url);
        let init = client.initialize().await;
        let owner = served_by(&init);
        assert_eq!(&owner, entry_id, "the minting replica owns the new session");
        for n in 1..=6 {
            let via = client.via(&replicas[(s + n) % 3].1.url);
            let reply = via.call_tool("c_counter", json!({})).await;
            assert_eq!(reply.text(), n.to_string());
            assert_eq!(served_by(&reply), owner, "call {n} of session {s} ran on its owner");
        }
    }
    let mut forwarded = 0.0;
    for (_, r) in &replicas {
        forwarded += r.metric("vmcp_requests_forwarded_total{outcome=\"ok\"}").await;
        assert_eq!(
            r.metric("vmcp_session_rebuilds_total{outcome=\"ok\"}").await,
            0.0,
            "owners never rebuild"
        );
    }
    assert_eq!(
        forwarded, 24.0,
        "4 of every 6 calls entered at a non-owner and took one hop"
    );
}

#[tokio::test]
async fn a_killed_owner_is_replaced_and_the_backend_counter_goes_on() {
    let redis = RedisServer::start().await;
    let backend = TestBackend::start("c").await;
    let m = members(&["a", "b", "c"]);
    let mut replicas = start_processes(&redis, &backend, &m).await;
    let mut client = Client::new(&replicas[0].1.url);
    client.initialize().await;
    assert_eq!(
        client
            .via(&replicas[1].1.url)
            .call_tool("c_counter", json!({}))
            .await
            .text(),
        "1"
    );
    assert_eq!(client.call_tool("c_counter", json!({})).await.text(), "2");
    let (_, owner) = replicas.remove(0);
    owner.kill().await;
    let on_b = client.via(&replicas[0].1.url).call_tool("c_counter", json!({})).await;
    assert_eq!(on_b.text(), "3");
    let on_c = client.via(&replicas[1].1.url).call_tool("c_counter", json!({})).await;
    assert_eq!(on_c.text(), "4");
    // Whichever replica the client enters, the session lands on one new owner
    // (its rendezvous owner among the replicas that answer), not on each entry.
    assert_eq!(served_by(&on_b), served_by(&on_c));
    assert_eq!(
        backend.stats.sessions_opened.load(Ordering::SeqCst),
        1,
        "the backend session was resumed, never re-created"
    );
}

#[tokio::test]
async fn a_fourth_replica_takes_over_only_the_sessions_it_now_owns() {
    let redis = RedisServer::start().await;
    let backend = TestBackend::start("c").await;
    let four = members(&["a", "b", "c", "d"]);
    let three: BTreeMap<String, String> = four
        .iter()
        .filter(|(id, _)| id.as_str() != "d")
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let mut replicas = BTreeMap::new();
    for (id, addr) in &three {
        replicas.insert(
            id.clone(),
            Replica::start_on(port(addr), &cluster_yaml(&redis, &backend.url, &three, id)).await,
        );
    }
    let entries: Vec<String> = replicas.values().map(|r| r.url.clone()).collect();
    let mut sessions = Vec::new();
    for s in 0..40 {
        let mut client = Client::new(&entries[s % 3]);
        client.initialize().await;
        assert_eq!(client.call_tool("c_counter", json!({})).await.text(), "1");
        sessions.push(client);
    }

    let d = Replica::start_on(port(&four["d"]), &cluster_yaml(&redis, &backend.url, &four, "d")).await;
    for replica in replicas.values() {
        replica.app.membership.set_static(&four); // what SIGHUP does after the config file changed
    }
    replicas.insert("d".into(), d);
    let ring = Ring::new(four.iter().map(|(id, addr)| Member::new(id, addr)).collect());
    let all: Vec<String> = replicas.values().map(|r| r.url.clone()).collect();
    let mut moved = 0;
    for (s, client) in sessions.iter().enumerate() {
        let owner = ring.owner(client.session.as_deref().unwrap()).unwrap().id.to_string();
        moved += usize::from(owner == "d");
        let reply = client.via(&all[s % 4]).call_tool("c_counter", json!({})).await;
        assert_eq!(reply.text(), "2", "state kept across the move");
        assert_eq!(served_by(&reply), owner);
    }
    assert!(moved > 0 && moved < 20, "about a quarter moved: {moved}");
    assert_eq!(
        replicas["d"].metric("vmcp_session_rebuilds_total{outcome=\"ok\"}"),
        moved as f64
    );
    for id in ["a", "b", "c"] {
        assert_eq!(
            replicas[id].metric("vmcp_session_rebuilds_total{outcome=\"ok\"}"),
            0.0,
            "{id} rebuilt nothing"
        );
    }
    tokio::time::sleep(Duration::from_millis(600)).await; // release_grace
    let released: f64 = ["a", "b", "c"]
        .iter()
        .map(|id| replicas[*id].metric("vmcp_sessions_closed_total{reason=\"released\"}"))
        .sum();
    assert_eq!(released, moved as f64, "old owners let go of moved runtimes");
    assert_eq!(
        backend.stats.sessions_dropped.load(Ordering::SeqCst),
        0,
        "without closing the backend sessions"
    );
    assert_eq!(backend.stats.sessions_opened.load(Ordering::SeqCst), 40);
}

#[tokio::test]
async fn sigterm_under_load_fails_no_call() {
    let redis = RedisServer::start().await;
    let backend = TestBackend::start("c").await;
    let m = members(&["a", "b", "c"]);
    let mut replicas = start_processes(&redis, &backend, &m).await;
    // The "Service": entry points clients are sent to; a draining pod leaves it.
    let lb: Arc<RwLock<Vec<String>>> = Arc::new(RwLock::new(replicas.iter().map(|(_, r)| r.url.clone()).collect()));
    let stop = Arc::new(AtomicBool::new(false));
    let (calls, failures) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let mut clients = Vec::new();
    for s in 0..20 {
        let mut client = Client::new(&replicas[s % 3].1.url);
        client.initialize().await;
        clients.push(client);
    }
    let mut tasks = Vec::new();
    for (s, client) in clients.into_iter().enumerate() {
        let (lb, stop, calls, failures) = (lb.clone(), stop.clone(), calls.clone(), failures.clone());
        tasks.push(tokio::spawn(async move {
            let mut n = s;
            while !stop.load(Ordering::Relaxed) {
                let entry = {
                    let lb = lb.read().unwrap();
                    lb[n % lb.len()].clone()
                };
                n += 1;
                let reply = client.via(&entry).call_tool("c_echo", json!({"message": "x"})).await;
                calls.fetch_add(1, Ordering::Relaxed);
                if reply.status != StatusCode::OK || reply.body.get("error").is_some() {
                    failures.fetch_add(1, Ordering::Relaxed);
                    eprintln!("failed call via {entry}: {reply:?}");
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(800)).await;
    let (_, b) = replicas.remove(1);
    lb.write().unwrap().retain(|u| *u != b.url);
    b.signal_term();
    let exited = tokio::spawn(b.wait());
    tokio::time::sleep(Duration::from_millis(2500)).await;
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await.unwrap();
    }
    let exited = exited.await.unwrap();
    assert!(exited.success(), "the drained replica exits cleanly");
    assert!(calls.load(Ordering::Relaxed) > 100, "load was running");
    assert_eq!(failures.load(Ordering::Relaxed), 0, "no call failed");
}

#[tokio::test]
async fn forged_and_replayed_hop_headers_are_refused() {
    let redis = RedisServer::start().await;
    let backend = TestBackend::start("c").await;
    let m = members(&["a", "b"]);
    let a = Replica::start_on(port(&m["a"]), &cluster_yaml(&redis, &backend.url, &m, "a")).await;
    let mut client = a.client();
    client.initialize().await;
    let session = client.session.clone().unwrap();
    let body = json!({"jsonrpc": "2.0", "id": 9, "method": "ping"}).to_string();

    let forged = client
        .post_raw(body.clone(), &[("x-vmcp-hop", "v1;b;0;000000000000000000000000;00")])
        .await;
    assert_eq!(forged.status, StatusCode::FORBIDDEN);

    let host = m["a"].clone();
    let target = HopTarget {
        to: "a",
        method: "POST",
        path: "/mcp",
        session: &session,
        host: Some(host.as_bytes()),
        origin: None,
        body: body.as_bytes(),
    };
    let now = vmcp::store::unix_ms();
    let wrong_key = Hops::new(Some("not-the-shared-key!!"), Duration::from_secs(30))
        .sign("b", &target, now)
        .unwrap();
    assert_eq!(
        client
            .post_raw(body.clone(), &[("x-vmcp-hop", &wrong_key)])
            .await
            .status,
        StatusCode::FORBIDDEN
    );

    let genuine = Hops::new(Some(HOP_KEY), Duration::from_secs(30))
        .sign("b", &target, now)
        .unwrap();
    assert_eq!(
        client.post_raw(body.clone(), &[("x-vmcp-hop", &genuine)]).await.status,
        StatusCode::OK
    );
    assert_eq!(
        client.post_raw(body.clone(), &[("x-vmcp-hop", &genuine)]).await.status,
        StatusCode::FORBIDDEN,
        "replay"
    );

    let stale = Hops::new(Some(HOP_KEY), Duration::from_secs(30))
        .sign("b", &target, now - 120_000)
        .unwrap();
    assert_eq!(
        client.post_raw(body, &[("x-vmcp-hop", &stale)]).await.status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(a.metric("vmcp_hops_refused_total"), 4.0);
}
