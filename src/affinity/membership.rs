//! The live set of replicas, as a watch channel of [`View`]s.
//!
//! Sources: the static list of the config (reloadable at runtime), or the
//! Kubernetes EndpointSlices of the headless Service (see `kubernetes`).
//! Everything that needs placement reads the latest view; nothing blocks on it.

use std::collections::BTreeMap;
use std::sync::Arc;

use tokio::sync::watch;

use super::pin::Pins;
use super::ring::{Member, Ring};

/// One snapshot of the membership.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct View {
    pub ring: Ring,
    /// False until the first complete list arrived (Kubernetes): not ready before.
    pub known: bool,
    /// Replicas shutting down: they take no new sessions (not in the ring)
    /// but still serve the sessions pinned to them, until they are gone.
    pub draining: Vec<Member>,
}

/// Where a session's requests go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placement {
    /// This replica owns it (or membership is unknown, or this is the only replica).
    Local,
    Remote(Member),
}

pub struct Membership {
    self_id: Arc<str>,
    tx: watch::Sender<Arc<View>>,
    /// Set in pinned placement (see `pin`).
    pins: Option<Pins>,
}

impl Membership {
    /// Membership of a static list (`members` empty: this replica alone).
    pub fn fixed(self_id: &str, members: &BTreeMap<String, String>) -> Self {
        let this = Self::unknown(self_id);
        this.set_static(members);
        this
    }

    /// Membership not known yet (filled in by a discovery task).
    pub fn unknown(self_id: &str) -> Self {
        let (tx, _) = watch::channel(Arc::new(View::default()));
        Self {
            self_id: Arc::from(self_id),
            tx,
            pins: None,
        }
    }

    /// Pinned placement: sessions stay with the replica named in their id.
    pub fn with_pins(mut self, pins: Option<Pins>) -> Self {
        self.pins = pins;
        self
    }

    /// A new session id pinned to this replica; `None` in hashed placement.
    pub fn mint_pinned(&self, random: &[u8; 16]) -> Option<String> {
        self.pins.as_ref().map(|p| p.mint(random, &self.self_id))
    }

    /// Whether placement is pinned (sessions stay where they were created).
    pub fn is_pinned(&self) -> bool {
        self.pins.is_some()
    }

    pub fn self_id(&self) -> &str {
        &self.self_id
    }

    /// Replaces the static list (config reload).
    pub fn set_static(&self, members: &BTreeMap<String, String>) {
        self.set(members.iter().map(|(id, addr)| Member::new(id, addr)).collect());
    }

    /// Publishes a complete member list.
    pub fn set(&self, members: Vec<Member>) {
        self.set_with_draining(members, Vec::new());
    }

    /// Publishes a complete member list and the replicas draining.
    pub fn set_with_draining(&self, members: Vec<Member>, draining: Vec<Member>) {
        let view = View {
            ring: Ring::new(members),
            known: true,
            draining,
        };
        self.tx.send_if_modified(|current| {
            if **current == view {
                return false;
            }
            tracing::info!(members = ?view.ring.members().iter().map(|m| &*m.id).collect::<Vec<_>>(), "membership changed");
            *current = Arc::new(view);
            true
        });
    }

    pub fn view(&self) -> Arc<View> {
        Arc::clone(&self.tx.borrow())
    }

    pub fn subscribe(&self) -> watch::Receiver<Arc<View>> {
        self.tx.subscribe()
    }

    /// Where session `id` belongs now.
    pub fn place(&self, id: &str) -> Placement {
        self.place_avoiding(id, &|_| false)
    }

    /// Where session `id` belongs if the members for which `down` holds are
    /// gone: its pinned replica while that one is a member (draining
    /// included), else the rendezvous owner among the others. Every replica
    /// that agrees on who is down agrees on the answer.
    pub fn place_avoiding(&self, id: &str, down: &dyn Fn(&str) -> bool) -> Placement {
        let view = self.tx.borrow();
        let pinned = self.pins.as_ref().and_then(|p| p.owner_of(id)).and_then(|owner| {
            view.ring
                .get(owner)
                .or_else(|| view.draining.iter().find(|m| &*m.id == owner))
        });
        // The usual answer (pinned, or the rendezvous owner) costs one `down`
        // question; only when that owner is down are the others asked.
        let first = pinned.or_else(|| view.ring.owner(id));
        let owner = match first {
            Some(m) if !down(&m.id) => Some(m),
            _ => view.ring.owner_among(id, |m| !down(&m.id)),
        };
        match owner {
            Some(owner) if owner.id != self.self_id => Placement::Remote(owner.clone()),
            _ => Placement::Local,
        }
    }

    /// Replica `id`, if it is a member (draining included: it still serves
    /// what it holds until it is gone).
    pub fn member(&self, id: &str) -> Option<Member> {
        let view = self.tx.borrow();
        view.ring
            .get(id)
            .or_else(|| view.draining.iter().find(|m| &*m.id == id))
            .cloned()
    }

    /// Whether the member list is known (for `/readyz`).
    pub fn is_known(&self) -> bool {
        self.tx.borrow().known
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placement_follows_the_latest_view() {
        let m = Membership::fixed("a", &BTreeMap::new());
        assert_eq!(m.place("anything"), Placement::Local, "alone: everything is local");
        let members = BTreeMap::from([("a".to_owned(), "h:1".to_owned()), ("b".to_owned(), "h:2".to_owned())]);
        m.set_static(&members);
        let rx = m.subscribe();
        let (mut local, mut remote) = (0, 0);
        for i in 0..1000 {
            match m.place(&format!("s{i}")) {
                Placement::Local => local += 1,
                Placement::Remote(owner) => {
                    assert_eq!(&*owner.id, "b");
                    remote += 1;
                }
            }
        }
        assert!(local > 400 && remote > 400, "{local}/{remote}");
        m.set_static(&members);
        assert!(!rx.has_changed().unwrap(), "same list: no change event");
        assert!(Membership::unknown("a").place("x") == Placement::Local);
        assert!(!Membership::unknown("a").is_known());
    }
}
