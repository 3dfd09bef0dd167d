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
    key: Arc<OnceCell<Key>>,
    /// The operator configured the key: nothing lives in the store.
    configured: bool,
}

/// The key as held (the store's salt is written back as it is), and the
/// MAC keyed with it once (its inner and outer pads hashed): each hash
/// starts from a copy of it.
struct Key {
    raw: Vec<u8>,
    keyed: Hmac<Sha256>,
}

impl Key {
    fn new(raw: Vec<u8>) -> Self {
        let Ok(keyed) = Hmac::<Sha256>::new_from_slice(&raw) else {
            unreachable!("HMAC accepts keys of any length")
        };
        Self { raw, keyed }
    }
}

impl IdentityHasher {
    /// `configured`: the operator's key; `None` to use the store's shared salt.
    pub fn new(configured: Option<&str>) -> Self {
        let key = OnceCell::new();
        let configured = configured.filter(|k| !k.is_empty());
        if let Some(k) = configured {
            let _ = key.set(Key::new(k.as_bytes().to_vec()));
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
                if let Err(e) = self.salt(store.as_ref()).await {
                    tracing::debug!(error = %e, "identity salt not read yet");
                }
                continue;
            };
            match store.keep_identity_salt(&held.raw).await {
                Ok(true) => {
                    tracing::warn!("the store had lost the identity salt; wrote back the one this replica holds")
                }
                Ok(false) => {}
                Err(e) => tracing::debug!(error = %e, "identity salt not checked"),
            }
        }
    }

    /// The identity of `caller`, or `None` for an anonymous request.
    pub async fn identify(
        &self,
        store: &dyn SessionStore,
        caller: impl Into<Caller<'_>>,
    ) -> Result<Option<String>, StoreError> {
        let (kind, parts) = match caller.into() {
            Caller::Anonymous => return Ok(None),
            Caller::Credential(token) => match token.trim() {
                "" => return Ok(None),
                token => ('t', [token, ""]),
            },
            Caller::Subject { issuer, subject } => ('s', [issuer, subject]),
        };
        Ok(Some(hash(self.salt(store).await?, kind, parts)))
    }

    /// The key, read from the store the first time if not configured.
    async fn salt(&self, store: &dyn SessionStore) -> Result<&Key, StoreError> {
        self.key
            .get_or_try_init(|| async { store.identity_salt().await.map(Key::new) })
            .await
    }
}

/// Who a request comes from, as far as binding sessions goes.
#[derive(Debug, Clone, Copy)]
pub enum Caller<'a> {
    Anonymous,
    /// Without inbound authentication: the `Authorization` header as sent.
    Credential(&'a str),
    /// A validated access token's principal: the session survives token refreshes.
    Subject {
        issuer: &'a str,
        subject: &'a str,
    },
}

impl<'a> From<Option<&'a str>> for Caller<'a> {
    /// An `Authorization` header value, taken as is (no inbound authentication).
    fn from(authorization: Option<&'a str>) -> Self {
        authorization.map_or(Caller::Anonymous, Caller::Credential)
    }
}

/// `{kind}:` + hex HMAC-SHA256 of the parts (`t`: a credential as sent;
/// `s`: an issuer and a subject, length-prefixed so no two pairs collide).
impl IdentityHasher {
    /// The id of `caller`'s pooled session (stateless-era requests): a keyed
    /// hash of its identity, the same on every replica, that nobody else can
    /// compute. Anonymous callers share one.
    /// Returned with `caller`'s identity, which serving the pool checks.
    pub async fn pool_id(
        &self,
        store: &dyn SessionStore,
        caller: Caller<'_>,
    ) -> Result<(String, Option<String>), StoreError> {
        let identity = self.identify(store, caller).await?;
        let mut tagged = hash(
            self.salt(store).await?,
            'p',
            ["pool", identity.as_deref().unwrap_or("anonymous")],
        );
        // `p-` + 64 hex digits: a well-formed session id no client is given.
        tagged.replace_range(1..2, "-");
        Ok((tagged, identity))
    }
}

/// Whether `id` is a caller's pooled session ([`IdentityHasher::pool_id`]).
pub fn is_pool_id(id: &str) -> bool {
    id.starts_with("p-")
}

fn hash(key: &Key, kind: char, parts: [&str; 2]) -> String {
    let mut mac = key.keyed.clone();
    if kind == 't' {
        mac.update(parts[0].as_bytes());
    } else {
        for part in parts {
            mac.update(&(part.len() as u64).to_be_bytes());
            mac.update(part.as_bytes());
        }
    }
    let digest = mac.finalize().into_bytes();
    // Into a buffer, not `hex::encode`: that collects a `String` one `char`
    // at a time, ~1.7k instructions for these 32 bytes (a 2026-07-28 call
    // hashes three times).
    let mut digits = [0u8; 64];
    let mut out = String::with_capacity(2 + digits.len());
    out.push(kind);
    out.push(':');
    // 32 bytes always fit 64 digits, and hex digits are always UTF-8.
    if hex::encode_to_slice(digest, &mut digits).is_ok() {
        out.push_str(std::str::from_utf8(&digits).unwrap_or_default());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemoryStore;

    /// Identities are stored: every version must compute the same ones (a
    /// rolling upgrade mixes replicas). HMAC-SHA256 under key `k`, as any
    /// HMAC implementation gives it.
    #[tokio::test]
    async fn identities_are_plain_hmacs_of_the_caller() {
        let store = MemoryStore::default();
        let hasher = IdentityHasher::new(Some("k"));
        assert_eq!(
            hasher.identify(&store, Some("Bearer abc")).await.unwrap().unwrap(),
            "t:0316e5ca0c398a874f6f304bf0cb9f7f9472478a698b4f09285e8ddf65b2212c"
        );
        let subject = Caller::Subject {
            issuer: "iss",
            subject: "sub",
        };
        assert_eq!(
            hasher.identify(&store, subject).await.unwrap().unwrap(),
            "s:21bb6d176b976de436bddb15d6bae147bbccd743de211afe498bfa213456b3b5"
        );
    }

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

    #[tokio::test]
    async fn a_subject_is_its_issuer_and_subject_whatever_the_token() {
        let store = MemoryStore::default();
        let hasher = IdentityHasher::new(Some("k"));
        let subject = |issuer, subject| Caller::Subject { issuer, subject };
        let alice = hasher
            .identify(&store, subject("https://idp", "alice"))
            .await
            .unwrap()
            .unwrap();
        assert!(alice.starts_with("s:") && !alice.contains("alice"));
        assert_eq!(
            hasher
                .identify(&store, subject("https://idp", "alice"))
                .await
                .unwrap()
                .unwrap(),
            alice
        );
        assert_ne!(
            hasher
                .identify(&store, subject("https://other", "alice"))
                .await
                .unwrap()
                .unwrap(),
            alice
        );
        // Length-prefixed: moving a character from issuer to subject is another identity.
        assert_ne!(
            hasher
                .identify(&store, subject("https://id", "palice"))
                .await
                .unwrap()
                .unwrap(),
            alice
        );
        // Never equal to a credential's identity.
        assert_ne!(hasher.identify(&store, Some("alice")).await.unwrap().unwrap(), alice);
    }
}
