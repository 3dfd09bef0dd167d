//! Authenticating replica-to-replica hops.
//!
//! A forwarded request carries `x-vmcp-hop: v1;{from};{unix ms};{nonce};{mac}`,
//! where `mac` is HMAC-SHA256 under the shared hop key over the version, the
//! sender, the timestamp, the nonce, the HTTP method, the path and the session
//! id. The receiver serves a request with a valid hop header itself (exactly
//! one hop, even if its view of the owner differs), and refuses a forged,
//! stale or replayed one: without the key a client cannot make a replica skip
//! placement, and a captured header cannot be used twice.

use std::collections::HashSet;
use std::sync::Mutex;
use std::time::Duration;

use hmac::{Hmac, Mac};
use sha2::Sha256;

pub const HOP_HEADER: &str = "x-vmcp-hop";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HopError {
    #[error("malformed hop header")]
    Malformed,
    #[error("hop header signature does not match")]
    BadSignature,
    #[error("hop header is too old or from the future")]
    Stale,
    #[error("hop header was already used")]
    Replayed,
    #[error("this replica has no hop key")]
    NoKey,
}

/// What a hop header signs besides its own fields.
pub struct HopTarget<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub session: &'a str,
}

pub struct Hops {
    key: Option<Vec<u8>>,
    max_age_ms: u64,
    seen: Mutex<Seen>,
}

/// Nonces of the last two `max_age` windows. A header older than `max_age`
/// is refused as stale anyway, so a nonce only needs remembering that long;
/// rotating whole generations makes each check O(1) instead of a scan.
#[derive(Default)]
struct Seen {
    current: HashSet<String>,
    previous: HashSet<String>,
    rotated_at_ms: u64,
}

impl Seen {
    /// Records `nonce`; `false` if it was already seen.
    fn insert(&mut self, nonce: &str, now_ms: u64, max_age_ms: u64) -> bool {
        if now_ms.saturating_sub(self.rotated_at_ms) >= max_age_ms {
            self.previous = std::mem::take(&mut self.current);
            self.rotated_at_ms = now_ms;
        }
        if self.previous.contains(nonce) {
            return false;
        }
        self.current.insert(nonce.to_owned())
    }
}

fn mac(key: &[u8], fields: &[&str]) -> Hmac<Sha256> {
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(key) else {
        unreachable!("HMAC accepts keys of any length")
    };
    for field in fields {
        mac.update(field.as_bytes());
        mac.update(b"\n");
    }
    mac
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

impl Hops {
    pub fn new(key: Option<&str>, max_age: Duration) -> Self {
        Self {
            key: key.filter(|k| !k.is_empty()).map(|k| k.as_bytes().to_vec()),
            max_age_ms: max_age.as_millis() as u64,
            seen: Mutex::default(),
        }
    }

    /// The header value for a hop from `from` at `now_ms`.
    pub fn sign(&self, from: &str, target: &HopTarget<'_>, now_ms: u64) -> Result<String, HopError> {
        let key = self.key.as_deref().ok_or(HopError::NoKey)?;
        let mut nonce = [0u8; 12];
        getrandom::fill(&mut nonce).map_err(|_| HopError::NoKey)?;
        let (ts, nonce) = (now_ms.to_string(), hex(&nonce));
        let tag = mac(
            key,
            &["v1", from, &ts, &nonce, target.method, target.path, target.session],
        )
        .finalize()
        .into_bytes();
        Ok(format!("v1;{from};{ts};{nonce};{}", hex(&tag)))
    }

    /// Checks a hop header; returns the sending replica.
    pub fn verify(&self, header: &str, target: &HopTarget<'_>, now_ms: u64) -> Result<String, HopError> {
        let key = self.key.as_deref().ok_or(HopError::NoKey)?;
        let parts: Vec<&str> = header.split(';').collect();
        let [version, from, ts, nonce, tag] = parts[..] else {
            return Err(HopError::Malformed);
        };
        if version != "v1" || nonce.len() != 24 {
            return Err(HopError::Malformed);
        }
        let sent: u64 = ts.parse().map_err(|_| HopError::Malformed)?;
        let tag = unhex(tag).ok_or(HopError::Malformed)?;
        mac(
            key,
            &["v1", from, ts, nonce, target.method, target.path, target.session],
        )
        .verify_slice(&tag)
        .map_err(|_| HopError::BadSignature)?;
        if sent.abs_diff(now_ms) > self.max_age_ms {
            return Err(HopError::Stale);
        }
        let mut seen = crate::sync::lock(&self.seen);
        if !seen.insert(nonce, now_ms, self.max_age_ms) {
            return Err(HopError::Replayed);
        }
        Ok(from.to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: HopTarget<'static> = HopTarget {
        method: "POST",
        path: "/mcp",
        session: "s1",
    };

    fn hops() -> Hops {
        Hops::new(Some("a-shared-hop-key-0123"), Duration::from_secs(30))
    }

    #[test]
    fn a_signed_hop_verifies_once() {
        let (sender, receiver) = (hops(), hops());
        let header = sender.sign("a", &T, 1_000_000).unwrap();
        assert_eq!(receiver.verify(&header, &T, 1_000_500).unwrap(), "a");
        assert_eq!(receiver.verify(&header, &T, 1_000_600), Err(HopError::Replayed));
    }

    #[test]
    fn replays_are_caught_across_a_generation_rotation() {
        let (sender, receiver) = (hops(), hops());
        let header = sender.sign("a", &T, 1_000_000).unwrap();
        assert!(receiver.verify(&header, &T, 1_000_000).is_ok());
        // A later hop rotates the generations; the first nonce is still known.
        let later = sender.sign("a", &T, 1_029_000).unwrap();
        assert!(receiver.verify(&later, &T, 1_029_000).is_ok());
        let fresh = sender.sign("a", &T, 1_031_000).unwrap();
        assert!(receiver.verify(&fresh, &T, 1_031_000).is_ok());
        assert_eq!(receiver.verify(&header, &T, 1_029_500), Err(HopError::Replayed));
    }

    #[test]
    fn forged_stale_and_retargeted_hops_are_refused() {
        let receiver = hops();
        let header = hops().sign("a", &T, 1_000_000).unwrap();
        let other = HopTarget { session: "s2", ..T };
        assert_eq!(receiver.verify(&header, &other, 1_000_000), Err(HopError::BadSignature));
        let wrong_key = Hops::new(Some("another-key-entirely!"), Duration::from_secs(30))
            .sign("a", &T, 1_000_000)
            .unwrap();
        assert_eq!(receiver.verify(&wrong_key, &T, 1_000_000), Err(HopError::BadSignature));
        assert_eq!(receiver.verify(&header, &T, 1_000_000 + 31_000), Err(HopError::Stale));
        assert_eq!(receiver.verify("v1;a;1;zz;00", &T, 1), Err(HopError::Malformed));
        assert_eq!(receiver.verify("garbage", &T, 1), Err(HopError::Malformed));
        let tampered = header.replacen(";a;", ";b;", 1);
        assert_eq!(receiver.verify(&tampered, &T, 1_000_000), Err(HopError::BadSignature));
        assert_eq!(
            Hops::new(None, Duration::from_secs(1)).verify(&header, &T, 1_000_000),
            Err(HopError::NoKey)
        );
    }
}
