//! Fault paths around what vmcp starts and holds (issue 10, items 6, 8, 11, 13):
//! stdio children get a minimal environment and die with their whole process
//! group, the identity salt survives its loss in Redis, shutdown is bounded,
//! and no secret reaches the log. Every test runs the real binary.

mod support;

use std::time::Duration;

use serde_json::Value;
use support::process::VmcpProcess;
use support::Client;

/// YAML for one stdio backend `kid` running tests/children/env_server.py.
fn env_server_yaml(extra_backend: &str, extra: &str) -> String {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/children/env_server.py");
    format!("backends:\n  - name: kid\n    command: [python3, {script}]\n{extra_backend}{extra}")
}

/// What the child reported about itself through its `env` tool.
async fn child_report(client: &Client) -> Value {
    let reply = client.call_tool("kid_env", serde_json::json!({})).await;
    serde_json::from_str(&reply.text()).unwrap_or_else(|e| panic!("child report {reply:?}: {e}"))
}

/// True while `pid` is a live (not zombie) process.
fn alive(pid: u64) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

async fn gone_within(pid: u64, within: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    while tokio::time::Instant::now() < deadline {
        if !alive(pid) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    !alive(pid)
}

#[tokio::test]
async fn stdio_children_get_a_minimal_environment_without_vmcp_secrets() {
    let yaml = env_server_yaml(
        "    env:\n      FROM_CONFIG: configured\n    inherit_env: [PASS_THROUGH]\n",
        "",
    );
    let vmcp = VmcpProcess::start_env(
        &yaml,
        &[
            ("VMCP_HOP_KEY", "hop-key-that-must-not-leak-0123456789"),
            ("FAKE_REDIS_PASSWORD", "redis-password-that-must-not-leak"),
            ("PASS_THROUGH", "asked-for"),
            ("HOME", "/tmp/vmcp-test-home"),
            ("LC_ALL", "C.UTF-8"),
        ],
    )
    .await;
    let mut client = Client::new(&vmcp.url);
    client.initialize().await;
    let report = child_report(&client).await;
    let env = report["env"].as_object().expect("env object");
    assert!(!env.contains_key("VMCP_HOP_KEY"), "hop key leaked: {env:?}");
    assert!(
        !env.contains_key("FAKE_REDIS_PASSWORD"),
        "unlisted variable leaked: {env:?}"
    );
    assert!(!env.contains_key("RUST_LOG"), "vmcp's own settings leaked: {env:?}");
    assert!(env.keys().all(|k| !k.starts_with("VMCP_")), "{env:?}");
    assert_eq!(env.get("HOME").and_then(Value::as_str), Some("/tmp/vmcp-test-home"));
    assert!(env.contains_key("PATH"), "{env:?}");
    assert_eq!(env.get("LC_ALL").and_then(Value::as_str), Some("C.UTF-8"));
    assert_eq!(env.get("FROM_CONFIG").and_then(Value::as_str), Some("configured"));
    assert_eq!(env.get("PASS_THROUGH").and_then(Value::as_str), Some("asked-for"));
    vmcp.kill().await;
}

#[tokio::test]
async fn closing_a_session_kills_the_childs_whole_process_group() {
    let vmcp = VmcpProcess::start(&env_server_yaml("", "")).await;
    let mut client = Client::new(&vmcp.url);
    client.initialize().await;
    let report = child_report(&client).await;
    let grandchild = report["grandchild"].as_u64().expect("grandchild pid");
    let child = report["pid"].as_u64().expect("child pid");
    assert!(alive(grandchild) && alive(child));
    assert!(client.delete().await.is_success());
    assert!(
        gone_within(child, Duration::from_secs(5)).await,
        "the child outlived its session"
    );
    assert!(
        gone_within(grandchild, Duration::from_secs(5)).await,
        "the child's grandchild outlived the session"
    );
    vmcp.kill().await;
}

#[tokio::test]
async fn shutdown_kills_the_childs_whole_process_group() {
    let vmcp = VmcpProcess::start(&env_server_yaml("", "http:\n  drain_delay: 0s\n")).await;
    let mut client = Client::new(&vmcp.url);
    client.initialize().await;
    let grandchild = child_report(&client).await["grandchild"].as_u64().expect("pid");
    assert!(alive(grandchild));
    vmcp.terminate().await;
    assert!(
        gone_within(grandchild, Duration::from_secs(5)).await,
        "the child's grandchild outlived vmcp"
    );
}

/// Two single-replica vmcp processes on one Redis (no hops: each rebuilds the
/// other's sessions from the metadata), sessions bound to a bearer token.
fn redis_yaml(backend: &str, redis: &support::redis::RedisServer) -> String {
    support::config_yaml(
        &[("one", backend)],
        &format!(
            "store:\n  kind: redis\n  redis:\n    url: {}\n    key_prefix: \"salt-test:\"\n",
            redis.url()
        ),
    )
}

#[tokio::test]
async fn a_lost_identity_salt_is_written_back_so_replicas_keep_agreeing() {
    let redis = support::redis::RedisServer::start().await;
    let backend = support::TestBackend::start("one").await;
    let a = VmcpProcess::start(&redis_yaml(&backend.url, &redis)).await;
    let mut client = Client::new(&a.url);
    client.token = Some("token-of-alice".into());
    client.initialize().await;

    // Redis loses the salt (eviction, a FLUSHALL, a restart): only the salt key here.
    let mut conn = redis.conn().await;
    let removed: i64 = redis::cmd("DEL")
        .arg("salt-test:identity-salt")
        .query_async(&mut conn)
        .await
        .expect("DEL");
    assert_eq!(removed, 1, "the salt was stored under its documented key");
    let mut written_back = false;
    for _ in 0..100 {
        let exists: i64 = redis::cmd("EXISTS")
            .arg("salt-test:identity-salt")
            .query_async(&mut conn)
            .await
            .expect("EXISTS");
        if exists == 1 {
            written_back = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(written_back, "no replica wrote the salt it holds back within 10 s");

    // A replica started now agrees with A on who owns the session.
    let b = VmcpProcess::start(&redis_yaml(&backend.url, &redis)).await;
    let same = client.via(&b.url);
    let reply = same.request("tools/list", serde_json::json!({})).await;
    assert_eq!(reply.status, http::StatusCode::OK, "same token on B: {reply:?}");
    let mut other = client.via(&b.url);
    other.token = Some("token-of-mallory".into());
    let reply = other.request("tools/list", serde_json::json!({})).await;
    assert_eq!(reply.status, http::StatusCode::NOT_FOUND, "other token on B: {reply:?}");
    a.kill().await;
    b.kill().await;
}
