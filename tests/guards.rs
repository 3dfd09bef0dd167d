//! Rate limits and the audit log on the call path (issue 14), on two
//! replicas sharing one Redis: a limit of N calls per minute holds across
//! both (exactly N of N+k succeed), a refusal is -32052 with HTTP 429 and
//! `Retry-After`, Redis down fails open or closed as configured, and every
//! call and refusal leaves one audit line without argument values, all of
//! them written before a stopping replica exits, however slow the sink.

mod support;

use std::sync::atomic::Ordering;

use http::StatusCode;
use serde_json::{json, Value};
use support::redis::RedisServer;
use support::{Client, Replica, TestBackend};

fn limits_yaml(redis: &RedisServer, on_store_error: &str, audit: &std::path::Path) -> String {
    format!(
        "limits:\n  on_store_error: {on_store_error}\n  rules:\n    - name: echo-per-caller\n      per: principal\n      match: {{ tools: [\"t_echo\"] }}\n      rate: 5\n      per_interval: 1m\n\
         audit:\n  enabled: true\n  sink: file\n  path: {}\n\
         store:\n  kind: redis\n  redis: {{ url: \"{}\" }}\n",
        audit.display(),
        redis.url()
    )
}

fn audit_lines(path: &std::path::Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect()
}

#[tokio::test]
async fn a_limit_holds_across_replicas_and_every_call_is_audited() {
    let redis = RedisServer::start().await;
    let backend = TestBackend::start("t").await;
    let dir = std::env::temp_dir();
    let (audit_a, audit_b) = (
        dir.join(format!("vmcp-audit-{}-a.jsonl", std::process::id())),
        dir.join(format!("vmcp-audit-{}-b.jsonl", std::process::id())),
    );
    let a = Replica::start(&support::config_yaml(
        &[("t", &backend.url)],
        &limits_yaml(&redis, "allow", &audit_a),
    ))
    .await;
    let b = Replica::start(&support::config_yaml(
        &[("t", &backend.url)],
        &limits_yaml(&redis, "allow", &audit_b),
    ))
    .await;

    // One caller (its Authorization header), sessions on both replicas.
    let mut on_a = a.client();
    on_a.token = Some("caller-one".into());
    on_a.initialize().await;
    let mut on_b = b.client();
    on_b.token = Some("caller-one".into());
    on_b.initialize().await;

    let calls = backend.stats.calls.load(Ordering::SeqCst);
    let mut ok = 0;
    let mut refused: Vec<support::client::Reply> = Vec::new();
    for i in 0..8 {
        let c: &Client = if i % 2 == 0 { &on_a } else { &on_b };
        let reply = c.call_tool("t_echo", json!({"message": format!("secret-{i}")})).await;
        if reply.body["result"].is_object() {
            ok += 1;
        } else {
            refused.push(reply);
        }
    }
    assert_eq!(
        ok, 5,
        "exactly N of N+k calls succeed across both replicas: {refused:?}"
    );
    assert_eq!(
        backend.stats.calls.load(Ordering::SeqCst) - calls,
        5,
        "refused calls never reach the backend"
    );
    let r = &refused[0];
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS, "{r:?}");
    assert_eq!(r.body["error"]["code"], -32052);
    assert_eq!(r.body["error"]["data"]["rule"], "echo-per-caller");
    let after: u64 = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=12).contains(&after), "one token per 12 s: {after}");
    assert_eq!(r.body["error"]["data"]["retry_after"], after);

    // Another caller has its own bucket; other tools are not limited.
    let mut other = a.client();
    other.token = Some("caller-two".into());
    other.initialize().await;
    assert!(other.call_tool("t_echo", json!({"message": "x"})).await.body["result"].is_object());
    assert!(on_a.call_tool("t_whoami", json!({})).await.body["result"].is_object());

    // The audit log: one line per call and per refusal, on the replica that served it.
    support::eventually("audit lines written", || async {
        audit_lines(&audit_a).len() + audit_lines(&audit_b).len() >= 10
    })
    .await;
    let lines: Vec<Value> = audit_lines(&audit_a).into_iter().chain(audit_lines(&audit_b)).collect();
    let _ = (std::fs::remove_file(&audit_a), std::fs::remove_file(&audit_b));
    assert_eq!(lines.len(), 10, "{lines:#?}");
    let limited: Vec<&Value> = lines.iter().filter(|l| l["outcome"] == "limited").collect();
    assert_eq!(limited.len(), 3);
    assert_eq!(limited[0]["rule"], "echo-per-caller");
    assert_eq!(limited[0]["code"], -32052);
    let first = lines.iter().find(|l| l["outcome"] == "ok").unwrap();
    assert_eq!(first["event"], "call");
    assert_eq!(first["method"], "tools/call");
    assert_eq!(first["backend"], "t");
    assert_eq!(first["name"], "t_echo");
    assert_eq!(first["original"], "echo");
    assert_eq!(first["session"].as_str().unwrap().len(), 16);
    let text = serde_json::to_string(&lines).unwrap();
    assert!(!text.contains("secret-"), "argument values stay out of the audit log");
    assert!(
        !text.contains(on_a.session.as_deref().unwrap()),
        "raw session ids stay out"
    );
}

#[tokio::test]
async fn redis_down_fails_closed_when_configured() {
    let mut redis = RedisServer::start().await;
    let backend = TestBackend::start("t").await;
    let audit = std::env::temp_dir().join(format!("vmcp-audit-{}-closed.jsonl", std::process::id()));
    let vmcp = Replica::start(&support::config_yaml(
        &[("t", &backend.url)],
        &limits_yaml(&redis, "deny", &audit),
    ))
    .await;
    let mut c = vmcp.client();
    c.initialize().await;
    assert!(c.call_tool("t_echo", json!({"message": "1"})).await.body["result"].is_object());
    redis.stop().await;
    let reply = c.call_tool("t_echo", json!({"message": "2"})).await;
    assert_eq!(reply.body["error"]["code"], -32052, "{reply:?}");
    // A tool no rule matches needs no Redis at all.
    assert!(c.call_tool("t_whoami", json!({})).await.body["result"].is_object());
    let _ = std::fs::remove_file(&audit);
}

#[tokio::test]
async fn a_list_is_one_request_for_a_rule_that_counts_lists() {
    let backends: Vec<TestBackend> = vec![TestBackend::start("t").await, TestBackend::start("u").await];
    let config = support::config_yaml(
        &[("t", &backends[0].url), ("u", &backends[1].url)],
        "limits:\n  rules:\n    - { name: lists, per: principal, match: { kinds: [list] }, rate: 2, per_interval: 1m }\n",
    );
    let vmcp = Replica::start(&config).await;
    let mut c = vmcp.client();
    c.initialize().await;
    // Two backends behind each list, one token per list.
    for _ in 0..2 {
        let listed = c.request("tools/list", json!({})).await;
        assert!(listed.body["result"]["tools"].is_array(), "{listed:?}");
    }
    let third = c.request("tools/list", json!({})).await;
    assert_eq!(third.body["error"]["code"], -32052, "{third:?}");
    // Calls are not lists: the rule does not count them.
    assert!(c.call_tool("t_echo", json!({"message": "x"})).await.body["result"].is_object());
}

/// A slow audit sink loses nothing at shutdown: on SIGTERM the replica waits
/// (within its shutdown deadline) until the writer has taken every queued
/// line. The sink is a FIFO nobody reads until after the signal, so the
/// writer is stuck on a full pipe with most lines still queued.
#[tokio::test]
async fn a_stopping_replica_writes_every_queued_audit_line_first() {
    use std::io::BufRead;
    const CALLS: usize = 60;
    let backend = TestBackend::start("t").await;
    let fifo = std::env::temp_dir().join(format!("vmcp-audit-{}-fifo", std::process::id()));
    let _ = std::fs::remove_file(&fifo);
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .expect("mkfifo runs");
    assert!(made.success());
    // Read and write: opening it does not wait for a writer, and the pipe
    // never reports an end (so a lost line shows as a missing one).
    let pipe = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&fifo)
        .expect("open the FIFO");
    let extra = format!(
        "audit:\n  enabled: true\n  sink: file\n  path: {}\n  include_arguments: true\n\
         http:\n  drain_delay: 0s\n  shutdown_timeout: 10s\n",
        fifo.display()
    );
    let vmcp = support::process::VmcpProcess::start(&support::config_yaml(&[("t", &backend.url)], &extra)).await;
    let mut client = Client::new(&vmcp.url);
    client.initialize().await;
    // About 4 KB a line: the 64 KiB pipe holds the first fifteen or so.
    let filler = "a".repeat(4000);
    for i in 0..CALLS {
        let reply = client
            .call_tool("t_echo", json!({"message": format!("{i}-{filler}")}))
            .await;
        assert!(reply.body["result"].is_object(), "{:?}", reply.body);
    }
    vmcp.signal_term();
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let (lines, read) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(pipe).lines() {
            let Ok(line) = line else { break };
            if lines.send(line).is_err() {
                break;
            }
        }
    });
    let mut calls = 0;
    while let Ok(line) = read.recv_timeout(std::time::Duration::from_secs(5)) {
        let record: Value = serde_json::from_str(&line).expect("whole JSON lines");
        assert_eq!(record["event"], "call");
        calls += 1;
        if calls == CALLS {
            break;
        }
    }
    let _ = std::fs::remove_file(&fifo);
    assert_eq!(calls, CALLS, "every call's audit line reached the sink");
    let status = tokio::time::timeout(std::time::Duration::from_secs(10), vmcp.wait())
        .await
        .expect("vmcp exits once the lines are written");
    assert!(status.success(), "{status:?}");
}
