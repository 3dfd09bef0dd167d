//! Per-backend self-heal: a backend that answers 404 to one of our backend
//! sessions (it restarted, or expired the session) gets a new one, the
//! catalog is rebuilt, the store learns the new backend session id, and the
//! client hears `list_changed` for each list that changed. A backend's own
//! `list_changed` takes the same way without the new backend session, and so
//! does a backend the session lacks (it was down when the session began)
//! once its circuit closes: [`Session::regain_if_recovered`].

use std::sync::atomic::Ordering;
use std::sync::Arc;

use serde_json::json;

use super::factory::list_everything;
use super::{Session, SessionError};
use crate::aggregate::{Catalog, Listing};
use crate::backend::BackendSession;

impl Session {
    /// Replaces backend session `failed` of backend `name` by a fresh one
    /// (once, however many calls saw the 404) and returns the current one.
    pub(super) async fn heal(
        &self,
        name: &str,
        failed: &Arc<BackendSession>,
    ) -> Result<Arc<BackendSession>, SessionError> {
        let _serial = self.heal.lock().await;
        {
            let state = self.read();
            if state.closed {
                return Err(SessionError::Closed);
            }
            if let Some(current) = state.backends.get(name).filter(|c| !Arc::ptr_eq(c, failed)) {
                return Ok(Arc::clone(current)); // another call healed it meanwhile
            }
        }
        let metrics = self.factory.metrics();
        let (fresh, listing) = match self
            .factory
            .reopen(failed.backend(), &self.meta.client_init, self.caller())
            .await
        {
            Ok(opened) => opened,
            Err(error) => {
                metrics.backend_rebuilds.with_label_values(&[name, "failed"]).inc();
                tracing::warn!(session.id = %self.id, backend = name, %error, "backend session lost and not re-initialized");
                return Err(SessionError::Backend {
                    backend: name.to_owned(),
                    error,
                });
            }
        };
        metrics
            .backend_rebuilds
            .with_label_values(&[name, "reinitialized"])
            .inc();
        tracing::info!(session.id = %self.id, backend = name, "backend session re-initialized after 404");
        let fresh = Arc::new(fresh);
        let Some((old, new)) = self.install(name, Some(Arc::clone(&fresh)), listing) else {
            fresh.close().await;
            return Err(SessionError::Closed);
        };
        self.persist().await?;
        self.announce_changes(&old, &new).await;
        Ok(fresh)
    }

    /// If a backend circuit closed since this session last looked, opens the
    /// backends it lacks in the background (the request goes on at once).
    pub(crate) fn regain_if_recovered(self: &Arc<Self>) {
        let now = self.factory.recoveries();
        let seen = self.seen_recoveries.load(Ordering::Acquire);
        if now == seen
            || self
                .seen_recoveries
                .compare_exchange(seen, now, Ordering::AcqRel, Ordering::Acquire)
                .is_err()
        {
            return;
        }
        let session = Arc::clone(self);
        tokio::spawn(async move { session.regain().await });
    }

    /// Opens every configured backend this session lacks whose circuit is
    /// closed, then tells the client what changed, once.
    async fn regain(&self) {
        let _serial = self.heal.lock().await;
        let missing: Vec<_> = {
            let state = self.read();
            if state.closed {
                return;
            }
            self.factory
                .backends()
                .iter()
                .filter(|b| !state.backends.contains_key(b.name()) && !b.circuit().is_open())
                .cloned()
                .collect()
        };
        let (mut before, mut after) = (None, None);
        for backend in missing {
            let Ok((fresh, listing)) = self
                .factory
                .reopen(&backend, &self.meta.client_init, self.caller())
                .await
            else {
                continue; // logged and counted by the factory
            };
            let fresh = Arc::new(fresh);
            let Some((old, new)) = self.install(backend.name(), Some(Arc::clone(&fresh)), listing) else {
                fresh.close().await;
                return;
            };
            tracing::info!(session.id = %self.id, backend = backend.name(), "backend joined the session after recovering");
            before.get_or_insert(old);
            after = Some(new);
        }
        if let (Some(old), Some(new)) = (before, after) {
            if self.persist().await.is_ok() {
                self.announce_changes(&old, &new).await;
            }
        }
    }

    /// Re-lists backend `name` after it said a list changed, and tells the
    /// client which aggregated lists changed (if any did).
    pub(super) async fn refresh(&self, name: &str) {
        let _serial = self.heal.lock().await;
        let Ok(backend) = self.backend_named(name) else {
            return;
        };
        match list_everything(&backend).await {
            Ok(listing) => {
                if let Some((old, new)) = self.install(name, None, listing) {
                    self.announce_changes(&old, &new).await;
                }
            }
            Err(error) => tracing::warn!(session.id = %self.id, backend = name, %error, "backend lists not refreshed"),
        }
    }

    /// Puts backend `name`'s new listing (and new backend session, if any)
    /// in place and rebuilds the catalog; returns the old and new catalogs,
    /// or `None` if the session is closed.
    fn install(
        &self,
        name: &str,
        fresh: Option<Arc<BackendSession>>,
        listing: Listing,
    ) -> Option<(Arc<Catalog>, Arc<Catalog>)> {
        let mut state = self.write();
        if state.closed {
            return None;
        }
        let key: Arc<str> = Arc::from(name);
        if let Some(fresh) = fresh {
            let mut backends = (*state.backends).clone();
            backends.insert(Arc::clone(&key), fresh);
            state.backends = Arc::new(backends);
        }
        let mut listings = state.tables.listings.clone();
        let listing = self.factory.shared().listing(&key, listing);
        listings.insert(key, listing);
        let tables = self
            .factory
            .shared()
            .tables(self.factory.aggregation(), &state.backends, listings);
        let catalog = Arc::clone(&tables.catalog);
        let old = std::mem::replace(&mut state.tables, tables);
        Some((Arc::clone(&old.catalog), catalog))
    }

    /// Writes the current backend session ids to the store. A session deleted
    /// elsewhere meanwhile is closed here too.
    async fn persist(&self) -> Result<(), SessionError> {
        match self.factory.store().update(&self.metadata_now()).await {
            Ok(true) => Ok(()),
            Ok(false) => {
                // Deleted elsewhere. This runs inside one of the session's
                // own calls, so it must not wait for the calls in flight.
                self.abandon();
                Err(SessionError::Closed)
            }
            Err(e) => {
                // The runtime is right; the store catches up at the next write.
                tracing::warn!(session.id = %self.id, error = %e, "new backend session id not stored");
                Ok(())
            }
        }
    }

    /// Tells the client that pod-local backends were re-initialized on this
    /// replica (their replica is gone): a log line naming each, and every
    /// list as changed (the new backend session may list other things).
    pub(crate) async fn announce_reset(&self, backends: &[String]) {
        for name in backends {
            tracing::info!(session.id = %self.id, backend = %name, "pod-local backend re-initialized: its session state was reset");
            let data = format!(
                "backend `{name}` runs in each replica's pod; the replica that held this session is gone, so `{name}` started a new session here and its per-session state was reset"
            );
            self.publish(&json!({
                "jsonrpc": "2.0",
                "method": "notifications/message",
                "params": { "level": "warning", "logger": "vmcp", "data": data },
            }))
            .await;
        }
        for kind in ["tools", "prompts", "resources"] {
            let method = format!("notifications/{kind}/list_changed");
            self.publish(&json!({ "jsonrpc": "2.0", "method": method })).await;
        }
    }

    /// Tells the client which aggregated lists changed.
    async fn announce_changes(&self, old: &Catalog, new: &Catalog) {
        let changes = [
            (old.tools != new.tools, "notifications/tools/list_changed"),
            (old.prompts != new.prompts, "notifications/prompts/list_changed"),
            (
                old.resources != new.resources || old.resource_templates != new.resource_templates,
                "notifications/resources/list_changed",
            ),
        ];
        for (changed, method) in changes {
            if changed {
                self.publish(&json!({ "jsonrpc": "2.0", "method": method })).await;
            }
        }
    }
}
