//! One variant per MCP method the gateway serves, parsed from the raw request
//! (so unknown methods and bad params get their own JSON-RPC codes) and applied
//! to a session.

use http::StatusCode;
#[allow(deprecated)]
// logging/setLevel: deprecated by SEP-2577, still used by handshake-era clients
use rmcp::model::{
    CompleteRequestParams, GetPromptRequestParams, InitializeRequestParams, PaginatedRequestParams,
    ReadResourceRequestParams, SetLevelRequestParams, SubscribeRequestParams, UnsubscribeRequestParams,
};
use serde::de::DeserializeOwned;
use serde_json::{json, Value};

use super::jsonrpc::RequestParams;
use super::RpcError;
use crate::backend::{BackendError, CallContext, Reply, ToolCall};
use crate::session::guard::{Guard, Refusal};
use crate::session::{ListKind, Session, SessionError};

/// An MCP request, validated.
#[derive(Debug)]
pub enum Command {
    Initialize(Value),
    Ping,
    List(ListKind, Option<String>),
    CallTool(ToolCall),
    GetPrompt(Value),
    ReadResource(Value),
    Complete(Value),
    SetLogLevel(Value),
    Subscribe(Value),
    Unsubscribe(Value),
}

/// `params` must deserialize into `T`; the untouched value is kept for forwarding.
fn checked<T: DeserializeOwned>(params: Option<Value>) -> Result<Value, RpcError> {
    let value = params.unwrap_or_else(|| json!({}));
    // Checked by reference: no copy of the params on the request path.
    T::deserialize(&value).map_err(|e| RpcError::invalid_params(format!("invalid params: {e}")))?;
    Ok(value)
}

fn list(kind: ListKind, params: Option<Value>) -> Result<Command, RpcError> {
    let value = checked::<PaginatedRequestParams>(params)?;
    let cursor = value.get("cursor").and_then(Value::as_str).map(str::to_owned);
    Ok(Command::List(kind, cursor))
}

impl Command {
    /// Validates a request; `-32601` for unknown methods, `-32602` for bad params.
    /// `tools/call` is the hot path: its `arguments` stay the client's JSON
    /// text when they came as such (see [`ToolCall`]); what it accepts
    /// matches `CallToolRequestParams`.
    #[allow(deprecated)] // SetLevelRequestParams, see the import
    pub fn parse(method: &str, params: impl Into<RequestParams>) -> Result<Self, RpcError> {
        let params = params.into();
        if method == "tools/call" {
            let call = match params {
                RequestParams::Raw(raw) => ToolCall::from_raw(&raw),
                RequestParams::Call(call) => Ok(call),
                RequestParams::Tree(tree) => ToolCall::from_tree(tree),
            };
            return call
                .map(Self::CallTool)
                .map_err(|e| RpcError::invalid_params(format!("invalid params: {e}")));
        }
        let params = params.into_tree()?;
        Ok(match method {
            "initialize" => Self::Initialize(checked::<InitializeRequestParams>(params)?),
            "ping" => Self::Ping,
            "tools/list" => list(ListKind::Tools, params)?,
            "prompts/list" => list(ListKind::Prompts, params)?,
            "resources/list" => list(ListKind::Resources, params)?,
            "resources/templates/list" => list(ListKind::ResourceTemplates, params)?,
            "prompts/get" => Self::GetPrompt(checked::<GetPromptRequestParams>(params)?),
            "resources/read" => Self::ReadResource(checked::<ReadResourceRequestParams>(params)?),
            "completion/complete" => Self::Complete(checked::<CompleteRequestParams>(params)?),
            "logging/setLevel" => Self::SetLogLevel(checked::<SetLevelRequestParams>(params)?),
            "resources/subscribe" => Self::Subscribe(checked::<SubscribeRequestParams>(params)?),
            "resources/unsubscribe" => Self::Unsubscribe(checked::<UnsubscribeRequestParams>(params)?),
            other => return Err(RpcError::method_not_found(other)),
        })
    }

    /// A bounded label for metrics and logs.
    /// The methods that get a metrics label of their own.
    pub const METHOD_LABELS: &'static [&'static str] = &[
        "initialize",
        "ping",
        "tools/list",
        "prompts/list",
        "resources/list",
        "resources/templates/list",
        "tools/call",
        "prompts/get",
        "resources/read",
        "completion/complete",
        "logging/setLevel",
        "resources/subscribe",
        "resources/unsubscribe",
    ];

    pub fn method_label(method: &str) -> &'static str {
        Self::METHOD_LABELS
            .iter()
            .copied()
            .find(|m| *m == method)
            .unwrap_or("other")
    }

    /// Whether a backend serves this request, and so may send progress, logs
    /// or requests of its own while it runs.
    pub fn reaches_backend(&self) -> bool {
        matches!(
            self,
            Self::CallTool(_) | Self::GetPrompt(_) | Self::ReadResource(_) | Self::Complete(_)
        )
    }

    /// Runs the command against `session` (everything but `initialize`);
    /// `ctx` carries what the backend relays and the client's cancellation.
    /// `guard` judges what the request does to an item (policies, limits).
    pub async fn apply(
        self,
        session: &Session,
        ctx: &CallContext,
        guard: Option<&dyn Guard>,
    ) -> Result<Reply, RpcError> {
        let result = match self {
            Self::Initialize(_) => return Err(RpcError::invalid_request("session already initialized")),
            Self::Ping => Ok(Reply::Tree(json!({}))),
            Self::List(kind, cursor) => session.list(kind, cursor.as_deref(), guard).await.map(Reply::Tree),
            Self::CallTool(p) => session.call_tool(p, ctx, guard).await,
            Self::GetPrompt(p) => session.get_prompt(p, ctx, guard).await,
            Self::ReadResource(p) => session.by_uri("resources/read", p, ctx, guard).await,
            Self::Complete(p) => session.complete(p, ctx, guard).await,
            Self::SetLogLevel(p) => session.set_log_level(p).await.map(Reply::Tree),
            Self::Subscribe(p) => session.by_uri("resources/subscribe", p, ctx, guard).await,
            Self::Unsubscribe(p) => session.by_uri("resources/unsubscribe", p, ctx, guard).await,
        };
        result.map_err(to_rpc)
    }
}

/// A request a policy forbids (README "Authorization").
pub const FORBIDDEN: i32 = -32003;

/// Resource not found, as the MCP spec defines it.
const RESOURCE_NOT_FOUND: i32 = -32002;
/// Backend timeout, as the common SDKs report request timeouts.
const REQUEST_TIMEOUT: i32 = -32001;
/// A request the client cancelled (the code LSP uses; MCP defines none, and
/// a client ignores the answer to a request it cancelled anyway).
const REQUEST_CANCELLED: i32 = -32800;

/// How a session error is answered.
pub fn to_rpc(e: SessionError) -> RpcError {
    match e {
        SessionError::Closed => RpcError::invalid_request("session not found").with_status(StatusCode::NOT_FOUND),
        SessionError::UnknownTool(_) | SessionError::UnknownPrompt(_) | SessionError::InvalidParams(_) => {
            RpcError::invalid_params(e.to_string())
        }
        SessionError::UnknownResource(_) => RpcError::new(RESOURCE_NOT_FOUND, e.to_string(), StatusCode::OK),
        SessionError::BackendUnavailable(_) => RpcError::internal(e.to_string()),
        SessionError::Busy(_) => RpcError::new(
            super::jsonrpc::SESSION_BUSY,
            e.to_string(),
            StatusCode::TOO_MANY_REQUESTS,
        ),
        SessionError::Refused(denied @ Refusal::Denied { .. }) => {
            RpcError::new(FORBIDDEN, denied.to_string(), StatusCode::OK)
        }
        SessionError::Refused(Refusal::Limited { message, data, .. }) => {
            // `data.retry_after` (whole seconds) is also the `Retry-After` header.
            RpcError {
                code: super::jsonrpc::RATE_LIMITED,
                message,
                data: Some(data),
                status: StatusCode::TOO_MANY_REQUESTS,
            }
        }
        SessionError::Backend { backend, error } => match error {
            BackendError::Rpc { code, message, data } => RpcError {
                code,
                message,
                data,
                status: StatusCode::OK,
            },
            BackendError::Timeout(_) => {
                RpcError::new(REQUEST_TIMEOUT, format!("backend `{backend}`: {error}"), StatusCode::OK)
            }
            BackendError::Cancelled => RpcError::new(REQUEST_CANCELLED, "request cancelled", StatusCode::OK),
            other => RpcError::internal(format!("backend `{backend}`: {other}")),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::codes;

    #[test]
    fn unknown_methods_and_bad_params_have_their_codes() {
        assert_eq!(
            Command::parse("nope/nope", None).unwrap_err().code,
            codes::METHOD_NOT_FOUND
        );
        assert_eq!(
            Command::parse("tools/call", Some(json!({"name": 5}))).unwrap_err().code,
            codes::INVALID_PARAMS
        );
        assert_eq!(
            Command::parse("tools/call", None).unwrap_err().code,
            codes::INVALID_PARAMS
        );
        assert!(Command::parse("tools/call", Some(json!({"name": "x", "arguments": {"a": 1}}))).is_ok());
        assert!(matches!(
            Command::parse("tools/list", None),
            Ok(Command::List(ListKind::Tools, None))
        ));
        assert_eq!(
            Command::parse("resources/read", Some(json!({}))).unwrap_err().code,
            codes::INVALID_PARAMS
        );
    }

    #[test]
    fn tool_call_params_are_checked_like_the_typed_params() {
        let cases = [
            json!({"name": "x"}),
            json!({"name": "x", "arguments": {"a": [1]}}),
            json!({"name": "x", "arguments": null}),
            json!({"name": "x", "_meta": {"progressToken": 1}}),
            json!({"name": 1}),
            json!({"name": "x", "arguments": "nope"}),
            json!({"name": "x", "arguments": [1]}),
            json!({}),
        ];
        for case in cases {
            let typed = serde_json::from_value::<rmcp::model::CallToolRequestParams>(case.clone()).is_ok();
            assert_eq!(
                Command::parse("tools/call", Some(case.clone())).is_ok(),
                typed,
                "{case}"
            );
            let raw = serde_json::value::RawValue::from_string(case.to_string()).unwrap();
            assert_eq!(
                Command::parse("tools/call", RequestParams::Raw(raw)).is_ok(),
                typed,
                "{case} as text"
            );
        }
    }

    #[test]
    fn labels_are_bounded() {
        assert_eq!(Command::method_label("tools/call"), "tools/call");
        assert_eq!(Command::method_label("evil/../../x"), "other");
    }
}
