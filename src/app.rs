//! Wiring: one replica built from a [`Config`], and its lifecycle.

use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::backend::{Backend, BackendError};
use crate::config::{Config, StoreKind};
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
}

/// Everything one replica shares between requests.
pub struct App {
    pub config: Arc<Config>,
    pub manager: Arc<SessionManager>,
    pub metrics: Metrics,
}

impl App {
    /// Builds the replica (no network I/O: backends are contacted per session).
    pub fn new(config: Config, metrics: Metrics) -> Result<Arc<Self>, AppError> {
        install_crypto_provider();
        let backends = config
            .backends
            .iter()
            .enumerate()
            .map(|(i, b)| {
                Backend::new(b.clone(), i)
                    .map(Arc::new)
                    .map_err(|e| AppError::Backend(b.name.clone(), e))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let store: Arc<dyn SessionStore> = match (&config.store.kind, &config.store.redis) {
            (StoreKind::Redis, Some(redis)) => Arc::new(RedisStore::new(
                &redis.url,
                &redis.key_prefix,
                config.session.idle_timeout,
                metrics.clone(),
            )?),
            _ => Arc::new(MemoryStore::default()),
        };
        let limits = Limits {
            idle_timeout: config.session.idle_timeout,
            max_sessions: config.session.max_sessions,
            touch_interval: config.store.touch_interval.min(config.session.idle_timeout / 4),
            shared_store: config.store.kind == StoreKind::Redis,
        };
        let identity = IdentityHasher::new(config.session.identity_key.as_deref());
        let factory = SessionFactory::new(
            backends,
            config.session.clone(),
            config.aggregation.clone(),
            metrics.clone(),
            store,
        );
        let manager = SessionManager::new(Arc::new(factory), identity, metrics.clone(), limits);
        Ok(Arc::new(Self {
            config: Arc::new(config),
            manager: Arc::new(manager),
            metrics,
        }))
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

/// Runs the replica on `listener` until `shutdown` fires: stops taking new
/// sessions, lets in-flight requests finish (bounded by
/// `http.shutdown_timeout`), then closes every session and its backend sessions.
pub async fn run(listener: TcpListener, app: Arc<App>, shutdown: CancellationToken) {
    let reaper_stop = CancellationToken::new();
    let reaper = tokio::spawn(Arc::clone(&app.manager).run_background(reaper_stop.clone()));
    let draining = {
        let (app, shutdown) = (Arc::clone(&app), shutdown.clone());
        async move {
            shutdown.cancelled().await;
            app.manager.start_draining();
        }
    };
    tokio::join!(crate::http::serve(listener, Arc::clone(&app), shutdown), draining);
    reaper_stop.cancel();
    let _ = reaper.await;
    let closing = app.manager.close_all();
    if tokio::time::timeout(app.config.http.shutdown_timeout, closing)
        .await
        .is_err()
    {
        tracing::warn!("sessions did not close before the shutdown deadline");
    }
}
