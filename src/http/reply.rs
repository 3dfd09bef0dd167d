//! Building HTTP responses: JSON, single-event SSE, empty, and errors.

use std::convert::Infallible;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Full, StreamBody};
use hyper::body::Frame;
use serde_json::Value;

use crate::mcp::RpcError;
use crate::session::{Event, Subscription};

/// Every response body of the front door: buffered, SSE streams, and bodies
/// streamed back from an owner replica (whose errors end the stream).
pub type Body = UnsyncBoxBody<Bytes, BoxError>;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Built once: `from_static` checks its bytes when called outside a constant.
const JSON: HeaderValue = HeaderValue::from_static("application/json");

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
pub fn message(status: StatusCode, format: Format, payload: &impl serde::Serialize) -> Response<Body> {
    // Serialising plain data (trees, raw JSON, borrowed structs) cannot fail.
    let text = serde_json::to_string(payload).unwrap_or_default();
    let body = match format {
        Format::Json => text,
        Format::Sse => message_event(None, &text),
    };
    let mut response = Response::new(full(body));
    *response.status_mut() = status;
    if format == Format::Sse {
        sse_headers(&mut response);
    } else {
        response.headers_mut().insert(header::CONTENT_TYPE, JSON);
    }
    response
}

/// A JSON-RPC error for request `id`, as JSON, with the error's own HTTP status.
/// A 503 also says when to come back.
pub fn error(err: &RpcError, id: Option<&Value>) -> Response<Body> {
    let mut response = message(err.status, Format::Json, &err.to_body(id));
    if err.status == StatusCode::SERVICE_UNAVAILABLE || err.status == StatusCode::TOO_MANY_REQUESTS {
        // A rate limit says when (`data.retry_after`, seconds); else one second.
        let after = err
            .data
            .as_ref()
            .and_then(|d| d.get("retry_after"))
            .and_then(Value::as_u64)
            .and_then(|s| HeaderValue::from_str(&s.to_string()).ok())
            .unwrap_or(HeaderValue::from_static("1"));
        response.headers_mut().insert(header::RETRY_AFTER, after);
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

fn sse_headers(response: &mut Response<Body>) {
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
}

fn sse_frame(text: String) -> Result<Frame<Bytes>, BoxError> {
    Ok(Frame::data(Bytes::from(text)))
}

/// An SSE response carrying `events` (`(id, data)`) as they come, after a
/// priming event with id `priming` if given.
pub fn message_stream(
    priming: Option<String>,
    events: impl Stream<Item = (String, std::sync::Arc<str>)> + Send + 'static,
) -> Response<Body> {
    let first = futures_util::stream::iter(priming.map(|id| sse_frame(priming_event(&id))));
    let frames = events.map(|(id, data)| sse_frame(message_event(Some(&id), &data)));
    let mut response = Response::new(BodyExt::boxed_unsync(StreamBody::new(first.chain(frames).boxed())));
    sse_headers(&mut response);
    response
}

/// How a session's GET stream starts: with the events the client missed,
/// and, for 2025-11-25 clients, a priming event that gives it an id to
/// resume from even before the first message.
pub struct StreamStart {
    pub subscription: Subscription,
    pub priming_id: Option<u64>,
}

/// An SSE response carrying the session's events (each with its id) until
/// `end` resolves; `hold` lives as long as the stream (e.g. the session's
/// backend listeners).
pub fn event_stream(
    start: StreamStart,
    end: impl std::future::Future<Output = StreamEnd> + Send + 'static,
    hold: impl Send + 'static,
) -> Response<Body> {
    use tokio::sync::broadcast::error::RecvError;

    let StreamStart {
        subscription,
        priming_id,
    } = start;
    let mut first: Vec<String> = priming_id.map(|id| priming_event(&id)).into_iter().collect();
    first.extend(subscription.missed.iter().map(|e| event_text(e)));
    let state = (first.into_iter(), subscription.live, Some(Box::pin(end)), hold);
    let frames = futures_util::stream::unfold(state, |(mut first, mut live, end, hold)| async move {
        if let Some(text) = first.next() {
            return Some((sse_frame(text), (first, live, end, hold)));
        }
        let mut end = end?;
        let text = tokio::select! {
            how = &mut end => match how {
                StreamEnd::Closed => return None,
                // One last frame, then the stream ends (`None` next time round).
                StreamEnd::Reconnect => {
                    return Some((sse_frame("retry: 1000\n\n".into()), (first, live, None, hold)));
                }
            },
            received = tokio::time::timeout(KEEP_ALIVE, live.recv()) => match received {
                Ok(Ok(event)) => event_text(&event),
                // A reader too slow to keep up is not fed a gap (a lost
                // elicitation is a hung tool call): its stream ends with a
                // `retry` hint, and it resumes with `Last-Event-ID` from the
                // replay buffer.
                Ok(Err(RecvError::Lagged(n))) => {
                    tracing::info!(behind = n, "GET stream reader too slow: ended, to resume with Last-Event-ID");
                    return Some((sse_frame("retry: 1000\n\n".into()), (first, live, None, hold)));
                }
                Ok(Err(RecvError::Closed)) => return None,
                Err(_) => ": keep-alive\n\n".to_owned(),
            },
        };
        Some((sse_frame(text), (first, live, Some(end), hold)))
    });
    let mut response = Response::new(BodyExt::boxed_unsync(StreamBody::new(frames.boxed())));
    sse_headers(&mut response);
    response
}

fn event_text(event: &Event) -> String {
    message_event(Some(&event.id), &event.data)
}

/// One SSE event carrying a JSON-RPC message, with its id if it has one.
fn message_event(id: Option<&dyn std::fmt::Display>, data: &str) -> String {
    match id {
        Some(id) => format!("id: {id}\nevent: message\ndata: {data}\n\n"),
        None => format!("event: message\ndata: {data}\n\n"),
    }
}

/// An SSE response of ready-made frames (`text`: whole SSE events or comments).
pub fn sse(frames: impl Stream<Item = String> + Send + 'static) -> Response<Body> {
    let mut response = Response::new(BodyExt::boxed_unsync(StreamBody::new(frames.map(sse_frame).boxed())));
    sse_headers(&mut response);
    response
}

/// One SSE event carrying a JSON-RPC message, without an id (nothing resumes it).
pub fn unnumbered_event(data: &str) -> String {
    message_event(None, data)
}

/// An SSE comment that keeps an idle stream open through proxies.
pub const KEEP_ALIVE_COMMENT: &str = ": keep-alive\n\n";

/// How long an idle event stream waits before a keep-alive comment.
pub const KEEP_ALIVE_EVERY: std::time::Duration = KEEP_ALIVE;

/// A priming event (2025-11-25): an id to resume from, and no message.
fn priming_event(id: &dyn std::fmt::Display) -> String {
    format!("id: {id}\ndata: \n\n")
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use futures_util::StreamExt;
    use http_body_util::BodyExt;
    use tokio::sync::broadcast;

    use super::*;
    use crate::session::{Event, Subscription};

    #[tokio::test]
    async fn a_reader_that_fell_behind_is_ended_to_resume_not_fed_a_gap() {
        let (tx, live) = broadcast::channel(4);
        for id in 1..=10 {
            let _ = tx.send(Arc::new(Event {
                id,
                data: format!("{{\"n\":{id}}}").into_boxed_str(),
            }));
        }
        let start = StreamStart {
            subscription: Subscription {
                missed: Vec::new(),
                live,
            },
            priming_id: None,
        };
        let response = event_stream(start, std::future::pending::<StreamEnd>(), ());
        let mut frames = response.into_body().into_data_stream();
        let mut text = String::new();
        while let Some(Ok(frame)) = frames.next().await {
            text.push_str(&String::from_utf8_lossy(&frame));
        }
        assert_eq!(text, "retry: 1000\n\n", "no event after a gap, no comment hiding it");
        drop(tx);
    }
}
