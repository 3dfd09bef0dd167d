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

use super::client::Body;
use bytes::Bytes;
use futures_util::stream::BoxStream;
use futures_util::StreamExt;
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};
use serde::de::DeserializeOwned;
use serde_json::{json, Value};

use super::client::{self, Client, ClientError, Target};
use super::credentials::{self, CallerToken, Credentials};
use super::stateless;
use super::{BackendError, Params};
use crate::config::BackendEra;
use crate::mcp::headers as mcp_headers;

type Response = http::Response<Body>;

mod open;
mod wire;
pub(super) use wire::is_event_stream;
use wire::{read_response, Outgoing};

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

/// A transport failure, described without the URL: backend URLs may carry
/// credentials, and the message reaches clients (the backend is named instead).
pub(super) fn transport(e: ClientError) -> BackendError {
    match e {
        ClientError::Transport(text) => BackendError::Transport(text),
        ClientError::TooLarge(max) => BackendError::TooLarge(max),
        other => BackendError::Protocol(other.to_string()),
    }
}

impl HttpBackend {
    /// `bounds.connect` bounds each TCP (and TLS) connect, `bounds.notice`
    /// every message nobody waits for, `bounds.max_answer` each answer.
    pub fn new(
        url: &str,
        headers: &BTreeMap<String, String>,
        auth: Option<&crate::config::BackendAuthConfig>,
        era: BackendEra,
        bounds: super::Bounds,
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
            client: Client::new(bounds.connect)
                .map_err(transport)?
                .with_max_answer(bounds.max_answer)
                .with_keep_alive(bounds.keep_alive),
            headers: prepared,
            notice_timeout: bounds.notice,
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
        headers.insert(mcp_headers::PROTOCOL, self.version.clone());
        if let Some(id) = &self.session_id {
            headers.insert(mcp_headers::SESSION, id.clone());
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
        params: Option<Params<'_>>,
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
        let mut params = stateless::with_envelope(params, &state.envelope)?;
        for _ in 0..stateless::MAX_ROUNDS {
            let result: Value = self
                .send_request(id, method, Some(Params::Tree(&params)), relay)
                .await?;
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
        params: Option<Params<'_>>,
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
            headers.insert(mcp_headers::LAST_EVENT_ID, v);
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
        stateless::mirror(&mut headers, method, message.get("params").map(Params::Tree));
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
