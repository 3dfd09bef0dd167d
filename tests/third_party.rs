//! Real third-party peers: `@modelcontextprotocol/server-everything` as a
//! backend (stdio and Streamable HTTP) and the Python `mcp` SDK as a client.

mod support;

use std::process::Stdio;
use std::time::Duration;

use serde_json::{json, Value};
use support::{config_yaml, deps, Replica, TestBackend};
use tokio::process::{Child, Command};

/// server-everything over Streamable HTTP on a free port; killed on drop.
struct Everything {
    url: String,
    _child: Child,
}

async fn everything_http() -> Everything {
    let port = deps::free_port();
    let child = Command::new("node")
        .arg(deps::server_everything())
        .arg("streamableHttp")
        .env("PORT", port.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("node runs server-everything");
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
            return Everything {
                url: format!("http://127.0.0.1:{port}/mcp"),
                _child: child,
            };
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("server-everything did not listen on {port}");
}

/// server-everything twice: `stdio` (a child per session) and `web` (`http`).
fn both_transports(http: &Everything) -> String {
    format!(
        "backends:
  - name: stdio
    command: [node, {}, stdio]
  - name: web
    url: {}
session:
  init_timeout: 20s
",
        deps::server_everything().display(),
        http.url
    )
}

#[tokio::test]
async fn server_everything_over_stdio_and_streamable_http() {
    let http = everything_http().await;
    let replica = Replica::start(&both_transports(&http)).await;
    let mut client = replica.client();
    let init = client.initialize().await;
    assert!(
        !init.result()["instructions"].as_str().unwrap().contains("Unavailable"),
        "{}",
        init.body
    );
    let tools = client.list_names("tools/list", "tools").await;
    assert!(
        tools.contains(&"stdio_echo".to_owned()) && tools.contains(&"web_echo".to_owned()),
        "{tools:?}"
    );
    assert_eq!(
        client.call_tool("stdio_echo", json!({"message": "one"})).await.text(),
        "Echo: one"
    );
    assert_eq!(
        client.call_tool("web_echo", json!({"message": "two"})).await.text(),
        "Echo: two"
    );
    let sum = client.call_tool("web_get-sum", json!({"a": 2, "b": 3})).await;
    assert!(sum.text().contains('5'), "{}", sum.body);

    let resources = client.list_names("resources/list", "resources").await;
    assert!(!resources.is_empty());
    let read = client.request("resources/read", json!({"uri": resources[0]})).await;
    assert!(read.result()["contents"].as_array().is_some_and(|c| !c.is_empty()));
    let prompts = client.list_names("prompts/list", "prompts").await;
    assert!(prompts.iter().any(|p| p.starts_with("stdio_")) && prompts.iter().any(|p| p.starts_with("web_")));
    assert_eq!(client.delete().await, http::StatusCode::NO_CONTENT);
}

#[tokio::test]
async fn python_sdk_client_drives_vmcp() {
    let (alpha, beta) = (TestBackend::start("alpha").await, TestBackend::start("beta").await);
    let replica = Replica::start(&config_yaml(&[("alpha", &alpha.url), ("beta", &beta.url)], "")).await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/clients/python_client.py");
    let output = Command::new(deps::python())
        .arg(script)
        .arg(&replica.url)
        .output()
        .await
        .expect("python runs");
    assert!(
        output.status.success(),
        "python client failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let seen: Value = serde_json::from_slice(&output.stdout).expect("python client prints JSON");
    assert_eq!(seen["server"], "vmcp");
    assert_eq!(seen["counter"], json!(["1", "2"]));
    assert_eq!(seen["echo"], "beta:from python");
    assert_eq!(seen["resource"], "beta has mem://beta/info");
    assert_eq!(seen["prompt"], "alpha greets python");
    assert!(seen["tools"].as_array().unwrap().contains(&json!("alpha_echo")));
    // Relayed mid-call: progress on the call's stream, an elicitation answered by the SDK.
    assert_eq!(seen["progress"], json!([1.0, 2.0, 3.0]));
    assert_eq!(seen["worked"], "alpha done");
    assert_eq!(seen["questions"], json!(["your name?"]));
    assert_eq!(seen["asked"], r#"alpha:{"name":"py"}"#);
    // The SDK DELETEs its session on exit.
    assert_eq!(replica.metric("vmcp_sessions_closed_total{reason=\"delete\"}"), 1.0);
}

#[tokio::test]
async fn server_everythings_progress_and_questions_reach_the_client_over_stdio_and_http() {
    let http = everything_http().await;
    let replica = Replica::start(&both_transports(&http)).await;
    let mut client = replica.client();
    client.initialize_as("2025-11-25", json!({"elicitation": {}})).await;
    for backend in ["stdio", "web"] {
        let call = |id: u32, tool: &str, arguments: Value| {
            json!({"jsonrpc": "2.0", "id": id, "method": "tools/call", "params": {
                "name": format!("{backend}_{tool}"), "arguments": arguments, "_meta": {"progressToken": backend}}})
        };
        let args = json!({"duration": 0.3, "steps": 3});
        let mut events = client
            .post_events(call(1, "trigger-long-running-operation", args))
            .await;
        let (notes, response) = events.until_response().await;
        let progress: Vec<f64> = notes
            .iter()
            .filter(|n| n["method"] == "notifications/progress")
            .inspect(|n| assert_eq!(n["params"]["progressToken"], backend, "the client's own token"))
            .filter_map(|n| n["params"]["progress"].as_f64())
            .collect();
        assert_eq!(progress, [1.0, 2.0, 3.0], "{backend}: {notes:?}");
        assert!(response["result"]["content"][0]["text"]
            .as_str()
            .unwrap()
            .contains("completed"));

        let mut events = client
            .post_events(call(2, "trigger-elicitation-request", json!({})))
            .await;
        let question = events.next_message().await.expect("the backend's question");
        assert_eq!(question.data["method"], "elicitation/create", "{backend}");
        let answer = json!({"jsonrpc": "2.0", "id": question.data["id"], "result": {"action": "decline"}});
        assert_eq!(client.send(answer).await, http::StatusCode::ACCEPTED);
        let (_, response) = events.until_response().await;
        let text = response["result"]["content"].to_string();
        assert!(text.contains("decline"), "{backend}: {response}");
    }
}

/// A handshake-only backend (server-everything is built on the TypeScript SDK
/// 1.x, whose newest version is 2025-11-25) behind two replicas, and the
/// Python SDK 2.3.0 client in `auto` mode: it settles on 2026-07-28 with vmcp,
/// which speaks the handshake to the backend for it.
#[tokio::test]
async fn a_2026_07_28_client_reaches_a_handshake_only_typescript_backend() {
    let everything = everything_http().await;
    let redis = support::redis::RedisServer::start().await;
    let config = config_yaml(
        &[("ev", &everything.url)],
        &format!("store:\n  kind: redis\n  redis: {{ url: \"{}\" }}\n", redis.url()),
    );
    let (a, b) = (Replica::start(&config).await, Replica::start(&config).await);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/clients/python_modern_call.py");
    for url in [&a.url, &b.url] {
        let output = Command::new(deps::python())
            .args([script, url.as_str(), "ev_echo", r#"{"message": "from 2026"}"#])
            .output()
            .await
            .expect("python runs");
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        let seen: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON");
        assert_eq!(seen["version"], "2026-07-28", "{seen}");
        assert!(
            seen["text"].as_str().unwrap_or_default().contains("from 2026"),
            "{seen}"
        );
    }
}
