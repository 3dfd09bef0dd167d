//! Shared test support: real backends, replicas and clients on 127.0.0.1.
#![allow(dead_code)]

pub mod backend;
pub mod bearer;
pub mod client;
pub mod deps;
pub mod events;
pub mod oidc;
pub mod process;
pub mod proxy;
pub mod redis;
pub mod redis_topology;

use std::collections::HashMap;
use std::sync::Arc;

use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use vmcp::app::App;
use vmcp::config::Config;
use vmcp::telemetry::Metrics;

#[allow(unused_imports)]
pub use backend::{Options, TestBackend};
pub use client::Client;

/// Serves a tower service (rmcp's `StreamableHttpService`) over HTTP/1.
pub async fn serve_tower<S, B>(listener: TcpListener, service: S, stop: CancellationToken)
where
    S: tower_service::Service<http::Request<hyper::body::Incoming>, Response = http::Response<B>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    loop {
        let (stream, _) = tokio::select! {
            Ok(pair) = listener.accept() => pair,
            _ = stop.cancelled() => return,
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(service.clone());
        let stop = stop.clone();
        tokio::spawn(async move {
            let conn = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = stop.cancelled() => {}
            }
        });
    }
}

/// A URL whose port accepts connections but never answers (a hung backend).
pub async fn hanging_url() -> (String, JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}/mcp", listener.local_addr().expect("addr"));
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    (url, task)
}

/// A URL on which nothing listens (connection refused).
pub async fn refused_url() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}/mcp", listener.local_addr().expect("addr"));
    drop(listener);
    url
}

/// One vmcp replica running in this process on a free port.
pub struct Replica {
    pub url: String,
    pub base: String,
    pub app: Arc<App>,
    stop: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl Replica {
    /// Starts a replica from YAML (`${VAR}` resolved from `env`).
    pub async fn start(yaml: &str) -> Self {
        Self::start_env(yaml, HashMap::new()).await
    }

    pub async fn start_env(yaml: &str, env: HashMap<String, String>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        Self::start_listener(yaml, env, listener).await
    }

    /// Starts on a given port (for member lists that name every replica).
    pub async fn start_on(port: u16, yaml: &str) -> Self {
        let listener = TcpListener::bind(("127.0.0.1", port)).await.expect("bind");
        Self::start_listener(yaml, HashMap::new(), listener).await
    }

    async fn start_listener(yaml: &str, env: HashMap<String, String>, listener: TcpListener) -> Self {
        let config = Config::parse(yaml, std::path::Path::new("test.yaml"), &env).expect("valid test config");
        let app = App::new(config, Metrics::standalone()).expect("app builds");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        let stop = CancellationToken::new();
        let task = tokio::spawn(vmcp::app::run(listener, Arc::clone(&app), stop.clone()));
        Self {
            url: format!("{base}/mcp"),
            base,
            app,
            stop,
            task: Some(task),
        }
    }

    pub fn client(&self) -> Client {
        Client::new(&self.url)
    }

    /// A client that sends `token` as its bearer.
    pub fn client_with_token(&self, token: &str) -> Client {
        let mut c = self.client();
        c.token = Some(token.to_owned());
        c
    }

    /// One backend `t` at `backend`, on a port chosen first, so that the
    /// replica's `/mcp` URL (a token audience) is known to `yaml`, which
    /// adds the rest of the config.
    pub async fn start_for_audience(backend: &str, yaml: impl Fn(&str) -> String) -> Self {
        let port = deps::free_port();
        let audience = format!("http://127.0.0.1:{port}/mcp");
        Self::start_on(port, &config_yaml(&[("t", backend)], &yaml(&audience))).await
    }

    /// Graceful stop (as on SIGTERM), waiting until it is done.
    pub async fn shutdown(&mut self) {
        self.stop.cancel();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }

    /// The value of a Prometheus sample line starting with `prefix`.
    pub fn metric(&self, prefix: &str) -> f64 {
        self.app
            .metrics
            .render()
            .lines()
            .find(|l| l.starts_with(prefix))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// YAML for a list of `(name, url)` HTTP backends plus extra top-level YAML.
pub fn config_yaml(backends: &[(&str, &str)], extra: &str) -> String {
    let mut yaml = String::from("backends:\n");
    for (name, url) in backends {
        yaml.push_str(&format!("  - name: {name}\n    url: {url}\n"));
    }
    yaml.push_str(extra);
    yaml
}

/// The tests' HTTP client: one pool shared by all (building a client loads the
/// system trust store, far too slow to do per request), created after the TLS
/// crypto provider is installed.
pub fn http() -> reqwest::Client {
    static CLIENT: std::sync::OnceLock<reqwest::Client> = std::sync::OnceLock::new();
    CLIENT
        .get_or_init(|| {
            vmcp::app::install_crypto_provider();
            reqwest::Client::new()
        })
        .clone()
}

/// Polls `f` until it returns true, for up to 5 s.
pub async fn eventually<F, Fut>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..100 {
        if f().await {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("not reached within 5 s: {what}");
}
