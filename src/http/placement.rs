//! The affinity step in front of the session lookup: a request for a session
//! owned by another replica is forwarded there, once.

use bytes::Bytes;
use http::request::Parts;
use http::{Method, Response, StatusCode};
use serde_json::Value;

use super::exec::{header_str, reject};
use super::reply::{self, Body};
use crate::affinity::forward::ForwardError;
use crate::affinity::{HopTarget, Placement, HOP};
use crate::app::App;
use crate::mcp::headers::SESSION;
use crate::mcp::RpcError;

/// `Some(response)` when the request was answered by its owner (or refused
/// for a bad hop header, or lost with an owner that failed after it was sent
/// and not safe to run again); `None` when this replica serves it: it owns the
/// session, the request came over a valid hop, has no session yet
/// (`initialize`), the owner provably never got it, or it is a read.
pub async fn to_owner(app: &App, parts: &Parts, body: &Bytes) -> Option<Response<Body>> {
    let session = header_str(&parts.headers, SESSION)?;
    to_owner_of(app, parts, body, session).await
}

/// [`to_owner`] for the session `session` (a stateless request's pooled session).
pub async fn to_owner_of(app: &App, parts: &Parts, body: &Bytes, session: &str) -> Option<Response<Body>> {
    if let Some(verdict) = over_hop(app, parts, body, session) {
        return verdict;
    }
    to_hashed_owner(app, parts, body, session).await
}

/// The session's owner by placement (pinned, or its hash), as [`to_owner_of`]
/// says, for a request that did not come over a hop.
async fn to_hashed_owner(app: &App, parts: &Parts, body: &Bytes, session: &str) -> Option<Response<Body>> {
    // An owner that just refused connections counts as gone: the session
    // goes where every replica that saw the same failure sends it (its
    // rendezvous owner among the others), not to whichever replica the
    // client happened to enter, so it is rebuilt once, in one place.
    let down = |id: &str| app.forwarder.is_down(id);
    let mut tried = None;
    loop {
        let Placement::Remote(owner) = app.membership.place_avoiding(session, &down) else {
            return None;
        };
        if tried.as_ref() == Some(&owner.id) {
            return None; // it went down again meanwhile: serve here
        }
        match forward_once(app, &owner, parts, body, session).await {
            Forwarded::Answered(response) => return response,
            Forwarded::NotSent => tried = Some(owner.id.clone()),
        }
    }
}

/// [`to_owner_of`] for a caller's pooled session: under pinned placement
/// it stays on the replica that created it, like a pinned session (see
/// [`crate::affinity::homes`]), while that replica is a member and answers;
/// otherwise it is placed by its hash.
pub async fn to_pool_owner(app: &App, parts: &Parts, body: &Bytes, pool: &str) -> Option<Response<Body>> {
    if let Some(verdict) = over_hop(app, parts, body, pool) {
        return verdict;
    }
    if let Some(home) = pool_home(app, pool).await {
        if *home == *app.config.replica_id {
            return None;
        }
        if let Some(answered) = forward_to(app, &home, parts, body, pool).await {
            return answered;
        }
    }
    to_hashed_owner(app, parts, body, pool).await
}

/// Forwards to replica `id` if it is another member (draining included)
/// that is not down: `Some` with what to answer (`None` inside: serve here,
/// as after a failed read), or `None` when the request was not sent.
async fn forward_to(app: &App, id: &str, parts: &Parts, body: &Bytes, session: &str) -> Option<Option<Response<Body>>> {
    if app.forwarder.is_down(id) {
        return None;
    }
    let member = app.membership.member(id)?;
    match forward_once(app, &member, parts, body, session).await {
        Forwarded::Answered(response) => Some(response),
        Forwarded::NotSent => None,
    }
}

/// The replica that created `pool` (pinned placement only): remembered, or
/// read from its record in the store once. `None` for a pool not created
/// yet, or when the store cannot say (it is then placed by its hash).
async fn pool_home(app: &App, pool: &str) -> Option<std::sync::Arc<str>> {
    let homes = app.pool_homes.as_ref()?;
    if let Some(home) = homes.get(pool) {
        return Some(home);
    }
    let record = app.manager.store().get(pool).await.ok()??;
    Some(homes.remember(pool, record.replica.as_deref()?))
}

/// [`to_owner_of`], but to the replica `replica` rather than the session's
/// owner: a request for something only that replica holds (a paused call),
/// wherever the session's owner is now. `None` (serve here) when this is
/// that replica, or it is no longer a member or cannot be reached: what it
/// held is gone, and serving here says so.
pub async fn to_replica(
    app: &App,
    parts: &Parts,
    body: &Bytes,
    session: &str,
    replica: &str,
) -> Option<Response<Body>> {
    if let Some(verdict) = over_hop(app, parts, body, session) {
        return verdict;
    }
    if replica == app.config.replica_id {
        return None;
    }
    forward_to(app, replica, parts, body, session).await.flatten()
}

/// For a request that came over a hop: `Some(None)` to serve it here (a
/// valid hop), `Some(Some(refusal))` for a bad hop header; `None` if it came
/// from a client.
fn over_hop(app: &App, parts: &Parts, body: &Bytes, session: &str) -> Option<Option<Response<Body>>> {
    let hop = parts.headers.get(HOP)?;
    let target = HopTarget {
        to: &app.config.replica_id,
        method: parts.method.as_str(),
        path: parts.uri.path(),
        session,
        host: parts.headers.get(http::header::HOST).map(http::HeaderValue::as_bytes),
        origin: parts.headers.get(http::header::ORIGIN).map(http::HeaderValue::as_bytes),
        body,
    };
    let verdict = hop
        .to_str()
        .map_err(|_| crate::affinity::hop::HopError::Malformed)
        .and_then(|h| app.hops.verify(h, &target, crate::store::unix_ms()));
    Some(match verdict {
        Ok(from) => {
            tracing::debug!(from = %from, "serving a forwarded request");
            None
        }
        Err(e) => {
            // Counted, and logged once at info by `reject`: any client
            // can send a hop header, so a warning here would let it flood the logs.
            app.metrics.hops_refused.inc();
            Some(reject(
                RpcError::invalid_request(e.to_string()).with_status(StatusCode::FORBIDDEN),
                None,
            ))
        }
    })
}

enum Forwarded {
    /// `Some`: the response to send; `None`: serve here.
    Answered(Option<Response<Body>>),
    /// The owner provably never got it (it is marked down now): place again.
    NotSent,
}

async fn forward_once(
    app: &App,
    owner: &crate::affinity::ring::Member,
    parts: &Parts,
    body: &Bytes,
    session: &str,
) -> Forwarded {
    match app.forwarder.forward(owner, parts, body.clone(), session).await {
        Ok(response) => {
            app.metrics.forwarded_ok.inc();
            Forwarded::Answered(Some(response))
        }
        Err(ForwardError::NotSent(e)) => {
            app.metrics.requests_forwarded.with_label_values(&["failed"]).inc();
            // Logged once per owner going down, by the forwarder.
            tracing::debug!(owner = %owner.id, error = %e, "owner unreachable; placing the session again");
            Forwarded::NotSent
        }
        Err(e @ (ForwardError::MaybeSent(_) | ForwardError::Cut(_) | ForwardError::Stalled(_))) => {
            match rerun(&parts.method, body) {
                Rerun::Safe => {
                    app.metrics.requests_forwarded.with_label_values(&["retried"]).inc();
                    tracing::warn!(owner = %owner.id, error = %e, "owner failed; retrying an idempotent request here");
                    Forwarded::Answered(None)
                }
                Rerun::Unsafe(id) => {
                    app.metrics
                        .requests_forwarded
                        .with_label_values(&["outcome_unknown"])
                        .inc();
                    tracing::warn!(owner = %owner.id, error = %e, "owner failed after the request was sent; outcome unknown");
                    Forwarded::Answered(Some(reply::error(&RpcError::outcome_unknown(), id.as_ref())))
                }
            }
        }
    }
}

/// Whether a request that may have run on a failed owner may run here too.
#[derive(Debug, PartialEq)]
enum Rerun {
    Safe,
    /// Not known to be idempotent; the request's id, if it has one.
    Unsafe(Option<Value>),
}

/// Requests whose repetition changes nothing: reads.
const IDEMPOTENT: &[&str] = &["ping", "resources/read", "prompts/get", "completion/complete"];

fn idempotent_request(message: &Value) -> bool {
    let method = message.get("method").and_then(Value::as_str);
    message.get("id").is_some() && method.is_some_and(|m| m.ends_with("/list") || IDEMPOTENT.contains(&m))
}

/// GET (a stream of what the session says) and DELETE (ending a session
/// twice ends it once) may run again; a POST only if every message in it is
/// a read. A body that is not JSON runs nothing anywhere. Notifications,
/// client responses, `tools/call` and anything unknown may not.
fn rerun(method: &Method, body: &[u8]) -> Rerun {
    if method != Method::POST {
        return Rerun::Safe;
    }
    let Ok(message) = serde_json::from_slice::<Value>(body) else {
        return Rerun::Safe;
    };
    match &message {
        Value::Array(items) if !items.is_empty() && items.iter().all(idempotent_request) => Rerun::Safe,
        Value::Array(_) => Rerun::Unsafe(None),
        single if idempotent_request(single) => Rerun::Safe,
        single => Rerun::Unsafe(
            single
                .get("id")
                .filter(|id| id.is_string() || id.is_i64() || id.is_u64())
                .cloned(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn post(body: Value) -> Rerun {
        rerun(&Method::POST, body.to_string().as_bytes())
    }

    #[test]
    fn only_reads_run_again_after_an_owner_failed() {
        for method in [
            "tools/list",
            "prompts/list",
            "resources/list",
            "resources/templates/list",
            "resources/read",
            "prompts/get",
            "ping",
            "completion/complete",
        ] {
            assert_eq!(
                post(json!({"jsonrpc": "2.0", "id": 1, "method": method})),
                Rerun::Safe,
                "{method}"
            );
        }
        assert_eq!(
            post(json!({"jsonrpc": "2.0", "id": 7, "method": "tools/call"})),
            Rerun::Unsafe(Some(json!(7)))
        );
        assert_eq!(
            post(json!({"jsonrpc": "2.0", "id": "x", "method": "resources/subscribe"})),
            Rerun::Unsafe(Some(json!("x")))
        );
        assert_eq!(
            post(json!({"jsonrpc": "2.0", "method": "notifications/cancelled"})),
            Rerun::Unsafe(None)
        );
        assert_eq!(
            post(json!({"jsonrpc": "2.0", "id": 3, "result": {}})),
            Rerun::Unsafe(Some(json!(3)))
        );
        assert_eq!(
            post(json!([{"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
                        {"jsonrpc": "2.0", "id": 2, "method": "ping"}])),
            Rerun::Safe
        );
        assert_eq!(
            post(json!([{"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
                        {"jsonrpc": "2.0", "id": 2, "method": "tools/call"}])),
            Rerun::Unsafe(None)
        );
        assert_eq!(rerun(&Method::GET, b""), Rerun::Safe);
        assert_eq!(rerun(&Method::DELETE, b""), Rerun::Safe);
        assert_eq!(rerun(&Method::POST, b"{not json"), Rerun::Safe);
    }
}
