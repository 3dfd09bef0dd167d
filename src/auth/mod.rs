//! Who is calling: vmcp as an OAuth 2.1 resource server (`auth.inbound`).
//!
//! A request to `/mcp` must carry `Authorization: Bearer <JWT>` signed by the
//! configured issuer with one of the allowed algorithms, naming this server's
//! canonical resource URI in `aud` (RFC 8707), within `exp`/`nbf` (plus
//! leeway), and holding the required scopes. With `introspection` set, a
//! token that is not a JWT is asked about at the issuer instead
//! (`introspect.rs`, RFC 7662) and judged the same way. Its principal
//! (issuer, subject, scopes, groups) is what the session is bound to, so a
//! refreshed token for the same subject keeps its session on every replica.
//!
//! A JWT is verified once per replica, then remembered (by its SHA-256)
//! until it expires: a forwarded request's owner neither fetches keys nor
//! verifies a signature again for a token it has seen.
//!
//! Clients discover what to do from the 401's `WWW-Authenticate:
//! Bearer resource_metadata=...` and the protected resource metadata
//! (RFC 9728) served at `/.well-known/oauth-protected-resource[/mcp]`.

mod client_auth;
mod introspect;
mod keys;
mod metadata;
pub mod oauth_client;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use http::{HeaderMap, HeaderValue, StatusCode};
use jsonwebtoken::{Algorithm, Validation};
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

use crate::config::InboundAuthConfig;
use crate::session::Caller;
use crate::sync::lock;
pub use keys::KeysError;

/// Most validated tokens remembered per replica.
const REMEMBERED: usize = 10_000;

/// Why a request is refused.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AuthError {
    #[error("an access token is required")]
    Missing,
    /// More than one `Authorization` header (RFC 6750 §2: one method per request).
    #[error("more than one Authorization header")]
    Ambiguous,
    #[error("invalid access token: {0}")]
    Invalid(String),
    #[error("the access token lacks scope `{0}`")]
    InsufficientScope(String),
    /// The issuer's keys or its introspection endpoint cannot be had: not
    /// the caller's fault.
    #[error("cannot verify access tokens now: {0}")]
    Unavailable(String),
    #[error("auth.inbound: {0}")]
    Config(String),
}

impl From<KeysError> for AuthError {
    fn from(e: KeysError) -> Self {
        Self::Unavailable(e.to_string())
    }
}

impl AuthError {
    pub fn status(&self) -> StatusCode {
        match self {
            Self::Missing | Self::Invalid(_) => StatusCode::UNAUTHORIZED,
            Self::Ambiguous => StatusCode::BAD_REQUEST,
            Self::InsufficientScope(_) => StatusCode::FORBIDDEN,
            Self::Unavailable(_) | Self::Config(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

/// A validated token's caller: what policies and the session binding use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub issuer: String,
    pub subject: String,
    pub scopes: Vec<String>,
    pub groups: Vec<String>,
    /// `exp`, seconds since the epoch.
    pub expires: u64,
}

impl Principal {
    pub fn caller(&self) -> Caller<'_> {
        Caller::Subject {
            issuer: &self.issuer,
            subject: &self.subject,
        }
    }
}

/// Who a request comes from: a principal when inbound authentication is on,
/// else the `Authorization` header as sent (or nobody).
#[derive(Debug, Clone)]
pub enum Identity<'a> {
    Header(Option<&'a str>),
    /// A validated token's principal, and the token (for backends that act on it).
    Principal(Arc<Principal>, &'a str),
}

impl Identity<'_> {
    pub fn caller(&self) -> Caller<'_> {
        match self {
            Self::Header(h) => Caller::from(*h),
            Self::Principal(p, _) => p.caller(),
        }
    }

    /// The validated access token, if inbound authentication is on.
    pub fn bearer(&self) -> Option<&str> {
        match self {
            Self::Header(_) => None,
            Self::Principal(_, token) => Some(token),
        }
    }
}

pub struct Authenticator {
    inbound: Option<Inbound>,
}

struct Inbound {
    config: InboundAuthConfig,
    keys: keys::KeySet,
    /// For tokens that are not JWTs, when configured.
    introspector: Option<introspect::Introspector>,
    algorithms: Vec<Algorithm>,
    remembered: Mutex<HashMap<[u8; 32], Arc<Principal>>>,
    /// The protected resource metadata document, and where it is served.
    metadata: bytes::Bytes,
    metadata_url: String,
}

impl Authenticator {
    /// No inbound authentication: every request's identity is its header.
    pub fn off() -> Self {
        Self { inbound: None }
    }

    /// `registry`: where the introspection counter goes, if there is one.
    pub fn new(config: Option<&InboundAuthConfig>, registry: &prometheus::Registry) -> Result<Self, AuthError> {
        let Some(config) = config else {
            return Ok(Self::off());
        };
        let algorithms = config
            .algorithms
            .iter()
            .map(|a| {
                a.parse::<Algorithm>()
                    .map_err(|_| AuthError::Config(format!("unknown algorithm `{a}`")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        if algorithms
            .iter()
            .any(|a| matches!(a, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512))
        {
            return Err(AuthError::Config(
                "HMAC algorithms need a shared secret; use the issuer's public keys (RS*, PS*, ES*, EdDSA)".into(),
            ));
        }
        let metadata_url = metadata_url(&config.audience);
        let metadata = serde_json::to_vec(&json!({
            "resource": config.audience,
            "authorization_servers": [config.issuer],
            "scopes_supported": config.required_scopes,
            "bearer_methods_supported": ["header"],
        }))
        .map_err(|e| AuthError::Config(e.to_string()))?;
        Ok(Self {
            inbound: Some(Inbound {
                keys: keys::KeySet::new(config)?,
                introspector: introspect::Introspector::new(config, registry)?,
                algorithms,
                remembered: Mutex::default(),
                metadata: metadata.into(),
                metadata_url,
                config: config.clone(),
            }),
        })
    }

    pub fn is_on(&self) -> bool {
        self.inbound.is_some()
    }

    /// The RFC 9728 document, when inbound authentication is on.
    pub fn metadata(&self) -> Option<bytes::Bytes> {
        self.inbound.as_ref().map(|i| i.metadata.clone())
    }

    /// Who sent a request with these headers.
    pub async fn identify<'a>(&self, headers: &'a HeaderMap) -> Result<Identity<'a>, AuthError> {
        let header = headers.get(http::header::AUTHORIZATION).and_then(|v| v.to_str().ok());
        let Some(inbound) = &self.inbound else {
            return Ok(Identity::Header(header));
        };
        if headers.get_all(http::header::AUTHORIZATION).iter().nth(1).is_some() {
            return Err(AuthError::Ambiguous);
        }
        let token = header
            .and_then(|h| h.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, t)| t.trim())
            .filter(|t| !t.is_empty())
            .ok_or(AuthError::Missing)?;
        // Boxed: validation may fetch the issuer's keys, a future (~2 KB)
        // that would otherwise size every request's state, token or not.
        let principal = Box::pin(inbound.validate(token)).await?;
        Ok(Identity::Principal(principal, token))
    }

    /// The `WWW-Authenticate` value answering `error` (RFC 6750 §3, RFC 9728 §5.1).
    pub fn challenge(&self, error: &AuthError) -> Option<HeaderValue> {
        let inbound = self.inbound.as_ref()?;
        let quoted = |s: &str| s.replace(['"', '\\'], "'");
        let mut value = format!("Bearer resource_metadata=\"{}\"", inbound.metadata_url);
        match error {
            AuthError::Invalid(why) => {
                value.push_str(&format!(
                    ", error=\"invalid_token\", error_description=\"{}\"",
                    quoted(why)
                ));
            }
            AuthError::Ambiguous => value.push_str(", error=\"invalid_request\""),
            AuthError::InsufficientScope(_) => {
                value.push_str(&format!(
                    ", error=\"insufficient_scope\", scope=\"{}\"",
                    quoted(&inbound.config.required_scopes.join(" "))
                ));
            }
            _ => {}
        }
        HeaderValue::from_str(&value).ok()
    }
}

impl Inbound {
    async fn validate(&self, token: &str) -> Result<Arc<Principal>, AuthError> {
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let now = jsonwebtoken::get_current_timestamp();
        if let Some(p) = lock(&self.remembered).get(&digest).cloned() {
            return if now <= p.expires.saturating_add(self.config.leeway.as_secs()) {
                Ok(p)
            } else {
                Err(AuthError::Invalid("token expired".into()))
            };
        }
        let header = match jsonwebtoken::decode_header(token) {
            Ok(header) => header,
            Err(e) => {
                return match &self.introspector {
                    Some(introspector) => introspector.principal(token, digest).await,
                    None => Err(AuthError::Invalid(format!("malformed: {e}"))),
                };
            }
        };
        let principal = Arc::new(self.verify(token, header).await?);
        let mut remembered = lock(&self.remembered);
        if remembered.len() >= REMEMBERED {
            remembered.retain(|_, p| now <= p.expires);
            if remembered.len() >= REMEMBERED {
                remembered.clear();
            }
        }
        remembered.insert(digest, Arc::clone(&principal));
        Ok(principal)
    }

    async fn verify(&self, token: &str, header: jsonwebtoken::Header) -> Result<Principal, AuthError> {
        if !self.algorithms.contains(&header.alg) {
            return Err(AuthError::Invalid(format!("algorithm {:?} not allowed", header.alg)));
        }
        let key = self
            .keys
            .key(header.kid.as_deref())
            .await?
            .ok_or_else(|| AuthError::Invalid("signed with a key the issuer does not publish".into()))?;
        let mut validation = Validation::new(header.alg);
        validation.set_issuer(&[&self.config.issuer]);
        validation.set_audience(&[&self.config.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.validate_nbf = true;
        validation.leeway = self.config.leeway.as_secs();
        let claims = jsonwebtoken::decode::<Map<String, Value>>(token, &key, &validation)
            .map_err(|e| AuthError::Invalid(describe(&e)))?
            .claims;
        principal(&claims, &self.config)
    }
}

/// The principal of a token's claims (a JWT's, or an introspection answer's,
/// both already judged), if it holds the required scopes. The subject is
/// `sub`, else `client_id`: a token a client got for itself (RFC 9068 §2.2
/// puts the client id in `sub`; introspection answers often leave it out).
fn principal(claims: &Map<String, Value>, config: &InboundAuthConfig) -> Result<Principal, AuthError> {
    let strings = |v: Option<&Value>| -> Vec<String> {
        match v {
            Some(Value::String(s)) => s.split_whitespace().map(str::to_owned).collect(),
            Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).map(str::to_owned).collect(),
            _ => Vec::new(),
        }
    };
    let mut scopes = strings(claims.get("scope"));
    scopes.extend(strings(claims.get("scp")));
    if let Some(missing) = config.required_scopes.iter().find(|s| !scopes.contains(s)) {
        return Err(AuthError::InsufficientScope(missing.clone()));
    }
    let text = |k: &str| claims.get(k).and_then(Value::as_str).filter(|s| !s.is_empty());
    let subject = text("sub")
        .or_else(|| text("client_id"))
        .ok_or_else(|| AuthError::Invalid("claim `sub` missing".into()))?;
    Ok(Principal {
        issuer: text("iss").unwrap_or(&config.issuer).to_owned(),
        subject: subject.to_owned(),
        scopes,
        groups: strings(claims.get(&config.groups_claim)),
        // No `exp` (an introspection answer may omit it): the answer's life bounds it.
        expires: claims.get("exp").and_then(Value::as_u64).unwrap_or(u64::MAX),
    })
}

/// What was wrong with a token, in words a client can act on (never the token).
fn describe(e: &jsonwebtoken::errors::Error) -> String {
    use jsonwebtoken::errors::ErrorKind as K;
    match e.kind() {
        K::ExpiredSignature => "token expired".into(),
        K::ImmatureSignature => "token not valid yet (nbf)".into(),
        K::InvalidAudience => "token is for another audience".into(),
        K::InvalidIssuer => "token from another issuer".into(),
        K::InvalidSignature => "bad signature".into(),
        K::MissingRequiredClaim(c) => format!("claim `{c}` missing"),
        K::InvalidAlgorithm => "algorithm does not match the key".into(),
        other => format!("{other:?}"),
    }
}

/// RFC 9728 §3.1: the well-known suffix goes between the host and the path.
fn metadata_url(resource: &str) -> String {
    let after_scheme = resource.find("://").map_or(0, |i| i + 3);
    let (origin, path) = match resource[after_scheme..].find('/') {
        Some(i) => resource.split_at(after_scheme + i),
        None => (resource, ""),
    };
    format!(
        "{origin}/.well-known/oauth-protected-resource{}",
        path.trim_end_matches('/')
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_metadata_url_keeps_the_resource_path() {
        assert_eq!(
            metadata_url("https://mcp.example.com/mcp"),
            "https://mcp.example.com/.well-known/oauth-protected-resource/mcp"
        );
        assert_eq!(
            metadata_url("http://127.0.0.1:8080"),
            "http://127.0.0.1:8080/.well-known/oauth-protected-resource"
        );
    }

    #[tokio::test]
    async fn off_means_the_header_as_sent() {
        let auth = Authenticator::off();
        let mut headers = HeaderMap::new();
        assert!(matches!(auth.identify(&headers).await, Ok(Identity::Header(None))));
        headers.insert(http::header::AUTHORIZATION, HeaderValue::from_static("Bearer x"));
        assert!(matches!(
            auth.identify(&headers).await,
            Ok(Identity::Header(Some("Bearer x")))
        ));
        assert!(auth.challenge(&AuthError::Missing).is_none());
    }
}
