//! The session's client requests that a backend is serving now, by client
//! request id, so a client's `notifications/cancelled` reaches the right one.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::sync::lock;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

/// The running calls by id. Ids are the client's, so the hasher is seeded per
/// process (foldhash's quality variant), not a fixed one.
type Running = Arc<Mutex<HashMap<Key, CancellationToken, foldhash::quality::RandomState>>>;

#[derive(Default)]
pub struct Calls {
    running: Running,
}

/// One running call; dropping it forgets the call.
pub struct CallTicket {
    key: Key,
    token: CancellationToken,
    running: Running,
}

impl CallTicket {
    pub fn token(&self) -> CancellationToken {
        self.token.clone()
    }
}

impl Drop for CallTicket {
    fn drop(&mut self) {
        lock(&self.running).remove(&self.key);
    }
}

/// A request id as the client wrote it: `1` and `"1"` are different
/// requests. Integers (what clients send) are kept without an allocation;
/// anything else as its JSON text.
#[derive(Clone, PartialEq, Eq, Hash)]
enum Key {
    Signed(i64),
    Unsigned(u64),
    Text(Box<str>),
}

fn key(id: &Value) -> Key {
    if let Some(n) = id.as_i64() {
        Key::Signed(n)
    } else if let Some(n) = id.as_u64() {
        Key::Unsigned(n)
    } else {
        Key::Text(id.to_string().into())
    }
}

impl Calls {
    /// Starts tracking the call with client request id `id`.
    pub fn track(&self, id: &Value) -> CallTicket {
        let (token, key) = (CancellationToken::new(), key(id));
        lock(&self.running).insert(key.clone(), token.clone());
        CallTicket {
            key,
            token,
            running: Arc::clone(&self.running),
        }
    }

    /// Cancels the call with client request id `id`, if it is still running.
    pub fn cancel(&self, id: &Value) -> bool {
        match lock(&self.running).get(&key(id)) {
            Some(token) => {
                token.cancel();
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn cancels_only_running_calls_by_exact_id() {
        let calls = Calls::default();
        let ticket = calls.track(&json!(1));
        assert!(!calls.cancel(&json!("1")));
        assert!(calls.cancel(&json!(1)));
        assert!(ticket.token().is_cancelled());
        drop(ticket);
        assert!(!calls.cancel(&json!(1)));
        let (big, float, text) = (json!(u64::MAX), json!(1.5), json!("1"));
        let tickets = [calls.track(&big), calls.track(&float), calls.track(&text)];
        assert!(!calls.cancel(&json!(-1)) && !calls.cancel(&json!(1)));
        assert!(calls.cancel(&big) && calls.cancel(&float) && calls.cancel(&text));
        assert!(tickets.iter().all(|t| t.token().is_cancelled()));
    }
}
