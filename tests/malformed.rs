//! Bad input of every kind gets the right JSON-RPC code and HTTP status, and
//! leaves the session (and the replica) working.

mod support;

use http::StatusCode;
use serde_json::json;
use support::{config_yaml, Replica, TestBackend};

async fn setup() -> (TestBackend, Replica, support::Client) {
    let backend = TestBackend::start("b").await;
    let replica = Replica::start(&config_yaml(&[("b", &backend.url)], "http:\n  max_body_bytes: 65536\n")).await;
    let mut client = replica.client();
    client.initialize().await;
    (backend, replica, client)
}

#[tokio::test]
async fn json_rpc_errors_have_their_codes() {
    let (_b, _r, client) = setup().await;
    let parse = client.post_raw("{not json", &[]).await;
    assert_eq!((parse.status, parse.error_code()), (StatusCode::BAD_REQUEST, -32700));
    assert_eq!(parse.body["id"], serde_json::Value::Null);

    let unknown = client.request("tools/explode", json!({})).await;
    assert_eq!((unknown.status, unknown.error_code()), (StatusCode::OK, -32601));
    assert_eq!(unknown.body["id"], 1);

    let bad_params = client.request("tools/call", json!({"name": 42})).await;
    assert_eq!(bad_params.error_code(), -32602);
    let bad_args = client
        .request("tools/call", json!({"name": "b_echo", "arguments": "nope"}))
        .await;
    assert_eq!(bad_args.error_code(), -32602);

    for (body, why) in [
        (json!({"jsonrpc": "1.0", "id": 1, "method": "ping"}), "wrong version"),
        (json!({"id": 1, "method": "ping"}), "no jsonrpc"),
        (json!({"jsonrpc": "2.0", "id": {"a": 1}, "method": "ping"}), "object id"),
        (json!({"jsonrpc": "2.0", "id": 1, "method": 7}), "numeric method"),
        (
            json!({"jsonrpc": "2.0", "id": 1, "method": "ping", "params": [1, 2]}),
            "array params",
        ),
        (json!("just a string"), "not an object"),
        (json!([]), "empty batch"),
    ] {
        let reply = client.post_raw(body.to_string(), &[]).await;
        assert_eq!(
            (reply.status, reply.error_code()),
            (StatusCode::BAD_REQUEST, -32600),
            "{why}"
        );
    }
    // The session is unharmed.
    assert_eq!(
        client.call_tool("b_echo", json!({"message": "still"})).await.text(),
        "b:still"
    );
}

#[tokio::test]
async fn transport_errors_have_their_statuses() {
    let (_b, replica, client) = setup().await;
    let no_session = support::Client::new(&replica.url);
    let reply = no_session.request("tools/list", json!({})).await;
    assert_eq!((reply.status, reply.error_code()), (StatusCode::BAD_REQUEST, -32600));

    let mut stranger = support::Client::new(&replica.url);
    stranger.session = Some("0123456789abcdef0123456789abcdef01234567".into());
    assert_eq!(
        stranger.request("tools/list", json!({})).await.status,
        StatusCode::NOT_FOUND
    );
    stranger.session = Some("bad id with spaces".into());
    assert_eq!(stranger.request("ping", json!({})).await.status, StatusCode::NOT_FOUND);
    assert_eq!(stranger.delete().await, StatusCode::NOT_FOUND);
    assert_eq!(
        support::Client::new(&replica.url).delete().await,
        StatusCode::BAD_REQUEST
    );

    let version = client
        .post_raw(
            json!({"jsonrpc": "2.0", "id": 1, "method": "ping"}).to_string(),
            &[("mcp-protocol-version", "1999-01-01")],
        )
        .await;
    assert_eq!(
        (version.status, version.error_code()),
        (StatusCode::BAD_REQUEST, -32600)
    );

    let too_big = format!(
        "{{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"ping\",\"params\":{{\"pad\":\"{}\"}}}}",
        "x".repeat(70_000)
    );
    assert_eq!(
        client.post_raw(too_big, &[]).await.status,
        StatusCode::PAYLOAD_TOO_LARGE
    );

    let http = support::http();
    let plain = http
        .post(&replica.url)
        .header("content-type", "text/plain")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(plain.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let accept = http
        .post(&replica.url)
        .header("content-type", "application/json")
        .header("accept", "text/html")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(accept.status(), StatusCode::NOT_ACCEPTABLE);
    let put = http.put(&replica.url).send().await.unwrap();
    assert_eq!(put.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(
        http.get(format!("{}/nope", replica.base))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::NOT_FOUND
    );

    // Invalid UTF-8 and binary garbage.
    let garbage = client.post_raw(vec![0xff, 0xfe, 0x00, 0x01], &[]).await;
    assert_eq!(
        (garbage.status, garbage.error_code()),
        (StatusCode::BAD_REQUEST, -32700)
    );
    assert_eq!(
        client.call_tool("b_echo", json!({"message": "alive"})).await.text(),
        "b:alive"
    );
}

#[tokio::test]
async fn notifications_batches_and_sse_answers() {
    let (_b, _r, client) = setup().await;
    assert_eq!(client.notify("notifications/cancelled").await, StatusCode::ACCEPTED);
    assert_eq!(client.notify("notifications/whatever").await, StatusCode::ACCEPTED);
    // An answer to a request nobody sent cannot be accepted (the spec's 400).
    let response = client
        .post_raw(json!({"jsonrpc": "2.0", "id": 99, "result": {}}).to_string(), &[])
        .await;
    assert_eq!(response.status, StatusCode::BAD_REQUEST);

    let batch = json!([
        {"jsonrpc": "2.0", "id": 1, "method": "ping"},
        {"jsonrpc": "2.0", "method": "notifications/initialized"},
        {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "b_echo", "arguments": {"message": "in batch"}}},
        {"jsonrpc": "2.0", "id": 3, "method": "nope"},
    ]);
    let reply = client.post_raw(batch.to_string(), &[]).await;
    let answers = reply.body.as_array().expect("batch answer");
    assert_eq!(answers.len(), 3);
    assert_eq!(answers[1]["result"]["content"][0]["text"], "b:in batch");
    assert_eq!(answers[2]["error"]["code"], -32601);

    // A client that accepts only SSE gets the answer as one SSE event.
    let http = support::http();
    let resp = http
        .post(&client.url)
        .header("content-type", "application/json")
        .header("accept", "text/event-stream")
        .header("mcp-session-id", client.session.as_deref().unwrap())
        .body(json!({"jsonrpc": "2.0", "id": 6, "method": "ping"}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let text = resp.text().await.unwrap();
    assert!(text.starts_with("event: message\ndata: "), "{text}");
    assert!(text.contains("\"id\":6"));
}
