//! The issuer's signing keys: discovered from its metadata (RFC 8414, or
//! OpenID Connect discovery), fetched once, used from memory, and fetched
//! again when they are older than `jwks_ttl` or a token names a key the set
//! does not hold (rotation), at most once per `jwks_min_refresh`.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use http::Uri;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::DecodingKey;

use crate::backend::client::Client;
use crate::config::InboundAuthConfig;

#[derive(Debug, Clone, thiserror::Error)]
pub enum KeysError {
    #[error("issuer metadata: {0}")]
    Metadata(String),
    #[error("key set: {0}")]
    KeySet(String),
}

/// The keys by `kid`, and when they were fetched.
#[derive(Default)]
struct Held {
    keys: HashMap<String, Arc<DecodingKey>>,
    /// The only key, for tokens that name none.
    single: Option<Arc<DecodingKey>>,
    fetched: Option<Instant>,
}

pub struct KeySet {
    client: Client,
    issuer: String,
    configured_jwks: Option<String>,
    timeout: Duration,
    min_refresh: Duration,
    ttl: Duration,
    held: RwLock<Held>,
    /// One fetch at a time; callers that waited use its result.
    fetching: tokio::sync::Mutex<Option<Uri>>,
}

impl KeySet {
    pub fn new(config: &InboundAuthConfig) -> Result<Self, KeysError> {
        let client = Client::new(config.fetch_timeout).map_err(|e| KeysError::Metadata(e.to_string()))?;
        Ok(Self {
            client,
            issuer: config.issuer.clone(),
            configured_jwks: config.jwks_uri.clone(),
            timeout: config.fetch_timeout,
            min_refresh: config.jwks_min_refresh,
            ttl: config.jwks_ttl,
            held: RwLock::default(),
            fetching: tokio::sync::Mutex::new(None),
        })
    }

    /// The key for `kid` (or the only key, for a token that names none);
    /// `Ok(None)` if the issuer has no such key.
    pub async fn key(&self, kid: Option<&str>) -> Result<Option<Arc<DecodingKey>>, KeysError> {
        let fresh = |held: &Held| held.fetched.is_some_and(|t| t.elapsed() < self.ttl);
        {
            let held = self.held.read().unwrap_or_else(|p| p.into_inner());
            if let Some(key) = find(&held, kid) {
                if fresh(&held) {
                    return Ok(Some(key));
                }
            }
        }
        let mut jwks_uri = self.fetching.lock().await;
        {
            // Fetched by another caller while this one waited, or too soon to fetch again.
            let held = self.held.read().unwrap_or_else(|p| p.into_inner());
            let recent = held.fetched.is_some_and(|t| t.elapsed() < self.min_refresh);
            match find(&held, kid) {
                Some(key) if fresh(&held) => return Ok(Some(key)),
                None if recent => return Ok(None),
                _ => {}
            }
        }
        let fetched = self.fetch(&mut jwks_uri).await;
        let mut held = lock_write(&self.held);
        match fetched {
            Ok(set) => {
                *held = set;
                Ok(find(&held, kid))
            }
            // Keys we hold still verify tokens while the issuer is unreachable.
            Err(e) => match find(&held, kid) {
                Some(key) => {
                    tracing::warn!(error = %e, "issuer keys not refreshed; using the ones held");
                    held.fetched = Some(Instant::now());
                    Ok(Some(key))
                }
                None => Err(e),
            },
        }
    }

    async fn fetch(&self, jwks_uri: &mut Option<Uri>) -> Result<Held, KeysError> {
        let uri = match jwks_uri.clone() {
            Some(uri) => uri,
            None => {
                let uri = match &self.configured_jwks {
                    Some(u) => u
                        .parse()
                        .map_err(|_| KeysError::KeySet(format!("`{u}` is not a URL")))?,
                    None => self.discover().await?,
                };
                *jwks_uri = Some(uri.clone());
                uri
            }
        };
        let body = super::metadata::get(&self.client, &uri, self.timeout)
            .await
            .map_err(KeysError::KeySet)?;
        let set: JwkSet = serde_json::from_slice(&body).map_err(|e| KeysError::KeySet(e.to_string()))?;
        let mut held = Held {
            fetched: Some(Instant::now()),
            ..Held::default()
        };
        let usable: Vec<_> = set
            .keys
            .iter()
            .filter(|k| {
                !matches!(
                    k.common.public_key_use,
                    Some(jsonwebtoken::jwk::PublicKeyUse::Encryption)
                )
            })
            .filter_map(|k| Some((k.common.key_id.clone(), Arc::new(DecodingKey::from_jwk(k).ok()?))))
            .collect();
        if usable.len() == 1 {
            held.single = usable.first().map(|(_, k)| Arc::clone(k));
        }
        held.keys = usable.into_iter().filter_map(|(kid, k)| Some((kid?, k))).collect();
        tracing::info!(keys = held.keys.len(), "issuer keys fetched");
        Ok(held)
    }

    /// The key set's URL from the issuer's metadata.
    async fn discover(&self) -> Result<Uri, KeysError> {
        let meta = super::metadata::discover(&self.client, &self.issuer, self.timeout)
            .await
            .map_err(KeysError::Metadata)?;
        meta.jwks_uri
            .ok_or_else(|| KeysError::Metadata("the issuer's metadata has no jwks_uri".into()))?
            .parse()
            .map_err(|_| KeysError::Metadata("jwks_uri is not a URL".into()))
    }
}

fn find(held: &Held, kid: Option<&str>) -> Option<Arc<DecodingKey>> {
    match kid {
        Some(kid) => held.keys.get(kid).cloned(),
        None => held.single.clone(),
    }
}

fn lock_write<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|p| p.into_inner())
}
