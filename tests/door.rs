//! Front-door limits on real sockets: clients that trickle their headers or
//! their body, idle keep-alive connections, oversized batches and deep nesting.

mod support;

use std::time::{Duration, Instant};

use http::StatusCode;
use serde_json::{json, Value};
use support::{config_yaml, Replica, TestBackend};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Far above the 300 ms deadlines the tests configure, far below "forever".
const PATIENCE: Duration = Duration::from_secs(5);

fn addr(replica: &Replica) -> String {
    replica.base.trim_start_matches("http://").to_owned()
}

/// Reads until the server closes the connection (or `PATIENCE` runs out, a
/// failure); returns what was received.
async fn read_until_closed(stream: &mut TcpStream) -> String {
    let mut received = Vec::new();
    let mut buf = [0u8; 4096];
    let started = Instant::now();
    loop {
        let left = PATIENCE.saturating_sub(started.elapsed());
        match tokio::time::timeout(left, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return String::from_utf8_lossy(&received).into_owned(),
            Ok(Ok(n)) => received.extend_from_slice(&buf[..n]),
            Err(_) => panic!(
                "connection still open after {PATIENCE:?}; received: {}",
                String::from_utf8_lossy(&received)
            ),
        }
    }
}

async fn replica_with(http: &str) -> (TestBackend, Replica) {
    let backend = TestBackend::start("b").await;
    let replica = Replica::start(&config_yaml(&[("b", &backend.url)], &format!("http:\n{http}"))).await;
    (backend, replica)
}

#[tokio::test]
async fn a_client_trickling_its_headers_is_disconnected() {
    let (_b, replica) = replica_with("  header_read_timeout: 300ms\n").await;
    let mut stream = TcpStream::connect(addr(&replica)).await.expect("connect");
    stream
        .write_all(b"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: appl")
        .await
        .expect("write");
    let started = Instant::now();
    read_until_closed(&mut stream).await;
    assert!(started.elapsed() < PATIENCE, "closed after {:?}", started.elapsed());
    // Everyone else is still served.
    assert_eq!(
        support::http()
            .get(format!("{}/healthz", replica.base))
            .send()
            .await
            .expect("healthz")
            .status(),
        200
    );
}

/// Reads one answer (head and `Content-Length` body) off a kept-alive connection.
async fn read_answer(stream: &mut TcpStream) -> String {
    let mut received = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let text = String::from_utf8_lossy(&received).into_owned();
        if let Some(end) = text.find("\r\n\r\n") {
            let length = text[..end]
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().to_owned())
                })
                .and_then(|v| v.parse::<usize>().ok())
                .unwrap_or(0);
            if received.len() >= end + 4 + length {
                return text;
            }
        }
        match tokio::time::timeout(PATIENCE, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => panic!("connection closed; received: {text:?}"),
            Ok(Ok(n)) => received.extend_from_slice(&buf[..n]),
            Err(_) => panic!("no answer within {PATIENCE:?}; received: {text:?}"),
        }
    }
}

#[tokio::test]
async fn a_keep_alive_connection_outlives_the_header_deadline() {
    // Load balancers keep idle connections to their upstreams for 60 s (ALB,
    // nginx) to 600 s (Google's) and reuse them. A replica that closed them
    // sooner raced each reuse: a request written as the close crossed it was
    // lost (a 502 for a call that may not be retried).
    let (_b, replica) = replica_with("  header_read_timeout: 300ms\n  idle_timeout: 10s\n").await;
    let mut stream = TcpStream::connect(addr(&replica)).await.expect("connect");
    for _ in 0..3 {
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            .await
            .expect("write");
        let answer = read_answer(&mut stream).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        tokio::time::sleep(Duration::from_millis(900)).await;
    }
    // A head that starts and then trickles is still cut at the header
    // deadline, counted from its first byte, not at the idle timeout.
    stream.write_all(b"GET /healthz HTTP/1.1\r\nHo").await.expect("write");
    let started = Instant::now();
    read_until_closed(&mut stream).await;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "closed after {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_connection_that_sends_nothing_is_closed_at_the_header_deadline() {
    let (_b, replica) = replica_with("  header_read_timeout: 300ms\n  idle_timeout: 60s\n").await;
    let mut stream = TcpStream::connect(addr(&replica)).await.expect("connect");
    let started = Instant::now();
    assert_eq!(read_until_closed(&mut stream).await, "");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "closed after {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed() {
    let (_b, replica) = replica_with("  header_read_timeout: 300ms\n  idle_timeout: 600ms\n").await;
    let mut stream = TcpStream::connect(addr(&replica)).await.expect("connect");
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .await
        .expect("write");
    let received = read_until_closed(&mut stream).await;
    assert!(received.starts_with("HTTP/1.1 200"), "{received}");
}

#[tokio::test]
async fn a_body_that_does_not_arrive_in_time_gets_408() {
    let (_b, replica) = replica_with("  body_read_timeout: 300ms\n").await;
    let mut stream = TcpStream::connect(addr(&replica)).await.expect("connect");
    let head = "POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
                Accept: application/json\r\nContent-Length: 1000\r\n\r\n{\"jsonrpc\"";
    stream.write_all(head.as_bytes()).await.expect("write");
    let received = read_until_closed(&mut stream).await;
    assert!(received.starts_with("HTTP/1.1 408"), "{received}");
    let body = received.split("\r\n\r\n").nth(1).unwrap_or_default();
    let body: Value = serde_json::from_str(body).expect("a JSON-RPC error body");
    assert_eq!(body["error"]["code"], -32600, "{body}");
}

#[tokio::test]
async fn an_oversized_batch_is_refused_whole() {
    let (backend, replica) = replica_with("  max_batch: 4\n").await;
    let mut client = replica.client();
    client.initialize().await;
    let call = |i: usize| {
        json!({"jsonrpc": "2.0", "id": i, "method": "tools/call",
               "params": {"name": "b_echo", "arguments": {"message": "x"}}})
    };
    let five: Vec<Value> = (0..5).map(call).collect();
    let reply = client.post_raw(Value::Array(five).to_string(), &[]).await;
    assert_eq!((reply.status, reply.error_code()), (StatusCode::BAD_REQUEST, -32600));
    let message = reply.body["error"]["message"].as_str().unwrap_or_default();
    assert_eq!(message, "batch of 5 messages exceeds max_batch 4");
    assert_eq!(backend.stats.calls.load(std::sync::atomic::Ordering::SeqCst), 0);

    let four: Vec<Value> = (0..4).map(call).collect();
    let reply = client.post_raw(Value::Array(four).to_string(), &[]).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.body.as_array().map(Vec::len), Some(4), "{}", reply.body);
    assert_eq!(backend.stats.calls.load(std::sync::atomic::Ordering::SeqCst), 4);
}

#[tokio::test]
async fn deep_nesting_is_a_parse_error_not_a_stack_overflow() {
    let (_b, replica) = replica_with("  max_body_bytes: 4194304\n").await;
    let mut client = replica.client();
    client.initialize().await;
    for depth in [129, 10_000, 1_000_000] {
        let body = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
        let reply = client.post_raw(body, &[]).await;
        assert_eq!(
            (reply.status, reply.error_code()),
            (StatusCode::BAD_REQUEST, -32700),
            "depth {depth}"
        );
    }
    // Nesting within serde_json's limit travels to the backend and back.
    let mut deep = json!("bottom");
    for _ in 0..100 {
        deep = json!([deep]);
    }
    let reply = client
        .call_tool("b_echo", json!({"message": "deep", "deep": deep}))
        .await;
    assert_eq!(reply.text(), "b:deep");
}

#[tokio::test]
async fn a_refusal_waits_for_the_body_and_keeps_the_connection() {
    let (_b, replica) = replica_with("  max_body_bytes: 4194304\n").await;
    // Refused on its headers (415) with the body not yet there. Answered at
    // once, the connection had to close with the body unread, so the
    // client's body writes met a reset that could destroy the 415 before the
    // client read it (seen by the hostile-input test as broken pipes).
    let mut stream = TcpStream::connect(addr(&replica)).await.expect("connect");
    let head = "POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: text/plain\r\n\
                Accept: application/json\r\nContent-Length: 10\r\n\r\n";
    stream.write_all(head.as_bytes()).await.expect("write head");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let _ = stream.write_all(b"0123456789").await;
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(PATIENCE, stream.read(&mut buf))
        .await
        .expect("answer")
        .unwrap_or(0);
    let first = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(first.starts_with("HTTP/1.1 415"), "{first}");
    // The same connection carries the next request.
    let _ = stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .await;
    let second = read_until_closed(&mut stream).await;
    assert!(
        second.starts_with("HTTP/1.1 200"),
        "connection not reusable: {second:?}"
    );
}

#[tokio::test]
async fn at_max_connections_idle_ones_make_room_and_busy_ones_are_kept() {
    // A client opening connections without end (a leak, a flood) must not
    // take every file descriptor: then vmcp could reach no backend. Idle
    // connections make room; one serving or sending a request never does.
    let backend = TestBackend::start("b").await;
    let yaml = config_yaml(
        &[("b", &backend.url)],
        "http:\n  max_connections: 4\n  header_read_timeout: 30s\n",
    );
    // Its readiness probe leaves one idle connection: a place taken.
    let vmcp = support::process::VmcpProcess::start(&yaml).await;
    let addr = format!("127.0.0.1:{}", vmcp.port);
    let half_head = b"GET /healthz HTTP/1.1\r\nHo";
    let mut busy = Vec::new();
    for _ in 0..3 {
        let mut stream = TcpStream::connect(&addr).await.expect("connect");
        stream.write_all(half_head).await.expect("write");
        busy.push(stream);
    }
    // At the budget: the idle connection makes room for a new one.
    let mut fresh = TcpStream::connect(&addr).await.expect("connect");
    fresh
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    let answer = read_answer(&mut fresh).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    // Every connection busy: a new one is closed at once, unanswered.
    fresh.write_all(half_head).await.expect("write");
    let mut refused = TcpStream::connect(&addr).await.expect("connect");
    let _ = refused.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(read_until_closed(&mut refused).await, "", "refused without an answer");
    // The busy ones were kept: each finishes its request.
    busy.push(fresh);
    for mut stream in busy {
        stream
            .write_all(b"st: x\r\nConnection: close\r\n\r\n")
            .await
            .expect("write");
        let answer = read_until_closed(&mut stream).await;
        assert!(
            answer.starts_with("HTTP/1.1 200"),
            "a busy connection was closed: {answer:?}"
        );
    }
    let closed = "vmcp_http_connections_closed_total{reason=";
    assert!(vmcp.metric(&format!("{closed}\"reclaimed\"}}")).await >= 1.0);
    assert!(vmcp.metric(&format!("{closed}\"refused\"}}")).await >= 1.0);
}
