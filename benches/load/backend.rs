//! A fast MCP backend for the benchmarks: Streamable HTTP answered with plain
//! JSON, a trivial `echo` tool, and no per-session state (any session id is
//! accepted), so the direct baseline is as fast as it gets and 100k backend
//! sessions cost the backend nothing. Can forget all sessions on demand (to
//! exercise the re-initialize path).

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};

/// Sessions minted before this number are unknown (answered 404).
#[derive(Default)]
pub struct State {
    next: AtomicU64,
    forgotten_below: AtomicU64,
}

impl State {
    /// Every session minted so far is now unknown to the backend.
    pub fn forget_all(&self) {
        self.forgotten_below
            .store(self.next.load(Ordering::SeqCst), Ordering::SeqCst);
    }
}

/// The backend process's main (`--backend`): prints its URL, serves until killed.
pub async fn serve() {
    let (url, _) = start().await;
    println!("{url}");
    std::future::pending::<()>().await;
}

pub async fn start() -> (String, Arc<State>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}/mcp", listener.local_addr().expect("addr"));
    let state = Arc::new(State::default());
    let shared = Arc::clone(&state);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let _ = stream.set_nodelay(true);
            let state = Arc::clone(&shared);
            tokio::spawn(async move {
                let service = service_fn(move |req| {
                    let state = Arc::clone(&state);
                    async move { Ok::<_, Infallible>(answer(&state, req).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (url, state)
}

fn json_response(status: StatusCode, body: Value, session: Option<String>) -> Response<Full<Bytes>> {
    let mut builder = Response::builder()
        .status(status)
        .header("content-type", "application/json");
    if let Some(sid) = session {
        builder = builder.header("mcp-session-id", sid);
    }
    builder
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("response")
}

fn empty(status: StatusCode) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .body(Full::new(Bytes::new()))
        .expect("response")
}

async fn answer(state: &State, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let session = req
        .headers()
        .get("mcp-session-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    if let Some(sid) = &session {
        let n: u64 = sid.trim_start_matches('s').parse().unwrap_or(0);
        if n < state.forgotten_below.load(Ordering::Relaxed) {
            return empty(StatusCode::NOT_FOUND);
        }
    }
    if req.method() == http::Method::DELETE {
        return empty(StatusCode::OK);
    }
    let Ok(body) = req.into_body().collect().await else {
        return empty(StatusCode::BAD_REQUEST);
    };
    let Ok(msg) = serde_json::from_slice::<Value>(&body.to_bytes()) else {
        return empty(StatusCode::BAD_REQUEST);
    };
    let Some(id) = msg.get("id").cloned() else {
        return empty(StatusCode::ACCEPTED);
    };
    let result = match msg["method"].as_str().unwrap_or_default() {
        "initialize" => {
            let sid = format!("s{}", state.next.fetch_add(1, Ordering::Relaxed));
            let result = json!({"protocolVersion": msg["params"]["protocolVersion"], "capabilities": {"tools": {}},
                                "serverInfo": {"name": "fast", "version": "1"}});
            return json_response(
                StatusCode::OK,
                json!({"jsonrpc": "2.0", "id": id, "result": result}),
                Some(sid),
            );
        }
        // 2026-07-28: no session; vmcp's `era: stateless` asks this first.
        "server/discover" => json!({"supportedVersions": ["2026-07-28", "2025-11-25"], "capabilities": {"tools": {}},
                                    "resultType": "complete"}),
        "tools/list" => json!({"tools": [{"name": "echo", "inputSchema": {"type": "object"}}]}),
        "tools/call" => json!({"content": [{"type": "text", "text": msg["params"]["arguments"]["message"]}]}),
        _ => json!({}),
    };
    json_response(
        StatusCode::OK,
        json!({"jsonrpc": "2.0", "id": id, "result": result}),
        None,
    )
}
