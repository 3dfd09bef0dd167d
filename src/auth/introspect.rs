//! Opaque access tokens (`auth.inbound.introspection`): a token that is not a
//! JWT is sent to the issuer's introspection endpoint (RFC 7662), vmcp
//! authenticating as a confidential client, and judged on the answer as a
//! JWT is on its claims: `active`, a bearer token, this issuer, this
//! resource in `aud` (RFC 8707; an answer without `aud` is refused), within
//! `exp`/`nbf`, the required scopes.
//!
//! An answer is used for at most `cache_ttl` (never past the token's `exp`),
//! then the token is asked about again: that bounds how long a revoked token
//! keeps working on a replica. Refusals are remembered the same way (in a
//! smaller map), so a client retrying a revoked token does not reach the
//! issuer on every request. At most `max_concurrent` introspections are in
//! flight; more wait within `fetch_timeout`, so a flood of made-up tokens
//! costs the issuer a bounded rate and never delays a token already answered.
//! When the endpoint cannot be asked, tokens it has not answered (or whose
//! answer is too old) get 503: vmcp does not guess.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::{StatusCode, Uri};
use prometheus::{IntCounter, IntCounterVec, Opts, Registry};
use serde_json::{Map, Value};

use super::client_auth::{self, ClientAuth, Form, PostError};
use super::{AuthError, Principal};
use crate::backend::client::Client;
use crate::config::InboundAuthConfig;
use crate::sync::lock;
use crate::telemetry::Throttle;

/// Most answers remembered per replica: tokens that were active, and refused ones.
const ACCEPTED: usize = 10_000;
const REFUSED: usize = 1_000;

/// The endpoint refusing vmcp's credentials is warned about at most this often.
const WARN_EVERY: Duration = Duration::from_secs(60);

struct Answer {
    outcome: Result<Arc<Principal>, AuthError>,
    until: Instant,
}

pub struct Introspector {
    http: Client,
    client: ClientAuth,
    config: InboundAuthConfig,
    endpoint: tokio::sync::OnceCell<Uri>,
    cache_ttl: Duration,
    max_concurrent: usize,
    permits: tokio::sync::Semaphore,
    accepted: Mutex<HashMap<[u8; 32], Answer>>,
    refused: Mutex<HashMap<[u8; 32], Answer>>,
    /// `vmcp_auth_introspections_total` by outcome (answers reused from
    /// memory are not counted).
    counted: Outcomes,
    /// Warnings about vmcp's own credentials: at most one per
    /// [`WARN_EVERY`], however many requests meet them (each request is
    /// also answered 503, and logged as rejected).
    warnings: Throttle,
}

struct Outcomes {
    accepted: IntCounter,
    refused: IntCounter,
    unavailable: IntCounter,
}

impl Introspector {
    /// `None` unless `config` sets `introspection`.
    pub fn new(config: &InboundAuthConfig, registry: &Registry) -> Result<Option<Self>, AuthError> {
        let Some(settings) = &config.introspection else {
            return Ok(None);
        };
        let http = Client::new(config.fetch_timeout).map_err(|e| AuthError::Config(e.to_string()))?;
        let outcomes = IntCounterVec::new(
            Opts::new(
                "vmcp_auth_introspections_total",
                "Access tokens asked about at the issuer's introspection endpoint, by outcome (accepted, refused, unavailable)",
            ),
            &["outcome"],
        )
        .and_then(|c| registry.register(Box::new(c.clone())).map(|()| c))
        .map_err(|e| AuthError::Config(e.to_string()))?;
        Ok(Some(Self {
            http,
            client: ClientAuth {
                client_id: settings.client_id.clone(),
                client_secret: settings.client_secret.clone(),
                method: settings.auth_method,
            },
            endpoint: tokio::sync::OnceCell::new(),
            cache_ttl: settings.cache_ttl,
            max_concurrent: settings.max_concurrent.max(1),
            permits: tokio::sync::Semaphore::new(settings.max_concurrent.max(1)),
            accepted: Mutex::default(),
            refused: Mutex::default(),
            counted: Outcomes {
                accepted: outcomes.with_label_values(&["accepted"]),
                refused: outcomes.with_label_values(&["refused"]),
                unavailable: outcomes.with_label_values(&["unavailable"]),
            },
            warnings: Throttle::new(WARN_EVERY),
            config: config.clone(),
        }))
    }

    /// The caller that `token` stands for, by the issuer's word.
    /// `key`: the token's SHA-256.
    pub async fn principal(&self, token: &str, key: [u8; 32]) -> Result<Arc<Principal>, AuthError> {
        for answers in [&self.accepted, &self.refused] {
            if let Some(outcome) = remembered(answers, &key) {
                return outcome;
            }
        }
        let asked = Instant::now();
        let answer = self.ask(token).await.inspect_err(|_| self.counted.unavailable.inc())?;
        let now = jsonwebtoken::get_current_timestamp();
        let outcome = judge(&answer, now, &self.config).map(Arc::new);
        // Kept until the cache's bound, or the token's own end if sooner.
        let (life, answers, cap) = match &outcome {
            Ok(p) => {
                self.counted.accepted.inc();
                let left = Duration::from_secs(p.expires.saturating_sub(now));
                (left.min(self.cache_ttl), &self.accepted, ACCEPTED)
            }
            Err(_) => {
                self.counted.refused.inc();
                (self.cache_ttl, &self.refused, REFUSED)
            }
        };
        let mut answers = lock(answers);
        if answers.len() >= cap {
            answers.retain(|_, a| a.until > asked);
            if answers.len() >= cap {
                answers.clear();
            }
        }
        answers.insert(
            key,
            Answer {
                outcome: outcome.clone(),
                until: asked + life,
            },
        );
        outcome
    }

    /// The endpoint's answer about `token` (a JSON object), or why there is none.
    async fn ask(&self, token: &str) -> Result<Map<String, Value>, AuthError> {
        let unavailable = |why: String| AuthError::Unavailable(format!("introspection: {why}"));
        let timeout = self.config.fetch_timeout;
        let _permit = tokio::time::timeout(timeout, self.permits.acquire())
            .await
            .map_err(|_| unavailable(format!("{} requests in flight for {timeout:?}", self.max_concurrent)))?
            .map_err(|_| unavailable("closed".into()))?;
        let endpoint = self.endpoint().await.map_err(unavailable)?;
        let mut form = Form::default();
        form.push("token", token);
        form.push("token_type_hint", "access_token");
        let (status, body) = self
            .client
            .post(&self.http, endpoint, form, timeout)
            .await
            .map_err(|e: PostError| unavailable(e.to_string()))?;
        if status != StatusCode::OK {
            let why = client_auth::refusal(status, &body);
            if matches!(status, StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN) && self.warnings.due() {
                tracing::warn!(status = status.as_u16(), error = %why, "the introspection endpoint refuses vmcp's client credentials");
            }
            return Err(unavailable(format!("the endpoint answered {why}")));
        }
        serde_json::from_slice::<Map<String, Value>>(&body)
            .map_err(|_| unavailable("the answer is not a JSON object (RFC 7662 §2.2)".into()))
    }

    /// Configured, or discovered once from the issuer's metadata.
    async fn endpoint(&self) -> Result<&Uri, String> {
        self.endpoint
            .get_or_try_init(|| async {
                let configured = self.config.introspection.as_ref().and_then(|i| i.endpoint.clone());
                let url = match configured {
                    Some(url) => url,
                    None => super::metadata::discover(&self.http, &self.config.issuer, self.config.fetch_timeout)
                        .await?
                        .introspection_endpoint
                        .ok_or_else(|| "the issuer's metadata has no introspection_endpoint".to_owned())?,
                };
                url.parse().map_err(|_| format!("`{url}` is not a URL"))
            })
            .await
    }
}

/// A remembered outcome for `key` that is still good; drops a stale one.
fn remembered(answers: &Mutex<HashMap<[u8; 32], Answer>>, key: &[u8; 32]) -> Option<Result<Arc<Principal>, AuthError>> {
    let mut answers = lock(answers);
    let answer = answers.get(key)?;
    if answer.until > Instant::now() {
        return Some(answer.outcome.clone());
    }
    answers.remove(key);
    None
}

/// The principal of an introspection answer, or why it is refused.
fn judge(answer: &Map<String, Value>, now: u64, config: &InboundAuthConfig) -> Result<Principal, AuthError> {
    let invalid = |why: &str| Err(AuthError::Invalid(why.to_owned()));
    if answer.get("active") != Some(&Value::Bool(true)) {
        return invalid("token is not active");
    }
    // A DPoP-bound or refresh token is not a bearer access token.
    if let Some(kind) = answer.get("token_type").and_then(Value::as_str) {
        if !kind.eq_ignore_ascii_case("bearer") && kind != "access_token" {
            return invalid("not a bearer access token");
        }
    }
    if let Some(iss) = answer.get("iss").and_then(Value::as_str) {
        if iss.trim_end_matches('/') != config.issuer.trim_end_matches('/') {
            return invalid("token from another issuer");
        }
    }
    let for_us = match answer.get("aud") {
        Some(Value::String(aud)) => *aud == config.audience,
        Some(Value::Array(auds)) => auds.iter().any(|a| a.as_str() == Some(&config.audience)),
        _ => false,
    };
    if !for_us {
        return invalid("token is for another audience");
    }
    let leeway = config.leeway.as_secs();
    let time = |k: &str| answer.get(k).and_then(Value::as_u64);
    if time("exp").is_some_and(|exp| now > exp + leeway) {
        return invalid("token expired");
    }
    if time("nbf").is_some_and(|nbf| nbf > now + leeway) {
        return invalid("token not valid yet (nbf)");
    }
    super::principal(answer, config)
}

#[cfg(test)]
mod tests;
