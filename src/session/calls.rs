//! The session's client requests that a backend is serving now, by client
//! request id, so a client's `notifications/cancelled` reaches the right one.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::sync::lock;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

#[derive(Default)]
pub struct Calls {
    running: Arc<Mutex<HashMap<String, CancellationToken>>>,
}

/// One running call; dropping it forgets the call.
pub struct CallTicket {
    key: String,
    token: CancellationToken,
    running: Arc<Mutex<HashMap<String, CancellationToken>>>,
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

/// Ids as the client wrote them: `1` and `"1"` are different requests.
fn key(id: &Value) -> String {
    id.to_string()
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
    }
}
