//! Two replicas on real Redis topologies (issue 16): a 3-master cluster with
//! a replica each, and a master + replica watched by three sentinels.
//! Sessions are shared, a DELETE on one replica reaches the other within a
//! second, rate limits hold across both, and after a failover (`CLUSTER
//! FAILOVER`, `SENTINEL FAILOVER`, a killed master) the sessions created
//! before still work and new ones work within seconds of the promotion.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::StatusCode;
use prometheus::Registry;
use serde_json::json;
use support::redis_topology::{RedisCluster, SentinelGroup, MASTER_NAME};
use support::{Client, Replica, TestBackend};
use vmcp::config::Config;
use vmcp::limits::{CallKind, LimitBackend, Limiter, Target};

fn cluster_store(cluster: &RedisCluster) -> String {
    let nodes: Vec<String> = cluster.addrs().iter().map(|a| format!("\"{a}\"")).collect();
    format!(
        "store:\n  kind: redis\n  redis: {{ cluster: [{}], key_prefix: \"t:\" }}\n",
        nodes.join(", ")
    )
}

fn sentinel_store(group: &SentinelGroup) -> String {
    let nodes: Vec<String> = group.addrs().iter().map(|a| format!("\"{a}\"")).collect();
    format!(
        "store:\n  kind: redis\n  redis:\n    key_prefix: \"t:\"\n    sentinel: {{ master_name: {MASTER_NAME}, nodes: [{}] }}\n",
        nodes.join(", ")
    )
}

async fn counter(client: &Client) -> String {
    let reply = client.call_tool("c_counter", json!({})).await;
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    reply.text()
}

/// A new session on `url`, retried until it works; how long that took.
async fn new_session_within(url: &str, limit: Duration) -> (Client, Duration) {
    let started = Instant::now();
    loop {
        let mut client = Client::new(url);
        let reply = client
            .post_raw(
                json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
                    "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}
                }})
                .to_string(),
                &[],
            )
            .await;
        if reply.status == StatusCode::OK {
            client.session = reply
                .headers
                .get("mcp-session-id")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            assert_eq!(client.notify("notifications/initialized").await, StatusCode::ACCEPTED);
            return (client, started.elapsed());
        }
        assert!(started.elapsed() < limit, "no new session within {limit:?}: {reply:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Light load: one call every 50 ms on `client` until stopped; counts failures.
fn light_load(client: Client) -> (Arc<AtomicUsize>, Arc<AtomicUsize>, tokio::task::JoinHandle<()>) {
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (o, f) = (Arc::clone(&ok), Arc::clone(&failed));
    let task = tokio::spawn(async move {
        loop {
            let status = client.call_tool("c_echo", json!({})).await.status;
            if status == StatusCode::OK { &o } else { &f }.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    (ok, failed, task)
}

/// Session sharing and DELETE across two replicas on `store`.
async fn share_and_delete(a: &Replica, b: &Replica) {
    let mut on_a = a.client();
    on_a.initialize().await;
    assert_eq!(counter(&on_a).await, "1");
    let on_b = on_a.via(&b.url);
    assert_eq!(counter(&on_b).await, "2", "B resumed A's session from the store");
    assert_eq!(b.metric("vmcp_session_rebuilds_total{outcome=\"ok\"}"), 1.0);

    // A DELETE on B reaches A (which holds the session) within a second.
    let mut held = a.client();
    held.initialize().await;
    assert_eq!(counter(&held).await, "1");
    delete_reaches(&held, b, Duration::from_secs(1)).await;
}

/// DELETE through `b` of a session `held` on another replica: that one
/// answers 404 within `limit`.
async fn delete_reaches(held: &Client, b: &Replica, limit: Duration) {
    assert_eq!(held.via(&b.url).delete().await, StatusCode::NO_CONTENT);
    let deleted = Instant::now();
    loop {
        if held.call_tool("c_echo", json!({})).await.status == StatusCode::NOT_FOUND {
            eprintln!("deletion seen {:?} after the DELETE", deleted.elapsed());
            return;
        }
        assert!(deleted.elapsed() < limit, "still serving a deleted session");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Two limiters ("replicas") on `store`'s Redis: exactly N of N+k calls pass.
async fn limits_hold(yaml_store: &str) {
    let yaml = format!(
        "{yaml_store}limits:\n  rules:\n    - name: per-caller\n      per: principal\n      rate: 10\n      per_interval: 1m\n"
    );
    let config = Config::parse(&yaml, std::path::Path::new("t.yaml"), &std::collections::HashMap::new())
        .expect("valid limits config");
    let limiter = || {
        Limiter::new(
            &config.limits,
            LimitBackend::from_store(&config.store),
            &Registry::new(),
        )
        .expect("limiter")
    };
    let (a, b) = (limiter(), limiter());
    assert!(matches!(
        LimitBackend::from_store(&config.store),
        LimitBackend::Redis(_)
    ));
    let target = Target {
        backend: "c",
        tool: Some("c_echo"),
        kind: CallKind::Tool,
    };
    let mut ok = 0;
    for i in 0..16 {
        if [&a, &b][i % 2].admit("s:someone", &target).await.is_ok() {
            ok += 1;
        }
    }
    assert_eq!(ok, 10, "exactly N of N+k calls over both limiters");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_shares_sessions_limits_and_rides_out_a_failover() {
    let cluster = RedisCluster::start(3, 1).await;
    let backend = TestBackend::start("c").await;
    let yaml = support::config_yaml(&[("c", &backend.url)], &cluster_store(&cluster));
    let (a, b) = (Replica::start(&yaml).await, Replica::start(&yaml).await);
    share_and_delete(&a, &b).await;
    limits_hold(&cluster_store(&cluster)).await;

    // Sessions spread over the slots: each one lives on the master of its tag.
    let mut before = Vec::new();
    for _ in 0..6 {
        let mut c = a.client();
        c.initialize().await;
        assert_eq!(counter(&c).await, "1");
        before.push(c);
    }
    let first = before[0].session.clone().expect("session id");
    let master = cluster.master_of(&format!("t:session:{{{first}}}")).await;
    let (ok, failed, load) = light_load(before[1].via(&a.url));

    let promoted = cluster.failover(master).await;
    assert_ne!(promoted, master);
    let (fresh, took) = new_session_within(&b.url, Duration::from_secs(5)).await;
    assert_eq!(counter(&fresh).await, "1");
    eprintln!("cluster: a new session {took:?} after the promotion");
    // Sessions created before: held by A, and rebuilt by B from the store.
    for (i, c) in before.iter().enumerate() {
        assert_eq!(counter(c).await, "2", "session {i} on A");
        assert_eq!(counter(&c.via(&b.url)).await, "3", "session {i} on B");
    }
    load.abort();
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    eprintln!("cluster failover under load: {ok} calls ok, {failed} failed");
    assert!(
        ok > 0 && failed == 0,
        "a held session kept serving: {ok} ok, {failed} failed"
    );
    limits_hold(&cluster_store(&cluster).replace("t:", "t2:")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_rides_out_a_killed_master() {
    let mut cluster = RedisCluster::start(3, 1).await;
    let backend = TestBackend::start("c").await;
    let yaml = support::config_yaml(&[("c", &backend.url)], &cluster_store(&cluster));
    let (a, b) = (Replica::start(&yaml).await, Replica::start(&yaml).await);
    let mut before = Vec::new();
    for _ in 0..6 {
        let mut c = a.client();
        c.initialize().await;
        assert_eq!(counter(&c).await, "1");
        before.push(c);
    }
    // The first node given: a master, and the one the deletion feeds listen on.
    let victim = cluster.nodes[0].port;
    assert_eq!(support::redis_topology::role(victim).await.as_deref(), Some("master"));
    let heir = cluster.replica_of(victim).await;
    support::redis_topology::replicated(victim).await;
    let (ok, failed, load) = light_load(before[0].via(&a.url));

    cluster.node(victim).kill().await;
    let killed = Instant::now();
    RedisCluster::promoted(heir).await;
    eprintln!("cluster: replica {heir} promoted {:?} after the kill", killed.elapsed());
    let (fresh, took) = new_session_within(&b.url, Duration::from_secs(5)).await;
    assert_eq!(counter(&fresh).await, "1");
    eprintln!("cluster: a new session {took:?} after the promotion");
    for (i, c) in before.iter().enumerate() {
        assert_eq!(counter(c).await, "2", "session {i} on A");
        assert_eq!(counter(&c.via(&b.url)).await, "3", "session {i} on B");
    }
    load.abort();
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    eprintln!("cluster master killed under load: {ok} calls ok, {failed} failed");
    assert!(
        ok > 0 && failed == 0,
        "a held session kept serving: {ok} ok, {failed} failed"
    );
    share_and_delete_again(&a, &b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_with_a_password() {
    let cluster = RedisCluster::start_with(3, 0, Some("cluster-secret")).await;
    let backend = TestBackend::start("c").await;
    let store = cluster_store(&cluster).replace("key_prefix", "password: \"${PW}\", key_prefix");
    let yaml = support::config_yaml(&[("c", &backend.url)], &store);
    let env = std::collections::HashMap::from([("PW".to_owned(), "cluster-secret".to_owned())]);
    let (a, b) = (
        Replica::start_env(&yaml, env.clone()).await,
        Replica::start_env(&yaml, env).await,
    );
    share_and_delete(&a, &b).await;
    // Sessions on every master (the discovered nodes get the password too).
    for _ in 0..6 {
        let mut c = a.client();
        c.initialize().await;
        assert_eq!(counter(&c.via(&b.url)).await, "1");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_shares_sessions_and_follows_a_failover() {
    let group = SentinelGroup::start().await;
    let backend = TestBackend::start("c").await;
    let yaml = support::config_yaml(&[("c", &backend.url)], &sentinel_store(&group));
    let (a, b) = (Replica::start(&yaml).await, Replica::start(&yaml).await);
    share_and_delete(&a, &b).await;
    limits_hold(&sentinel_store(&group)).await;

    let mut before = a.client();
    before.initialize().await;
    assert_eq!(counter(&before).await, "1");
    // Let the replica copy the session before the switch (a failover loses
    // what the old master acknowledged but had not replicated).
    support::redis_topology::replicated(group.current_master().await).await;
    let (ok, failed, load) = light_load(before.via(&a.url));

    let old = group.current_master().await;
    let new = group.failover().await;
    assert_ne!(old, new);
    let (fresh, took) = new_session_within(&b.url, Duration::from_secs(5)).await;
    assert_eq!(counter(&fresh).await, "1");
    eprintln!("sentinel: a new session {took:?} after the promotion");
    assert_eq!(counter(&before).await, "2", "held by A");
    assert_eq!(
        counter(&before.via(&b.url)).await,
        "3",
        "rebuilt by B from the new master"
    );
    load.abort();
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    eprintln!("sentinel failover under load: {ok} calls ok, {failed} failed");
    assert!(
        ok > 0 && failed == 0,
        "a held session kept serving: {ok} ok, {failed} failed"
    );

    // The deletion feed follows the new master too.
    share_and_delete_again(&a, &b).await;
    limits_hold(&sentinel_store(&group).replace("t:", "t2:")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_finds_the_replica_promoted_after_the_master_dies() {
    let mut group = SentinelGroup::start().await;
    let backend = TestBackend::start("c").await;
    let yaml = support::config_yaml(&[("c", &backend.url)], &sentinel_store(&group));
    let (a, b) = (Replica::start(&yaml).await, Replica::start(&yaml).await);
    let mut before = a.client();
    before.initialize().await;
    assert_eq!(counter(&before).await, "1");
    support::redis_topology::replicated(group.master.port).await;
    let (ok, failed, load) = light_load(before.via(&a.url));

    let old = group.master.port;
    group.master.kill().await;
    let killed = Instant::now();
    let new = group.promoted(old).await;
    eprintln!("sentinel: replica {new} promoted {:?} after the kill", killed.elapsed());
    let (fresh, took) = new_session_within(&b.url, Duration::from_secs(5)).await;
    assert_eq!(counter(&fresh).await, "1");
    eprintln!("sentinel: a new session {took:?} after the promotion");
    assert_eq!(counter(&before).await, "2");
    assert_eq!(counter(&before.via(&b.url)).await, "3");
    load.abort();
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    eprintln!("master killed under load: {ok} calls ok, {failed} failed");
    assert!(
        ok > 0 && failed == 0,
        "a held session kept serving: {ok} ok, {failed} failed"
    );
    share_and_delete_again(&a, &b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_with_passwords_on_the_data_nodes_and_the_sentinels() {
    let group = SentinelGroup::start_with(Some(("data-secret", "sentinel-secret"))).await;
    let backend = TestBackend::start("c").await;
    let nodes: Vec<String> = group.addrs().iter().map(|a| format!("\"{a}\"")).collect();
    let store = format!(
        "store:\n  kind: redis\n  redis:\n    key_prefix: \"t:\"\n    password: \"${{DATA_PW}}\"\n    sentinel: {{ master_name: {MASTER_NAME}, nodes: [{}], password: \"${{SENTINEL_PW}}\" }}\n",
        nodes.join(", ")
    );
    let yaml = support::config_yaml(&[("c", &backend.url)], &store);
    let env = std::collections::HashMap::from([
        ("DATA_PW".to_owned(), "data-secret".to_owned()),
        ("SENTINEL_PW".to_owned(), "sentinel-secret".to_owned()),
    ]);
    let (a, b) = (
        Replica::start_env(&yaml, env.clone()).await,
        Replica::start_env(&yaml, env).await,
    );
    share_and_delete(&a, &b).await;
    let mut before = a.client();
    before.initialize().await;
    assert_eq!(counter(&before).await, "1");
    support::redis_topology::replicated(group.current_master().await).await;
    group.failover().await;
    let (fresh, _) = new_session_within(&b.url, Duration::from_secs(5)).await;
    assert_eq!(counter(&fresh).await, "1");
    assert_eq!(
        counter(&before.via(&b.url)).await,
        "2",
        "rebuilt by B from the new master"
    );
    share_and_delete_again(&a, &b).await;
}

/// DELETE on B reaches A after the switch: the subscriber moved too (it
/// may still be reconnecting right after the switch, hence a few seconds).
async fn share_and_delete_again(a: &Replica, b: &Replica) {
    let (held, _) = new_session_within(&a.url, Duration::from_secs(5)).await;
    assert_eq!(counter(&held).await, "1");
    delete_reaches(&held, b, Duration::from_secs(3)).await;
}

/// Every store operation on a cluster: no cross-slot command anywhere
/// (scripts, the index pipelines, the listing's MGET, the subject index).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_store_operation_works_on_a_cluster() {
    use vmcp::store::{RedisStore, SessionMetadata, SessionStore, StoredEvent, SubjectRef, Touch};
    let cluster = RedisCluster::start(3, 0).await;
    let yaml = cluster_store(&cluster);
    let config = Config::parse(&yaml, std::path::Path::new("t.yaml"), &std::collections::HashMap::new()).unwrap();
    let redis = config.store.redis.as_ref().unwrap();
    let store = RedisStore::new(redis, Duration::from_secs(60), vmcp::telemetry::Metrics::standalone()).unwrap();
    let subject = SubjectRef {
        issuer: "https://idp".into(),
        subject: "alice".into(),
    };
    let meta = |id: &str| SessionMetadata {
        id: id.into(),
        created_at_ms: 1,
        last_seen_ms: 1,
        identity: None,
        subject: Some(subject.clone()),
        replica: Some("a".into()),
        protocol_version: "2025-06-18".into(),
        client_init: Arc::new(json!({})),
        backends: Vec::new(),
    };
    let ids: Vec<String> = (0..20).map(|i| format!("session-{i}")).collect();
    let mut deletions = store.deletions();
    tokio::time::sleep(Duration::from_millis(300)).await; // subscribed
    for id in &ids {
        store.put(&meta(id)).await.unwrap();
    }
    assert!(store.update(&meta(&ids[0])).await.unwrap());
    assert_eq!(store.touch(&ids[0], Some(&subject)).await.unwrap(), Touch::Alive);
    assert_eq!(store.get(&ids[1]).await.unwrap().unwrap().id, ids[1]);

    let (mut listed, mut cursor) = (Vec::new(), None);
    loop {
        let page = store.list(cursor.as_deref(), 7).await.unwrap();
        listed.extend(page.sessions.into_iter().map(|s| s.id));
        cursor = page.next_cursor;
        if cursor.is_none() {
            break;
        }
    }
    listed.sort();
    let mut want = ids.clone();
    want.sort();
    assert_eq!(listed, want, "every session listed once, across three masters");
    let mut mine = store.sessions_of("https://idp", "alice").await.unwrap();
    mine.sort();
    assert_eq!(mine, want);

    let event = StoredEvent {
        id: 5,
        data: "{\"a\":1}".into(),
    };
    store.append_event(&ids[2], &event, 10).await.unwrap();
    assert_eq!(store.events_between(&ids[2], 0, 10).await.unwrap(), vec![event]);

    let salt = store.identity_salt().await.unwrap();
    assert_eq!(store.identity_salt().await.unwrap(), salt);
    assert!(!store.keep_identity_salt(&salt).await.unwrap());
    store.ping().await.unwrap();

    assert!(store.delete(&ids[3]).await.unwrap());
    assert_eq!(store.touch(&ids[3], None).await.unwrap(), Touch::Deleted);
    assert!(!store.update(&meta(&ids[3])).await.unwrap(), "no resurrection");
    let deleted = tokio::time::timeout(Duration::from_secs(1), futures_util::StreamExt::next(&mut deletions))
        .await
        .expect("the deletion feed within a second");
    assert_eq!(deleted.as_deref(), Some(ids[3].as_str()));
}

/// A node's cluster id.
async fn node_id(port: u16) -> String {
    let mut c = support::redis_topology::conn(port).await;
    redis::cmd("CLUSTER")
        .arg("MYID")
        .query_async(&mut c)
        .await
        .expect("myid")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_reshards_under_load_and_loses_no_session() {
    let cluster = RedisCluster::start(3, 0).await;
    let backend = TestBackend::start("c").await;
    let yaml = support::config_yaml(&[("c", &backend.url)], &cluster_store(&cluster));
    let (a, b) = (Replica::start(&yaml).await, Replica::start(&yaml).await);
    let mut before = Vec::new();
    for _ in 0..6 {
        let mut c = a.client();
        c.initialize().await;
        assert_eq!(counter(&c).await, "1");
        before.push(c);
    }
    let first = before[0].session.clone().expect("session id");
    let key = format!("t:session:{{{first}}}");
    let from = cluster.master_of(&key).await;
    let to = cluster
        .nodes
        .iter()
        .map(|n| n.port)
        .find(|p| *p != from)
        .expect("another master");
    let (ok, failed, load) = light_load(before[1].via(&a.url));

    // Move every slot of the first session's master to another master, keys and all.
    let (from_id, to_id) = (node_id(from).await, node_id(to).await);
    let output = tokio::process::Command::new("redis-cli")
        .args(["--cluster", "reshard", &format!("127.0.0.1:{to}")])
        .args(["--cluster-from", &from_id, "--cluster-to", &to_id])
        .args(["--cluster-slots", "16384", "--cluster-yes"])
        .output()
        .await
        .expect("redis-cli runs");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(cluster.master_of(&key).await, to, "the session's slot moved");

    // Every session still works: held by A, and rebuilt by B from the moved keys.
    for (i, c) in before.iter().enumerate() {
        assert_eq!(counter(c).await, "2", "session {i} on A");
        assert_eq!(counter(&c.via(&b.url)).await, "3", "session {i} on B after the move");
    }
    let (fresh, _) = new_session_within(&b.url, Duration::from_secs(5)).await;
    assert_eq!(counter(&fresh).await, "1");
    load.abort();
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    eprintln!("cluster resharding under load: {ok} calls ok, {failed} failed");
    assert!(ok > 0 && failed == 0, "{ok} ok, {failed} failed");
    share_and_delete_again(&a, &b).await;
}
