//! Pinned session ids: the id itself names the replica that created the
//! session, so every replica can route to it without asking Redis, and a MAC
//! under the hop key makes sure a client cannot pick its pod.
//!
//! Format: `{32 hex random}.{owner}.{16 hex MAC}`, where the MAC is
//! HMAC-SHA256(hop key, "pin", random, owner) truncated to 64 bits. The 128
//! random bits keep the id unguessable; the owner is a replica id (a pod
//! name), which may itself contain dots, so the owner is what lies between
//! the first and the last dot.

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Mints and reads pinned ids under one key (the replicas' shared hop key).
pub struct Pins {
    key: Vec<u8>,
}

const RANDOM_HEX: usize = 32;
const MAC_HEX: usize = 16;

impl Pins {
    pub fn new(key: &str) -> Self {
        Self {
            key: key.as_bytes().to_vec(),
        }
    }

    fn mac(&self, random: &str, owner: &str) -> String {
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(&self.key) else {
            unreachable!("HMAC accepts keys of any length")
        };
        for part in ["pin", random, owner] {
            mac.update(&(part.len() as u64).to_be_bytes());
            mac.update(part.as_bytes());
        }
        let tag = mac.finalize().into_bytes();
        hex::encode(&tag[..MAC_HEX / 2])
    }

    /// A new id pinned to `owner`, from 16 random bytes.
    pub fn mint(&self, random: &[u8; RANDOM_HEX / 2], owner: &str) -> String {
        let random = hex::encode(random);
        let mac = self.mac(&random, owner);
        format!("{random}.{owner}.{mac}")
    }

    /// The replica a pinned id names, if its MAC holds.
    pub fn owner_of<'a>(&self, id: &'a str) -> Option<&'a str> {
        let (random, rest) = id.split_once('.')?;
        let (owner, mac) = rest.rsplit_once('.')?;
        if random.len() != RANDOM_HEX || mac.len() != MAC_HEX || owner.is_empty() {
            return None;
        }
        let expected = self.mac(random, owner);
        // Constant time, like every MAC comparison.
        let same = expected.bytes().zip(mac.bytes()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0;
        same.then_some(owner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pinned_id_names_its_owner_and_cannot_be_repinned() {
        let pins = Pins::new("a-shared-hop-key-0123");
        let id = pins.mint(&[7; 16], "vmcp-5d8f-x.y");
        assert_eq!(pins.owner_of(&id), Some("vmcp-5d8f-x.y"));
        assert!(crate::session::is_well_formed(&id));
        let moved = id.replace("vmcp-5d8f-x.y", "vmcp-other");
        assert_eq!(pins.owner_of(&moved), None, "the owner is authenticated");
        assert_eq!(Pins::new("another-key-entirely!").owner_of(&id), None);
        assert_eq!(
            pins.owner_of("0123456789abcdef0123456789abcdef0123456789"),
            None,
            "a hashed id"
        );
        assert_eq!(pins.owner_of(".."), None);
    }
}
