//! What a request to a backend carries to be authorized (`backends[].auth`):
//! vmcp's own token (client credentials), the caller's token exchanged for
//! one for the backend, or (explicitly) the caller's token itself.
//!
//! A backend that answers 401 refused the request before acting on it: the
//! token is forgotten and the request sent once more with a fresh one; a
//! second 401 is the client's error naming the backend (never vmcp's 401).

use std::sync::{Arc, RwLock};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, StatusCode};

use super::client::Client;
use super::BackendError;
use crate::auth::oauth_client::{TokenClient, TokenError};
use crate::config::BackendAuthConfig;

pub enum Credentials {
    Own(TokenClient),
    Exchange(TokenClient),
    Passthrough,
}

/// The access token a client session's latest request came with: what is
/// exchanged or passed on, also for requests no client waits for (a
/// notice, the backend's GET stream, the DELETE at the end).
pub struct CallerToken(RwLock<Arc<str>>);

impl CallerToken {
    pub fn new(token: &str) -> Self {
        Self(RwLock::new(Arc::from(token)))
    }

    /// Keeps `token` if it differs from the one held (a refreshed token).
    pub fn refresh(&self, token: &str) {
        if *self.get() != *token {
            *self.0.write().unwrap_or_else(|p| p.into_inner()) = Arc::from(token);
        }
    }

    pub fn get(&self) -> Arc<str> {
        Arc::clone(&self.0.read().unwrap_or_else(|p| p.into_inner()))
    }
}

fn refused(e: TokenError) -> BackendError {
    BackendError::Credentials(e.to_string())
}

impl Credentials {
    pub fn new(config: &BackendAuthConfig, backend_resource: String) -> Result<Self, BackendError> {
        Ok(match config {
            BackendAuthConfig::ClientCredentials(c) => {
                Self::Own(TokenClient::new(c.clone(), backend_resource).map_err(refused)?)
            }
            BackendAuthConfig::TokenExchange(c) => {
                Self::Exchange(TokenClient::new(c.clone(), backend_resource).map_err(refused)?)
            }
            BackendAuthConfig::Passthrough {} => Self::Passthrough,
        })
    }

    pub fn needs_caller(&self) -> bool {
        !matches!(self, Self::Own(_))
    }

    /// The `Authorization` value for a request on behalf of `caller`;
    /// `None` with no caller to act for (a health probe): sent without one,
    /// a 401 still shows that the backend answers.
    async fn header(&self, caller: Option<&CallerToken>) -> Result<Option<HeaderValue>, BackendError> {
        let token = match (self, caller) {
            (Self::Own(client), _) => return client.own().await.map(Some).map_err(refused),
            (_, None) => return Ok(None),
            (_, Some(caller)) => caller.get(),
        };
        match self {
            Self::Exchange(client) => client.exchange(&token).await.map(Some).map_err(refused),
            _ => {
                let mut value = HeaderValue::from_str(&format!("Bearer {token}"))
                    .map_err(|_| BackendError::Credentials("the caller's token is not a header value".into()))?;
                value.set_sensitive(true);
                Ok(Some(value))
            }
        }
    }

    /// The backend refused `used`: forget it. `true` if a new one may differ.
    fn forget(&self, used: &HeaderValue, caller: Option<&CallerToken>) -> bool {
        match self {
            Self::Own(client) => {
                client.forget_own(used);
                true
            }
            Self::Exchange(client) => {
                if let Some(caller) = caller {
                    client.forget_exchanged(&caller.get());
                }
                true
            }
            Self::Passthrough => false,
        }
    }

    fn what(&self) -> &'static str {
        match self {
            Self::Own(_) => "vmcp's client credentials token",
            Self::Exchange(_) => "the exchanged token",
            Self::Passthrough => "the caller's token",
        }
    }
}

/// Sends one request with the credentials of `credentials` (if any), and
/// once more with fresh ones if the backend answers 401.
pub(super) async fn send(
    client: &Client,
    uri: &http::Uri,
    credentials: Option<&Credentials>,
    caller: Option<&CallerToken>,
    method: Method,
    mut headers: HeaderMap,
    body: Bytes,
) -> Result<http::Response<super::client::Body>, BackendError> {
    let Some(credentials) = credentials else {
        return client
            .send(method, uri, headers, body)
            .await
            .map_err(super::http::transport);
    };
    let mut retried = false;
    loop {
        let value = credentials.header(caller).await?;
        if let Some(value) = &value {
            headers.insert(http::header::AUTHORIZATION, value.clone());
        }
        let response = client
            .send(method.clone(), uri, headers.clone(), body.clone())
            .await
            .map_err(super::http::transport)?;
        if response.status() != StatusCode::UNAUTHORIZED {
            return Ok(response);
        }
        if !retried && value.as_ref().is_some_and(|v| credentials.forget(v, caller)) {
            retried = true;
            continue;
        }
        return Err(BackendError::Credentials(format!(
            "the backend refused {} (HTTP 401)",
            credentials.what()
        )));
    }
}
