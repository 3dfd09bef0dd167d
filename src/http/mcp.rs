//! The `/mcp` endpoint (handshake-era Streamable HTTP).
//!
//! Built on hyper with rmcp's model types rather than rmcp's
//! `StreamableHttpService`: the session lookup is ours, so the affinity layer
//! can sit in front of it (forward to the owner before any session is touched)
//! and a replica can rebuild a session it has never seen from the store,
//! neither of which fits behind rmcp's `SessionManager`.

use std::future::Future;
use std::sync::Arc;

use http::{header, HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use serde_json::{json, Value};

use super::call::Answering;
use super::exec::{answer, apply_here, header_str, reject};
use super::reply::{self, Body, Format};
use crate::app::App;
use crate::auth::{AuthError, Identity};
use crate::config::HttpConfig;
use crate::mcp::headers::{LAST_EVENT_ID, PROTOCOL, SESSION};
use crate::mcp::Incoming as Message;
use crate::mcp::{self, Command, RpcError};
use crate::policy::RequestGuard;
use crate::session::{self, ManagerError, ResolveError, Session, SessionError};

/// Dispatches `/mcp` by HTTP method.
pub async fn handle(app: &App, req: Request<Incoming>) -> Response<Body> {
    let (parts, body) = req.into_parts();
    // A POST's body is read (bounded) before anything is judged: an error
    // answered while the client is still sending makes the close that follows
    // reset the connection, and the client never sees the error.
    let bytes = if parts.method == Method::POST {
        match read_body(body, &parts.headers, &app.config.http).await {
            Ok(b) => b,
            Err(e) => {
                // The rest of the body is never read: the connection cannot carry another request.
                let mut response = reject(e, None);
                response
                    .headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
                return response;
            }
        }
    } else {
        bytes::Bytes::new()
    };
    handle_buffered(app, Request::from_parts(parts, bytes)).await
}

/// `/mcp` for a request whose body was read already: the same checks and
/// answers as over HTTP (tests drive hostile input through it in-process).
pub async fn handle_buffered(app: &App, req: Request<bytes::Bytes>) -> Response<Body> {
    let (parts, bytes) = req.into_parts();
    if !app.hosts.admits(&parts.headers) {
        return reject(
            RpcError::invalid_request("Host or Origin not allowed").with_status(StatusCode::FORBIDDEN),
            None,
        );
    }
    // Which era a request speaks is decided once, here.
    let stateless = super::era::is_stateless(&parts.method, &parts.headers);
    let answering = match parts.method {
        Method::POST => match check_headers(&parts.headers, stateless) {
            Ok(f) => Some(f),
            Err(e) => return reject(e, None),
        },
        Method::GET | Method::DELETE => None,
        _ => {
            let mut response = reply::empty(StatusCode::METHOD_NOT_ALLOWED);
            response
                .headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("GET, POST, DELETE"));
            return response;
        }
    };
    // Who is calling, before anything else is done for them (a refused
    // token is answered here, not forwarded to the session's owner).
    let who = match app.auth.identify(&parts.headers).await {
        Ok(who) => who,
        Err(e) => return refuse(app, &e),
    };
    // A stateless-era request (2026-07-28) goes to its own front, which
    // places it by its caller's pooled session. Boxed: its future (~7 KB)
    // would otherwise size every request's state, which is copied into
    // place per request.
    if let (Some(answering), true) = (answering, stateless) {
        return Box::pin(super::stateless::serve(app, &parts, &bytes, &who, answering.format)).await;
    }
    if let Some(response) = super::placement::to_owner(app, &parts, &bytes).await {
        return response;
    }
    match (parts.method, answering) {
        (Method::POST, Some(answering)) => post(app, &parts.headers, &who, answering, &bytes).await,
        (Method::DELETE, _) => delete(app, &parts.headers, &who).await,
        _ => stream(app, &parts.headers, &who).await,
    }
}

/// A request without an acceptable access token: 401 (or 403 for a missing
/// scope, 503 if the issuer's keys cannot be had) with the challenge that
/// tells an OAuth client where to start.
fn refuse(app: &App, e: &AuthError) -> Response<Body> {
    let mut response = reject(RpcError::invalid_request(e.to_string()).with_status(e.status()), None);
    if let Some(challenge) = app.auth.challenge(e) {
        response.headers_mut().insert(header::WWW_AUTHENTICATE, challenge);
    }
    response
}

/// How the client takes its answer, from its `Accept` header read in one
/// pass: JSON if it accepts it (or says nothing), else SSE; `None` if
/// neither. A stream only where it lists `text/event-stream` itself.
fn negotiate(headers: &HeaderMap) -> Option<Answering> {
    let Some(accept) = headers.get(header::ACCEPT) else {
        return Some(Answering {
            format: Format::Json,
            accepts_sse: false,
        });
    };
    // On bytes: a media range is ASCII, and one pass over them is all it takes.
    let (mut json, mut sse) = (false, false);
    for part in accept.as_bytes().split(|b| *b == b',') {
        let range = part.split(|b| *b == b';').next().unwrap_or_default().trim_ascii();
        match range {
            b"application/json" | b"*/*" | b"application/*" => json = true,
            b"text/event-stream" => sse = true,
            _ => {}
        }
    }
    let format = match (json, sse) {
        (true, _) => Format::Json,
        (false, true) => Format::Sse,
        (false, false) => return None,
    };
    Some(Answering {
        format,
        accepts_sse: sse,
    })
}

/// Checks the transport headers of a POST before its body is read
/// (`stateless`: a 2026-07-28 request, whose version its own front checks).
fn check_headers(headers: &HeaderMap, stateless: bool) -> Result<Answering, RpcError> {
    let answering = negotiate(headers).ok_or_else(|| {
        RpcError::invalid_request("Accept must allow application/json or text/event-stream")
            .with_status(StatusCode::NOT_ACCEPTABLE)
    })?;
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .map_or(&b""[..], HeaderValue::as_bytes);
    let json = b"application/json";
    if !content_type
        .trim_ascii_start()
        .get(..json.len())
        .is_some_and(|t| t.eq_ignore_ascii_case(json))
    {
        return Err(RpcError::invalid_request("Content-Type must be application/json")
            .with_status(StatusCode::UNSUPPORTED_MEDIA_TYPE));
    }
    // A stateless-era request's version is its front's to check (-32022).
    if let Some(version) = headers.get(PROTOCOL).filter(|_| !stateless) {
        let version = version.to_str().unwrap_or_default();
        if !mcp::is_supported(version) {
            return Err(RpcError::invalid_request(format!(
                "unsupported MCP-Protocol-Version `{version}`; supported: {}",
                mcp::SUPPORTED_VERSIONS.join(", ")
            )));
        }
    }
    Ok(answering)
}

/// Reads the whole body, refusing more than `max_body_bytes` with 413 and a
/// body that does not arrive within `body_read_timeout` with 408 (a client
/// trickling its body must not hold a task and a buffer forever).
async fn read_body(body: Incoming, headers: &HeaderMap, limits: &HttpConfig) -> Result<bytes::Bytes, RpcError> {
    let limit = limits.max_body_bytes;
    let too_large = || {
        RpcError::invalid_request(format!("request body exceeds {limit} bytes"))
            .with_status(StatusCode::PAYLOAD_TOO_LARGE)
    };
    let declared = header_str(headers, header::CONTENT_LENGTH).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    let deadline = limits.body_read_timeout;
    let collect = Limited::new(body, limit).collect();
    tokio::pin!(collect);
    // A small body usually came in with the headers: take it without arming
    // (and then cancelling) a timer, which costs a lock on the timer wheel.
    let read = match std::future::poll_fn(|cx| std::task::Poll::Ready(collect.as_mut().poll(cx))).await {
        std::task::Poll::Ready(done) => Ok(done),
        std::task::Poll::Pending => tokio::time::timeout(deadline, collect).await,
    };
    match read {
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => Err(too_large()),
        Ok(Err(e)) => Err(RpcError::invalid_request(format!("cannot read request body: {e}"))),
        Err(_) => Err(RpcError::invalid_request(format!(
            "request body not received within {}",
            humantime::format_duration(deadline)
        ))
        .with_status(StatusCode::REQUEST_TIMEOUT)),
    }
}

async fn post(
    app: &App,
    headers: &HeaderMap,
    who: &Identity<'_>,
    answering: Answering,
    bytes: &[u8],
) -> Response<Body> {
    if let Some(request) = Message::plain_request(bytes) {
        return one(app, Ok(request), headers, who, answering).await;
    }
    let value: Value = match serde_json::from_slice(bytes) {
        Ok(v) => v,
        Err(e) => return reject(RpcError::parse(format!("parse error: {e}")), None),
    };
    match value {
        Value::Array(items) if items.len() > app.config.http.max_batch => reject(
            RpcError::invalid_request(format!(
                "batch of {} messages exceeds max_batch {}",
                items.len(),
                app.config.http.max_batch
            )),
            None,
        ),
        Value::Array(items) => batch(app, items, headers, who, answering.format).await,
        single => one(app, Message::classify(single), headers, who, answering).await,
    }
}

/// The session a request names: 400 without a header; 404 if unknown, expired
/// or bound to another identity; 503 if the store cannot be asked.
async fn resolve(app: &App, headers: &HeaderMap, who: &Identity<'_>) -> Result<Arc<Session>, RpcError> {
    let id = header_str(headers, SESSION).ok_or_else(|| RpcError::invalid_request("missing Mcp-Session-Id header"))?;
    tracing::Span::current().record("session.id", id);
    if !session::is_well_formed(id) {
        return Err(not_found());
    }
    app.manager
        .resolve(id, who.caller(), who.bearer())
        .await
        .map_err(|e| match e {
            ResolveError::NotFound => not_found(),
            other => RpcError::internal(other.to_string()).with_status(StatusCode::SERVICE_UNAVAILABLE),
        })
}

fn not_found() -> RpcError {
    RpcError::invalid_request("session not found").with_status(StatusCode::NOT_FOUND)
}

async fn one(
    app: &App,
    message: Result<Message, (Option<Value>, RpcError)>,
    headers: &HeaderMap,
    who: &Identity<'_>,
    answering: Answering,
) -> Response<Body> {
    let format = answering.format;
    match message {
        Err((id, e)) => reject(e, id.as_ref()),
        Ok(Message::Request { id, method, params }) => {
            tracing::Span::current().record("mcp.method", method.as_str());
            let command = match Command::parse(&method, params) {
                Ok(c) => c,
                Err(e) => return reject(e, Some(&id)),
            };
            if let Command::Initialize(params) = command {
                // Boxed, once per session: its future would size every call's.
                return Box::pin(initialize(app, &id, params, who, format)).await;
            }
            let session = match resolve(app, headers, who).await {
                Ok(s) => s,
                Err(e) => return reject(e, Some(&id)),
            };
            let guard = app.guards.for_request(who);
            if command.reaches_backend() {
                return super::call::respond(&app.metrics, session, id, &method, command, answering, guard).await;
            }
            // Boxed, like the rarer branches below: their futures (~9 KB for
            // `apply`) would otherwise be part of every `tools/call`'s state,
            // which hyper moves into place per request.
            let outcome = Box::pin(apply_here(app, &session, &method, command, guard.as_ref())).await;
            answer(&id, outcome, format)
        }
        Ok(Message::Notification { method, params }) => {
            tracing::Span::current().record("mcp.method", method.as_str());
            match resolve(app, headers, who).await {
                Ok(session) => {
                    Box::pin(session.client_notification(&method, params)).await;
                    reply::empty(StatusCode::ACCEPTED)
                }
                Err(e) => reject(e, None),
            }
        }
        Ok(Message::Response { message }) => match resolve(app, headers, who).await {
            Ok(session) => match Box::pin(session.answer(message)).await {
                Ok(()) => reply::empty(StatusCode::ACCEPTED),
                Err(e) => reject(answer_error(e), None),
            },
            Err(e) => reject(e, None),
        },
    }
}

/// A client's answer that cannot be delivered: 400 if nothing asked it, 502
/// if the backend that asked is gone or refuses it.
fn answer_error(e: SessionError) -> RpcError {
    match e {
        SessionError::InvalidParams(m) => RpcError::invalid_request(m),
        other => RpcError::internal(other.to_string()).with_status(StatusCode::BAD_GATEWAY),
    }
}

/// A JSON array of messages (2025-03-26 batching): requests run concurrently.
async fn batch(
    app: &App,
    items: Vec<Value>,
    headers: &HeaderMap,
    who: &Identity<'_>,
    format: Format,
) -> Response<Body> {
    if items.is_empty() {
        return reject(RpcError::invalid_request("empty batch"), None);
    }
    let session = match resolve(app, headers, who).await {
        Ok(s) => s,
        Err(e) => return reject(e, None),
    };
    // Boxed so the batch future stays `Send` for any lifetime (rustc cannot
    // prove that for a `join_all` over closures that borrow `app`).
    let guard = app.guards.for_request(who);
    let answers: Vec<futures_util::future::BoxFuture<'_, Option<Value>>> = items
        .into_iter()
        .map(|item| Box::pin(batch_item(app, Arc::clone(&session), item, guard.clone())) as _)
        .collect();
    let bodies: Vec<Value> = futures_util::future::join_all(answers)
        .await
        .into_iter()
        .flatten()
        .collect();
    if bodies.is_empty() {
        return reply::empty(StatusCode::ACCEPTED);
    }
    reply::message(StatusCode::OK, format, &Value::Array(bodies))
}

/// One message of a batch; `None` for notifications and responses.
async fn batch_item(app: &App, session: Arc<Session>, item: Value, guard: Option<Arc<RequestGuard>>) -> Option<Value> {
    match Message::classify(item) {
        Err((id, e)) => Some(e.to_body(id.as_ref())),
        Ok(Message::Request { id, method, params }) => {
            let outcome = match Command::parse(&method, params) {
                Ok(Command::Initialize(_)) => Err(RpcError::invalid_request("initialize cannot be batched")),
                Ok(command) => apply_here(app, &session, &method, command, guard.as_ref()).await,
                Err(e) => Err(e),
            };
            Some(mcp::jsonrpc::response_body(&id, outcome))
        }
        Ok(_) => None,
    }
}

async fn initialize(app: &App, id: &Value, params: Value, who: &Identity<'_>, format: Format) -> Response<Body> {
    let requested = params
        .get("protocolVersion")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let version = mcp::negotiate(requested);
    let session = match app
        .manager
        .create(params, version.to_owned(), who.caller(), who.bearer())
        .await
    {
        Ok(s) => s,
        Err(e) => return reject(unavailable(&e), Some(id)),
    };
    tracing::Span::current().record("session.id", session.id());
    tracing::info!(session.id = %session.id(), protocol = version, backends = session.backend_sessions().len(), "session created");
    let result = json!({
        "protocolVersion": version,
        "capabilities": session.capabilities(),
        "serverInfo": { "name": "vmcp", "version": env!("CARGO_PKG_VERSION") },
        "instructions": session.instructions(),
    });
    let mut response = reply::message(StatusCode::OK, format, &mcp::jsonrpc::result_body(id, &result));
    if let Ok(v) = HeaderValue::from_str(session.id()) {
        response.headers_mut().insert(SESSION, v);
    }
    response
}

/// 503 (with `Retry-After` via the caller) for a session that cannot be created now.
fn unavailable(e: &ManagerError) -> RpcError {
    RpcError::internal(e.to_string()).with_status(StatusCode::SERVICE_UNAVAILABLE)
}

async fn delete(app: &App, headers: &HeaderMap, who: &Identity<'_>) -> Response<Body> {
    let Some(id) = header_str(headers, SESSION) else {
        return reject(RpcError::invalid_request("missing Mcp-Session-Id header"), None);
    };
    tracing::Span::current().record("session.id", id);
    if !session::is_well_formed(id) {
        return reply::empty(StatusCode::NOT_FOUND);
    }
    match app.manager.delete(id, who.caller()).await {
        Ok(true) => reply::empty(StatusCode::NO_CONTENT),
        Ok(false) => reply::empty(StatusCode::NOT_FOUND),
        Err(e) => reject(
            RpcError::internal(e.to_string()).with_status(StatusCode::SERVICE_UNAVAILABLE),
            None,
        ),
    }
}

/// `GET /mcp`: the session's stream of server-to-client messages (SSE).
async fn stream(app: &App, headers: &HeaderMap, who: &Identity<'_>) -> Response<Body> {
    let accepts_sse = header_str(headers, header::ACCEPT).is_some_and(|a| a.contains("text/event-stream"));
    if !accepts_sse {
        return reject(
            RpcError::invalid_request("GET needs Accept: text/event-stream").with_status(StatusCode::NOT_ACCEPTABLE),
            None,
        );
    }
    match resolve(app, headers, who).await {
        Ok(session) => {
            let last_event_id = header_str(headers, LAST_EVENT_ID).map(str::trim);
            // A broken call stream, resumed: the rest of it, until the call's response.
            if let Some((call, seen)) = last_event_id.and_then(|id| session.resume_call_stream(id)) {
                return reply::message_stream(None, call.read_from(seen));
            }
            let last_seen = last_event_id.and_then(|v| v.parse::<u64>().ok());
            let start = reply::StreamStart {
                subscription: session.events_since(last_seen).await,
                priming_id: session.primes_streams().then(|| session.last_event_id()),
            };
            let listening = session.listen();
            listening.settled(LISTEN_SETTLE).await;
            let stop = app.streams_stop.clone();
            let mine = session.open_stream();
            let end = async move {
                tokio::select! {
                    _ = session.closed() => reply::StreamEnd::Closed,
                    // Ended plainly, without a `retry` hint: the client has its newer stream.
                    _ = session.superseded(mine) => reply::StreamEnd::Closed,
                    _ = stop.cancelled() => reply::StreamEnd::Reconnect,
                }
            };
            reply::event_stream(start, end, listening)
        }
        Err(e) => reject(e, None),
    }
}

/// How long a GET stream waits for the backends' own streams to open.
const LISTEN_SETTLE: std::time::Duration = std::time::Duration::from_secs(1);

#[cfg(test)]
mod tests {
    use super::*;

    fn answering(accept: Option<&'static str>) -> Option<(Format, bool)> {
        let mut headers = HeaderMap::new();
        if let Some(accept) = accept {
            headers.insert(header::ACCEPT, HeaderValue::from_static(accept));
        }
        negotiate(&headers).map(|a| (a.format, a.accepts_sse))
    }

    #[test]
    fn accept_is_read_by_media_range() {
        assert_eq!(answering(None), Some((Format::Json, false)));
        assert_eq!(
            answering(Some("application/json, text/event-stream")),
            Some((Format::Json, true))
        );
        assert_eq!(answering(Some("text/event-stream;q=0.9 ")), Some((Format::Sse, true)));
        assert_eq!(answering(Some(" */* ; q=0.1")), Some((Format::Json, false)));
        assert_eq!(answering(Some("application/*,text/html")), Some((Format::Json, false)));
        assert_eq!(answering(Some("text/html, application/jsonx")), None);
        assert_eq!(answering(Some("")), None);
    }
}
