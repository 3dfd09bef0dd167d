//! The relaying streams of calls (see `http::call`), kept on the replica
//! that runs the call, so that a client whose POST stream broke can resume
//! it: a GET with `Last-Event-ID: {stream}/{seq}` replays what followed and
//! goes on until the call's response. A finished stream is kept a minute.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::sync::lock;
use futures_util::stream::BoxStream;
use futures_util::StreamExt;
use tokio::sync::watch;

/// How long a finished call stream can still be resumed.
const KEPT_AFTER_END: Duration = Duration::from_secs(60);
/// Messages, and bytes of them, one call stream keeps at most (memory per
/// call is bounded: each message may be as large as `max_response_bytes`):
/// past either, notifications are dropped (and logged once); requests to the
/// client and the response never are.
const MAX_EVENTS: usize = 4096;
const MAX_BYTES: usize = 4 * 1024 * 1024;

/// A call stream's messages, and their size in all.
#[derive(Default)]
struct Log {
    events: Vec<Arc<str>>,
    bytes: usize,
}

/// One call's stream: its messages in order, then the end.
pub struct CallStream {
    id: u64,
    events: Mutex<Log>,
    /// (messages so far, ended)
    progress: watch::Sender<(usize, bool)>,
    ended_at: Mutex<Option<Instant>>,
    dropped: std::sync::atomic::AtomicUsize,
}

impl CallStream {
    /// The event id that comes before every message of this stream.
    pub fn start_id(&self) -> String {
        format!("{}/0", self.id)
    }

    pub fn push(&self, message: &serde_json::Value) {
        let text = message.to_string();
        let notification = message
            .get("method")
            .and_then(serde_json::Value::as_str)
            .is_some_and(|m| m.starts_with("notifications/"));
        let mut log = lock(&self.events);
        let full = log.events.len() >= MAX_EVENTS || log.bytes.saturating_add(text.len()) > MAX_BYTES;
        if full && notification {
            if self.dropped.fetch_add(1, Ordering::Relaxed) == 0 {
                tracing::warn!(
                    kept = log.events.len(),
                    bytes = log.bytes,
                    "a call relayed too many messages; dropping notifications"
                );
            }
            return;
        }
        log.bytes += text.len();
        log.events.push(Arc::from(text));
        let len = log.events.len();
        self.progress.send_modify(|p| p.0 = len);
    }

    pub fn end(&self) {
        *lock(&self.ended_at) = Some(Instant::now());
        self.progress.send_modify(|p| p.1 = true);
    }

    fn expired(&self, now: Instant) -> bool {
        lock(&self.ended_at).is_some_and(|at| now.duration_since(at) > KEPT_AFTER_END)
    }

    /// The messages after the first `skip`, as `(event id, data)`, live until the end.
    pub fn read_from(self: &Arc<Self>, skip: usize) -> BoxStream<'static, (String, Arc<str>)> {
        let state = (Arc::clone(self), skip, self.progress.subscribe());
        futures_util::stream::unfold(state, |(stream, next, mut progress)| async move {
            loop {
                let (len, ended) = *progress.borrow_and_update();
                if next < len {
                    let data = Arc::clone(&lock(&stream.events).events[next]);
                    let id = format!("{}/{}", stream.id, next + 1);
                    return Some(((id, data), (stream, next + 1, progress)));
                }
                if ended {
                    return None;
                }
                progress.changed().await.ok()?;
            }
        })
        .boxed()
    }
}

/// A session's call streams.
#[derive(Default)]
pub struct CallStreams {
    next: AtomicU64,
    open: Mutex<HashMap<u64, Arc<CallStream>>>,
}

impl CallStreams {
    /// A new stream (and forgets those that ended long enough ago).
    pub fn open(&self) -> Arc<CallStream> {
        let id = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        let stream = Arc::new(CallStream {
            id,
            events: Mutex::default(),
            progress: watch::channel((0, false)).0,
            ended_at: Mutex::default(),
            dropped: Default::default(),
        });
        let mut open = lock(&self.open);
        let now = Instant::now();
        open.retain(|_, s| !s.expired(now));
        open.insert(id, Arc::clone(&stream));
        stream
    }

    /// The stream an event id `{stream}/{seq}` belongs to, and how many of
    /// its messages the client has seen; `None` if it is not a call stream
    /// id or the stream is gone.
    pub fn resume(&self, last_event_id: &str) -> Option<(Arc<CallStream>, usize)> {
        let (stream, seen) = last_event_id.split_once('/')?;
        let (stream, seen): (u64, usize) = (stream.parse().ok()?, seen.parse().ok()?);
        lock(&self.open).get(&stream).map(|s| (Arc::clone(s), seen))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[tokio::test]
    async fn a_reader_resumes_after_what_it_saw_and_stops_at_the_end() {
        let streams = CallStreams::default();
        let stream = streams.open();
        assert_eq!(stream.start_id(), "1/0");
        stream.push(&json!("a"));
        stream.push(&json!("b"));
        let (found, seen) = streams.resume("1/1").unwrap();
        let mut reader = found.read_from(seen);
        let (id, data) = reader.next().await.unwrap();
        assert_eq!((id.as_str(), &*data), ("1/2", "\"b\""));
        stream.push(&json!("c"));
        stream.end();
        assert_eq!(reader.next().await.unwrap().0, "1/3");
        assert!(reader.next().await.is_none());
        assert!(streams.resume("2/0").is_none());
        assert!(streams.resume("17").is_none());
    }

    #[tokio::test]
    async fn large_notifications_are_capped_by_size_too() {
        // A backend may send messages up to max_response_bytes (16 MiB) each:
        // 4,096 of them would be 64 GiB kept for a minute after the call.
        let stream = CallStreams::default().open();
        let big = "x".repeat(1024 * 1024);
        for _ in 0..20 {
            stream.push(&json!({"method": "notifications/message", "params": {"data": big}}));
        }
        stream.push(&json!({"jsonrpc": "2.0", "id": 1, "result": {"text": big}}));
        stream.end();
        let all: Vec<_> = stream.read_from(0).collect().await;
        let kept: usize = all.iter().map(|(_, data)| data.len()).sum();
        assert!(kept <= MAX_BYTES + big.len() + 100, "kept {kept} bytes");
        assert_eq!(all.len(), 4, "three notifications fit in 4 MiB, then the response");
        assert!(all[3].1.contains("result"));
    }

    #[tokio::test]
    async fn a_flood_of_notifications_is_capped_but_requests_and_the_response_are_kept() {
        let stream = CallStreams::default().open();
        for i in 0..(MAX_EVENTS + 100) {
            stream.push(&json!({"method": "notifications/progress", "params": {"progress": i}}));
        }
        stream.push(&json!({"jsonrpc": "2.0", "id": "vmcp.b.1", "method": "elicitation/create"}));
        stream.push(&json!({"jsonrpc": "2.0", "id": 1, "result": {}}));
        stream.end();
        let all: Vec<_> = stream.read_from(0).collect().await;
        assert_eq!(all.len(), MAX_EVENTS + 2);
        assert!(all[MAX_EVENTS].1.contains("elicitation/create"));
        assert!(all[MAX_EVENTS + 1].1.contains("result"));
    }
}
