//! A real MCP server for the tests: rmcp's Streamable HTTP server on a free
//! 127.0.0.1 port, with a **stateful** per-session counter so backend-session
//! continuity is visible, a slow tool, prompts, resources and completions, and
//! tools that talk back: `progress` (progress + a log line), `ask` (an
//! elicitation), `grow` (a tool list change), `wait` (until cancelled).

// Logging is deprecated by SEP-2577 (stateless era), and still what every
// handshake-era client uses: the fixture keeps serving it.
#![allow(deprecated)]

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rmcp::model::*;
use rmcp::service::RequestContext;
use rmcp::transport::streamable_http_server::{
    session::local::LocalSessionManager, StreamableHttpServerConfig, StreamableHttpService,
};
use rmcp::{ErrorData, RoleServer, ServerHandler};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

/// Counters shared by all sessions of one test backend.
#[derive(Default)]
pub struct Stats {
    pub sessions_opened: AtomicUsize,
    pub sessions_dropped: AtomicUsize,
    pub calls: AtomicUsize,
    /// Calls of `wait` that ended by the client's cancellation.
    pub cancelled: AtomicUsize,
    /// The last `logging/setLevel` level.
    pub log_level: std::sync::Mutex<Option<String>>,
    /// URIs subscribed to.
    pub subscribed: std::sync::Mutex<Vec<String>>,
}

#[derive(Clone, Default)]
pub struct Options {
    /// Extra tools `tool-0..N` (to exercise pagination); the backend pages by 50.
    pub extra_tools: usize,
    /// `tools/list` answers after this long (a backend slow to list).
    pub list_delay: Option<Duration>,
    /// Tools listed with `annotations: {readOnlyHint: true, destructiveHint: false}`.
    pub read_only: Vec<&'static str>,
    /// Requests need a bearer JWT for this backend's URL (an OAuth resource server).
    pub bearer: Option<Arc<super::bearer::BearerRule>>,
}

struct Handler {
    name: String,
    counter: AtomicU64,
    /// Set by `grow`: the session's tool list then has `grown` too.
    grown: std::sync::atomic::AtomicBool,
    stats: Arc<Stats>,
    options: Options,
}

impl Drop for Handler {
    fn drop(&mut self) {
        self.stats.sessions_dropped.fetch_add(1, Ordering::SeqCst);
    }
}

fn from_json<T: serde::de::DeserializeOwned>(v: Value) -> T {
    serde_json::from_value(v).expect("test fixture JSON matches the rmcp type")
}

fn text_result(text: String) -> CallToolResponse {
    CallToolResult::success(vec![ContentBlock::text(text)]).into()
}

impl Handler {
    fn tools(&self) -> Vec<Value> {
        let schema =
            json!({"type": "object", "properties": {"message": {"type": "string"}, "ms": {"type": "integer"}}});
        let mut names = vec!["echo", "counter", "slow", "whoami", "progress", "ask", "grow", "wait"];
        if self.grown.load(Ordering::SeqCst) {
            names.push("grown");
        }
        let mut tools: Vec<Value> = names
            .iter()
            .map(|t| json!({"name": t, "description": format!("{t} of {}", self.name), "inputSchema": schema}))
            .collect();
        for tool in &mut tools {
            if self.options.read_only.iter().any(|r| tool["name"] == *r) {
                tool["annotations"] = json!({"readOnlyHint": true, "destructiveHint": false});
            }
        }
        tools.extend(
            (0..self.options.extra_tools)
                .map(|i| json!({"name": format!("tool-{i}"), "inputSchema": {"type": "object"}})),
        );
        tools
    }
}

fn internal(e: impl std::fmt::Display) -> ErrorData {
    ErrorData::internal_error(e.to_string(), None)
}

impl Handler {
    /// Three progress notifications (if the caller asked for progress) and a log line.
    async fn progress(&self, ctx: &RequestContext<RoleServer>) -> Result<CallToolResponse, ErrorData> {
        if let Some(token) = ctx.meta.get_progress_token() {
            for step in 1..=3 {
                let params: ProgressNotificationParam =
                    from_json(json!({"progressToken": token, "progress": step, "total": 3}));
                ctx.peer.notify_progress(params).await.map_err(internal)?;
            }
        }
        let line: LoggingMessageNotificationParam =
            from_json(json!({"level": "info", "logger": "worker", "data": "half way"}));
        ctx.peer.notify_logging_message(line).await.map_err(internal)?;
        Ok(text_result(format!("{} done", self.name)))
    }
}

impl ServerHandler for Handler {
    fn get_info(&self) -> ServerConfig {
        let caps = ServerCapabilities::builder()
            .enable_tools()
            .enable_prompts()
            .enable_resources()
            .enable_completions()
            .enable_logging()
            .enable_resources_subscribe()
            .build();
        ServerConfig::new(caps).with_instructions(format!("test backend {}", self.name))
    }

    async fn list_tools(
        &self,
        request: Option<PaginatedRequestParams>,
        _: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        if let Some(delay) = self.options.list_delay {
            tokio::time::sleep(delay).await;
        }
        let all = self.tools();
        let start: usize = request.and_then(|r| r.cursor).and_then(|c| c.parse().ok()).unwrap_or(0);
        let end = (start + 50).min(all.len());
        let mut result = json!({"tools": all[start..end]});
        if end < all.len() {
            result["nextCursor"] = json!(end.to_string());
        }
        Ok(from_json(result))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        self.stats.calls.fetch_add(1, Ordering::SeqCst);
        let args = request.arguments.unwrap_or_default();
        match request.name.as_ref() {
            "echo" => Ok(text_result(format!(
                "{}:{}",
                self.name,
                args.get("message").and_then(Value::as_str).unwrap_or("")
            ))),
            "counter" => Ok(text_result(
                (self.counter.fetch_add(1, Ordering::SeqCst) + 1).to_string(),
            )),
            "slow" => {
                let ms = args.get("ms").and_then(Value::as_u64).unwrap_or(500);
                tokio::time::sleep(Duration::from_millis(ms)).await;
                Ok(text_result(format!("slept {ms}")))
            }
            "whoami" => Ok(text_result(self.name.clone())),
            "progress" => self.progress(&ctx).await,
            "ask" => {
                let params: ElicitRequestParams = from_json(json!({
                    "message": "your name?",
                    "requestedSchema": {"type": "object", "properties": {"name": {"type": "string"}}}
                }));
                let answer = ctx.peer.create_elicitation(params.clone()).await.map_err(internal)?;
                // `again_after_ms`: a second question, that long after the first answer.
                if let Some(ms) = args.get("again_after_ms").and_then(Value::as_u64) {
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                    ctx.peer.create_elicitation(params).await.map_err(internal)?;
                }
                Ok(text_result(format!(
                    "{}:{}",
                    self.name,
                    answer.content.unwrap_or_default()
                )))
            }
            "grow" => {
                self.grown.store(true, Ordering::SeqCst);
                ctx.peer.notify_tool_list_changed().await.map_err(internal)?;
                Ok(text_result("grown".into()))
            }
            "grown" => Ok(text_result("I am new".into())),
            "wait" => tokio::select! {
                _ = ctx.ct.cancelled() => {
                    self.stats.cancelled.fetch_add(1, Ordering::SeqCst);
                    Err(ErrorData::internal_error("cancelled", None))
                }
                _ = tokio::time::sleep(Duration::from_secs(10)) => Ok(text_result("waited".into())),
            },
            other if other.starts_with("tool-") => Ok(text_result(other.to_owned())),
            other => Err(ErrorData::invalid_params(format!("no tool {other}"), None)),
        }
    }

    async fn list_prompts(
        &self,
        _: Option<PaginatedRequestParams>,
        _: RequestContext<RoleServer>,
    ) -> Result<ListPromptsResult, ErrorData> {
        Ok(from_json(
            json!({"prompts": [{"name": "greet", "arguments": [{"name": "who", "required": false}]}]}),
        ))
    }

    async fn get_prompt(
        &self,
        request: GetPromptRequestParams,
        _: RequestContext<RoleServer>,
    ) -> Result<GetPromptResponse, ErrorData> {
        let who = request
            .arguments
            .and_then(|a| a.get("who").and_then(Value::as_str).map(str::to_owned))
            .unwrap_or_else(|| "you".into());
        let result: GetPromptResult = from_json(json!({
            "messages": [{"role": "user", "content": {"type": "text", "text": format!("{} greets {who}", self.name)}}]
        }));
        Ok(result.into())
    }

    async fn list_resources(
        &self,
        _: Option<PaginatedRequestParams>,
        _: RequestContext<RoleServer>,
    ) -> Result<ListResourcesResult, ErrorData> {
        Ok(from_json(
            json!({"resources": [{"uri": format!("mem://{}/info", self.name), "name": "info"}]}),
        ))
    }

    async fn list_resource_templates(
        &self,
        _: Option<PaginatedRequestParams>,
        _: RequestContext<RoleServer>,
    ) -> Result<ListResourceTemplatesResult, ErrorData> {
        Ok(from_json(
            json!({"resourceTemplates": [{"uriTemplate": format!("mem://{}/items/{{id}}", self.name), "name": "item"}]}),
        ))
    }

    async fn read_resource(
        &self,
        request: ReadResourceRequestParams,
        _: RequestContext<RoleServer>,
    ) -> Result<ReadResourceResponse, ErrorData> {
        let result: ReadResourceResult = from_json(json!({
            "contents": [{"uri": request.uri, "text": format!("{} has {}", self.name, request.uri)}]
        }));
        Ok(result.into())
    }

    async fn set_level(&self, request: SetLevelRequestParams, _: RequestContext<RoleServer>) -> Result<(), ErrorData> {
        let level = serde_json::to_value(request.level).map_err(internal)?;
        *self.stats.log_level.lock().expect("lock") = level.as_str().map(str::to_owned);
        Ok(())
    }

    #[allow(deprecated)]
    async fn subscribe(
        &self,
        request: SubscribeRequestParams,
        ctx: RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        self.stats.subscribed.lock().expect("lock").push(request.uri.clone());
        // Tell the subscriber at once, outside this request (on the GET stream).
        let (peer, uri) = (ctx.peer.clone(), request.uri.clone());
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let params: ResourceUpdatedNotificationParam = from_json(json!({ "uri": uri }));
            let _ = peer.notify_resource_updated(params).await;
        });
        Ok(())
    }

    async fn complete(
        &self,
        _: CompleteRequestParams,
        _: RequestContext<RoleServer>,
    ) -> Result<CompleteResult, ErrorData> {
        Ok(from_json(
            json!({"completion": {"values": [format!("{}-a", self.name), format!("{}-b", self.name)]}}),
        ))
    }
}

/// A running test backend; stops when dropped.
pub struct TestBackend {
    pub url: String,
    pub addr: String,
    pub stats: Arc<Stats>,
    stop: CancellationToken,
}

impl Drop for TestBackend {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl TestBackend {
    pub async fn start(name: &str) -> Self {
        Self::start_with(name, Options::default()).await
    }

    pub async fn start_with(name: &str, options: Options) -> Self {
        Self::start_at(name, options, "127.0.0.1:0").await
    }

    /// Starts on a given address (to restart a backend where it was).
    pub async fn start_at(name: &str, options: Options, addr: &str) -> Self {
        let listener = tokio::net::TcpListener::bind(addr).await.expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        let url = format!("http://{addr}/mcp");
        let stats = Arc::new(Stats::default());
        let stop = CancellationToken::new();
        let mut config = StreamableHttpServerConfig::default();
        config.cancellation_token = stop.child_token();
        let (name, factory_stats) = (name.to_owned(), Arc::clone(&stats));
        let bearer = options.bearer.clone();
        let service = StreamableHttpService::new(
            move || {
                factory_stats.sessions_opened.fetch_add(1, Ordering::SeqCst);
                Ok(Handler {
                    name: name.clone(),
                    counter: AtomicU64::new(0),
                    grown: Default::default(),
                    stats: Arc::clone(&factory_stats),
                    options: options.clone(),
                })
            },
            Arc::new(LocalSessionManager::default()),
            config,
        );
        match bearer {
            Some(rule) => {
                let audience = Arc::from(url.as_str());
                let guarded = super::bearer::Guarded {
                    inner: service,
                    rule,
                    audience,
                };
                tokio::spawn(super::serve_tower(listener, guarded, stop.clone()))
            }
            None => tokio::spawn(super::serve_tower(listener, service, stop.clone())),
        };
        Self { url, addr, stats, stop }
    }
}
