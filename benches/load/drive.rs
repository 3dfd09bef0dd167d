//! The load generator: `n` concurrent MCP sessions, each looping `tools/call`
//! for a fixed time after a warm-up, with every call's latency recorded.
//!
//! It is deliberately lighter than anything it measures: raw hyper HTTP/1.1,
//! one keep-alive connection per session, request bodies written from a
//! template, and an answer checked by scanning its bytes for `"result"` (no
//! JSON parse). A heavy client (reqwest + serde_json, as this benchmark used
//! before) burns the same shared cores as the gateway and squeezes every
//! ratio toward 1; its own CPU per call is printed beside the others.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderValue, Request};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;

use crate::cpu::cpu_secs;

/// Throughput and latency of one run.
#[derive(Debug, Clone, Copy)]
pub struct Stats {
    pub rps: f64,
    pub p50_us: f64,
    pub p99_us: f64,
}

impl Stats {
    /// Each figure's median over several runs of one cell.
    pub fn median(runs: &[Stats]) -> Stats {
        let mid = |f: fn(&Stats) -> f64| {
            let mut v: Vec<f64> = runs.iter().map(f).collect();
            v.sort_by(f64::total_cmp);
            v.get(v.len() / 2).copied().unwrap_or(0.0)
        };
        Stats {
            rps: mid(|s| s.rps),
            p50_us: mid(|s| s.p50_us),
            p99_us: mid(|s| s.p99_us),
        }
    }
}

/// Percentile `q` (0..1) of microsecond samples.
pub fn percentile(samples: &mut [f64], q: f64) -> f64 {
    if samples.is_empty() {
        return f64::NAN;
    }
    samples.sort_by(|a, b| a.total_cmp(b));
    samples[((samples.len() - 1) as f64 * q).round() as usize]
}

/// One keep-alive HTTP/1.1 connection to an MCP endpoint.
pub struct Conn {
    tx: SendRequest<Full<Bytes>>,
    host: HeaderValue,
    path: String,
}

fn split(url: &str) -> (&str, &str) {
    let rest = url.strip_prefix("http://").expect("http:// URL");
    rest.find('/').map_or((rest, "/"), |i| (&rest[..i], &rest[i..]))
}

fn has_result(body: &[u8]) -> bool {
    body.windows(8).any(|w| w == b"\"result\"")
}

impl Conn {
    pub async fn open(url: &str) -> Conn {
        let (authority, path) = split(url);
        let stream = tokio::net::TcpStream::connect(authority).await.expect("connect");
        let _ = stream.set_nodelay(true);
        let (tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .expect("handshake");
        tokio::spawn(conn);
        Conn {
            tx,
            host: HeaderValue::from_str(authority).expect("host"),
            path: path.to_owned(),
        }
    }

    /// POSTs one message; returns the session header and the raw answer.
    pub async fn post(&mut self, session: Option<&str>, body: Bytes) -> (Option<String>, Bytes) {
        let mut req = Request::post(self.path.as_str())
            .header(http::header::HOST, self.host.clone())
            .header(http::header::CONTENT_TYPE, "application/json")
            .header(http::header::ACCEPT, "application/json, text/event-stream")
            .header("mcp-protocol-version", "2025-06-18");
        if let Some(sid) = session {
            req = req.header("mcp-session-id", sid);
        }
        let req = req.body(Full::new(body)).expect("request");
        self.tx.ready().await.expect("connection ready");
        let resp = self.tx.send_request(req).await.expect("response");
        let sid = resp
            .headers()
            .get("mcp-session-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body = resp.into_body().collect().await.expect("body").to_bytes();
        (sid, body)
    }

    /// `initialize` + `notifications/initialized`; returns the session id.
    pub async fn initialize(&mut self) -> String {
        const INIT: &str = r#"{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"vmcp-bench","version":"1"}}}"#;
        let (sid, answer) = self.post(None, Bytes::from_static(INIT.as_bytes())).await;
        assert!(
            has_result(&answer),
            "initialize failed: {}",
            String::from_utf8_lossy(&answer)
        );
        let sid = sid.expect("session id");
        const INITIALIZED: &str = r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#;
        self.post(Some(&sid), Bytes::from_static(INITIALIZED.as_bytes())).await;
        sid
    }

    /// A 2026-07-28 `tools/call` as `caller` (its bearer token; vmcp keeps
    /// one pooled session per caller): no session, the envelope in headers and `_meta`.
    pub async fn call_stateless(&mut self, caller: &str, tool: &str, id: u64) {
        let body = format!(
            r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/call","params":{{"name":"{tool}","arguments":{{"message":"hi"}},"_meta":{{"io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientCapabilities":{{}}}}}}}}"#
        );
        let req = Request::post(self.path.as_str())
            .header(http::header::HOST, self.host.clone())
            .header(http::header::CONTENT_TYPE, "application/json")
            .header(http::header::ACCEPT, "application/json, text/event-stream")
            .header(http::header::AUTHORIZATION, format!("Bearer {caller}"))
            .header("mcp-protocol-version", "2026-07-28")
            .header("mcp-method", "tools/call")
            .header("mcp-name", tool)
            .body(Full::new(Bytes::from(body)))
            .expect("request");
        self.tx.ready().await.expect("connection ready");
        let resp = self.tx.send_request(req).await.expect("response");
        let answer = resp.into_body().collect().await.expect("body").to_bytes();
        assert!(has_result(&answer), "call failed: {}", String::from_utf8_lossy(&answer));
    }

    pub async fn call(&mut self, session: &str, tool: &str, id: u64) {
        let rows = extra_arguments();
        let body = format!(
            r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/call","params":{{"name":"{tool}","arguments":{{"message":"hi"{rows}}}}}}}"#
        );
        let (_, answer) = self.post(Some(session), Bytes::from(body)).await;
        assert!(has_result(&answer), "call failed: {}", String::from_utf8_lossy(&answer));
    }
}

/// Connections kept per URL, for the scenarios that are not the hot loop.
#[derive(Default)]
pub struct Mcp {
    idle: Mutex<HashMap<String, Vec<Conn>>>,
}

impl Mcp {
    async fn take(&self, url: &str) -> Conn {
        let idle = self.idle.lock().expect("pool").get_mut(url).and_then(Vec::pop);
        match idle {
            Some(c) => c,
            None => Conn::open(url).await,
        }
    }

    fn give(&self, url: &str, conn: Conn) {
        self.idle
            .lock()
            .expect("pool")
            .entry(url.to_owned())
            .or_default()
            .push(conn);
    }

    pub async fn initialize(&self, url: &str) -> String {
        let mut c = self.take(url).await;
        let sid = c.initialize().await;
        self.give(url, c);
        sid
    }

    pub async fn call(&self, url: &str, session: &str, tool: &str, id: u64) {
        let mut c = self.take(url).await;
        c.call(session, tool, id).await;
        self.give(url, c);
    }
}

/// One run: its stats and, for each group of processes asked about, their
/// CPU µs per call over exactly the measured window.
pub struct Run {
    pub stats: Stats,
    pub cpu_us: Vec<f64>,
}

/// Which era the load generator speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Era {
    /// `initialize`, then calls on the session.
    Handshake,
    /// 2026-07-28: each "session" is a caller (a bearer token) with its pool.
    Stateless,
}

/// `sessions` sessions created at `init_url`, calling `tool` at `call_url`,
/// each on its own connection; `cpu_of` are groups of pids whose CPU per call
/// is reported.
pub async fn load(
    init_url: &str,
    call_url: &str,
    tool: &str,
    sessions: usize,
    window: (Duration, Duration),
    cpu_of: &[&[u32]],
) -> Run {
    load_in(Era::Handshake, init_url, call_url, tool, sessions, window, cpu_of).await
}

/// [`load`] in either era.
pub async fn load_in(
    era: Era,
    init_url: &str,
    call_url: &str,
    tool: &str,
    sessions: usize,
    (warmup, measure): (Duration, Duration),
    cpu_of: &[&[u32]],
) -> Run {
    let mut ready = Vec::new();
    for i in 0..sessions {
        let sid = match era {
            Era::Handshake => Conn::open(init_url).await.initialize().await,
            Era::Stateless => format!("bench-caller-{i}-{}", std::process::id()),
        };
        ready.push((sid, Conn::open(call_url).await));
    }
    let start = Instant::now();
    let (measure_from, until) = (start + warmup, start + warmup + measure);
    let tasks: Vec<_> = ready
        .into_iter()
        .map(|(sid, mut conn)| {
            let tool = tool.to_owned();
            tokio::spawn(async move {
                let mut samples = Vec::with_capacity(1 << 16);
                let mut id = 1;
                loop {
                    let began = Instant::now();
                    if began >= until {
                        return samples;
                    }
                    match era {
                        Era::Handshake => conn.call(&sid, &tool, id).await,
                        Era::Stateless => conn.call_stateless(&sid, &tool, id).await,
                    }
                    id += 1;
                    if began >= measure_from {
                        samples.push(began.elapsed().as_secs_f64() * 1e6);
                    }
                }
            })
        })
        .collect();
    let groups: Vec<Vec<u32>> = cpu_of.iter().map(|g| g.to_vec()).collect();
    let cpu = |groups: &[Vec<u32>]| -> Vec<f64> {
        groups
            .iter()
            .map(|g| g.iter().map(|p| cpu_secs(*p).unwrap_or(f64::NAN)).sum())
            .collect()
    };
    tokio::time::sleep_until(measure_from.into()).await;
    let before = cpu(&groups);
    tokio::time::sleep_until(until.into()).await;
    let after = cpu(&groups);
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.expect("session task"));
    }
    let rps = all.len() as f64 / measure.as_secs_f64();
    let calls = all.len().max(1) as f64;
    Run {
        stats: Stats {
            rps,
            p50_us: percentile(&mut all, 0.5),
            p99_us: percentile(&mut all, 0.99),
        },
        cpu_us: before.iter().zip(&after).map(|(b, a)| (a - b) * 1e6 / calls).collect(),
    }
}

/// `BENCH_ARGUMENT_ROWS=N`: each handshake-era `tools/call` also carries N
/// small objects in its arguments (`"rows":[{"id":0,"name":"row 0","tags":["a","b"]},…]`,
/// ~45 bytes each), which the backend ignores: how a call's cost grows with
/// the size of its arguments. Unset: none, as in the README's tables.
fn extra_arguments() -> &'static str {
    static ROWS: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    ROWS.get_or_init(|| {
        let n: usize = std::env::var("BENCH_ARGUMENT_ROWS")
            .ok()
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        if n == 0 {
            return String::new();
        }
        let rows: Vec<String> = (0..n)
            .map(|i| format!(r#"{{"id":{i},"name":"row {i}","tags":["a","b"]}}"#))
            .collect();
        format!(r#","rows":[{}]"#, rows.join(","))
    })
}
