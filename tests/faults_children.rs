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
        "http:\n  drain_delay: 0s\n",
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
    // SIGTERM, not SIGKILL: a SIGKILLed vmcp cannot kill its children's groups.
    vmcp.terminate().await;
}

/// A child's stderr is drained whatever it holds: bytes that are not UTF-8
/// once ended the drain, and the child then hung on its next 64 KB of stderr
/// (a full pipe), with every call after it.
#[tokio::test]
async fn a_child_writing_non_utf8_and_huge_lines_to_stderr_keeps_answering() {
    let vmcp = VmcpProcess::start(&env_server_yaml(
        "",
        "session:\n  call_timeout: 5s\nhttp:\n  drain_delay: 0s\n",
    ))
    .await;
    let mut client = Client::new(&vmcp.url);
    client.initialize().await;
    for round in 0..3 {
        let reply = client.call_tool("kid_noise", serde_json::json!({})).await;
        assert_eq!(reply.text(), "noisy", "round {round}: {reply:?}");
    }
    assert!(child_report(&client).await["pid"].as_u64().is_some());
}

#[tokio::test]
async fn a_childs_answer_over_the_bound_fails_its_call_at_once() {
    // A line over `max_response_bytes` is dropped unread; the call it
    // answered used to wait for `call_timeout` (5 minutes by default).
    let vmcp = VmcpProcess::start(&env_server_yaml(
        "",
        "session:\n  call_timeout: 30s\n  max_response_bytes: 65536\nhttp:\n  drain_delay: 0s\n",
    ))
    .await;
    let mut client = Client::new(&vmcp.url);
    client.initialize().await;
    for tool in ["kid_huge", "kid_huge_id_last"] {
        let started = std::time::Instant::now();
        let reply = client.call_tool(tool, serde_json::json!({})).await;
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{tool}: answered after {:?}",
            started.elapsed()
        );
        assert_eq!(reply.error_code(), -32603, "{tool}: {reply:?}");
        let message = reply.body["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains("larger than 65536 bytes"), "{tool}: {message}");
    }
    // The child and its session go on.
    assert!(child_report(&client).await["pid"].as_u64().is_some());
}

#[tokio::test]
async fn closing_a_session_kills_the_childs_whole_process_group() {
    let vmcp = VmcpProcess::start(&env_server_yaml("", "http:\n  drain_delay: 0s\n")).await;
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
    vmcp.terminate().await;
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

/// A TCP proxy in front of a backend that can freeze: once frozen it stops
/// moving bytes on every connection and leaves new ones unanswered (a hung
/// backend, not a refusing one).
struct FreezableProxy {
    url: String,
    frozen: std::sync::Arc<std::sync::atomic::AtomicBool>,
    _task: tokio::task::JoinHandle<()>,
}

impl FreezableProxy {
    async fn start(target: &str) -> Self {
        use std::sync::atomic::{AtomicBool, Ordering};
        let target_addr = target
            .trim_start_matches("http://")
            .split('/')
            .next()
            .expect("host:port")
            .to_owned();
        let path = target.splitn(4, '/').nth(3).unwrap_or("").to_owned();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}/{path}", listener.local_addr().expect("addr"));
        let frozen = std::sync::Arc::new(AtomicBool::new(false));
        let flag = std::sync::Arc::clone(&frozen);
        let task = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((inbound, _)) = listener.accept().await {
                if flag.load(Ordering::SeqCst) {
                    held.push(inbound);
                    continue;
                }
                let Ok(outbound) = tokio::net::TcpStream::connect(&target_addr).await else {
                    continue;
                };
                let flag = std::sync::Arc::clone(&flag);
                tokio::spawn(async move {
                    let (mut ri, mut wi) = inbound.into_split();
                    let (mut ro, mut wo) = outbound.into_split();
                    let up = copy_until_frozen(&mut ri, &mut wo, std::sync::Arc::clone(&flag));
                    let down = copy_until_frozen(&mut ro, &mut wi, flag);
                    tokio::join!(up, down);
                    // Frozen or closed: keep the sockets open, answer nothing.
                    std::future::pending::<()>().await;
                });
            }
        });
        Self {
            url,
            frozen,
            _task: task,
        }
    }

    fn freeze(&self) {
        self.frozen.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Copies until EOF, or forever holds the bytes once `frozen` is set.
async fn copy_until_frozen(
    from: &mut tokio::net::tcp::OwnedReadHalf,
    to: &mut tokio::net::tcp::OwnedWriteHalf,
    frozen: std::sync::Arc<std::sync::atomic::AtomicBool>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if frozen.load(std::sync::atomic::Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

#[tokio::test]
async fn sigterm_exits_within_drain_delay_plus_shutdown_timeout_with_a_hung_backend() {
    let backend = support::TestBackend::start("one").await;
    let proxy = FreezableProxy::start(&backend.url).await;
    let yaml = support::config_yaml(
        &[("one", &proxy.url)],
        "session:\n  call_timeout: 60s\nhttp:\n  drain_delay: 500ms\n  shutdown_timeout: 3s\n",
    );
    let vmcp = VmcpProcess::start(&yaml).await;
    let mut client = Client::new(&vmcp.url);
    client.initialize().await;
    assert_eq!(
        client
            .call_tool("one_echo", serde_json::json!({"message": "hi"}))
            .await
            .text(),
        "one:hi"
    );
    proxy.freeze();
    let url = vmcp.url.clone();
    let session = client.session.clone();
    // Raw, so that the reply cut by the exit is not a panic in the test client.
    let in_flight = tokio::spawn(async move {
        let body = serde_json::json!({"jsonrpc": "2.0", "id": 9, "method": "tools/call",
            "params": {"name": "one_echo", "arguments": {"message": "never answered"}}});
        let _ = support::http()
            .post(&url)
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .header("mcp-protocol-version", "2025-06-18")
            .header("mcp-session-id", session.unwrap_or_default())
            .body(body.to_string())
            .timeout(Duration::from_secs(30))
            .send()
            .await;
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = std::time::Instant::now();
    vmcp.signal_term();
    let exited = tokio::time::timeout(Duration::from_secs(20), vmcp.wait()).await;
    let took = started.elapsed();
    assert!(exited.is_ok(), "vmcp did not exit within 20 s of SIGTERM");
    // drain_delay + shutdown_timeout = 3.5 s, plus a margin for the exit itself
    // (before the fix: about 3.5 s + another shutdown_timeout closing the hung backend).
    assert!(
        took < Duration::from_millis(3500 + 1500),
        "shutdown took {took:?}, more than drain_delay + shutdown_timeout"
    );
    in_flight.abort();
}

#[tokio::test]
async fn no_secret_reaches_the_log_even_at_trace_level() {
    const REDIS_PASSWORD: &str = "redis-pw-Zq81xLk";
    const URL_PASSWORD: &str = "url-pw-Hf73kQa";
    const QUERY_TOKEN: &str = "query-token-Pm29vWe";
    const HEADER_SECRET: &str = "header-secret-Yt56nBc";
    const HOP_KEY: &str = "hop-key-secret-Rb47sJd-0123456789";
    const IDENTITY_KEY: &str = "identity-key-secret-Gc95tMu";
    const BEARER: &str = "bearer-token-Lw38pXo";
    const DOWN_PASSWORD: &str = "down-pw-Vn62cEr";
    let secrets = [
        REDIS_PASSWORD,
        URL_PASSWORD,
        QUERY_TOKEN,
        HEADER_SECRET,
        HOP_KEY,
        IDENTITY_KEY,
        BEARER,
        DOWN_PASSWORD,
    ];

    let redis = support::redis::RedisServer::start_with_password(REDIS_PASSWORD).await;
    let backend = support::TestBackend::start("one").await;
    let with_secrets =
        backend.url.replace("http://", &format!("http://user:{URL_PASSWORD}@")) + &format!("?token={QUERY_TOKEN}");
    let down = support::refused_url()
        .await
        .replace("http://", &format!("http://user:{DOWN_PASSWORD}@"));
    let (port_a, port_b) = (support::deps::free_port(), support::deps::free_port());
    let yaml = |id: &str| {
        format!(
            "replica_id: {id}
backends:
  - name: one
    url: \"{with_secrets}\"
    headers: {{ X-Api-Key: {HEADER_SECRET} }}
  - name: down
    url: \"{down}\"
session:
  init_timeout: 1s
http:
  drain_delay: 100ms
store:
  kind: redis
membership:
  members: {{ a: \"127.0.0.1:{port_a}\", b: \"127.0.0.1:{port_b}\" }}
"
        )
    };
    let env = [
        ("RUST_LOG", "trace"),
        ("VMCP_REDIS_URL", &redis.url()),
        ("VMCP_HOP_KEY", HOP_KEY),
        ("VMCP_IDENTITY_KEY", IDENTITY_KEY),
    ];
    let dir = std::env::temp_dir();
    let (log_a, log_b) = (
        dir.join(format!("vmcp-secrets-a-{port_a}.log")),
        dir.join(format!("vmcp-secrets-b-{port_b}.log")),
    );
    let a = VmcpProcess::start_logged(port_a, &yaml("a"), &env, &log_a).await;
    let b = VmcpProcess::start_logged(port_b, &yaml("b"), &env, &log_b).await;

    // Sessions entering at both replicas: created, called, forwarded to their owner, deleted.
    for _ in 0..4 {
        for entry in [&a.url, &b.url] {
            let mut client = Client::new(entry);
            client.token = Some(BEARER.into());
            client.initialize().await;
            let other = if entry == &a.url { &b.url } else { &a.url };
            let reply = client.call_tool("one_echo", serde_json::json!({"message": "x"})).await;
            assert_eq!(reply.text(), "one:x");
            let via_other = client.via(other);
            assert_eq!(
                via_other
                    .call_tool("one_echo", serde_json::json!({"message": "y"}))
                    .await
                    .text(),
                "one:y"
            );
            let mut stranger = client.via(other);
            stranger.token = Some("someone-else".into());
            assert_eq!(stranger.request("tools/list", serde_json::json!({})).await.status, 404);
            assert!(via_other.delete().await.is_success());
        }
    }
    a.terminate().await;
    b.terminate().await;
    for log in [&log_a, &log_b] {
        let text = std::fs::read_to_string(log).expect("log");
        assert!(
            text.contains("TRACE") || text.contains("DEBUG"),
            "the log is at trace level"
        );
        for secret in secrets {
            let line = text.lines().find(|l| l.contains(secret));
            assert!(
                line.is_none(),
                "{secret} in {}: {}",
                log.display(),
                line.unwrap_or_default()
            );
        }
        let _ = std::fs::remove_file(log);
    }
}

/// Backend failures log the backend's error: its URL must not carry the
/// credentials or query of the configured URL there.
#[tokio::test]
async fn backend_url_secrets_stay_out_of_logs_when_the_backend_fails() {
    const DOWN_QUERY: &str = "down-query-Kd83jRw";
    const GONE_PASSWORD: &str = "gone-pw-Ux20hNf";
    const GONE_QUERY: &str = "gone-query-Ae47bZy";
    let down = support::refused_url().await + &format!("?key={DOWN_QUERY}");
    let gone = support::TestBackend::start("gone").await;
    let gone_url =
        gone.url.replace("http://", &format!("http://user:{GONE_PASSWORD}@")) + &format!("?token={GONE_QUERY}");
    let yaml = format!(
        "backends:\n  - name: gone\n    url: \"{gone_url}\"\n  - name: down\n    url: \"{down}\"\nsession:\n  init_timeout: 1s\nhttp:\n  drain_delay: 100ms\n"
    );
    let port = support::deps::free_port();
    let log = std::env::temp_dir().join(format!("vmcp-secrets-fail-{port}.log"));
    let vmcp = VmcpProcess::start_logged(port, &yaml, &[("RUST_LOG", "trace")], &log).await;
    let mut client = Client::new(&vmcp.url);
    client.initialize().await;
    assert_eq!(
        client
            .call_tool("gone_echo", serde_json::json!({"message": "x"}))
            .await
            .text(),
        "gone:x"
    );
    // The backend goes away: the session's close (DELETE to it) fails.
    drop(gone);
    assert!(client.delete().await.is_success());
    tokio::time::sleep(Duration::from_millis(500)).await;
    vmcp.terminate().await;
    let text = std::fs::read_to_string(&log).expect("log");
    let _ = std::fs::remove_file(&log);
    for secret in [DOWN_QUERY, GONE_PASSWORD, GONE_QUERY] {
        let line = text.lines().find(|l| l.contains(secret));
        assert!(line.is_none(), "{secret} in the log: {}", line.unwrap_or_default());
    }
}
