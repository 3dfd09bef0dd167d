//! Speaking MCP 2026-07-28 to a backend (`backends[].era`): no session,
//! every request self-contained. A request carries the client session's
//! envelope in `params._meta` and mirrors its method (and name) in headers.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use http::{HeaderMap, HeaderValue};
use serde_json::{json, Map, Value};
use tokio::sync::{oneshot, Notify};

use super::{BackendError, Params};
use crate::mcp::headers::{METHOD, NAME};
use crate::sync::lock;

/// Most rounds of input requests one call may go through.
pub const MAX_ROUNDS: usize = 8;

/// A stateless backend session: the envelope its requests carry, the
/// input requests of its calls waiting for the client's answers, and the
/// resources its client subscribed to.
pub struct Stateless {
    pub envelope: Value,
    waiting: Mutex<HashMap<String, oneshot::Sender<Result<Value, Value>>>>,
    next: AtomicU64,
    /// 2026-07-28 has no `resources/subscribe`: a subscription is a URI in
    /// the filter of the `subscriptions/listen` stream ([`super::subscriptions`]).
    subscribed: Mutex<BTreeSet<String>>,
    /// How many times `subscribed` changed, and the wake-up of the stream
    /// that must reopen with the new filter.
    generation: AtomicU64,
    changed: Notify,
}

impl Stateless {
    pub fn new(envelope: Value) -> Self {
        Self {
            envelope,
            waiting: Mutex::default(),
            next: AtomicU64::new(1),
            subscribed: Mutex::default(),
            generation: AtomicU64::new(0),
            changed: Notify::new(),
        }
    }

    /// Takes `resources/subscribe` or `resources/unsubscribe` here (the
    /// backend hears of it through the listen stream's filter): `Some` with
    /// the (empty) result for those two methods, `None` for any other.
    pub fn subscription(&self, method: &str, params: Option<Params<'_>>) -> Option<Result<(), BackendError>> {
        let subscribe = match method {
            "resources/subscribe" => true,
            "resources/unsubscribe" => false,
            _ => return None,
        };
        let Some(uri) = params.and_then(|p| p.get("uri")).and_then(Value::as_str) else {
            return Some(Err(BackendError::Rpc {
                code: -32602,
                message: format!("{method} needs a `uri`"),
                data: None,
            }));
        };
        let changed = {
            let mut subscribed = lock(&self.subscribed);
            if subscribe {
                subscribed.insert(uri.to_owned())
            } else {
                subscribed.remove(uri)
            }
        };
        if changed {
            self.generation.fetch_add(1, Ordering::AcqRel);
            self.changed.notify_waiters();
        }
        Some(Ok(()))
    }

    /// The subscribed URIs, and the generation they belong to.
    pub fn subscribed(&self) -> (Vec<String>, u64) {
        let subscribed = lock(&self.subscribed);
        (
            subscribed.iter().cloned().collect(),
            self.generation.load(Ordering::Acquire),
        )
    }

    /// Whether the client subscribes to resource `uri`.
    pub fn is_subscribed(&self, uri: &str) -> bool {
        lock(&self.subscribed).contains(uri)
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Resolves on the next change of the subscriptions (enable it before
    /// reading [`Self::generation`] so that no change falls in between).
    pub fn changed(&self) -> tokio::sync::futures::Notified<'_> {
        self.changed.notified()
    }

    /// Asks the client each of `requests` (an `InputRequiredResult`'s
    /// `inputRequests`) through `relay`, as requests of this backend.
    pub fn ask(
        &self,
        requests: &Map<String, Value>,
        relay: &mut (dyn FnMut(Value) + Send),
    ) -> Vec<(String, oneshot::Receiver<Result<Value, Value>>)> {
        requests
            .iter()
            .map(|(key, request)| {
                let id = format!("vmcp-input-{}", self.next.fetch_add(1, Ordering::Relaxed));
                let (tx, rx) = oneshot::channel();
                lock(&self.waiting).insert(id.clone(), tx);
                relay(json!({
                    "jsonrpc": "2.0",
                    "id": id,
                    "method": request.get("method").cloned().unwrap_or(Value::Null),
                    "params": request.get("params").cloned().unwrap_or_else(|| json!({})),
                }));
                (key.clone(), rx)
            })
            .collect()
    }

    /// Takes the client's answer to one of [`Self::ask`]'s requests; `false`
    /// if `message` answers none of them.
    pub fn answered(&self, message: &Value) -> bool {
        let Some(id) = message.get("id").and_then(Value::as_str) else {
            return false;
        };
        let Some(waiting) = lock(&self.waiting).remove(id) else {
            return false;
        };
        let answer = match (message.get("result"), message.get("error")) {
            (Some(result), _) => Ok(result.clone()),
            (None, error) => Err(error.cloned().unwrap_or(Value::Null)),
        };
        let _ = waiting.send(answer);
        true
    }

    /// The answers to `asked`, as `inputResponses`.
    pub async fn answers(
        asked: Vec<(String, oneshot::Receiver<Result<Value, Value>>)>,
    ) -> Result<Map<String, Value>, BackendError> {
        let mut responses = Map::new();
        for (key, rx) in asked {
            match rx.await {
                Ok(Ok(answer)) => {
                    responses.insert(key, answer);
                }
                Ok(Err(error)) => {
                    return Err(BackendError::Protocol(format!(
                        "the client refused an input request: {error}"
                    )))
                }
                Err(_) => return Err(BackendError::Protocol("an input request was never answered".into())),
            }
        }
        Ok(responses)
    }
}

/// `Some(inputRequests, requestState)` if `result` is an `InputRequiredResult`.
pub fn input_required(result: &Value) -> Option<(&Map<String, Value>, Option<&Value>)> {
    if result.get("resultType").and_then(Value::as_str) != Some("input_required") {
        return None;
    }
    let requests = result.get("inputRequests").and_then(Value::as_object)?;
    Some((requests, result.get("requestState")))
}

/// The stateless version vmcp speaks to backends.
pub const VERSION: &str = "2026-07-28";

/// The `_meta` envelope of a client session, from its `initialize` params.
pub fn envelope(init: &Value) -> Value {
    let mut meta = Map::new();
    meta.insert("io.modelcontextprotocol/protocolVersion".into(), json!(VERSION));
    let capabilities = init.get("capabilities").cloned().unwrap_or_else(|| json!({}));
    meta.insert("io.modelcontextprotocol/clientCapabilities".into(), capabilities);
    if let Some(info) = init.get("clientInfo") {
        meta.insert("io.modelcontextprotocol/clientInfo".into(), info.clone());
    }
    Value::Object(meta)
}

/// `params` with the envelope merged into its `_meta` (the caller's own keys kept).
pub fn with_envelope(params: Option<Params<'_>>, envelope: &Value) -> Result<Value, BackendError> {
    let mut params = params.map_or_else(|| Ok(json!({})), Params::to_tree)?;
    if !params.is_object() {
        return Ok(params);
    }
    if !params["_meta"].is_object() {
        params["_meta"] = json!({});
    }
    if let (Some(meta), Some(env)) = (params["_meta"].as_object_mut(), envelope.as_object()) {
        for (k, v) in env {
            meta.insert(k.clone(), v.clone());
        }
    }
    Ok(params)
}

/// The headers that mirror the body: `Mcp-Method`, and `Mcp-Name` where the
/// method names a tool, prompt or resource.
pub fn mirror(headers: &mut HeaderMap, method: &str, params: Option<Params<'_>>) {
    if let Ok(v) = HeaderValue::from_str(method) {
        headers.insert(METHOD, v);
    }
    let key = match method {
        "tools/call" | "prompts/get" => "name",
        "resources/read" => "uri",
        _ => return,
    };
    if let Some(v) = params
        .and_then(|p| p.get(key))
        .and_then(Value::as_str)
        .and_then(|n| HeaderValue::from_str(n).ok())
    {
        headers.insert(NAME, v);
    }
}

/// Whether a `server/discover` result says the backend speaks [`VERSION`].
pub fn is_modern(discovered: &Value) -> bool {
    discovered["supportedVersions"]
        .as_array()
        .is_some_and(|v| v.iter().any(|v| v == VERSION))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_envelope_joins_the_callers_meta() {
        let env = envelope(&json!({"capabilities": {"x": {}}, "clientInfo": {"name": "c", "version": "1"}}));
        let p = with_envelope(
            Some(Params::Tree(&json!({"name": "t", "_meta": {"progressToken": 1}}))),
            &env,
        )
        .unwrap();
        assert_eq!(p["_meta"]["progressToken"], 1);
        assert_eq!(p["_meta"]["io.modelcontextprotocol/protocolVersion"], VERSION);
        assert_eq!(p["_meta"]["io.modelcontextprotocol/clientInfo"]["name"], "c");
        let mut h = HeaderMap::new();
        mirror(&mut h, "tools/call", Some(Params::Tree(&p)));
        assert_eq!(h["mcp-method"], "tools/call");
        assert_eq!(h["mcp-name"], "t");
        assert!(is_modern(&json!({"supportedVersions": ["2026-07-28"]})));
        assert!(!is_modern(&json!({"supportedVersions": ["2025-11-25"]})));
    }
}
