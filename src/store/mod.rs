//! Session **metadata**: the serialisable half of a session, behind one trait.
//!
//! Everything a replica needs to rebuild a session it has never seen lives in
//! [`SessionMetadata`]; nothing in it refers to a live object (clients, locks,
//! tasks), so it can go to Redis as JSON. The runtime half lives in
//! `crate::session` only.

mod memory;
mod redis;
pub mod redis_conn;

use futures_util::future::BoxFuture;
use futures_util::stream::BoxStream;
use serde::{Deserialize, Serialize};

pub use self::redis::RedisStore;
pub use memory::MemoryStore;

/// How a backend is reached; recorded so another replica can rebuild it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "transport")]
pub enum BackendTarget {
    /// Streamable HTTP at `url`.
    StreamableHttp { url: std::sync::Arc<str> },
    /// A child process speaking stdio.
    Stdio { command: Vec<String> },
    /// MCP 2024-11-05's HTTP+SSE: a stream per session, never resumed elsewhere.
    Sse { url: std::sync::Arc<str> },
}

/// One backend session of a client session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendRecord {
    /// Shared strings (`Arc<str>`): the same for every session of a backend.
    pub name: std::sync::Arc<str>,
    #[serde(flatten)]
    pub target: BackendTarget,
    /// The backend's own `Mcp-Session-Id`, if it issued one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
    /// Protocol version negotiated with this backend.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol_version: Option<std::sync::Arc<str>>,
    /// The backend's advertised capabilities (so a resumed session knows what to list).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    /// Shared by the records of one backend's sessions (same JSON on the wire).
    pub capabilities: Option<std::sync::Arc<serde_json::Value>>,
}

/// The serialisable state of one client session.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionMetadata {
    pub id: String,
    /// Unix milliseconds.
    pub created_at_ms: u64,
    /// Unix milliseconds of the last request (refreshed lazily).
    pub last_seen_ms: u64,
    /// Keyed hash of the caller's identity; `None` for anonymous sessions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<String>,
    /// Who created it, when inbound authentication named a subject (for the
    /// admin API's listing and revocation); never a token or a header value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<SubjectRef>,
    /// The replica that created it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replica: Option<String>,
    /// Protocol version negotiated with the client.
    pub protocol_version: String,
    /// The client's `initialize` params, replayed to backends on rebuild.
    /// Shared by the runtime and the memory store (same JSON on the wire).
    pub client_init: std::sync::Arc<serde_json::Value>,
    /// Backends that were healthy when the session was built.
    pub backends: Vec<BackendRecord>,
}

/// A validated token's issuer and subject, as the session records them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubjectRef {
    pub issuer: String,
    pub subject: String,
}

/// Who a new session belongs to, as its metadata records it.
#[derive(Debug, Clone, Default)]
pub struct Owner {
    /// Keyed hash of the caller (see [`SessionMetadata::identity`]).
    pub identity: Option<String>,
    pub subject: Option<SubjectRef>,
    pub replica: Option<String>,
}

/// One page of [`SessionStore::list`].
#[derive(Debug, Default)]
pub struct Page {
    pub sessions: Vec<SessionMetadata>,
    /// Where the next page starts (opaque); `None` after the last page.
    pub next_cursor: Option<String>,
}

/// Most sessions one [`SessionStore::list`] call returns.
pub const MAX_PAGE: usize = 500;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("session store unavailable: {0}")]
    Unavailable(String),
    #[error("stored session metadata is corrupt: {0}")]
    Corrupt(String),
    #[error("invalid cursor")]
    Cursor,
}

/// What a touch found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Touch {
    /// The session is stored; its lifetime was extended.
    Alive,
    /// The session is not stored (expired, or the store lost it) and was not deleted.
    Missing,
    /// The session was deleted (a tombstone exists): its runtime must go.
    Deleted,
}

/// Where session metadata lives: memory (one replica) or Redis (replicated).
///
/// Methods return boxed futures so the store can be a trait object chosen at
/// start-up from the config.
pub trait SessionStore: Send + Sync + 'static {
    /// Stores a new session.
    fn put(&self, meta: &SessionMetadata) -> BoxFuture<'_, Result<(), StoreError>>;
    /// Writes a live session's metadata (new backend session ids, or again
    /// after the store lost it) unless the session was deleted; `false` then,
    /// so a deleted session is never resurrected.
    fn update(&self, meta: &SessionMetadata) -> BoxFuture<'_, Result<bool, StoreError>>;
    /// Loads a session, `None` if absent, expired or deleted.
    fn get<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<SessionMetadata>, StoreError>>;
    /// Extends the session's lifetime (sliding idle timeout), and its
    /// subject's index entry with it.
    fn touch<'a>(&'a self, id: &'a str, subject: Option<&'a SubjectRef>) -> BoxFuture<'a, Result<Touch, StoreError>>;
    /// Removes a session and leaves a tombstone; `true` if it existed.
    fn delete<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<bool, StoreError>>;
    /// Up to `limit` (at most [`MAX_PAGE`]) live sessions after `cursor`
    /// (`None`: from the start), in a stable order. A session touched while
    /// the pages are read may show up twice, none is skipped.
    fn list<'a>(&'a self, cursor: Option<&'a str>, limit: usize) -> BoxFuture<'a, Result<Page, StoreError>>;
    /// The ids of the live sessions created by `subject` of `issuer`.
    fn sessions_of<'a>(&'a self, issuer: &'a str, subject: &'a str) -> BoxFuture<'a, Result<Vec<String>, StoreError>>;
    /// Checks that the store answers (for `/readyz`).
    fn ping(&self) -> BoxFuture<'_, Result<(), StoreError>>;
    /// Ids of sessions deleted anywhere (other replicas included), as they happen.
    fn deletions(&self) -> BoxStream<'static, String>;
    /// A secret shared by every replica on this store, to key identity hashes.
    fn identity_salt(&self) -> BoxFuture<'_, Result<Vec<u8>, StoreError>>;
    /// Writes `salt` (the one this replica holds) back unless the store
    /// already has one; `true` if it was missing. A store that lost the salt
    /// (Redis restarted without persistence, a FLUSHALL, an eviction) would
    /// otherwise let the next replica mint another one, and sessions bound to
    /// a caller would then answer 404 on some replicas.
    fn keep_identity_salt<'a>(&'a self, _salt: &'a [u8]) -> BoxFuture<'a, Result<bool, StoreError>> {
        Box::pin(async { Ok(false) })
    }
    /// Keeps one event of a session's client stream (at most `keep` per
    /// session, as long as the session lives) for reconnects elsewhere.
    /// A store only one replica uses keeps nothing: the replica's own log serves.
    fn append_event<'a>(
        &'a self,
        _session: &'a str,
        _event: &'a StoredEvent,
        _keep: usize,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async { Ok(()) })
    }
    /// A session's kept events with `after < id < before`, in id order.
    fn events_between<'a>(
        &'a self,
        _session: &'a str,
        _after: u64,
        _before: u64,
    ) -> BoxFuture<'a, Result<Vec<StoredEvent>, StoreError>> {
        Box::pin(async { Ok(Vec::new()) })
    }
}

/// One event of a session's client stream, as kept for replay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredEvent {
    pub id: u64,
    /// The JSON-RPC message, as sent.
    pub data: String,
}

/// Milliseconds since the Unix epoch (0 if the clock is before 1970).
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
