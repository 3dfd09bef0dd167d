//! The affinity step in front of the session lookup: a request for a session
//! owned by another replica is forwarded there, once.

use bytes::Bytes;
use http::request::Parts;
use http::{Response, StatusCode};

use super::mcp::{header_str, reject};
use super::reply::{Body, SESSION_HEADER};
use crate::affinity::{HopTarget, Placement, HOP_HEADER};
use crate::app::App;
use crate::mcp::RpcError;

/// `Some(response)` when the request was answered by its owner (or refused
/// for a bad hop header); `None` when this replica serves it: it owns the
/// session, the request came over a valid hop, has no session yet
/// (`initialize`), or the owner could not be reached.
pub async fn to_owner(app: &App, parts: &Parts, body: &Bytes) -> Option<Response<Body>> {
    let session = header_str(&parts.headers, SESSION_HEADER)?;
    if let Some(hop) = parts.headers.get(HOP_HEADER) {
        let target = HopTarget {
            method: parts.method.as_str(),
            path: parts.uri.path(),
            session,
        };
        let verdict = hop
            .to_str()
            .map_err(|_| crate::affinity::hop::HopError::Malformed)
            .and_then(|h| app.hops.verify(h, &target, crate::store::unix_ms()));
        return match verdict {
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
        };
    }
    let Placement::Remote(owner) = app.membership.place(session) else {
        return None;
    };
    match app.forwarder.forward(&owner, parts, body.clone(), session).await {
        Ok(response) => {
            app.metrics.requests_forwarded.with_label_values(&["ok"]).inc();
            Some(response)
        }
        Err(e) => {
            app.metrics.requests_forwarded.with_label_values(&["failed"]).inc();
            tracing::warn!(owner = %owner.id, error = %e, "owner unreachable; serving here");
            None
        }
    }
}
