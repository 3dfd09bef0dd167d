//! A backend whose answer is too big (`session.max_response_bytes`): the
//! call fails with -32603 naming the bound, vmcp reads no more of it and
//! holds no more than the bound, and the backend stays healthy for every
//! other call and session. Against a real MCP server (its answers are SSE
//! streams) and a hostile one that streams hundreds of megabytes as one JSON
//! body or as one endless SSE event.

mod support;

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use futures_util::StreamExt;
use http::{Request, Response, StatusCode};
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use support::{config_yaml, Replica, TestBackend};

const BOUND: usize = 64 * 1024;

fn bounded(backends: &[(&str, &str)]) -> String {
    config_yaml(backends, &format!("session:\n  max_response_bytes: {BOUND}\n"))
}

/// The replica's `vmcp_backend_calls_total` of `backend` with `outcome`.
fn calls(replica: &Replica, backend: &str, outcome: &str) -> f64 {
    replica.metric(&format!(
        "vmcp_backend_calls_total{{backend=\"{backend}\",method=\"tools/call\",outcome=\"{outcome}\"}}"
    ))
}

#[tokio::test]
async fn a_real_servers_answer_over_the_bound_fails_that_call_only() {
    let backend = TestBackend::start("t").await;
    let replica = Replica::start(&bounded(&[("t", &backend.url)])).await;
    let mut client = replica.client();
    client.initialize().await;

    // The echo of 100 KB comes back bigger than 64 KiB.
    let reply = client
        .call_tool("t_echo", json!({"message": "x".repeat(100_000)}))
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    assert_eq!(reply.error_code(), -32603, "{reply:?}");
    let message = reply.body["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("backend `t`"), "{message}");
    assert!(message.contains(&format!("larger than {BOUND} bytes")), "{message}");
    assert_eq!(calls(&replica, "t", "too_large"), 1.0);

    // The same backend session answers the next call; the backend is not
    // counted as sick: a new session still gets its tools.
    let reply = client.call_tool("t_echo", json!({"message": "small"})).await;
    assert_eq!(reply.result()["content"][0]["text"], "t:small", "{reply:?}");
    let mut other = replica.client();
    other.initialize().await;
    assert!(other
        .list_names("tools/list", "tools")
        .await
        .contains(&"t_echo".to_owned()));
}

#[tokio::test]
async fn a_backend_may_have_a_bound_of_its_own() {
    let backend = TestBackend::start("t").await;
    let yaml = format!(
        "backends:\n  - name: t\n    url: {url}\n  - name: files\n    url: {url}\n    max_response_bytes: 1048576\nsession:\n  max_response_bytes: {BOUND}\n",
        url = backend.url
    );
    let replica = Replica::start(&yaml).await;
    let mut client = replica.client();
    client.initialize().await;
    let big = json!({"message": "x".repeat(100_000)});
    assert_eq!(client.call_tool("t_echo", big.clone()).await.error_code(), -32603);
    let reply = client.call_tool("files_echo", big).await;
    assert_eq!(reply.text().len(), "t:".len() + 100_000, "{:?}", reply.body["error"]);
}

/// A hostile backend: a Streamable HTTP server whose one tool, `dump`,
/// answers with `size` bytes, as one JSON body or as one SSE event that
/// never ends. It stops producing when its peer goes away, and counts what
/// it managed to send.
struct Hostile {
    url: String,
    sent: Arc<AtomicUsize>,
}

const SIZE: usize = 256 * 1024 * 1024;
const CHUNK: usize = 64 * 1024;

impl Hostile {
    async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}/mcp", listener.local_addr().expect("addr"));
        let sent = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&sent);
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let counter = Arc::clone(&counter);
                let service = hyper::service::service_fn(move |r| answer(r, Arc::clone(&counter)));
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service),
                );
            }
        });
        Self { url, sent }
    }
}

type Body = BoxBody<Bytes, Infallible>;

async fn answer(request: Request<Incoming>, sent: Arc<AtomicUsize>) -> Result<Response<Body>, Infallible> {
    let body = request
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let message: Value = serde_json::from_slice(&body).unwrap_or_default();
    let json = |result: Value| {
        let text = json!({"jsonrpc": "2.0", "id": message["id"], "result": result}).to_string();
        Response::builder()
            .header("content-type", "application/json")
            .header("mcp-session-id", "hostile-1")
            .body(Full::new(Bytes::from(text)).boxed())
            .unwrap_or_default()
    };
    let reply = match message["method"].as_str().unwrap_or_default() {
        "initialize" => json(json!({
            "protocolVersion": "2025-06-18",
            "capabilities": {"tools": {}},
            "serverInfo": {"name": "hostile", "version": "1"},
        })),
        "tools/list" => json(json!({"tools": [{"name": "dump", "inputSchema": {"type": "object"}}]})),
        "tools/call" if message["params"]["arguments"]["as"] == "garbled" => {
            // An event stream that is not UTF-8: the backend is wrong, not unreachable.
            Response::builder()
                .header("content-type", "text/event-stream")
                .body(Full::new(Bytes::from_static(b"event: message\ndata: \xff\xfe\n\n")).boxed())
                .unwrap_or_default()
        }
        "tools/call" => {
            let sse = message["params"]["arguments"]["as"] == "sse";
            let head: &'static [u8] = if sse {
                b"event: message\ndata: {\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{\"x\":\""
            } else {
                b"{\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{\"x\":\""
            };
            // Produced as read: the backend never holds it either.
            let chunks = futures_util::stream::iter(std::iter::once(Bytes::from_static(head)).chain(
                (0..SIZE / CHUNK).map(move |_| {
                    sent.fetch_add(CHUNK, Ordering::Relaxed);
                    Bytes::from(vec![b'x'; CHUNK])
                }),
            ))
            .map(|b| Ok::<_, Infallible>(Frame::data(b)));
            let stream = BodyExt::boxed(StreamBody::new(chunks));
            Response::builder()
                .header(
                    "content-type",
                    if sse { "text/event-stream" } else { "application/json" },
                )
                .body(stream)
                .unwrap_or_default()
        }
        _ => Response::builder()
            .status(StatusCode::ACCEPTED)
            .body(Full::new(Bytes::new()).boxed())
            .unwrap_or_default(),
    };
    Ok(reply)
}

fn resident_bytes() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<usize>().ok())
        .map_or(0, |kb| kb * 1024)
}

#[tokio::test]
async fn a_hostile_answer_of_256_mib_is_cut_off_at_the_bound_as_json_or_as_one_event() {
    let hostile = Hostile::start().await;
    let real = TestBackend::start("t").await;
    let replica = Replica::start(&bounded(&[("h", &hostile.url), ("t", &real.url)])).await;
    let mut client = replica.client();
    client.initialize().await;
    let before = resident_bytes();
    for form in ["json", "sse"] {
        let sent_before = hostile.sent.load(Ordering::Relaxed);
        let reply = client.call_tool("h_dump", json!({"as": form})).await;
        assert_eq!(reply.error_code(), -32603, "{form}: {reply:?}");
        let message = reply.body["error"]["message"].as_str().unwrap_or_default();
        assert!(
            message.contains(&format!("larger than {BOUND} bytes")),
            "{form}: {message}"
        );
        // vmcp stopped reading: the backend could write little more than
        // what the sockets' buffers hold, not 256 MiB.
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        let sent = hostile.sent.load(Ordering::Relaxed) - sent_before;
        assert!(sent < SIZE / 4, "{form}: the backend sent {sent} bytes");
    }
    let grown = resident_bytes().saturating_sub(before);
    assert!(grown < 64 * 1024 * 1024, "resident memory grew by {grown} bytes");
    assert_eq!(calls(&replica, "h", "too_large"), 2.0);
    // A garbled stream fails its call as the backend's fault (-32603), and
    // does not mark the backend unreachable: its circuit stays closed.
    let reply = client.call_tool("h_dump", json!({"as": "garbled"})).await;
    assert_eq!(reply.error_code(), -32603, "{reply:?}");
    assert_eq!(calls(&replica, "h", "protocol_error"), 1.0);
    assert_eq!(replica.metric("vmcp_backend_circuit_state{backend=\"h\"}"), 0.0);
    // The other backend, and the session, carry on.
    let reply = client.call_tool("t_echo", json!({"message": "after"})).await;
    assert_eq!(reply.result()["content"][0]["text"], "t:after", "{reply:?}");
}
