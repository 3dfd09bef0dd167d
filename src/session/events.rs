//! The session's outgoing message log: what goes to the client's GET stream,
//! numbered, with the last few kept so a client that reconnects with
//! `Last-Event-ID` gets what it missed.
//!
//! Ids start at the runtime's creation time in microseconds, so the ids a
//! replica that rebuilt the session hands out are above those of the replica
//! that held it before: a `Last-Event-ID` from the old holder then replays
//! everything the new one has, and no id is ever reused for another message.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, OnceLock};

use serde_json::Value;
use tokio::sync::broadcast;

/// How many events a session keeps for reconnecting clients (here and in the store).
pub const KEEP: usize = 256;

/// One message on the session stream.
#[derive(Debug)]
pub struct Event {
    pub id: u64,
    pub data: Box<str>,
}

/// How far a live reader may fall behind before its stream is ended to resume.
const LIVE_CAPACITY: usize = 64;

pub struct EventLog {
    /// The id of this runtime's first event: lower ids are an earlier holder's.
    first_id: u64,
    /// Made when the first stream opens: a broadcast channel allocates its
    /// whole ring at once, which most sessions (never streamed) do not need.
    live: OnceLock<broadcast::Sender<Arc<Event>>>,
    /// The next id and the kept events; one lock, so that a reconnecting
    /// client's replay and its live feed neither overlap nor leave a gap.
    kept: Mutex<(u64, VecDeque<Arc<Event>>)>,
}

/// What a (re)connecting stream gets: the missed events, then the live feed.
pub struct Subscription {
    pub missed: Vec<Arc<Event>>,
    pub live: broadcast::Receiver<Arc<Event>>,
}

impl EventLog {
    pub fn new(first_id: u64) -> Self {
        Self {
            first_id,
            live: OnceLock::new(),
            kept: Mutex::new((first_id, VecDeque::new())),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (u64, VecDeque<Arc<Event>>)> {
        crate::sync::lock(&self.kept)
    }

    pub fn first_id(&self) -> u64 {
        self.first_id
    }

    /// Numbers and keeps an event; [`send`](Self::send) then delivers it.
    pub fn record(&self, message: &Value) -> Arc<Event> {
        let mut kept = self.lock();
        let event = Arc::new(Event {
            id: kept.0,
            data: message.to_string().into_boxed_str(),
        });
        kept.0 += 1;
        if kept.1.len() == KEEP {
            kept.1.pop_front();
        }
        kept.1.push_back(Arc::clone(&event));
        event
    }

    /// Delivers a recorded event to the open streams.
    pub fn send(&self, event: Arc<Event>) {
        // No receiver just means no stream is open now; the event is kept.
        if let Some(live) = self.live.get() {
            let _ = live.send(event);
        }
    }

    #[cfg(test)]
    fn publish(&self, message: &Value) {
        self.send(self.record(message));
    }

    /// The id of the newest event (one below the first id before any event).
    pub fn last_id(&self) -> u64 {
        self.lock().0.saturating_sub(1)
    }

    /// Subscribes, first replaying what came after `last_seen` (if given).
    pub fn subscribe(&self, last_seen: Option<u64>) -> Subscription {
        let kept = self.lock();
        let missed = match last_seen {
            Some(last) => kept.1.iter().filter(|e| e.id > last).cloned().collect(),
            None => Vec::new(),
        };
        let live = self.live.get_or_init(|| broadcast::channel(LIVE_CAPACITY).0);
        Subscription {
            missed,
            live: live.subscribe(),
        }
    }
}

/// The first event id of a runtime created now.
pub fn first_id_now() -> u64 {
    let micros = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros());
    u64::try_from(micros).unwrap_or(u64::MAX / 2)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn replays_what_came_after_the_last_seen_id() {
        let log = EventLog::new(100);
        for i in 0..3 {
            log.publish(&json!({ "n": i }));
        }
        let sub = log.subscribe(Some(100));
        let ids: Vec<u64> = sub.missed.iter().map(|e| e.id).collect();
        assert_eq!(ids, [101, 102]);
        assert!(log.subscribe(None).missed.is_empty());
        // An id from an older holder of the session replays everything kept.
        assert_eq!(log.subscribe(Some(5)).missed.len(), 3);
    }

    #[test]
    fn keeps_a_bounded_tail() {
        let log = EventLog::new(0);
        for i in 0..(KEEP + 10) {
            log.publish(&json!(i));
        }
        let missed = log.subscribe(Some(0)).missed;
        assert_eq!(missed.len(), KEEP);
        assert_eq!(missed[0].id, 10);
    }

    #[tokio::test]
    async fn live_events_follow_the_replay() {
        let log = EventLog::new(0);
        log.publish(&json!("a"));
        let mut sub = log.subscribe(Some(0));
        log.publish(&json!("b"));
        assert!(sub.missed.is_empty());
        let next = sub.live.recv().await.unwrap();
        assert_eq!((next.id, &*next.data), (1, "\"b\""));
    }
}
