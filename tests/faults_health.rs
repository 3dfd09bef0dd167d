//! A backend that is down or hung costs the first session one timeout; then
//! its circuit opens and new sessions skip it at once (named as unavailable),
//! a probe closes the circuit when the backend answers again, and sessions
//! that lack it gain it on their next request, announced with `list_changed`.

mod support;

use std::time::{Duration, Instant};

use serde_json::json;
use support::proxy::FreezableProxy;
use support::{config_yaml, eventually, Replica, TestBackend};

#[tokio::test]
async fn an_open_circuit_skips_a_hung_backend_until_a_probe_finds_it_back() {
    let (flaky, ok) = (TestBackend::start("flaky").await, TestBackend::start("ok").await);
    let proxy = FreezableProxy::start(&flaky.addr).await;
    let yaml = config_yaml(
        &[("flaky", &proxy.url), ("ok", &ok.url)],
        "session:\n  init_timeout: 600ms\n  circuit:\n    open_for: 300ms\n",
    );
    let replica = Replica::start(&yaml).await;
    proxy.freeze();

    // The first session pays the timeout once...
    let started = Instant::now();
    let mut first = replica.client();
    first.initialize().await;
    assert!(
        started.elapsed() >= Duration::from_millis(550),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        replica.metric("vmcp_backend_circuit_state{backend=\"flaky\"}"),
        1.0,
        "open"
    );

    // ...the next ones skip the backend at once and say so.
    let started = Instant::now();
    let mut second = replica.client();
    let init = second.initialize().await;
    assert!(
        started.elapsed() < Duration::from_millis(400),
        "skipped at once: {:?}",
        started.elapsed()
    );
    let instructions = init.result()["instructions"].as_str().unwrap().to_owned();
    assert!(
        instructions.contains("flaky") && instructions.contains("circuit open"),
        "{instructions}"
    );
    assert!(
        !instructions.contains("http://"),
        "no backend URL shown to clients: {instructions}"
    );
    let tools = second.list_names("tools/list", "tools").await;
    assert!(tools.iter().all(|t| t.starts_with("ok_")), "{tools:?}");
    let mut stream = second.get_events(None).await;

    // The backend comes back: a probe closes the circuit...
    proxy.thaw();
    eventually("the probe closes the circuit", || async {
        replica.metric("vmcp_backend_circuit_state{backend=\"flaky\"}") == 0.0
    })
    .await;
    // ...and the session that lacked it gains it on its next request.
    assert_eq!(
        second.call_tool("ok_echo", json!({"message": "x"})).await.text(),
        "ok:x"
    );
    let mut announced = false;
    while let Some(event) = stream.next_message().await {
        if event.data["method"] == "notifications/tools/list_changed" {
            announced = true;
            break;
        }
    }
    assert!(announced, "tools/list_changed announced");
    let tools = second.list_names("tools/list", "tools").await;
    assert!(tools.contains(&"flaky_echo".to_owned()), "{tools:?}");
    assert_eq!(
        second.call_tool("flaky_echo", json!({"message": "back"})).await.text(),
        "flaky:back"
    );
}
