//! Wiring: one replica built from a [`Config`], and its lifecycle.

use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::affinity::pin::Pins;
use crate::affinity::{Forwarder, Hops, Membership};
use crate::backend::health::{Circuit, CircuitPolicy};
use crate::backend::{Backend, BackendError, Bounds};
use crate::config::{Config, MembershipKind, PlacementMode, StoreKind};
use crate::http::health::StoreHealth;
use crate::http::{HostGuard, Surface};
use crate::session::{IdentityHasher, Limits};
use crate::session::{SessionFactory, SessionManager};
use crate::store::{MemoryStore, RedisStore, SessionStore, StoreError};
use crate::telemetry::Metrics;

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("backend `{0}`: {1}")]
    Backend(String, BackendError),
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("{0}")]
    Auth(#[from] crate::auth::AuthError),
    #[error("{0}")]
    Policy(#[from] crate::policy::PolicyError),
    #[error("limits: {0}")]
    Limits(#[from] crate::limits::LimitsError),
    #[error("audit: {0}")]
    Audit(#[from] crate::audit::AuditError),
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
}

/// Policies, rate limits (shared through Redis when the store is) and the audit log.
fn guards(config: &Config, metrics: &Metrics) -> Result<crate::policy::Guards, AppError> {
    let registry = metrics.registry();
    let policies = crate::policy::Policies::load(&config.policy, &config.replica_id, registry)?;
    let limiter = crate::limits::Limiter::new(
        &config.limits,
        crate::limits::LimitBackend::from_store(&config.store),
        registry,
    )?;
    let auditor = crate::audit::Auditor::new(&config.audit)?;
    Ok(crate::policy::Guards {
        policies,
        limiter: (!limiter.is_empty()).then(|| Arc::new(limiter)),
        auditor: auditor.is_enabled().then(|| Arc::new(auditor)),
        replica: Arc::from(config.replica_id.as_str()),
    })
}

/// Everything one replica shares between requests.
pub struct App {
    pub config: Arc<Config>,
    pub manager: Arc<SessionManager>,
    pub metrics: Arc<Metrics>,
    pub membership: Arc<Membership>,
    pub hops: Arc<Hops>,
    pub forwarder: Forwarder,
    /// Fires when open client streams must end (the replica stops accepting).
    pub streams_stop: CancellationToken,
    /// When this replica's listener closes (set when draining starts).
    pub drain_ends: std::sync::OnceLock<std::time::Instant>,
    /// DNS rebinding protection for `/mcp`.
    pub hosts: HostGuard,
    /// The MCP listener's connection budget (`http.max_connections`).
    pub(crate) connections: Arc<crate::http::connections::Connections>,
    /// Whether the session store answers (detail for `/readyz`, `vmcp_store_up`).
    pub store_health: Arc<StoreHealth>,
    /// The identity hasher (shared with the manager), whose salt `run` keeps in the store.
    pub identity: IdentityHasher,
    /// Who is calling (`auth.inbound`).
    pub auth: crate::auth::Authenticator,
    /// Who may call the admin API (`admin`).
    pub admin: crate::admin::AdminAuth,
    /// Calls of 2026-07-28 clients waiting for the client's input.
    pub paused: crate::http::PausedCalls,
    /// Under pinned placement: where callers' pooled sessions live.
    pub pool_homes: Option<crate::affinity::homes::PoolHomes>,
    /// What guards calls: policies, rate limits, the audit log.
    pub guards: crate::policy::Guards,
    /// `x-vmcp-replica` on every `/mcp` answer (`None`: the id is not a valid header value).
    pub replica_header: Option<http::HeaderValue>,
}

impl App {
    /// Builds the replica (no network I/O: backends are contacted per session).
    pub fn new(config: Config, metrics: Metrics) -> Result<Arc<Self>, AppError> {
        install_crypto_provider();
        let bounds = Bounds {
            connect: config.session.init_timeout,
            notice: config.session.close_timeout,
            max_answer: config.session.max_response_bytes,
            keep_alive: crate::backend::client::DEFAULT_KEEP_ALIVE,
        };
        let circuit = &config.session.circuit;
        let circuit_policy = CircuitPolicy {
            failures: circuit.failures,
            open_for: circuit.open_for,
            max_open_for: circuit.max_open_for,
        };
        let recoveries = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let backends = config
            .backends
            .iter()
            .enumerate()
            .map(|(i, b)| {
                let circuit = Circuit::new(
                    &b.name,
                    circuit_policy,
                    metrics.backend_circuit_state.with_label_values(&[&b.name]),
                    Arc::clone(&recoveries),
                );
                let bounds = Bounds {
                    max_answer: b.max_response_bytes.unwrap_or(bounds.max_answer),
                    keep_alive: b.keep_alive.unwrap_or(bounds.keep_alive),
                    ..bounds
                };
                Backend::new(b.clone(), i, bounds, circuit)
                    .map(Arc::new)
                    .map_err(|e| AppError::Backend(b.name.clone(), e))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let store: Arc<dyn SessionStore> = match (&config.store.kind, &config.store.redis) {
            (StoreKind::Redis, Some(redis)) => {
                Arc::new(RedisStore::new(redis, config.session.idle_timeout, metrics.clone())?)
            }
            _ => Arc::new(MemoryStore::default()),
        };
        let limits = Limits {
            idle_timeout: config.session.idle_timeout,
            max_sessions: config.session.max_sessions,
            touch_interval: config.store.touch_interval.min(config.session.idle_timeout / 4),
            shared_store: config.store.kind == StoreKind::Redis,
            release_grace: config.affinity.release_grace,
            close_timeout: config.session.close_timeout,
            call_timeout: config.session.call_timeout,
        };
        // Pinned ids are authenticated with the hop key; alone, a replica needs neither.
        let pins = (config.placement() == PlacementMode::Pinned)
            .then(|| {
                config
                    .affinity
                    .hop_key
                    .as_deref()
                    .filter(|k| !k.is_empty())
                    .map(Pins::new)
            })
            .flatten();
        let membership = Arc::new(
            match config.membership.kind {
                MembershipKind::Static => Membership::fixed(&config.replica_id, &config.membership.members),
                MembershipKind::Kubernetes => Membership::unknown(&config.replica_id),
            }
            .with_pins(pins),
        );
        let hops = Arc::new(Hops::new(
            config.affinity.hop_key.as_deref(),
            config.affinity.hop_max_age,
        ));
        let forwarder = Forwarder::new(
            &config.replica_id,
            Arc::clone(&hops),
            config.affinity.connect_timeout,
            config.http.idle_timeout / 2,
            config.http.body_read_timeout,
        );
        let identity = IdentityHasher::new(config.session.identity_key.as_deref());
        let factory = SessionFactory::new(
            backends,
            config.session.clone(),
            config.aggregation.clone(),
            metrics.clone(),
            store,
        );
        let manager = SessionManager::new(
            Arc::new(factory),
            identity.clone(),
            metrics.clone(),
            limits,
            Arc::clone(&membership),
        );
        let hosts = HostGuard::new(config.http.allowed_hosts.as_deref(), config.listen);
        let store_health = Arc::new(StoreHealth::new(metrics.store_up.clone()));
        let replica_header = http::HeaderValue::from_str(&config.replica_id).ok();
        let auth = crate::auth::Authenticator::new(config.auth.inbound.as_ref(), metrics.registry())?;
        let admin = crate::admin::AdminAuth::new(&config.admin);
        let guards = guards(&config, &metrics)?;
        let max_connections = config
            .http
            .max_connections
            .unwrap_or_else(crate::http::connections::default_max);
        let connections = crate::http::connections::Connections::new(max_connections, metrics.registry())?;
        Ok(Arc::new(Self {
            connections,
            auth,
            admin,
            guards,
            paused: crate::http::PausedCalls::new(&config.replica_id),
            pool_homes: membership.is_pinned().then(Default::default),
            replica_header,
            config: Arc::new(config),
            manager: Arc::new(manager),
            metrics: Arc::new(metrics),
            membership,
            hops,
            forwarder,
            streams_stop: CancellationToken::new(),
            drain_ends: std::sync::OnceLock::new(),
            hosts,
            store_health,
            identity,
        }))
    }
}

/// Starts following the Kubernetes replicas, when configured.
async fn start_discovery(app: &Arc<App>) -> Option<tokio::task::JoinHandle<()>> {
    let k8s = app
        .config
        .membership
        .kubernetes
        .clone()
        .filter(|_| app.config.membership.kind == MembershipKind::Kubernetes)?;
    #[cfg(feature = "kubernetes")]
    {
        use crate::affinity::kubernetes;
        let client = match kubernetes::client_from_environment().await {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "no Kubernetes API: membership stays unknown (not ready)");
                return None;
            }
        };
        let port = app.config.listen.port();
        Some(tokio::spawn(kubernetes::follow(
            Arc::clone(&app.membership),
            client,
            k8s,
            port,
        )))
    }
    #[cfg(not(feature = "kubernetes"))]
    {
        let _ = k8s;
        tracing::error!("membership.kind kubernetes needs a build with the `kubernetes` feature");
        None
    }
}

/// TLS (https backends, `rediss://`) uses rustls with ring; an embedding
/// program may have installed its own provider first, which is kept.
pub fn install_crypto_provider() {
    #[cfg(feature = "tls")]
    {
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
}

/// Runs the replica on `listener` until `shutdown` fires, then drains:
/// 1. `/readyz` turns 503 and no new session is created here, but requests are
///    still served and forwarded for `http.drain_delay`, while load balancers
///    and the other replicas notice;
/// 2. the listener closes; open client streams end with a `retry` hint, so the
///    clients reconnect elsewhere; in-flight requests get what is left of
///    `http.shutdown_timeout` to finish;
/// 3. sessions are released (with Redis: backend sessions stay open and the
///    metadata stays, for the replicas that take over) or closed (memory store).
///
/// One deadline, `drain_delay + shutdown_timeout` after the stop signal,
/// bounds all of it: whatever hangs (a request, a backend being closed), this
/// returns by then (the orchestrator's grace period is set above it).
pub async fn run(listener: TcpListener, app: Arc<App>, shutdown: CancellationToken) {
    let background_stop = CancellationToken::new();
    let background = tokio::spawn(Arc::clone(&app.manager).run_background(background_stop.clone()));
    let probe =
        tokio::spawn(Arc::clone(&app.store_health).run(Arc::clone(app.manager.store()), background_stop.clone()));
    let salt_keeper = {
        let (identity, store, stop) = (
            app.identity.clone(),
            Arc::clone(app.manager.store()),
            background_stop.clone(),
        );
        tokio::spawn(async move { identity.keep_salt(store, stop).await })
    };
    if let Some(policies) = &app.guards.policies {
        tokio::spawn(Arc::clone(policies).watch(background_stop.clone()));
    }
    let discovery = start_discovery(&app).await;
    let stop_accepting = CancellationToken::new();
    let (deadline_tx, deadline_rx) = tokio::sync::watch::channel(None);
    let drain = {
        let (app, stop_accepting, shutdown) = (Arc::clone(&app), stop_accepting.clone(), shutdown.clone());
        async move {
            shutdown.cancelled().await;
            let http = &app.config.http;
            let _ = deadline_tx.send(Some(Instant::now() + http.drain_delay + http.shutdown_timeout));
            let _ = app.drain_ends.set(std::time::Instant::now() + http.drain_delay);
            app.manager.start_draining();
            tracing::info!(delay = ?http.drain_delay, "draining: not ready, still serving");
            tokio::time::sleep(http.drain_delay).await;
            app.streams_stop.cancel();
            stop_accepting.cancel();
            // No retry can reach a paused call from now on.
            app.paused.end_all();
        }
    };
    let admin = async {
        let Some(addr) = app.config.admin_listen else { return };
        if !app.admin.is_on() {
            tracing::info!("admin API off: no admin.token or admin.scope configured");
        }
        match TcpListener::bind(addr).await {
            Ok(admin) => crate::http::serve(admin, Arc::clone(&app), Surface::Admin, stop_accepting.clone()).await,
            Err(e) => {
                tracing::error!(%addr, error = %e, "cannot listen on admin_listen; health and metrics stay on the main port")
            }
        }
    };
    let main = crate::http::serve(listener, Arc::clone(&app), Surface::Main, stop_accepting.clone());
    let serving = async {
        tokio::join!(main, admin, drain);
    };
    tokio::pin!(serving);
    let mut deadline_rx = deadline_rx;
    // No deadline before the stop signal; from then on everything ends by it.
    let signalled = tokio::select! {
        _ = &mut serving => None,
        at = deadline_rx.wait_for(Option::is_some) => Some(at.ok().and_then(|at| *at)),
    };
    let deadline = match signalled {
        None => (*deadline_rx.borrow()).unwrap_or_else(Instant::now),
        Some(at) => {
            let at = at.unwrap_or_else(Instant::now);
            if tokio::time::timeout_at(at, &mut serving).await.is_err() {
                tracing::warn!("in-flight requests did not finish before the shutdown deadline");
            }
            at
        }
    };
    background_stop.cancel();
    let background = async {
        let _ = background.await;
        let _ = probe.await;
        let _ = salt_keeper.await;
    };
    if tokio::time::timeout_at(deadline, background).await.is_err() {
        tracing::warn!("background tasks did not stop before the shutdown deadline");
    }
    if let Some(task) = discovery {
        task.abort();
    }
    if tokio::time::timeout_at(deadline, app.manager.close_all())
        .await
        .is_err()
    {
        tracing::warn!("sessions did not close before the shutdown deadline");
    }
    // The audit lines of the last calls, written before the process exits.
    if let Some(auditor) = app.guards.auditor.clone() {
        let until = deadline.into_std();
        let written = tokio::task::spawn_blocking(move || auditor.finish(until)).await;
        if !matches!(written, Ok(true)) {
            tracing::warn!("audit log not fully written before the shutdown deadline");
        }
    }
}
