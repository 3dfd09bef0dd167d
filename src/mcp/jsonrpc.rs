//! The JSON-RPC envelope: classifying what a client sent, and errors that know
//! their code, their HTTP status and how to render their own body.

use http::StatusCode;
use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::{json, Value};

use crate::backend::{codes, Reply, ToolCall};

/// The owner of the session failed after a forwarded request was sent to it:
/// the request may or may not have run, so it is not run again elsewhere
/// (vmcp's own code, in the range JSON-RPC reserves for implementations).
pub const OUTCOME_UNKNOWN: i32 = -32050;
/// A session already has `session.max_calls` requests at its backends (HTTP 429).
pub const SESSION_BUSY: i32 = -32051;
/// A call over a rate limit (README "Rate limits"), with HTTP 429 and
/// `Retry-After`; `data` says which rule and when to retry.
pub const RATE_LIMITED: i32 = -32052;

/// An error answered to the client.
#[derive(Debug, Clone)]
pub struct RpcError {
    pub code: i32,
    pub message: String,
    pub data: Option<Value>,
    /// HTTP status of the answer carrying this error.
    pub status: StatusCode,
}

impl RpcError {
    pub fn new(code: i32, message: impl Into<String>, status: StatusCode) -> Self {
        Self {
            code,
            message: message.into(),
            data: None,
            status,
        }
    }

    pub fn parse(message: impl Into<String>) -> Self {
        Self::new(codes::PARSE_ERROR, message, StatusCode::BAD_REQUEST)
    }

    pub fn invalid_request(message: impl Into<String>) -> Self {
        Self::new(codes::INVALID_REQUEST, message, StatusCode::BAD_REQUEST)
    }

    pub fn method_not_found(method: &str) -> Self {
        Self::new(
            codes::METHOD_NOT_FOUND,
            format!("method not found: {method}"),
            StatusCode::OK,
        )
    }

    pub fn invalid_params(message: impl Into<String>) -> Self {
        Self::new(codes::INVALID_PARAMS, message, StatusCode::OK)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(codes::INTERNAL_ERROR, message, StatusCode::OK)
    }

    /// A non-idempotent request lost with its owner replica: 502, [`OUTCOME_UNKNOWN`].
    pub fn outcome_unknown() -> Self {
        Self::new(
            OUTCOME_UNKNOWN,
            "outcome unknown: the replica that owns this session failed after the request was sent; it may or may not have run",
            StatusCode::BAD_GATEWAY,
        )
    }

    pub fn with_status(mut self, status: StatusCode) -> Self {
        self.status = status;
        self
    }

    /// The JSON-RPC error response for request `id` (`null` when unknown).
    pub fn to_body(&self, id: Option<&Value>) -> Value {
        let mut error = json!({ "code": self.code, "message": self.message });
        if let Some(data) = &self.data {
            error["data"] = data.clone();
        }
        json!({ "jsonrpc": "2.0", "id": id.cloned().unwrap_or(Value::Null), "error": error })
    }
}

/// A successful JSON-RPC response, serialised as it stands: the hot path
/// writes the result (often a backend's raw bytes) with no tree built.
#[derive(Serialize)]
pub struct ResultBody<'a, R> {
    jsonrpc: &'static str,
    id: &'a Value,
    result: &'a R,
}

pub fn result_body<'a, R: Serialize>(id: &'a Value, result: &'a R) -> ResultBody<'a, R> {
    ResultBody {
        jsonrpc: "2.0",
        id,
        result,
    }
}

/// The JSON-RPC response to request `id`, as a tree (for batches and event
/// logs, which hold messages): its result or its error.
pub fn response_body(id: &Value, outcome: Result<Reply, RpcError>) -> Value {
    match outcome {
        Ok(result) => json!({ "jsonrpc": "2.0", "id": id, "result": result.into_value() }),
        Err(e) => e.to_body(Some(id)),
    }
}

/// One message a client POSTed.
#[derive(Debug)]
pub enum Incoming {
    Request {
        id: Value,
        method: String,
        params: RequestParams,
    },
    Notification {
        method: String,
        params: Option<Value>,
    },
    /// A response or error to a request the server sent, whole (to relay).
    Response {
        message: Value,
    },
}

/// A request's params as read: a tree, or the JSON text of a plain request
/// (read on the fast path), left for the command that takes it to read.
#[derive(Debug)]
pub enum RequestParams {
    Tree(Option<Value>),
    Raw(Box<RawValue>),
    /// A `tools/call`'s, read with the envelope (see [`Incoming::plain_request`]).
    Call(ToolCall),
}

impl RequestParams {
    /// The params as a tree (`None`: none sent).
    pub fn into_tree(self) -> Result<Option<Value>, RpcError> {
        match self {
            Self::Tree(tree) => Ok(tree),
            Self::Raw(raw) => serde_json::from_str(raw.get())
                .map(Some)
                .map_err(|e| RpcError::parse(format!("parse error: {e}"))),
            Self::Call(call) => call
                .to_tree()
                .map(Some)
                .map_err(|e| RpcError::invalid_params(format!("invalid params: arguments: {e}"))),
        }
    }
}

impl From<Option<Value>> for RequestParams {
    fn from(tree: Option<Value>) -> Self {
        Self::Tree(tree)
    }
}

impl Incoming {
    /// Checks the envelope; on failure returns the id (if readable) and the error.
    pub fn classify(value: Value) -> Result<Self, (Option<Value>, RpcError)> {
        let Value::Object(mut obj) = value else {
            return Err((None, RpcError::invalid_request("a JSON-RPC message must be an object")));
        };
        let id = obj.remove("id");
        let fail = |id: &Option<Value>, msg: &str| Err((id.clone().filter(valid_id), RpcError::invalid_request(msg)));
        if obj.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
            return fail(&id, "`jsonrpc` must be \"2.0\"");
        }
        if let Some(id) = &id {
            if !valid_id(id) {
                return fail(&None, "`id` must be a string or an integer");
            }
        }
        // `null` params are read as none sent (some clients write them).
        let params = obj.remove("params").filter(|p| !p.is_null());
        if !valid_params(params.as_ref()) {
            return fail(&id, "`params` must be an object");
        }
        match (obj.remove("method"), id) {
            (Some(Value::String(method)), Some(id)) => Ok(Self::Request {
                id,
                method,
                params: RequestParams::Tree(params),
            }),
            (Some(Value::String(method)), None) => Ok(Self::Notification { method, params }),
            (Some(_), id) => fail(&id, "`method` must be a string"),
            (None, Some(id)) if obj.contains_key("result") || obj.contains_key("error") => {
                obj.insert("id".into(), id);
                Ok(Self::Response {
                    message: Value::Object(obj),
                })
            }
            (None, id) => fail(&id, "neither a request, a notification nor a response"),
        }
    }
}

pub(super) fn valid_id(id: &Value) -> bool {
    id.is_string() || id.as_i64().is_some() || id.as_u64().is_some()
}

/// `params`, if sent, must be an object (MCP never sends them by position).
fn valid_params(params: Option<&Value>) -> bool {
    params.is_none_or(Value::is_object)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_messages() {
        let req = Incoming::classify(json!({"jsonrpc": "2.0", "id": 1, "method": "ping"})).unwrap();
        assert!(matches!(req, Incoming::Request { .. }));
        let note = Incoming::classify(json!({"jsonrpc": "2.0", "method": "notifications/initialized"})).unwrap();
        assert!(matches!(note, Incoming::Notification { .. }));
        let resp = Incoming::classify(json!({"jsonrpc": "2.0", "id": "a", "result": {}})).unwrap();
        assert!(matches!(resp, Incoming::Response { .. }));
    }

    #[test]
    fn a_plain_request_is_read_as_classify_reads_it() {
        let plain = [
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"x","arguments":{"a":1}}}"#,
            r#"{"method":"ping","id":"a\"b","jsonrpc":"2.0"}"#,
            r#" {"jsonrpc":"2\u002e0","id":18446744073709551615,"method":"tools/list","params":{}} "#,
            // params before method: kept as text, read once the method is known.
            r#"{"params":{"arguments":{"a":[1]},"name":"x","_meta":{}},"method":"tools/call","jsonrpc":"2.0","id":2}"#,
            r#"{"jsonrpc":"2.0","id":3,"method":"tools\/call","params":{"name":"x","name":"y"}}"#,
            r#"{"jsonrpc":"2.0","id":4,"method":"tools/call","params":{"name":"x","arguments":null}}"#,
            r#"{"jsonrpc":"2.0","id":5,"method":"tools/list","params":null}"#,
        ];
        let read = |m: Incoming| match m {
            Incoming::Request { id, method, params } => (id, method, params.into_tree().unwrap()),
            other => panic!("not a request: {other:?}"),
        };
        for text in plain {
            let fast = Incoming::plain_request(text.as_bytes()).expect(text);
            let slow = Incoming::classify(serde_json::from_str(text).unwrap()).unwrap();
            assert_eq!(read(fast), read(slow), "{text}");
        }
        // Everything else is left to `classify`, which gives the errors.
        let other = [
            r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#,
            r#"{"jsonrpc":"2.0","id":1,"result":{}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"x","extra":true}"#,
            r#"{"jsonrpc":"2.0","id":1,"id":2,"method":"x"}"#,
            r#"{"jsonrpc":"1.0","id":1,"method":"x"}"#,
            r#"{"jsonrpc":"2.0","id":null,"method":"x"}"#,
            r#"{"jsonrpc":"2.0","id":1.5,"method":"x"}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"x","params":[1]}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":7}"#,
            r#"[{"jsonrpc":"2.0","id":1,"method":"x"}]"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"x"} trailing"#,
            r#"["2.0",1,"x"]"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"x","params":{},"params":{}}"#,
            // A tools/call that is not one: classify and the command give the error.
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":7}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"x","arguments":[1]}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":null}"#,
        ];
        for text in other {
            assert!(Incoming::plain_request(text.as_bytes()).is_none(), "{text}");
        }
    }

    #[test]
    fn rejects_bad_envelopes_keeping_the_id() {
        let (id, e) = Incoming::classify(json!({"jsonrpc": "1.0", "id": 7, "method": "x"})).unwrap_err();
        assert_eq!((id, e.code), (Some(json!(7)), codes::INVALID_REQUEST));
        let (id, _) = Incoming::classify(json!({"jsonrpc": "2.0", "id": {"x": 1}, "method": "x"})).unwrap_err();
        assert_eq!(id, None);
        assert!(Incoming::classify(json!([1])).is_err());
        assert!(Incoming::classify(json!({"jsonrpc": "2.0", "id": 1, "method": "x", "params": [1]})).is_err());
    }
}
