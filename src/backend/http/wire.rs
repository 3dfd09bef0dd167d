//! A backend's answers as read off the wire: the envelope of a JSON body,
//! or an SSE stream (resumed with `Last-Event-ID` when the backend closes it
//! before answering), and what vmcp sends, serialised from borrowed parts.

use std::time::Duration;

use futures_util::{FutureExt, Stream, StreamExt};
use http::StatusCode;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{client, transport, HttpSession, Response};
use crate::backend::{BackendError, Params};

/// A JSON-RPC request as sent (borrowing its params: no copy).
#[derive(Serialize)]
pub(super) struct Outgoing<'a> {
    pub jsonrpc: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<i64>,
    pub method: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub params: Option<Params<'a>>,
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

/// The result of request `id` from a JSON body or an SSE stream; other
/// messages on the stream go to `relay`.
pub(super) async fn read_response<R: DeserializeOwned>(
    response: Response,
    id: i64,
    session: Option<&HttpSession>,
    relay: &mut (dyn FnMut(Value) + Send),
) -> Result<R, BackendError> {
    let status = response.status();
    if status == StatusCode::NOT_FOUND && session.is_some_and(|s| s.session_id.is_some()) {
        return Err(BackendError::SessionExpired);
    }
    if status.is_redirection() {
        return Err(redirected(&response));
    }
    if is_event_stream(&response) && status.is_success() {
        // Boxed: 3.4 KB that a JSON answer would carry (and copy) for nothing.
        return Box::pin(read_events(response, id, session, relay)).await;
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

/// A backend's 3xx. A gateway does not follow redirects behind its
/// operator's back, but the operator should learn the URL to configure (a
/// trailing slash is the usual cause: Starlette redirects `/mcp/` to
/// `/mcp`): it is logged (credentials and query left out), and kept out of
/// the error, which reaches clients (backend URLs never do).
fn redirected(response: &Response) -> BackendError {
    let to = response
        .headers()
        .get(http::header::LOCATION)
        .and_then(|v| v.to_str().ok())
        .map_or_else(|| "nowhere (no Location)".to_owned(), crate::redact::url);
    tracing::warn!(status = %response.status(), location = %to, "a backend redirects; vmcp does not follow redirects: set the backend's url to where it points");
    BackendError::Protocol(format!(
        "HTTP {}: vmcp does not follow redirects (the replica's log says where it points)",
        response.status()
    ))
}

/// Why a backend's event stream broke off: its bound, the transport, or
/// what it sent (not UTF-8, a malformed line: the backend's fault, which
/// does not make it unreachable).
pub(in crate::backend) fn stream_error(e: sse_stream::Error) -> BackendError {
    match (&e, crate::pool::BodyError::too_large(&e)) {
        (_, Some(max)) => BackendError::TooLarge(max),
        (sse_stream::Error::Body(_), None) => BackendError::Transport(format!("SSE: {e}")),
        _ => BackendError::Protocol(format!("SSE: {e}")),
    }
}

pub(in crate::backend) fn is_event_stream(response: &Response) -> bool {
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
            let event = event.map_err(stream_error)?;
            last_event_id = event.id.or(last_event_id);
            retry = event.retry.map_or(retry, |ms| Duration::from_millis(ms).min(MAX_RETRY));
            let Some(data) = event.data.filter(|d| !d.trim().is_empty()) else {
                continue;
            };
            match ours(data.as_bytes(), id) {
                Some(result) => {
                    finish(events);
                    return result;
                }
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

/// How long the rest of a request's stream is read after its response.
const FINISH: Duration = Duration::from_secs(1);
/// How many events after the response are read (and dropped) at most.
const FINISH_EVENTS: usize = 16;

/// Reads the rest of a request's stream after its response, so that its
/// connection goes back to the pool. Servers end the stream right after
/// the response (rmcp, both SDKs; the spec's SHOULD), and HTTP/1 cannot
/// reuse a connection whose answer was left unread: dropping the stream
/// there cost a connect per call, and a socket in TIME_WAIT on our side.
/// What has already arrived is read at once; the rest in the background,
/// within `FINISH` and `FINISH_EVENTS`, else the connection is closed.
/// Events after the response have nowhere to go: the call has been answered.
fn finish<S, E>(mut events: S)
where
    S: Stream<Item = Result<sse_stream::Sse, E>> + Unpin + Send + 'static,
{
    let mut late = 0;
    let read_one = |event: Option<Result<sse_stream::Sse, E>>, late: &mut usize| match event {
        Some(Ok(event)) if *late < FINISH_EVENTS => {
            *late += 1;
            if event.data.is_some_and(|d| !d.trim().is_empty()) {
                tracing::debug!("a backend sent a message after its response on the request's stream: dropped");
            }
            true
        }
        _ => false, // the end (the connection is back), a broken stream, or too much
    };
    while let Some(event) = events.next().now_or_never() {
        if !read_one(event, &mut late) {
            return;
        }
    }
    tokio::spawn(async move {
        let rest = async { while read_one(events.next().await, &mut late) {} };
        let _ = tokio::time::timeout(FINISH, rest).await;
    });
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

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
