//! The load: closed-loop MCP sessions, one task each, calling `effect` with a
//! fresh `op` per call, entering at the replicas round-robin over those whose
//! `/readyz` is 200 (what a Kubernetes Service does with its endpoints).
//!
//! Retry rule, the one a careful client can apply without knowing vmcp: a
//! request is sent again (at another replica) only when the connection was
//! refused, which proves it was never sent. Any other transport error after
//! connecting is "entry replica lost mid-call", and an answered call is never
//! repeated, whatever the answer (-32050 "outcome unknown" included).

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// The replicas as a Service sees them.
pub struct Entry {
    /// `http://127.0.0.1:PORT` per replica.
    pub bases: Vec<String>,
    ready: Vec<AtomicBool>,
    next: AtomicUsize,
}

impl Entry {
    pub fn new(bases: Vec<String>) -> Self {
        let ready = bases.iter().map(|_| AtomicBool::new(true)).collect();
        Self {
            bases,
            ready,
            next: AtomicUsize::new(0),
        }
    }

    /// The next ready replica not in `tried` (any not tried if none is ready).
    fn pick(&self, tried: &[usize]) -> Option<usize> {
        let n = self.bases.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let candidates = (0..n).map(|k| (start + k) % n).filter(|i| !tried.contains(i));
        let all: Vec<usize> = candidates.collect();
        all.iter()
            .copied()
            .find(|&i| self.ready[i].load(Ordering::Relaxed))
            .or_else(|| all.first().copied())
    }

    /// Polls every replica's `/readyz` every `period` (endpoint controller).
    pub async fn watch(self: Arc<Self>, http: reqwest::Client, period: Duration, stop: Arc<AtomicBool>) {
        while !stop.load(Ordering::Relaxed) {
            for (i, base) in self.bases.iter().enumerate() {
                let answer = http
                    .get(format!("{base}/readyz"))
                    .timeout(Duration::from_millis(300))
                    .send()
                    .await;
                let ok = answer.is_ok_and(|r| r.status().is_success());
                self.ready[i].store(ok, Ordering::Relaxed);
            }
            tokio::time::sleep(period).await;
        }
    }
}

/// What became of one `tools/call`.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    Ok,
    /// Failed, with its cause (JSON-RPC code and HTTP status, or transport).
    Failed(String),
}

/// One `tools/call`, as the client saw it.
#[derive(Clone, Debug)]
pub struct Call {
    pub session: u32,
    pub op: u64,
    pub backend: u8,
    /// Milliseconds since the run began.
    pub start_ms: f64,
    pub end_ms: f64,
    pub outcome: Outcome,
    /// Failure detail for the report: entry replica, `x-vmcp-replica`, message.
    pub detail: Option<String>,
}

/// Everything the sessions record.
#[derive(Default)]
pub struct Record {
    pub calls: Vec<Call>,
    pub sessions_created: u64,
    /// (session task, session id, ms) of every 404 "session not found".
    pub sessions_lost: Vec<(u32, String, f64)>,
    pub init_failures: Vec<(f64, String)>,
}

/// The transport answer to one POST.
enum Sent {
    Answer {
        status: u16,
        session: Option<String>,
        served_by: String,
        body: Value,
    },
    /// Connected, then the connection failed before a whole answer.
    Lost(String),
    /// Every replica refused the connection for the whole retry window.
    Unreachable,
    ClientTimeout,
}

pub struct Client {
    http: reqwest::Client,
    entry: Arc<Entry>,
    began: Instant,
    ops: AtomicU64,
}

impl Client {
    pub fn new(http: reqwest::Client, entry: Arc<Entry>, began: Instant) -> Self {
        Self {
            http,
            entry,
            began,
            ops: AtomicU64::new(1),
        }
    }

    fn ms(&self) -> f64 {
        self.began.elapsed().as_secs_f64() * 1e3
    }

    /// POSTs `body`, moving on to another replica only on connect refused.
    async fn post(&self, session: Option<&str>, body: &Value) -> (Sent, usize) {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut tried = Vec::new();
        let mut last = 0;
        while Instant::now() < deadline {
            let Some(i) = self.entry.pick(&tried) else {
                tried.clear();
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            last = i;
            let mut req = self
                .http
                .post(format!("{}/mcp", self.entry.bases[i]))
                .header("content-type", "application/json")
                .header("accept", "application/json, text/event-stream")
                .header("mcp-protocol-version", "2025-06-18")
                .body(body.to_string());
            if let Some(sid) = session {
                req = req.header("mcp-session-id", sid);
            }
            let resp = match req.send().await {
                Ok(resp) => resp,
                Err(e) if e.is_connect() => {
                    tried.push(i);
                    continue;
                }
                Err(e) if e.is_timeout() => return (Sent::ClientTimeout, i),
                Err(e) => return (Sent::Lost(chain(&e)), i),
            };
            let status = resp.status().as_u16();
            let header = |name: &str| {
                resp.headers()
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned)
            };
            let (sid, served_by) = (header("mcp-session-id"), header("x-vmcp-replica").unwrap_or_default());
            let text = match resp.text().await {
                Ok(text) => text,
                Err(e) if e.is_timeout() => return (Sent::ClientTimeout, i),
                Err(e) => return (Sent::Lost(chain(&e)), i),
            };
            let body = parse(&text);
            let answer = Sent::Answer {
                status,
                session: sid,
                served_by,
                body,
            };
            return (answer, i);
        }
        (Sent::Unreachable, last)
    }

    /// `initialize` + `notifications/initialized`, retried until it works or `stop`.
    async fn open(&self, rec: &mut Record, stop: &AtomicBool) -> Option<String> {
        let init = json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
            "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "vmcp-chaos", "version": "1"}}});
        while !stop.load(Ordering::Relaxed) {
            let failure = match self.post(None, &init).await {
                (
                    Sent::Answer {
                        session: Some(sid),
                        body,
                        ..
                    },
                    _,
                ) if body.get("result").is_some() => {
                    let note = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
                    let _ = self.post(Some(&sid), &note).await;
                    rec.sessions_created += 1;
                    return Some(sid);
                }
                (Sent::Answer { status, body, .. }, _) => format!("HTTP {status}: {}", short(&body)),
                (Sent::Lost(e), _) => format!("lost: {e}"),
                (Sent::Unreachable, _) => "unreachable".into(),
                (Sent::ClientTimeout, _) => "client timeout".into(),
            };
            rec.init_failures.push((self.ms(), failure));
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        None
    }

    /// One session task: call, record, think, until `stop`.
    pub async fn session(self: Arc<Self>, index: u32, think: Duration, stop: Arc<AtomicBool>) -> Record {
        let mut rec = Record::default();
        let backend = (index % 2) as u8;
        let tool = if backend == 0 { "a_effect" } else { "b_effect" };
        let mut sid = None;
        let mut id = 1u64;
        while !stop.load(Ordering::Relaxed) {
            let session = match sid.clone() {
                Some(session) => session,
                None => match self.open(&mut rec, &stop).await {
                    Some(session) => session,
                    None => break,
                },
            };
            sid = Some(session.clone());
            let op = self.ops.fetch_add(1, Ordering::Relaxed);
            id += 1;
            let body = json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
                              "params": {"name": tool, "arguments": {"op": op}}});
            let start_ms = self.ms();
            let (sent, entry) = self.post(Some(&session), &body).await;
            let (outcome, detail) = classify(&sent);
            let detail = detail.map(|d| format!("entry r{entry}, session {}, {d}", &session[..12.min(session.len())]));
            if matches!(&sent, Sent::Answer { status: 404, .. }) {
                rec.sessions_lost.push((index, session, start_ms));
                sid = None;
            }
            let end_ms = self.ms();
            rec.calls.push(Call {
                session: index,
                op,
                backend,
                start_ms,
                end_ms,
                outcome,
                detail,
            });
            tokio::time::sleep(think).await;
        }
        rec
    }
}

/// The outcome of a call and, if it failed, a line of evidence.
fn classify(sent: &Sent) -> (Outcome, Option<String>) {
    let failed = |cause: String, detail: String| (Outcome::Failed(cause), Some(detail));
    match sent {
        Sent::Answer {
            status,
            served_by,
            body,
            ..
        } => {
            if let Some(result) = body.get("result") {
                if result.get("isError").and_then(Value::as_bool) == Some(true) {
                    return failed(
                        format!("tool error (HTTP {status})"),
                        format!("served by {served_by}: {result}"),
                    );
                }
                return (Outcome::Ok, None);
            }
            let code = body["error"]["code"].as_i64();
            let cause = match (code, status) {
                (_, 404) => "session not found (HTTP 404)".to_owned(),
                (Some(-32050), _) => format!("outcome_unknown -32050 (HTTP {status})"),
                (Some(-32001), _) => format!("timeout -32001 (HTTP {status})"),
                (Some(code), _) => format!("error {code} (HTTP {status})"),
                (None, _) => format!("HTTP {status} without a JSON-RPC answer"),
            };
            failed(cause, format!("served by {served_by}: {}", short(body)))
        }
        Sent::Lost(e) => failed("entry replica lost mid-call".into(), e.clone()),
        Sent::Unreachable => failed("no replica accepted a connection for 10 s".into(), String::new()),
        Sent::ClientTimeout => failed("client timeout (15 s)".into(), String::new()),
    }
}

/// The JSON-RPC answer in a JSON or SSE body (the `data:` line with an id).
fn parse(text: &str) -> Value {
    if let Ok(v) = serde_json::from_str::<Value>(text) {
        return v;
    }
    text.lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .filter_map(|d| serde_json::from_str::<Value>(d.trim()).ok())
        .find(|v| v.get("id").is_some())
        .unwrap_or(Value::Null)
}

fn short(v: &Value) -> String {
    let s = v.get("error").map_or_else(|| v.to_string(), Value::to_string);
    s.chars().take(200).collect()
}

/// An error with its sources (reqwest's own message hides the cause).
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}
