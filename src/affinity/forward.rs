//! Forwarding a request to the replica that owns its session.
//!
//! One pooled keep-alive HTTP/1 client (TCP_NODELAY) serves all hops. The
//! request body is already buffered (it is bounded by `max_body_bytes`), so
//! when the owner cannot be reached the caller still has it and serves the
//! request itself. The response, SSE included, streams back untouched.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderName};
use http::request::Parts;
use http::{HeaderValue, Request, Response};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use super::hop::{HopError, HopTarget, Hops, HOP_HEADER};
use super::ring::Member;
use crate::http::reply::Body;
use crate::sync::lock;

#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error("cannot build the forwarded request: {0}")]
    Request(String),
    #[error("owner unreachable: {0}")]
    Unreachable(String),
    #[error(transparent)]
    Hop(#[from] HopError),
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

fn strip(headers: &mut http::HeaderMap) {
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
    headers.remove("keep-alive");
}

pub struct Forwarder {
    client: Client<HttpConnector, Full<Bytes>>,
    self_id: Arc<str>,
    hops: Arc<Hops>,
    /// Owners that just failed, skipped until the instant given: a dead or
    /// blackholed replica (still listed in a static member list) then costs
    /// one connect attempt per few seconds, not one per request.
    down: Mutex<HashMap<Arc<str>, Instant>>,
}

/// How long an owner that could not be reached is not tried again.
const DOWN_FOR: Duration = Duration::from_secs(3);

impl Forwarder {
    pub fn new(self_id: &str, hops: Arc<Hops>, connect_timeout: Duration) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(connect_timeout));
        // `set_host(false)`: the request carries exactly the `Host` the hop
        // signs (the client's, or none), never one made up from the owner's address.
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .set_host(false)
            .build(connector);
        Self {
            client,
            self_id: Arc::from(self_id),
            hops,
            down: Mutex::default(),
        }
    }

    /// Sends the request to `owner` with a signed hop header. An error means
    /// the owner did not answer: the caller serves the request itself.
    pub async fn forward(
        &self,
        owner: &Member,
        parts: &Parts,
        body: Bytes,
        session: &str,
    ) -> Result<Response<Body>, ForwardError> {
        if self.is_down(&owner.id) {
            return Err(ForwardError::Unreachable("recently unreachable".into()));
        }
        let result = self.send(owner, parts, body, session).await;
        if matches!(result, Err(ForwardError::Unreachable(_))) {
            let until = Instant::now() + DOWN_FOR;
            lock(&self.down).insert(Arc::clone(&owner.id), until);
        }
        result
    }

    fn is_down(&self, id: &Arc<str>) -> bool {
        let mut down = lock(&self.down);
        match down.get(id) {
            Some(until) if *until > Instant::now() => true,
            Some(_) => {
                down.remove(id);
                false
            }
            None => false,
        }
    }

    async fn send(
        &self,
        owner: &Member,
        parts: &Parts,
        body: Bytes,
        session: &str,
    ) -> Result<Response<Body>, ForwardError> {
        let path = parts.uri.path_and_query().map_or("/mcp", |p| p.as_str());
        let target = HopTarget {
            to: &owner.id,
            method: parts.method.as_str(),
            path: parts.uri.path(),
            session,
            host: parts.headers.get(header::HOST).map(HeaderValue::as_bytes),
            origin: parts.headers.get(header::ORIGIN).map(HeaderValue::as_bytes),
            body: &body,
        };
        let hop = self.hops.sign(&self.self_id, &target, crate::store::unix_ms())?;
        let mut headers = parts.headers.clone();
        strip(&mut headers);
        headers.insert(
            HOP_HEADER,
            HeaderValue::from_str(&hop).map_err(|e| ForwardError::Request(e.to_string()))?,
        );
        let mut request = Request::builder()
            .method(parts.method.clone())
            .uri(format!("http://{}{path}", owner.addr))
            .body(Full::new(body))
            .map_err(|e| ForwardError::Request(e.to_string()))?;
        *request.headers_mut() = headers;
        let response = self
            .client
            .request(request)
            .await
            .map_err(|e| ForwardError::Unreachable(e.to_string()))?;
        let (mut parts, body) = response.into_parts();
        strip(&mut parts.headers);
        Ok(Response::from_parts(parts, body.map_err(Into::into).boxed_unsync()))
    }
}
