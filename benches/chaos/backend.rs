//! The chaos run's backends: rmcp's Streamable HTTP server (stateful sessions,
//! as a real MCP server behaves) with one tool, `effect`, whose every
//! execution is recorded under its unique `op` argument. The record is the
//! ground truth the report checks answers against: an op counted twice ran
//! twice; an op answered "ok" but never counted was never run.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use rmcp::model::*;
use rmcp::service::RequestContext;
use rmcp::transport::streamable_http_server::{
    session::local::LocalSessionManager, StreamableHttpServerConfig, StreamableHttpService,
};
use rmcp::{ErrorData, RoleServer, ServerHandler};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// op -> how many times `effect` ran with it.
pub type Ledger = Arc<Mutex<HashMap<u64, u32>>>;

struct Handler {
    name: String,
    ledger: Ledger,
    /// How long one `effect` takes after it has taken effect.
    delay: Duration,
}

fn from_json<T: serde::de::DeserializeOwned>(v: Value) -> Result<T, ErrorData> {
    serde_json::from_value(v).map_err(|e| ErrorData::internal_error(e.to_string(), None))
}

impl ServerHandler for Handler {
    fn get_info(&self) -> ServerConfig {
        let caps = ServerCapabilities::builder().enable_tools().build();
        ServerConfig::new(caps).with_instructions(format!("chaos backend {}", self.name))
    }

    async fn list_tools(
        &self,
        _: Option<PaginatedRequestParams>,
        _: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        from_json(json!({"tools": [{
            "name": "effect",
            "description": "a side effect: records its op, then takes a few ms",
            "inputSchema": {"type": "object", "properties": {"op": {"type": "integer"}}, "required": ["op"]}
        }]}))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        _: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        if request.name.as_ref() != "effect" {
            return Err(ErrorData::invalid_params(format!("no tool {}", request.name), None));
        }
        let op = request
            .arguments
            .as_ref()
            .and_then(|a| a.get("op"))
            .and_then(Value::as_u64)
            .ok_or_else(|| ErrorData::invalid_params("op (integer) is required", None))?;
        // The effect happens first (a write, a payment), then the slow part.
        if let Ok(mut ledger) = self.ledger.lock() {
            *ledger.entry(op).or_insert(0) += 1;
        }
        tokio::time::sleep(self.delay).await;
        Ok(CallToolResult::success(vec![ContentBlock::text(format!("{} did {op}", self.name))]).into())
    }
}

/// A running backend; its server stops when the token is cancelled.
pub struct Backend {
    /// `host:port` it listens on.
    pub addr: String,
    pub ledger: Ledger,
}

impl Backend {
    pub async fn start(name: &str, delay: Duration, stop: CancellationToken) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?.to_string();
        let ledger: Ledger = Arc::default();
        let mut config = StreamableHttpServerConfig::default();
        config.cancellation_token = stop.child_token();
        let (name, shared) = (name.to_owned(), Arc::clone(&ledger));
        let service = StreamableHttpService::new(
            move || {
                Ok(Handler {
                    name: name.clone(),
                    ledger: Arc::clone(&shared),
                    delay,
                })
            },
            Arc::new(LocalSessionManager::default()),
            config,
        );
        tokio::spawn(serve(listener, service, stop));
        Ok(Self { addr, ledger })
    }
}

/// Serves a tower service (rmcp's `StreamableHttpService`) over HTTP/1.
async fn serve<S, B>(listener: TcpListener, service: S, stop: CancellationToken)
where
    S: tower_service::Service<http::Request<hyper::body::Incoming>, Response = http::Response<B>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    loop {
        let (stream, _) = tokio::select! {
            Ok(pair) = listener.accept() => pair,
            _ = stop.cancelled() => return,
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(service.clone());
        let stop = stop.clone();
        tokio::spawn(async move {
            let conn = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = stop.cancelled() => {}
            }
        });
    }
}
