//! The client side of a stdio backend: what rmcp calls when the child
//! speaks first. Over HTTP a backend's messages come on the call's own
//! stream; a child has one pipe, so they are sorted here:
//! - progress goes to the call that asked for it, with the client's own
//!   token back in place (rmcp sends the child a token of its own);
//! - the child's requests (sampling, elicitation, roots) go to the newest
//!   running call, or to the session's listeners, and wait for the
//!   client's answer, which [`StdioClient::answer`] hands back;
//! - every other notification goes to the session's listeners.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};

use rmcp::model::{ClientConfig, ClientResult, ServerNotification, ServerRequest};
use rmcp::service::{NotificationContext, RequestContext};
use rmcp::{ErrorData, RoleClient};
use serde_json::{json, Value};
use tokio::sync::{broadcast, mpsc, oneshot};

use super::FromBackend;
use crate::sync::lock;

/// Where a running call's messages go.
pub(super) type CallRelay = mpsc::UnboundedSender<FromBackend>;

/// The service rmcp runs for one child; clones share one state.
#[derive(Clone)]
pub struct StdioClient(Arc<Inner>);

impl std::ops::Deref for StdioClient {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

pub struct Inner {
    info: ClientConfig,
    name: Arc<str>,
    /// rmcp's progress token (JSON text) → the client's token and the call's relay.
    progress: Mutex<HashMap<String, (Value, CallRelay)>>,
    /// Relays of the running calls, newest last (for the child's requests).
    calls: Mutex<Vec<(u64, CallRelay)>>,
    /// What no call takes, for the session's listeners.
    events: broadcast::Sender<Value>,
    /// The child's requests waiting for the client, by the id we gave them.
    pending: Mutex<HashMap<i64, oneshot::Sender<Value>>>,
    next_id: AtomicI64,
}

/// One running call, registered with the client service; forgotten on drop.
pub(super) struct CallRoute<'a> {
    client: &'a Inner,
    seq: u64,
    token: Option<String>,
    relay: Option<CallRelay>,
}

impl CallRoute<'_> {
    /// Progress under rmcp's token `ours` goes to this call as the client's `theirs`.
    /// (Progress the child sends before rmcp told us its token is lost; a
    /// child reports progress later than that in practice.)
    pub(super) fn map_progress(&mut self, ours: &Value, theirs: Option<&Value>) {
        let (Some(relay), Some(theirs)) = (&self.relay, theirs) else {
            return;
        };
        let key = ours.to_string();
        lock(&self.client.progress).insert(key.clone(), (theirs.clone(), relay.clone()));
        self.token = Some(key);
    }
}

impl Drop for CallRoute<'_> {
    fn drop(&mut self) {
        lock(&self.client.calls).retain(|(s, _)| *s != self.seq);
        if let Some(token) = &self.token {
            lock(&self.client.progress).remove(token);
        }
    }
}

/// How long a child's request waits for the client's answer (a person may be typing).
const ANSWER_WITHIN: std::time::Duration = std::time::Duration::from_secs(600);

impl StdioClient {
    pub fn new(info: ClientConfig, name: &str) -> Self {
        let (events, _) = broadcast::channel(64);
        Self(Arc::new(Inner {
            info,
            name: Arc::from(name),
            progress: Mutex::default(),
            calls: Mutex::default(),
            events,
            pending: Mutex::default(),
            next_id: AtomicI64::new(1),
        }))
    }
}

impl Inner {
    /// Routes the child's requests during one call to `relay` while it runs
    /// (registered before the request is sent, so none can come first).
    pub(super) fn route(&self, relay: Option<&CallRelay>) -> CallRoute<'_> {
        let seq = self.next_id.fetch_add(1, Ordering::Relaxed) as u64;
        if let Some(relay) = relay {
            lock(&self.calls).push((seq, relay.clone()));
        }
        CallRoute {
            client: self,
            seq,
            token: None,
            relay: relay.cloned(),
        }
    }

    /// A receiver of what no call takes.
    pub fn listen(&self) -> broadcast::Receiver<Value> {
        self.events.subscribe()
    }

    /// The client's answer to request `id` of the child; `false` if none waits.
    pub fn answer(&self, id: &Value, message: Value) -> bool {
        let waiting = id.as_i64().and_then(|id| lock(&self.pending).remove(&id));
        waiting.is_some_and(|w| w.send(message).is_ok())
    }

    fn send(&self, message: Value, relay: Option<CallRelay>) {
        let from = |message| FromBackend {
            backend: Arc::clone(&self.name),
            message,
        };
        match relay {
            Some(relay) => {
                if let Err(unsent) = relay.send(from(message)) {
                    let _ = self.events.send(unsent.0.message);
                }
            }
            // No listener just means nobody hears it, as over HTTP.
            None => drop(self.events.send(message)),
        }
    }

    fn newest_call(&self) -> Option<CallRelay> {
        lock(&self.calls).last().map(|(_, r)| r.clone())
    }

    async fn ask(&self, request: ServerRequest) -> Result<ClientResult, ErrorData> {
        let mut message = serde_json::to_value(&request).map_err(|e| ErrorData::internal_error(e.to_string(), None))?;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        message["jsonrpc"] = json!("2.0");
        message["id"] = json!(id);
        let (tx, rx) = oneshot::channel();
        lock(&self.pending).insert(id, tx);
        self.send(message, self.newest_call());
        let answer = match tokio::time::timeout(ANSWER_WITHIN, rx).await {
            Ok(Ok(answer)) => answer,
            _ => {
                lock(&self.pending).remove(&id);
                return Err(ErrorData::internal_error("the client did not answer", None));
            }
        };
        if let Some(error) = answer.get("error") {
            return Err(serde_json::from_value(error.clone())
                .unwrap_or_else(|_| ErrorData::internal_error(error.to_string(), None)));
        }
        let result = answer.get("result").cloned().unwrap_or_else(|| json!({}));
        let bad = |e: serde_json::Error| ErrorData::invalid_params(format!("client answer: {e}"), None);
        Ok(match request {
            ServerRequest::CreateMessageRequest(_) => {
                ClientResult::CreateMessageResult(Box::new(serde_json::from_value(result).map_err(bad)?))
            }
            ServerRequest::ListRootsRequest(_) => {
                ClientResult::ListRootsResult(serde_json::from_value(result).map_err(bad)?)
            }
            ServerRequest::ElicitRequest(_) => ClientResult::ElicitResult(serde_json::from_value(result).map_err(bad)?),
            _ => ClientResult::CustomResult(serde_json::from_value(result).map_err(bad)?),
        })
    }
}

impl rmcp::Service<RoleClient> for StdioClient {
    async fn handle_request(
        &self,
        request: ServerRequest,
        _: RequestContext<RoleClient>,
    ) -> Result<ClientResult, ErrorData> {
        if matches!(request, ServerRequest::PingRequest(_)) {
            return Ok(ClientResult::empty(()));
        }
        self.ask(request).await
    }

    async fn handle_notification(
        &self,
        notification: ServerNotification,
        _: NotificationContext<RoleClient>,
    ) -> Result<(), ErrorData> {
        let Ok(mut message) = serde_json::to_value(&notification) else {
            return Ok(());
        };
        message["jsonrpc"] = json!("2.0");
        // rmcp's typed round trip adds an empty `_meta` the child never sent.
        if let Some(params) = message.get_mut("params").and_then(Value::as_object_mut) {
            if params
                .get("_meta")
                .is_some_and(|m| m.as_object().is_some_and(|o| o.is_empty()))
            {
                params.remove("_meta");
            }
        }
        if let ServerNotification::ProgressNotification(_) = notification {
            let key = message.pointer("/params/progressToken").map(Value::to_string);
            let route = key.and_then(|k| lock(&self.progress).get(&k).cloned());
            if let Some((theirs, relay)) = route {
                message["params"]["progressToken"] = theirs;
                self.send(message, Some(relay));
            }
            return Ok(());
        }
        self.send(message, None);
        Ok(())
    }

    fn get_info(&self) -> ClientConfig {
        self.info.clone()
    }
}
