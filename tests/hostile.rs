//! Hostile input at the front door: generated requests of every malformed kind
//! against an in-process replica with one real backend. Each must be answered
//! (no panic, no hang) with an allowed HTTP status and, when there is a body,
//! a well-formed JSON-RPC 2.0 response or error; nothing may be logged at
//! warn or error per request; the replica must serve normally afterwards.
//!
//! `VMCP_FUZZ_CASES` sets the number of cases (default 10^5, the CI run);
//! `VMCP_FUZZ_SEED` replays a run (the seed is printed on failure). 10^6:
//! `VMCP_FUZZ_CASES=1000000 cargo nextest run --release --test hostile`.
//! Cases are generated with proptest strategies on one thread and sent by
//! many workers over keep-alive connections (reqwest); those whose header
//! bytes no HTTP library would send go over raw TCP sockets.

mod support;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use proptest::strategy::{Strategy, ValueTree};
use proptest::test_runner::{Config as RunnerConfig, RngAlgorithm, TestRng, TestRunner};
use serde_json::json;
use support::{config_yaml, Replica, TestBackend};

#[path = "hostile/cases.rs"]
mod cases;
#[path = "hostile/wire.rs"]
mod wire;

use cases::{case, regressions, Case, Via, MAX_BATCH};
use wire::{check, send};

const WORKERS: usize = 16;
const GENERATORS: usize = 2;
const PER_REQUEST: Duration = Duration::from_secs(20);

/// Counts warn and error events (a client must not be able to flood the logs).
struct LoudEvents(Arc<Mutex<BTreeMap<String, usize>>>);

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for LoudEvents {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        if *event.metadata().level() <= tracing::Level::WARN {
            if let Ok(mut seen) = self.0.lock() {
                *seen
                    .entry(format!("{}: {}", event.metadata().target(), event.metadata().name()))
                    .or_default() += 1;
            }
        }
    }
}

fn cases_wanted() -> usize {
    std::env::var("VMCP_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000)
}

fn seed() -> u64 {
    std::env::var("VMCP_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        })
}

#[test]
fn hostile_input_gets_well_formed_answers() {
    let loud = Arc::new(Mutex::new(BTreeMap::new()));
    {
        use tracing_subscriber::layer::SubscriberExt;
        let subscriber = tracing_subscriber::registry().with(LoudEvents(Arc::clone(&loud)));
        tracing::subscriber::set_global_default(subscriber).expect("first subscriber");
    }
    let panics = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&panics);
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        counted.fetch_add(1, Ordering::SeqCst);
        previous(info);
    }));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(run(cases_wanted(), seed(), loud, panics));
}

async fn run(wanted: usize, seed: u64, loud: Arc<Mutex<BTreeMap<String, usize>>>, panics: Arc<AtomicUsize>) {
    let backend = TestBackend::start("b").await;
    let extra = format!("http:\n  max_batch: {MAX_BATCH}\n  max_body_bytes: 1048576\n");
    let replica = Replica::start(&config_yaml(&[("b", &backend.url)], &extra)).await;
    let mut client = replica.client();
    client.initialize().await;
    let live = client.session.clone().expect("session");
    let addr = replica.base.trim_start_matches("http://").to_owned();

    // Generation on threads of its own (proptest's strategies are not
    // `Send`), two of them: in a debug build generating costs about as much
    // as answering. Generator `g` makes cases g, g + 2, g + 4, ...
    let (tx, rx) = tokio::sync::mpsc::channel::<(usize, Case)>(WORKERS * 8);
    for (i, case) in regressions().into_iter().enumerate() {
        tx.send((wanted + i, case)).await.expect("channel open");
    }
    let generators: Vec<_> = (0..GENERATORS)
        .map(|g| {
            let tx = tx.clone();
            std::thread::spawn(move || {
                let mut seed_bytes = [0u8; 16];
                seed_bytes[..8].copy_from_slice(&seed.to_le_bytes());
                seed_bytes[8..].copy_from_slice(&(g as u64).to_le_bytes());
                let rng = TestRng::from_seed(RngAlgorithm::XorShift, &seed_bytes);
                let mut runner = TestRunner::new_with_rng(RunnerConfig::default(), rng);
                let strategy = case();
                for i in (g..wanted).step_by(GENERATORS) {
                    let Ok(tree) = strategy.new_tree(&mut runner) else {
                        break;
                    };
                    if tx.blocking_send((i, tree.current())).is_err() {
                        break;
                    }
                }
            })
        })
        .collect();
    drop(tx);
    let rx = Arc::new(tokio::sync::Mutex::new(rx));
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let via_raw = Arc::new(AtomicUsize::new(0)); // cases over real sockets
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..WORKERS {
        let (rx, failures, via_raw) = (Arc::clone(&rx), Arc::clone(&failures), Arc::clone(&via_raw));
        let (url, addr, live, app) = (
            replica.url.clone(),
            addr.clone(),
            live.clone(),
            Arc::clone(&replica.app),
        );
        workers.push(tokio::spawn(async move {
            loop {
                let next = rx.lock().await.recv().await;
                let Some((i, case)) = next else { break };
                if case.via != Via::InProcess {
                    via_raw.fetch_add(1, Ordering::Relaxed);
                }
                let outcome = tokio::time::timeout(PER_REQUEST, send(&app, &url, &addr, &live, &case)).await;
                let verdict = match outcome {
                    Err(_) => Err(format!("no answer within {PER_REQUEST:?}")),
                    Ok(Err(e)) => Err(e),
                    Ok(Ok(answer)) => check(&case, answer.as_ref()),
                };
                if let Err(why) = verdict {
                    let mut shown = format!("{case:?}");
                    shown.truncate(600);
                    if let Ok(mut f) = failures.lock() {
                        f.push(format!("case {i}: {why}\n    {shown}"));
                    }
                }
            }
        }));
    }
    for w in workers {
        w.await.expect("worker");
    }
    for g in generators {
        let _ = g.join();
    }
    let elapsed = started.elapsed();

    // The replica still serves: the live session, a backend call, a new session.
    let ping = client.request("ping", json!({})).await;
    assert_eq!(ping.result(), &json!({}));
    assert_eq!(
        client.call_tool("b_echo", json!({"message": "after"})).await.text(),
        "b:after"
    );
    replica.client().initialize().await;

    let failures = failures.lock().map(|f| f.clone()).unwrap_or_default();
    eprintln!(
        "hostile: {wanted} cases ({} over real sockets) in {elapsed:.1?}, seed {seed}, {} failures",
        via_raw.load(Ordering::Relaxed),
        failures.len()
    );
    assert!(
        failures.is_empty(),
        "{} malformed answers (replay with VMCP_FUZZ_SEED={seed}):\n{}",
        failures.len(),
        failures.iter().take(10).cloned().collect::<Vec<_>>().join("\n")
    );
    assert_eq!(
        panics.load(Ordering::SeqCst),
        0,
        "a task panicked (see above); seed {seed}"
    );
    let loud = loud.lock().map(|l| l.clone()).unwrap_or_default();
    assert!(loud.is_empty(), "warn/error logged for hostile input: {loud:?}");
}
