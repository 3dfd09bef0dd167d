//! The admin API's credential: a static bearer token (compared in constant
//! time, through HMAC digests under a per-process key) or an access token
//! valid under `auth.inbound` that carries `admin.scope`.

use hmac::{Hmac, Mac};
use http::HeaderMap;
use sha2::Sha256;

use super::AdminError;
use crate::auth::{AuthError, Authenticator, Identity};
use crate::config::AdminConfig;

pub struct AdminAuth {
    /// Keys the digests, so comparing them reveals nothing about the token.
    key: [u8; 32],
    /// HMAC of the configured token under `key`.
    token: Option<Vec<u8>>,
    scope: Option<String>,
}

impl AdminAuth {
    pub fn new(config: &AdminConfig) -> Self {
        let mut key = [0u8; 32];
        if getrandom::fill(&mut key).is_err() {
            // Still constant time; only the digests become predictable.
            tracing::warn!("OS random source failed; admin token digests use a fixed key");
        }
        let token = config.token.as_deref().map(str::trim).filter(|t| !t.is_empty());
        Self {
            token: token.map(|t| digest(&key, t).finalize().into_bytes().to_vec()),
            key,
            scope: config.scope.clone(),
        }
    }

    /// Whether any credential is configured (the API is off otherwise).
    pub fn is_on(&self) -> bool {
        self.token.is_some() || self.scope.is_some()
    }

    /// The scope an access token needs, when access tokens are accepted.
    pub fn scope(&self) -> Option<&str> {
        self.scope.as_deref()
    }

    /// Whether the request carries an admin credential.
    pub async fn check(&self, headers: &HeaderMap, auth: &Authenticator) -> Result<(), AdminError> {
        let bearer = headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|h| h.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, t)| t.trim())
            .filter(|t| !t.is_empty())
            .ok_or(AdminError::Unauthorized)?;
        if let Some(expected) = &self.token {
            if digest(&self.key, bearer).verify_slice(expected).is_ok() {
                return Ok(());
            }
        }
        let Some(scope) = &self.scope else {
            return Err(AdminError::Unauthorized);
        };
        match auth.identify(headers).await {
            Ok(Identity::Principal(p, _)) if p.scopes.iter().any(|s| s == scope) => Ok(()),
            Ok(Identity::Principal(..)) | Err(AuthError::InsufficientScope(_)) => {
                Err(AdminError::Forbidden(scope.clone()))
            }
            Err(AuthError::Unavailable(e)) => Err(AdminError::AuthUnavailable(e.to_string())),
            Ok(Identity::Header(_)) | Err(_) => Err(AdminError::Unauthorized),
        }
    }
}

fn digest(key: &[u8], token: &str) -> Hmac<Sha256> {
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(key) else {
        unreachable!("HMAC accepts keys of any length")
    };
    mac.update(token.as_bytes());
    mac
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(authorization: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(http::header::AUTHORIZATION, authorization.parse().unwrap());
        h
    }

    #[tokio::test]
    async fn only_the_configured_bearer_passes() {
        let admin = AdminAuth::new(&AdminConfig {
            token: Some("0123456789abcdef".into()),
            scope: None,
        });
        let off = Authenticator::off();
        assert!(admin.is_on());
        assert!(admin.check(&headers("Bearer 0123456789abcdef"), &off).await.is_ok());
        assert!(admin.check(&headers("bearer 0123456789abcdef "), &off).await.is_ok());
        for wrong in [
            "Bearer 0123456789abcdeg",
            "Bearer 0123456789abcde",
            "Basic 0123456789abcdef",
            "Bearer ",
        ] {
            assert!(
                matches!(admin.check(&headers(wrong), &off).await, Err(AdminError::Unauthorized)),
                "{wrong}"
            );
        }
        assert!(matches!(
            admin.check(&HeaderMap::new(), &off).await,
            Err(AdminError::Unauthorized)
        ));
        assert!(!AdminAuth::new(&AdminConfig::default()).is_on());
    }
}
