//! Sessions this replica has never seen, rebuilt from the store on their
//! first request here (once, however many requests ask at once), and the
//! store lifetime of live sessions, extended in the background.

use super::*;

impl SessionManager {
    /// Rebuilds foreign session `id` for a caller with `identity` once,
    /// however many such requests ask at once. Callers with another identity
    /// do not share the rebuild (they get their own `NotFound`).
    pub(super) async fn rebuild_once(
        &self,
        id: &str,
        identity: Option<&str>,
        bearer: Option<&str>,
    ) -> Result<Arc<Session>, ResolveError> {
        let key = format!("{id}\n{}", identity.unwrap_or_default());
        let cell: Rebuild = Arc::clone(lock(&self.rebuilding).entry(key.clone()).or_default());
        let result = cell.get_or_init(|| self.rebuild(id, identity, bearer)).await.clone();
        let mut rebuilding = lock(&self.rebuilding);
        if rebuilding.get(&key).is_some_and(|c| Arc::ptr_eq(c, &cell)) {
            rebuilding.remove(&key);
        }
        result
    }

    async fn rebuild(
        &self,
        id: &str,
        identity: Option<&str>,
        bearer: Option<&str>,
    ) -> Result<Arc<Session>, ResolveError> {
        if let Some(session) = self.local(id) {
            return Ok(session); // a rebuild that just finished
        }
        let started = std::time::Instant::now();
        let meta = match self.store.get(id).await {
            Ok(Some(meta)) => meta,
            Ok(None) => {
                self.metrics.session_rebuilds.with_label_values(&["not_found"]).inc();
                return Err(ResolveError::NotFound);
            }
            Err(e) => return Err(ResolveError::Unavailable(e.to_string())),
        };
        // Who is asking, before any backend is touched or a slot taken.
        if meta.identity.as_deref() != identity {
            // Not a warning: any client that knows an id could flood the log with it.
            tracing::debug!(session.id = %id, "request for a session bound to another identity");
            return Err(ResolveError::NotFound);
        }
        let result = self.restore(meta, bearer).await;
        let outcome = match &result {
            Ok(_) => "ok",
            Err(ResolveError::NotFound) => "not_found",
            Err(_) => "error",
        };
        self.metrics.session_rebuilds.with_label_values(&[outcome]).inc();
        if result.is_ok() {
            self.metrics
                .session_rebuild_duration
                .observe(started.elapsed().as_secs_f64());
            tracing::info!(session.id = %id, took_ms = started.elapsed().as_millis() as u64, "foreign session rebuilt");
        }
        result
    }

    async fn restore(
        &self,
        meta: crate::store::SessionMetadata,
        bearer: Option<&str>,
    ) -> Result<Arc<Session>, ResolveError> {
        let id = meta.id.clone();
        let mut reservation = self.reserve().ok_or(ResolveError::Full(self.limits.max_sessions))?;
        let stored = meta.backends.clone();
        let token = self.factory.caller_token(bearer);
        let session = Arc::new(self.factory.restore(meta, token).await);
        if session.backend_sessions() != stored {
            match self.store.update(&session.metadata_now()).await {
                Ok(true) => {}
                Ok(false) => {
                    self.close_later(session, CloseReason::Delete); // deleted while we rebuilt it
                    return Err(ResolveError::NotFound);
                }
                Err(e) => tracing::warn!(session.id = %id, error = %e, "rebuilt backend sessions not stored"),
            }
        }
        reservation.1 = true;
        self.adopt(&session);
        // Pod-local backends were opened afresh here: their state is gone. Say so.
        let reset: Vec<String> = stored
            .iter()
            .filter(|r| self.factory.is_local(&r.name))
            .map(|r| r.name.to_string())
            .collect();
        if !reset.is_empty() {
            let announcing = Arc::clone(&session);
            tokio::spawn(async move { announcing.announce_reset(&reset).await });
        }
        Ok(session)
    }

    /// Extends the session's store lifetime in the background, at most once per interval.
    pub(super) fn touch_store(self: &Arc<Self>, session: &Arc<Session>) {
        if !self.limits.shared_store {
            return; // the reaper alone decides; nothing else reads the memory store
        }
        let now = self.now_ms();
        let last = session.last_store_touch().load(Ordering::Relaxed);
        let interval = self.limits.touch_interval.as_millis() as u64;
        if now.saturating_sub(last) < interval
            || session
                .last_store_touch()
                .compare_exchange(last, now, Ordering::AcqRel, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        let (manager, session) = (Arc::clone(self), Arc::clone(session));
        tokio::spawn(async move { manager.refresh(&session).await });
    }

    async fn refresh(&self, session: &Session) {
        let id = session.id();
        let found = match self.store.touch(id, session.subject()).await {
            Ok(Touch::Missing) => match self.store.update(&session.metadata_now()).await {
                Ok(true) => {
                    tracing::info!(session.id = %id, "session metadata was missing from the store; written again");
                    Ok(Touch::Alive)
                }
                Ok(false) => Ok(Touch::Deleted),
                Err(e) => Err(e),
            },
            other => other,
        };
        match found {
            Ok(Touch::Deleted) => {
                self.remove(id, CloseReason::Delete);
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(session.id = %id, error = %e, "session lifetime not extended in the store"),
        }
    }
}
