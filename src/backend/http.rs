//! Streamable HTTP backends (handshake era), on one pooled client
//! ([`super::client`]) per backend shared by every session.
//!
//! A session is its `Mcp-Session-Id`, the negotiated protocol version and an
//! id counter: no task and no connection of its own. Each request is one POST
//! answered with JSON or an SSE stream that ends with our response.
//!
//! Why not rmcp's `StreamableHttpClient`: measured under load, its per-request
//! work (re-parsing the URL, rebuilding the header map, parsing results into
//! the untagged `ServerResult` variant by variant, then back to JSON) cost more
//! than the rest of the gateway. Here the URL and headers are prepared once, the
//! body is serialised once, and each response is parsed once into a small
//! envelope whose `result` stays plain JSON. SSE framing is `sse-stream`'s, as
//! in rmcp.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::BoxStream;
use futures_util::StreamExt;
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};
use hyper::body::Incoming as Body;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::client::{self, Client, ClientError, Target};
use super::credentials::{self, CallerToken, Credentials};
use super::stateless;
use super::BackendError;
use crate::config::BackendEra;

type Response = http::Response<Body>;

/// The shared, pooled client of one Streamable HTTP backend.
pub struct HttpBackend {
    endpoint: Arc<Endpoint>,
    era: BackendEra,
    /// `era: auto`: what the last probe found (`None`: probe on the next connect).
    probed: std::sync::Mutex<Option<bool>>,
    /// The last `initialize` result, shared by the sessions that got the same one.
    init: crate::sync::Interned<Value>,
}

/// What every session of one backend shares: held once, pointed to by each.
struct Endpoint {
    /// The URL as configured (credentials included: it is never printed).
    url: String,
    uri: Uri,
    client: Client,
    /// Static headers (configured ones, Content-Type, Accept), prepared once.
    headers: HeaderMap,
    /// Bound of every message nobody waits for (notices, answers, DELETE).
    notice_timeout: Duration,
    /// OAuth tokens added to every request (`backends[].auth`).
    credentials: Option<Credentials>,
}

/// A JSON-RPC request as sent (borrowing its params: no copy).
#[derive(Serialize)]
struct Outgoing<'a> {
    jsonrpc: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<i64>,
    method: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    params: Option<&'a Value>,
}

/// What a backend sends back, parsed once.
#[derive(Deserialize)]
struct Incoming<R> {
    #[serde(default)]
    id: Option<Value>,
    #[serde(default)]
    method: Option<String>,
    #[serde(default = "none")]
    result: Option<R>,
    #[serde(default)]
    error: Option<RpcErrorBody>,
}

fn none<R>() -> Option<R> {
    None
}

#[derive(Deserialize)]
struct RpcErrorBody {
    code: i32,
    #[serde(default)]
    message: String,
    #[serde(default)]
    data: Option<Value>,
}

/// A transport failure, described without the URL: backend URLs may carry
/// credentials, and the message reaches clients (the backend is named instead).
pub(super) fn transport(e: ClientError) -> BackendError {
    match e {
        ClientError::Transport(text) => BackendError::Transport(text),
        other => BackendError::Protocol(other.to_string()),
    }
}

impl HttpBackend {
    /// `connect_timeout` bounds each TCP (and TLS) connect; `notice_timeout`
    /// every message nobody waits for.
    pub fn new(
        url: &str,
        headers: &BTreeMap<String, String>,
        auth: Option<&crate::config::BackendAuthConfig>,
        era: BackendEra,
        connect_timeout: Duration,
        notice_timeout: Duration,
    ) -> Result<Self, BackendError> {
        let target = Target::parse(url).map_err(transport)?;
        let mut prepared = HeaderMap::new();
        for (k, v) in headers {
            let name = HeaderName::from_bytes(k.as_bytes())
                .map_err(|e| BackendError::Protocol(format!("header name {k}: {e}")))?;
            let value = HeaderValue::from_str(v).map_err(|e| BackendError::Protocol(format!("header {k}: {e}")))?;
            prepared.insert(name, value);
        }
        prepared.insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        prepared.insert(
            http::header::ACCEPT,
            HeaderValue::from_static("application/json, text/event-stream"),
        );
        if let Some(credentials) = target.authorization {
            prepared.insert(http::header::AUTHORIZATION, credentials);
        }
        // A token's default audience (RFC 8707): the backend's URL, credentials left out.
        let credentials = auth.map(|a| Credentials::new(a, target.uri.to_string())).transpose()?;
        let endpoint = Endpoint {
            credentials,
            url: url.to_owned(),
            uri: target.uri,
            client: Client::new(connect_timeout).map_err(transport)?,
            headers: prepared,
            notice_timeout,
        };
        Ok(Self {
            endpoint: Arc::new(endpoint),
            era,
            probed: std::sync::Mutex::new(None),
            init: crate::sync::Interned::default(),
        })
    }

    pub fn url(&self) -> &str {
        &self.endpoint.url
    }

    /// Whether its requests act on the caller's token (exchange, passthrough).
    pub fn needs_caller(&self) -> bool {
        self.endpoint
            .credentials
            .as_ref()
            .is_some_and(Credentials::needs_caller)
    }

    fn session(
        &self,
        session_id: Option<&str>,
        protocol_version: &str,
        init: Value,
        origin: Origin,
        caller: Option<Arc<CallerToken>>,
    ) -> Result<HttpSession, BackendError> {
        let (first_id, ours, envelope) = match origin {
            Origin::Opened => (1, true, None),
            Origin::Resumed => (random_first_id(), false, None),
            Origin::Stateless(envelope) => (1, false, Some(envelope)),
        };
        let bad = |what: &str| BackendError::Protocol(format!("{what} is not a valid header value"));
        // A known version is a static header value: no allocation per session.
        let version = match crate::mcp::SUPPORTED_VERSIONS.iter().find(|v| **v == protocol_version) {
            Some(known) => HeaderValue::from_static(known),
            None => HeaderValue::from_str(protocol_version).map_err(|_| bad("protocol version"))?,
        };
        let session_id = session_id
            .map(|s| HeaderValue::from_str(s).map_err(|_| bad("Mcp-Session-Id")))
            .transpose()?;
        Ok(HttpSession {
            caller: caller.filter(|_| self.needs_caller()),
            envelope,
            endpoint: Arc::clone(&self.endpoint),
            session_id,
            version,
            next_id: AtomicI64::new(first_id),
            init: self.init.share(&init),
            closed: AtomicBool::new(false),
            delete_on_drop: AtomicBool::new(ours),
        })
    }

    /// Handshake: `initialize`, then `notifications/initialized` on the new session.
    pub async fn connect(&self, params: Value, caller: Option<Arc<CallerToken>>) -> Result<HttpSession, BackendError> {
        let known = *crate::sync::lock(&self.probed);
        let stateless = match (self.era, known) {
            (BackendEra::Handshake, _) | (BackendEra::Auto, Some(false)) => false,
            (BackendEra::Stateless, _) | (BackendEra::Auto, Some(true)) => true,
            (BackendEra::Auto, None) => {
                let found = self.discover(&params, caller.clone()).await;
                *crate::sync::lock(&self.probed) = Some(found.is_ok());
                match found {
                    Ok(session) => return Ok(session),
                    Err(e) => {
                        tracing::debug!(url = %crate::redact::url(self.url()), error = %e, "backend speaks the handshake era");
                        false
                    }
                }
            }
        };
        if stateless {
            let found = self.discover(&params, caller).await;
            if found.is_err() && self.era == BackendEra::Auto {
                *crate::sync::lock(&self.probed) = None; // probe again next time
            }
            return found;
        }
        self.handshake(params, caller).await
    }

    /// A stateless "session": `server/discover` for the backend's capabilities, then nothing to keep.
    async fn discover(&self, params: &Value, caller: Option<Arc<CallerToken>>) -> Result<HttpSession, BackendError> {
        let envelope = stateless::envelope(params);
        let body = serde_json::to_vec(&Outgoing {
            jsonrpc: "2.0",
            id: Some(0),
            method: "server/discover",
            params: Some(&json!({ "_meta": envelope })),
        })
        .map_err(|e| BackendError::Protocol(e.to_string()))?;
        let endpoint = &self.endpoint;
        let mut headers = endpoint.headers.clone();
        headers.insert(
            HeaderName::from_static("mcp-protocol-version"),
            HeaderValue::from_static(stateless::VERSION),
        );
        stateless::mirror(&mut headers, "server/discover", None);
        let response = post(endpoint, caller.as_deref(), headers, body).await?;
        let discovered: Value = read_response(response, 0, None, &mut |_| {}).await?;
        if !stateless::is_modern(&discovered) {
            return Err(BackendError::Protocol(format!(
                "server/discover does not name {}",
                stateless::VERSION
            )));
        }
        let origin = Origin::Stateless(Arc::new(stateless::Stateless::new(envelope)));
        self.session(None, stateless::VERSION, discovered, origin, caller)
    }

    /// The handshake: `initialize`, then `notifications/initialized`.
    async fn handshake(&self, params: Value, caller: Option<Arc<CallerToken>>) -> Result<HttpSession, BackendError> {
        let body = serde_json::to_vec(&Outgoing {
            jsonrpc: "2.0",
            id: Some(0),
            method: "initialize",
            params: Some(&params),
        })
        .map_err(|e| BackendError::Protocol(e.to_string()))?;
        let endpoint = &self.endpoint;
        let response = post(endpoint, caller.as_deref(), endpoint.headers.clone(), body).await?;
        let session_id = response
            .headers()
            .get("mcp-session-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let init: Value = read_response(response, 0, None, &mut |_| {}).await?;
        let protocol_version = init
            .get("protocolVersion")
            .and_then(Value::as_str)
            .ok_or_else(|| BackendError::Protocol("initialize result without protocolVersion".into()))?
            .to_owned();
        // From here on the session exists on the backend: dropped without
        // `close()` (a timeout, a client gone mid-initialize) it is DELETEd.
        let session = self.session(session_id.as_deref(), &protocol_version, init, Origin::Opened, caller)?;
        session.notify("notifications/initialized", None).await?;
        Ok(session)
    }

    /// A session the backend already knows (from stored metadata): no I/O.
    pub fn resume(
        &self,
        session_id: &str,
        protocol_version: String,
        capabilities: Value,
        caller: Option<Arc<CallerToken>>,
    ) -> Result<HttpSession, BackendError> {
        let init = json!({ "protocolVersion": protocol_version, "capabilities": capabilities });
        // Not ours to end if dropped: another replica may still resume it.
        self.session(Some(session_id), &protocol_version, init, Origin::Resumed, caller)
    }
}

/// How a backend session came to be, which decides its first request id,
/// whether it is DELETEd if dropped, and whether it is spoken to statelessly.
enum Origin {
    /// Opened here by a handshake: ours to end.
    Opened,
    /// Taken over from stored metadata: another replica may still use it.
    Resumed,
    /// No backend session at all (2026-07-28).
    Stateless(Arc<stateless::Stateless>),
}

/// One backend session over Streamable HTTP: what is its own (ids, the
/// negotiated version) and pointers to what it shares with the backend's
/// other sessions. Small, as 100k sessions × 10 backends are a million of them.
pub struct HttpSession {
    endpoint: Arc<Endpoint>,
    /// The client session's token, if this backend acts on it.
    caller: Option<Arc<CallerToken>>,
    /// Spoken to statelessly (2026-07-28): the `_meta` every request
    /// carries, and its calls' input requests waiting for the client.
    envelope: Option<Arc<stateless::Stateless>>,
    session_id: Option<HeaderValue>,
    version: HeaderValue,
    next_id: AtomicI64,
    init: Arc<Value>,
    /// `close()` or `release()` ran.
    closed: AtomicBool,
    /// Opened here and not yet closed, released or forgotten by the backend:
    /// DELETEd if dropped.
    delete_on_drop: AtomicBool,
}

impl HttpSession {
    pub fn init_result(&self) -> &Value {
        &self.init
    }

    pub fn session_id(&self) -> Option<&str> {
        self.session_id.as_ref().and_then(|v| v.to_str().ok())
    }

    pub fn protocol_version(&self) -> &str {
        self.version.to_str().unwrap_or_default()
    }

    /// The headers of a request on this session: the backend's, the version, the id.
    fn headers(&self) -> HeaderMap {
        // Sized once: a clone of the shared map has no room for the two
        // headers below and would grow twice per request.
        let mut headers = HeaderMap::with_capacity(self.endpoint.headers.len() + 2);
        headers.extend(self.endpoint.headers.iter().map(|(k, v)| (k.clone(), v.clone())));
        headers.insert(HeaderName::from_static("mcp-protocol-version"), self.version.clone());
        if let Some(id) = &self.session_id {
            headers.insert(HeaderName::from_static("mcp-session-id"), id.clone());
        }
        headers
    }

    /// The id of the next request (so a caller can cancel it by id).
    pub fn next_id(&self) -> i64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Sends request `id` and waits for its result; whatever else the backend
    /// sends on the response stream meanwhile (progress, logs, its own
    /// requests) goes to `relay`.
    pub async fn request<R: DeserializeOwned>(
        &self,
        id: i64,
        method: &str,
        params: Option<&Value>,
        relay: &mut (dyn FnMut(Value) + Send),
    ) -> Result<R, BackendError> {
        let Some(state) = &self.envelope else {
            return self.send_request(id, method, params, relay).await;
        };
        // 2026-07-28: an `InputRequiredResult` is asked of the client (as
        // this backend's own requests, for a handshake-era client) and the
        // request sent again with its answers, until a result comes.
        if let Some(taken) = state.subscription(method, params) {
            return taken.and_then(|()| serde_json::from_str("{}").map_err(|e| BackendError::Protocol(e.to_string())));
        }
        let mut params = stateless::with_envelope(params, &state.envelope);
        for _ in 0..stateless::MAX_ROUNDS {
            let result: Value = self.send_request(id, method, Some(&params), relay).await?;
            let Some((requests, request_state)) = stateless::input_required(&result) else {
                let text = serde_json::to_string(&result).map_err(|e| BackendError::Protocol(e.to_string()))?;
                return serde_json::from_str(&text).map_err(|e| BackendError::Protocol(e.to_string()));
            };
            let asked = state.ask(requests, relay);
            let request_state = request_state.cloned();
            params["inputResponses"] = Value::Object(stateless::Stateless::answers(asked).await?);
            match request_state {
                Some(s) => params["requestState"] = s,
                None => {
                    if let Some(p) = params.as_object_mut() {
                        p.remove("requestState");
                    }
                }
            }
        }
        Err(BackendError::Protocol(format!(
            "no result after {} rounds of input requests",
            stateless::MAX_ROUNDS
        )))
    }

    /// One request as sent (the envelope already in `params` for a stateless session).
    async fn send_request<R: DeserializeOwned>(
        &self,
        id: i64,
        method: &str,
        params: Option<&Value>,
        relay: &mut (dyn FnMut(Value) + Send),
    ) -> Result<R, BackendError> {
        let body = serde_json::to_vec(&Outgoing {
            jsonrpc: "2.0",
            id: Some(id),
            method,
            params,
        })
        .map_err(|e| BackendError::Protocol(e.to_string()))?;
        let mut headers = self.headers();
        if self.envelope.is_some() {
            stateless::mirror(&mut headers, method, params);
        }
        let response = post(&self.endpoint, self.caller.as_deref(), headers, body).await?;
        let result = read_response(response, id, Some(self), relay).await;
        if matches!(result, Err(BackendError::SessionExpired)) {
            self.delete_on_drop.store(false, Ordering::Relaxed);
        }
        result
    }

    /// Sends one message that needs no answer: a notification, or our
    /// client's response to a request of the backend.
    /// At most `notice_timeout`.
    pub async fn deliver(&self, message: &Value) -> Result<(), BackendError> {
        if self.envelope.as_ref().is_some_and(|s| s.answered(message)) {
            return Ok(()); // the client's answer to an input request: kept for the retry
        }
        self.sender(message)?.await
    }

    /// What a request of this session needs, owned: for a request that
    /// outlives the borrow of the session (a listen stream).
    pub(super) fn poster(&self) -> Poster {
        Poster {
            endpoint: Arc::clone(&self.endpoint),
            headers: self.headers(),
            caller: self.caller.clone(),
        }
    }

    /// The sending of `message` as a future that owns what it needs, so a
    /// notice can go out in the background (bounded by `notice_timeout`).
    pub fn sender(
        &self,
        message: &Value,
    ) -> Result<impl std::future::Future<Output = Result<(), BackendError>> + Send + 'static, BackendError> {
        let body = serde_json::to_vec(message).map_err(|e| BackendError::Protocol(e.to_string()))?;
        let (endpoint, mut headers, caller) = (Arc::clone(&self.endpoint), self.headers(), self.caller.clone());
        if self.envelope.is_some() {
            let method = message.get("method").and_then(Value::as_str).unwrap_or_default();
            stateless::mirror(&mut headers, method, None);
        }
        let (timeout, has_session) = (self.endpoint.notice_timeout, self.session_id.is_some());
        Ok(async move {
            let sent = async {
                let response = post(&endpoint, caller.as_deref(), headers, body).await?;
                match response.status() {
                    StatusCode::NOT_FOUND if has_session => Err(BackendError::SessionExpired),
                    s if s.is_success() => Ok(()),
                    s => Err(BackendError::Protocol(format!("message answered {s}"))),
                }
            };
            tokio::time::timeout(timeout, sent)
                .await
                .unwrap_or(Err(BackendError::Timeout(timeout)))
        })
    }

    /// Opens the backend's stream of messages it sends on its own (GET).
    /// `Ok(None)`: the backend offers no such stream (405).
    pub async fn listen(&self) -> Result<Option<BoxStream<'static, Value>>, BackendError> {
        if let Some(state) = &self.envelope {
            // 2026-07-28 has no GET stream: a `subscriptions/listen` request stands for it.
            let capabilities = self.init.get("capabilities").cloned().unwrap_or_default();
            return super::subscriptions::listen(self.poster(), Arc::clone(state), &capabilities).await;
        }
        let bound = self.endpoint.notice_timeout;
        let response = tokio::time::timeout(bound, self.open_stream(None))
            .await
            .unwrap_or(Err(BackendError::Timeout(bound)))?;
        match response.status() {
            StatusCode::METHOD_NOT_ALLOWED => return Ok(None),
            StatusCode::NOT_FOUND if self.session_id.is_some() => return Err(BackendError::SessionExpired),
            s if !s.is_success() => return Err(BackendError::Protocol(format!("GET stream answered {s}"))),
            _ => {}
        }
        let events = sse_stream::SseStream::new(response.into_body());
        let messages = events.filter_map(|event| async move {
            let data = event.ok()?.data?;
            serde_json::from_str::<Value>(&data).ok()
        });
        Ok(Some(messages.boxed()))
    }

    /// A GET on the backend's endpoint for an event stream, resuming after
    /// `last_event_id` if given.
    async fn open_stream(&self, last_event_id: Option<&str>) -> Result<Response, BackendError> {
        let mut headers = self.headers();
        headers.insert(http::header::ACCEPT, HeaderValue::from_static("text/event-stream"));
        headers.remove(http::header::CONTENT_TYPE);
        if let Some(v) = last_event_id.and_then(|id| HeaderValue::from_str(id).ok()) {
            headers.insert(HeaderName::from_static("last-event-id"), v);
        }
        let endpoint = &self.endpoint;
        credentials::send(
            &endpoint.client,
            &endpoint.uri,
            endpoint.credentials.as_ref(),
            self.caller.as_deref(),
            Method::GET,
            headers,
            Bytes::new(),
        )
        .await
    }

    pub async fn notify(&self, method: &str, params: Option<Value>) -> Result<(), BackendError> {
        let mut message = json!({ "jsonrpc": "2.0", "method": method });
        if let Some(params) = params {
            message["params"] = params;
        }
        self.deliver(&message).await
    }

    /// DELETEs the backend session (at most `notice_timeout`); a backend
    /// that forgot it already is fine.
    pub async fn close(&self) {
        self.delete_on_drop.store(false, Ordering::Release);
        if self.closed.swap(true, Ordering::AcqRel) {
            return;
        }
        if let Some(delete) = self.deleter() {
            delete.await;
        }
    }

    /// Lets go of the backend session without ending it (another replica resumes it).
    pub fn release(&self) {
        self.delete_on_drop.store(false, Ordering::Release);
        self.closed.store(true, Ordering::Release);
    }

    /// The DELETE of this backend session as a future that owns what it needs.
    fn deleter(&self) -> Option<impl std::future::Future<Output = ()> + Send + 'static> {
        self.session_id.as_ref()?;
        let (endpoint, headers, caller) = (Arc::clone(&self.endpoint), self.headers(), self.caller.clone());
        let (timeout, url) = (endpoint.notice_timeout, crate::redact::url(&endpoint.url));
        Some(async move {
            let request = credentials::send(
                &endpoint.client,
                &endpoint.uri,
                endpoint.credentials.as_ref(),
                caller.as_deref(),
                Method::DELETE,
                headers,
                Bytes::new(),
            );
            match tokio::time::timeout(timeout, request).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => tracing::debug!(%url, error = %e, "backend session DELETE failed"),
                Err(_) => tracing::debug!(%url, ?timeout, "backend session DELETE not answered in time"),
            }
        })
    }
}

impl Drop for HttpSession {
    /// A backend session dropped without `close()` or `release()` (an
    /// `init_timeout` after the handshake, a client gone mid-initialize, a
    /// replaced session) is DELETEd in the background, so none leaks.
    fn drop(&mut self) {
        if !self.delete_on_drop.load(Ordering::Acquire) {
            return;
        }
        if let (Some(delete), Ok(runtime)) = (self.deleter(), tokio::runtime::Handle::try_current()) {
            runtime.spawn(delete);
        }
    }
}

/// A session's way to POST, owned (see [`HttpSession::poster`]).
pub(super) struct Poster {
    endpoint: Arc<Endpoint>,
    headers: HeaderMap,
    caller: Option<Arc<CallerToken>>,
}

impl Poster {
    /// POSTs `message` (its method, and name, mirrored in the headers);
    /// bounded by the backend's connect and notice timeouts until the
    /// response's head arrives, the body is the caller's to read.
    pub(super) async fn post(&self, message: &Value) -> Result<Response, BackendError> {
        let body = serde_json::to_vec(message).map_err(|e| BackendError::Protocol(e.to_string()))?;
        let mut headers = self.headers.clone();
        let method = message.get("method").and_then(Value::as_str).unwrap_or_default();
        stateless::mirror(&mut headers, method, message.get("params"));
        let bound = self.endpoint.notice_timeout;
        tokio::time::timeout(bound, post(&self.endpoint, self.caller.as_deref(), headers, body))
            .await
            .unwrap_or(Err(BackendError::Timeout(bound)))
    }

    /// How long a message nobody waits on may take.
    pub(super) fn notice_timeout(&self) -> Duration {
        self.endpoint.notice_timeout
    }
}

async fn post(
    endpoint: &Endpoint,
    caller: Option<&CallerToken>,
    headers: HeaderMap,
    body: Vec<u8>,
) -> Result<Response, BackendError> {
    credentials::send(
        &endpoint.client,
        &endpoint.uri,
        endpoint.credentials.as_ref(),
        caller,
        Method::POST,
        headers,
        Bytes::from(body),
    )
    .await
}

/// The result of request `id` from a JSON body or an SSE stream; other
/// messages on the stream go to `relay`.
async fn read_response<R: DeserializeOwned>(
    response: Response,
    id: i64,
    session: Option<&HttpSession>,
    relay: &mut (dyn FnMut(Value) + Send),
) -> Result<R, BackendError> {
    let status = response.status();
    if status == StatusCode::NOT_FOUND && session.is_some_and(|s| s.session_id.is_some()) {
        return Err(BackendError::SessionExpired);
    }
    if is_event_stream(&response) && status.is_success() {
        return read_events(response, id, session, relay).await;
    }
    let body = client::bytes(response).await.map_err(transport)?;
    match ours(&body, id) {
        Some(result) => result,
        None if status.is_success() => Err(BackendError::Protocol(
            "answer is not the response to our request".into(),
        )),
        None => Err(BackendError::Protocol(format!("HTTP {status}"))),
    }
}

pub(super) fn is_event_stream(response: &Response) -> bool {
    response
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("text/event-stream"))
}

/// How many times one request's stream may be resumed without an answer.
const MAX_RESUMES: usize = 10;
/// The longest `retry` a backend may ask for before we resume.
const MAX_RETRY: Duration = Duration::from_secs(5);

/// The result of request `id` from an SSE stream; other messages go to
/// `relay`. A backend may close the stream before answering (2025-11-25
/// polling, SEP-1699) once it has given an event id: the stream is then
/// resumed with a GET carrying `Last-Event-ID`, after the backend's `retry`.
async fn read_events<R: DeserializeOwned>(
    response: Response,
    id: i64,
    session: Option<&HttpSession>,
    relay: &mut (dyn FnMut(Value) + Send),
) -> Result<R, BackendError> {
    let mut events = sse_stream::SseStream::new(response.into_body());
    let (mut last_event_id, mut retry) = (None::<String>, Duration::ZERO);
    let mut resumes = 0;
    loop {
        while let Some(event) = events.next().await {
            let event = event.map_err(|e| BackendError::Transport(format!("SSE: {e}")))?;
            last_event_id = event.id.or(last_event_id);
            retry = event.retry.map_or(retry, |ms| Duration::from_millis(ms).min(MAX_RETRY));
            let Some(data) = event.data.filter(|d| !d.trim().is_empty()) else {
                continue;
            };
            match ours(data.as_bytes(), id) {
                Some(result) => return result,
                None => {
                    if let Ok(other) = serde_json::from_str::<Value>(&data) {
                        relay(other);
                    }
                }
            }
        }
        let (Some(session), Some(last)) = (session, last_event_id.as_deref()) else {
            return Err(BackendError::Transport("SSE stream ended before the response".into()));
        };
        resumes += 1;
        if resumes > MAX_RESUMES {
            return Err(BackendError::Transport(format!(
                "no response after {MAX_RESUMES} resumed streams"
            )));
        }
        tracing::debug!(url = %crate::redact::url(&session.endpoint.url), last_event_id = last, "resuming a backend's SSE stream");
        tokio::time::sleep(retry).await;
        let resumed = session.open_stream(Some(last)).await?;
        if !resumed.status().is_success() || !is_event_stream(&resumed) {
            return Err(BackendError::Protocol(format!(
                "resuming the stream answered {}",
                resumed.status()
            )));
        }
        events = sse_stream::SseStream::new(resumed.into_body());
    }
}

/// `Some` if `text` is the response to request `id`; `None` for anything
/// else (notifications and requests from the backend, other responses).
fn ours<R: DeserializeOwned>(text: &[u8], id: i64) -> Option<Result<R, BackendError>> {
    let message: Incoming<R> = serde_json::from_slice(text).ok()?;
    if message.method.is_some() || message.id.as_ref().is_some_and(|m| m.as_i64() != Some(id)) {
        return None;
    }
    match (message.result, message.error) {
        (_, Some(e)) => Some(Err(BackendError::Rpc {
            code: e.code,
            message: e.message,
            data: e.data,
        })),
        (Some(result), None) => Some(Ok(result)),
        (None, None) => None,
    }
}

/// Request ids of a resumed session start at a random offset, so they cannot
/// collide with ids the previous holder of the session may still have in flight.
fn random_first_id() -> i64 {
    let mut bytes = [0u8; 4];
    let _ = getrandom::fill(&mut bytes);
    (i64::from(u32::from_le_bytes(bytes)) << 16) + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_our_response_is_taken() {
        assert!(ours::<Value>(br#"{"jsonrpc":"2.0","method":"notifications/progress","params":{}}"#, 1).is_none());
        assert!(ours::<Value>(br#"{"jsonrpc":"2.0","id":2,"result":{}}"#, 1).is_none());
        assert_eq!(
            ours::<Value>(br#"{"jsonrpc":"2.0","id":1,"result":{"x":1}}"#, 1)
                .unwrap()
                .unwrap(),
            json!({"x": 1})
        );
        let err = ours::<Value>(br#"{"jsonrpc":"2.0","id":1,"error":{"code":-32602,"message":"no"}}"#, 1)
            .unwrap()
            .unwrap_err();
        assert!(matches!(err, BackendError::Rpc { code: -32602, .. }));
        assert!(ours::<Value>(b"not json", 1).is_none());
    }

    #[test]
    fn a_raw_result_is_the_backends_bytes() {
        type Raw = Box<serde_json::value::RawValue>;
        let raw = ours::<Raw>(br#"{"jsonrpc":"2.0","id":1,"result": {"b":1, "a":[2]}}"#, 1)
            .unwrap()
            .unwrap();
        assert_eq!(raw.get(), r#"{"b":1, "a":[2]}"#);
        assert!(ours::<Raw>(br#"{"jsonrpc":"2.0","id":1,"result":null}"#, 1).is_none());
        assert!(ours::<Raw>(br#"{"jsonrpc":"2.0","method":"x","params":{}}"#, 1).is_none());
        let err = ours::<Raw>(br#"{"jsonrpc":"2.0","id":1,"error":{"code":-32602,"message":"no"}}"#, 1)
            .unwrap()
            .unwrap_err();
        assert!(matches!(err, BackendError::Rpc { code: -32602, .. }));
    }
}
