//! stdio backends: one child process per client session, speaking MCP over
//! its stdin/stdout through rmcp.
//!
//! Least privilege: the child gets a minimal environment (what the official
//! MCP SDKs give stdio servers, plus locale and `TMPDIR`), the backend's `env`
//! and the variables its `inherit_env` names; never vmcp's own (`VMCP_HOP_KEY`,
//! the Redis URL, ...). It runs as the leader of its own process group, and
//! the whole group is killed when the session closes or is dropped, so the
//! grandchildren of `npx`-style launchers do not survive it.

use std::collections::BTreeMap;
use std::time::Duration;

use futures_util::stream::BoxStream;
use futures_util::StreamExt;
use process_wrap::tokio::{ChildWrapper, CommandWrap};
use rmcp::model::{ClientConfig, ClientRequest};
use rmcp::service::{PeerRequestOptions, RequestHandle, RunningService, ServiceError};
use rmcp::RoleClient;
use serde_json::{json, Value};
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::stdio_client::{CallRelay, StdioClient};
use super::{rpc_error, BackendError, Params};
use crate::config::is_vmcp_variable;
use crate::sync::lock;

/// vmcp's variables a child inherits by default: the official MCP SDKs' list
/// for POSIX (`DEFAULT_INHERITED_ENV_VARS`), plus locale and the temp dir.
const INHERITED: &[&str] = &[
    "HOME", "LOGNAME", "PATH", "SHELL", "TERM", "USER", "TMPDIR", "LANG", "LANGUAGE",
];

/// How long closing a session waits for its child to exit after its stdin
/// closed, before the whole process group is killed.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// The default part of a child's environment, from vmcp's own. Like the SDKs,
/// values that are shell functions (`()...`) are skipped.
fn default_environment() -> impl Iterator<Item = (std::ffi::OsString, std::ffi::OsString)> {
    std::env::vars_os().filter(|(name, value)| {
        let Some(name) = name.to_str() else { return false };
        (INHERITED.contains(&name) || name.starts_with("LC_")) && !value.as_encoded_bytes().starts_with(b"()")
    })
}

/// How to start one stdio backend.
pub struct StdioBackend {
    command: Vec<String>,
    env: BTreeMap<String, String>,
    /// The longest line (one message) read from the child: rmcp drops a
    /// longer one, and the call it answered ends at its `call_timeout`.
    max_line: usize,
}

impl StdioBackend {
    pub fn new(command: Vec<String>, env: BTreeMap<String, String>, max_line: usize) -> Self {
        Self { command, env, max_line }
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
        cmd.args(args)
            .env_clear()
            .envs(default_environment())
            .envs(self.env.iter().filter(|(name, _)| !is_vmcp_variable(name)))
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let mut cmd = CommandWrap::from(cmd);
        #[cfg(unix)]
        cmd.wrap(process_wrap::tokio::ProcessGroup::leader());
        let mut child = ChildGroup(
            cmd.spawn()
                .map_err(|e| BackendError::Transport(format!("cannot start {program}: {e}")))?,
            Reaped::No,
        );
        let (Some(stdin), Some(stdout)) = (child.0.stdin().take(), child.0.stdout().take()) else {
            return Err(BackendError::Transport(format!("{program}: no stdio pipes")));
        };
        if let Some(stderr) = child.0.stderr().take() {
            tokio::spawn(log_stderr(program.clone(), stderr));
        }
        // rmcp drops a line over the bound; `BoundedLines` fails the call it answered.
        let stdout = super::stdio_lines::BoundedLines::new(stdout, self.max_line);
        let transport =
            rmcp::transport::async_rw::AsyncRwTransport::new_client(stdout, stdin).with_max_line_length(self.max_line);
        // The service's tasks outlive this request: give them their own root span.
        let span = tracing::info_span!(parent: None, "stdio_backend", program = %program);
        let client = StdioClient::new(info, name);
        let service = rmcp::serve_client(client.clone(), transport)
            .instrument(span)
            .await
            .map_err(|e| BackendError::Transport(format!("handshake with {program}: {e}")))?;
        let session = StdioSession::over_connection(client, service)?;
        *lock(&session.child) = Some(child);
        Ok(session)
    }
}

/// The child and its process group, killed together when dropped.
struct ChildGroup(Box<dyn ChildWrapper>, Reaped);

/// Whether the child was reaped: its pid (the group id) may then be reused,
/// so the group is not signalled again.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Reaped {
    No,
    Yes,
}

impl ChildGroup {
    /// SIGKILL to the whole group (the child, if still running, and whatever
    /// it started); no group left is not an error.
    fn kill_group(&mut self) {
        if self.1 == Reaped::Yes {
            return;
        }
        if let Err(e) = self.0.start_kill() {
            tracing::trace!(error = %e, "stdio backend group already gone");
        }
    }
}

impl Drop for ChildGroup {
    fn drop(&mut self) {
        self.kill_group();
    }
}

/// One child process speaking MCP.
pub struct StdioSession {
    init: Value,
    client: StdioClient,
    service: Mutex<Option<RunningService<RoleClient, StdioClient>>>,
    child: std::sync::Mutex<Option<ChildGroup>>,
}

impl StdioSession {
    /// A session over a connection rmcp runs (a child's stdio, an HTTP+SSE
    /// backend's stream), its `initialize` result taken from the handshake;
    /// no child process until one is set.
    pub(super) fn over_connection(
        client: StdioClient,
        service: RunningService<RoleClient, StdioClient>,
    ) -> Result<Self, BackendError> {
        let init = service
            .peer_info()
            .map(|i| serde_json::to_value(&*i))
            .transpose()
            .map_err(|e| BackendError::Protocol(e.to_string()))?
            .unwrap_or_else(|| json!({}));
        Ok(Self {
            init,
            client,
            service: Mutex::new(Some(service)),
            child: std::sync::Mutex::new(None),
        })
    }

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
        params: Option<Params<'_>>,
        timeout: Duration,
        cancel: &CancellationToken,
        relay: Option<&CallRelay>,
    ) -> Result<Value, BackendError> {
        let mut body = json!({"method": method});
        if let Some(p) = params {
            body["params"] = p.to_tree()?;
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
        route.map_progress(
            &ours,
            params.and_then(|p| p.get("_meta")).and_then(|m| m.get("progressToken")),
        );
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

    /// Stops the service, which closes the child's stdin (the MCP way of
    /// asking a stdio server to exit), gives the child [`CLOSE_GRACE`] to
    /// exit, then kills its whole process group. Never waits longer than that
    /// (plus a moment to reap), whatever the child does.
    pub async fn close(&self) {
        let deadline = tokio::time::Instant::now() + CLOSE_GRACE;
        let service = self.service.lock().await.take();
        let child = lock(&self.child).take();
        if let Some(service) = service {
            match tokio::time::timeout_at(deadline, service.cancel()).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => tracing::debug!(error = %e, "stdio backend did not stop cleanly"),
                Err(_) => tracing::debug!("stdio backend service did not stop in time"),
            }
        }
        let Some(mut child) = child else { return };
        if tokio::time::timeout_at(deadline, child.0.inner_mut().wait())
            .await
            .is_err()
        {
            tracing::debug!("stdio backend did not exit after its stdin closed; killing it");
        }
        child.kill_group();
        // Reap the child (killed just now, or already gone) so no zombie is left.
        if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_millis(500), child.0.inner_mut().wait()).await {
            child.1 = Reaped::Yes;
        }
    }
}

/// A backend's stderr goes to our log (debug level), line by line, until it closes.
/// The most of one stderr line that is logged (the rest is skipped).
const LOGGED_LINE: usize = 4096;

/// Drains the child's stderr to its end, logging each line at `debug`.
/// Whatever it holds: a line that is not UTF-8 is logged lossily, a longer
/// one cut. The drain must never stop early: the child would then block on
/// a full pipe, or die of SIGPIPE, at its next write to stderr.
async fn log_stderr(program: String, stderr: tokio::process::ChildStderr) {
    use tokio::io::AsyncBufReadExt;
    let mut reader = tokio::io::BufReader::new(stderr);
    let mut line = Vec::with_capacity(256);
    let mut cut = false;
    loop {
        let chunk = match reader.fill_buf().await {
            Ok([]) | Err(_) => break,
            Ok(chunk) => chunk,
        };
        let end = memchr::memchr(b'\n', chunk);
        let take = end.unwrap_or(chunk.len());
        let room = LOGGED_LINE - line.len();
        line.extend_from_slice(&chunk[..take.min(room)]);
        cut |= take > room;
        reader.consume(take + usize::from(end.is_some()));
        if end.is_some() {
            log_line(&program, &line, cut);
            line.clear();
            cut = false;
        }
    }
    if !line.is_empty() {
        log_line(&program, &line, cut);
    }
}

fn log_line(program: &str, line: &[u8], cut: bool) {
    let text = String::from_utf8_lossy(line);
    let text = text.trim_end_matches('\r');
    let more = if cut { " [cut]" } else { "" };
    tracing::debug!(parent: None, program = %program, "backend stderr: {text}{more}");
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
