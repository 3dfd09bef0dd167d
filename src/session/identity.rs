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

use hmac::{Hmac, Mac};
use sha2::Sha256;
use tokio::sync::OnceCell;

use crate::store::{SessionStore, StoreError};

pub struct IdentityHasher {
    key: OnceCell<Vec<u8>>,
}

impl IdentityHasher {
    /// `configured`: the operator's key; `None` to use the store's shared salt.
    pub fn new(configured: Option<&str>) -> Self {
        let key = OnceCell::new();
        if let Some(k) = configured.filter(|k| !k.is_empty()) {
            let _ = key.set(k.as_bytes().to_vec());
        }
        Self { key }
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
        assert_ne!(
            other_key.identify(&store, Some("Bearer abc")).await.unwrap().unwrap(),
            a
        );
    }
}
