//! Pooled sessions: one per caller (its validated subject, its
//! `Authorization` header, or anonymous), for stateless-era requests, which
//! carry no session id. The pool's id is a keyed hash of the caller that
//! every replica computes alike, so the pool has one owner like any session
//! (requests are forwarded there), its backend sessions are in the store,
//! and any replica resumes them. It idles out like any session.

use std::sync::Arc;

use serde_json::Value;

use super::{ManagerError, ResolveError, SessionManager};
use crate::session::{Caller, Session};
use crate::sync::lock;

/// A caller's pooled session: its id, and the caller's identity (computed
/// once per request: the id is a hash of it, and serving checks it).
pub struct PoolKey {
    pub id: String,
    identity: Option<String>,
}

impl SessionManager {
    /// `caller`'s pooled session (to place it before serving it).
    pub async fn pool_id(&self, caller: Caller<'_>) -> Result<PoolKey, ResolveError> {
        let (id, identity) = self
            .identity
            .pool_id(self.store.as_ref(), caller)
            .await
            .map_err(|e| ResolveError::Unavailable(e.to_string()))?;
        Ok(PoolKey { id, identity })
    }

    /// `caller`'s pooled session `pool`: the live one, the stored one
    /// (resumed), or a new one opened with `client_init`, once however many
    /// requests ask.
    pub async fn pooled(
        self: &Arc<Self>,
        pool: &PoolKey,
        caller: Caller<'_>,
        bearer: Option<&str>,
        client_init: impl FnOnce() -> (Value, String),
    ) -> Result<Arc<Session>, ResolveError> {
        let id = pool.id.as_str();
        match self.resolve_as(id, pool.identity.as_deref(), bearer).await {
            Err(ResolveError::NotFound) => {}
            found => return found,
        }
        let key = format!("pool\n{id}");
        let cell = Arc::clone(lock(&self.rebuilding).entry(key.clone()).or_default());
        let (init, version) = client_init();
        let result = cell
            .get_or_init(|| async {
                self.create_as(Some(id.to_owned()), init, version, caller, bearer)
                    .await
                    .map_err(|e| match e {
                        ManagerError::Full(n) => ResolveError::Full(n),
                        other => ResolveError::Unavailable(other.to_string()),
                    })
            })
            .await
            .clone();
        let mut rebuilding = lock(&self.rebuilding);
        if rebuilding.get(&key).is_some_and(|c| Arc::ptr_eq(c, &cell)) {
            rebuilding.remove(&key);
        }
        result
    }
}
