//! `/metrics` after a scripted session lifecycle: the counters moved as
//! expected, the output is valid Prometheus text (`promtool check metrics`),
//! and `admin_listen` serves health and metrics apart from MCP.

mod support;

use std::process::Stdio;
use std::time::Duration;

use http::StatusCode;
use serde_json::json;
use support::{config_yaml, deps, Replica, TestBackend};
use tokio::io::AsyncWriteExt;

#[tokio::test]
async fn metrics_follow_a_session_lifecycle_and_pass_promtool() {
    let backend = TestBackend::start("b").await;
    let admin = deps::free_port();
    let yaml = config_yaml(
        &[("b", &backend.url)],
        &format!("admin_listen: 127.0.0.1:{admin}\nsession:\n  idle_timeout: 300ms\n"),
    );
    let replica = Replica::start(&yaml).await;

    let mut kept = replica.client();
    kept.initialize().await;
    kept.request("tools/list", json!({})).await;
    assert_eq!(
        kept.call_tool("b_echo", json!({"message": "1"})).await.status,
        StatusCode::OK
    );
    assert_eq!(
        kept.call_tool("b_echo", json!({"message": "2"})).await.status,
        StatusCode::OK
    );
    assert_eq!(kept.call_tool("b_nope", json!({})).await.error_code(), -32602);
    assert_eq!(kept.delete().await, StatusCode::NO_CONTENT);
    let mut idle = replica.client();
    idle.initialize().await;
    tokio::time::sleep(Duration::from_millis(700)).await;

    let http = support::http();
    let admin_base = format!("http://127.0.0.1:{admin}");
    let text = http
        .get(format!("{admin_base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let value = |sample: &str| -> f64 {
        text.lines()
            .find(|l| l.starts_with(sample))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no sample {sample} in\n{text}"))
    };
    assert_eq!(value("vmcp_sessions_created_total"), 2.0);
    assert_eq!(value("vmcp_sessions_active"), 0.0);
    assert_eq!(value("vmcp_sessions_closed_total{reason=\"delete\"}"), 1.0);
    assert_eq!(value("vmcp_sessions_closed_total{reason=\"idle\"}"), 1.0);
    assert_eq!(value("vmcp_requests_total{method=\"tools/call\",status=\"ok\"}"), 2.0);
    assert_eq!(
        value("vmcp_requests_total{method=\"tools/call\",status=\"error\"}"),
        1.0
    );
    assert_eq!(value("vmcp_requests_total{method=\"tools/list\",status=\"ok\"}"), 1.0);
    assert_eq!(value("vmcp_request_duration_seconds_count{method=\"tools/call\"}"), 3.0);
    assert_eq!(value("vmcp_backend_inits_total{backend=\"b\",outcome=\"ok\"}"), 2.0);
    assert_eq!(
        value("vmcp_backend_calls_total{backend=\"b\",method=\"tools/call\",outcome=\"ok\"}"),
        2.0
    );
    assert_eq!(
        value("vmcp_backend_call_duration_seconds_count{backend=\"b\",method=\"tools/call\"}"),
        2.0
    );
    assert_eq!(value("vmcp_session_create_duration_seconds_count"), 2.0);
    assert_eq!(
        value(&format!("vmcp_build_info{{version=\"{}\"}}", env!("CARGO_PKG_VERSION"))),
        1.0
    );
    assert!(
        !text.contains(kept.session.as_deref().unwrap()),
        "no session ids in labels"
    );
    assert!(!text.contains("b_nope"), "no client-chosen names in labels");

    // The admin port serves health and metrics, not MCP.
    assert_eq!(
        http.get(format!("{admin_base}/healthz")).send().await.unwrap().status(),
        StatusCode::OK
    );
    assert_eq!(
        http.get(format!("{admin_base}/readyz")).send().await.unwrap().status(),
        StatusCode::OK
    );
    assert_eq!(
        http.post(format!("{admin_base}/mcp")).send().await.unwrap().status(),
        StatusCode::NOT_FOUND
    );

    // What Prometheus would scrape is valid and lint-clean.
    let mut promtool = tokio::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool runs (scripts/test.sh installs Debian's prometheus package)");
    promtool.stdin.take().unwrap().write_all(text.as_bytes()).await.unwrap();
    let out = promtool.wait_with_output().await.unwrap();
    assert!(
        out.status.success(),
        "promtool: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
