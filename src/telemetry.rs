//! Logs and metrics.
//!
//! Metrics live in a [`Metrics`] value registered into a `prometheus::Registry`
//! that the caller owns and passes around, never in global statics, so that
//! several replicas can run in one test process with their own counters.
//! Label values are bounded: backend names come from the config, methods from
//! the MCP method table; never session ids or client-chosen tool names.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

use crate::config::LogFormat;

/// Installs the global tracing subscriber (once per process; `main` only).
/// The level comes from `RUST_LOG` (default `info`, with rmcp's per-connection
/// chatter at `warn`).
pub fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,rmcp=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour only for a terminal, not for log files and collectors.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let result = match format {
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(true).try_init(),
        LogFormat::Text => builder.try_init(),
    };
    if let Err(e) = result {
        eprintln!("tracing was already initialised: {e}");
    }
}

/// Latency buckets from 0.5 ms to 30 s: gateway calls span that range.
const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// The children of a counter and a histogram for one label set, looked up
/// once: `with_label_values` hashes its labels and takes a lock each time,
/// four times per call on the hot path before this.
#[derive(Clone)]
pub struct Meter {
    count: IntCounter,
    duration: Histogram,
}

impl Meter {
    pub fn new(count: IntCounter, duration: Histogram) -> Self {
        Self { count, duration }
    }

    pub fn record(&self, started: std::time::Instant) {
        self.count.inc();
        self.duration.observe(started.elapsed().as_secs_f64());
    }
}

/// Children resolved on first use, for a fixed set of label values known at
/// build time (methods): a slot per value, no hashing and no lock once set.
pub struct MeterSlots {
    labels: &'static [&'static str],
    slots: Vec<std::sync::OnceLock<Meter>>,
}

impl MeterSlots {
    pub fn new(labels: &'static [&'static str]) -> Self {
        Self {
            labels,
            slots: labels.iter().map(|_| std::sync::OnceLock::new()).collect(),
        }
    }

    /// The meter of `label`, made by `make` the first time; `None` for a
    /// label outside the set (the caller falls back to `with_label_values`).
    pub fn get(&self, label: &str, make: impl FnOnce() -> Meter) -> Option<&Meter> {
        let i = self.labels.iter().position(|l| *l == label)?;
        Some(self.slots.get(i)?.get_or_init(make))
    }
}

/// Every metric of one replica.
#[derive(Clone)]
pub struct Metrics {
    /// `requests{status="ok"}` and `request_duration` per known method.
    pub request_meters: std::sync::Arc<MeterSlots>,
    registry: Registry,
    pub sessions_active: IntGauge,
    pub sessions_created: IntCounter,
    /// Label `reason`: delete, idle, shutdown.
    pub sessions_closed: IntCounterVec,
    /// Labels `method`, `status` (ok, error).
    pub requests: IntCounterVec,
    pub request_duration: HistogramVec,
    /// Labels `backend`, `outcome` (ok, error, timeout).
    pub backend_inits: IntCounterVec,
    pub backend_init_duration: HistogramVec,
    /// Labels `backend`, `method`, `outcome`.
    pub backend_calls: IntCounterVec,
    pub backend_call_duration: HistogramVec,
    pub session_create_duration: Histogram,
    /// Labels `op`, `outcome` (ok, error).
    pub store_operations: IntCounterVec,
    pub store_duration: HistogramVec,
    /// Foreign-session rebuilds; label `outcome` (ok, not_found, error).
    pub session_rebuilds: IntCounterVec,
    pub session_rebuild_duration: Histogram,
    /// Backend sessions restored by a rebuild or self-heal; labels `backend`,
    /// `outcome` (resumed, reinitialized, failed).
    pub backend_rebuilds: IntCounterVec,
    /// Label `backend`: 0 closed, 1 open (skipped), 2 half-open (probing).
    pub backend_circuit_state: IntGaugeVec,
    /// Requests sent on to their owner replica; label `outcome` (ok, failed,
    /// retried, outcome_unknown: see `http::placement`).
    pub requests_forwarded: IntCounterVec,
    /// Its `ok` child, looked up once (every forwarded request counts it).
    pub forwarded_ok: IntCounter,
    /// Requests with a forged, stale or replayed hop header.
    pub hops_refused: IntCounter,
    pub ring_members: IntGauge,
    /// 1 while the session store answers, 0 while it does not (probed every
    /// few seconds); readiness does not depend on it.
    pub store_up: IntGauge,
    /// Label `version`; always 1 (a gauge, as build-info metrics are by convention).
    pub build_info: IntGaugeVec,
}

impl Metrics {
    /// The registry every metric is in (for modules that register their own).
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Creates every metric and registers it into `registry`.
    pub fn new(registry: Registry) -> Result<Self, prometheus::Error> {
        let hist = |name: &str, help: &str, labels: &[&str]| {
            HistogramVec::new(HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec()), labels)
        };
        let requests_forwarded = IntCounterVec::new(
            Opts::new(
                "vmcp_requests_forwarded_total",
                "Requests forwarded to the owner replica, by outcome",
            ),
            &["outcome"],
        )?;
        let metrics = Self {
            request_meters: std::sync::Arc::new(MeterSlots::new(crate::mcp::Command::METHOD_LABELS)),
            sessions_active: IntGauge::new("vmcp_sessions_active", "Client sessions held by this replica")?,
            sessions_created: IntCounter::new("vmcp_sessions_created_total", "Client sessions created")?,
            sessions_closed: IntCounterVec::new(
                Opts::new("vmcp_sessions_closed_total", "Client sessions closed, by reason"),
                &["reason"],
            )?,
            requests: IntCounterVec::new(
                Opts::new("vmcp_requests_total", "MCP requests answered, by method and status"),
                &["method", "status"],
            )?,
            request_duration: hist("vmcp_request_duration_seconds", "MCP request latency", &["method"])?,
            backend_inits: IntCounterVec::new(
                Opts::new(
                    "vmcp_backend_inits_total",
                    "Backend session initializations, by outcome",
                ),
                &["backend", "outcome"],
            )?,
            backend_init_duration: hist(
                "vmcp_backend_init_duration_seconds",
                "Backend session initialization latency",
                &["backend"],
            )?,
            backend_calls: IntCounterVec::new(
                Opts::new("vmcp_backend_calls_total", "Calls forwarded to backends, by outcome"),
                &["backend", "method", "outcome"],
            )?,
            backend_call_duration: hist(
                "vmcp_backend_call_duration_seconds",
                "Backend call latency",
                &["backend", "method"],
            )?,
            session_create_duration: Histogram::with_opts(
                HistogramOpts::new(
                    "vmcp_session_create_duration_seconds",
                    "Time to open all backend sessions",
                )
                .buckets(LATENCY_BUCKETS.to_vec()),
            )?,
            store_operations: IntCounterVec::new(
                Opts::new("vmcp_store_operations_total", "Session store operations, by outcome"),
                &["op", "outcome"],
            )?,
            store_duration: hist(
                "vmcp_store_operation_duration_seconds",
                "Session store latency",
                &["op"],
            )?,
            session_rebuilds: IntCounterVec::new(
                Opts::new(
                    "vmcp_session_rebuilds_total",
                    "Foreign sessions rebuilt from the store, by outcome",
                ),
                &["outcome"],
            )?,
            session_rebuild_duration: Histogram::with_opts(
                HistogramOpts::new(
                    "vmcp_session_rebuild_duration_seconds",
                    "Time to rebuild a foreign session",
                )
                .buckets(LATENCY_BUCKETS.to_vec()),
            )?,
            backend_rebuilds: IntCounterVec::new(
                Opts::new("vmcp_backend_rebuilds_total", "Backend sessions restored, by outcome"),
                &["backend", "outcome"],
            )?,
            backend_circuit_state: IntGaugeVec::new(
                Opts::new(
                    "vmcp_backend_circuit_state",
                    "Circuit of each backend: 0 closed, 1 open (new sessions skip it), 2 half-open (probing)",
                ),
                &["backend"],
            )?,
            forwarded_ok: requests_forwarded.with_label_values(&["ok"]),
            requests_forwarded,
            hops_refused: IntCounter::new("vmcp_hops_refused_total", "Requests refused for a bad hop header")?,
            ring_members: IntGauge::new("vmcp_ring_members", "Replicas in the placement ring")?,
            store_up: IntGauge::new(
                "vmcp_store_up",
                "1 if the session store answered the last probe, else 0",
            )?,
            build_info: IntGaugeVec::new(
                Opts::new("vmcp_build_info", "Build information; always 1"),
                &["version"],
            )?,
            registry,
        };
        metrics.register_all()?;
        metrics
            .build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        Ok(metrics)
    }

    fn register_all(&self) -> Result<(), prometheus::Error> {
        let r = &self.registry;
        r.register(Box::new(self.sessions_active.clone()))?;
        r.register(Box::new(self.sessions_created.clone()))?;
        r.register(Box::new(self.sessions_closed.clone()))?;
        r.register(Box::new(self.requests.clone()))?;
        r.register(Box::new(self.request_duration.clone()))?;
        r.register(Box::new(self.backend_inits.clone()))?;
        r.register(Box::new(self.backend_init_duration.clone()))?;
        r.register(Box::new(self.backend_calls.clone()))?;
        r.register(Box::new(self.backend_call_duration.clone()))?;
        r.register(Box::new(self.session_create_duration.clone()))?;
        r.register(Box::new(self.store_operations.clone()))?;
        r.register(Box::new(self.store_duration.clone()))?;
        r.register(Box::new(self.session_rebuilds.clone()))?;
        r.register(Box::new(self.session_rebuild_duration.clone()))?;
        r.register(Box::new(self.backend_rebuilds.clone()))?;
        r.register(Box::new(self.backend_circuit_state.clone()))?;
        r.register(Box::new(self.requests_forwarded.clone()))?;
        r.register(Box::new(self.hops_refused.clone()))?;
        r.register(Box::new(self.ring_members.clone()))?;
        r.register(Box::new(self.store_up.clone()))?;
        r.register(Box::new(self.build_info.clone()))?;
        Ok(())
    }

    /// A fresh registry with every metric, for tests and tools.
    pub fn standalone() -> Self {
        // Registration into a new, empty registry cannot collide.
        match Self::new(Registry::new()) {
            Ok(m) => m,
            Err(e) => unreachable!("fresh registry rejected a metric: {e}"),
        }
    }

    /// The Prometheus text exposition of every registered metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut buf) {
            tracing::warn!(error = %e, "metrics encoding failed");
        }
        String::from_utf8_lossy(&buf).into_owned()
    }
}

/// How often a warning any client could drive is logged: `due()` is true at
/// most once per `every`, however many callers ask (lock-free).
pub struct Throttle {
    started: std::time::Instant,
    every: std::time::Duration,
    /// When it was last due, in seconds after `started` plus one (0: never).
    last: std::sync::atomic::AtomicU64,
}

impl Throttle {
    pub fn new(every: std::time::Duration) -> Self {
        Self {
            started: std::time::Instant::now(),
            every,
            last: std::sync::atomic::AtomicU64::new(0),
        }
    }

    pub fn due(&self) -> bool {
        use std::sync::atomic::Ordering;
        let now = self.started.elapsed().as_secs() + 1;
        let last = self.last.load(Ordering::Relaxed);
        (last == 0 || now >= last + self.every.as_secs())
            && self
                .last
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }
}

#[cfg(test)]
mod throttle_tests {
    use super::Throttle;

    #[test]
    fn a_throttled_warning_is_due_once_per_period() {
        let throttle = Throttle::new(std::time::Duration::from_secs(60));
        assert!(throttle.due());
        assert!(!throttle.due());
        assert!(!throttle.due());
    }
}
