//! vmcp's chaos run: `cargo bench --bench chaos [-- --no-persistence]`.
//!
//! Three real vmcp processes (the release binary cargo builds for this bench)
//! on one real `redis-server`, two MCP backends in this process (one behind a
//! freezable TCP proxy), and a few hundred closed-loop sessions calling a tool
//! with a side effect, while a fixed schedule rolls every replica (SIGTERM),
//! SIGKILLs one, restarts Redis and freezes a backend. The report compares
//! every answer with what the backends actually ran. All on 127.0.0.1; the
//! whole run ends by itself in under three minutes.

mod backend;
#[path = "../../tests/support/cpu.rs"]
mod cpu;
mod load;
mod logs;
mod procs;
// The freezable TCP proxy of the fault tests, shared rather than copied.
#[allow(dead_code)]
#[path = "../../tests/support/proxy.rs"]
mod proxy;
mod report;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::procs::Proc;
use crate::report::Phase;

/// How big and how long.
struct Plan {
    sessions: u32,
    think: Duration,
    settle: Duration,
    freeze: Duration,
    persist: bool,
}

const DRAIN_DELAY: &str = "1s";
const SHUTDOWN_TIMEOUT: &str = "3s";
/// A SIGTERMed replica must be gone by drain + shutdown + the 2 s watchdog; a little more.
const EXIT_BOUND: Duration = Duration::from_secs(8);

/// Everything the fault schedule acts on.
struct Rig {
    replicas: Vec<Proc>,
    ports: Vec<u16>,
    redis: Proc,
    redis_port: u16,
    proxy: proxy::FreezableProxy,
    http: reqwest::Client,
    began: Instant,
    phases: Vec<Phase>,
}

impl Rig {
    fn ms(&self) -> f64 {
        self.began.elapsed().as_secs_f64() * 1e3
    }

    fn begin(&mut self, name: &str) {
        for p in self.replicas.iter().chain(std::iter::once(&self.redis)) {
            p.mark(&format!("{name} at +{:.2} s", self.ms() / 1e3));
        }
        let ms = self.ms();
        self.phases.push(Phase {
            name: name.into(),
            start_ms: ms,
            done_ms: ms,
            notes: Vec::new(),
        });
    }

    fn note(&mut self, note: String) {
        let ms = self.ms();
        if let Some(p) = self.phases.last_mut() {
            p.notes.push(note);
            p.done_ms = ms;
        }
    }

    async fn restart_replica(&mut self, i: usize, why: &str) -> Result<(), String> {
        self.replicas[i].spawn(why).map_err(|e| format!("restart r{i}: {e}"))?;
        let took = procs::healthy(&self.http, self.ports[i], Duration::from_secs(10)).await?;
        self.note(format!("healthy {:.2} s after restart", took.as_secs_f64()));
        Ok(())
    }

    /// The fault schedule, each fault followed by `settle` of plain load.
    async fn faults(&mut self, plan: &Plan) -> Result<(), String> {
        for i in 0..self.replicas.len() {
            self.begin(&format!("roll r{i}"));
            let note = match self.replicas[i].stop("TERM", EXIT_BOUND).await {
                Some(t) => format!("SIGTERM r{i}: exited after {:.2} s", t.as_secs_f64()),
                None => format!("SIGTERM r{i}: NOT exited within {EXIT_BOUND:?}, SIGKILLed"),
            };
            self.note(note);
            self.restart_replica(i, "restart after SIGTERM").await?;
            tokio::time::sleep(plan.settle).await;
        }
        self.begin("SIGKILL r1");
        self.replicas[1].stop("KILL", Duration::from_secs(2)).await;
        self.note("SIGKILL r1, down for 2 s".into());
        tokio::time::sleep(Duration::from_secs(2)).await;
        self.restart_replica(1, "restart after SIGKILL").await?;
        tokio::time::sleep(plan.settle).await;

        self.begin("restart Redis");
        let before = procs::redis_cmd(self.redis_port, "DBSIZE").await.unwrap_or_default();
        match self.redis.stop("TERM", Duration::from_secs(10)).await {
            Some(t) => self.note(format!(
                "SIGTERM Redis ({before} keys): exited after {:.2} s",
                t.as_secs_f64()
            )),
            None => self.note("SIGTERM Redis: NOT exited within 10 s, SIGKILLed".into()),
        }
        self.redis.spawn("restart").map_err(|e| format!("restart Redis: {e}"))?;
        let took = procs::redis_ready(self.redis_port, Duration::from_secs(10)).await?;
        let after = procs::redis_cmd(self.redis_port, "DBSIZE").await.unwrap_or_default();
        self.note(format!(
            "answering PING {:.2} s after restart, {after} keys",
            took.as_secs_f64()
        ));
        tokio::time::sleep(plan.settle).await;

        self.begin("freeze backend b");
        self.proxy.freeze();
        tokio::time::sleep(plan.freeze).await;
        self.proxy.thaw();
        self.note(format!("frozen for {:.0} s, then thawed", plan.freeze.as_secs_f64()));
        tokio::time::sleep(plan.settle).await;
        Ok(())
    }
}

fn config(i: usize, ports: &[u16], a: &str, b: &str, redis_port: u16) -> String {
    let members: Vec<String> = ports
        .iter()
        .enumerate()
        .map(|(k, p)| format!("r{k}: \"127.0.0.1:{p}\""))
        .collect();
    format!(
        "listen: 127.0.0.1:{port}\nreplica_id: r{i}\n\
         backends:\n  - name: a\n    url: http://{a}/mcp\n  - name: b\n    url: http://{b}/mcp\n\
         session:\n  call_timeout: 2s\n  init_timeout: 2s\n\
         store:\n  kind: redis\n  redis:\n    url: redis://127.0.0.1:{redis_port}/0\n\
         membership:\n  kind: static\n  members: {{ {members} }}\n\
         affinity:\n  hop_key: \"${{VMCP_HOP_KEY}}\"\n\
         http:\n  drain_delay: {DRAIN_DELAY}\n  shutdown_timeout: {SHUTDOWN_TIMEOUT}\n",
        port = ports[i],
        members = members.join(", "),
    )
}

fn flag_value(args: &[String], name: &str) -> Option<u64> {
    let i = args.iter().position(|a| a == name)?;
    args.get(i + 1)?.parse().ok()
}

async fn run(args: &[String]) -> Result<(), String> {
    let plan = Plan {
        sessions: flag_value(args, "--sessions").unwrap_or(240) as u32,
        think: Duration::from_millis(flag_value(args, "--think-ms").unwrap_or(100)),
        settle: Duration::from_secs(flag_value(args, "--settle-s").unwrap_or(6)),
        freeze: Duration::from_secs(5),
        persist: !args.iter().any(|a| a == "--no-persistence"),
    };
    let binary = procs::vmcp_binary()?;
    let target = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target");
    let suffix = if plan.persist { "" } else { "-no-persistence" };
    let logs = target.join(format!("chaos-logs{suffix}"));
    let _ = std::fs::remove_dir_all(&logs);
    std::fs::create_dir_all(&logs).map_err(|e| format!("{}: {e}", logs.display()))?;
    let work = std::env::temp_dir().join(format!("vmcp-chaos-{}", std::process::id()));
    std::fs::create_dir_all(&work).map_err(|e| format!("{}: {e}", work.display()))?;
    let result = run_in(
        &plan,
        &binary,
        &logs,
        &work,
        &target.join(format!("chaos{suffix}.json")),
    )
    .await;
    let _ = std::fs::remove_dir_all(&work);
    result
}

async fn run_in(plan: &Plan, binary: &Path, logs: &Path, work: &Path, out: &Path) -> Result<(), String> {
    let io = |e: std::io::Error| e.to_string();
    let stop_servers = CancellationToken::new();
    let _stop_on_exit = stop_servers.clone().drop_guard();
    let a = backend::Backend::start("a", Duration::from_millis(5), stop_servers.clone())
        .await
        .map_err(io)?;
    let b = backend::Backend::start("b", Duration::from_millis(5), stop_servers.clone())
        .await
        .map_err(io)?;
    let proxy = proxy::FreezableProxy::start(&b.addr).await;

    let redis_port = procs::free_port().map_err(io)?;
    let mut redis = procs::redis(redis_port, work, plan.persist, logs);
    redis.spawn("start").map_err(|e| format!("redis-server: {e}"))?;
    procs::redis_ready(redis_port, Duration::from_secs(10)).await?;

    let ports = (0..3)
        .map(|_| procs::free_port())
        .collect::<Result<Vec<u16>, _>>()
        .map_err(io)?;
    let mut key = [0u8; 24];
    getrandom::fill(&mut key).map_err(|e| e.to_string())?;
    let hop_key: String = key.iter().map(|b| format!("{b:02x}")).collect();
    vmcp::app::install_crypto_provider();
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(1024)
        .connect_timeout(Duration::from_secs(1))
        .timeout(Duration::from_secs(15))
        .build()
        .map_err(|e| e.to_string())?;
    let mut replicas = Vec::new();
    for i in 0..ports.len() {
        let path = work.join(format!("r{i}.yaml"));
        std::fs::write(&path, config(i, &ports, &a.addr, &proxy.addr, redis_port)).map_err(io)?;
        let args = vec!["serve".into(), "--config".into(), path.display().to_string()];
        let env = vec![
            ("VMCP_HOP_KEY".into(), hop_key.clone()),
            ("RUST_LOG".into(), "info,rmcp=warn".into()),
            // Plain text in the log files (tracing colours even when stderr is a file).
            ("NO_COLOR".into(), "1".into()),
        ];
        let mut p = Proc::new(&format!("r{i}"), binary, args, env, logs);
        p.spawn("start").map_err(|e| format!("vmcp: {e}"))?;
        replicas.push(p);
    }
    for port in &ports {
        procs::healthy(&http, *port, Duration::from_secs(10)).await?;
    }

    let began = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let entry = Arc::new(load::Entry::new(
        ports.iter().map(|p| format!("http://127.0.0.1:{p}")).collect(),
    ));
    let watcher = tokio::spawn(Arc::clone(&entry).watch(http.clone(), Duration::from_millis(100), Arc::clone(&stop)));
    let client = Arc::new(load::Client::new(http.clone(), Arc::clone(&entry), began));
    let tasks: Vec<_> = (0..plan.sessions)
        .map(|i| tokio::spawn(Arc::clone(&client).session(i, plan.think, Arc::clone(&stop))))
        .collect();
    let mut rig = Rig {
        replicas,
        ports,
        redis,
        redis_port,
        proxy,
        http,
        began,
        phases: Vec::new(),
    };
    rig.begin("warm-up (no fault)");
    tokio::time::sleep(plan.settle).await;
    // Bounded: the schedule takes about a minute; give up at 150 s.
    let error = match tokio::time::timeout(Duration::from_secs(150), rig.faults(plan)).await {
        Ok(Ok(())) => None,
        Ok(Err(e)) => Some(e),
        Err(_) => Some("fault schedule exceeded 150 s".into()),
    };
    rig.proxy.thaw();
    stop.store(true, Ordering::Relaxed);
    let mut record = load::Record::default();
    for task in tasks {
        if let Ok(Ok(r)) = tokio::time::timeout(Duration::from_secs(20), task).await {
            record.calls.extend(r.calls);
            record.sessions_created += r.sessions_created;
            record.sessions_lost.extend(r.sessions_lost);
            record.init_failures.extend(r.init_failures);
        }
    }
    let end_ms = rig.ms();
    let _ = watcher.await;
    // Whatever the frozen proxy held back has landed by now.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut ledger = a.ledger.lock().map(|l| l.clone()).unwrap_or_default();
    if let Ok(lb) = b.ledger.lock() {
        for (op, n) in lb.iter() {
            *ledger.entry(*op).or_insert(0) += n;
        }
    }
    let bench_cpu = cpu::cpu_secs(std::process::id()).unwrap_or(0.0);
    let mut cpu = Vec::new();
    for p in rig.replicas.iter_mut() {
        p.stop("TERM", EXIT_BOUND).await;
        cpu.push((format!("vmcp {} (all incarnations)", p.name), p.cpu_total()));
    }
    rig.redis.stop("TERM", Duration::from_secs(10)).await;
    cpu.push(("redis-server".into(), rig.redis.cpu_total()));
    cpu.push(("bench process (load, backends, proxy)".into(), bench_cpu));
    let setup = json!({
        "replicas": 3, "sessions": plan.sessions, "think_ms": plan.think.as_millis() as u64,
        "effect_delay_ms": 5, "call_timeout": "2s", "drain_delay": DRAIN_DELAY,
        "shutdown_timeout": SHUTDOWN_TIMEOUT, "redis_persistence": if plan.persist { "appendonly, fsync always" } else { "none" },
        "settle_s": plan.settle.as_secs(), "freeze_s": plan.freeze.as_secs(),
        "readiness_poll_ms": 100, "logs": logs.display().to_string(),
    });
    let mut report = report::report(&report::Run {
        record: &record,
        phases: &rig.phases,
        ledger: &ledger,
        end_ms,
        cpu,
        setup,
        error,
    });
    let names: Vec<String> = rig.replicas.iter().map(|p| p.name.clone()).collect();
    let order: Vec<String> = rig.phases.iter().map(|p| p.name.clone()).collect();
    report["vmcp_warnings"] = logs::report(&logs::summarize(logs, &names, &order));
    let text = serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?;
    std::fs::write(out, text).map_err(|e| format!("{}: {e}", out.display()))?;
    println!("\nJSON: {}\nvmcp and Redis logs: {}", out.display(), logs.display());
    Ok(())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    // `cargo bench` passes `--bench`; nothing else here takes a harness flag.
    if let Err(e) = run(&args).await {
        eprintln!("chaos: {e}");
        std::process::exit(1);
    }
}
