//! Input requests, bridged (2026-07-28 client → handshake-era backend): a
//! backend that asks the client something mid-call (`elicitation/create`,
//! `sampling/createMessage`, `roots/list`) cannot reach a client that keeps
//! no stream. vmcp pauses the call where it runs, answers the client with an
//! `InputRequiredResult` whose `requestState` it sealed, and when the client
//! retries with its answers, hands them to the backend and goes on waiting.
//!
//! The paused call lives on the replica that runs the caller's pool (the
//! retry is placed there like any request of that caller). `requestState`
//! is `base64url(JSON {t: token, p: pool hash, r: replica, e: expiry ms})`
//! `.` `base64url(HMAC-SHA256)` under a key this replica drew at start: it
//! names the paused call and who may resume it, never what the backend
//! asked or the client answered. A forged, expired, replayed (each state
//! resumes once) or another caller's state gets -32602, and nothing
//! reaches the backend.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::task::JoinHandle;

use crate::backend::{FromBackend, Reply};
use crate::mcp::RpcError;
use crate::session::Session;
use crate::store::unix_ms;
use crate::sync::lock;

/// How long a paused call waits for the client's answers.
const PAUSE_FOR: Duration = Duration::from_secs(300);
/// The key of the one input request vmcp relays at a time.
pub const INPUT_KEY: &str = "vmcp-0";

type Outcome = Result<Reply, RpcError>;

/// A call under way: the call, its backend's messages, its session.
pub struct Running {
    pub call: Call,
    pub relayed: UnboundedReceiver<FromBackend>,
    pub session: Arc<Session>,
}

/// Where a call runs: inside the request that started it (no task, no
/// cross-thread wake-up) until its backend asks the client something; from
/// then on in a task of its own, since it outlives that request.
pub enum Call {
    Here(Pin<Box<dyn Future<Output = Outcome> + Send>>),
    Own(JoinHandle<Outcome>),
}

impl Call {
    async fn outcome(&mut self) -> Outcome {
        match self {
            Call::Here(call) => call.await,
            Call::Own(task) => task
                .await
                .unwrap_or_else(|e| Err(RpcError::internal(format!("the call ended: {e}")))),
        }
    }

    /// Ends the call (one still inside its request ends when dropped).
    pub fn abort(&self) {
        if let Call::Own(task) = self {
            task.abort();
        }
    }

    /// The call, running on its own.
    fn detached(self) -> Self {
        match self {
            Call::Here(call) => Call::Own(tokio::spawn(call)),
            own => own,
        }
    }
}

struct Paused {
    running: Running,
    asked: Value,
    expires_ms: u64,
}

/// The calls paused on this replica, by token.
pub struct PausedCalls {
    key: [u8; 32],
    replica: String,
    /// `None` once [`PausedCalls::end_all`] ran: no call pauses any more.
    calls: Mutex<Option<HashMap<String, Paused>>>,
}

#[derive(Serialize, Deserialize)]
struct State {
    t: String,
    p: String,
    r: String,
    e: u64,
}

/// What the backend is waiting for, or how the call ended.
pub enum Step {
    Done(Outcome),
    /// The backend asked the client `request` (its id already the outward one).
    Asks {
        running: Running,
        request: Value,
    },
}

fn pool_hash(pool: &str) -> [u8; 16] {
    let digest = Sha256::digest(pool.as_bytes());
    let mut out = [0u8; 16];
    out.copy_from_slice(&digest[..16]);
    out
}

fn refused(why: &str) -> RpcError {
    RpcError::invalid_params(format!("requestState {why}"))
}

impl PausedCalls {
    pub fn new(replica: &str) -> Self {
        let mut key = [0u8; 32];
        // Without randomness the seals are still checked, just with a weaker key.
        let _ = getrandom::fill(&mut key);
        Self {
            key,
            replica: replica.to_owned(),
            calls: Mutex::new(Some(HashMap::new())),
        }
    }

    fn mac(&self, text: &str) -> Vec<u8> {
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(&self.key) else {
            unreachable!("HMAC accepts keys of any length")
        };
        mac.update(text.as_bytes());
        mac.finalize().into_bytes().to_vec()
    }

    /// Pauses `running` (whose backend asked `request`) for the caller of
    /// `pool`; the `InputRequiredResult` to answer with. Once the replica's
    /// listener has closed ([`PausedCalls::end_all`]) nobody could answer:
    /// the call ends here, and the client is told to start it again.
    pub fn pause(&self, running: Running, request: Value, pool: &str) -> Result<Value, RpcError> {
        let running = Running {
            call: running.call.detached(),
            ..running
        };
        let mut token = [0u8; 16];
        let _ = getrandom::fill(&mut token);
        let token = hex::encode(token);
        let expires_ms = unix_ms() + PAUSE_FOR.as_millis() as u64;
        let state = State {
            t: token.clone(),
            p: B64.encode(pool_hash(pool)),
            r: self.replica.clone(),
            e: expires_ms,
        };
        let body = B64.encode(serde_json::to_vec(&state).unwrap_or_default());
        let sealed = format!("{body}.{}", B64.encode(self.mac(&body)));
        let asked = request.get("id").cloned().unwrap_or(Value::Null);
        let input = json!({
            "method": request.get("method").cloned().unwrap_or(Value::Null),
            "params": request.get("params").cloned().unwrap_or_else(|| json!({})),
        });
        let mut calls = lock(&self.calls);
        let Some(calls) = calls.as_mut() else {
            running.call.abort();
            return Err(RpcError::internal(
                "this replica is shutting down: the call was ended; start the call again",
            ));
        };
        let now = unix_ms();
        calls.retain(|_, p| {
            let live = p.expires_ms > now;
            if !live {
                p.running.call.abort(); // nobody came back: the backend call ends
            }
            live
        });
        calls.insert(
            token,
            Paused {
                running,
                asked,
                expires_ms,
            },
        );
        Ok(json!({
            "resultType": "input_required",
            "inputRequests": { INPUT_KEY: input },
            "requestState": sealed,
        }))
    }

    /// Ends every paused call (their backend calls cancelled): once this
    /// replica's listener closes, no retry can reach them, and a call left
    /// waiting would hold its session's release until the shutdown deadline.
    /// A call running now (resumed) that asks again later ends then
    /// ([`PausedCalls::pause`]).
    pub fn end_all(&self) {
        let ended = lock(&self.calls).take().unwrap_or_default();
        if !ended.is_empty() {
            tracing::info!(calls = ended.len(), "shutting down: paused calls ended unanswered");
        }
        for paused in ended.values() {
            paused.running.call.abort();
        }
    }

    /// The paused call `sealed` names, for the caller of `pool`, with the
    /// answer the client gave; once.
    pub async fn resume(&self, sealed: &str, pool: &str, responses: Option<&Value>) -> Result<Running, RpcError> {
        let (body, mac) = sealed.split_once('.').ok_or_else(|| refused("is malformed"))?;
        let state = unsealed(body);
        if state.as_ref().is_some_and(|s| s.r != self.replica) {
            // Retries are sent to the replica a state names; here means it is gone.
            return Err(refused(
                "names a call paused on a replica that is gone: start the call again",
            ));
        }
        let given = B64.decode(mac).map_err(|_| refused("is malformed"))?;
        let Ok(mut check) = Hmac::<Sha256>::new_from_slice(&self.key) else {
            unreachable!("HMAC accepts keys of any length")
        };
        check.update(body.as_bytes());
        check
            .verify_slice(&given)
            .map_err(|_| refused("was not issued by this replica or was altered"))?;
        let state = state.ok_or_else(|| refused("is malformed"))?;
        if state.e <= unix_ms() {
            return Err(refused("has expired"));
        }
        if state.p != B64.encode(pool_hash(pool)) {
            return Err(refused("belongs to another caller"));
        }
        let answer = responses
            .and_then(|r| r.get(INPUT_KEY))
            .cloned()
            .ok_or_else(|| RpcError::invalid_params(format!("inputResponses.{INPUT_KEY} is missing")))?;
        let paused = lock(&self.calls)
            .as_mut()
            .and_then(|calls| calls.remove(&state.t))
            .ok_or_else(|| refused("was used already or its call ended"))?;
        let message = json!({ "jsonrpc": "2.0", "id": paused.asked, "result": answer });
        if let Err(e) = paused.running.session.answer(message).await {
            paused.running.call.abort();
            return Err(RpcError::internal(format!("the answer did not reach the backend: {e}")));
        }
        Ok(paused.running)
    }
}

/// The replica a sealed state names, unverified: where to send the retry
/// (that replica checks the seal).
pub fn holder(sealed: &str) -> Option<String> {
    Some(unsealed(sealed.split_once('.')?.0)?.r)
}

/// The state a sealed body carries, unverified.
fn unsealed(body: &str) -> Option<State> {
    serde_json::from_slice(&B64.decode(body).ok()?).ok()
}

/// Waits for `running` to end or to ask the client something; what else the
/// backend says goes through the session (a list change refreshes its catalog).
pub async fn step(mut running: Running) -> Step {
    let mut open = true;
    loop {
        tokio::select! {
            biased;
            message = running.relayed.recv(), if open => {
                let Some(message) = message else {
                    open = false; // the call is ending
                    continue;
                };
                let Some(out) = Box::pin(running.session.outward(message)).await else { continue };
                if out.get("id").is_some() && out.get("method").is_some() {
                    return Step::Asks { running, request: out };
                }
            }
            done = running.call.outcome() => return Step::Done(done),
        }
    }
}
