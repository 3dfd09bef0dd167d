//! The stateless era on vmcp's front (MCP 2026-07-28, issue 15): the
//! official Python SDK 2.3.0 client in `auto` mode settles on 2026-07-28
//! through vmcp, and in `legacy` mode on the handshake, against a
//! handshake-only backend whose per-session counter shows the pooled backend
//! session; through two replicas, the request entering at the one that does
//! not own the caller's pool. Plus the envelope's refusals on raw HTTP.

mod support;

use http::StatusCode;
use serde_json::{json, Value};
use support::redis::RedisServer;
use support::{Replica, TestBackend};
use vmcp::affinity::ring::Member;

/// Two replicas on one Redis that know each other: each pool has one owner,
/// and a request entering at the other is forwarded there.
async fn pair(backend: &TestBackend, redis: &RedisServer) -> (Replica, Replica) {
    let ports = (support::deps::free_port(), support::deps::free_port());
    let config = |me: &str| {
        support::config_yaml(
            &[("t", &backend.url)],
            &format!(
                "replica_id: {me}\nstore:\n  kind: redis\n  redis: {{ url: \"{}\" }}\nmembership:\n  members: {{ a: \"127.0.0.1:{}\", b: \"127.0.0.1:{}\" }}\naffinity:\n  hop_key: stateless-test-hop-key-01\n",
                redis.url(),
                ports.0,
                ports.1
            ),
        )
    };
    (
        Replica::start_on(ports.0, &config("a")).await,
        Replica::start_on(ports.1, &config("b")).await,
    )
}

async fn python(url: &str, mode: &str, token: Option<&str>) -> Value {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/clients/python_modern_client.py");
    let mut args = vec![script, url, mode];
    args.extend(token);
    let output = tokio::process::Command::new(support::deps::python())
        .args(&args)
        .output()
        .await
        .expect("python runs");
    assert!(
        output.status.success(),
        "python client ({mode}) failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("python client prints JSON")
}

#[tokio::test]
async fn the_python_sdk_settles_on_2026_07_28_through_two_replicas() {
    let redis = RedisServer::start().await;
    let backend = TestBackend::start("t").await;
    let (a, b) = pair(&backend, &redis).await;

    let modern = python(&a.url, "auto", Some("caller-one")).await;
    assert_eq!(modern["version"], "2026-07-28", "{modern}");
    assert!(
        modern["tools"].as_array().unwrap().contains(&json!("t_echo")),
        "{modern}"
    );
    assert_eq!(modern["echo"], "t:hello from auto");
    assert_eq!(
        modern["counter"],
        json!(["1", "2"]),
        "one backend session for the caller's requests"
    );

    // The same caller through the other replica: its pool (and the backend
    // session's counter) carries on, whichever replica owns it.
    let again = python(&b.url, "auto", Some("caller-one")).await;
    assert_eq!(again["version"], "2026-07-28");
    assert_eq!(again["counter"], json!(["3", "4"]), "{again}");

    // Another caller has its own pool.
    let other = python(&b.url, "auto", Some("caller-two")).await;
    assert_eq!(other["counter"], json!(["1", "2"]), "{other}");

    // The handshake era, on the same /mcp, as before.
    let legacy = python(&b.url, "legacy", Some("caller-one")).await;
    assert_eq!(legacy["version"], "2025-11-25", "{legacy}");
    assert_eq!(legacy["counter"], json!(["1", "2"]), "a session of its own");
}

/// One raw stateless request as `token` (if any), declaring `capabilities`;
/// its response not yet read.
async fn send_as(
    url: &str,
    method: &str,
    name: Option<&str>,
    version: &str,
    (params, capabilities): (Value, Value),
    token: Option<&str>,
) -> reqwest::Response {
    let mut params = params;
    params["_meta"] = json!({
        "io.modelcontextprotocol/protocolVersion": version,
        "io.modelcontextprotocol/clientCapabilities": capabilities,
    });
    let mut req = support::http()
        .post(url)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", version)
        .header("mcp-method", method);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(n) = name {
        req = req.header("mcp-name", n);
    }
    let body = json!({"jsonrpc": "2.0", "id": 7, "method": method, "params": params});
    req.body(body.to_string()).send().await.expect("sent")
}

/// The status and JSON answer of a response.
async fn read(response: reqwest::Response) -> (StatusCode, Value) {
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// One raw stateless request as `token`, its response not yet read.
async fn send(
    url: &str,
    method: &str,
    name: Option<&str>,
    version: &str,
    params: Value,
    token: &str,
) -> reqwest::Response {
    send_as(url, method, name, version, (params, json!({})), Some(token)).await
}

/// One raw stateless request, without a credential.
async fn post(url: &str, method: &str, name: Option<&str>, version: &str, params: Value) -> (StatusCode, Value) {
    read(send_as(url, method, name, version, (params, json!({})), None).await).await
}

#[tokio::test]
async fn the_envelope_is_checked_and_results_are_shaped() {
    let backend = TestBackend::start("t").await;
    let vmcp = Replica::start(&support::config_yaml(&[("t", &backend.url)], "")).await;

    let (status, discover) = post(&vmcp.url, "server/discover", None, "2026-07-28", json!({})).await;
    assert_eq!(status, StatusCode::OK, "{discover}");
    let result = &discover["result"];
    assert_eq!(result["supportedVersions"][0], "2026-07-28");
    assert!(result["supportedVersions"]
        .as_array()
        .unwrap()
        .contains(&json!("2025-06-18")));
    assert_eq!(result["resultType"], "complete");
    assert!(result["capabilities"]["tools"].is_object(), "{discover}");

    let (_, listed) = post(&vmcp.url, "tools/list", None, "2026-07-28", json!({})).await;
    assert_eq!(
        (
            listed["result"]["cacheScope"].as_str(),
            listed["result"]["ttlMs"].as_i64()
        ),
        (Some("private"), Some(0))
    );
    let (_, called) = post(
        &vmcp.url,
        "tools/call",
        Some("t_echo"),
        "2026-07-28",
        json!({"name": "t_echo", "arguments": {"message": "m"}}),
    )
    .await;
    assert_eq!(called["result"]["resultType"], "complete", "{called}");
    assert!(called["result"].get("ttlMs").is_none());

    // Refusals, each before anything runs.
    let (status, e) = post(
        &vmcp.url,
        "tools/call",
        Some("other"),
        "2026-07-28",
        json!({"name": "t_echo"}),
    )
    .await;
    assert_eq!(
        (status, e["error"]["code"].as_i64()),
        (StatusCode::BAD_REQUEST, Some(-32020)),
        "{e}"
    );
    let (status, e) = post(&vmcp.url, "tools/list", None, "2027-01-01", json!({})).await;
    assert_eq!(
        (status, e["error"]["code"].as_i64()),
        (StatusCode::BAD_REQUEST, Some(-32022)),
        "{e}"
    );
    assert_eq!(e["error"]["data"]["supported"][0], "2026-07-28");
    let (status, e) = post(&vmcp.url, "ping", None, "2026-07-28", json!({})).await;
    assert_eq!(
        (status, e["error"]["code"].as_i64()),
        (StatusCode::NOT_FOUND, Some(-32601)),
        "{e}"
    );
}

#[tokio::test]
async fn subscriptions_listen_streams_the_list_changes_asked_for() {
    let redis = RedisServer::start().await;
    let backend = TestBackend::start("t").await;
    let (a, b) = pair(&backend, &redis).await;
    let filter = json!({"notifications": {"toolsListChanged": true, "promptsListChanged": true}});
    let response = send(&a.url, "subscriptions/listen", None, "2026-07-28", filter, "listener").await;
    assert_eq!(response.status(), StatusCode::OK);
    let mut events = support::events::Events::of(response);
    let ack = events.next_message().await.expect("the acknowledgement").data;
    assert_eq!(ack["method"], "notifications/subscriptions/acknowledged", "{ack}");
    assert_eq!(ack["params"]["notifications"]["toolsListChanged"], true);
    assert_eq!(ack["params"]["_meta"]["io.modelcontextprotocol/subscriptionId"], 7);

    // The same caller grows the backend's tool list (entering at the other replica).
    let grown = send(
        &b.url,
        "tools/call",
        Some("t_grow"),
        "2026-07-28",
        json!({"name": "t_grow"}),
        "listener",
    )
    .await;
    assert_eq!(grown.status(), StatusCode::OK);
    let grown: Value = grown.json().await.unwrap_or(Value::Null);
    assert_eq!(grown["result"]["content"][0]["text"], "grown", "{grown}");
    let note = events.next_message().await.expect("a list change").data;
    assert_eq!(note["method"], "notifications/tools/list_changed", "{note}");
    assert_eq!(note["params"]["_meta"]["io.modelcontextprotocol/subscriptionId"], 7);
    support::eventually("the grown tool is listed", || async {
        let (_, listed) = post_as(&b.url, "tools/list", "listener").await;
        listed["result"]["tools"].to_string().contains("t_grown")
    })
    .await;
}

async fn post_as(url: &str, method: &str, token: &str) -> (StatusCode, Value) {
    read(send(url, method, None, "2026-07-28", json!({}), token).await).await
}

fn answered(state: &str, key: &str, name: &str) -> Value {
    json!({"name": "t_ask", "arguments": {}, "requestState": state,
           "inputResponses": {key: {"action": "accept", "content": {"name": name}}}})
}

/// The input request's key and the state of a call that paused (asserted).
fn paused(reply: &Value) -> (String, String) {
    let result = &reply["result"];
    assert_eq!(result["resultType"], "input_required", "{reply}");
    let key = result["inputRequests"]
        .as_object()
        .unwrap()
        .keys()
        .next()
        .unwrap()
        .clone();
    (key, result["requestState"].as_str().unwrap().to_owned())
}

/// A raw stateless `t_ask` call as `token`, declaring it can be asked for input.
async fn ask(url: &str, token: &str, params: Value) -> (StatusCode, Value) {
    let capabilities = json!({"elicitation": {}});
    read(
        send_as(
            url,
            "tools/call",
            Some("t_ask"),
            "2026-07-28",
            (params, capabilities),
            Some(token),
        )
        .await,
    )
    .await
}

#[tokio::test]
async fn a_backends_elicitation_becomes_an_input_request_resumed_from_either_replica() {
    let redis = RedisServer::start().await;
    let backend = TestBackend::start("t").await;
    let (a, b) = pair(&backend, &redis).await;

    let (status, first) = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        ask(&a.url, "asker", json!({"name": "t_ask", "arguments": {}})),
    )
    .await
    .expect("the first call answers at once");
    assert_eq!(status, StatusCode::OK, "{first}");
    let result = &first["result"];
    assert_eq!(result["resultType"], "input_required", "{first}");
    let (key, request) = result["inputRequests"].as_object().unwrap().iter().next().unwrap();
    assert_eq!(request["method"], "elicitation/create");
    assert_eq!(request["params"]["message"], "your name?");
    let state = result["requestState"].as_str().unwrap().to_owned();
    assert!(!state.contains("your name"), "the state never carries what was asked");

    // A forged state and another caller's use of this one: refused, nothing resumed.
    let (_, forged) = ask(&b.url, "asker", answered(&format!("{state}x"), key, "Eve")).await;
    assert_eq!(forged["error"]["code"], -32602, "{forged}");
    let (_, stolen) = ask(&b.url, "someone-else", answered(&state, key, "Eve")).await;
    assert_eq!(stolen["error"]["code"], -32602, "{stolen}");

    // The answer, entering at the other replica: the paused call goes on.
    let (status, done) = ask(&b.url, "asker", answered(&state, key, "Ada")).await;
    assert_eq!(status, StatusCode::OK, "{done}");
    assert_eq!(done["result"]["resultType"], "complete", "{done}");
    let text = done["result"]["content"][0]["text"].as_str().unwrap_or_default();
    assert!(text.contains("Ada"), "{done}");
    // A replayed state resumes nothing.
    let (_, replayed) = ask(&a.url, "asker", answered(&state, key, "Ada")).await;
    assert_eq!(replayed["error"]["code"], -32602, "{replayed}");
}

#[tokio::test]
async fn the_python_sdk_answers_an_elicitation_through_vmcp() {
    let redis = RedisServer::start().await;
    let backend = TestBackend::start("t").await;
    let (a, _b) = pair(&backend, &redis).await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/clients/python_elicit_client.py");
    let output = tokio::process::Command::new(support::deps::python())
        .args([script, &a.url, "py-asker", "Grace"])
        .output()
        .await
        .expect("python runs");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let seen: Value = serde_json::from_slice(&output.stdout).expect("JSON");
    assert_eq!(seen["version"], "2026-07-28", "{seen}");
    assert_eq!(seen["asked"], json!(["your name?"]));
    assert!(seen["text"].as_str().unwrap().contains("Grace"), "{seen}");
}

#[tokio::test]
async fn a_question_the_client_cannot_answer_is_minus_32021() {
    let redis = RedisServer::start().await;
    let backend = TestBackend::start("t").await;
    let (a, _b) = pair(&backend, &redis).await;
    // The pool is opened by a request that can be asked things...
    let (_, first) = ask(&a.url, "mixed", json!({"name": "t_ask", "arguments": {}})).await;
    assert_eq!(first["result"]["resultType"], "input_required", "{first}");
    // ...a later request of the same caller declares no elicitation, and its backend asks.
    let params = json!({"name": "t_ask", "arguments": {}});
    let answer = send(&a.url, "tools/call", Some("t_ask"), "2026-07-28", params, "mixed").await;
    let answer: Value = answer.json().await.unwrap();
    assert_eq!(answer["error"]["code"], -32021, "{answer}");
    assert_eq!(
        answer["error"]["data"]["requiredCapabilities"],
        json!({"elicitation": {}})
    );
}

/// The replica a `requestState` names (`r` in its sealed JSON).
fn holder_of(state: &str) -> String {
    use base64::Engine;
    let body = state.split('.').next().unwrap_or_default();
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(body)
        .expect("base64url");
    let state: Value = serde_json::from_slice(&json).expect("JSON");
    state["r"].as_str().expect("a replica").to_owned()
}

#[tokio::test]
async fn a_paused_call_is_resumed_where_it_waits_after_its_pool_moved() {
    let redis = RedisServer::start().await;
    let backend = TestBackend::start("t").await;
    let (mut a, mut b) = pair(&backend, &redis).await;
    let (_, first) = ask(&a.url, "mover", json!({"name": "t_ask", "arguments": {}})).await;
    let (key, state) = paused(&first);

    // The replica holding the paused call starts draining (a rollout): it
    // leaves the ring, so the caller's pool now belongs to the other one,
    // but it still serves what it holds.
    let holder = holder_of(&state);
    let (held, other, other_id) = if holder == "a" { (&a, &b, "b") } else { (&b, &a, "a") };
    let member = |id: &str, r: &Replica| Member::new(id, r.base.trim_start_matches("http://"));
    for replica in [&a, &b] {
        replica
            .app
            .membership
            .set_with_draining(vec![member(other_id, other)], vec![member(&holder, held)]);
    }

    // The answer enters at the pool's new owner: it reaches the paused call.
    let (status, done) = ask(&other.url, "mover", answered(&state, &key, "Ada")).await;
    assert_eq!(status, StatusCode::OK, "{done}");
    assert_eq!(done["result"]["resultType"], "complete", "{done}");
    let text = done["result"]["content"][0]["text"].as_str().unwrap_or_default();
    assert!(text.contains("Ada"), "{done}");

    // A call paused on a replica that is then gone: its retry is told so.
    let (_, paused) = ask(&other.url, "mover", json!({"name": "t_ask", "arguments": {}})).await;
    let state = paused["result"]["requestState"].as_str().expect("paused").to_owned();
    assert_eq!(holder_of(&state), other_id, "the pool's owner now holds it");
    let (gone, survivor, survivor_id) = if other_id == "a" {
        (&mut a, &b, "b")
    } else {
        (&mut b, &a, "a")
    };
    // Once its listener closes nobody can answer: the paused call ends, and
    // does not hold the replica's exit until the shutdown deadline (25 s).
    tokio::time::timeout(std::time::Duration::from_secs(12), gone.shutdown())
        .await
        .expect("the drain (5 s) is not held up by a paused call");
    survivor.app.membership.set(vec![member(survivor_id, survivor)]);
    let (_, lost) = ask(&survivor.url, "mover", answered(&state, &key, "Ada")).await;
    assert_eq!(lost["error"]["code"], -32602, "{lost}");
    let message = lost["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("start the call again"), "{lost}");
}

/// A call resumed while its replica drains, whose backend asks again after
/// the listener closed: nobody can answer it any more, so it ends at once
/// (an error says to start again) rather than waiting, paused, until the
/// shutdown deadline.
#[tokio::test]
async fn a_call_that_asks_again_after_the_listener_closed_ends_at_once() {
    let backend = TestBackend::start("t").await;
    let mut vmcp = Replica::start(&support::config_yaml(
        &[("t", &backend.url)],
        "http:\n  drain_delay: 1s\n  shutdown_timeout: 30s\n",
    ))
    .await;
    let twice = json!({"name": "t_ask", "arguments": {"again_after_ms": 1500}});
    let (_, first) = ask(&vmcp.url, "asker", twice).await;
    let (key, state) = paused(&first);
    let url = vmcp.url.clone();
    let started = std::time::Instant::now();
    let answer = async move {
        // Answered while the replica drains (its listener still open); the
        // backend asks again 1.5 s later, after the listener closed at 1 s.
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        let mut params = answered(&state, &key, "Ada");
        params["arguments"] = json!({"again_after_ms": 1500});
        ask(&url, "asker", params).await
    };
    let (stopped, (status, again)) = tokio::join!(
        tokio::time::timeout(std::time::Duration::from_secs(15), vmcp.shutdown()),
        answer
    );
    assert!(stopped.is_ok(), "the shutdown ends");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(8),
        "not held until the deadline: {:?}",
        started.elapsed()
    );
    assert_eq!(status, StatusCode::OK, "{again}");
    let message = again["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("start the call again"), "{again}");
}
