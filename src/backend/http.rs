//! Streamable HTTP backends through rmcp's `StreamableHttpClient` on `reqwest`.
//!
//! One `reqwest::Client` (connection pool) per backend serves every session; a
//! session is its `Mcp-Session-Id`, the negotiated protocol version and an id
//! counter. Each request is one POST whose answer is JSON or an SSE stream
//! that ends with our response.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use futures_util::StreamExt;
use http::{HeaderName, HeaderValue};
use rmcp::model::{ClientJsonRpcMessage, JsonRpcMessage, NumberOrString, ServerJsonRpcMessage};
use rmcp::transport::streamable_http_client::{StreamableHttpClient, StreamableHttpError, StreamableHttpPostResponse};
use serde_json::{json, Value};

use super::{rpc_error, BackendError};

/// The shared, pooled client of one Streamable HTTP backend.
pub struct HttpBackend {
    url: Arc<str>,
    client: reqwest::Client,
    headers: HashMap<HeaderName, HeaderValue>,
}

impl HttpBackend {
    pub fn new(url: &str, headers: &BTreeMap<String, String>) -> Result<Self, BackendError> {
        let mut parsed = HashMap::new();
        for (k, v) in headers {
            let name = HeaderName::from_bytes(k.as_bytes())
                .map_err(|e| BackendError::Protocol(format!("header name {k}: {e}")))?;
            let value = HeaderValue::from_str(v).map_err(|e| BackendError::Protocol(format!("header {k}: {e}")))?;
            parsed.insert(name, value);
        }
        let client = reqwest::Client::builder()
            .tcp_nodelay(true)
            .pool_idle_timeout(std::time::Duration::from_secs(90))
            .build()
            .map_err(|e| BackendError::Transport(e.to_string()))?;
        Ok(Self {
            url: Arc::from(url),
            client,
            headers: parsed,
        })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// Handshake: `initialize`, then `notifications/initialized` on the new session.
    pub async fn connect(&self, params: Value) -> Result<HttpSession, BackendError> {
        let message = to_message(json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": params}))?;
        let response = self
            .client
            .post_message(self.url.clone(), message, None, None, self.headers.clone())
            .await
            .map_err(classify)?;
        let session_id = match &response {
            StreamableHttpPostResponse::Json(_, sid) | StreamableHttpPostResponse::Sse(_, sid) => sid.clone(),
            _ => None,
        };
        let init = await_response(response, &NumberOrString::Number(0)).await?;
        let protocol_version = init
            .get("protocolVersion")
            .and_then(Value::as_str)
            .ok_or_else(|| BackendError::Protocol("initialize result without protocolVersion".into()))?
            .to_owned();
        let session = HttpSession {
            url: self.url.clone(),
            client: self.client.clone(),
            headers: self.headers.clone(),
            session_id: session_id.map(Arc::from),
            protocol_version,
            next_id: AtomicI64::new(1),
            init,
        };
        session.notify("notifications/initialized", None).await?;
        Ok(session)
    }
}

impl HttpBackend {
    /// A session the backend already knows (from stored metadata): no I/O.
    pub fn resume(&self, session_id: &str, protocol_version: String, capabilities: Value) -> HttpSession {
        HttpSession {
            url: self.url.clone(),
            client: self.client.clone(),
            headers: self.headers.clone(),
            session_id: Some(Arc::from(session_id)),
            init: json!({ "protocolVersion": protocol_version, "capabilities": capabilities }),
            protocol_version,
            next_id: AtomicI64::new(random_first_id()),
        }
    }
}

/// Request ids of a resumed session start at a random offset, so they cannot
/// collide with ids the previous holder of the session may still have in flight.
fn random_first_id() -> i64 {
    let mut bytes = [0u8; 4];
    let _ = getrandom::fill(&mut bytes);
    (i64::from(u32::from_le_bytes(bytes)) << 16) + 1
}

/// One backend session over Streamable HTTP.
pub struct HttpSession {
    url: Arc<str>,
    client: reqwest::Client,
    headers: HashMap<HeaderName, HeaderValue>,
    session_id: Option<Arc<str>>,
    protocol_version: String,
    next_id: AtomicI64,
    init: Value,
}

impl HttpSession {
    pub fn init_result(&self) -> &Value {
        &self.init
    }

    pub fn session_id(&self) -> Option<&str> {
        self.session_id.as_deref()
    }

    pub fn protocol_version(&self) -> &str {
        &self.protocol_version
    }

    fn headers(&self) -> HashMap<HeaderName, HeaderValue> {
        let mut headers = self.headers.clone();
        if let Ok(v) = HeaderValue::from_str(&self.protocol_version) {
            headers.insert(HeaderName::from_static("mcp-protocol-version"), v);
        }
        headers
    }

    pub async fn request(&self, method: &str, params: Option<Value>) -> Result<Value, BackendError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut body = json!({"jsonrpc": "2.0", "id": id, "method": method});
        if let Some(p) = params {
            body["params"] = p;
        }
        let response = self
            .client
            .post_message(
                self.url.clone(),
                to_message(body)?,
                self.session_id.clone(),
                None,
                self.headers(),
            )
            .await
            .map_err(classify)?;
        await_response(response, &NumberOrString::Number(id)).await
    }

    pub async fn notify(&self, method: &str, params: Option<Value>) -> Result<(), BackendError> {
        let mut body = json!({"jsonrpc": "2.0", "method": method});
        if let Some(p) = params {
            body["params"] = p;
        }
        self.client
            .post_message(
                self.url.clone(),
                to_message(body)?,
                self.session_id.clone(),
                None,
                self.headers(),
            )
            .await
            .map_err(classify)?;
        Ok(())
    }

    /// DELETEs the backend session; a backend that forgot it already is fine.
    pub async fn close(&self) {
        let Some(sid) = self.session_id.clone() else {
            return;
        };
        if let Err(e) = self
            .client
            .delete_session(self.url.clone(), sid, None, self.headers())
            .await
        {
            tracing::debug!(url = %self.url, error = %e, "backend session DELETE failed");
        }
    }
}

fn to_message(body: Value) -> Result<ClientJsonRpcMessage, BackendError> {
    serde_json::from_value(body).map_err(|e| BackendError::Protocol(format!("cannot encode request: {e}")))
}

/// Waits for the response with id `id` in a JSON body or an SSE stream.
async fn await_response(response: StreamableHttpPostResponse, id: &NumberOrString) -> Result<Value, BackendError> {
    match response {
        StreamableHttpPostResponse::Accepted => Err(BackendError::Protocol("202 Accepted for a request".into())),
        StreamableHttpPostResponse::Json(message, _) => match_response(message, id)
            .unwrap_or_else(|| Err(BackendError::Protocol("JSON answer is not our response".into()))),
        StreamableHttpPostResponse::Sse(mut stream, _) => {
            while let Some(event) = stream.next().await {
                let event = event.map_err(|e| BackendError::Transport(format!("SSE: {e}")))?;
                let Some(data) = event.data.filter(|d| !d.trim().is_empty()) else {
                    continue;
                };
                let message: ServerJsonRpcMessage = match serde_json::from_str(&data) {
                    Ok(m) => m,
                    Err(e) => {
                        tracing::debug!(error = %e, "skipping unparsable SSE event from backend");
                        continue;
                    }
                };
                if let Some(result) = match_response(message, id) {
                    return result;
                }
            }
            Err(BackendError::Transport("SSE stream ended before the response".into()))
        }
        _ => Err(BackendError::Protocol("unsupported response kind".into())),
    }
}

/// `Some` if `message` answers request `id`; notifications and requests from
/// the backend are skipped here (relaying them is the streaming layer's job).
fn match_response(message: ServerJsonRpcMessage, id: &NumberOrString) -> Option<Result<Value, BackendError>> {
    match message {
        JsonRpcMessage::Response(r) if &r.id == id => {
            Some(serde_json::to_value(r.result).map_err(|e| BackendError::Protocol(format!("result: {e}"))))
        }
        JsonRpcMessage::Error(e) if e.id.as_ref().is_none_or(|eid| eid == id) => Some(Err(rpc_error(&e.error))),
        _ => None,
    }
}

/// Maps rmcp's transport errors onto the gateway's classes.
fn classify(e: StreamableHttpError<reqwest::Error>) -> BackendError {
    match e {
        StreamableHttpError::SessionExpired => BackendError::SessionExpired,
        StreamableHttpError::Client(e) => BackendError::Transport(e.to_string()),
        StreamableHttpError::Io(e) => BackendError::Transport(e.to_string()),
        other => BackendError::Protocol(other.to_string()),
    }
}
