//! A 2026-07-28 backend's own messages: that era has no GET stream, so
//! the backend session's stream is one long `subscriptions/listen` request
//! asking for every list change the backend offers and the resources the
//! client subscribed to. The filter is fixed per request: when the
//! subscriptions change, a new listen opens (acknowledged) and the old one
//! is read on for a moment before it is dropped, so no update falls between
//! the two.
//!
//! What comes out looks like what a handshake-era backend sends on its GET
//! stream: the acknowledgement, the request's final result and the
//! subscription id in each notification's `_meta` stay here.

use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::{self, BoxStream};
use futures_util::StreamExt;
use serde_json::{json, Map, Value};
use tokio::time::Instant;

use super::http::{is_event_stream, transport, Poster};
use super::stateless::{self, Stateless};
use super::{client, BackendError, Params};

const ACKNOWLEDGED: &str = "notifications/subscriptions/acknowledged";
const SUBSCRIPTION_ID: &str = "io.modelcontextprotocol/subscriptionId";

/// The list changes a backend's capabilities offer, as filter flags.
fn offered(capabilities: &Value) -> Map<String, Value> {
    [
        ("tools", "toolsListChanged"),
        ("prompts", "promptsListChanged"),
        ("resources", "resourcesListChanged"),
    ]
    .into_iter()
    .filter(|(kind, _)| capabilities[kind]["listChanged"].as_bool() == Some(true))
    .map(|(_, flag)| (flag.to_owned(), json!(true)))
    .collect()
}

/// The backend's stream for one backend session; `None` if it offers
/// nothing to listen to (no list changes, no subscriptions, or no
/// `subscriptions/listen` at all). Returns once the backend acknowledged.
pub(super) async fn listen(
    poster: Poster,
    state: Arc<Stateless>,
    capabilities: &Value,
) -> Result<Option<BoxStream<'static, Value>>, BackendError> {
    let flags = offered(capabilities);
    let subscribable = capabilities["resources"]["subscribe"].as_bool() == Some(true);
    if flags.is_empty() && !subscribable {
        return Ok(None);
    }
    let (uris, seen) = state.subscribed();
    let Some(first) = open(&poster, &state, &flags, uris).await? else {
        return Ok(None);
    };
    let listening = Listening {
        poster,
        state,
        flags,
        seen,
        current: first,
        replaced: None,
    };
    Ok(Some(stream::unfold(listening, next).boxed()))
}

/// How long a replaced listen stream is still read after its successor was
/// acknowledged: what the backend sent on it before it took the new filter
/// may still be on its way.
const OVERLAP: Duration = Duration::from_secs(1);

/// The state of a backend session's stream between two messages.
struct Listening {
    poster: Poster,
    state: Arc<Stateless>,
    flags: Map<String, Value>,
    /// The generation of the subscriptions `current` was opened with.
    seen: u64,
    current: BoxStream<'static, Value>,
    /// The stream `current` replaced, read until its overlap is over.
    replaced: Option<(BoxStream<'static, Value>, Instant)>,
}

enum Step {
    Pass(Option<Value>),
    Replaced(Option<Value>),
    Reopen,
}

/// The next message for the session; `None` ends its stream.
async fn next(mut l: Listening) -> Option<(Value, Listening)> {
    loop {
        let step = {
            let changed = l.state.changed();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if l.state.generation() != l.seen {
                Step::Reopen
            } else {
                tokio::select! {
                    biased;
                    message = l.current.next() => Step::Pass(message),
                    message = from_replaced(&mut l.replaced) => Step::Replaced(message),
                    () = &mut changed => Step::Reopen,
                }
            }
        };
        match step {
            Step::Pass(message) => return message.map(|m| (m, l)),
            // An update of a resource no longer subscribed stays here.
            Step::Replaced(Some(m)) if wanted(&l.state, &m) => return Some((m, l)),
            Step::Replaced(Some(_)) => {}
            Step::Replaced(None) => l.replaced = None,
            Step::Reopen if l.state.generation() == l.seen => {}
            Step::Reopen => {
                let (uris, generation) = l.state.subscribed();
                l.seen = generation;
                // Make before break: the old stream is read on for a moment
                // once the new one is acknowledged.
                match open(&l.poster, &l.state, &l.flags, uris).await {
                    Ok(Some(next)) => {
                        let old = std::mem::replace(&mut l.current, next);
                        l.replaced = Some((old, Instant::now() + OVERLAP));
                    }
                    Ok(None) => return None,
                    Err(e) => {
                        tracing::debug!(error = %e, "reopening a backend's listen stream failed");
                        return None; // the listener opens it again, with the filter of then
                    }
                }
            }
        }
    }
}

/// The next message of the replaced stream; `None` once it ended or its
/// overlap is over; never, while there is none.
async fn from_replaced(replaced: &mut Option<(BoxStream<'static, Value>, Instant)>) -> Option<Value> {
    let Some((stream, until)) = replaced else {
        return std::future::pending().await;
    };
    tokio::select! {
        message = stream.next() => message,
        () = tokio::time::sleep_until(*until) => None,
    }
}

/// Whether a message of a replaced stream still goes to the session: all
/// but updates of resources it no longer subscribes to.
fn wanted(state: &Stateless, message: &Value) -> bool {
    message["method"] != "notifications/resources/updated"
        || message["params"]["uri"]
            .as_str()
            .is_some_and(|uri| state.is_subscribed(uri))
}

/// One `subscriptions/listen` request, read up to its acknowledgement.
async fn open(
    poster: &Poster,
    state: &Stateless,
    flags: &Map<String, Value>,
    uris: Vec<String>,
) -> Result<Option<BoxStream<'static, Value>>, BackendError> {
    let mut filter = flags.clone();
    if !uris.is_empty() {
        filter.insert("resourceSubscriptions".into(), json!(uris));
    }
    let params = stateless::with_envelope(Some(Params::Tree(&json!({ "notifications": filter }))), &state.envelope)?;
    let request = json!({
        "jsonrpc": "2.0",
        "id": "vmcp-listen",
        "method": "subscriptions/listen",
        "params": params,
    });
    let response = poster.post(&request).await?;
    if !is_event_stream(&response) {
        // An error instead of a stream: a backend that serves no listen offers nothing to listen to.
        let status = response.status();
        let body = client::bytes(response).await.map_err(transport)?;
        let answer: Value = serde_json::from_slice(&body).unwrap_or_default();
        return match answer["error"]["code"].as_i64() {
            Some(-32601) => Ok(None),
            Some(code) => Err(BackendError::Protocol(format!("subscriptions/listen answered {code}"))),
            None => Err(BackendError::Protocol(format!(
                "subscriptions/listen answered {status}"
            ))),
        };
    }
    let mut messages = sse_stream::SseStream::new(response.into_body())
        .take_while(|event| std::future::ready(event.is_ok()))
        .filter_map(|event| async move { serde_json::from_str::<Value>(&event.ok()?.data?).ok() })
        .boxed();
    let bound = poster.notice_timeout();
    match tokio::time::timeout(bound, messages.next()).await {
        Ok(Some(first)) if first["method"] == ACKNOWLEDGED => {}
        Ok(_) => {
            return Err(BackendError::Protocol(
                "subscriptions/listen was not acknowledged".into(),
            ))
        }
        Err(_) => return Err(BackendError::Timeout(bound)),
    }
    // The request's result ends the stream (the backend closes it after).
    let notifications = messages
        .take_while(|m| std::future::ready(m.get("method").is_some()))
        .filter_map(|mut m| async move {
            if m["method"] == ACKNOWLEDGED {
                return None;
            }
            strip(&mut m);
            Some(m)
        });
    Ok(Some(notifications.boxed()))
}

/// Takes the listen request's subscription id out of a notification: the
/// session's own stream is not that subscription.
fn strip(message: &mut Value) {
    let Some(params) = message.get_mut("params").and_then(Value::as_object_mut) else {
        return;
    };
    let emptied = params
        .get_mut("_meta")
        .and_then(Value::as_object_mut)
        .is_some_and(|meta| {
            meta.remove(SUBSCRIPTION_ID);
            meta.is_empty()
        });
    if emptied {
        params.remove("_meta");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_filter_asks_for_what_the_backend_offers() {
        let caps = json!({"tools": {"listChanged": true}, "prompts": {}, "resources": {"listChanged": true}});
        let flags = offered(&caps);
        assert_eq!(
            Value::Object(flags),
            json!({"toolsListChanged": true, "resourcesListChanged": true})
        );
        let mut m = json!({"method": "notifications/resources/updated",
            "params": {"uri": "a://b", "_meta": {SUBSCRIPTION_ID: "vmcp-listen"}}});
        strip(&mut m);
        assert_eq!(
            m,
            json!({"method": "notifications/resources/updated", "params": {"uri": "a://b"}})
        );
        let mut kept = json!({"method": "x", "params": {"_meta": {SUBSCRIPTION_ID: 1, "other": 2}}});
        strip(&mut kept);
        assert_eq!(kept["params"]["_meta"], json!({"other": 2}));
    }
}
