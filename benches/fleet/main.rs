//! The fleet benchmark (issue 16): vmcp replicas on one Redis Cluster under a
//! steady load, scaled 3 → 6 → 3 while it runs. `cargo bench --bench fleet`.
//!
//! Per step it prints calls/s in all and per replica, each replica's CPU per
//! call (from /proc), the sessions that change owner (and what rendezvous
//! hashing promises), rebuilds and forwarded requests during the step, how
//! long until the last session was rebuilt on its new owner, and errors
//! (answers without a result: must be 0). Then capacity: Redis memory and
//! replica memory per session. On 2 shared cores the replicas, Redis, the
//! backend and this load generator share the CPU: read the shape (cost per
//! call as replicas are added, sessions moved), not absolute speed.

#[allow(dead_code)]
#[path = "../load/backend.rs"]
mod backend;
#[path = "../../tests/support/cpu.rs"]
mod cpu;
#[allow(dead_code)]
#[path = "../../tests/support/deps.rs"]
mod deps;
#[allow(dead_code)]
#[path = "../../tests/support/process.rs"]
mod process;
#[allow(dead_code)]
#[path = "../../tests/support/redis_topology.rs"]
mod redis_topology;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use process::VmcpProcess;
use vmcp::affinity::ring::{Member, Ring};

pub fn http() -> reqwest::Client {
    static CLIENT: std::sync::OnceLock<reqwest::Client> = std::sync::OnceLock::new();
    CLIENT
        .get_or_init(|| {
            vmcp::app::install_crypto_provider();
            reqwest::Client::builder().build().expect("client")
        })
        .clone()
}

const SESSIONS: usize = 1000;
const WORKERS: usize = 24;
const HOP_KEY: &str = "fleet-bench-hop-key-0123456789";
const STEP: Duration = Duration::from_secs(8);

struct Fleet {
    ports: Vec<u16>,
    procs: Vec<Option<VmcpProcess>>,
    cluster: Vec<String>,
    backend: String,
}

impl Fleet {
    fn config(&self, me: usize, members: usize) -> String {
        let list: Vec<String> = (0..members)
            .map(|i| format!("r{i}: \"127.0.0.1:{}\"", self.ports[i]))
            .collect();
        let nodes: Vec<String> = self.cluster.iter().map(|a| format!("\"{a}\"")).collect();
        format!(
            "replica_id: r{me}\nbackends:\n  - name: fast\n    url: {}\nstore:\n  kind: redis\n  redis:\n    cluster: [{}]\nmembership:\n  members: {{ {} }}\naffinity:\n  hop_key: {HOP_KEY}\nlog:\n  format: json\n",
            self.backend,
            nodes.join(", "),
            list.join(", ")
        )
    }

    async fn start(&mut self, i: usize, members: usize) {
        let yaml = self.config(i, members);
        self.procs[i] = Some(VmcpProcess::start_on(self.ports[i], &yaml).await);
    }

    fn live(&self) -> Vec<usize> {
        (0..self.procs.len()).filter(|i| self.procs[*i].is_some()).collect()
    }

    async fn sum(&self, prefix: &str) -> f64 {
        let mut total = 0.0;
        for p in self.procs.iter().flatten() {
            total += p.metric(prefix).await;
        }
        total
    }
}

/// One keep-alive connection, posting one message.
struct Conn {
    tx: SendRequest<Full<Bytes>>,
    host: String,
}

impl Conn {
    async fn open(port: u16) -> Option<Conn> {
        let stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.ok()?;
        let _ = stream.set_nodelay(true);
        let (tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.ok()?;
        tokio::spawn(conn);
        Some(Conn {
            tx,
            host: format!("127.0.0.1:{port}"),
        })
    }

    /// `Some(session id)` and whether the answer had a result.
    async fn post(&mut self, session: Option<&str>, body: String) -> Option<(Option<String>, bool)> {
        let mut req = http::Request::post("/mcp")
            .header("host", &self.host)
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .header("mcp-protocol-version", "2025-06-18");
        if let Some(s) = session {
            req = req.header("mcp-session-id", s);
        }
        let req = req.body(Full::new(Bytes::from(body))).ok()?;
        self.tx.ready().await.ok()?;
        let resp = self.tx.send_request(req).await.ok()?;
        let sid = resp
            .headers()
            .get("mcp-session-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body = resp.into_body().collect().await.ok()?.to_bytes();
        Some((sid, body.windows(8).any(|w| w == b"\"result\"")))
    }
}

#[derive(Default)]
struct Counts {
    ok: AtomicU64,
    errors: AtomicU64,
}

fn ring(members: usize) -> Ring {
    Ring::new((0..members).map(|i| Member::new(&format!("r{i}"), "x")).collect())
}

fn moved(ids: &[String], from: usize, to: usize) -> f64 {
    let (a, b) = (ring(from), ring(to));
    let n = ids
        .iter()
        .filter(|id| a.owner(id).map(|m| m.id.clone()) != b.owner(id).map(|m| m.id.clone()))
        .count();
    n as f64 / ids.len() as f64
}

fn rss_kb(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0.0)
}

async fn redis_memory(ports: &[u16]) -> f64 {
    let mut total = 0.0;
    for port in ports {
        let mut conn = redis_topology::conn(*port).await;
        let info: String = redis::cmd("INFO")
            .arg("memory")
            .query_async(&mut conn)
            .await
            .unwrap_or_default();
        total += info
            .lines()
            .find_map(|l| l.strip_prefix("used_memory:"))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(0.0);
    }
    total
}

/// Measures one step of `STEP` while the load runs; `change` runs at its start.
async fn step(
    name: &str,
    fleet: &Fleet,
    counts: &Counts,
    ids: &[String],
    from: usize,
    to: usize,
    changed_at: Option<Instant>,
) {
    let live = fleet.live();
    let cpu_before: Vec<f64> = live
        .iter()
        .map(|i| {
            fleet.procs[*i]
                .as_ref()
                .and_then(|p| p.pid())
                .and_then(cpu::cpu_secs)
                .unwrap_or(0.0)
        })
        .collect();
    let mut calls_before = Vec::new();
    for i in &live {
        calls_before.push(metric(fleet, *i, "vmcp_requests_total{method=\"tools/call\",status=\"ok\"}").await);
    }
    let (ok0, err0) = (counts.ok.load(Ordering::Relaxed), counts.errors.load(Ordering::Relaxed));
    let rebuilds0 = fleet.sum("vmcp_session_rebuilds_total{outcome=\"ok\"}").await;
    let forwarded0 = fleet.sum("vmcp_requests_forwarded_total{outcome=\"ok\"}").await;
    let started = Instant::now();
    let (mut last_rebuilds, mut settled) = (rebuilds0, Duration::ZERO);
    while started.elapsed() < STEP {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = fleet.sum("vmcp_session_rebuilds_total{outcome=\"ok\"}").await;
        if now > last_rebuilds {
            last_rebuilds = now;
            settled = changed_at.map_or(started.elapsed(), |t| t.elapsed());
        }
    }
    let secs = started.elapsed().as_secs_f64();
    let (ok, errors) = (
        counts.ok.load(Ordering::Relaxed) - ok0,
        counts.errors.load(Ordering::Relaxed) - err0,
    );
    let rebuilds = fleet.sum("vmcp_session_rebuilds_total{outcome=\"ok\"}").await - rebuilds0;
    let forwarded = fleet.sum("vmcp_requests_forwarded_total{outcome=\"ok\"}").await - forwarded0;
    let mut per_replica = Vec::new();
    for (k, i) in live.iter().enumerate() {
        let calls =
            metric(fleet, *i, "vmcp_requests_total{method=\"tools/call\",status=\"ok\"}").await - calls_before[k];
        let cpu = fleet.procs[*i]
            .as_ref()
            .and_then(|p| p.pid())
            .and_then(cpu::cpu_secs)
            .unwrap_or(0.0)
            - cpu_before[k];
        per_replica.push(format!(
            "r{i} {:.0}/s {:.0} µs",
            calls / secs,
            if calls > 0.0 { cpu * 1e6 / calls } else { f64::NAN }
        ));
    }
    let expected = if to > from {
        (to - from) as f64 / to as f64
    } else {
        (from - to) as f64 / from as f64
    };
    let moved_note = if from == to {
        "—".to_owned()
    } else {
        format!("{:.1}% (ideal {:.1}%)", moved(ids, from, to) * 100.0, expected * 100.0)
    };
    let settle = if changed_at.is_some() && rebuilds > 0.0 {
        format!("{:.2} s", settled.as_secs_f64())
    } else {
        "—".to_owned()
    };
    println!(
        "| {name} | {} | {:.0} | {} | {moved_note} | {rebuilds:.0} ({:.0}/s) | {:.1}% | {settle} | {errors} |",
        live.len(),
        ok as f64 / secs,
        per_replica.join("; "),
        rebuilds / secs,
        forwarded / ok.max(1) as f64 * 100.0,
    );
}

async fn metric(fleet: &Fleet, i: usize, prefix: &str) -> f64 {
    match &fleet.procs[i] {
        Some(p) => p.metric(prefix).await,
        None => 0.0,
    }
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--backend") {
        return backend::serve().await;
    }
    let cluster = redis_topology::RedisCluster::start(3, 0).await;
    let backend = std::process::Command::new(std::env::current_exe().expect("exe"))
        .arg("--backend")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("backend starts");
    let mut backend = ChildGuard(backend);
    let url = {
        use std::io::BufRead;
        let out = backend.0.stdout.take().expect("stdout");
        let mut line = String::new();
        std::io::BufReader::new(out).read_line(&mut line).expect("backend URL");
        line.trim().to_owned()
    };
    let mut fleet = Fleet {
        ports: (0..6).map(|_| deps::free_port()).collect(),
        procs: (0..6).map(|_| None).collect(),
        cluster: cluster.addrs(),
        backend: url,
    };
    for i in 0..3 {
        fleet.start(i, 3).await;
    }
    let masters: Vec<u16> = cluster
        .addrs()
        .iter()
        .filter_map(|a| a.rsplit_once(':').and_then(|(_, p)| p.parse().ok()))
        .collect();
    let (redis_before, rss_before): (f64, f64) = (
        redis_memory(&masters).await,
        fleet.procs.iter().flatten().filter_map(|p| p.pid()).map(rss_kb).sum(),
    );

    // The sessions, entering at replicas in turn (each is created where it lands, then owned by hash).
    let mut ids = Vec::with_capacity(SESSIONS);
    for n in 0..SESSIONS {
        let mut c = Conn::open(fleet.ports[n % 3]).await.expect("connect");
        let init = r#"{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"fleet","version":"1"}}}"#;
        let (sid, ok) = c.post(None, init.to_owned()).await.expect("initialize");
        assert!(ok, "initialize failed");
        let sid = sid.expect("session id");
        c.post(
            Some(&sid),
            r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#.to_owned(),
        )
        .await;
        ids.push(sid);
    }
    let redis_after = redis_memory(&masters).await;
    let rss_after: f64 = fleet.procs.iter().flatten().filter_map(|p| p.pid()).map(rss_kb).sum();

    // The steady load: workers call random sessions at random live replicas.
    let counts = Arc::new(Counts::default());
    let live_ports = Arc::new(std::sync::RwLock::new(fleet.ports[..3].to_vec()));
    let ids = Arc::new(ids);
    let stop = tokio_util::sync::CancellationToken::new();
    for w in 0..WORKERS {
        let (counts, live_ports, ids, stop) = (counts.clone(), live_ports.clone(), ids.clone(), stop.clone());
        tokio::spawn(async move {
            let mut conns: std::collections::HashMap<u16, Conn> = Default::default();
            let mut n = w as u64;
            while !stop.is_cancelled() {
                n = n.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                let port = {
                    let ports = live_ports.read().expect("ports");
                    ports[(n >> 33) as usize % ports.len()]
                };
                let sid = &ids[(n >> 17) as usize % ids.len()];
                if let std::collections::hash_map::Entry::Vacant(slot) = conns.entry(port) {
                    match Conn::open(port).await {
                        Some(c) => {
                            slot.insert(c);
                        }
                        None => {
                            counts.errors.fetch_add(1, Ordering::Relaxed);
                            continue;
                        }
                    }
                }
                let body = format!(
                    r#"{{"jsonrpc":"2.0","id":{n},"method":"tools/call","params":{{"name":"fast_echo","arguments":{{"message":"m"}}}}}}"#
                );
                let answered = match conns.get_mut(&port) {
                    Some(c) => c.post(Some(sid), body).await,
                    None => None,
                };
                match answered {
                    Some((_, true)) => counts.ok.fetch_add(1, Ordering::Relaxed),
                    // A connection closed by a draining replica: reconnect, not a failed call.
                    None => {
                        conns.remove(&port);
                        continue;
                    }
                    Some((_, false)) => counts.errors.fetch_add(1, Ordering::Relaxed),
                };
            }
        });
    }
    println!("# vmcp fleet benchmark: {SESSIONS} sessions, {WORKERS} closed-loop workers, a 3-master Redis Cluster, {} s per step\n", STEP.as_secs());
    println!("| step | replicas | calls/s | per replica: calls/s, CPU µs per call | sessions moved | rebuilds | forwarded | last rebuild after the change | errors |");
    println!("|---|---|---|---|---|---|---|---|---|");
    tokio::time::sleep(Duration::from_secs(2)).await;
    step("3 replicas, steady", &fleet, &counts, &ids, 3, 3, None).await;

    // Scale out: three more replicas join; the first three learn it (SIGHUP).
    for i in 3..6 {
        fleet.start(i, 6).await;
    }
    let changed = Instant::now();
    for i in 0..3 {
        if let Some(p) = &fleet.procs[i] {
            p.reconfigure(&fleet.config(i, 6));
        }
    }
    *live_ports.write().expect("ports") = fleet.ports.clone();
    step("3 → 6", &fleet, &counts, &ids, 3, 6, Some(changed)).await;
    step("6 replicas, steady", &fleet, &counts, &ids, 6, 6, None).await;

    // Scale in: the last three leave (SIGTERM, drained), the first three learn it.
    *live_ports.write().expect("ports") = fleet.ports[..3].to_vec();
    let changed = Instant::now();
    for i in 0..3 {
        if let Some(p) = &fleet.procs[i] {
            p.reconfigure(&fleet.config(i, 3));
        }
    }
    let leaving: Vec<VmcpProcess> = (3..6).filter_map(|i| fleet.procs[i].take()).collect();
    for p in &leaving {
        p.signal_term();
    }
    step("6 → 3", &fleet, &counts, &ids, 6, 3, Some(changed)).await;
    stop.cancel();
    for p in leaving {
        let _ = p.wait().await;
    }

    println!("\n## Capacity\n");
    println!("| what | per session |");
    println!("|---|---|");
    println!(
        "| Redis memory (3 masters, `used_memory`) | {:.0} bytes |",
        (redis_after - redis_before) / SESSIONS as f64
    );
    println!(
        "| replica memory (RSS, all three replicas; the owner holds the runtime) | {:.1} KB |",
        (rss_after - rss_before) / SESSIONS as f64
    );
    drop(cluster);
}

struct ChildGuard(std::process::Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
    }
}
