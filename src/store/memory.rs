//! The default store: a map in this process. Expiry is the session manager's job
//! (its reaper closes sessions at their deadline and deletes them here).

use std::collections::HashMap;
use std::sync::Mutex;

use futures_util::future::{ready, BoxFuture, FutureExt};
use futures_util::stream::{self, BoxStream, StreamExt};

use super::{SessionMetadata, SessionStore, StoreError, Touch};

pub struct MemoryStore {
    sessions: Mutex<HashMap<String, SessionMetadata>>,
    salt: Vec<u8>,
}

impl Default for MemoryStore {
    fn default() -> Self {
        let mut salt = vec![0u8; 32];
        if getrandom::fill(&mut salt).is_err() {
            // Only this process ever sees these hashes; a fixed salt still separates them from raw tokens.
            tracing::warn!("OS random source failed; identity hashes use a fixed salt");
        }
        Self {
            sessions: Mutex::default(),
            salt,
        }
    }
}

impl MemoryStore {
    fn with<T>(&self, f: impl FnOnce(&mut HashMap<String, SessionMetadata>) -> T) -> Result<T, StoreError> {
        let mut guard = self
            .sessions
            .lock()
            .map_err(|_| StoreError::Unavailable("memory store lock poisoned".into()))?;
        Ok(f(&mut guard))
    }
}

impl SessionStore for MemoryStore {
    fn put(&self, meta: &SessionMetadata) -> BoxFuture<'_, Result<(), StoreError>> {
        let result = self.with(|m| {
            m.insert(meta.id.clone(), meta.clone());
        });
        ready(result).boxed()
    }

    fn update(&self, meta: &SessionMetadata) -> BoxFuture<'_, Result<bool, StoreError>> {
        let result = self.with(|m| match m.get_mut(&meta.id) {
            Some(slot) => {
                *slot = meta.clone();
                true
            }
            None => false,
        });
        ready(result).boxed()
    }

    fn get<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<SessionMetadata>, StoreError>> {
        ready(self.with(|m| m.get(id).cloned())).boxed()
    }

    fn touch<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Touch, StoreError>> {
        let result = self.with(|m| match m.get_mut(id) {
            Some(meta) => {
                meta.last_seen_ms = super::unix_ms();
                Touch::Alive
            }
            None => Touch::Deleted,
        });
        ready(result).boxed()
    }

    fn delete<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<bool, StoreError>> {
        ready(self.with(|m| m.remove(id).is_some())).boxed()
    }

    fn ping(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        ready(Ok(())).boxed()
    }

    fn deletions(&self) -> BoxStream<'static, String> {
        // One process: the manager that deletes is the only one holding the runtime.
        stream::pending().boxed()
    }

    fn identity_salt(&self) -> BoxFuture<'_, Result<Vec<u8>, StoreError>> {
        ready(Ok(self.salt.clone())).boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{BackendRecord, BackendTarget};

    pub(crate) fn meta(id: &str) -> SessionMetadata {
        SessionMetadata {
            id: id.into(),
            created_at_ms: 1,
            last_seen_ms: 1,
            identity: None,
            protocol_version: "2025-06-18".into(),
            client_init: std::sync::Arc::new(serde_json::json!({})),
            backends: vec![BackendRecord {
                name: "alpha".into(),
                target: BackendTarget::StreamableHttp {
                    url: "http://x/mcp".into(),
                },
                session_id: Some("abc".into()),
                protocol_version: Some("2025-06-18".into()),
                capabilities: Some(std::sync::Arc::new(serde_json::json!({"tools": {}}))),
            }],
        }
    }

    #[tokio::test]
    async fn put_get_update_touch_delete() {
        let store = MemoryStore::default();
        store.put(&meta("s1")).await.unwrap();
        assert_eq!(store.touch("s1").await.unwrap(), Touch::Alive);
        assert!(store.get("s1").await.unwrap().unwrap().last_seen_ms > 1);
        assert!(store.update(&meta("s1")).await.unwrap());
        assert!(store.delete("s1").await.unwrap());
        assert!(!store.delete("s1").await.unwrap());
        assert!(!store.update(&meta("s1")).await.unwrap(), "no resurrection");
        assert!(store.get("s1").await.unwrap().is_none());
        assert_eq!(store.touch("s1").await.unwrap(), Touch::Deleted);
    }

    #[test]
    fn metadata_json_is_flat_and_stable() {
        let json = serde_json::to_value(meta("s1")).unwrap();
        assert_eq!(json["backends"][0]["transport"], "streamable_http");
        assert_eq!(json["backends"][0]["url"], "http://x/mcp");
        let back: SessionMetadata = serde_json::from_value(json).unwrap();
        assert_eq!(back, meta("s1"));
    }
}
