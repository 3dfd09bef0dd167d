//! The one call path both eras share, and how its errors are answered:
//! a command applied to a session under the request's guard, measured and
//! audited, and its outcome rendered. `mcp` (the handshake era), `call` (a
//! call that relays), `stateless` (2026-07-28) and `placement` use it; it
//! uses none of them, so requests flow one way through `http`.

use std::sync::Arc;
use std::time::Instant;

use http::{header, HeaderMap, Response, StatusCode};
use serde_json::Value;

use super::reply::{self, Body, Format};
use crate::app::App;
use crate::backend::CallContext;
use crate::mcp::{self, Command, Reply, RpcError};
use crate::policy::RequestGuard;
use crate::session::guard::Guard;
use crate::session::Session;
use crate::telemetry::{Meter, Metrics};

/// Renders a client-caused error and logs it (once, here).
pub(super) fn reject(err: RpcError, id: Option<&Value>) -> Response<Body> {
    tracing::info!(code = err.code, status = err.status.as_u16(), reason = %err.message, "request rejected");
    reply::error(&err, id)
}

/// A header's value as text; `name` is best a [`header::HeaderName`] (a
/// `&str` is parsed into one on every lookup).
pub(super) fn header_str(headers: &HeaderMap, name: impl header::AsHeaderName) -> Option<&str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// Runs a command that relays nothing (a batch item, or one the gateway answers itself).
pub(super) async fn apply_here(
    app: &App,
    session: &Session,
    method: &str,
    command: Command,
    guard: Option<&Arc<RequestGuard>>,
) -> Result<Reply, RpcError> {
    apply_with(app, session, method, command, guard, &CallContext::default()).await
}

/// [`apply_here`] with the call's context (where the backend's messages go).
pub(super) async fn apply_with(
    app: &App,
    session: &Session,
    method: &str,
    command: Command,
    guard: Option<&Arc<RequestGuard>>,
    ctx: &CallContext,
) -> Result<Reply, RpcError> {
    let label = Command::method_label(method);
    run(&app.metrics, session, label, command, guard.map(|g| &**g), ctx).await
}

/// Applies `command` to `session` under `guard` (policies, limits), with
/// the request metrics, and writes its audit record: the one call path.
pub(super) async fn run(
    metrics: &Metrics,
    session: &Session,
    label: &'static str,
    command: Command,
    guard: Option<&RequestGuard>,
    ctx: &CallContext,
) -> Result<Reply, RpcError> {
    let judge = guard.map(|g| g as &dyn Guard);
    let started = Instant::now();
    // Awaited here, not handed to a helper: a future passed to an async fn
    // is kept twice in that fn's state (the argument, then the awaited
    // copy), which doubled every call's state (8 KB to 16 KB, copied into
    // its box per call).
    let outcome = command.apply(session, ctx, judge).await;
    measure(metrics, label, started, outcome.is_ok());
    if let Some(g) = guard {
        g.audit(
            label,
            session.id(),
            outcome.as_ref().err().map(|e| e.code),
            started.elapsed(),
        );
    }
    outcome
}

/// The answer to request `id`: its result, or its error (logged, with its status).
pub(super) fn answer(id: &Value, outcome: Result<Reply, RpcError>, format: Format) -> Response<Body> {
    match outcome {
        Ok(result) => reply::message(StatusCode::OK, format, &mcp::jsonrpc::result_body(id, &result)),
        Err(e) => reject(e, Some(id)),
    }
}

/// Records a request that began at `started` in the request metrics.
fn measure(metrics: &Metrics, label: &'static str, started: Instant, ok: bool) {
    let meter = ok.then(|| {
        metrics.request_meters.get(label, || {
            Meter::new(
                metrics.requests.with_label_values(&[label, "ok"]),
                metrics.request_duration.with_label_values(&[label]),
            )
        })
    });
    match meter.flatten() {
        Some(meter) => meter.record(started),
        None => {
            let status = if ok { "ok" } else { "error" };
            metrics.requests.with_label_values(&[label, status]).inc();
            metrics
                .request_duration
                .with_label_values(&[label])
                .observe(started.elapsed().as_secs_f64());
        }
    }
}
