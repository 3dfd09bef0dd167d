//! What backends send on their own while a session lives (progress, logs,
//! list changes, resource updates, and their own requests to the client),
//! turned into what the client sees, and the client's answers turned back.
//!
//! - Logs name their backend: `logger` becomes `{backend}/{logger}`.
//! - A backend's `list_changed` refreshes that backend's part of the
//!   aggregate; the gateway announces each aggregated list that really
//!   changed, once, whichever backend (or stream) reported it.
//! - A backend's request gets the client-facing id `vmcp.{backend}.{id}`,
//!   so the client's answer finds its backend on any replica that holds the
//!   session, with no table to share (backend names are `[a-z0-9-]+`).

use std::sync::Arc;

use serde_json::{json, Value};

use super::events::{Event, Subscription, KEEP as EVENTS_KEPT};
use super::{Session, SessionError};
use crate::backend::{BackendSession, FromBackend};
use crate::store::StoredEvent;

const ID_PREFIX: &str = "vmcp.";

/// The client-facing id of request `id` that `backend` sent.
pub fn outward_id(backend: &str, id: &Value) -> Value {
    Value::String(format!("{ID_PREFIX}{backend}.{id}"))
}

/// The backend and its own request id behind a client-facing id.
pub fn inward_id(id: &Value) -> Option<(&str, Value)> {
    let (backend, raw) = id.as_str()?.strip_prefix(ID_PREFIX)?.split_once('.')?;
    Some((backend, serde_json::from_str(raw).ok()?))
}

impl Session {
    /// What the client should see of a backend's message; `None` when the
    /// gateway absorbs it (a list change becomes the gateway's own, if any).
    pub async fn outward(&self, from: FromBackend) -> Option<Value> {
        let FromBackend { backend, mut message } = from;
        let method = message.get("method").and_then(Value::as_str)?.to_owned();
        if let Some(id) = message.get("id").cloned() {
            message["id"] = outward_id(&backend, &id);
            return Some(message);
        }
        match method.as_str() {
            "notifications/message" => {
                let logger = message.pointer("/params/logger").and_then(Value::as_str);
                let named = logger.map_or_else(|| backend.to_string(), |l| format!("{backend}/{l}"));
                if let Some(params) = message.get_mut("params").and_then(Value::as_object_mut) {
                    params.insert("logger".into(), Value::String(named));
                }
            }
            "notifications/cancelled" => {
                // The backend gave up on one of its own requests to the client.
                if let Some(id) = message.pointer_mut("/params/requestId") {
                    *id = outward_id(&backend, id);
                }
            }
            m if m.ends_with("/list_changed") => {
                self.refresh(&backend).await;
                return None;
            }
            _ => {}
        }
        Some(message)
    }

    /// Sends a message to the client's GET streams. It is numbered and kept
    /// here and (replicated) in the store *before* it goes out, so a client
    /// that reconnects on any replica can get it again; publishing is
    /// serialised so that streams see ids in order.
    pub async fn publish(&self, message: &Value) {
        let _in_order = self.publishing.lock().await;
        let event = self.events.record(message);
        let kept = StoredEvent {
            id: event.id,
            data: event.data.to_string(),
        };
        if let Err(e) = self.factory.store().append_event(&self.id, &kept, EVENTS_KEPT).await {
            tracing::warn!(session.id = %self.id, error = %e, "stream event not stored; replay elsewhere will miss it");
        }
        self.events.send(event);
    }

    /// The session's messages to its client: those after `last_seen` (a
    /// reconnecting client's `Last-Event-ID`), then the live ones. Events
    /// from before this runtime (an earlier holder of the session) come
    /// from the store.
    pub async fn events_since(&self, last_seen: Option<u64>) -> Subscription {
        let mut subscription = self.events.subscribe(last_seen);
        let first = self.events.first_id();
        let Some(last) = last_seen.filter(|last| last.saturating_add(1) < first) else {
            return subscription;
        };
        match self.factory.store().events_between(&self.id, last, first).await {
            Ok(older) => {
                let older = older.into_iter().map(|e| {
                    Arc::new(Event {
                        id: e.id,
                        data: e.data.into_boxed_str(),
                    })
                });
                subscription.missed.splice(0..0, older);
            }
            Err(e) => tracing::warn!(session.id = %self.id, error = %e, "earlier stream events not replayed"),
        }
        subscription
    }

    /// The client's answer to a backend's request goes back to that backend.
    pub async fn answer(&self, mut message: Value) -> Result<(), SessionError> {
        let id = message.get("id").cloned().unwrap_or(Value::Null);
        let (backend, original) =
            inward_id(&id).ok_or_else(|| SessionError::InvalidParams(format!("no request has id {id}")))?;
        let target = self.backend_named(backend)?;
        message["id"] = original;
        target.deliver(&message).await.map_err(|error| SessionError::Backend {
            backend: backend.to_owned(),
            error,
        })
    }

    /// A notification from the client: cancellations reach the backend that
    /// runs the request; root changes reach every backend.
    pub async fn client_notification(&self, method: &str, params: Option<Value>) {
        match method {
            "notifications/cancelled" => {
                let Some(id) = params.as_ref().and_then(|p| p.get("requestId")) else {
                    return;
                };
                if let Some((backend, original)) = inward_id(id) {
                    // The client gave up on a backend's request (e.g. an elicitation).
                    if let Ok(target) = self.backend_named(backend) {
                        let mut params = params.clone().unwrap_or_else(|| json!({}));
                        params["requestId"] = original;
                        target.notify(method, Some(params)).await;
                    }
                } else {
                    self.calls.cancel(id);
                }
            }
            "notifications/roots/list_changed" => {
                let backends: Vec<Arc<BackendSession>> = self.read().backends.values().cloned().collect();
                futures_util::future::join_all(backends.iter().map(|b| b.notify(method, params.clone()))).await;
            }
            _ => {}
        }
    }

    pub(super) fn backend_named(&self, name: &str) -> Result<Arc<BackendSession>, SessionError> {
        let state = self.read();
        if state.closed {
            return Err(SessionError::Closed);
        }
        state
            .backends
            .get(name)
            .cloned()
            .ok_or_else(|| SessionError::BackendUnavailable(name.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip() {
        for id in [json!(7), json!("abc"), json!("a.b.c"), json!(-1)] {
            let out = outward_id("be-1", &id);
            assert_eq!(inward_id(&out), Some(("be-1", id)));
        }
        assert_eq!(inward_id(&json!(7)), None);
        assert_eq!(inward_id(&json!("7")), None);
        assert_eq!(inward_id(&json!("vmcp.x.not json")), None);
    }
}
