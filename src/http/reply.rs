//! Building HTTP responses: JSON, single-event SSE, empty, and errors.

use std::convert::Infallible;

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Full};
use serde_json::Value;

use crate::mcp::RpcError;

/// Every response body of the front door: buffered, SSE streams, and bodies
/// streamed back from an owner replica (whose errors end the stream).
pub type Body = UnsyncBoxBody<Bytes, BoxError>;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

pub const SESSION_HEADER: &str = "mcp-session-id";
pub const PROTOCOL_HEADER: &str = "mcp-protocol-version";

fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never: Infallible| match never {})
        .boxed_unsync()
}

/// How the client wants POST answers: JSON when it accepts it, else SSE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Json,
    Sse,
}

/// A response with `status` and a JSON-RPC payload in `format`.
pub fn message(status: StatusCode, format: Format, payload: &Value) -> Response<Body> {
    let text = payload.to_string();
    let (content_type, body) = match format {
        Format::Json => ("application/json", text),
        Format::Sse => ("text/event-stream", format!("event: message\ndata: {text}\n\n")),
    };
    let mut response = Response::new(full(body));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    if format == Format::Sse {
        response
            .headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    }
    response
}

/// A JSON-RPC error for request `id`, as JSON, with the error's own HTTP status.
/// A 503 also says when to come back.
pub fn error(err: &RpcError, id: Option<&Value>) -> Response<Body> {
    let mut response = message(err.status, Format::Json, &err.to_body(id));
    if err.status == StatusCode::SERVICE_UNAVAILABLE {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    response
}

/// A response with no body.
pub fn empty(status: StatusCode) -> Response<Body> {
    let mut response = Response::new(full(Bytes::new()));
    *response.status_mut() = status;
    response
}

/// Keep-alive comments on idle event streams, so proxies do not cut them.
const KEEP_ALIVE: std::time::Duration = std::time::Duration::from_secs(15);

/// Why an event stream ends.
pub enum StreamEnd {
    /// The session is gone: nothing to reconnect to.
    Closed,
    /// This replica is going away: reconnect (to another replica) after a second.
    Reconnect,
}

/// An SSE response carrying each message of `events` until `end` resolves.
pub fn event_stream(
    events: tokio::sync::broadcast::Receiver<std::sync::Arc<str>>,
    end: impl std::future::Future<Output = StreamEnd> + Send + 'static,
) -> Response<Body> {
    use futures_util::StreamExt;
    use http_body_util::StreamBody;
    use hyper::body::Frame;
    use tokio::sync::broadcast::error::RecvError;

    let end = Box::pin(end);
    let frames = futures_util::stream::unfold((events, Some(end)), |(mut events, end)| async move {
        let mut end = end?;
        let text = tokio::select! {
            how = &mut end => match how {
                StreamEnd::Closed => return None,
                // One last frame, then the stream ends (`None` next time round).
                StreamEnd::Reconnect => {
                    let frame = Frame::data(Bytes::from_static(b"retry: 1000\n\n"));
                    return Some((Ok::<_, BoxError>(frame), (events, None)));
                }
            },
            received = tokio::time::timeout(KEEP_ALIVE, events.recv()) => match received {
                Ok(Ok(message)) => format!("event: message\ndata: {message}\n\n"),
                Ok(Err(RecvError::Lagged(n))) => format!(": {n} messages dropped (slow reader)\n\n"),
                Ok(Err(RecvError::Closed)) => return None,
                Err(_) => ": keep-alive\n\n".to_owned(),
            },
        };
        Some((Ok::<_, BoxError>(Frame::data(Bytes::from(text))), (events, Some(end))))
    });
    let mut response = Response::new(BodyExt::boxed_unsync(StreamBody::new(frames.boxed())));
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

/// Plain text, for health checks and metrics.
pub fn text(status: StatusCode, content_type: &'static str, body: String) -> Response<Body> {
    let mut response = Response::new(full(body));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}
