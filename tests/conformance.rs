//! The official MCP conformance suite (`@modelcontextprotocol/conformance`,
//! server scenarios, `--suite all`) against the project's fixture backend
//! (`tests/conformance/server.mjs`): first directly, then through one vmcp
//! replica, then through two replicas on Redis with the suite entering at the
//! non-owner (`tests/conformance/split.mjs` sends `initialize` to one replica
//! and everything else to the other). Every scenario that passes directly must
//! pass through vmcp. Also: a backend that closes its stream mid-call
//! (2025-11-25 polling) is resumed by vmcp.

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use serde_json::Value;
use support::process::VmcpProcess;
use support::redis::RedisServer;
use support::{config_yaml, deps};
use tokio::io::AsyncBufReadExt;
use tokio::process::{Child, Command};

/// Starts `node SCRIPT ARGS` from the conformance folder and waits for its
/// "listening" line.
async fn node(dir: &Path, script: &str, args: &[String]) -> Child {
    let mut child = Command::new(dir.join("node_modules/.bin/node"))
        .current_dir(dir)
        .arg(script)
        .args(args)
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("node runs");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let line = lines.next_line().await.ok().flatten().unwrap_or_default();
    assert!(line.starts_with("listening"), "{script} did not start: {line}");
    child
}

/// Failed checks per scenario for one run of the whole suite against `url`.
async fn suite(dir: &Path, url: &str, label: &str) -> BTreeMap<String, usize> {
    let out = std::env::temp_dir().join(format!("vmcp-conformance-{label}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let status = Command::new(dir.join("node_modules/.bin/node"))
        .current_dir(dir)
        .arg("node_modules/@modelcontextprotocol/conformance/dist/index.js")
        .args(["server", "--suite", "all", "--url", url, "-o"])
        .arg(&out)
        .stdout(Stdio::null())
        .status()
        .await
        .expect("suite runs");
    let failures = results(&out);
    assert!(!failures.is_empty(), "{label}: no results (suite exited {status})");
    failures
}

/// Reads `<out>/server-<scenario>-<time>/checks.json` into failures per scenario.
fn results(out: &PathBuf) -> BTreeMap<String, usize> {
    let mut failures = BTreeMap::new();
    for entry in std::fs::read_dir(out).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        // `server-<scenario>-<YYYY-MM-DDTHH-MM-SS-mmmZ>`: the timestamp is 24 characters.
        let Some(scenario) = name
            .strip_prefix("server-")
            .and_then(|n| n.get(..n.len().saturating_sub(25)))
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
        else {
            continue;
        };
        let checks: Value = std::fs::read_to_string(entry.path().join("checks.json"))
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or(Value::Null);
        let failed = checks
            .as_array()
            .map_or(1, |c| c.iter().filter(|c| c["status"] == "FAILURE").count());
        failures.insert(scenario, failed);
    }
    failures
}

/// Scenarios that pass directly but fail through vmcp.
fn regressions(direct: &BTreeMap<String, usize>, via: &BTreeMap<String, usize>) -> Vec<String> {
    direct
        .iter()
        .filter(|(_, failed)| **failed == 0)
        .filter(|(s, _)| via.get(*s).is_none_or(|f| *f > 0))
        .map(|(s, _)| s.clone())
        .collect()
}

const NAMES_UNCHANGED: &str = "aggregation:\n  conflict: priority\n  priority: [fixture]\n";

#[tokio::test]
async fn the_conformance_suite_passes_through_vmcp_as_it_does_directly() {
    let dir = deps::conformance_dir();
    let fixture_port = deps::free_port();
    let _fixture = node(&dir, "server.mjs", &[fixture_port.to_string()]).await;
    let fixture = format!("http://127.0.0.1:{fixture_port}/mcp");
    let direct = suite(&dir, &fixture, "direct").await;
    assert!(direct.len() >= 30, "the whole suite ran: {direct:?}");
    assert!(
        direct.values().all(|f| *f == 0),
        "the fixture must pass the suite on its own: {direct:?}"
    );

    let backends = [("fixture", fixture.as_str())];
    let single = VmcpProcess::start(&config_yaml(&backends, NAMES_UNCHANGED)).await;
    let via_one = suite(&dir, &single.url, "one-replica").await;
    assert_eq!(
        regressions(&direct, &via_one),
        Vec::<String>::new(),
        "one replica: {via_one:?}"
    );
    drop(single);

    let redis = RedisServer::start().await;
    let (pa, pb, front) = (deps::free_port(), deps::free_port(), deps::free_port());
    let replica = |me: &str| {
        let extra = format!(
            "{NAMES_UNCHANGED}replica_id: {me}\nstore:\n  kind: redis\n  redis: {{ url: \"{}\" }}\nmembership:\n  members: {{ a: \"127.0.0.1:{pa}\", b: \"127.0.0.1:{pb}\" }}\naffinity:\n  hop_key: conformance-hop-key-0123\n",
            redis.url()
        );
        config_yaml(&backends, &extra)
    };
    let a = VmcpProcess::start_on(pa, &replica("a")).await;
    let b = VmcpProcess::start_on(pb, &replica("b")).await;
    let _split = node(&dir, "split.mjs", &[front, pa, pb].map(|p| p.to_string())).await;
    let via_two = suite(&dir, &format!("http://127.0.0.1:{front}/mcp"), "non-owner").await;
    assert_eq!(
        regressions(&direct, &via_two),
        Vec::<String>::new(),
        "entering at the non-owner: {via_two:?}"
    );
    println!(
        "scenarios: {}; failures through two replicas: {via_two:?}",
        direct.len()
    );
    let forwarded = b.metric("vmcp_requests_forwarded_total{outcome=\"ok\"}").await;
    assert!(forwarded > 50.0, "the suite's requests took the hop (only {forwarded})");
    drop((a, b));
}
