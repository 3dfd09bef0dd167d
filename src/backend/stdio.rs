//! stdio backends: one child process per client session, through rmcp's
//! `TokioChildProcess`. The child is killed when the session closes (and by
//! rmcp's drop guard if the session is dropped without closing).

use std::collections::BTreeMap;
use std::time::Duration;

use futures_util::stream::BoxStream;
use futures_util::StreamExt;
use rmcp::model::{ClientConfig, ClientRequest};
use rmcp::service::{PeerRequestOptions, RequestHandle, RunningService, ServiceError};
use rmcp::transport::TokioChildProcess;
use rmcp::RoleClient;
use serde_json::{json, Value};
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::stdio_client::{CallRelay, StdioClient};
use super::{rpc_error, BackendError};

/// How to start one stdio backend.
pub struct StdioBackend {
    command: Vec<String>,
    env: BTreeMap<String, String>,
}

impl StdioBackend {
    pub fn new(command: Vec<String>, env: BTreeMap<String, String>) -> Self {
        Self { command, env }
    }

    pub fn command(&self) -> &[String] {
        &self.command
    }

    /// Spawns the child and runs the MCP handshake over its stdio; `name`
    /// labels what the child sends on its own.
    pub async fn connect(&self, params: Value, name: &str) -> Result<StdioSession, BackendError> {
        let info: ClientConfig = serde_json::from_value(params)
            .map_err(|e| BackendError::Protocol(format!("client initialize params: {e}")))?;
        let (program, args) = self
            .command
            .split_first()
            .ok_or_else(|| BackendError::Protocol("empty command".into()))?;
        let mut cmd = tokio::process::Command::new(program);
        cmd.args(args).envs(&self.env);
        let (transport, stderr) = TokioChildProcess::builder(cmd)
            .stderr(std::process::Stdio::piped())
            .spawn()
            .map_err(|e| BackendError::Transport(format!("cannot start {program}: {e}")))?;
        if let Some(stderr) = stderr {
            tokio::spawn(log_stderr(program.clone(), stderr));
        }
        // The service's tasks outlive this request: give them their own root span.
        let span = tracing::info_span!(parent: None, "stdio_backend", program = %program);
        let client = StdioClient::new(info, name);
        let service = rmcp::serve_client(client.clone(), transport)
            .instrument(span)
            .await
            .map_err(|e| BackendError::Transport(format!("handshake with {program}: {e}")))?;
        let init = service
            .peer_info()
            .map(|i| serde_json::to_value(&*i))
            .transpose()
            .map_err(|e| BackendError::Protocol(e.to_string()))?
            .unwrap_or_else(|| json!({}));
        Ok(StdioSession {
            init,
            client,
            service: Mutex::new(Some(service)),
        })
    }
}

/// One child process speaking MCP.
pub struct StdioSession {
    init: Value,
    client: StdioClient,
    service: Mutex<Option<RunningService<RoleClient, StdioClient>>>,
}

impl StdioSession {
    pub fn init_result(&self) -> &Value {
        &self.init
    }

    pub fn protocol_version(&self) -> Option<String> {
        self.init
            .get("protocolVersion")
            .and_then(Value::as_str)
            .map(str::to_owned)
    }

    async fn peer(&self) -> Result<rmcp::Peer<RoleClient>, BackendError> {
        let guard = self.service.lock().await;
        guard
            .as_ref()
            .map(|s| s.peer().clone())
            .ok_or_else(|| BackendError::Transport("backend process closed".into()))
    }

    /// Sends a request and waits for its result, at most `timeout`; a
    /// cancellation is passed on to the child as `notifications/cancelled`,
    /// and what the child sends about the call meanwhile goes to `relay`.
    pub async fn call(
        &self,
        method: &str,
        params: Option<&Value>,
        timeout: Duration,
        cancel: &CancellationToken,
        relay: Option<&CallRelay>,
    ) -> Result<Value, BackendError> {
        let mut body = json!({"method": method});
        if let Some(p) = params {
            body["params"] = p.clone();
        }
        let request: ClientRequest =
            serde_json::from_value(body).map_err(|e| BackendError::Protocol(format!("cannot encode request: {e}")))?;
        let mut route = self.client.route(relay);
        let mut handle = self
            .peer()
            .await?
            .send_cancellable_request(request, PeerRequestOptions::no_options())
            .await
            .map_err(classify)?;
        // rmcp gave the child a progress token of its own: map it back to the client's.
        let ours = serde_json::to_value(&handle.progress_token).unwrap_or(Value::Null);
        route.map_progress(&ours, params.and_then(|p| p.pointer("/_meta/progressToken")));
        // `None`: cancelled by the client.
        let outcome = tokio::select! {
            answered = tokio::time::timeout(timeout, &mut handle.rx) => Some(answered),
            _ = cancel.cancelled() => None,
        };
        let result = match outcome {
            Some(Ok(Ok(result))) => result.map_err(classify)?,
            Some(Ok(Err(_))) => return Err(BackendError::Transport("backend process closed".into())),
            Some(Err(_)) => return Err(give_up(handle, BackendError::Timeout(timeout)).await),
            None => return Err(give_up(handle, BackendError::Cancelled).await),
        };
        serde_json::to_value(result).map_err(|e| BackendError::Protocol(format!("result: {e}")))
    }

    pub async fn notify(&self, method: &str, params: Option<Value>) -> Result<(), BackendError> {
        let mut body = json!({"method": method});
        if let Some(p) = params {
            body["params"] = p;
        }
        let notification = serde_json::from_value(body)
            .map_err(|e| BackendError::Protocol(format!("cannot encode notification: {e}")))?;
        self.peer()
            .await?
            .send_notification(notification)
            .await
            .map_err(classify)
    }

    /// The client's answer to one of the child's requests.
    pub fn answer(&self, message: &Value) -> Result<(), BackendError> {
        let id = message.get("id").cloned().unwrap_or(Value::Null);
        if self.client.answer(&id, message.clone()) {
            Ok(())
        } else {
            Err(BackendError::Protocol(format!(
                "no request {id} of this backend is waiting"
            )))
        }
    }

    /// What the child sends outside any call.
    pub fn listen(&self) -> BoxStream<'static, Value> {
        use tokio::sync::broadcast::error::RecvError;
        let messages = self.client.listen();
        futures_util::stream::unfold(messages, |mut rx| async move {
            loop {
                match rx.recv().await {
                    Ok(message) => return Some((message, rx)),
                    Err(RecvError::Lagged(_)) => continue,
                    Err(RecvError::Closed) => return None,
                }
            }
        })
        .boxed()
    }

    /// Stops the service and kills the child.
    pub async fn close(&self) {
        let service = self.service.lock().await.take();
        if let Some(service) = service {
            if let Err(e) = service.cancel().await {
                tracing::debug!(error = %e, "stdio backend did not stop cleanly");
            }
        }
    }
}

/// A backend's stderr goes to our log (debug level), line by line, until it closes.
async fn log_stderr(program: String, stderr: tokio::process::ChildStderr) {
    use tokio::io::AsyncBufReadExt;
    let mut lines = tokio::io::BufReader::new(stderr).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        tracing::debug!(parent: None, program = %program, "backend stderr: {line}");
    }
}

/// Tells the child we stopped waiting for a request, and why.
async fn give_up(handle: RequestHandle<RoleClient>, why: BackendError) -> BackendError {
    if let Err(e) = handle.cancel(Some(why.to_string())).await {
        tracing::debug!(error = %e, "cancellation not delivered");
    }
    why
}

fn classify(e: ServiceError) -> BackendError {
    match e {
        ServiceError::McpError(error) => rpc_error(&error),
        ServiceError::Timeout { timeout } => BackendError::Timeout(timeout),
        other => BackendError::Transport(other.to_string()),
    }
}
