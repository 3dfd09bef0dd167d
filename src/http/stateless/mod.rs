//! The stateless era's front (MCP 2026-07-28): self-contained POSTs, no
//! session id, `server/discover` instead of `initialize`.
//!
//! Each request runs on its caller's pooled session
//! ([`crate::session::SessionManager::pooled`]): the backends (today's are
//! handshake-era servers) keep one backend session per caller, opened on the
//! first request, resumed by any replica, idling out like any session. The
//! pool has an owner like any session: a request entering elsewhere is
//! forwarded there. The shared call path (command, guard, audit) is the
//! handshake era's; only the envelope and the results' stateless fields are
//! this module's.
//!
//! `subscriptions/listen` is [`listen`]'s; a backend's question to the client
//! mid-call (elicitation, sampling, roots) becomes an `InputRequiredResult`
//! and the retry resumes the paused call ([`input`]). Backends of this era
//! are called statelessly below the session (`crate::backend::stateless`).

mod input;
mod listen;

pub use input::PausedCalls;

use std::sync::Arc;

use bytes::Bytes;
use http::request::Parts;
use http::{Response, StatusCode};
use serde_json::value::RawValue;
use serde_json::{json, Map, Value};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::era::{self, Envelope};
use super::exec::{answer, apply_with, reject};
use super::reply::{self, Body, Format};
use crate::app::App;
use crate::auth::Identity;
use crate::backend::{CallContext, Params as ParamsView, Reply, ToolCall};
use crate::mcp::jsonrpc::RequestParams;
use crate::mcp::Incoming as Message;
use crate::mcp::{Command, RpcError};
use crate::session::{ResolveError, Session};

/// Methods of the stateless era that vmcp serves.
const SERVED: &[&str] = &[
    "server/discover",
    "tools/list",
    "tools/call",
    "prompts/list",
    "prompts/get",
    "resources/list",
    "resources/templates/list",
    "resources/read",
    "completion/complete",
    "subscriptions/listen",
];

/// Results that carry cache hints (`cacheScope`, `ttlMs`).
const CACHEABLE: &[&str] = &[
    "server/discover",
    "tools/list",
    "prompts/list",
    "resources/list",
    "resources/templates/list",
    "resources/read",
];

pub async fn serve(app: &App, parts: &Parts, body: &Bytes, who: &Identity<'_>, format: Format) -> Response<Body> {
    let (id, method, params) = match read(body) {
        Ok(request) => request,
        Err(refused) => return refused,
    };
    tracing::Span::current().record("mcp.method", method.as_str());
    let envelope = match era::check(&parts.headers, &method, params.view()) {
        Ok(e) => e,
        Err(e) => return reject(e, Some(&id)),
    };
    if !SERVED.contains(&method.as_str()) {
        let e = RpcError::method_not_found(&method).with_status(StatusCode::NOT_FOUND);
        return reject(e, Some(&id));
    }
    let caller = who.caller();
    let key = match app.manager.pool_id(caller).await {
        Ok(key) => key,
        Err(e) => return reject(unavailable(&e), Some(&id)),
    };
    let pool = key.id.as_str();
    let cacheable = CACHEABLE.contains(&method.as_str());
    // A retry with the client's answers goes to the paused call, on the
    // replica that holds it, wherever the caller's pool is now.
    if let Some(state) = request_state(params.view()) {
        if let Some(holder) = input::holder(state) {
            if let Some(response) = super::placement::to_replica(app, parts, body, pool, &holder).await {
                return response;
            }
        }
        tracing::Span::current().record("session.id", pool);
        let answers = params.view().and_then(|p| p.get("inputResponses"));
        let outcome = match app.paused.resume(state, pool, answers).await {
            Ok(running) => finish(app, running, pool, &envelope.capabilities).await,
            Err(e) => Err(e),
        };
        return answer(&id, outcome.map(|r| stateless_result(r, cacheable)), format);
    }
    if let Some(response) = super::placement::to_pool_owner(app, parts, body, pool).await {
        return response;
    }
    tracing::Span::current().record("session.id", pool);
    let session = match app
        .manager
        .pooled(&key, caller, who.bearer(), || client_init(&envelope))
        .await
    {
        Ok(s) => s,
        Err(e) => return reject(unavailable(&e), Some(&id)),
    };
    if method == "subscriptions/listen" {
        if format != Format::Sse && !accepts_sse(parts) {
            let e = RpcError::invalid_request(
                "subscriptions/listen answers with an event stream: Accept text/event-stream",
            )
            .with_status(StatusCode::NOT_ACCEPTABLE);
            return reject(e, Some(&id));
        }
        let guard = app.guards.for_request(who);
        let judge = guard.as_deref().map(|g| g as &dyn crate::session::guard::Guard);
        return match listen::listen(session, id.clone(), params.tree(), judge, app.streams_stop.clone()).await {
            Ok(response) => response,
            Err(e) => reject(e, Some(&id)),
        };
    }
    let outcome = if method == "server/discover" {
        Ok(Reply::Tree(discover(&session)))
    } else {
        run(app, &session, &method, params, who, pool, &envelope.capabilities).await
    };
    answer(&id, outcome.map(|r| stateless_result(r, cacheable)), format)
}

async fn run(
    app: &App,
    session: &Arc<Session>,
    method: &str,
    params: Params,
    who: &Identity<'_>,
    pool: &str,
    capabilities: &Value,
) -> Result<Reply, RpcError> {
    let command = Command::parse(method, params.without_envelope())?;
    let guard = app.guards.for_request(who);
    if !command.reaches_backend() {
        return apply_with(app, session, method, command, guard.as_ref(), &CallContext::default()).await;
    }
    // The call runs here until its backend asks the client something; then
    // it pauses on its own and outlives this request. What the backend says
    // meanwhile has no stream to go to in this era; a list change still
    // refreshes the pool's catalog.
    let (relay, relayed) = tokio::sync::mpsc::unbounded_channel();
    let (metrics, running_session) = (Arc::clone(&app.metrics), Arc::clone(session));
    let label = Command::method_label(method);
    let call = Box::pin(
        async move {
            let ctx = CallContext::new(relay, CancellationToken::new());
            super::exec::run(&metrics, &running_session, label, command, guard.as_deref(), &ctx).await
        }
        .in_current_span(),
    );
    let running = input::Running {
        call: input::Call::Here(call),
        relayed,
        session: Arc::clone(session),
    };
    finish(app, running, pool, capabilities).await
}

/// A request's params: a `tools/call`'s read with its envelope in one pass
/// (arguments left as the client's text, as on the handshake path), any
/// other method's as a tree.
enum Params {
    Call(ToolCall),
    Tree(Option<Value>),
}

impl Params {
    fn view(&self) -> Option<ParamsView<'_>> {
        match self {
            Self::Call(call) => Some(ParamsView::ToolCall(call)),
            Self::Tree(tree) => tree.as_ref().map(ParamsView::Tree),
        }
    }

    /// What goes on to the command: the envelope's `_meta` keys dropped.
    fn without_envelope(self) -> RequestParams {
        match self {
            Self::Tree(mut tree) => {
                if let Some(p) = tree.as_mut() {
                    strip_envelope(p);
                }
                RequestParams::Tree(tree)
            }
            Self::Call(mut call) => {
                let emptied = call
                    .get_mut("_meta")
                    .and_then(Value::as_object_mut)
                    .is_some_and(strip_meta);
                if emptied {
                    call.remove("_meta");
                }
                RequestParams::Call(call)
            }
        }
    }

    /// As a tree, for a method whose params are one (never `tools/call`).
    fn tree(&self) -> Option<&Value> {
        match self {
            Self::Tree(tree) => tree.as_ref(),
            Self::Call(_) => None,
        }
    }
}

/// The request in `body`: a plain request read in one pass (most are: see
/// [`Message::plain_request`]), else as a tree, refused with the errors
/// [`Message::classify`] gives. `Err`: the response already decided.
fn read(body: &Bytes) -> Result<(Value, String, Params), Response<Body>> {
    if let Some(Message::Request { id, method, params }) = Message::plain_request(body) {
        let params = match params {
            RequestParams::Call(call) => Params::Call(call),
            other => Params::Tree(other.into_tree().map_err(|e| reject(e, Some(&id)))?),
        };
        return Ok((id, method, params));
    }
    let value: Value =
        serde_json::from_slice(body).map_err(|e| reject(RpcError::parse(format!("parse error: {e}")), None))?;
    if value.is_array() {
        return Err(reject(RpcError::invalid_request("2026-07-28 has no batches"), None));
    }
    match Message::classify(value) {
        Err((id, e)) => Err(reject(e, id.as_ref())),
        Ok(Message::Request { id, method, params }) => match params.into_tree() {
            Ok(tree) => Ok((id, method, Params::Tree(tree))),
            Err(e) => Err(reject(e, Some(&id))),
        },
        // A cancellation or another notice: nothing runs that it could reach.
        Ok(Message::Notification { .. }) => Err(reply::empty(StatusCode::ACCEPTED)),
        Ok(Message::Response { .. }) => Err(reject(
            RpcError::invalid_request("2026-07-28 clients answer nothing"),
            None,
        )),
    }
}

/// A retry's `requestState`: the paused call goes on (judged once, when it started).
fn request_state(params: Option<ParamsView<'_>>) -> Option<&str> {
    params?.get("requestState")?.as_str()
}

/// The capability a client needs to answer a backend's question.
fn needed(request: &Value) -> Option<&'static str> {
    match request.get("method").and_then(Value::as_str)? {
        "elicitation/create" => Some("elicitation"),
        "sampling/createMessage" => Some("sampling"),
        "roots/list" => Some("roots"),
        _ => None,
    }
}

/// The call's result, or an `InputRequiredResult` if its backend asks the client something.
async fn finish(app: &App, running: input::Running, pool: &str, capabilities: &Value) -> Result<Reply, RpcError> {
    match input::step(running).await {
        input::Step::Done(outcome) => outcome,
        input::Step::Asks { running, request } => {
            // A question this request's client declared it cannot answer: -32021, the call ends.
            if let Some(capability) = needed(&request).filter(|c| capabilities.get(*c).is_none()) {
                running.call.abort();
                return Err(RpcError {
                    code: era::MISSING_CAPABILITY,
                    message: format!(
                        "the backend asks the client for `{capability}`, which this request does not declare"
                    ),
                    data: Some(json!({ "requiredCapabilities": { capability: {} } })),
                    status: StatusCode::OK,
                });
            }
            app.paused.pause(running, request, pool).map(Reply::Tree)
        }
    }
}

/// What the backends are told about the client: its own capabilities (a
/// backend that asks it something mid-call gets its answer through an
/// `InputRequiredResult`, see [`input`]).
fn client_init(envelope: &Envelope) -> (Value, String) {
    let capabilities = envelope.capabilities.clone();
    let client = envelope
        .client
        .clone()
        .unwrap_or_else(|| json!({ "name": "2026-07-28 client (via vmcp)", "version": "0" }));
    let version = crate::mcp::LATEST_VERSION;
    let init = json!({ "protocolVersion": version, "capabilities": capabilities, "clientInfo": client });
    (init, version.to_owned())
}

/// `server/discover`: the aggregated capabilities, and every version vmcp speaks.
fn discover(session: &Session) -> Value {
    json!({
        "supportedVersions": era::supported_versions(),
        "capabilities": session.capabilities(),
        "instructions": session.instructions(),
        "_meta": { "io.modelcontextprotocol/serverInfo": { "name": "vmcp", "version": env!("CARGO_PKG_VERSION") } },
    })
}

/// The request's envelope keys are the front's business, not the backends'.
fn strip_envelope(params: &mut Value) {
    let emptied = params
        .get_mut("_meta")
        .and_then(Value::as_object_mut)
        .is_some_and(strip_meta);
    if emptied {
        if let Some(p) = params.as_object_mut() {
            p.remove("_meta");
        }
    }
}

/// Drops the envelope's keys from a `_meta`; whether it is empty then.
fn strip_meta(meta: &mut Map<String, Value>) -> bool {
    meta.retain(|k, _| !k.starts_with("io.modelcontextprotocol/"));
    meta.is_empty()
}

/// A result as 2026-07-28 shapes it: `resultType`, and cache hints where they
/// apply (private to the caller, not to be reused: today's backends give none).
fn stateless_result(reply: Reply, cacheable: bool) -> Reply {
    const COMPLETE: &[(&str, &str)] = &[("resultType", r#""complete""#)];
    const CACHED: &[(&str, &str)] = &[
        ("resultType", r#""complete""#),
        ("cacheScope", r#""private""#),
        ("ttlMs", "0"),
    ];
    let extra = if cacheable { CACHED } else { COMPLETE };
    match reply {
        Reply::Tree(Value::Object(mut map)) => {
            for (k, v) in extra {
                map.entry(*k)
                    .or_insert_with(|| serde_json::from_str(v).unwrap_or(Value::Null));
            }
            Reply::Tree(Value::Object(map))
        }
        Reply::Raw(raw) => Reply::Raw(with_fields(raw, extra)),
        other => other,
    }
}

/// `raw` (a backend's object, kept as its bytes) with `extra` fields (name,
/// JSON text) in front of its own, unless it names them already.
fn with_fields(raw: Box<RawValue>, extra: &[(&str, &str)]) -> Box<RawValue> {
    let text = raw.get().trim_start();
    let Some(rest) = text.strip_prefix('{') else {
        return raw;
    };
    let names = |key: &str| {
        text.match_indices(key)
            .any(|(at, _)| text[..at].ends_with('"') && text[at + key.len()..].starts_with('"'))
    };
    let mut out = String::with_capacity(text.len() + 64);
    out.push('{');
    for (key, value) in extra {
        if !names(key) {
            for part in ["\"", key, "\":", value, ","] {
                out.push_str(part);
            }
        }
    }
    if rest.trim_start().starts_with('}') && out.ends_with(',') {
        out.pop();
    }
    out.push_str(rest);
    RawValue::from_string(out).unwrap_or(raw)
}

fn accepts_sse(parts: &Parts) -> bool {
    parts
        .headers
        .get(http::header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("text/event-stream"))
}

fn unavailable(e: &ResolveError) -> RpcError {
    let status = match e {
        ResolveError::NotFound => StatusCode::NOT_FOUND,
        _ => StatusCode::SERVICE_UNAVAILABLE,
    };
    RpcError::internal(e.to_string()).with_status(status)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_gain_the_stateless_fields_without_losing_their_own() {
        let raw = RawValue::from_string(r#"{"content":[{"type":"text","text":"x"}],"isError":false}"#.into()).unwrap();
        let Reply::Raw(out) = stateless_result(Reply::Raw(raw), false) else {
            panic!("raw stays raw");
        };
        let v: Value = serde_json::from_str(out.get()).unwrap();
        assert_eq!(v["resultType"], "complete");
        assert_eq!(v["content"][0]["text"], "x");
        assert!(v.get("ttlMs").is_none());

        let empty = RawValue::from_string("{ }".into()).unwrap();
        let Reply::Raw(out) = stateless_result(Reply::Raw(empty), true) else {
            panic!("raw stays raw");
        };
        let v: Value = serde_json::from_str(out.get()).unwrap();
        assert_eq!(
            (v["cacheScope"].as_str(), v["ttlMs"].as_i64()),
            (Some("private"), Some(0))
        );

        let Reply::Tree(v) = stateless_result(Reply::Tree(json!({"tools": [], "resultType": "x"})), true) else {
            panic!("tree stays tree");
        };
        assert_eq!(v["resultType"], "x", "a backend's own field wins");
        assert_eq!(v["ttlMs"], 0);
    }

    #[test]
    fn a_tools_call_is_read_in_one_pass_and_loses_only_the_envelope() {
        let body = Bytes::from_static(
            br#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"t","arguments":{"x":1},"_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28","progressToken":3},"requestState":"s"}}"#,
        );
        let Ok((id, method, params)) = read(&body) else {
            panic!("a plain request");
        };
        assert_eq!((id, method.as_str()), (json!(7), "tools/call"));
        assert!(matches!(params, Params::Call(_)), "not a tree");
        let view = params.view().unwrap();
        assert_eq!(view.get("name"), Some(&json!("t")));
        assert_eq!(request_state(Some(view)), Some("s"));
        let RequestParams::Call(call) = params.without_envelope() else {
            panic!("still a call");
        };
        assert_eq!(call.get("_meta"), Some(&json!({"progressToken": 3})));
        assert_eq!(call.to_tree().unwrap()["arguments"], json!({"x": 1}));

        let only_envelope = Bytes::from_static(
            br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"t","_meta":{"io.modelcontextprotocol/clientCapabilities":{}}}}"#,
        );
        let Ok((_, _, params)) = read(&only_envelope) else {
            panic!("a plain request");
        };
        let RequestParams::Call(call) = params.without_envelope() else {
            panic!("still a call");
        };
        assert_eq!(call.get("_meta"), None);
    }

    #[test]
    fn what_is_not_a_plain_request_is_read_as_a_tree_with_its_errors() {
        // An extra member: not plain, read as a tree, still served.
        let extra = Bytes::from_static(br#"{"jsonrpc":"2.0","id":1,"method":"tools/list","params":{},"x":0}"#);
        assert!(matches!(read(&extra), Ok((_, _, Params::Tree(Some(_))))));
        // A tools/call without a name is not plain either: the command refuses it later.
        let unnamed =
            Bytes::from_static(br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"arguments":{}}}"#);
        assert!(matches!(read(&unnamed), Ok((_, _, Params::Tree(Some(_))))));
        for bad in [&b"[]"[..], b"{", br#"{"jsonrpc":"1.0","id":1,"method":"m"}"#] {
            let Err(response) = read(&Bytes::copy_from_slice(bad)) else {
                panic!("refused");
            };
            assert_eq!(response.status(), StatusCode::BAD_REQUEST);
        }
        let notice = Bytes::from_static(br#"{"jsonrpc":"2.0","method":"notifications/cancelled"}"#);
        assert_eq!(read(&notice).err().map(|r| r.status()), Some(StatusCode::ACCEPTED));
    }

    #[test]
    fn the_envelope_stays_at_the_front() {
        let mut p = json!({"name": "t", "_meta": {"io.modelcontextprotocol/protocolVersion": "2026-07-28", "progressToken": 3}});
        strip_envelope(&mut p);
        assert_eq!(p, json!({"name": "t", "_meta": {"progressToken": 3}}));
        let mut p = json!({"_meta": {"io.modelcontextprotocol/clientCapabilities": {}}});
        strip_envelope(&mut p);
        assert_eq!(p, json!({}));
    }
}
