//! The front door: accept loop, routes, health and metrics.
//!
//! `serve(listener, app, shutdown)` takes a bound listener so tests can start a
//! replica on `127.0.0.1:0`. Every accepted socket gets `TCP_NODELAY` (without
//! it Nagle and delayed ACKs cost ~40 ms per request). On shutdown the loop
//! stops accepting and in-flight requests get `http.shutdown_timeout` to finish.

mod call;
pub(crate) mod connections;
mod era;
mod exec;
pub mod health;
mod keepalive;
mod mcp;
mod origin;
mod placement;
pub mod reply;
mod repoll;
mod stateless;
pub use stateless::PausedCalls;

use std::convert::Infallible;
use std::sync::Arc;

use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::app::App;
pub use mcp::handle_buffered;
pub use origin::HostGuard;
use reply::Body;
use repoll::Repoll;

/// Serves HTTP on `listener` until `shutdown` fires, then drains.
/// What a listener serves: everything, or only health, metrics and the admin API (`admin_listen`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Surface {
    Main,
    Admin,
}

pub async fn serve(listener: TcpListener, app: Arc<App>, surface: Surface, shutdown: CancellationToken) {
    let graceful = GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    // hyper's header clock would also end idle keep-alive connections at the
    // header deadline: `keepalive.rs` runs both clocks instead. Header count
    // (100) and size (~400 KiB buffer) keep hyper's bounds.
    http.header_read_timeout(None);
    let (head_timeout, idle_timeout) = (app.config.http.header_read_timeout, app.config.http.idle_timeout);
    // Every request's span hangs off this one, which names the replica once.
    let root = tracing::info_span!("replica", replica = %app.config.replica_id);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Out of file descriptors and the like: back off, keep serving.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.cancelled() => break,
        };
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
        // The connection budget (the MCP listener only: the admin one is the operator's way in).
        let budget = match surface {
            Surface::Main => match app.connections.admit() {
                Some(admitted) => Some(admitted),
                None => continue, // refused: closed at once
            },
            Surface::Admin => None,
        };
        let (app, root) = (Arc::clone(&app), root.clone());
        let activity = Arc::new(keepalive::Activity::new(budget.as_ref().map(|b| Arc::clone(&b.slot))));
        let io = keepalive::Watched::new(stream, Arc::clone(&activity), head_timeout, idle_timeout, budget);
        let service = service_fn(move |req: Request<Incoming>| {
            let served = activity.begin();
            let (app, root) = (Arc::clone(&app), root.clone());
            async move {
                let response = route(&app, surface, req, &root).await;
                Ok::<_, Infallible>(response.map(|body| keepalive::Tracked::new(body, served)))
            }
        });
        let conn = Repoll::new(graceful.watch(http.serve_connection(TokioIo::new(io), service)));
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    let deadline = app.config.http.shutdown_timeout;
    if tokio::time::timeout(deadline, graceful.shutdown()).await.is_err() {
        tracing::warn!(
            ?deadline,
            "in-flight requests did not finish before the shutdown deadline"
        );
    }
}

/// What a request span's target is: `RUST_LOG=info,vmcp::request=debug`
/// turns the spans on and leaves every other level as it is.
const REQUEST_TARGET: &str = "vmcp::request";

/// One span per request; `session.id` and `mcp.method` are filled in on the
/// way, and the replica id is on the process's root span. At `debug`, not
/// `info`: a fmt subscriber formats a span's fields when it opens and again
/// at every `record` (in JSON, by parsing and writing them all again), which
/// at `info` cost more than vmcp's whole call path (63k instructions per call
/// became 104k). Events at `info` and above carry their own context
/// (`session.id`, `backend`, `owner`), as linkerd2-proxy keeps its
/// per-request spans at `debug`.
async fn route(app: &App, surface: Surface, req: Request<Incoming>, root: &tracing::Span) -> Response<Body> {
    let span = tracing::debug_span!(
        target: REQUEST_TARGET,
        parent: root,
        "request",
        http.method = req.method().as_str(),
        path = req.uri().path(),
        session.id = tracing::field::Empty,
        mcp.method = tracing::field::Empty,
        backend = tracing::field::Empty,
    );
    async move {
        match (req.method(), req.uri().path()) {
            (_, "/mcp") if surface == Surface::Main => {
                let mut response = mcp::handle(app, req).await;
                // Who served it: kept as the owner set it when the request was forwarded.
                if let Some(id) = &app.replica_header {
                    response.headers_mut().entry(REPLICA).or_insert_with(|| id.clone());
                }
                // While draining, no connection is kept for another request:
                // when the listener closes, a peer then has no pooled
                // connection to write a hop on that this replica would close
                // unread (a request lost that way has an unknown outcome);
                // its next hop gets a refused connect, which provably was not sent.
                // And peers learn when the listener closes, so that they stop
                // sending hops just before (a connection made in that last
                // instant would be reset under a written request).
                if app.manager.is_draining() {
                    let headers = response.headers_mut();
                    headers.insert(http::header::CONNECTION, http::HeaderValue::from_static("close"));
                    if let Some(ends) = app.drain_ends.get() {
                        let left = ends.saturating_duration_since(std::time::Instant::now()).as_millis();
                        if let Ok(v) = http::HeaderValue::from_str(&left.to_string()) {
                            headers.insert(crate::affinity::forward::DRAINING_HEADER, v);
                        }
                    }
                }
                response
            }
            (&Method::GET, path)
                if surface == Surface::Main && path.starts_with("/.well-known/oauth-protected-resource") =>
            {
                // RFC 9728: what an OAuth client needs to get a token for `/mcp`.
                match app.auth.metadata() {
                    Some(doc) => reply::text(
                        StatusCode::OK,
                        "application/json",
                        String::from_utf8_lossy(&doc).into_owned(),
                    ),
                    None => reply::empty(StatusCode::NOT_FOUND),
                }
            }
            (_, path) if surface == Surface::Admin && (path == "/admin" || path.starts_with("/admin/")) => {
                crate::admin::handle(app, req).await
            }
            (&Method::GET, "/healthz") => reply::text(StatusCode::OK, "text/plain", "ok\n".into()),
            (&Method::GET, "/readyz") => ready(app).await,
            (&Method::GET, "/metrics") => {
                reply::text(StatusCode::OK, "text/plain; version=0.0.4", app.metrics.render())
            }
            _ => reply::empty(StatusCode::NOT_FOUND),
        }
    }
    .instrument(span)
    .await
}

/// The replica that served an MCP response.
pub const REPLICA_HEADER: &str = "x-vmcp-replica";
const REPLICA: http::HeaderName = http::HeaderName::from_static(REPLICA_HEADER);

/// Ready when not draining and the member list is known: readiness is about
/// this replica only. The store's health is detail (and `vmcp_store_up`): a
/// replica whose store is down still serves the sessions it holds, and a
/// Redis restart must not empty the Service.
async fn ready(app: &App) -> Response<Body> {
    if app.manager.is_draining() {
        return reply::text(StatusCode::SERVICE_UNAVAILABLE, "text/plain", "draining\n".into());
    }
    if !app.membership.is_known() {
        return reply::text(
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain",
            "membership unknown\n".into(),
        );
    }
    let body = match app.store_health.state() {
        health::StoreState::Up => "ready\n".to_owned(),
        health::StoreState::Unknown => "ready\nstore: not probed yet\n".to_owned(),
        health::StoreState::Down(reason) => format!("ready\nstore: down: {reason}\n"),
    };
    reply::text(StatusCode::OK, "text/plain", body)
}
