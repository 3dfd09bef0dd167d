//! What sessions have in common is kept once: 100k sessions on the same
//! backends list the same tools, so each session holding its own copy of
//! every listing and of the aggregated catalog cost kilobytes per session.
//!
//! - A backend's listing is interned per backend: a new listing equal to the
//!   last one is replaced by the shared copy (one deep comparison per backend
//!   session opened, which is nothing next to the network round trips).
//! - The catalog of a set of interned listings is built once and shared for
//!   as long as some session holds it (the last one is remembered weakly).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

use crate::aggregate::{Catalog, Listing};
use crate::backend::BackendSession;
use crate::config::AggregationConfig;
use crate::sync::lock;

/// Which listings a catalog was built from, by name (held, so that no other
/// listing can take the address of one and be mistaken for it).
type CatalogKey = Vec<(Arc<str>, Arc<Listing>)>;

fn same(a: &CatalogKey, b: &CatalogKey) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.0 == y.0 && Arc::ptr_eq(&x.1, &y.1))
}

/// What each backend listed, and the catalog built from it.
pub struct Tables {
    pub listings: HashMap<Arc<str>, Arc<Listing>>,
    pub catalog: Arc<Catalog>,
}

#[derive(Default)]
pub struct Shared {
    listings: Mutex<HashMap<Arc<str>, Arc<Listing>>>,
    tables: Mutex<Option<(CatalogKey, Weak<Tables>)>>,
    instructions: crate::sync::Interned<String>,
}

impl Shared {
    /// The shared copy of `listing` for backend `name`.
    pub fn listing(&self, name: &str, listing: Listing) -> Arc<Listing> {
        let mut listings = lock(&self.listings);
        match listings.get(name) {
            Some(known) if **known == listing => Arc::clone(known),
            _ => {
                let fresh = Arc::new(listing);
                listings.insert(Arc::from(name), Arc::clone(&fresh));
                fresh
            }
        }
    }

    /// The shared copy of an `instructions` text equal to the last one.
    pub fn instructions(&self, text: &String) -> Arc<String> {
        self.instructions.share(text)
    }

    /// The table of these backends' listings and its catalog, shared with
    /// every session that has the same ones.
    pub fn tables(
        &self,
        aggregation: &AggregationConfig,
        backends: &HashMap<Arc<str>, Arc<BackendSession>>,
        listings: HashMap<Arc<str>, Arc<Listing>>,
    ) -> Arc<Tables> {
        let mut key: CatalogKey = listings
            .iter()
            .filter(|(name, _)| backends.contains_key(*name))
            .map(|(name, listing)| (Arc::clone(name), Arc::clone(listing)))
            .collect();
        key.sort_by(|a, b| a.0.cmp(&b.0));
        let mut last = lock(&self.tables);
        if let Some(tables) = last
            .as_ref()
            .filter(|(k, _)| same(k, &key))
            .and_then(|(_, t)| t.upgrade())
        {
            return tables;
        }
        let catalog = Arc::new(super::factory::build_catalog(aggregation, backends, &listings));
        let tables = Arc::new(Tables { listings, catalog });
        *last = Some((key, Arc::downgrade(&tables)));
        tables
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn listing(tool: &str) -> Listing {
        Listing {
            tools: vec![json!({"name": tool, "inputSchema": {"type": "object"}})],
            ..Listing::default()
        }
    }

    #[test]
    fn equal_listings_are_one_copy_and_a_change_makes_a_new_one() {
        let shared = Shared::default();
        let (a, b) = (shared.listing("x", listing("t")), shared.listing("x", listing("t")));
        assert!(Arc::ptr_eq(&a, &b));
        let changed = shared.listing("x", listing("u"));
        assert!(!Arc::ptr_eq(&a, &changed));
        assert!(Arc::ptr_eq(&changed, &shared.listing("x", listing("u"))));
        assert!(
            !Arc::ptr_eq(&changed, &shared.listing("y", listing("u"))),
            "per backend"
        );
    }
}
