//! While a client holds a GET stream on the session, the session listens to
//! each backend's own stream (GET) and passes on what the backends send
//! outside any call: list changes, log lines, resource updates, requests.
//! A backend stream is a connection per backend session, so it is open only
//! while someone listens: the last client stream to close stops them all.

use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::Session;
use crate::backend::{BackendError, BackendSession, FromBackend};

/// Pause before reopening a backend stream that ended or failed.
const REOPEN_AFTER: Duration = Duration::from_secs(1);

/// The backend listeners of one session; dropping the last handle stops them.
pub struct Listening {
    tasks: Vec<JoinHandle<()>>,
    /// How many listeners have had their first answer from their backend.
    settled: watch::Receiver<usize>,
}

impl Listening {
    /// Waits (at most `limit`) until every backend answered its first stream
    /// request, so that what a backend sends after the client's GET stream
    /// is open is not missed.
    pub async fn settled(&self, limit: Duration) {
        let mut settled = self.settled.clone();
        let all = self.tasks.len();
        let _ = tokio::time::timeout(limit, settled.wait_for(|n| *n >= all)).await;
    }
}

impl Drop for Listening {
    fn drop(&mut self) {
        self.tasks.iter().for_each(JoinHandle::abort);
    }
}

/// The session's listeners, if any client stream keeps them alive.
#[derive(Default)]
pub struct ListenSlot(Mutex<Weak<Listening>>);

impl Session {
    /// Starts listening to the backends (or joins the listening under way).
    pub fn listen(self: &Arc<Self>) -> Arc<Listening> {
        let mut slot = crate::sync::lock(&self.listening.0);
        if let Some(listening) = slot.upgrade() {
            return listening;
        }
        let backends: Vec<Arc<BackendSession>> = self.read().backends.values().cloned().collect();
        let (count, settled) = watch::channel(0);
        let count = Arc::new(count);
        let tasks = backends
            .into_iter()
            .map(|b| tokio::spawn(listen_to(Arc::downgrade(self), b, Arc::clone(&count))))
            .collect();
        let listening = Arc::new(Listening { tasks, settled });
        *slot = Arc::downgrade(&listening);
        listening
    }
}

/// Relays one backend's stream into the session until the session ends or
/// the backend offers no stream. A lost backend session is not reopened
/// here (a call heals it); the listener follows the healed one.
async fn listen_to(session: Weak<Session>, mut backend: Arc<BackendSession>, settled: Arc<watch::Sender<usize>>) {
    let name: Arc<str> = Arc::from(backend.name());
    let mut first = true;
    loop {
        let opened = backend.listen().await;
        if std::mem::take(&mut first) {
            settled.send_modify(|n| *n += 1);
        }
        match opened {
            Ok(None) => return,
            Ok(Some(mut messages)) => {
                while let Some(message) = messages.next().await {
                    let Some(session) = session.upgrade() else { return };
                    let from = FromBackend {
                        backend: Arc::clone(&name),
                        message,
                    };
                    if let Some(out) = session.outward(from).await {
                        session.publish(&out).await;
                    }
                }
            }
            Err(BackendError::SessionExpired) => {}
            Err(e) => tracing::debug!(backend = %name, error = %e, "backend stream failed"),
        }
        tokio::time::sleep(REOPEN_AFTER).await;
        let Some(live) = session.upgrade().filter(|s| !s.is_closed()) else {
            return;
        };
        if let Ok(current) = live.backend_named(&name) {
            backend = current;
        }
    }
}
