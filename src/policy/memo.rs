//! Remembered decisions. A Cedar decision is a function of its inputs: when
//! no policy reads the clock (`context.time`) or a call's arguments (tags),
//! the same caller doing the same thing to the same item gets the same
//! answer until the policies change, so it is computed once (building the
//! request's entities costs most of a decision: ~16 of ~24 µs) and looked up
//! after (a hash of the inputs). The memory is per policy set: a reload
//! starts a new one. Bounded; cleared when full.

use std::collections::HashMap;
use std::sync::Mutex;

use xxhash_rust::xxh3::Xxh3;

use super::Principal;
use crate::session::guard::{Action, Item, Refusal};
use crate::sync::lock;

/// Most decisions remembered per policy set.
const REMEMBERED: usize = 50_000;

pub struct Memo {
    on: bool,
    decisions: Mutex<HashMap<u64, Result<(), Refusal>>>,
}

impl Memo {
    /// A memory for policies whose text is `text` (off if they read the clock or arguments).
    pub fn for_policies(text: &str) -> Self {
        let reads_inputs = ["context.time", "hasTag", "getTag"].iter().any(|n| text.contains(n));
        Self {
            on: !reads_inputs,
            decisions: Mutex::default(),
        }
    }

    pub fn key(&self, principal: &Principal, action: Action, item: &Item<'_>, listing: bool) -> Option<u64> {
        if !self.on {
            return None;
        }
        let mut h = Xxh3::new();
        let mut field = |bytes: &[u8]| {
            h.update(&(bytes.len() as u64).to_le_bytes());
            h.update(bytes);
        };
        field(principal.subject.as_bytes());
        field(principal.issuer.as_bytes());
        field(&[u8::from(principal.authenticated), u8::from(listing), item.kind as u8]);
        for s in &principal.scopes {
            field(s.as_bytes());
        }
        field(b"|groups");
        for g in &principal.groups {
            field(g.as_bytes());
        }
        field(action.as_str().as_bytes());
        field(item.name.as_bytes());
        field(item.original.as_bytes());
        field(item.backend.as_bytes());
        let annotations = item.annotations.map(|a| a.to_string()).unwrap_or_default();
        field(annotations.as_bytes());
        Some(h.digest())
    }

    pub fn get(&self, key: u64) -> Option<Result<(), Refusal>> {
        lock(&self.decisions).get(&key).cloned()
    }

    pub fn put(&self, key: u64, decision: &Result<(), Refusal>) {
        let mut decisions = lock(&self.decisions);
        if decisions.len() >= REMEMBERED {
            decisions.clear();
        }
        decisions.insert(key, decision.clone());
    }
}
