//! Forwarding a request to the replica that owns its session.
//!
//! One pool of keep-alive HTTP/1 connections (`crate::pool`, TCP_NODELAY)
//! serves all hops. The
//! request body is already buffered (it is bounded by `max_body_bytes`), so
//! when the owner cannot be reached the caller still has it and serves the
//! request itself if the owner provably never got it (see [`ForwardError`]).
//! The response, SSE included, streams back untouched.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderName};
use http::request::Parts;
use http::uri::PathAndQuery;
use http::{HeaderValue, Request, Response, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;

use super::hop::{HopError, HopTarget, Hops, HOP};
use super::ring::Member;
use crate::http::reply::Body;
use crate::pool::{Pool, PoolError};
use crate::redact::error_chain;
use crate::sync::lock;

/// Why a request could not be forwarded, by whether it may have reached the
/// owner: that decides whether the entering replica may serve it instead
/// without running it twice (the rule of Envoy's and gRPC's transparent retries).
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    /// The owner provably never got the request: serving it here is safe.
    #[error("owner not reached: {0}")]
    NotSent(#[from] NotSent),
    /// The request was (or may have been) written, then the owner failed:
    /// it may or may not have run there.
    #[error("owner failed after the request was sent: {}", error_chain(.0))]
    MaybeSent(#[source] hyper::Error),
    /// The owner's answer broke off after it began: the request ran, or may have.
    #[error("owner's answer was cut off: {}", error_chain(.0))]
    Cut(#[source] crate::pool::BodyError),
    /// The owner's answer began, then stopped arriving.
    #[error("owner's answer stalled for {0:?} after it began")]
    Stalled(Duration),
}

/// JSON answers up to this size are read whole before they are sent on.
const WHOLE_UP_TO: usize = 64 * 1024;

/// The ways a request provably did not reach its owner.
#[derive(Debug, thiserror::Error)]
pub enum NotSent {
    #[error("cannot build the forwarded request: {0}")]
    Request(String),
    #[error(transparent)]
    Hop(#[from] HopError),
    #[error("owner was unreachable less than {DOWN_FOR:?} ago")]
    RecentlyDown,
    /// Connection refused or timed out.
    #[error("{}", error_chain(.0))]
    Connect(#[source] PoolError),
    /// A fresh connection closed before the request was written (a pooled
    /// one is retried on another connection by the pool itself).
    #[error("{}", error_chain(.0))]
    Unwritten(#[source] PoolError),
}

/// Sorts a pool error by whether the request may have been written.
fn classify(e: PoolError) -> ForwardError {
    match e {
        PoolError::Sent(e) => ForwardError::MaybeSent(e),
        e @ PoolError::Unwritten(_) => NotSent::Unwritten(e).into(),
        e @ (PoolError::Connect(_) | PoolError::Uri) => NotSent::Connect(e).into(),
    }
}

/// Headers that belong to one connection, not to the request (RFC 9110 §7.6.1).
/// `Host` is not one of them here: the forwarded request keeps the client's
/// `Host` (and `Origin`), so the owner applies `http.allowed_hosts` to what the
/// client sent, not to the hop's own address (the client checks an explicit
/// `Host` header and only sets one when it is absent).
const HOP_BY_HOP: &[HeaderName] = &[
    header::CONNECTION,
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::CONTENT_LENGTH,
];

/// Removes the hop-by-hop headers. Each pass over the names finds one that
/// is there (usually only `Content-Length`), so only those are looked up and
/// removed, not every name in [`HOP_BY_HOP`].
fn strip(headers: &mut http::HeaderMap) {
    let hop_by_hop = |name: &&HeaderName| HOP_BY_HOP.contains(name) || name.as_str() == "keep-alive";
    while let Some(name) = headers.keys().find(hop_by_hop).cloned() {
        headers.remove(&name);
    }
}

pub struct Forwarder {
    pool: Pool<HttpConnector>,
    /// How long a small JSON answer may take to arrive whole once its head has.
    body_timeout: Duration,
    self_id: Arc<str>,
    hops: Arc<Hops>,
    /// Owners that just failed, skipped until the instant given: a dead or
    /// blackholed replica (still listed in a static member list) then costs
    /// one connect attempt per few seconds, not one per request.
    down: Mutex<HashMap<Arc<str>, Down>>,
    /// How many entries `down` has (written under its lock): while none, a
    /// hop neither takes the lock nor hashes an id.
    downs: AtomicUsize,
}

/// A replica not to send hops to, from `from` until `until`.
#[derive(Clone, Copy)]
struct Down {
    from: Instant,
    until: Instant,
    /// It announced that it is leaving (draining): only time ends this, not
    /// an answer to a hop sent before it left.
    leaving: bool,
}

/// On a draining replica's answers: milliseconds until its listener closes.
pub const DRAINING_HEADER: &str = "x-vmcp-draining";
const DRAINING: HeaderName = HeaderName::from_static(DRAINING_HEADER);

/// Peers stop sending hops to a draining replica this long before its
/// listener closes (transit and scheduling; a hop sent later could land on a
/// connection reset by the closing listener, after it was written).
const LEAVE_MARGIN: Duration = Duration::from_millis(300);

/// How long an owner that could not be reached is not tried again.
const DOWN_FOR: Duration = Duration::from_secs(3);

impl Forwarder {
    /// `idle`: how long a pooled connection to a peer is reused. It must be
    /// shorter than the peers' `http.idle_timeout` (which closes idle
    /// connections), or a request could be written to a connection the peer
    /// is closing, and a written request that fails is one whose outcome is
    /// unknown.
    /// `body_timeout`: how long an answer read whole may take after its head.
    pub fn new(
        self_id: &str,
        hops: Arc<Hops>,
        connect_timeout: Duration,
        idle: Duration,
        body_timeout: Duration,
    ) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(connect_timeout));
        // The request carries exactly the `Host` the hop signs (the
        // client's, or none), never one made up from the owner's address.
        Self {
            pool: Pool::new(connector, idle),
            body_timeout,
            self_id: Arc::from(self_id),
            hops,
            down: Mutex::default(),
            downs: AtomicUsize::new(0),
        }
    }

    /// Sends the request to `owner` with a signed hop header. On
    /// [`ForwardError::NotSent`] the caller may serve the request itself; on
    /// [`ForwardError::MaybeSent`] only if running it twice is harmless.
    pub async fn forward(
        &self,
        owner: &Member,
        parts: &Parts,
        body: Bytes,
        session: &str,
    ) -> Result<Response<Body>, ForwardError> {
        if self.is_down(&owner.id) {
            return Err(NotSent::RecentlyDown.into());
        }
        let result = self.send(owner, parts, body, session).await;
        // Only a failed connect says the owner is down; a request lost after
        // writing may be one bad connection.
        // Logged once per owner going down and once on its return, not per request.
        match &result {
            Err(ForwardError::NotSent(NotSent::Connect(e))) => {
                let now = Instant::now();
                let mark = Down {
                    from: now,
                    until: now + DOWN_FOR,
                    leaving: false,
                };
                let mut down = lock(&self.down);
                let fresh = down.insert(Arc::clone(&owner.id), mark).is_none();
                self.downs.store(down.len(), Ordering::Release);
                drop(down);
                if fresh {
                    tracing::warn!(owner = %owner.id, error = %e, "replica unreachable: its sessions go to the next owner");
                }
            }
            Ok(_) if self.downs.load(Ordering::Acquire) == 0 => {}
            Ok(_) => {
                let mut down = lock(&self.down);
                // Reachable again. (A leave announced by a draining replica,
                // noted in `send`, stays until it runs out.)
                let now = Instant::now();
                if down.get(&owner.id).is_some_and(|d| !d.leaving || d.until <= now) {
                    down.remove(&owner.id);
                    self.downs.store(down.len(), Ordering::Release);
                    tracing::info!(owner = %owner.id, "replica reachable again");
                }
            }
            Err(_) => {}
        }
        result
    }

    /// Whether replica `id` failed to accept a connection in the last few
    /// seconds (after that it is tried again; the entry stays until it answers).
    pub fn is_down(&self, id: &str) -> bool {
        if self.downs.load(Ordering::Acquire) == 0 {
            return false;
        }
        let now = Instant::now();
        lock(&self.down).get(id).is_some_and(|d| d.from <= now && now < d.until)
    }

    async fn send(
        &self,
        owner: &Member,
        parts: &Parts,
        body: Bytes,
        session: &str,
    ) -> Result<Response<Body>, ForwardError> {
        let target = HopTarget {
            to: &owner.id,
            method: parts.method.as_str(),
            path: parts.uri.path(),
            session,
            host: parts.headers.get(header::HOST).map(HeaderValue::as_bytes),
            origin: parts.headers.get(header::ORIGIN).map(HeaderValue::as_bytes),
            body: &body,
        };
        let hop = self
            .hops
            .sign(&self.self_id, &target, crate::store::unix_ms())
            .map_err(NotSent::Hop)?;
        let owner_uri = owner
            .uri
            .as_ref()
            .ok_or_else(|| NotSent::Request(format!("replica address `{}` is not host:port", owner.addr)))?;
        let mut request = Request::new(Full::new(body));
        *request.method_mut() = parts.method.clone();
        // Origin form on the wire: the pool connects to the owner's address.
        *request.uri_mut() = Uri::from(
            parts
                .uri
                .path_and_query()
                .cloned()
                .unwrap_or_else(|| PathAndQuery::from_static("/mcp")),
        );
        let headers = request.headers_mut();
        headers.clone_from(&parts.headers);
        strip(headers);
        headers.insert(
            HOP,
            HeaderValue::try_from(hop).map_err(|e| NotSent::Request(e.to_string()))?,
        );
        let response = self.pool.send(owner_uri, request).await.map_err(classify)?;
        let (mut parts, body) = response.into_parts();
        if let Some(left) = parts
            .headers
            .remove(DRAINING)
            .and_then(|v| v.to_str().ok().and_then(|v| v.parse::<u64>().ok()))
        {
            let leaving = Instant::now() + Duration::from_millis(left).saturating_sub(LEAVE_MARGIN);
            let mut down = lock(&self.down);
            if !down.get(&owner.id).is_some_and(|d| d.leaving) {
                tracing::info!(owner = %owner.id, in_ms = left, "replica draining: no hops to it shortly before it stops");
            }
            let until = leaving + DOWN_FOR;
            down.insert(
                Arc::clone(&owner.id),
                Down {
                    from: leaving,
                    until,
                    leaving: true,
                },
            );
            self.downs.store(down.len(), Ordering::Release);
        }
        // A small JSON answer is read whole before it is sent on: the client
        // gets it in one write (head and body together), and an owner that
        // fails halfway through it is an error here, not a cut response.
        let small_json = parts
            .headers
            .get(header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"application/json"))
            && parts
                .headers
                .get(header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok()?.parse::<usize>().ok())
                .is_some_and(|n| n <= WHOLE_UP_TO);
        strip(&mut parts.headers);
        if small_json {
            let whole = tokio::time::timeout(self.body_timeout, body.collect())
                .await
                .map_err(|_| ForwardError::Stalled(self.body_timeout))?
                .map_err(ForwardError::Cut)?
                .to_bytes();
            let body = Full::new(whole).map_err(|never| match never {}).boxed_unsync();
            return Ok(Response::from_parts(parts, body));
        }
        Ok(Response::from_parts(parts, body.map_err(Into::into).boxed_unsync()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strip_removes_every_hop_by_hop_header_and_keeps_the_rest() {
        let mut headers = http::HeaderMap::new();
        for (name, value) in [
            ("connection", "keep-alive"),
            ("keep-alive", "timeout=5"),
            ("content-length", "12"),
            ("te", "trailers"),
            ("transfer-encoding", "chunked"),
            ("host", "mcp.example.com"),
            ("mcp-session-id", "s1"),
        ] {
            headers.append(name, HeaderValue::from_static(value));
        }
        headers.append("connection", HeaderValue::from_static("close"));
        strip(&mut headers);
        let mut left: Vec<&str> = headers.keys().map(HeaderName::as_str).collect();
        left.sort_unstable();
        assert_eq!(left, ["host", "mcp-session-id"]);
    }
}
