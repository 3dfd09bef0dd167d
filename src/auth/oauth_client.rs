//! vmcp as an OAuth client toward the backends' authorization server
//! (`backends[].auth`): its own token by the client credentials grant, or the
//! caller's token exchanged (RFC 8693) for one whose audience is the backend.
//!
//! Tokens are cached and renewed `refresh_before` their expiry: vmcp's own
//! token once per backend, exchanged ones per caller token (by its SHA-256,
//! bounded). A renewal is single-flight for vmcp's own token; exchanges of
//! distinct caller tokens run side by side. Secrets and tokens never reach
//! an error message: the authorization server's `error` code does.

use std::collections::HashMap;
use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant};

use http::{HeaderValue, Uri};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::client_auth::{self, ClientAuth, Form, PostError};
use crate::backend::client::Client;
use crate::config::TokenClientConfig;
use crate::sync::lock;

/// Most exchanged tokens kept per backend.
const EXCHANGED: usize = 10_000;
/// The life assumed for a token whose response gives no `expires_in`.
const UNSTATED_LIFE: Duration = Duration::from_secs(60);

const TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
const ACCESS_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:access_token";

#[derive(Debug, Clone, thiserror::Error)]
pub enum TokenError {
    /// The authorization server could not be asked (metadata, network, timeout).
    #[error("authorization server unreachable: {0}")]
    Unreachable(String),
    /// It answered, and refused (its `error` code, never the request).
    #[error("authorization server refused the token request: {0}")]
    Refused(String),
}

/// A cached `Authorization` value and when to stop using it.
#[derive(Clone)]
struct Token {
    header: HeaderValue,
    renew_at: Instant,
}

impl Token {
    fn usable(&self) -> Option<HeaderValue> {
        (Instant::now() < self.renew_at).then(|| self.header.clone())
    }
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    #[serde(default)]
    token_type: Option<String>,
    #[serde(default)]
    expires_in: Option<u64>,
}

pub struct TokenClient {
    http: Client,
    config: TokenClientConfig,
    client: ClientAuth,
    /// RFC 8707 `resource`: configured, else the backend's URL.
    resource: String,
    endpoint: tokio::sync::OnceCell<Uri>,
    own: RwLock<Option<Token>>,
    renewing: tokio::sync::Mutex<()>,
    exchanged: Mutex<HashMap<[u8; 32], Token>>,
}

impl TokenClient {
    pub fn new(config: TokenClientConfig, backend_resource: String) -> Result<Self, TokenError> {
        let http = Client::new(config.timeout).map_err(|e| TokenError::Unreachable(e.to_string()))?;
        Ok(Self {
            http,
            client: ClientAuth {
                client_id: config.client_id.clone(),
                client_secret: config.client_secret.clone(),
                method: config.auth_method,
            },
            resource: config.resource.clone().unwrap_or(backend_resource),
            config,
            endpoint: tokio::sync::OnceCell::new(),
            own: RwLock::default(),
            renewing: tokio::sync::Mutex::new(()),
            exchanged: Mutex::default(),
        })
    }

    /// vmcp's own token for the backend (client credentials).
    pub async fn own(&self) -> Result<HeaderValue, TokenError> {
        if let Some(header) = self.held_own() {
            return Ok(header);
        }
        let _renewing = self.renewing.lock().await;
        if let Some(header) = self.held_own() {
            return Ok(header); // renewed while this caller waited
        }
        // Boxed: a token request is rare, and large in every caller's state.
        let token = Box::pin(self.request(self.grant_form("client_credentials"))).await?;
        let header = token.header.clone();
        *self.own.write().unwrap_or_else(|p| p.into_inner()) = Some(token);
        Ok(header)
    }

    fn held_own(&self) -> Option<HeaderValue> {
        self.own.read().unwrap_or_else(|p| p.into_inner()).as_ref()?.usable()
    }

    /// Drops vmcp's own token if it is still `used` (the backend refused it).
    pub fn forget_own(&self, used: &HeaderValue) {
        let mut own = self.own.write().unwrap_or_else(|p| p.into_inner());
        if own.as_ref().is_some_and(|t| t.header == used) {
            *own = None;
        }
    }

    /// The caller's token exchanged for one for the backend (RFC 8693).
    pub async fn exchange(&self, subject_token: &str) -> Result<HeaderValue, TokenError> {
        let key = digest(subject_token);
        if let Some(header) = lock(&self.exchanged).get(&key).and_then(Token::usable) {
            return Ok(header);
        }
        let mut form = self.grant_form(TOKEN_EXCHANGE);
        for (k, v) in [
            ("subject_token", subject_token),
            ("subject_token_type", ACCESS_TOKEN_TYPE),
            ("requested_token_type", ACCESS_TOKEN_TYPE),
        ] {
            form.push(k, v);
        }
        if let Some(audience) = &self.config.audience {
            form.push("audience", audience);
        }
        let token = Box::pin(self.request(form)).await?;
        let header = token.header.clone();
        let mut exchanged = lock(&self.exchanged);
        if exchanged.len() >= EXCHANGED {
            let now = Instant::now();
            exchanged.retain(|_, t| t.renew_at > now);
            if exchanged.len() >= EXCHANGED {
                exchanged.clear();
            }
        }
        exchanged.insert(key, token);
        Ok(header)
    }

    /// Drops the exchanged token of `subject_token` (the backend refused it).
    pub fn forget_exchanged(&self, subject_token: &str) {
        lock(&self.exchanged).remove(&digest(subject_token));
    }

    /// `grant_type`, `resource` and `scope`.
    fn grant_form(&self, grant_type: &str) -> Form {
        let mut form = Form::default();
        form.push("grant_type", grant_type);
        form.push("resource", &self.resource);
        if let Some(scope) = &self.config.scope {
            form.push("scope", scope);
        }
        form
    }

    async fn request(&self, form: Form) -> Result<Token, TokenError> {
        let endpoint = self.endpoint().await?;
        let asked = Instant::now();
        let (status, body) = self
            .client
            .post(&self.http, endpoint, form, self.config.timeout)
            .await
            .map_err(|e| match e {
                PostError::Unreachable(why) => TokenError::Unreachable(why),
                PostError::Credentials => TokenError::Refused(e.to_string()),
            })?;
        if !status.is_success() {
            return Err(TokenError::Refused(client_auth::refusal(status, &body)));
        }
        let answer: TokenResponse = serde_json::from_slice(&body)
            .map_err(|_| TokenError::Refused("the token response is not one (RFC 6749 §5.1)".into()))?;
        if answer
            .token_type
            .as_deref()
            .is_some_and(|t| !t.eq_ignore_ascii_case("bearer"))
        {
            return Err(TokenError::Refused("the token issued is not a bearer token".into()));
        }
        let mut header = HeaderValue::from_str(&format!("Bearer {}", answer.access_token))
            .map_err(|_| TokenError::Refused("the access token is not a valid header value".into()))?;
        header.set_sensitive(true);
        let life = answer.expires_in.map_or(UNSTATED_LIFE, Duration::from_secs);
        // Renewed `refresh_before` its end, or halfway through a shorter life.
        let early = self.config.refresh_before.min(life / 2);
        Ok(Token {
            header,
            renew_at: asked + life - early,
        })
    }

    /// The token endpoint: configured, or discovered once from the issuer.
    async fn endpoint(&self) -> Result<&Uri, TokenError> {
        self.endpoint
            .get_or_try_init(|| async {
                let url = match (&self.config.token_url, &self.config.issuer) {
                    (Some(url), _) => url.clone(),
                    (None, Some(issuer)) => super::metadata::discover(&self.http, issuer, self.config.timeout)
                        .await
                        .map_err(TokenError::Unreachable)?
                        .token_endpoint
                        .ok_or_else(|| TokenError::Unreachable("the issuer's metadata has no token_endpoint".into()))?,
                    (None, None) => return Err(TokenError::Unreachable("no token_url and no issuer".into())),
                };
                url.parse()
                    .map_err(|_| TokenError::Unreachable("the token endpoint is not a URL".into()))
            })
            .await
    }
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}
