//! Session-layer units with tokio's paused clock: the reaper closes idle
//! sessions at their deadline, reschedules used ones, and spares busy ones.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;

use super::{IdentityHasher, Limits, SessionFactory, SessionManager};
use crate::config::{AggregationConfig, SessionConfig};
use crate::store::MemoryStore;
use crate::telemetry::Metrics;

/// A manager with no backends (no I/O), so the clock can be paused.
fn manager(idle: Duration) -> (Arc<SessionManager>, Metrics) {
    let metrics = Metrics::standalone();
    let store = Arc::new(MemoryStore::default());
    let factory = SessionFactory::new(
        Vec::new(),
        SessionConfig {
            idle_timeout: idle,
            ..SessionConfig::default()
        },
        AggregationConfig::default(),
        metrics.clone(),
        store,
    );
    let limits = Limits {
        idle_timeout: idle,
        max_sessions: 10,
        touch_interval: idle / 4,
        shared_store: false,
        release_grace: idle,
        close_timeout: Duration::from_secs(2),
        call_timeout: Duration::from_secs(300),
    };
    let membership = Arc::new(crate::affinity::Membership::fixed("solo", &Default::default()));
    let hasher = IdentityHasher::new(Some("k"));
    let manager = Arc::new(SessionManager::new(
        Arc::new(factory),
        hasher,
        metrics.clone(),
        limits,
        membership,
    ));
    (manager, metrics)
}

fn idle_closed(metrics: &Metrics) -> u64 {
    metrics.sessions_closed.with_label_values(&["idle"]).get()
}

#[tokio::test(start_paused = true)]
async fn reaper_closes_at_the_deadline_and_spares_used_sessions() {
    let (manager, metrics) = manager(Duration::from_secs(60));
    let stop = tokio_util::sync::CancellationToken::new();
    tokio::spawn(Arc::clone(&manager).run_background(stop.clone()));
    let idle = manager
        .create(json!({}), "2025-06-18".into(), None, None)
        .await
        .unwrap();
    let used = manager
        .create(json!({}), "2025-06-18".into(), None, None)
        .await
        .unwrap();

    tokio::time::sleep(Duration::from_secs(45)).await;
    manager.resolve(used.id(), None, None).await.unwrap();
    tokio::time::sleep(Duration::from_secs(14)).await;
    assert_eq!(idle_closed(&metrics), 0, "nothing is due before 60 s");

    tokio::time::sleep(Duration::from_secs(2)).await; // t = 61 s
    assert_eq!(idle_closed(&metrics), 1);
    assert!(idle.is_closed(), "closed at expiry, without any request for it");
    assert!(!used.is_closed(), "used at 45 s: due at 105 s");

    tokio::time::sleep(Duration::from_secs(45)).await; // t = 106 s
    assert!(used.is_closed());
    assert_eq!(idle_closed(&metrics), 2);
    assert!(manager.is_empty());
    stop.cancel();
}

#[tokio::test(start_paused = true)]
async fn a_session_with_a_call_in_flight_is_not_idle() {
    let (manager, metrics) = manager(Duration::from_secs(10));
    let stop = tokio_util::sync::CancellationToken::new();
    tokio::spawn(Arc::clone(&manager).run_background(stop.clone()));
    let session = manager
        .create(json!({}), "2025-06-18".into(), None, None)
        .await
        .unwrap();
    let guard = session.inflight.enter();
    tokio::time::sleep(Duration::from_secs(15)).await;
    assert_eq!(idle_closed(&metrics), 0, "busy at its deadline: rescheduled");
    drop(guard);
    tokio::time::sleep(Duration::from_secs(11)).await;
    assert_eq!(idle_closed(&metrics), 1);
    stop.cancel();
}

#[tokio::test(start_paused = true)]
async fn the_session_cap_counts_sessions_being_created() {
    let (manager, _) = manager(Duration::from_secs(10));
    for _ in 0..10 {
        manager
            .create(json!({}), "2025-06-18".into(), None, None)
            .await
            .unwrap();
    }
    let refused = manager.create(json!({}), "2025-06-18".into(), None, None).await;
    assert!(matches!(refused, Err(super::ManagerError::Full(10))));
}

#[tokio::test(start_paused = true)]
async fn closed_resolves_when_the_session_closes_not_at_a_poll() {
    // A GET stream waits on this; it used to poll once a second per stream.
    let (manager, _) = manager(Duration::from_secs(60));
    let session = manager
        .create(json!({}), "2025-06-18".into(), None, None)
        .await
        .unwrap();
    let waiting = Arc::clone(&session);
    let waiter = tokio::spawn(async move {
        let started = tokio::time::Instant::now();
        waiting.closed().await;
        started.elapsed()
    });
    tokio::task::yield_now().await;
    tokio::time::sleep(Duration::from_millis(10)).await;
    session.close(Duration::from_secs(1)).await;
    let waited = waiter.await.unwrap();
    assert_eq!(waited, Duration::from_millis(10), "woken by the close itself");
    session.closed().await; // and at once when already closed
}
