//! The load generator: `n` concurrent MCP sessions, each looping `tools/call`
//! for a fixed time after a warm-up, with every call's latency recorded.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

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

pub struct Mcp {
    http: reqwest::Client,
}

impl Mcp {
    pub fn new(http: reqwest::Client) -> Self {
        Self { http }
    }

    /// POSTs one message; returns the session header and the JSON answer.
    pub async fn post(&self, url: &str, session: Option<&str>, body: &Value) -> (Option<String>, Value) {
        let mut req = self
            .http
            .post(url)
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .header("mcp-protocol-version", "2025-06-18");
        if let Some(sid) = session {
            req = req.header("mcp-session-id", sid);
        }
        let resp = req.body(body.to_string()).send().await.expect("request");
        let sid = resp
            .headers()
            .get("mcp-session-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let text = resp.text().await.unwrap_or_default();
        let json = text
            .lines()
            .find_map(|l| l.strip_prefix("data:"))
            .unwrap_or(&text)
            .trim()
            .to_owned();
        (sid, serde_json::from_str(&json).unwrap_or(Value::Null))
    }

    /// `initialize` + `notifications/initialized`; returns the session id.
    pub async fn initialize(&self, url: &str) -> String {
        let init = json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
            "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "vmcp-bench", "version": "1"}}});
        let (sid, answer) = self.post(url, None, &init).await;
        assert!(answer.get("result").is_some(), "initialize failed at {url}: {answer}");
        let sid = sid.expect("session id");
        self.post(
            url,
            Some(&sid),
            &json!({"jsonrpc": "2.0", "method": "notifications/initialized"}),
        )
        .await;
        sid
    }

    pub async fn call(&self, url: &str, session: &str, tool: &str, id: u64) {
        let body = json!({"jsonrpc": "2.0", "id": id, "method": "tools/call", "params": {"name": tool, "arguments": {"message": "hi"}}});
        let (_, answer) = self.post(url, Some(session), &body).await;
        assert!(answer.get("result").is_some(), "call failed at {url}: {answer}");
    }
}

/// `sessions` sessions created at `init_url`, calling `tool` at `call_url`.
pub async fn load(
    mcp: &Arc<Mcp>,
    init_url: &str,
    call_url: &str,
    tool: &str,
    sessions: usize,
    warmup: Duration,
    measure: Duration,
) -> Stats {
    let mut ids = Vec::new();
    for _ in 0..sessions {
        ids.push(mcp.initialize(init_url).await);
    }
    let start = Instant::now();
    let (measure_from, until) = (start + warmup, start + warmup + measure);
    let tasks: Vec<_> = ids
        .into_iter()
        .map(|sid| {
            let (mcp, url, tool) = (Arc::clone(mcp), call_url.to_owned(), tool.to_owned());
            tokio::spawn(async move {
                let mut samples = Vec::new();
                let mut id = 1;
                loop {
                    let began = Instant::now();
                    if began >= until {
                        return samples;
                    }
                    mcp.call(&url, &sid, &tool, id).await;
                    id += 1;
                    if began >= measure_from {
                        samples.push(began.elapsed().as_secs_f64() * 1e6);
                    }
                }
            })
        })
        .collect();
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.expect("session task"));
    }
    let rps = all.len() as f64 / measure.as_secs_f64();
    Stats {
        rps,
        p50_us: percentile(&mut all, 0.5),
        p99_us: percentile(&mut all, 0.99),
    }
}
