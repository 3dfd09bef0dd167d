//! Binding sessions to the caller's identity.
//!
//! A session remembers a keyed hash (HMAC-SHA256) of who created it. Every
//! later request, on any replica, must present the same identity, or it gets
//! the very 404 an unknown session gets. Without incoming authentication the
//! identity is the bearer token itself, so a client that gets a new token
//! needs a new session. An anonymous session and an authenticated caller never
//! match, in either direction. Neither tokens nor subjects are stored, only
//! their hashes. The key is `session.identity_key` if configured, else a
//! random secret shared through the store (created once by the first replica).
//!
//! A shared salt is read once and cached; if the store loses it, a replica
//! started afterwards would mint another and disagree with the others about
//! every authenticated session. So every replica that holds the salt writes
//! it back (SET NX) every [`SALT_KEEP_INTERVAL`] ([`IdentityHasher::keep_salt`]).
//! The chart sets `session.identity_key`, which needs none of this.

use std::sync::Arc;
use std::time::Duration;

use hmac::{Hmac, Mac};
use sha2::Sha256;
use tokio::sync::OnceCell;
use tokio_util::sync::CancellationToken;

use crate::store::{SessionStore, StoreError};

/// How often a replica checks that the store still holds the shared salt
/// (one SET NX per replica per interval).
pub const SALT_KEEP_INTERVAL: Duration = Duration::from_secs(3);

/// Clones share the key.
#[derive(Clone)]
pub struct IdentityHasher {
    key: Arc<OnceCell<Vec<u8>>>,
    /// The operator configured the key: nothing lives in the store.
    configured: bool,
}

impl IdentityHasher {
    /// `configured`: the operator's key; `None` to use the store's shared salt.
    pub fn new(configured: Option<&str>) -> Self {
        let key = OnceCell::new();
        let configured = configured.filter(|k| !k.is_empty());
        if let Some(k) = configured {
            let _ = key.set(k.as_bytes().to_vec());
        }
        Self {
            key: Arc::new(key),
            configured: configured.is_some(),
        }
    }

    /// Until `stop`: reads the store's salt as soon as the store answers (so
    /// this replica holds it before the store can lose it), then writes it
    /// back whenever the store has lost it.
    pub async fn keep_salt(&self, store: Arc<dyn SessionStore>, stop: CancellationToken) {
        if self.configured {
            return;
        }
        let mut tick = tokio::time::interval(SALT_KEEP_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.cancelled() => return,
            }
            let Some(held) = self.key.get() else {
                if let Err(e) = self.key.get_or_try_init(|| store.identity_salt()).await {
                    tracing::debug!(error = %e, "identity salt not read yet");
                }
                continue;
            };
            match store.keep_identity_salt(held).await {
                Ok(true) => {
                    tracing::warn!("the store had lost the identity salt; wrote back the one this replica holds")
                }
                Ok(false) => {}
                Err(e) => tracing::debug!(error = %e, "identity salt not checked"),
            }
        }
    }

    /// The identity of a request with this `Authorization` header value, or
    /// `None` for an anonymous request.
    pub async fn identify(
        &self,
        store: &dyn SessionStore,
        authorization: Option<&str>,
    ) -> Result<Option<String>, StoreError> {
        let Some(token) = authorization.map(str::trim).filter(|t| !t.is_empty()) else {
            return Ok(None);
        };
        let key = self.key.get_or_try_init(|| store.identity_salt()).await?;
        Ok(Some(hash(key, token)))
    }
}

/// `t:` + hex HMAC-SHA256 of the credential (the `t` leaves room for other
/// kinds of identity, such as a validated token's principal).
fn hash(key: &[u8], credential: &str) -> String {
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(key) else {
        unreachable!("HMAC accepts keys of any length")
    };
    mac.update(credential.as_bytes());
    let digest = mac.finalize().into_bytes();
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("t:{hex}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemoryStore;

    #[tokio::test]
    async fn same_token_same_identity_and_nothing_in_clear() {
        let store = MemoryStore::default();
        let hasher = IdentityHasher::new(Some("k"));
        let a = hasher.identify(&store, Some("Bearer abc")).await.unwrap().unwrap();
        assert_eq!(hasher.identify(&store, Some("Bearer abc")).await.unwrap().unwrap(), a);
        assert_ne!(hasher.identify(&store, Some("Bearer abd")).await.unwrap().unwrap(), a);
        assert!(!a.contains("abc"));
        assert_eq!(hasher.identify(&store, None).await.unwrap(), None);
        let other_key = IdentityHasher::new(Some("other"));
        assert!(other_key.configured && !IdentityHasher::new(Some("")).configured);
        assert_ne!(
            other_key.identify(&store, Some("Bearer abc")).await.unwrap().unwrap(),
            a
        );
    }
}
