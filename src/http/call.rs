//! A client request that a backend serves (`tools/call`, `prompts/get`,
//! `resources/read`, `completion/complete`), with what the backend sends
//! while it runs: progress, log lines, its own requests to the client.
//!
//! The answer stays plain JSON unless something must be relayed before the
//! result and the client accepts SSE: then the response becomes an event
//! stream carrying the relayed messages and, last, the result. From that
//! moment the call runs as its own task, because a client that drops the
//! stream has not cancelled the request (only `notifications/cancelled`
//! does). A JSON-only client gets relayed messages on its GET stream. Most
//! calls relay nothing and pay for one channel, no task.

use std::sync::Arc;

use futures_util::future::BoxFuture;
use http::Response;
use serde_json::Value;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::Instrument;

use super::reply::{self, Body, Format};
use crate::backend::{CallContext, FromBackend};
use crate::mcp::{self, Command, RpcError};
use crate::session::Session;
use crate::telemetry::Metrics;

type Outcome = Result<Value, RpcError>;

/// Runs `command` for request `id`, relaying the backend's messages.
pub async fn respond(
    metrics: &Metrics,
    session: Arc<Session>,
    id: Value,
    method: &str,
    command: Command,
    format: Format,
    accepts_sse: bool,
) -> Response<Body> {
    let (relay, mut relayed) = mpsc::unbounded_channel();
    let ticket = session.track_call(&id);
    let ctx = CallContext::new(relay, ticket.token());
    let label = Command::method_label(method);
    let (metrics, running) = (metrics.clone(), Arc::clone(&session));
    let mut call: BoxFuture<'static, Outcome> = Box::pin(
        async move {
            let _ticket = ticket;
            super::mcp::measured(&metrics, label, command.apply(&running, &ctx)).await
        }
        .in_current_span(),
    );
    let mut relay_open = true;
    let outcome = loop {
        tokio::select! {
            biased;
            message = relayed.recv(), if relay_open => match message {
                Some(message) => match session.outward(message).await {
                    Some(first) if accepts_sse => {
                        let task = tokio::spawn(call);
                        return stream(session, id, vec![first], relayed, Some(task));
                    }
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
        late.extend(session.outward(message).await);
    }
    if late.is_empty() || !accepts_sse {
        for message in &late {
            session.publish(message).await;
        }
        return super::mcp::answer(&id, outcome, format);
    }
    late.push(mcp::jsonrpc::response_body(&id, outcome));
    stream(session, id, late, relayed, None)
}

/// State of a relaying response stream.
struct Relaying {
    session: Arc<Session>,
    id: Value,
    ready: std::vec::IntoIter<Value>,
    relayed: mpsc::UnboundedReceiver<FromBackend>,
    task: Option<JoinHandle<Outcome>>,
}

/// An SSE response: `ready`, then what is relayed until the call ends, then its result.
fn stream(
    session: Arc<Session>,
    id: Value,
    ready: Vec<Value>,
    relayed: mpsc::UnboundedReceiver<FromBackend>,
    task: Option<JoinHandle<Outcome>>,
) -> Response<Body> {
    let state = Relaying {
        session,
        id,
        ready: ready.into_iter(),
        relayed,
        task,
    };
    let messages = futures_util::stream::unfold(state, |mut st| async move {
        if let Some(next) = st.ready.next() {
            return Some((next, st));
        }
        let task = st.task.as_mut()?;
        while let Some(message) = st.relayed.recv().await {
            if let Some(out) = st.session.outward(message).await {
                return Some((out, st));
            }
        }
        // The relay closes when the call ends: what is left is its result.
        let outcome = task
            .await
            .unwrap_or_else(|e| Err(RpcError::internal(format!("call failed: {e}"))));
        st.task = None;
        Some((mcp::jsonrpc::response_body(&st.id, outcome), st))
    });
    reply::message_stream(messages)
}
