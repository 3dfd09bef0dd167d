//! The floor: the least an MCP-aware gateway on vmcp's stack (tokio, hyper,
//! hyper-util's pooled client, serde_json) must do per `tools/call`, as its
//! own process. It is the measurement behind "what the bare minimum costs":
//! the bare hop moves bytes and reads nothing, but a gateway that aggregates
//! must at least
//!
//! - parse the request envelope (borrowed: id and params stay raw),
//! - look the session up and map it to its backend session,
//! - look the tool up in a catalog and rewrite its name,
//! - serialise a new request with its own id and the backend session's headers,
//! - parse the answer's envelope (the result stays raw) and match the id,
//! - write the answer with the client's id.
//!
//! Nothing else: no timeouts, no cancellation, no metrics, no logs, no
//! limits, no relayed messages, no SSE. vmcp's cost above this floor is what
//! those cost; the floor's cost above the bare hop is what reading MCP costs.
//!
//! `--guarded` adds, with the same crates and calls vmcp uses, the per-call
//! guarantees vmcp gives: a deadline on the backend call, a cancellation
//! token registered by request id (what `notifications/cancelled` needs), a
//! relay channel watched while the call runs (progress, logs, the backend's
//! own requests), request and backend-call metrics (counter + histogram
//! each), and hyper's header-read timeout (slowloris).

use std::borrow::Cow;
use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use prometheus::{Histogram, HistogramOpts, IntCounter};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use tokio_util::sync::CancellationToken;

const SESSION: HeaderName = HeaderName::from_static("mcp-session-id");
const VERSION: HeaderName = HeaderName::from_static("mcp-protocol-version");

struct Floor {
    client: Client<HttpConnector, Full<Bytes>>,
    upstream: Uri,
    /// Client session id → the backend session's id and request counter.
    sessions: RwLock<HashMap<String, Arc<Session>>>,
    /// Client-facing tool name → the backend's.
    catalog: HashMap<String, String>,
    minted: AtomicU64,
    guards: Option<Guards>,
}

struct Session {
    backend: HeaderValue,
    next_id: AtomicI64,
    /// Running calls by client request id (guarded only).
    running: Mutex<HashMap<String, CancellationToken>>,
}

/// vmcp's per-call guarantees, for `--guarded`. `VMCP_FLOOR_WITHOUT`
/// (comma-separated: `deadline`, `cancel`, `relay`, `metrics`,
/// `header-timeout`) leaves some out, to price each one.
struct Guards {
    deadline: Duration,
    without: Vec<String>,
    requests: IntCounter,
    request_seconds: Histogram,
    backend_calls: IntCounter,
    backend_seconds: Histogram,
}

impl Guards {
    fn new() -> Self {
        let hist = |name: &str| Histogram::with_opts(HistogramOpts::new(name, "seconds")).expect("histogram");
        let counter = |name: &str| IntCounter::new(name, "calls").expect("counter");
        let without = std::env::var("VMCP_FLOOR_WITHOUT").unwrap_or_default();
        Guards {
            deadline: Duration::from_secs(60),
            without: without.split(',').map(str::to_owned).collect(),
            requests: counter("requests"),
            request_seconds: hist("request_seconds"),
            backend_calls: counter("backend_calls"),
            backend_seconds: hist("backend_seconds"),
        }
    }

    fn with(&self, guarantee: &str) -> bool {
        !self.without.iter().any(|w| w == guarantee)
    }
}

#[derive(Deserialize)]
struct Req<'a> {
    #[serde(borrow)]
    id: Option<&'a RawValue>,
    #[serde(borrow)]
    method: Cow<'a, str>,
    #[serde(borrow)]
    params: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct CallParams<'a> {
    #[serde(borrow)]
    name: Cow<'a, str>,
    #[serde(borrow)]
    arguments: Option<&'a RawValue>,
}

#[derive(Serialize)]
struct Out<'a> {
    jsonrpc: &'static str,
    id: i64,
    method: &'static str,
    params: OutParams<'a>,
}

#[derive(Serialize)]
struct OutParams<'a> {
    name: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    arguments: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct Answer<'a> {
    id: Option<i64>,
    #[serde(borrow)]
    result: Option<&'a RawValue>,
}

#[derive(Serialize)]
struct Reply<'a> {
    jsonrpc: &'static str,
    id: &'a RawValue,
    result: &'a RawValue,
}

/// The floor process's main (`--mcp-floor-upstream URL`): prints its URL,
/// serves until killed. Its one tool is the backend's `echo` as `fast_echo`.
pub async fn serve(upstream: String, guarded: bool) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    println!("http://{}/mcp", listener.local_addr().expect("addr"));
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let floor = Arc::new(Floor {
        client: Client::builder(TokioExecutor::new()).build(connector),
        upstream: upstream.parse().expect("upstream URL"),
        sessions: RwLock::default(),
        catalog: HashMap::from([("fast_echo".to_owned(), "echo".to_owned())]),
        minted: AtomicU64::new(1),
        guards: guarded.then(Guards::new),
    });
    while let Ok((stream, _)) = listener.accept().await {
        let _ = stream.set_nodelay(true);
        let floor = Arc::clone(&floor);
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let floor = Arc::clone(&floor);
                async move { Ok::<_, Infallible>(floor.handle(req).await) }
            });
            let mut http = hyper::server::conn::http1::Builder::new();
            if guarded && std::env::var("VMCP_FLOOR_WITHOUT").map_or(true, |w| !w.contains("header-timeout")) {
                http.timer(TokioTimer::new())
                    .header_read_timeout(Duration::from_secs(30));
            }
            let _ = http.serve_connection(TokioIo::new(stream), service).await;
        });
    }
}

fn status(code: StatusCode) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = code;
    r
}

impl Floor {
    async fn handle(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let (parts, body) = req.into_parts();
        let Ok(body) = body.collect().await.map(|b| b.to_bytes()) else {
            return status(StatusCode::BAD_REQUEST);
        };
        let client_sid = parts.headers.get(&SESSION).and_then(|v| v.to_str().ok());
        let Some(client_sid) = client_sid else {
            return self.initialize(body).await;
        };
        let Some(session) = self.sessions.read().ok().and_then(|s| s.get(client_sid).cloned()) else {
            return status(StatusCode::NOT_FOUND);
        };
        let Ok(request) = serde_json::from_slice::<Req>(&body) else {
            return status(StatusCode::BAD_REQUEST);
        };
        match (request.method.as_ref(), request.id, request.params) {
            ("tools/call", Some(id), Some(params)) => match &self.guards {
                None => self.call(&session, id, params).await,
                Some(guards) => self.guarded_call(guards, &session, id, params).await,
            },
            // Notifications and the rest: passed on as they are.
            _ => match self.send(&session, body).await {
                Some((code, _)) => status(code),
                None => status(StatusCode::BAD_GATEWAY),
            },
        }
    }

    async fn call(&self, session: &Session, id: &RawValue, params: &RawValue) -> Response<Full<Bytes>> {
        let Ok(params) = serde_json::from_str::<CallParams>(params.get()) else {
            return status(StatusCode::BAD_REQUEST);
        };
        let Some(name) = self.catalog.get(params.name.as_ref()) else {
            return status(StatusCode::BAD_REQUEST);
        };
        let our_id = session.next_id.fetch_add(1, Ordering::Relaxed);
        let out = Out {
            jsonrpc: "2.0",
            id: our_id,
            method: "tools/call",
            params: OutParams {
                name,
                arguments: params.arguments,
            },
        };
        let Ok(out) = serde_json::to_vec(&out) else {
            return status(StatusCode::INTERNAL_SERVER_ERROR);
        };
        let Some((_, answer)) = self.send(session, Bytes::from(out)).await else {
            return status(StatusCode::BAD_GATEWAY);
        };
        let result = match serde_json::from_slice::<Answer>(&answer) {
            Ok(Answer {
                id: Some(i),
                result: Some(result),
            }) if i == our_id => result,
            _ => return status(StatusCode::BAD_GATEWAY),
        };
        let reply = Reply {
            jsonrpc: "2.0",
            id,
            result,
        };
        let body = serde_json::to_vec(&reply).unwrap_or_default();
        let mut response = Response::new(Full::new(Bytes::from(body)));
        response
            .headers_mut()
            .insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        response
    }

    /// [`Self::call`] with vmcp's per-call guarantees around it.
    async fn guarded_call(
        &self,
        guards: &Guards,
        session: &Session,
        id: &RawValue,
        params: &RawValue,
    ) -> Response<Full<Bytes>> {
        let started = Instant::now();
        let token = guards.with("cancel").then(|| {
            let (key, token) = (id.get().to_owned(), CancellationToken::new());
            if let Ok(mut running) = session.running.lock() {
                running.insert(key.clone(), token.clone());
            }
            (key, token)
        });
        let metrics = guards.with("metrics");
        let work = async {
            let backend_started = Instant::now();
            let call = async {
                if guards.with("deadline") {
                    tokio::time::timeout(guards.deadline, self.call(session, id, params))
                        .await
                        .unwrap_or_else(|_| status(StatusCode::GATEWAY_TIMEOUT))
                } else {
                    self.call(session, id, params).await
                }
            };
            let response = match &token {
                Some((_, token)) => tokio::select! {
                    r = call => r,
                    _ = token.cancelled() => status(StatusCode::OK),
                },
                None => call.await,
            };
            if metrics {
                guards.backend_calls.inc();
                guards.backend_seconds.observe(backend_started.elapsed().as_secs_f64());
            }
            response
        };
        tokio::pin!(work);
        let response = if guards.with("relay") {
            let (_relay, mut relayed) = tokio::sync::mpsc::unbounded_channel::<serde_json::Value>();
            loop {
                tokio::select! {
                    biased;
                    Some(_) = relayed.recv() => {}
                    r = &mut work => break r,
                }
            }
        } else {
            (&mut work).await
        };
        if let Some((key, _)) = &token {
            if let Ok(mut running) = session.running.lock() {
                running.remove(key);
            }
        }
        if metrics {
            guards.requests.inc();
            guards.request_seconds.observe(started.elapsed().as_secs_f64());
        }
        response
    }

    /// POSTs `body` on the backend session; its status and whole body.
    async fn send(&self, session: &Session, body: Bytes) -> Option<(StatusCode, Bytes)> {
        let mut headers = HeaderMap::with_capacity(4);
        headers.insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        headers.insert(
            http::header::ACCEPT,
            HeaderValue::from_static("application/json, text/event-stream"),
        );
        headers.insert(VERSION, HeaderValue::from_static("2025-06-18"));
        headers.insert(SESSION, session.backend.clone());
        let mut request = Request::new(Full::new(body));
        *request.method_mut() = Method::POST;
        *request.uri_mut() = self.upstream.clone();
        *request.headers_mut() = headers;
        let response = self.client.request(request).await.ok()?;
        let code = response.status();
        let body = response.into_body().collect().await.ok()?.to_bytes();
        Some((code, body))
    }

    /// `initialize`: opens a backend session and mints the client's id for it.
    async fn initialize(&self, body: Bytes) -> Response<Full<Bytes>> {
        let mut request = Request::new(Full::new(body));
        *request.method_mut() = Method::POST;
        *request.uri_mut() = self.upstream.clone();
        let headers = request.headers_mut();
        headers.insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        headers.insert(
            http::header::ACCEPT,
            HeaderValue::from_static("application/json, text/event-stream"),
        );
        let Ok(response) = self.client.request(request).await else {
            return status(StatusCode::BAD_GATEWAY);
        };
        let Some(backend) = response.headers().get(&SESSION).cloned() else {
            return status(StatusCode::BAD_GATEWAY);
        };
        let Ok(answer) = response.into_body().collect().await.map(|b| b.to_bytes()) else {
            return status(StatusCode::BAD_GATEWAY);
        };
        let sid = format!("floor-{}", self.minted.fetch_add(1, Ordering::Relaxed));
        let session = Arc::new(Session {
            backend,
            next_id: AtomicI64::new(1),
            running: Mutex::default(),
        });
        if let Ok(mut sessions) = self.sessions.write() {
            sessions.insert(sid.clone(), session);
        }
        let mut reply = Response::new(Full::new(answer));
        reply
            .headers_mut()
            .insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if let Ok(v) = HeaderValue::from_str(&sid) {
            reply.headers_mut().insert(SESSION, v);
        }
        reply
    }
}
