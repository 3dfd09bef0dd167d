//! The default store: a map in this process. Expiry is the session manager's job
//! (its reaper closes sessions at their deadline and deletes them here).

use std::collections::HashMap;
use std::sync::Mutex;

use futures_util::future::{ready, BoxFuture, FutureExt};

use super::{SessionMetadata, SessionStore, StoreError};

#[derive(Default)]
pub struct MemoryStore {
    sessions: Mutex<HashMap<String, SessionMetadata>>,
}

impl MemoryStore {
    fn with<T>(
        &self,
        f: impl FnOnce(&mut HashMap<String, SessionMetadata>) -> T,
    ) -> Result<T, StoreError> {
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

    fn get<'a>(
        &'a self,
        id: &'a str,
    ) -> BoxFuture<'a, Result<Option<SessionMetadata>, StoreError>> {
        ready(self.with(|m| m.get(id).cloned())).boxed()
    }

    fn touch<'a>(
        &'a self,
        id: &'a str,
        last_seen_ms: u64,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        let result = self.with(|m| {
            if let Some(meta) = m.get_mut(id) {
                meta.last_seen_ms = last_seen_ms;
            }
        });
        ready(result).boxed()
    }

    fn delete<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<bool, StoreError>> {
        ready(self.with(|m| m.remove(id).is_some())).boxed()
    }

    fn ping(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        ready(Ok(())).boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{BackendRecord, BackendTarget};

    fn meta(id: &str) -> SessionMetadata {
        SessionMetadata {
            id: id.into(),
            created_at_ms: 1,
            last_seen_ms: 1,
            identity: None,
            protocol_version: "2025-06-18".into(),
            client_init: serde_json::json!({}),
            backends: vec![BackendRecord {
                name: "alpha".into(),
                target: BackendTarget::StreamableHttp {
                    url: "http://x/mcp".into(),
                },
                session_id: Some("abc".into()),
                protocol_version: Some("2025-06-18".into()),
            }],
        }
    }

    #[tokio::test]
    async fn put_get_touch_delete() {
        let store = MemoryStore::default();
        store.put(&meta("s1")).await.unwrap();
        store.touch("s1", 42).await.unwrap();
        assert_eq!(store.get("s1").await.unwrap().unwrap().last_seen_ms, 42);
        assert!(store.delete("s1").await.unwrap());
        assert!(!store.delete("s1").await.unwrap());
        assert!(store.get("s1").await.unwrap().is_none());
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
