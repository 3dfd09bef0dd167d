//! The default store: a map in this process. Expiry is the session manager's job
//! (its reaper closes sessions at their deadline and deletes them here).

use std::collections::HashMap;
use std::sync::Mutex;

use futures_util::future::{ready, BoxFuture, FutureExt};
use futures_util::stream::{self, BoxStream, StreamExt};

use super::{Page, SessionMetadata, SessionStore, StoreError, SubjectRef, Touch, MAX_PAGE};

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

    fn touch<'a>(&'a self, id: &'a str, _subject: Option<&'a SubjectRef>) -> BoxFuture<'a, Result<Touch, StoreError>> {
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

    fn list<'a>(&'a self, cursor: Option<&'a str>, limit: usize) -> BoxFuture<'a, Result<Page, StoreError>> {
        let limit = limit.clamp(1, MAX_PAGE);
        let result = self.with(|m| {
            // Id order: a cursor is the last id of the previous page.
            let mut ids: Vec<&String> = m.keys().filter(|id| cursor.is_none_or(|c| id.as_str() > c)).collect();
            ids.sort_unstable();
            let more = ids.len() > limit;
            let sessions: Vec<SessionMetadata> = ids
                .into_iter()
                .take(limit)
                .filter_map(|id| m.get(id).cloned())
                .collect();
            let next_cursor = more.then(|| sessions.last().map(|s| s.id.clone())).flatten();
            Page { sessions, next_cursor }
        });
        ready(result).boxed()
    }

    fn sessions_of<'a>(&'a self, issuer: &'a str, subject: &'a str) -> BoxFuture<'a, Result<Vec<String>, StoreError>> {
        let result = self.with(|m| {
            m.values()
                .filter(|s| {
                    s.subject
                        .as_ref()
                        .is_some_and(|r| r.issuer == issuer && r.subject == subject)
                })
                .map(|s| s.id.clone())
                .collect()
        });
        ready(result).boxed()
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
            subject: None,
            replica: None,
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
        assert_eq!(store.touch("s1", None).await.unwrap(), Touch::Alive);
        assert!(store.get("s1").await.unwrap().unwrap().last_seen_ms > 1);
        assert!(store.update(&meta("s1")).await.unwrap());
        assert!(store.delete("s1").await.unwrap());
        assert!(!store.delete("s1").await.unwrap());
        assert!(!store.update(&meta("s1")).await.unwrap(), "no resurrection");
        assert!(store.get("s1").await.unwrap().is_none());
        assert_eq!(store.touch("s1", None).await.unwrap(), Touch::Deleted);
    }

    #[tokio::test]
    async fn list_pages_in_id_order_and_sessions_of_finds_a_subject() {
        let store = MemoryStore::default();
        for id in ["s3", "s1", "s2"] {
            let mut m = meta(id);
            if id != "s2" {
                m.subject = Some(SubjectRef {
                    issuer: "https://idp".into(),
                    subject: "alice".into(),
                });
            }
            store.put(&m).await.unwrap();
        }
        let first = store.list(None, 2).await.unwrap();
        let ids: Vec<_> = first.sessions.iter().map(|s| s.id.as_str()).collect();
        assert_eq!(ids, ["s1", "s2"]);
        let cursor = first.next_cursor.unwrap();
        let second = store.list(Some(&cursor), 2).await.unwrap();
        assert_eq!(second.sessions.len(), 1);
        assert_eq!(second.next_cursor, None);
        let mut alice = store.sessions_of("https://idp", "alice").await.unwrap();
        alice.sort();
        assert_eq!(alice, ["s1", "s3"]);
        assert!(store.sessions_of("https://other", "alice").await.unwrap().is_empty());
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
