//! A backend that is an OAuth resource server: a guard in front of the test
//! backend that lets a request through only with a bearer JWT signed by the
//! OpenID provider's keys, issued by it, and whose `aud` is the backend's own
//! URL (RFC 8707). It records every token it saw, and can be told to refuse
//! everything (a backend that revoked vmcp's access).

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::Value;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What the guard accepts, and what it saw.
pub struct BearerRule {
    issuer: String,
    keys: JwkSet,
    /// Answer 401 to everything.
    pub refuse: AtomicBool,
    /// Every token seen (accepted or not), with its claims if it verified.
    pub seen: Mutex<Vec<(String, Option<Value>)>>,
    pub refused: AtomicUsize,
}

impl BearerRule {
    pub fn new(issuer: String, jwks: &Value) -> Arc<Self> {
        Arc::new(Self {
            issuer,
            keys: serde_json::from_value(jwks.clone()).expect("a JWKS"),
            refuse: AtomicBool::new(false),
            seen: Mutex::default(),
            refused: AtomicUsize::new(0),
        })
    }

    /// The claims of `token` if it is valid for `audience`.
    fn verify(&self, token: &str, audience: &str) -> Option<Value> {
        let kid = jsonwebtoken::decode_header(token).ok()?.kid?;
        let jwk = self.keys.find(&kid)?;
        let mut validation = Validation::new(Algorithm::RS256);
        validation.set_issuer(&[&self.issuer]);
        validation.set_audience(&[audience]);
        let key = DecodingKey::from_jwk(jwk).ok()?;
        Some(jsonwebtoken::decode::<Value>(token, &key, &validation).ok()?.claims)
    }

    /// The distinct tokens that verified, in the order first seen.
    pub fn accepted(&self) -> Vec<(String, Value)> {
        let mut out: Vec<(String, Value)> = Vec::new();
        for (token, claims) in self.seen.lock().unwrap().iter() {
            if let Some(c) = claims {
                if !out.iter().any(|(t, _)| t == token) {
                    out.push((token.clone(), c.clone()));
                }
            }
        }
        out
    }

    /// Every token seen, verified or not.
    pub fn tokens(&self) -> Vec<String> {
        self.seen.lock().unwrap().iter().map(|(t, _)| t.clone()).collect()
    }
}

/// The guard as a tower service around the backend's.
#[derive(Clone)]
pub struct Guarded<S> {
    pub inner: S,
    pub rule: Arc<BearerRule>,
    pub audience: Arc<str>,
}

impl<S, B> tower_service::Service<http::Request<hyper::body::Incoming>> for Guarded<S>
where
    S: tower_service::Service<http::Request<hyper::body::Incoming>, Response = http::Response<B>>,
    S::Future: Send + 'static,
    B: hyper::body::Body<Data = Bytes> + Send + Sync + 'static,
    B::Error: Into<BoxError>,
{
    type Response = http::Response<BoxBody<Bytes, BoxError>>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<hyper::body::Incoming>) -> Self::Future {
        let token = req
            .headers()
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::to_owned);
        let claims = token.as_deref().and_then(|t| self.rule.verify(t, &self.audience));
        if let Some(t) = &token {
            self.rule.seen.lock().unwrap().push((t.clone(), claims.clone()));
        }
        if claims.is_none() || self.rule.refuse.load(Ordering::SeqCst) {
            self.rule.refused.fetch_add(1, Ordering::SeqCst);
            let body = Full::new(Bytes::from_static(b"{\"error\":\"invalid_token\"}"))
                .map_err(|e: Infallible| match e {})
                .boxed();
            let response = http::Response::builder()
                .status(401)
                .header("www-authenticate", "Bearer error=\"invalid_token\"")
                .body(body)
                .unwrap();
            return Box::pin(async move { Ok(response) });
        }
        let call = self.inner.call(req);
        Box::pin(async move { Ok(call.await?.map(|b| b.map_err(Into::into).boxed())) })
    }
}
