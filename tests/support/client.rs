//! A small MCP client over raw HTTP, so tests can also send what no SDK would.

use http::StatusCode;
use reqwest::header::HeaderMap;
use serde_json::{json, Value};

pub struct Client {
    http: reqwest::Client,
    pub url: String,
    pub session: Option<String>,
    /// Sent as `Authorization: Bearer …` when set.
    pub token: Option<String>,
    next_id: std::sync::atomic::AtomicI64,
}

/// What came back: status, headers and the JSON-RPC payload (if any).
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Value,
}

impl Reply {
    pub fn result(&self) -> &Value {
        assert!(self.body.get("error").is_none(), "expected a result, got {}", self.body);
        &self.body["result"]
    }

    pub fn error_code(&self) -> i64 {
        self.body["error"]["code"]
            .as_i64()
            .unwrap_or_else(|| panic!("expected an error, got {}", self.body))
    }

    /// The text of the first content block of a tool result.
    pub fn text(&self) -> String {
        self.result()["content"][0]["text"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// The `instructions` of an `initialize` result (empty if absent).
    pub fn instructions(&self) -> String {
        self.result()["instructions"].as_str().unwrap_or_default().to_owned()
    }

    /// The `WWW-Authenticate` header (empty if absent).
    pub fn challenge(&self) -> String {
        self.headers
            .get("www-authenticate")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    }
}

impl Client {
    pub fn new(url: &str) -> Self {
        Self {
            http: super::http(),
            url: url.to_owned(),
            session: None,
            token: None,
            next_id: 1.into(),
        }
    }

    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// Same session, other entry point (another replica).
    pub fn via(&self, url: &str) -> Self {
        let mut c = Self::new(url);
        c.session = self.session.clone();
        c.token = self.token.clone();
        c
    }

    /// POSTs `body` with the usual MCP headers plus `extra`.
    pub async fn post_raw(&self, body: impl Into<reqwest::Body>, extra: &[(&str, &str)]) -> Reply {
        let mut req = self
            .http
            .post(&self.url)
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream");
        if let Some(sid) = &self.session {
            req = req.header("mcp-session-id", sid);
        }
        if let Some(token) = &self.token {
            req = req.bearer_auth(token);
        }
        for (k, v) in extra {
            req = req.header(*k, *v);
        }
        let resp = req.body(body).send().await.expect("request sent");
        Self::reply(resp).await
    }

    async fn reply(resp: reqwest::Response) -> Reply {
        let status = resp.status();
        let headers = resp.headers().clone();
        let is_sse = headers
            .get("content-type")
            .is_some_and(|v| v.to_str().unwrap_or("").starts_with("text/event-stream"));
        let text = resp.text().await.unwrap_or_default();
        let json_text = if is_sse {
            text.lines()
                .filter_map(|l| l.strip_prefix("data:"))
                .map(str::trim)
                .rfind(|d| !d.is_empty())
                .unwrap_or("")
                .to_owned()
        } else {
            text
        };
        let body = serde_json::from_str(&json_text).unwrap_or(Value::Null);
        Reply { status, headers, body }
    }

    pub async fn initialize(&mut self) -> Reply {
        let reply = self
            .post_raw(
                json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
                    "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "vmcp-tests", "version": "1"}
                }})
                .to_string(),
                &[],
            )
            .await;
        assert_eq!(reply.status, StatusCode::OK, "initialize failed: {reply:?}");
        self.session = reply
            .headers
            .get("mcp-session-id")
            .map(|v| v.to_str().expect("ascii").to_owned());
        assert!(self.session.is_some(), "no Mcp-Session-Id");
        let initialized = self.notify("notifications/initialized").await;
        assert_eq!(initialized, StatusCode::ACCEPTED);
        reply
    }

    pub async fn request(&self, method: &str, params: Value) -> Reply {
        let id = self.next_id.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let body = json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params});
        self.post_raw(body.to_string(), &[("mcp-protocol-version", "2025-06-18")])
            .await
    }

    pub async fn call_tool(&self, name: &str, arguments: Value) -> Reply {
        self.request("tools/call", json!({"name": name, "arguments": arguments}))
            .await
    }

    pub async fn notify(&self, method: &str) -> StatusCode {
        self.post_raw(json!({"jsonrpc": "2.0", "method": method}).to_string(), &[])
            .await
            .status
    }

    /// Names in a list result (`tools`, `prompts`, ...), following every page.
    pub async fn list_names(&self, method: &str, key: &str) -> Vec<String> {
        let mut names = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let params = cursor.as_ref().map_or_else(|| json!({}), |c| json!({"cursor": c}));
            let reply = self.request(method, params).await;
            let result = reply.result();
            for item in result[key].as_array().expect("list") {
                let name = item
                    .get("uri")
                    .or_else(|| item.get("name"))
                    .and_then(Value::as_str)
                    .expect("named");
                names.push(name.to_owned());
            }
            match result.get("nextCursor").and_then(Value::as_str) {
                Some(c) => cursor = Some(c.to_owned()),
                None => return names,
            }
        }
    }

    pub async fn delete(&self) -> StatusCode {
        let mut req = self.http.delete(&self.url);
        if let Some(sid) = &self.session {
            req = req.header("mcp-session-id", sid);
        }
        if let Some(token) = &self.token {
            req = req.bearer_auth(token);
        }
        req.send().await.expect("DELETE sent").status()
    }
}
