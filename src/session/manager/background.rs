//! The manager's background work: the idle reaper (sleeping until the
//! earliest deadline), deletions on other replicas, and sessions that move
//! away when the membership changes.

use super::*;

impl SessionManager {
    pub(super) fn schedule(&self, deadline: Instant, id: String) {
        let mut deadlines = lock(&self.deadlines);
        let earliest = deadlines.first().is_none_or(|(d, _)| deadline < *d);
        deadlines.insert((deadline, id));
        drop(deadlines);
        if earliest {
            self.reaper_wake.notify_one();
        }
    }

    /// Ends every session idle past its deadline; returns the next deadline.
    /// Never waits on the store or a backend: each expiry is a task.
    fn reap(self: &Arc<Self>) -> Option<Instant> {
        let now = Instant::now();
        let due: Vec<(Instant, String)> = {
            let mut deadlines = lock(&self.deadlines);
            let mut due = Vec::new();
            while deadlines.first().is_some_and(|(d, _)| *d <= now) {
                due.extend(deadlines.pop_first());
            }
            due
        };
        for (_, id) in due {
            let Some(session) = self.local(&id) else { continue }; // ended meanwhile
            let real = self.epoch + Duration::from_millis(session.last_seen()) + self.limits.idle_timeout;
            let busy = session.inflight() > 0;
            if real > now || busy {
                // Used since it was scheduled, or busy right now: not idle.
                self.schedule(if busy { now + self.limits.idle_timeout } else { real }, id);
                continue;
            }
            let manager = Arc::clone(self);
            self.closing.spawn(async move { manager.expire(&id).await });
        }
        lock(&self.deadlines).first().map(|(d, _)| *d)
    }

    /// Idle here. With a shared store the session may live on through another
    /// replica (its store entry was touched since): then only the runtime goes.
    async fn expire(&self, id: &str) {
        let alive_elsewhere = self.limits.shared_store && matches!(self.store.get(id).await, Ok(Some(_)) | Err(_));
        if alive_elsewhere {
            self.remove(id, CloseReason::Released);
            return;
        }
        self.remove(id, CloseReason::Idle);
        if let Err(e) = self.store.delete(id).await {
            tracing::warn!(session.id = %id, error = %e, "expired session not removed from the store");
        }
    }

    /// Runs the idle reaper and follows deletions made on other replicas,
    /// until `shutdown` fires.
    pub async fn run_background(self: Arc<Self>, shutdown: CancellationToken) {
        let deletions = {
            let manager = Arc::clone(&self);
            let mut feed = self.store.deletions();
            async move {
                while let Some(id) = feed.next().await {
                    manager.remove(&id, CloseReason::Delete);
                }
            }
        };
        tokio::select! {
            _ = Arc::clone(&self).run_reaper() => {}
            _ = deletions => {}
            _ = Arc::clone(&self).follow_membership() => {}
            _ = shutdown.cancelled() => {}
        }
    }

    /// Whether session `id`, live here, now belongs to another replica.
    /// Under pinned placement a caller's pool stays where it lives, like a
    /// pinned session (see `crate::affinity::homes`).
    fn moved(&self, id: &str) -> bool {
        if self.membership.is_pinned() && crate::session::identity::is_pool_id(id) {
            return false;
        }
        self.membership.place(id) != Placement::Local
    }

    /// When the members change, sessions that now belong to another replica
    /// are released after `release_grace` (their backend sessions stay open
    /// for the new owner, which resumes them on its first request).
    async fn follow_membership(self: Arc<Self>) {
        let mut changes = self.membership.subscribe();
        self.metrics.ring_members.set(changes.borrow().ring.len() as i64);
        while changes.changed().await.is_ok() {
            self.metrics
                .ring_members
                .set(changes.borrow_and_update().ring.len() as i64);
            let ids = self.session_ids();
            let moved: Vec<String> = ids.into_iter().filter(|id| self.moved(id)).collect();
            if moved.is_empty() {
                continue;
            }
            tracing::info!(sessions = moved.len(), grace = ?self.limits.release_grace, "sessions moved to other replicas");
            let manager = Arc::clone(&self);
            tokio::spawn(async move {
                tokio::time::sleep(manager.limits.release_grace).await;
                for id in moved {
                    if manager.moved(&id) {
                        manager.remove(&id, CloseReason::Released);
                    }
                }
            });
        }
    }

    async fn run_reaper(self: Arc<Self>) {
        loop {
            let next = self.reap();
            let sleep = async {
                match next {
                    Some(when) => tokio::time::sleep_until(when).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = sleep => {}
                _ = self.reaper_wake.notified() => {}
            }
        }
    }
}
