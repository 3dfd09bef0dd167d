//! The audit log: one JSON object per line for every call (`tools/call`,
//! `prompts/get`, `resources/read`) and every refusal (a policy denial, a
//! rate limit), configured under `audit:`.
//!
//! Fields, in this order (all present on every line, `null` when unknown,
//! except `arguments`, present only with `audit.include_arguments`):
//!
//! | field | meaning |
//! |---|---|
//! | `ts` | when the record was written (the call's end), RFC 3339 UTC, ms |
//! | `replica` | the replica's id |
//! | `event` | `call`, `denied` (policy) or `limited` (rate limit) |
//! | `method` | `tools/call`, `prompts/get` or `resources/read` |
//! | `sub`, `iss` | the caller's subject and issuer (validated token), else null |
//! | `session` | the first 16 hex digits of SHA-256 of the session id (never the id) |
//! | `backend` | the backend that served (or would have served) the call |
//! | `name` | the client-facing tool or prompt name, or the resource URI |
//! | `original` | the name at the backend (before prefix and rename) |
//! | `outcome` | `ok`, `error`, `denied` or `limited` |
//! | `code` | the JSON-RPC error code answered, or null |
//! | `duration_ms` | time spent on the call, milliseconds (µs precision) |
//! | `rule` | the policy or limit rule that refused the call, else null |
//! | `arguments` | the call's arguments (only with `include_arguments`) |
//!
//! Sinks: stdout (logs go to stderr, so stdout carries audit lines only) or
//! a file appended to. Lines are written by vmcp itself, not through the
//! `tracing` formatter: with `log.format: text` tracing would wrap them in a
//! text line, and with `json` nest them in its own object, either way not a
//! line `jq` reads as the record.
//!
//! Writing never blocks a request: [`Auditor::record`] serialises the line and
//! hands it to a bounded channel ([`QUEUE`] lines); a dedicated writer thread
//! (blocking I/O belongs off the async workers) writes batches and flushes
//! whenever the channel is empty, so lines reach the sink promptly when idle
//! and in batches under load. When the sink cannot keep up and the queue is
//! full, lines are dropped and counted ([`Auditor::dropped`]) with a warning
//! per streak rather than slowing calls down. At shutdown the replica waits
//! (until its shutdown deadline) for the writer to take every queued line
//! and flush it ([`Auditor::finish`]): a slow sink does not lose the last calls.

use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

use serde::Serialize;
use serde_json::Value;

use crate::config::{AuditConfig, AuditSink};

/// Lines waiting for the writer at most.
pub const QUEUE: usize = 8192;

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("audit log {path}: cannot open: {source}")]
    Open { path: PathBuf, source: std::io::Error },
    #[error("audit log writer: {0}")]
    Spawn(std::io::Error),
}

/// What a record is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AuditEvent {
    /// A call that reached (or was meant for) a backend.
    #[default]
    Call,
    /// A call refused by policy.
    Denied,
    /// A call refused by a rate limit.
    Limited,
}

/// How it ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AuditOutcome {
    #[default]
    Ok,
    Error,
    Denied,
    Limited,
}

/// One audited call, borrowed from the request; build it with
/// `..Default::default()` for the fields that do not apply.
#[derive(Debug, Clone, Default)]
pub struct AuditRecord<'a> {
    pub replica: &'a str,
    pub event: AuditEvent,
    pub method: &'a str,
    pub sub: Option<&'a str>,
    pub iss: Option<&'a str>,
    /// The raw session id: only its hash is ever written.
    pub session: Option<&'a str>,
    pub backend: Option<&'a str>,
    pub name: Option<&'a str>,
    pub original: Option<&'a str>,
    pub outcome: AuditOutcome,
    pub code: Option<i64>,
    pub duration: Duration,
    pub rule: Option<&'a str>,
    /// Written only when `audit.include_arguments` is on.
    pub arguments: Option<&'a Value>,
}

/// The serialised shape of a record (the documented fields, in order).
#[derive(Serialize)]
struct Line<'a> {
    ts: String,
    replica: &'a str,
    event: AuditEvent,
    method: &'a str,
    sub: Option<&'a str>,
    iss: Option<&'a str>,
    session: Option<String>,
    backend: Option<&'a str>,
    name: Option<&'a str>,
    original: Option<&'a str>,
    outcome: AuditOutcome,
    code: Option<i64>,
    duration_ms: f64,
    rule: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    arguments: Option<&'a Value>,
}

impl AuditRecord<'_> {
    /// The record as one JSON line (no newline), stamped `at`.
    pub fn to_line(&self, at: SystemTime, include_arguments: bool) -> Result<String, serde_json::Error> {
        serde_json::to_string(&Line {
            ts: humantime::format_rfc3339_millis(at).to_string(),
            replica: self.replica,
            event: self.event,
            method: self.method,
            sub: self.sub,
            iss: self.iss,
            session: self.session.map(session_hash),
            backend: self.backend,
            name: self.name,
            original: self.original,
            outcome: self.outcome,
            code: self.code,
            duration_ms: (self.duration.as_micros() as f64) / 1000.0,
            rule: self.rule,
            arguments: self.arguments.filter(|_| include_arguments),
        })
    }
}

/// The first 16 hex digits of SHA-256 of a session id.
pub fn session_hash(id: &str) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(&Sha256::digest(id.as_bytes())[..8])
}

/// What the writer thread is handed.
enum Item {
    Line(String),
    /// Flush what came before, then say so.
    Flush(mpsc::Sender<()>),
}

/// Writes audit records to the configured sink; a no-op when disabled.
pub struct Auditor {
    sender: Option<SyncSender<Item>>,
    writer: Option<JoinHandle<()>>,
    include_arguments: bool,
    dropped: Arc<AtomicU64>,
    /// Set while lines are being dropped (warned once per streak).
    dropping: AtomicBool,
}

impl Auditor {
    /// Opens the sink (a file is created if missing, appended to) and starts
    /// the writer thread; with `enabled: false`, an auditor that writes nothing.
    pub fn new(config: &AuditConfig) -> Result<Self, AuditError> {
        let mut auditor = Self {
            sender: None,
            writer: None,
            include_arguments: config.include_arguments,
            dropped: Arc::new(AtomicU64::new(0)),
            dropping: AtomicBool::new(false),
        };
        if !config.enabled {
            return Ok(auditor);
        }
        let out: Box<dyn Write + Send> = match config.sink {
            AuditSink::Stdout => Box::new(std::io::stdout()),
            AuditSink::File => Box::new(std::io::BufWriter::new(open(&config.path)?)),
        };
        let (sender, receiver) = mpsc::sync_channel(QUEUE);
        let writer = std::thread::Builder::new()
            .name("vmcp-audit".into())
            .spawn(move || write_lines(receiver, out))
            .map_err(AuditError::Spawn)?;
        auditor.sender = Some(sender);
        auditor.writer = Some(writer);
        Ok(auditor)
    }

    /// Whether records are written at all (callers may skip building them).
    pub fn is_enabled(&self) -> bool {
        self.sender.is_some()
    }

    /// Whether records carry arguments (`audit.include_arguments`).
    pub fn include_arguments(&self) -> bool {
        self.include_arguments
    }

    /// Queues one record, stamped now; never waits for the sink.
    pub fn record(&self, record: &AuditRecord<'_>) {
        let Some(sender) = &self.sender else {
            return;
        };
        let line = match record.to_line(SystemTime::now(), self.include_arguments) {
            Ok(line) => line,
            Err(e) => {
                tracing::warn!(error = %e, "audit record not serialisable");
                return;
            }
        };
        match sender.try_send(Item::Line(line)) {
            Ok(()) => {
                if self.dropping.swap(false, Ordering::Relaxed) {
                    tracing::info!(dropped = self.dropped(), "audit log keeps up again");
                }
            }
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                if !self.dropping.swap(true, Ordering::Relaxed) {
                    tracing::warn!("audit log sink is not keeping up; dropping records");
                }
            }
        }
    }

    /// Records dropped so far because the sink did not keep up.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Waits until every line queued so far is written and flushed, or
    /// until `deadline`; blocking (call it off the async workers). Whether
    /// everything was written in time.
    pub fn finish(&self, deadline: std::time::Instant) -> bool {
        let Some(sender) = &self.sender else {
            return true;
        };
        let (done, written) = mpsc::channel();
        let mut item = Item::Flush(done);
        // The queue may be full (the sink is slow): wait for room, bounded.
        loop {
            match sender.try_send(item) {
                Ok(()) => break,
                Err(TrySendError::Full(back)) if std::time::Instant::now() < deadline => {
                    item = back;
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(_) => return false,
            }
        }
        written
            .recv_timeout(deadline.saturating_duration_since(std::time::Instant::now()))
            .is_ok()
    }

    /// Writes out every queued line and stops the writer (at shutdown).
    pub fn close(mut self) {
        self.sender = None;
        if let Some(writer) = self.writer.take() {
            if writer.join().is_err() {
                tracing::warn!("audit log writer panicked");
            }
        }
    }
}

fn open(path: &std::path::Path) -> Result<std::fs::File, AuditError> {
    let mut options = std::fs::OpenOptions::new();
    options.create(true).append(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o640);
    options.open(path).map_err(|source| AuditError::Open {
        path: path.to_owned(),
        source,
    })
}

/// The writer thread: a batch at a time, flushed when the queue is empty;
/// ends when the [`Auditor`] is gone.
fn write_lines(receiver: Receiver<Item>, mut out: Box<dyn Write + Send>) {
    let mut failing = false;
    while let Ok(first) = receiver.recv() {
        let mut result = Ok(());
        let mut flushed = Vec::new();
        let mut item = Some(first);
        while let Some(next) = item {
            match next {
                Item::Line(line) => result = result.and(write_line(&mut out, line)),
                Item::Flush(done) => flushed.push(done),
            }
            item = receiver.try_recv().ok();
        }
        match result.and_then(|()| out.flush()) {
            Ok(()) => failing = false,
            Err(e) => {
                if !failing {
                    tracing::warn!(error = %e, "audit log write failed");
                }
                failing = true;
            }
        }
        for done in flushed {
            let _ = done.send(());
        }
    }
    let _ = out.flush();
}

fn write_line(out: &mut Box<dyn Write + Send>, mut line: String) -> std::io::Result<()> {
    line.push('\n');
    out.write_all(line.as_bytes())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn sample(arguments: &Value) -> AuditRecord<'_> {
        AuditRecord {
            replica: "vmcp-0",
            event: AuditEvent::Call,
            method: "tools/call",
            sub: Some("alice"),
            iss: Some("https://idp.example.com"),
            session: Some("session-id-secret"),
            backend: Some("alpha"),
            name: Some("alpha_search"),
            original: Some("search"),
            outcome: AuditOutcome::Error,
            code: Some(-32603),
            duration: Duration::from_micros(12_345),
            rule: None,
            arguments: Some(arguments),
        }
    }

    #[test]
    fn a_record_is_one_line_with_the_documented_fields() {
        let args = json!({"query": "password=hunter2"});
        let at = SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
        let line = sample(&args).to_line(at, false).unwrap();
        assert!(!line.contains('\n'));
        assert!(!line.contains("session-id-secret"), "{line}");
        assert!(!line.contains("hunter2"), "{line}");
        let v: Value = serde_json::from_str(&line).unwrap();
        let fields = [
            "ts",
            "replica",
            "event",
            "method",
            "sub",
            "iss",
            "session",
            "backend",
            "name",
            "original",
            "outcome",
            "code",
            "duration_ms",
            "rule",
        ];
        assert_eq!(v.as_object().unwrap().len(), fields.len(), "{line}");
        // In the documented order.
        let positions: Vec<usize> = fields
            .iter()
            .map(|f| {
                line.find(&format!("\"{f}\":"))
                    .unwrap_or_else(|| panic!("{f} missing: {line}"))
            })
            .collect();
        assert!(positions.windows(2).all(|w| w[0] < w[1]), "{line}");
        assert_eq!(v["ts"], "2023-11-14T22:13:20.123Z");
        assert_eq!(v["session"], session_hash("session-id-secret"));
        assert_eq!(v["session"].as_str().unwrap().len(), 16);
        assert_eq!(
            (v["event"].as_str(), v["outcome"].as_str()),
            (Some("call"), Some("error"))
        );
        assert_eq!(v["code"], -32603);
        assert_eq!(v["duration_ms"], 12.345);
        assert_eq!(v["rule"], Value::Null);

        let with = sample(&args).to_line(at, true).unwrap();
        let v: Value = serde_json::from_str(&with).unwrap();
        assert_eq!(v["arguments"], args);

        let denied = AuditRecord {
            event: AuditEvent::Limited,
            outcome: AuditOutcome::Limited,
            rule: Some("per-caller"),
            method: "prompts/get",
            ..Default::default()
        };
        let v: Value = serde_json::from_str(&denied.to_line(at, true).unwrap()).unwrap();
        assert_eq!(
            (v["event"].as_str(), v["rule"].as_str()),
            (Some("limited"), Some("per-caller"))
        );
        assert_eq!((v["session"].clone(), v["code"].clone()), (Value::Null, Value::Null));
        assert!(v.get("arguments").is_none());
    }

    #[test]
    fn a_file_sink_writes_lines_a_reader_parses() {
        let path = std::env::temp_dir().join(format!(
            "vmcp-audit-{}-{:?}.jsonl",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_file(&path);
        let config = |include_arguments| AuditConfig {
            enabled: true,
            sink: AuditSink::File,
            path: path.clone(),
            include_arguments,
        };
        let args = json!({"q": "secret"});
        let auditor = Auditor::new(&config(false)).unwrap();
        assert!(auditor.is_enabled() && !auditor.include_arguments());
        for _ in 0..3 {
            auditor.record(&sample(&args));
        }
        auditor.close();
        // Appended to, not truncated, by the next auditor.
        let auditor = Auditor::new(&config(true)).unwrap();
        auditor.record(&sample(&args));
        assert_eq!(auditor.dropped(), 0);
        auditor.close();
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(lines.len(), 4);
        assert!(lines[..3]
            .iter()
            .all(|l| l.get("arguments").is_none() && l["name"] == "alpha_search"));
        assert_eq!(lines[3]["arguments"], args);
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn disabled_writes_nothing_and_a_missing_directory_is_an_error() {
        let off = Auditor::new(&AuditConfig::default()).unwrap();
        assert!(!off.is_enabled());
        off.record(&AuditRecord::default());
        let bad = AuditConfig {
            enabled: true,
            sink: AuditSink::File,
            path: PathBuf::from("/nonexistent-vmcp-dir/audit.jsonl"),
            include_arguments: false,
        };
        assert!(matches!(Auditor::new(&bad), Err(AuditError::Open { .. })));
    }
}
