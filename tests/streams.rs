//! What backends say on their own reaches the client through vmcp as if it
//! talked to the backend: progress and logs on the call's stream, the
//! client's cancellation on the backend, list changes refreshed and
//! announced once, resource subscriptions, elicitations answered through
//! another replica, and a GET stream that resumes with `Last-Event-ID`.

mod support;

use std::sync::atomic::Ordering;
use std::time::Duration;

use http::StatusCode;
use serde_json::{json, Value};
use support::events::Events;
use support::process::VmcpProcess;
use support::redis::RedisServer;
use support::{config_yaml, deps, eventually, Client, Replica, TestBackend};

const LATEST: &str = "2025-11-25";

async fn one_backend() -> (TestBackend, Replica, Client) {
    let backend = TestBackend::start("a").await;
    let replica = Replica::start(&config_yaml(&[("a", &backend.url)], "")).await;
    let mut client = replica.client();
    client.initialize_as(LATEST, json!({"elicitation": {}})).await;
    (backend, replica, client)
}

/// Config of replica `me` of a pair (`a`, `b` on `ports`) sharing Redis, in front of `backend`.
fn pair_config(redis: &RedisServer, backend: &str, ports: (u16, u16), me: &str, extra: &str) -> String {
    config_yaml(
        &[("a", backend)],
        &format!(
            "replica_id: {me}\nstore:\n  kind: redis\n  redis: {{ url: \"{}\" }}\nmembership:\n  members: {{ a: \"127.0.0.1:{}\", b: \"127.0.0.1:{}\" }}\naffinity:\n  hop_key: streams-test-hop-key-0123\n{extra}",
            redis.url(),
            ports.0,
            ports.1
        ),
    )
}

fn call(id: Value, tool: &str, meta: Value) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
           "params": {"name": tool, "arguments": {}, "_meta": meta}})
}

/// A `progress` call from a client that accepts only JSON answers (so what
/// the backend relays comes on the GET stream).
async fn json_only_progress_call(client: &Client) -> reqwest::Response {
    client
        .http()
        .post(&client.url)
        .header("content-type", "application/json")
        .header("accept", "application/json")
        .header("mcp-session-id", client.session.as_deref().unwrap())
        .body(call(json!(1), "a_progress", json!({"progressToken": 5})).to_string())
        .send()
        .await
        .unwrap()
}

/// The first message of `method` on a GET stream.
async fn first_of(stream: &mut Events, method: &str) -> Value {
    loop {
        let event = stream.next_message().await.unwrap_or_else(|| panic!("no {method}"));
        if event.data["method"] == method {
            return event.data;
        }
    }
}

/// The log line the `progress` tool writes: the backend sends it outside the
/// call (rmcp puts it on its GET stream), so it may come on either stream.
async fn log_line(notes: &[Value], stream: &mut Events) -> Value {
    match notes.iter().find(|n| n["method"] == "notifications/message") {
        Some(note) => note.clone(),
        None => first_of(stream, "notifications/message").await,
    }
}

#[tokio::test]
async fn progress_and_logs_come_back_on_the_calls_stream() {
    let (backend, _replica, client) = one_backend().await;
    let set = client.request("logging/setLevel", json!({"level": "debug"})).await;
    assert_eq!(set.result(), &json!({}));
    assert_eq!(backend.stats.log_level.lock().unwrap().as_deref(), Some("debug"));
    let mut stream = client.get_events(None).await;

    let mut events = client
        .post_events(call(json!(7), "a_progress", json!({"progressToken": "tok-1"})))
        .await;
    assert!(events.content_type.starts_with("text/event-stream"));
    let (notes, response) = events.until_response().await;
    let progress: Vec<f64> = notes
        .iter()
        .filter(|n| n["method"] == "notifications/progress")
        .inspect(|n| assert_eq!(n["params"]["progressToken"], "tok-1"))
        .filter_map(|n| n["params"]["progress"].as_f64())
        .collect();
    assert_eq!(progress, [1.0, 2.0, 3.0]);
    assert_eq!(response["id"], 7);
    assert_eq!(response["result"]["content"][0]["text"], "a done");
    let log = log_line(&notes, &mut stream).await;
    assert_eq!(log["params"]["logger"], "a/worker", "log lines name their backend");
    assert_eq!(log["params"]["data"], "half way");
}

#[tokio::test]
async fn a_json_only_client_gets_relayed_messages_on_its_get_stream() {
    let (_backend, _replica, client) = one_backend().await;
    let mut stream = client.get_events(None).await;
    let answer = json_only_progress_call(&client).await;
    assert_eq!(answer.headers()["content-type"], "application/json");
    let body: Value = answer.json().await.unwrap();
    assert_eq!(body["result"]["content"][0]["text"], "a done");
    let progress = first_of(&mut stream, "notifications/progress").await;
    assert_eq!(progress["params"]["progressToken"], 5);
}

#[tokio::test]
async fn a_new_get_stream_replaces_the_sessions_previous_one() {
    // The spec forbids sending a message on two streams, and a client whose
    // stream died unseen (a NAT forgot it) must get a new one at once: the
    // newest stream is the session's, the one before it ends.
    let (_backend, _replica, client) = one_backend().await;
    let mut old = client.get_events(None).await;
    let mut new = client.get_events(None).await;
    assert!(
        old.ends_within(Duration::from_secs(5)).await,
        "the older stream is still open"
    );
    let answer = json_only_progress_call(&client).await;
    assert_eq!(answer.status(), 200);
    let progress = first_of(&mut new, "notifications/progress").await;
    assert_eq!(progress["params"]["progressToken"], 5);
}

#[tokio::test]
async fn the_clients_cancellation_reaches_the_backend() {
    let (backend, _replica, client) = one_backend().await;
    let waiting = {
        let client = client.via(&client.url);
        tokio::spawn(async move {
            client
                .post_raw(call(json!("w-1"), "a_wait", json!({})).to_string(), &[])
                .await
        })
    };
    eventually("the backend runs the call", || async {
        backend.stats.calls.load(Ordering::SeqCst) == 1
    })
    .await;
    let cancel = json!({"jsonrpc": "2.0", "method": "notifications/cancelled",
                        "params": {"requestId": "w-1", "reason": "user"}});
    assert_eq!(client.send(cancel).await, StatusCode::ACCEPTED);
    let reply = waiting.await.unwrap();
    assert_eq!(reply.error_code(), -32800, "{reply:?}");
    eventually("the backend saw the cancellation", || async {
        backend.stats.cancelled.load(Ordering::SeqCst) == 1
    })
    .await;
}

#[tokio::test]
async fn a_backends_list_change_refreshes_the_aggregate_and_is_announced_once() {
    let (_backend, _replica, client) = one_backend().await;
    let mut stream = client.get_events(None).await;
    let priming = stream
        .next()
        .await
        .expect("a 2025-11-25 stream starts with a priming event");
    assert!(priming.data.is_null() && priming.id.is_some());
    assert!(!client
        .list_names("tools/list", "tools")
        .await
        .contains(&"a_grown".to_owned()));

    assert_eq!(client.call_tool("a_grow", json!({})).await.text(), "grown");
    let note = stream.next_message().await.expect("list change announced");
    assert_eq!(note.data["method"], "notifications/tools/list_changed");
    assert!(client
        .list_names("tools/list", "tools")
        .await
        .contains(&"a_grown".to_owned()));
    assert_eq!(client.call_tool("a_grown", json!({})).await.text(), "I am new");
    let again = tokio::time::timeout(Duration::from_millis(500), stream.next_message()).await;
    assert!(again.is_err(), "announced once, got {again:?}");

    // A client that lost its stream resumes after the last id it saw.
    let mut resumed = client.get_events(priming.id.as_deref()).await;
    let replayed = resumed.next_message().await.expect("missed event replayed");
    assert_eq!((replayed.id, replayed.data), (note.id, note.data));
}

#[tokio::test]
async fn subscriptions_route_by_uri_and_updates_come_back() {
    let (a, b) = (TestBackend::start("a").await, TestBackend::start("b").await);
    let replica = Replica::start(&config_yaml(&[("a", &a.url), ("b", &b.url)], "")).await;
    let mut client = replica.client();
    client.initialize_as(LATEST, json!({})).await;
    let mut stream = client.get_events(None).await;

    let reply = client
        .request("resources/subscribe", json!({"uri": "mem://b/info"}))
        .await;
    assert_eq!(reply.result(), &json!({}));
    assert_eq!(*b.stats.subscribed.lock().unwrap(), ["mem://b/info"]);
    assert!(a.stats.subscribed.lock().unwrap().is_empty());
    let update = stream.next_message().await.expect("update relayed");
    assert_eq!(update.data["method"], "notifications/resources/updated");
    assert_eq!(update.data["params"]["uri"], "mem://b/info");
}

#[tokio::test]
async fn capabilities_follow_the_backends() {
    let backend = TestBackend::start("a").await;
    let replica = Replica::start(&config_yaml(&[("a", &backend.url)], "")).await;
    let init = replica.client().initialize().await;
    let caps = &init.result()["capabilities"];
    assert!(caps["logging"].is_object());
    assert_eq!(caps["resources"]["subscribe"], true);
}

#[tokio::test]
async fn an_elicitation_is_answered_through_another_replica() {
    let redis = RedisServer::start().await;
    let backend = TestBackend::start("a").await;
    let ports = (deps::free_port(), deps::free_port());
    let ra = Replica::start_on(ports.0, &pair_config(&redis, &backend.url, ports, "a", "")).await;
    let rb = Replica::start_on(ports.1, &pair_config(&redis, &backend.url, ports, "b", "")).await;
    let mut client = ra.client();
    client.initialize_as(LATEST, json!({"elicitation": {}})).await;

    let mut events = client.post_events(call(json!(1), "a_ask", json!({}))).await;
    let question = events.next_message().await.expect("the backend's question is relayed");
    assert_eq!(question.data["method"], "elicitation/create");
    let id = question.data["id"].clone();
    let answer = json!({"jsonrpc": "2.0", "id": id, "result": {"action": "accept", "content": {"name": "Ada"}}});
    assert_eq!(client.via(&rb.url).send(answer).await, StatusCode::ACCEPTED);
    let (_, response) = events.until_response().await;
    assert_eq!(response["result"]["content"][0]["text"], r#"a:{"name":"Ada"}"#);
    assert_eq!(rb.metric("vmcp_requests_forwarded_total{outcome=\"ok\"}"), 1.0);
}

/// Two replica processes on Redis; a client whose GET stream on `a` saw a
/// priming event, then a list change.
struct HeldStream {
    _redis: RedisServer,
    _backend: TestBackend,
    a: VmcpProcess,
    b: VmcpProcess,
    client: Client,
    stream: Events,
    priming: support::events::Event,
    missed: support::events::Event,
}

async fn hold_a_stream(extra: &str) -> HeldStream {
    let redis = RedisServer::start().await;
    let backend = TestBackend::start("a").await;
    let ports = (deps::free_port(), deps::free_port());
    let a = VmcpProcess::start_on(ports.0, &pair_config(&redis, &backend.url, ports, "a", extra)).await;
    let b = VmcpProcess::start_on(ports.1, &pair_config(&redis, &backend.url, ports, "b", extra)).await;
    let mut client = Client::new(&a.url);
    client.initialize_as(LATEST, json!({})).await;
    let mut stream = client.get_events(None).await;
    let priming = stream.next().await.expect("priming event");
    assert_eq!(client.call_tool("a_grow", json!({})).await.text(), "grown");
    let missed = stream.next_message().await.expect("list change on A's stream");
    HeldStream {
        _redis: redis,
        _backend: backend,
        a,
        b,
        client,
        stream,
        priming,
        missed,
    }
}

#[tokio::test]
async fn a_stream_resumes_on_another_replica_after_its_holder_is_killed() {
    let held = hold_a_stream("").await;
    // A dies; the client comes back through B with the last id it had.
    held.a.kill().await;
    let on_b = held.client.via(&held.b.url);
    let mut resumed = on_b.get_events(held.priming.id.as_deref()).await;
    assert_eq!(resumed.status, StatusCode::OK);
    let replayed = resumed.next_message().await.expect("replayed from the store on B");
    assert_eq!((replayed.id, replayed.data), (held.missed.id, held.missed.data));
    // The session goes on there, with the grown tool.
    assert_eq!(on_b.call_tool("a_grown", json!({})).await.text(), "I am new");
}

#[tokio::test]
async fn a_stream_ended_by_a_draining_replica_resumes_on_the_new_owner() {
    let mut held = hold_a_stream("http:\n  drain_delay: 200ms\n").await;
    // SIGTERM: A ends its streams (with `retry`) and goes away.
    held.a.signal_term();
    while held.stream.next().await.is_some() {}
    held.a.wait().await;
    let mut resumed = held
        .client
        .via(&held.b.url)
        .get_events(held.priming.id.as_deref())
        .await;
    let replayed = resumed.next_message().await.expect("replayed on B");
    assert_eq!((replayed.id, replayed.data), (held.missed.id, held.missed.data));
}

#[tokio::test]
async fn a_broken_call_stream_is_resumed_with_last_event_id() {
    let (_backend, _replica, client) = one_backend().await;
    let mut events = client
        .post_events(call(json!(9), "a_progress", json!({"progressToken": "t"})))
        .await;
    let priming = events.next().await.expect("priming event first");
    assert!(priming.data.is_null(), "{priming:?}");
    let first = events.next_message().await.expect("first progress");
    assert_eq!(first.data["params"]["progress"].as_f64(), Some(1.0));
    drop(events); // the connection breaks

    let mut resumed = client.get_events(first.id.as_deref()).await;
    let (notes, response) = resumed.until_response().await;
    let progress: Vec<f64> = notes.iter().filter_map(|n| n["params"]["progress"].as_f64()).collect();
    assert_eq!(progress, [2.0, 3.0], "what followed the last seen event, once");
    assert_eq!(response["id"], 9);
    assert_eq!(response["result"]["content"][0]["text"], "a done");
    assert!(
        resumed.next().await.is_none(),
        "the resumed stream ends with the response"
    );
}
