//! Reading SSE responses event by event, as a streaming MCP client does (the
//! plain [`Client`](super::Client) reads a whole response at once).

use std::time::Duration;

use futures_util::StreamExt;
use serde_json::{json, Value};

use super::Client;

/// One SSE event: its id (if any) and its JSON data (`Null` for a priming event).
#[derive(Debug, Clone)]
pub struct Event {
    pub id: Option<String>,
    pub data: Value,
}

/// The events of one SSE response, in order.
pub struct Events {
    pub status: http::StatusCode,
    pub content_type: String,
    inner: futures_util::stream::BoxStream<'static, Event>,
}

impl Events {
    /// The events of any SSE response.
    pub fn of(response: reqwest::Response) -> Self {
        Self::from(response)
    }

    fn from(response: reqwest::Response) -> Self {
        let status = response.status();
        let content_type = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        let inner = sse_stream::SseStream::from_bytes_stream(response.bytes_stream())
            .filter_map(|e| async move {
                let e = e.ok()?;
                if e.id.is_none() && e.data.is_none() {
                    return None; // a comment or a bare `retry`
                }
                let data = e.data.as_deref().map(str::trim).filter(|d| !d.is_empty());
                Some(Event {
                    id: e.id,
                    data: data.map_or(Value::Null, |d| serde_json::from_str(d).expect("JSON data")),
                })
            })
            .boxed();
        Self {
            status,
            content_type,
            inner,
        }
    }

    /// The next event, or `None` if the stream ends (or nothing comes within 10 s).
    pub async fn next(&mut self) -> Option<Event> {
        tokio::time::timeout(Duration::from_secs(10), self.inner.next())
            .await
            .ok()
            .flatten()
    }

    /// Whether the stream ends within `limit` (events before the end are skipped).
    pub async fn ends_within(&mut self, limit: Duration) -> bool {
        let end = async { while self.inner.next().await.is_some() {} };
        tokio::time::timeout(limit, end).await.is_ok()
    }

    /// Reads a call's stream to its end: the notifications, then the response.
    pub async fn until_response(&mut self) -> (Vec<Value>, Value) {
        let mut notes = Vec::new();
        loop {
            let event = self
                .next_message()
                .await
                .expect("the call's stream ends with its response");
            if event.data.get("method").is_some() {
                notes.push(event.data);
            } else {
                return (notes, event.data);
            }
        }
    }

    /// The next event whose data is a message (skipping priming events).
    pub async fn next_message(&mut self) -> Option<Event> {
        loop {
            let event = self.next().await?;
            if !event.data.is_null() {
                return Some(event);
            }
        }
    }
}

impl Client {
    /// Initializes with a chosen protocol version and client capabilities.
    pub async fn initialize_as(&mut self, version: &str, capabilities: Value) {
        let body = json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
            "protocolVersion": version, "capabilities": capabilities, "clientInfo": {"name": "vmcp-tests", "version": "1"}
        }});
        let reply = self.post_raw(body.to_string(), &[]).await;
        assert_eq!(reply.status, http::StatusCode::OK, "initialize failed: {reply:?}");
        self.session = reply
            .headers
            .get("mcp-session-id")
            .map(|v| v.to_str().expect("ascii").to_owned());
        self.notify("notifications/initialized").await;
    }

    fn with_session(&self, mut req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        if let Some(sid) = &self.session {
            req = req.header("mcp-session-id", sid);
        }
        req
    }

    /// POSTs one message and reads the answer as events.
    pub async fn post_events(&self, message: Value) -> Events {
        let req = self
            .http()
            .post(&self.url)
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream");
        let response = self
            .with_session(req)
            .body(message.to_string())
            .send()
            .await
            .expect("POST sent");
        Events::from(response)
    }

    /// Opens the session's GET stream, resuming after `last_event_id` if given.
    pub async fn get_events(&self, last_event_id: Option<&str>) -> Events {
        let mut req = self.http().get(&self.url).header("accept", "text/event-stream");
        if let Some(id) = last_event_id {
            req = req.header("last-event-id", id);
        }
        Events::from(self.with_session(req).send().await.expect("GET sent"))
    }

    /// POSTs a message that gets no JSON-RPC answer (a notification or a response).
    pub async fn send(&self, message: Value) -> http::StatusCode {
        self.post_raw(message.to_string(), &[]).await.status
    }
}
