//! Whether the session store answers, for `/readyz`'s detail and the
//! `vmcp_store_up` gauge, but never for readiness itself: a Redis restart
//! must not take every replica out of the Service, since the sessions they
//! hold in memory keep serving without it (only `initialize` and foreign
//! rebuilds need the store, and they answer 503 + `Retry-After` meanwhile).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus::IntGauge;
use tokio_util::sync::CancellationToken;

use crate::store::SessionStore;
use crate::sync::lock;

/// How often the store is pinged.
const PROBE_EVERY: Duration = Duration::from_secs(2);
/// How long one ping may take before the store counts as down.
const PROBE_TIMEOUT: Duration = Duration::from_millis(1500);

/// What the last probe found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreState {
    /// Not probed yet.
    Unknown,
    Up,
    /// Down, and why.
    Down(String),
}

pub struct StoreHealth {
    gauge: IntGauge,
    state: Mutex<StoreState>,
}

impl StoreHealth {
    pub fn new(gauge: IntGauge) -> Self {
        Self {
            gauge,
            state: Mutex::new(StoreState::Unknown),
        }
    }

    pub fn state(&self) -> StoreState {
        lock(&self.state).clone()
    }

    fn record(&self, state: StoreState) {
        self.gauge.set(i64::from(state == StoreState::Up));
        let mut current = lock(&self.state);
        match (&*current, &state) {
            (StoreState::Up | StoreState::Unknown, StoreState::Down(reason)) => {
                tracing::warn!(%reason, "session store down: no new sessions until it is back");
            }
            (StoreState::Down(_), StoreState::Up) => tracing::info!("session store back"),
            _ => {}
        }
        *current = state;
    }

    /// One bounded ping.
    pub async fn probe(&self, store: &dyn SessionStore) {
        let state = match tokio::time::timeout(PROBE_TIMEOUT, store.ping()).await {
            Ok(Ok(())) => StoreState::Up,
            Ok(Err(e)) => StoreState::Down(e.to_string()),
            Err(_) => StoreState::Down(format!("no answer within {PROBE_TIMEOUT:?}")),
        };
        self.record(state);
    }

    /// Probes the store every few seconds until `stop` fires.
    pub async fn run(self: Arc<Self>, store: Arc<dyn SessionStore>, stop: CancellationToken) {
        loop {
            self.probe(store.as_ref()).await;
            tokio::select! {
                _ = tokio::time::sleep(PROBE_EVERY) => {}
                _ = stop.cancelled() => return,
            }
        }
    }
}
