//! Owner selection: rendezvous (highest-random-weight) hashing of the session
//! id over the members.
//!
//! Each member gets a score `xxh3(session id, seed = xxh3(member id))`; the
//! highest score owns the session. Why rendezvous and not a ring of virtual
//! nodes: no tables to build, balance comes from the hash alone, and the two
//! properties we need are exact rather than approximate. Adding a member moves
//! only the keys the newcomer now wins (about 1/(N+1)); removing one moves only
//! its own keys. Lookups cost one hash per member, which is nothing at replica
//! counts. xxh3 is fixed and portable, so every replica (any build, any Rust
//! version) computes the same owner; `std`'s `DefaultHasher` would not.

use std::sync::Arc;

use http::uri::{Authority, Scheme};
use http::Uri;
use xxhash_rust::xxh3::{xxh3_64, xxh3_64_with_seed};

/// One replica: its id (pod name) and where its MCP listener is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub id: Arc<str>,
    pub addr: Arc<str>,
    /// `http://addr/`, parsed once (`None` if `addr` is not host:port): where
    /// the connection pool connects for a hop, not formatted and parsed per hop.
    pub uri: Option<Uri>,
    seed: u64,
}

impl Member {
    pub fn new(id: &str, addr: &str) -> Self {
        Self {
            id: Arc::from(id),
            addr: Arc::from(addr),
            uri: Authority::try_from(addr).ok().and_then(|authority| {
                Uri::builder()
                    .scheme(Scheme::HTTP)
                    .authority(authority)
                    .path_and_query("/")
                    .build()
                    .ok()
            }),
            seed: xxh3_64(id.as_bytes()),
        }
    }
}

/// The members of the cluster, sorted by id.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ring {
    members: Vec<Member>,
}

impl Ring {
    pub fn new(mut members: Vec<Member>) -> Self {
        members.sort_by(|a, b| a.id.cmp(&b.id));
        members.dedup_by(|a, b| a.id == b.id);
        Self { members }
    }

    pub fn members(&self) -> &[Member] {
        &self.members
    }

    pub fn len(&self) -> usize {
        self.members.len()
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// The member that owns `key`, `None` for an empty ring.
    pub fn owner(&self, key: &str) -> Option<&Member> {
        // Ties (astronomically rare) go to the smaller id, as members are sorted.
        self.members
            .iter()
            .max_by_key(|m| (xxh3_64_with_seed(key.as_bytes(), m.seed), std::cmp::Reverse(&m.id)))
    }

    /// The member that owns `key` among those `keep` accepts.
    pub fn owner_among(&self, key: &str, keep: impl Fn(&Member) -> bool) -> Option<&Member> {
        self.members
            .iter()
            .filter(|m| keep(m))
            .max_by_key(|m| (xxh3_64_with_seed(key.as_bytes(), m.seed), std::cmp::Reverse(&m.id)))
    }

    pub fn get(&self, id: &str) -> Option<&Member> {
        self.members.iter().find(|m| &*m.id == id)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn ring(ids: &[&str]) -> Ring {
        Ring::new(ids.iter().map(|id| Member::new(id, &format!("{id}:8080"))).collect())
    }

    /// Deterministic, well-spread keys shaped like session ids.
    fn keys(n: usize) -> Vec<String> {
        (0..n)
            .map(|i| format!("{:040x}", xxh3_64(format!("session-{i}").as_bytes())))
            .collect()
    }

    fn owners<'a>(ring: &'a Ring, keys: &[String]) -> Vec<&'a str> {
        keys.iter().map(|k| &*ring.owner(k).unwrap().id).collect()
    }

    #[test]
    fn placement_is_fixed_across_processes_and_versions() {
        // Golden values: a change here means replicas of different builds disagree.
        let r = ring(&["vmcp-0", "vmcp-1", "vmcp-2"]);
        let got: Vec<&str> = ["a", "b", "c", "d", "session-42"]
            .iter()
            .map(|k| &*r.owner(k).unwrap().id)
            .collect();
        assert_eq!(got, GOLDEN);
        assert_eq!(ring(&["vmcp-2", "vmcp-0", "vmcp-1"]), r, "member order does not matter");
    }

    const GOLDEN: [&str; 5] = ["vmcp-0", "vmcp-0", "vmcp-0", "vmcp-0", "vmcp-1"];

    #[test]
    fn three_members_share_100k_keys_within_15_percent() {
        let r = ring(&["vmcp-0", "vmcp-1", "vmcp-2"]);
        let mut counts: HashMap<&str, usize> = HashMap::new();
        for owner in owners(&r, &keys(100_000)) {
            *counts.entry(owner).or_default() += 1;
        }
        let fair = 100_000.0 / 3.0;
        for (member, count) in counts {
            let off = (count as f64 - fair).abs() / fair;
            assert!(off <= 0.15, "{member} owns {count}, {:.1}% off", off * 100.0);
        }
    }

    #[test]
    fn adding_a_member_moves_about_one_in_n_plus_one() {
        let ks = keys(50_000);
        for n in 1..=6 {
            let ids: Vec<String> = (0..n).map(|i| format!("vmcp-{i}")).collect();
            let before_ring = ring(&ids.iter().map(String::as_str).collect::<Vec<_>>());
            let mut grown = ids.clone();
            grown.push(format!("vmcp-{n}"));
            let after_ring = ring(&grown.iter().map(String::as_str).collect::<Vec<_>>());
            let (before, after) = (owners(&before_ring, &ks), owners(&after_ring, &ks));
            let moved: Vec<_> = before.iter().zip(&after).filter(|(b, a)| b != a).collect();
            assert!(
                moved.iter().all(|(_, a)| **a == format!("vmcp-{n}")),
                "keys only move to the newcomer"
            );
            let share = moved.len() as f64 / ks.len() as f64;
            let ideal = 1.0 / (n as f64 + 1.0);
            assert!(
                (share - ideal).abs() <= ideal * 0.1,
                "{n}->{}: moved {share:.3}, ideal {ideal:.3}",
                n + 1
            );
        }
    }

    #[test]
    fn removing_a_member_moves_only_its_keys() {
        let ks = keys(50_000);
        let full = ring(&["a", "b", "c", "d"]);
        let less = ring(&["a", "b", "d"]);
        for (k, (before, after)) in ks.iter().zip(owners(&full, &ks).into_iter().zip(owners(&less, &ks))) {
            if before != "c" {
                assert_eq!(before, after, "{k} moved though its owner stayed");
            }
        }
    }

    #[test]
    fn empty_and_single_rings() {
        assert!(Ring::default().owner("x").is_none());
        assert_eq!(&*ring(&["solo"]).owner("x").unwrap().id, "solo");
    }
}
