//! vmcp's end-to-end benchmark: `cargo bench --bench load [-- --quick]`.
//!
//! Starts its own fast MCP backend, a bare hyper forwarding proxy (one hop and
//! a two-hop chain, the reference for what a hop costs on this machine),
//! redis-server and release-built vmcp processes, then prints one table of
//! ratios measured in the same invocation. Goals live here and in the README,
//! never in tests.

mod backend;
#[path = "../../tests/support/cpu.rs"]
mod cpu;
#[allow(dead_code)]
#[path = "../../tests/support/deps.rs"]
mod deps;
mod drive;
mod floor;
#[allow(dead_code)]
#[path = "../../tests/support/process.rs"]
mod process;
mod proxy;
#[allow(dead_code)]
#[path = "../../tests/support/redis.rs"]
mod redis;
mod scenarios;

use std::time::Duration;

/// The HTTP client of the test-support helpers (readiness, metrics), not of
/// the measured load (that is `drive`'s raw hyper).
pub fn http() -> reqwest::Client {
    static CLIENT: std::sync::OnceLock<reqwest::Client> = std::sync::OnceLock::new();
    CLIENT
        .get_or_init(|| {
            vmcp::app::install_crypto_provider();
            reqwest::Client::builder().build().expect("client")
        })
        .clone()
}

/// How long and how big: `--quick` for a smoke run.
pub struct Plan {
    pub warmup: Duration,
    pub measure: Duration,
    pub memory_sessions: usize,
    pub rebuild_sessions: usize,
    /// Interleaved rounds of the throughput table (median reported).
    pub rounds: usize,
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--proxy-upstream") {
        let upstream = args.get(i + 1).cloned().expect("--proxy-upstream URL");
        return proxy::serve(upstream).await;
    }
    if let Some(i) = args.iter().position(|a| a == "--mcp-floor-upstream") {
        let upstream = args.get(i + 1).cloned().expect("--mcp-floor-upstream URL");
        return floor::serve(upstream, args.iter().any(|a| a == "--guarded")).await;
    }
    if args.iter().any(|a| a == "--backend") {
        return backend::serve().await;
    }
    // vmcp logs at its own default level, as installed: a quieter level
    // than a user gets would flatter what a call costs.
    process::log_as_shipped();
    let quick = args.iter().any(|a| a == "--quick");
    let plan = if quick {
        Plan {
            warmup: Duration::from_millis(200),
            measure: Duration::from_millis(800),
            memory_sessions: 1000,
            rebuild_sessions: 50,
            rounds: 1,
        }
    } else {
        Plan {
            warmup: Duration::from_millis(500),
            measure: Duration::from_secs(3),
            memory_sessions: 10_000,
            rebuild_sessions: 200,
            rounds: 3,
        }
    };
    let sessions: Option<usize> = args
        .iter()
        .position(|a| a == "--sessions")
        .and_then(|i| args.get(i + 1))
        .and_then(|n| n.parse().ok());
    if let Some(i) = args.iter().position(|a| a == "--soak") {
        let secs: u64 = args.get(i + 1).and_then(|s| s.parse().ok()).unwrap_or(20);
        let path = if args.iter().any(|a| a == "--bare") {
            scenarios::SoakPath::Bare
        } else if args.iter().any(|a| a == "--forward") {
            scenarios::SoakPath::Forward
        } else if args.iter().any(|a| a == "--stateless") {
            scenarios::SoakPath::Stateless
        } else if args.iter().any(|a| a == "--floor") {
            scenarios::SoakPath::Floor(args.iter().any(|a| a == "--guarded"))
        } else {
            scenarios::SoakPath::Vmcp(args.iter().any(|a| a == "--replicated"))
        };
        // `--soak 6 --sessions 1`: the same path with one caller (16 unless told).
        return scenarios::soak(Duration::from_secs(secs), path, sessions.unwrap_or(16)).await;
    }
    let mut plan = plan;
    if let Some(n) = sessions {
        plan.memory_sessions = n; // `--memory --sessions 100000`
    }
    if args.iter().any(|a| a == "--memory") {
        return scenarios::run_memory(&plan).await;
    }
    let only_throughput = args.iter().any(|a| a == "--throughput");
    scenarios::run(&plan, only_throughput).await;
}
