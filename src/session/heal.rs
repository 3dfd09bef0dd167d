//! Per-backend self-heal: a backend that answers 404 to one of our backend
//! sessions (it restarted, or expired the session) gets a new one, the
//! catalog is rebuilt, the store learns the new backend session id, and the
//! client hears `list_changed` for each list that changed.

use std::sync::Arc;

use serde_json::json;

use super::factory::build_catalog;
use super::{Session, SessionError};
use crate::aggregate::Catalog;
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
        let (fresh, listing) = match self.factory.reopen(failed.backend(), &self.meta.client_init).await {
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
        let swapped = {
            let mut state = self.write();
            if state.closed {
                None
            } else {
                let key: Arc<str> = Arc::from(name);
                let mut backends = (*state.backends).clone();
                backends.insert(Arc::clone(&key), Arc::clone(&fresh));
                let mut listings = (*state.listings).clone();
                listings.insert(key, Arc::new(listing));
                let catalog = Arc::new(build_catalog(self.factory.aggregation(), &backends, &listings));
                state.backends = Arc::new(backends);
                state.listings = Arc::new(listings);
                Some((std::mem::replace(&mut state.catalog, Arc::clone(&catalog)), catalog))
            }
        };
        let Some((old, new)) = swapped else {
            fresh.close().await;
            return Err(SessionError::Closed);
        };
        self.persist().await?;
        self.announce_changes(&old, &new);
        Ok(fresh)
    }

    /// Writes the current backend session ids to the store. A session deleted
    /// elsewhere meanwhile is closed here too.
    async fn persist(&self) -> Result<(), SessionError> {
        match self.factory.store().update(&self.metadata_now()).await {
            Ok(true) => Ok(()),
            Ok(false) => {
                self.close().await;
                Err(SessionError::Closed)
            }
            Err(e) => {
                // The runtime is right; the store catches up at the next write.
                tracing::warn!(session.id = %self.id, error = %e, "new backend session id not stored");
                Ok(())
            }
        }
    }

    /// Tells the client which aggregated lists changed.
    fn announce_changes(&self, old: &Catalog, new: &Catalog) {
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
                let message = json!({ "jsonrpc": "2.0", "method": method }).to_string();
                // No subscriber just means no GET stream is open right now.
                let _ = self.events.send(Arc::from(message));
            }
        }
    }
}
