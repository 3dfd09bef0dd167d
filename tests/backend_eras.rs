//! vmcp speaking 2026-07-28 to a backend (`backends[].era`, issue 15 item 2),
//! against a backend built with the Python SDK 2.3.0, which answers both
//! eras: `handshake` keeps a backend session, `stateless` and `auto` call it
//! statelessly (its `era` tool says which era each call came in), for
//! handshake-era and 2026-07-28 clients alike.

mod support;

use std::process::Stdio;
use std::time::Duration;

use serde_json::{json, Value};
use support::Replica;

struct PythonBackend {
    url: String,
    _child: tokio::process::Child,
}

async fn python_backend() -> PythonBackend {
    python_backend_in(&[]).await
}

/// The Python backend with extra arguments (`sse`: MCP 2024-11-05's HTTP+SSE at `/sse`).
async fn python_backend_in(extra: &[&str]) -> PythonBackend {
    let port = support::deps::free_port();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/servers/python_both_eras.py");
    let port_text = port.to_string();
    let mut args = vec![script, port_text.as_str()];
    args.extend(extra);
    let child = tokio::process::Command::new(support::deps::python())
        .args(&args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("python runs");
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
            let path = if extra.contains(&"sse") { "sse" } else { "mcp" };
            return PythonBackend {
                url: format!("http://127.0.0.1:{port}/{path}"),
                _child: child,
            };
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the Python backend did not listen on {port}");
}

fn text(reply: &support::client::Reply) -> String {
    reply.body["result"]["content"][0]["text"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test]
async fn each_backend_is_spoken_to_in_its_configured_era() {
    let py = python_backend().await;
    let config = format!(
        "backends:\n  - name: hs\n    url: {url}\n  - name: st\n    url: {url}\n    era: stateless\n  - name: au\n    url: {url}\n    era: auto\n",
        url = py.url
    );
    let vmcp = Replica::start(&config).await;

    // A handshake-era client.
    let mut c = vmcp.client();
    c.initialize().await;
    // The handshake: the client's own version, passed on.
    assert_eq!(text(&c.call_tool("hs_era", json!({})).await), "2025-06-18");
    assert_eq!(text(&c.call_tool("st_era", json!({})).await), "2026-07-28");
    assert_eq!(text(&c.call_tool("au_era", json!({})).await), "2026-07-28");
    let sum = c.call_tool("st_add", json!({"a": 2, "b": 3})).await;
    assert_eq!(text(&sum), "5", "{sum:?}");

    // A 2026-07-28 client, through its pooled session.
    let body = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {
        "name": "st_era", "arguments": {},
        "_meta": {"io.modelcontextprotocol/protocolVersion": "2026-07-28", "io.modelcontextprotocol/clientCapabilities": {}}
    }});
    let answer: Value = support::http()
        .post(&vmcp.url)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", "2026-07-28")
        .header("mcp-method", "tools/call")
        .header("mcp-name", "st_era")
        .body(body.to_string())
        .send()
        .await
        .expect("sent")
        .json()
        .await
        .expect("JSON");
    assert_eq!(answer["result"]["content"][0]["text"], "2026-07-28", "{answer}");
    assert_eq!(answer["result"]["resultType"], "complete");
}

#[tokio::test]
async fn an_http_sse_backend_of_2024_11_05_is_served_and_reopened_elsewhere() {
    let py = python_backend_in(&["sse"]).await;
    let redis = support::redis::RedisServer::start().await;
    let config = format!(
        "backends:\n  - name: old\n    url: {}\n    transport: sse\nstore:\n  kind: redis\n  redis: {{ url: \"{}\" }}\n",
        py.url,
        redis.url()
    );
    let (a, b) = (Replica::start(&config).await, Replica::start(&config).await);
    let mut c = a.client();
    c.initialize().await;
    let tools = c.request("tools/list", json!({})).await;
    assert!(
        tools.body["result"]["tools"].to_string().contains("old_add"),
        "{tools:?}"
    );
    assert_eq!(text(&c.call_tool("old_add", json!({"a": 2, "b": 3})).await), "5");
    // Another replica serves the session: a new stream, initialized again (that era cannot resume).
    let on_b = c.via(&b.url);
    assert_eq!(text(&on_b.call_tool("old_add", json!({"a": 4, "b": 5})).await), "9");
    assert_eq!(text(&c.call_tool("old_add", json!({"a": 1, "b": 1})).await), "2");
}

#[tokio::test]
async fn a_stateless_backends_input_request_reaches_a_handshake_client_as_an_elicitation() {
    let py = python_backend().await;
    let config = format!("backends:\n  - name: st\n    url: {}\n    era: stateless\n", py.url);
    let vmcp = Replica::start(&config).await;
    let mut client = vmcp.client();
    client.initialize_as("2025-11-25", json!({"elicitation": {}})).await;
    let call =
        json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "st_greet", "arguments": {}}});
    let mut events = client.post_events(call).await;
    let question = events
        .next_message()
        .await
        .expect("the backend's input request, relayed");
    assert_eq!(question.data["method"], "elicitation/create", "{:?}", question.data);
    assert_eq!(question.data["params"]["message"], "your name?");
    let answer = json!({"jsonrpc": "2.0", "id": question.data["id"], "result": {"action": "accept", "content": {"name": "Ada"}}});
    assert_eq!(client.send(answer).await, http::StatusCode::ACCEPTED);
    let (_, response) = events.until_response().await;
    assert_eq!(response["result"]["content"][0]["text"], "hello Ada", "{response}");
}

/// A 2026-07-28 backend has no GET stream: vmcp listens with
/// `subscriptions/listen` and passes on its list changes and the updates of
/// the resources the client subscribed to, to a handshake-era client's GET
/// stream and to a 2026-07-28 client's own listen stream alike.
#[tokio::test]
async fn a_stateless_backends_changes_reach_the_clients_of_both_eras() {
    let py = python_backend().await;
    let config = format!("backends:\n  - name: st\n    url: {}\n    era: stateless\n", py.url);
    let vmcp = Replica::start(&config).await;

    // A handshake-era client, its GET stream open.
    let mut c = vmcp.client();
    c.initialize().await;
    let mut events = c.get_events(None).await;
    assert_eq!(text(&c.call_tool("st_grow", json!({"name": "sprout"})).await), "grown");
    let note = events.next_message().await.expect("a list change").data;
    assert_eq!(note["method"], "notifications/tools/list_changed", "{note}");
    let tools = c.list_names("tools/list", "tools").await;
    assert!(tools.contains(&"st_sprout".to_owned()), "{tools:?}");

    // A subscription (no `resources/subscribe` in that era: the listen filter carries it).
    let subscribed = c.request("resources/subscribe", json!({"uri": "note://a"})).await;
    assert_eq!(subscribed.body["result"], json!({}), "{subscribed:?}");
    assert_eq!(
        text(&c.call_tool("st_touch", json!({"uri": "note://b"})).await),
        "touched"
    );
    assert_eq!(
        text(&c.call_tool("st_touch", json!({"uri": "note://a"})).await),
        "touched"
    );
    let update = events.next_message().await.expect("a resource update").data;
    assert_eq!(update["method"], "notifications/resources/updated", "{update}");
    assert_eq!(
        update["params"],
        json!({"uri": "note://a"}),
        "only what was subscribed, without the backend's subscription id"
    );
    c.request("resources/unsubscribe", json!({"uri": "note://a"})).await;
    c.call_tool("st_touch", json!({"uri": "note://a"})).await;
    c.call_tool("st_grow", json!({"name": "shoot"})).await;
    let next = events.next_message().await.expect("the next change").data;
    assert_eq!(
        next["method"], "notifications/tools/list_changed",
        "no update after unsubscribing: {next}"
    );

    // A 2026-07-28 client listening on its pooled session.
    let meta = json!({"io.modelcontextprotocol/protocolVersion": "2026-07-28", "io.modelcontextprotocol/clientCapabilities": {}});
    let modern = |method: &str, id: u32, params: Value| {
        let mut params = params;
        params["_meta"] = meta.clone();
        let mut request = support::http()
            .post(&vmcp.url)
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .header("mcp-protocol-version", "2026-07-28")
            .header("mcp-method", method);
        if let Some(name) = params["name"].as_str() {
            request = request.header("mcp-name", name);
        }
        request
            .body(json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}).to_string())
            .send()
    };
    let listening = modern(
        "subscriptions/listen",
        7,
        json!({"notifications": {"toolsListChanged": true}}),
    )
    .await
    .expect("sent");
    let mut listen = support::events::Events::of(listening);
    let ack = listen.next_message().await.expect("the acknowledgement").data;
    assert_eq!(ack["method"], "notifications/subscriptions/acknowledged", "{ack}");
    let grown: Value = modern(
        "tools/call",
        8,
        json!({"name": "st_grow", "arguments": {"name": "twig"}}),
    )
    .await
    .expect("sent")
    .json()
    .await
    .expect("JSON");
    assert_eq!(grown["result"]["content"][0]["text"], "grown", "{grown}");
    let note = listen.next_message().await.expect("a list change").data;
    assert_eq!(note["method"], "notifications/tools/list_changed", "{note}");
    assert_eq!(note["params"]["_meta"]["io.modelcontextprotocol/subscriptionId"], 7);
}

/// When the client's subscriptions change, vmcp reopens the backend's
/// listen stream once, with the new filter, and keeps it: not again after
/// every message that follows (each reopen loses what the stream it
/// replaces had in flight). Every list change reaches the client.
#[tokio::test]
async fn a_listen_stream_is_reopened_once_per_subscription_change() {
    let py = python_backend().await;
    let target = py.url.trim_start_matches("http://").trim_end_matches("/mcp");
    let proxy = support::proxy::FreezableProxy::start(target).await;
    let config = format!("backends:\n  - name: st\n    url: {}\n    era: stateless\n", proxy.url);
    let vmcp = Replica::start(&config).await;
    const LISTEN: &str = "\"method\":\"subscriptions/listen\"";

    let mut c = vmcp.client();
    c.initialize().await;
    let mut events = c.get_events(None).await;
    assert_eq!(text(&c.call_tool("st_grow", json!({"name": "seed"})).await), "grown");
    let note = events.next_message().await.expect("a list change").data;
    assert_eq!(note["method"], "notifications/tools/list_changed", "{note}");
    let before = proxy.sent_count(LISTEN);

    let subscribed = c.request("resources/subscribe", json!({"uri": "note://a"})).await;
    assert_eq!(subscribed.body["result"], json!({}), "{subscribed:?}");
    for name in ["one", "two", "three"] {
        assert_eq!(text(&c.call_tool("st_grow", json!({"name": name})).await), "grown");
        let note = events.next_message().await.expect("a list change").data;
        assert_eq!(note["method"], "notifications/tools/list_changed", "{note}");
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        proxy.sent_count(LISTEN) - before,
        1,
        "one reopen for one change of the subscriptions"
    );
}

#[tokio::test]
async fn a_backend_url_that_redirects_is_refused_and_the_log_says_where_it_points() {
    // Starlette answers `/mcp/` with a 307 to `/mcp`. The backend is left
    // out with a reason; the operator learns the URL from the log, clients
    // never see it.
    let py = python_backend().await;
    let config = format!("backends:\n  - name: py\n    url: {}/\n", py.url);
    let log = std::env::temp_dir().join(format!("vmcp-redirect-{}.log", std::process::id()));
    let vmcp = support::process::VmcpProcess::start_logged(support::deps::free_port(), &config, &[], &log).await;
    let mut c = support::client::Client::new(&vmcp.url);
    let init = c.initialize().await;
    let instructions = init.instructions();
    assert!(
        instructions.contains("py (backend broke the protocol: HTTP 307 Temporary Redirect"),
        "{instructions}"
    );
    assert!(instructions.contains("does not follow redirects"), "{instructions}");
    assert!(
        !instructions.contains("127.0.0.1"),
        "a backend URL reached the client: {instructions}"
    );
    let logs = std::fs::read_to_string(&log).unwrap_or_default();
    let _ = std::fs::remove_file(&log);
    assert!(
        logs.contains(&format!("location={}", py.url)) || logs.contains(&format!("\"location\":\"{}\"", py.url)),
        "{logs}"
    );
}
