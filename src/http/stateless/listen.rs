//! `subscriptions/listen` (2026-07-28): one long-lived SSE answer that first
//! acknowledges what the client opted in to, then carries the list changes
//! and resource updates it asked for, each tagged with the listen request's
//! id, and ends with the request's result when vmcp tears it down (the
//! caller's pool closed, or this replica draining).
//!
//! The notifications come from the caller's pooled session: its backends'
//! own streams (opened while someone listens) and vmcp's aggregate, which
//! announces a list change once however many backends changed.

use std::sync::Arc;

use futures_util::stream;
use http::Response;
use serde_json::{json, Map, Value};
use tokio::sync::broadcast::error::RecvError;

use super::super::reply::{self, Body};
use crate::backend::CallContext;
use crate::mcp::RpcError;
use crate::session::guard::Guard;
use crate::session::{Event, Session};

/// The filter's opt-ins, by the notification each one lets through.
const LIST_CHANGES: &[(&str, &str, &str)] = &[
    ("toolsListChanged", "notifications/tools/list_changed", "tools"),
    ("promptsListChanged", "notifications/prompts/list_changed", "prompts"),
    (
        "resourcesListChanged",
        "notifications/resources/list_changed",
        "resources",
    ),
];

/// What the client asked for, cut down to what vmcp can send.
struct Filter {
    lists: Vec<&'static str>,
    uris: Vec<String>,
}

impl Filter {
    /// The client's `notifications` filter against the pool's capabilities.
    fn agree(asked: &Value, capabilities: &Value) -> (Self, Value) {
        let mut lists = Vec::new();
        let mut agreed = Map::new();
        for (flag, method, capability) in LIST_CHANGES {
            let wanted = asked.get(*flag).and_then(Value::as_bool) == Some(true);
            let offered = capabilities.get(*capability).is_some();
            if wanted && offered {
                lists.push(*method);
                agreed.insert((*flag).to_owned(), json!(true));
            }
        }
        let subscribable = capabilities["resources"]["subscribe"].as_bool() == Some(true);
        let uris: Vec<String> = asked
            .get("resourceSubscriptions")
            .and_then(Value::as_array)
            .filter(|_| subscribable)
            .map(|a| a.iter().filter_map(Value::as_str).map(str::to_owned).collect())
            .unwrap_or_default();
        if !uris.is_empty() {
            agreed.insert("resourceSubscriptions".into(), json!(uris));
        }
        (Self { lists, uris }, Value::Object(agreed))
    }

    /// `event` as this stream delivers it (tagged with `id`), if it passes.
    fn pass(&self, event: &Event, id: &Value) -> Option<String> {
        let mut message: Value = serde_json::from_str(&event.data).ok()?;
        let method = message.get("method").and_then(Value::as_str)?;
        let wanted = self.lists.contains(&method)
            || (method == "notifications/resources/updated"
                && message["params"]["uri"]
                    .as_str()
                    .is_some_and(|u| self.uris.iter().any(|w| w == u)));
        if !wanted {
            return None;
        }
        tag(&mut message, id);
        Some(reply::unnumbered_event(&message.to_string()))
    }
}

fn tag(message: &mut Value, id: &Value) {
    if !message["params"].is_object() {
        message["params"] = json!({});
    }
    message["params"]["_meta"]["io.modelcontextprotocol/subscriptionId"] = id.clone();
}

/// Opens the listen stream for request `id` on `session`.
pub async fn listen(
    session: Arc<Session>,
    id: Value,
    params: Option<&Value>,
    guard: Option<&dyn Guard>,
    stop: tokio_util::sync::CancellationToken,
) -> Result<Response<Body>, RpcError> {
    let asked = params
        .and_then(|p| p.get("notifications"))
        .filter(|n| n.is_object())
        .ok_or_else(|| RpcError::invalid_params("subscriptions/listen needs a `notifications` filter"))?;
    let (filter, agreed) = Filter::agree(asked, &session.capabilities());
    // The backends must know which resources to report on (each subscription judged as `subscribe`).
    for uri in &filter.uris {
        let params = json!({ "uri": uri });
        Box::pin(session.by_uri("resources/subscribe", params, &CallContext::default(), guard))
            .await
            .map_err(crate::mcp::command::to_rpc)?;
    }
    let live = session.events_since(None).await.live;
    let listening = session.listen();
    // The backends' own streams open before the acknowledgement: what changes after it is seen.
    listening.settled(std::time::Duration::from_secs(1)).await;
    let mut ack = json!({
        "jsonrpc": "2.0",
        "method": "notifications/subscriptions/acknowledged",
        "params": { "notifications": agreed },
    });
    tag(&mut ack, &id);
    let first = reply::unnumbered_event(&ack.to_string());
    let state = (Some(first), live, Some((session, stop)), listening, filter, id);
    let frames = stream::unfold(state, |(first, mut live, end, hold, filter, id)| async move {
        if let Some(text) = first {
            return Some((text, (None, live, end, hold, filter, id)));
        }
        let (session, stop) = end?;
        loop {
            tokio::select! {
                _ = stop.cancelled() => return Some((ended(&id), (None, live, None, hold, filter, id))),
                _ = session.closed() => return Some((ended(&id), (None, live, None, hold, filter, id))),
                received = tokio::time::timeout(reply::KEEP_ALIVE_EVERY, live.recv()) => match received {
                    Ok(Ok(event)) => if let Some(text) = filter.pass(&event, &id) {
                        return Some((text, (None, live, Some((session, stop)), hold, filter, id)));
                    },
                    // Nothing is replayed in this era: a reader that fell behind just carries on.
                    Ok(Err(RecvError::Lagged(_))) => {}
                    Ok(Err(RecvError::Closed)) => return Some((ended(&id), (None, live, None, hold, filter, id))),
                    Err(_) => return Some((reply::KEEP_ALIVE_COMMENT.to_owned(), (None, live, Some((session, stop)), hold, filter, id))),
                },
            }
        }
    });
    Ok(reply::sse(frames))
}

/// The listen request's result: the subscription ended gracefully.
fn ended(id: &Value) -> String {
    let result = json!({
        "jsonrpc": "2.0",
        "id": id,
        "result": { "resultType": "complete", "_meta": { "io.modelcontextprotocol/subscriptionId": id } },
    });
    reply::unnumbered_event(&result.to_string())
}
