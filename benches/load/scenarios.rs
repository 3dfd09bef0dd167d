//! The measured scenarios and the printed report.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::drive::{self, Mcp, Stats};
use crate::process::VmcpProcess;
use crate::redis::RedisServer;
use crate::{backend, deps, proxy, Plan};

const HOP_KEY: &str = "bench-hop-key-0123456789";

fn backends_yaml(url: &str, n: usize, extra: &[(&str, &str)]) -> String {
    let mut y = String::from("backends:\n");
    for i in 0..n {
        let name = if n == 1 { "fast".to_owned() } else { format!("fast{i}") };
        y.push_str(&format!("  - name: {name}\n    url: {url}\n"));
    }
    for (name, url) in extra {
        y.push_str(&format!("  - name: {name}\n    url: {url}\n"));
    }
    y
}

fn redis_yaml(redis: &RedisServer) -> String {
    format!("store:\n  kind: redis\n  redis: {{ url: \"{}\" }}\n", redis.url())
}

fn base(url: &str) -> String {
    url.trim_end_matches("/mcp").to_owned()
}

/// Only the idle-memory table (`--memory`): it measures RSS, not time, so it
/// can run on a busy machine.
pub async fn run_memory(plan: &Plan) {
    let mcp = Arc::new(Mcp::default());
    let (backend_url, _) = backend::start().await;
    memory(plan, &mcp, &backend_url).await;
}

/// What `--soak` drives.
pub enum SoakPath {
    /// `true`: replica `a` of the throughput table's pair (Redis, two members).
    Vmcp(bool),
    /// One replica driven by 2026-07-28 clients (one pooled session per caller).
    Stateless,
    /// The pair's non-owner path: sessions created at `a` (their owner),
    /// called at `b`, which forwards; the gateway is `b`, the forwarder.
    Forward,
    Bare,
    /// `true`: with vmcp's per-call guarantees (`--guarded`).
    Floor(bool),
}

/// `--soak SECS [--bare | --floor [--guarded] | --replicated | --stateless | --forward]`: only the owner path (or the
/// bare hop, or the minimal MCP hop) at 16 sessions, for as long as asked, with the
/// gateway's pid printed first (attach `perf record -p` or `strace -c -f -p` to it).
pub async fn soak(length: Duration, path: SoakPath, sessions: usize) {
    let fast = proxy::spawn_self(&["--backend"]);
    let (mut _vmcp, mut _hop, mut _pair) = (None, None, None);
    let mut create = None;
    let (url, pid) = match path {
        SoakPath::Bare => {
            let hop = _hop.insert(proxy::spawn(&base(&fast.url)));
            (hop.url.clone(), hop.pid())
        }
        SoakPath::Floor(guarded) => {
            let mut args = vec!["--mcp-floor-upstream", &fast.url];
            args.extend(guarded.then_some("--guarded"));
            let hop = _hop.insert(proxy::spawn_self(&args));
            (hop.url.clone(), hop.pid())
        }
        SoakPath::Vmcp(false) | SoakPath::Stateless => {
            let yaml = format!("{}log:\n  format: json\n", backends_yaml(&fast.url, 1, &[]));
            let p = _vmcp.insert(VmcpProcess::start(&yaml).await);
            (p.url.clone(), p.pid().expect("pid"))
        }
        SoakPath::Vmcp(true) => {
            let (redis, a, b) = _pair.insert(replicated_pair(&fast.url).await);
            let _ = (redis, b);
            (a.url.clone(), a.pid().expect("pid"))
        }
        SoakPath::Forward => {
            let (_, a, b) = _pair.insert(replicated_pair(&fast.url).await);
            println!("owner pid {}", a.pid().expect("pid"));
            create = Some(a.url.clone());
            (b.url.clone(), b.pid().expect("pid"))
        }
    };
    let tool = if matches!(path, SoakPath::Bare) {
        "echo"
    } else {
        "fast_echo"
    };
    println!("gateway pid {pid}, backend pid {}", fast.pid());
    let window = (Duration::from_secs(1), length);
    let era = match path {
        SoakPath::Stateless => drive::Era::Stateless,
        _ => drive::Era::Handshake,
    };
    let run = drive::load_in(
        era,
        create.as_deref().unwrap_or(&url),
        &url,
        tool,
        sessions,
        window,
        &[&[pid], &[fast.pid()], &[std::process::id()]],
    )
    .await;
    println!(
        "{:.0} calls/s, p50 {:.0} µs, p99 {:.0} µs; CPU µs per call: gateway {:.1}, backend {:.1}, load generator {:.1}",
        run.stats.rps, run.stats.p50_us, run.stats.p99_us, run.cpu_us[0], run.cpu_us[1], run.cpu_us[2]
    );
}

pub async fn run(plan: &Plan, only_throughput: bool) {
    let mcp = Arc::new(Mcp::default());
    // The measured backend is its own process, so its CPU is read apart from the load generator's.
    let fast = proxy::spawn_self(&["--backend"]);
    let backend_url = fast.url.clone();
    let hop1 = proxy::spawn(&base(&backend_url));
    let hop2 = proxy::spawn(&base(&hop1.url));
    let floor = proxy::spawn_self(&["--mcp-floor-upstream", &backend_url]);
    let guarded = proxy::spawn_self(&["--mcp-floor-upstream", &backend_url, "--guarded"]);
    println!(
        "# vmcp load benchmark ({} warm-up, {} measured per cell, median of {} interleaved rounds)\n",
        secs(plan.warmup),
        secs(plan.measure),
        plan.rounds
    );

    let (redis, a, b) = replicated_pair(&backend_url).await;
    let (policed, limited, _policy_file) = guarded_replicas(&backend_url, &redis).await;
    // A replica of its own, so that every caller's pool is owned where it enters.
    let single = VmcpProcess::start(&format!(
        "replica_id: s\n{}{}log:\n  format: json\n",
        backends_yaml(&backend_url, 1, &[]),
        redis_yaml(&redis)
    ))
    .await;
    // The same, speaking 2026-07-28 to the backend (no backend session).
    let modern = VmcpProcess::start(&format!(
        "replica_id: m\nbackends:\n  - name: fast\n    url: {backend_url}\n    era: stateless\n{}log:\n  format: json\n",
        redis_yaml(&redis)
    ))
    .await;
    let pids = Pids {
        policed: policed.pid().expect("pid"),
        redis: redis.pid().expect("pid"),
        limited: limited.pid().expect("pid"),
        single: single.pid().expect("pid"),
        modern: modern.pid().expect("pid"),
        backend: fast.pid(),
        hop1: hop1.pid(),
        hop2: hop2.pid(),
        floor: floor.pid(),
        guarded: guarded.pid(),
        a: a.pid().expect("pid"),
        b: b.pid().expect("pid"),
    };
    let urls = [
        &backend_url,
        &hop1.url,
        &hop2.url,
        &floor.url,
        &guarded.url,
        &a.url,
        &b.url,
        &policed.url,
        &limited.url,
        &single.url,
        &modern.url,
    ];
    throughput(plan, urls.map(String::as_str), &a, pids).await;
    drop((a, b, hop1, hop2, floor, guarded, fast, policed, limited, single, modern));
    if only_throughput {
        return;
    }
    // The remaining scenarios use an in-process backend that can forget its sessions.
    let (backend_url, backend_state) = backend::start().await;

    session_creation(&mcp, &backend_url).await;
    rebuild(plan, &mcp, &backend_url, &backend_state, &redis).await;
    memory(plan, &mcp, &backend_url).await;
    ring();
}

/// Redis and two replicas with placement: `a` owns what it mints; entering
/// at `b` costs one hop.
async fn replicated_pair(backend_url: &str) -> (RedisServer, VmcpProcess, VmcpProcess) {
    let redis = RedisServer::start().await;
    let (pa, pb) = (deps::free_port(), deps::free_port());
    let members = format!(
        "membership:\n  members: {{ a: \"127.0.0.1:{pa}\", b: \"127.0.0.1:{pb}\" }}\naffinity:\n  hop_key: {HOP_KEY}\n"
    );
    let common = format!(
        "{}{}{members}log:\n  format: json\n",
        backends_yaml(backend_url, 1, &[]),
        redis_yaml(&redis)
    );
    let a = VmcpProcess::start_on(pa, &format!("replica_id: a\n{common}")).await;
    let b = VmcpProcess::start_on(pb, &format!("replica_id: b\n{common}")).await;
    (redis, a, b)
}

/// Two single replicas on the same backend and Redis: one judging every call
/// by five Cedar policies (that permit it), one also counting every call
/// against a rate limit on Redis (that never runs out): what a guarded call
/// costs at the owner.
async fn guarded_replicas(backend_url: &str, redis: &RedisServer) -> (VmcpProcess, VmcpProcess, TempFile) {
    let policy = TempFile(std::env::temp_dir().join(format!("vmcp-bench-{}.cedar", std::process::id())));
    std::fs::write(&policy.0, POLICIES).expect("write the bench's policies");
    let common = format!(
        "{}{}policy:\n  file: {}\nlog:\n  format: json\n",
        backends_yaml(backend_url, 1, &[]),
        redis_yaml(redis),
        policy.0.display()
    );
    let limit = "limits:\n  rules:\n    - { name: bench, per: principal, rate: 1000000000, per_interval: 1s }\n";
    let policed = VmcpProcess::start(&format!("replica_id: p\n{common}")).await;
    let limited = VmcpProcess::start(&format!("replica_id: l\n{common}{limit}")).await;
    (policed, limited, policy)
}

/// Five policies as a small deployment writes them; the bench's calls are
/// permitted. None reads a call's arguments, so decisions are remembered
/// (`cargo bench --bench policy` measures one that is not).
const POLICIES: &str = r#"
permit(principal, action == Vmcp::Action::"list", resource);
permit(principal, action == Vmcp::Action::"call_tool", resource) unless { resource.annotations.destructiveHint && principal.authenticated };
permit(principal in Vmcp::Group::"admins", action, resource);
forbid(principal == Vmcp::Caller::"mallory", action, resource);
forbid(principal, action, resource in Vmcp::Backend::"github") when { principal.scopes.contains("read-only") };
"#;

/// A file removed when dropped.
struct TempFile(std::path::PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn secs(d: Duration) -> String {
    format!("{:.1} s", d.as_secs_f64())
}

/// The processes whose CPU a cell costs.
struct Pids {
    backend: u32,
    hop1: u32,
    hop2: u32,
    floor: u32,
    guarded: u32,
    a: u32,
    b: u32,
    policed: u32,
    limited: u32,
    redis: u32,
    single: u32,
    modern: u32,
}

/// The median of one figure over a cell's rounds.
fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// One path of the table: its rounds, and the row it prints.
#[derive(Default)]
struct Cell {
    stats: Vec<Stats>,
    /// Per round: CPU µs per call of [the path's gateway processes, the backend, the load generator].
    cpu: Vec<Vec<f64>>,
}

impl Cell {
    fn push(&mut self, run: drive::Run) {
        self.stats.push(run.stats);
        self.cpu.push(run.cpu_us);
    }

    fn cpu(&self, i: usize) -> f64 {
        median(self.cpu.iter().filter_map(|c| c.get(i).copied()).collect())
    }

    fn row(&self, name: &str, reference: Option<&Cell>) -> String {
        let s = Stats::median(&self.stats);
        let r = reference.map(|r| (Stats::median(&r.stats), r.cpu(0)));
        let ratio = r.map_or(String::from("—"), |(r, _)| format!("{:.2}×", s.rps / r.rps));
        let extra = r.map_or(String::from("—"), |(r, _)| format!("{:+.0} µs", s.p50_us - r.p50_us));
        let gateway = if self.cpu(0).is_nan() || self.cpu(0) == 0.0 {
            String::from("—")
        } else {
            format!("{:.1}", self.cpu(0))
        };
        let cpu_ratio = match r {
            Some((_, rc)) if rc > 0.0 && self.cpu(0) > 0.0 => format!("{:.2}×", self.cpu(0) / rc),
            _ => String::from("—"),
        };
        format!(
            "| {name} | {:.0} | {:.0} | {:.0} | {ratio} | {extra} | {gateway} | {cpu_ratio} | {:.1} | {:.1} |",
            s.rps,
            s.p50_us,
            s.p99_us,
            self.cpu(1),
            self.cpu(2)
        )
    }
}

async fn throughput(plan: &Plan, urls: [&str; 11], a: &VmcpProcess, pids: Pids) {
    let [backend, hop1, hop2, floor, guarded, a_url, b_url, policed_url, limited_url, single_url, modern_url] = urls;
    let me = std::process::id();
    println!("## tools/call throughput, latency and CPU per call\n");
    println!(
        "| path | calls/s | p50 µs | p99 µs | calls/s vs reference | p50 over reference | CPU µs/call: gateway | CPU vs reference | CPU µs/call: backend | CPU µs/call: load generator |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    let window = (plan.warmup, plan.measure);
    for sessions in [1, 16, 64] {
        // Rounds interleave the paths, so a noisy minute on shared cores hits
        // them all alike; each figure is the median of its rounds.
        let mut cells: [Cell; 12] = Default::default();
        let mut store_per_call = Vec::new();
        for _ in 0..plan.rounds {
            let run = |init: &str, call: &str, tool: &'static str, gateway: &[u32]| {
                let (init, call, gateway) = (init.to_owned(), call.to_owned(), gateway.to_vec());
                async move {
                    drive::load(
                        &init,
                        &call,
                        tool,
                        sessions,
                        window,
                        &[&gateway, &[pids.backend], &[me]],
                    )
                    .await
                }
            };
            cells[0].push(run(backend, backend, "echo", &[]).await);
            cells[1].push(run(hop1, hop1, "echo", &[pids.hop1]).await);
            cells[2].push(run(hop2, hop2, "echo", &[pids.hop1, pids.hop2]).await);
            cells[3].push(run(floor, floor, "fast_echo", &[pids.floor]).await);
            cells[6].push(run(guarded, guarded, "fast_echo", &[pids.guarded]).await);
            let store_before = store_ops(a).await;
            let owner = run(a_url, a_url, "fast_echo", &[pids.a]).await;
            let calls = owner.stats.rps * (plan.warmup + plan.measure).as_secs_f64();
            store_per_call.push((store_ops(a).await - store_before) / calls);
            cells[4].push(owner);
            cells[5].push(run(a_url, b_url, "fast_echo", &[pids.a, pids.b]).await);
            cells[7].push(run(policed_url, policed_url, "fast_echo", &[pids.policed]).await);
            // The limit's Redis works for every call: its CPU is the gateway's too.
            cells[8].push(run(limited_url, limited_url, "fast_echo", &[pids.limited, pids.redis]).await);
            cells[9].push(run(single_url, single_url, "fast_echo", &[pids.single]).await);
            let stateless = drive::load_in(
                drive::Era::Stateless,
                single_url,
                single_url,
                "fast_echo",
                sessions,
                window,
                &[&[pids.single], &[pids.backend], &[me]],
            )
            .await;
            cells[10].push(stateless);
            let both_modern = drive::load_in(
                drive::Era::Stateless,
                modern_url,
                modern_url,
                "fast_echo",
                sessions,
                window,
                &[&[pids.modern], &[pids.backend], &[me]],
            )
            .await;
            cells[11].push(both_modern);
        }
        let [direct, bare1, bare2, floor, owner, non_owner, guarded, policed, limited, single, stateless, both_modern] =
            &cells;
        let store_per_call = store_per_call.iter().copied().fold(0.0, f64::max);
        println!("| **{sessions} session(s)** | | | | | | | | | |");
        println!("{}", direct.row("direct client → backend", None));
        println!("{}", bare1.row("bare hyper hop (reference for owner)", Some(direct)));
        println!(
            "{}",
            bare2.row("bare two-hop chain (reference for non-owner)", Some(direct))
        );
        println!(
            "{}",
            floor.row("minimal MCP hop (the floor, see floor.rs)", Some(bare1))
        );
        println!(
            "{}",
            guarded.row("the floor + vmcp's per-call guarantees (`--guarded`)", Some(bare1))
        );
        println!("{}", owner.row("**vmcp, entering at the owner**", Some(bare1)));
        println!(
            "{}",
            non_owner.row("**vmcp, entering at a non-owner (1 hop)**", Some(bare2))
        );
        println!(
            "{}",
            policed.row("vmcp at the owner, every call judged by 5 Cedar policies", Some(bare1))
        );
        println!(
            "{}",
            limited.row(
                "vmcp at the owner, policies + a rate limit on Redis (CPU: vmcp + Redis)",
                Some(bare1)
            )
        );
        println!("{}", single.row("vmcp, one replica, handshake-era client", Some(bare1)));
        println!(
            "{}",
            stateless.row(
                "vmcp, one replica, 2026-07-28 client (one pooled session per caller)",
                Some(bare1)
            )
        );
        println!(
            "{}",
            both_modern.row(
                "vmcp, one replica, 2026-07-28 client and backend (`era: stateless`)",
                Some(bare1)
            )
        );
        let (o, p, l) = (owner.cpu(0), policed.cpu(0), limited.cpu(0));
        println!("| what a guard costs at the owner: policies {:+.1} µs CPU/call, policies + limit {:+.1} µs CPU/call (with the limit: vmcp's and Redis's) | | | | | | | | | |", p - o, l - o);
        println!("| store operations per call at the owner (worst round): {store_per_call:.4} | | | | | | | | | |");
        for (name, base) in [("the floor", floor), ("the guarded floor", guarded)] {
            let (o, f) = (Stats::median(&owner.stats), Stats::median(&base.stats));
            println!(
                "| vmcp at the owner vs {name}: calls/s {:.2}×, p50 {:+.0} µs, CPU {:.2}× | | | | | | | | | |",
                o.rps / f.rps,
                o.p50_us - f.p50_us,
                owner.cpu(0) / base.cpu(0)
            );
        }
    }
    println!();
}

async fn store_ops(p: &VmcpProcess) -> f64 {
    let mut total = 0.0;
    for op in ["get", "put", "update", "touch", "delete"] {
        total += p
            .metric(&format!("vmcp_store_operations_total{{op=\"{op}\",outcome=\"ok\"}}"))
            .await;
    }
    total
}

async fn timed_inits(mcp: &Mcp, url: &str, n: usize) -> (f64, f64) {
    let mut samples = Vec::new();
    for _ in 0..n {
        let started = Instant::now();
        mcp.initialize(url).await;
        samples.push(started.elapsed().as_secs_f64() * 1e3);
    }
    (
        drive::percentile(&mut samples, 0.5),
        drive::percentile(&mut samples, 0.99),
    )
}

async fn session_creation(mcp: &Mcp, backend: &str) {
    println!("## Session creation (initialize, all backend sessions opened)\n");
    println!("| backends | p50 ms | p99 ms |");
    println!("|---|---|---|");
    for n in [1, 10, 50] {
        let p = VmcpProcess::start(&format!(
            "{}session:\n  max_backend_init_concurrency: 10\n",
            backends_yaml(backend, n, &[])
        ))
        .await;
        let (p50, p99) = timed_inits(mcp, &p.url, 40).await;
        println!("| {n} | {p50:.2} | {p99:.2} |");
    }
    let hung = hanging_url().await;
    let p = VmcpProcess::start(&format!(
        "{}session:\n  init_timeout: 1s\n",
        backends_yaml(backend, 1, &[("hung", &hung)])
    ))
    .await;
    // The first session waits out the timeout; that opens the backend's
    // circuit, so the next ones leave it out at once.
    let (first, _) = timed_inits(mcp, &p.url, 1).await;
    let (p50, p99) = timed_inits(mcp, &p.url, 5).await;
    println!(
        "| 1 + 1 hanging (init_timeout 1 s): first session | {first:.1} ({:+.1}% over the timeout) | — |",
        (first / 1000.0 - 1.0) * 100.0
    );
    println!("| 1 + 1 hanging: next sessions (its circuit open) | {p50:.2} | {p99:.2} |\n");
}

/// A backend that accepts connections and never answers.
async fn hanging_url() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}/mcp", listener.local_addr().expect("addr"));
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s);
        }
    });
    url
}

async fn rebuild(plan: &Plan, mcp: &Mcp, backend: &str, state: &backend::State, redis: &RedisServer) {
    println!("## Foreign-session rebuild (first request on a replica that never saw the session)\n");
    println!("| path | p50 ms | p99 ms |");
    println!("|---|---|---|");
    let config = format!("{}{}", backends_yaml(backend, 1, &[]), redis_yaml(redis));
    let (r1, r2) = (VmcpProcess::start(&config).await, VmcpProcess::start(&config).await);
    for reinit in [false, true] {
        let mut sessions = Vec::new();
        for _ in 0..plan.rebuild_sessions {
            let sid = mcp.initialize(&r1.url).await;
            mcp.call(&r1.url, &sid, "fast_echo", 1).await;
            sessions.push(sid);
        }
        if reinit {
            state.forget_all(); // the backend lost every session: resume gets 404
        }
        let (mut first, mut warm) = (Vec::new(), Vec::new());
        for sid in &sessions {
            let started = Instant::now();
            mcp.call(&r2.url, sid, "fast_echo", 2).await;
            first.push(started.elapsed().as_secs_f64() * 1e3);
            let started = Instant::now();
            mcp.call(&r2.url, sid, "fast_echo", 3).await;
            warm.push(started.elapsed().as_secs_f64() * 1e3);
        }
        let name = if reinit {
            "re-initialize (backend answered 404)"
        } else {
            "resume stored backend session"
        };
        let (p50, p99) = (drive::percentile(&mut first, 0.5), drive::percentile(&mut first, 0.99));
        println!("| {name}: first call incl. rebuild | {p50:.2} | {p99:.2} |");
        println!(
            "| {name}: next call (warm) | {:.2} | {:.2} |",
            drive::percentile(&mut warm, 0.5),
            drive::percentile(&mut warm, 0.99)
        );
    }
    println!();
}

fn rss_kb(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(f64::NAN)
}

async fn memory(plan: &Plan, mcp: &Arc<Mcp>, backend: &str) {
    let n = plan.memory_sessions;
    let p = VmcpProcess::start(&format!(
        "{}session:\n  max_sessions: {}\n",
        backends_yaml(backend, 10, &[]),
        n + 10
    ))
    .await;
    let pid = p.pid().expect("pid");
    mcp.initialize(&p.url).await;
    let before = rss_kb(pid);
    let per_task = n / 32;
    let tasks: Vec<_> = (0..32)
        .map(|_| {
            let (mcp, url) = (Arc::clone(mcp), p.url.clone());
            tokio::spawn(async move {
                for _ in 0..per_task {
                    mcp.initialize(&url).await;
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("init task");
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after = rss_kb(pid);
    let per_session = (after - before) / (per_task * 32) as f64;
    let held = p.metric("vmcp_sessions_active").await;
    assert!(held as usize > per_task * 32, "only {held} sessions held");
    println!("## Memory (idle sessions, 10 HTTP backends each)\n");
    println!("| sessions (held, per vmcp_sessions_active) | RSS before | RSS after | KB per session | KB per session per backend |");
    println!("|---|---|---|---|---|");
    println!(
        "| {} ({held}) | {:.0} MB | {:.0} MB | {per_session:.1} | {:.2} |\n",
        per_task * 32,
        before / 1024.0,
        after / 1024.0,
        per_session / 10.0
    );
}

fn ring() {
    use vmcp::affinity::ring::{Member, Ring};
    println!("## Placement ring (rendezvous hashing)\n");
    println!("| members | ns per lookup | keys moved when one member is added | ideal |");
    println!("|---|---|---|---|");
    let keys: Vec<String> = (0..100_000)
        .map(|i| format!("{:040x}", i as u128 * 0x9e37_79b9_7f4a_7c15))
        .collect();
    for n in [3usize, 10, 100] {
        let ring = |m: usize| Ring::new((0..m).map(|i| Member::new(&format!("vmcp-{i}"), "h:1")).collect());
        let (small, big) = (ring(n), ring(n + 1));
        let started = Instant::now();
        let mut owners: BTreeMap<usize, &str> = BTreeMap::new();
        for (i, k) in keys.iter().enumerate() {
            owners.insert(i, &small.owner(k).expect("owner").id);
        }
        let ns = started.elapsed().as_nanos() as f64 / keys.len() as f64;
        let moved = keys
            .iter()
            .enumerate()
            .filter(|(i, k)| *big.owner(k).expect("owner").id != *owners[i])
            .count();
        println!(
            "| {n} → {} | {ns:.0} | {:.1}% | {:.1}% |",
            n + 1,
            moved as f64 / 1000.0,
            100.0 / (n as f64 + 1.0)
        );
    }
}
