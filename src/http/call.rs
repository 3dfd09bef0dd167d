//! A client request that a backend serves (`tools/call`, `prompts/get`,
//! `resources/read`, `completion/complete`), with what the backend sends
//! while it runs: progress, log lines, its own requests to the client.
//!
//! The answer stays plain JSON unless something must be relayed before the
//! result and the client accepts SSE: then the response becomes an event
//! stream carrying the relayed messages and, last, the result, each with an
//! event id (`{stream}/{seq}`; 2025-11-25 clients first get a priming
//! event). From that moment the call runs as its own task, because a client
//! that drops the stream has not cancelled the request (only
//! `notifications/cancelled` does); it resumes the stream with a GET and
//! `Last-Event-ID`. A JSON-only client gets relayed messages on its GET
//! stream. Most calls relay nothing and pay for one channel, no task.

use std::sync::Arc;

use futures_util::future::BoxFuture;
use http::Response;
use serde_json::Value;
use tokio::sync::mpsc;
use tracing::Instrument;

use super::reply::{self, Body, Format};
use crate::backend::{CallContext, FromBackend};
use crate::mcp::{self, Command, Reply, RpcError};
use crate::policy::RequestGuard;
use crate::session::Session;
use crate::telemetry::Metrics;

type Outcome = Result<Reply, RpcError>;

/// How the client takes its answer: JSON or SSE, and whether it accepts a stream.
#[derive(Debug, Clone, Copy)]
pub struct Answering {
    pub format: Format,
    pub accepts_sse: bool,
}

/// Runs `command` for request `id`, relaying the backend's messages.
pub async fn respond(
    metrics: &Arc<Metrics>,
    session: Arc<Session>,
    id: Value,
    method: &str,
    command: Command,
    answering: Answering,
    guard: Option<Arc<RequestGuard>>,
) -> Response<Body> {
    let Answering { format, accepts_sse } = answering;
    let (relay, mut relayed) = mpsc::unbounded_channel();
    let mut call = boxed_call(metrics, &session, &id, method, command, relay, guard);
    let mut relay_open = true;
    let outcome = loop {
        tokio::select! {
            biased;
            // Boxed: this branch is rare, and its future would otherwise
            // add ~4 KB to every call's state.
            message = relayed.recv(), if relay_open => match message {
                Some(message) => match Box::pin(session.outward(message)).await {
                    Some(first) if accepts_sse => return stream(session, id, vec![first], relayed, Some(call)),
                    Some(other) => session.publish(&other).await,
                    None => {}
                },
                None => relay_open = false,
            },
            outcome = &mut call => break outcome,
        }
    };
    // Messages relayed in the very poll that finished the call.
    let mut late = Vec::new();
    while let Ok(message) = relayed.try_recv() {
        late.extend(Box::pin(session.outward(message)).await);
    }
    if late.is_empty() || !accepts_sse {
        for message in &late {
            session.publish(message).await;
        }
        return super::exec::answer(&id, outcome, format);
    }
    late.push(mcp::jsonrpc::response_body(&id, outcome));
    stream(session, id, late, relayed, None)
}

/// The call itself, boxed: it may move into a task of its own (see
/// [`stream`]). Built outside `respond` so that `respond`'s own state does
/// not keep a second copy of it (~9 KB, moved on every call).
fn boxed_call(
    metrics: &Arc<Metrics>,
    session: &Arc<Session>,
    id: &Value,
    method: &str,
    command: Command,
    relay: mpsc::UnboundedSender<FromBackend>,
    guard: Option<Arc<RequestGuard>>,
) -> BoxFuture<'static, Outcome> {
    let ticket = session.track_call(id);
    let ctx = CallContext::new(relay, ticket.token());
    let label = Command::method_label(method);
    let (metrics, running) = (Arc::clone(metrics), Arc::clone(session));
    Box::pin(
        async move {
            let _ticket = ticket;
            super::exec::run(&metrics, &running, label, command, guard.as_deref(), &ctx).await
        }
        .in_current_span(),
    )
}

/// An SSE response: `ready`, then what is relayed until `call` ends, then
/// its result. The call and the relaying run in a task of their own that
/// writes a [`CallStream`]; this response (and any GET that resumes it with
/// `Last-Event-ID`) reads from there.
fn stream(
    session: Arc<Session>,
    id: Value,
    ready: Vec<Value>,
    mut relayed: mpsc::UnboundedReceiver<FromBackend>,
    call: Option<BoxFuture<'static, Outcome>>,
) -> Response<Body> {
    let log = session.open_call_stream();
    ready.iter().for_each(|m| log.push(m));
    let priming = session.primes_streams().then(|| log.start_id());
    let (writer, reader) = (Arc::clone(&log), log.read_from(0));
    tokio::spawn(
        async move {
            if let Some(call) = call {
                let relay = async {
                    while let Some(message) = relayed.recv().await {
                        if let Some(out) = session.outward(message).await {
                            writer.push(&out);
                        }
                    }
                };
                // The relay closes when the call ends: its result comes last.
                let (outcome, ()) = futures_util::future::join(call, relay).await;
                writer.push(&mcp::jsonrpc::response_body(&id, outcome));
            }
            writer.end();
        }
        .in_current_span(),
    );
    reply::message_stream(priming, reader)
}
