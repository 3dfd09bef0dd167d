//! Authenticating replica-to-replica hops.
//!
//! A forwarded request carries
//! `x-vmcp-hop: v2;{from};{to};{unix ms};{nonce};{mac}`, where `mac` is
//! HMAC-SHA256 under the shared hop key over the version, the sender, the
//! destination replica, the timestamp, the nonce, the HTTP method, the path,
//! the session id, the client's `Host` and `Origin` and a SHA-256 digest of
//! the body (each field length-prefixed). The receiver serves a request with a
//! valid hop header itself (exactly one hop, even if its view of the owner
//! differs) and judges it on the carried `Host`/`Origin`. It refuses a forged,
//! misdirected, stale, future-dated or replayed header: without the key a
//! client cannot make a replica skip placement, and a captured header cannot
//! be used twice, sent to another replica, or carry another body.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

pub const HOP_HEADER: &str = "x-vmcp-hop";
/// [`HOP_HEADER`] as a header name (a `&str` name is parsed at every use).
pub const HOP: http::HeaderName = http::HeaderName::from_static(HOP_HEADER);

/// The header format version; `v1` headers (no destination, no body digest)
/// are refused.
const VERSION: &str = "v2";

/// How far in the future a hop's timestamp may be (clock skew between
/// replicas). The past is bounded by `affinity.hop_max_age`.
pub const MAX_FUTURE_SKEW: Duration = Duration::from_secs(2);

/// Nonces remembered at most (both generations together): a flood of valid
/// hops costs bounded memory (a nonce is a 16-byte integer in a hash set: under
/// 40 bytes each).
pub const REPLAY_CACHE_CAP: usize = 100_000;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HopError {
    #[error("malformed hop header")]
    Malformed,
    #[error("hop header signature does not match")]
    BadSignature,
    #[error("hop header is addressed to another replica")]
    Misdirected,
    #[error("hop header is too old or from the future")]
    Stale,
    #[error("hop header was already used")]
    Replayed,
    #[error("this replica has no hop key")]
    NoKey,
}

/// What a hop header signs besides its own fields.
pub struct HopTarget<'a> {
    /// The replica the hop is sent to (the receiver checks it is itself).
    pub to: &'a str,
    pub method: &'a str,
    pub path: &'a str,
    pub session: &'a str,
    /// The original client's `Host` and `Origin` headers, as received.
    pub host: Option<&'a [u8]>,
    pub origin: Option<&'a [u8]>,
    /// The request body (signed as its SHA-256 digest).
    pub body: &'a [u8],
}

pub struct Hops {
    /// The MAC keyed once with the hop key (its inner and outer pads
    /// hashed); each header's MAC starts from a copy of it.
    keyed: Option<Hmac<Sha256>>,
    /// Nonces are this replica's random prefix and a counter: unique without
    /// a `getrandom` system call per hop (the MAC makes them unforgeable).
    nonce_prefix: [u8; 8],
    nonces: AtomicU32,
    max_age_ms: u64,
    cache_cap: usize,
    seen: Mutex<Seen>,
}

/// Nonces of the last two generations. A generation lasts `max_age + skew`
/// (a header older than that is refused as stale anyway), or less when it
/// fills up (half the cap). A hop whose nonce is not cached is accepted only
/// if it is newer than every nonce ever dropped (`floor_ms`): it cannot then
/// be one of them, so bounding memory never opens a replay window; under a
/// flood it can only shorten `hop_max_age`. Rotating whole generations makes
/// each check O(1) instead of a scan.
#[derive(Default)]
struct Seen {
    current: HashSet<u128, foldhash::fast::RandomState>,
    previous: HashSet<u128, foldhash::fast::RandomState>,
    current_since: u64,
    /// The newest timestamp signed into each generation.
    current_newest: u64,
    previous_newest: u64,
    /// The newest timestamp of any nonce no longer cached.
    floor_ms: u64,
}

/// Why a nonce was not recorded.
#[derive(Debug, PartialEq, Eq)]
enum Refusal {
    /// Not newer than what the cache has forgotten.
    Uncovered,
    Replayed,
}

impl Seen {
    /// Records the nonce of a hop signed at `sent_ms`.
    fn insert(
        &mut self,
        nonce: u128,
        sent_ms: u64,
        now_ms: u64,
        generation_ms: u64,
        cap: usize,
    ) -> Result<(), Refusal> {
        let full = self.current.len() >= (cap / 2).max(1);
        if full || now_ms.saturating_sub(self.current_since) >= generation_ms {
            self.floor_ms = self.floor_ms.max(self.previous_newest);
            self.previous = std::mem::take(&mut self.current);
            self.previous_newest = std::mem::take(&mut self.current_newest);
            self.current_since = now_ms;
        }
        if self.previous.contains(&nonce) || self.current.contains(&nonce) {
            return Err(Refusal::Replayed);
        }
        if sent_ms <= self.floor_ms {
            return Err(Refusal::Uncovered);
        }
        self.current.insert(nonce);
        self.current_newest = self.current_newest.max(sent_ms);
        Ok(())
    }
}

/// One length-prefixed field of the MAC, given in parts (no separator can be
/// smuggled into a field).
fn field(mac: &mut Hmac<Sha256>, parts: &[&[u8]]) {
    let len: usize = parts.iter().map(|p| p.len()).sum();
    mac.update(&(len as u64).to_be_bytes());
    for part in parts {
        mac.update(part);
    }
}

/// A header that may be absent: `0` when it is, `1` and its value when it is
/// (an absent header and an empty one differ).
fn optional(mac: &mut Hmac<Sha256>, value: Option<&[u8]>) {
    match value {
        None => field(mac, &[&[0]]),
        Some(v) => field(mac, &[&[1], v]),
    }
}

/// The MAC of a hop: the header's own fields, then what it signs. Fed
/// straight into the MAC, with no copy of any field.
fn tag(keyed: &Hmac<Sha256>, header: [&str; 5], target: &HopTarget<'_>) -> Hmac<Sha256> {
    let digest = Sha256::digest(target.body);
    let mut mac = keyed.clone();
    for value in header.into_iter().chain([target.method, target.path, target.session]) {
        field(&mut mac, &[value.as_bytes()]);
    }
    optional(&mut mac, target.host);
    optional(&mut mac, target.origin);
    field(&mut mac, &[&digest]);
    mac
}

impl Hops {
    pub fn new(key: Option<&str>, max_age: Duration) -> Self {
        let mut nonce_prefix = [0u8; 8];
        if getrandom::fill(&mut nonce_prefix).is_err() {
            // Unique is all a nonce must be: the clock and the pid, then.
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64);
            nonce_prefix = (nanos ^ (u64::from(std::process::id()) << 40)).to_be_bytes();
        }
        Self {
            keyed: key
                .filter(|k| !k.is_empty())
                .and_then(|k| Hmac::<Sha256>::new_from_slice(k.as_bytes()).ok()),
            nonce_prefix,
            nonces: AtomicU32::new(0),
            max_age_ms: max_age.as_millis() as u64,
            cache_cap: REPLAY_CACHE_CAP,
            seen: Mutex::default(),
        }
    }

    /// The same, remembering at most `cap` nonces (tests use a small one).
    pub fn with_cache_cap(mut self, cap: usize) -> Self {
        self.cache_cap = cap.max(2);
        self
    }

    /// The header value for a hop from `from` to `target.to` at `now_ms`.
    pub fn sign(&self, from: &str, target: &HopTarget<'_>, now_ms: u64) -> Result<String, HopError> {
        let keyed = self.keyed.as_ref().ok_or(HopError::NoKey)?;
        let mut nonce = [0u8; 12];
        nonce[..8].copy_from_slice(&self.nonce_prefix);
        nonce[8..].copy_from_slice(&self.nonces.fetch_add(1, Ordering::Relaxed).to_be_bytes());
        let mut nonce_hex = [0u8; 24];
        let mut ts = itoa::Buffer::new();
        let ts = ts.format(now_ms);
        let nonce = hex_str(&nonce, &mut nonce_hex);
        let tag = tag(keyed, [VERSION, from, target.to, ts, nonce], target)
            .finalize()
            .into_bytes();
        let mut tag_hex = [0u8; 64];
        let tag = hex_str(&tag, &mut tag_hex);
        Ok([VERSION, from, target.to, ts, nonce, tag].join(";"))
    }

    /// Checks a hop header received by `target.to` (this replica); returns
    /// the sending replica.
    pub fn verify<'h>(&self, header: &'h str, target: &HopTarget<'_>, now_ms: u64) -> Result<&'h str, HopError> {
        let keyed = self.keyed.as_ref().ok_or(HopError::NoKey)?;
        let mut parts = header.split(';');
        let mut next = || parts.next().ok_or(HopError::Malformed);
        let [version, from, to, ts, nonce, tag_hex] = [next()?, next()?, next()?, next()?, next()?, next()?];
        if parts.next().is_some() || version != VERSION {
            return Err(HopError::Malformed);
        }
        let mut nonce_bytes = [0u8; 16];
        hex::decode_to_slice(nonce, &mut nonce_bytes[4..]).map_err(|_| HopError::Malformed)?;
        let sent: u64 = ts.parse().map_err(|_| HopError::Malformed)?;
        let mut claimed = [0u8; 32];
        hex::decode_to_slice(tag_hex, &mut claimed).map_err(|_| HopError::Malformed)?;
        tag(keyed, [version, from, to, ts, nonce], target)
            .verify_slice(&claimed)
            .map_err(|_| HopError::BadSignature)?;
        if to != target.to {
            return Err(HopError::Misdirected);
        }
        let skew = MAX_FUTURE_SKEW.as_millis() as u64;
        if sent > now_ms.saturating_add(skew) || now_ms.saturating_sub(sent) > self.max_age_ms {
            return Err(HopError::Stale);
        }
        let generation = self.max_age_ms.saturating_add(skew);
        let mut seen = crate::sync::lock(&self.seen);
        match seen.insert(
            u128::from_be_bytes(nonce_bytes),
            sent,
            now_ms,
            generation,
            self.cache_cap,
        ) {
            Ok(()) => Ok(from),
            Err(Refusal::Uncovered) => Err(HopError::Stale),
            Err(Refusal::Replayed) => Err(HopError::Replayed),
        }
    }
}

/// `bytes` as lower-case hex in `out` (twice its length).
fn hex_str<'a>(bytes: &[u8], out: &'a mut [u8]) -> &'a str {
    // Both lengths are this module's own constants; hex is ASCII.
    if hex::encode_to_slice(bytes, out).is_err() {
        return "";
    }
    std::str::from_utf8(out).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: HopTarget<'static> = HopTarget {
        to: "b",
        method: "POST",
        path: "/mcp",
        session: "s1",
        host: Some(b"mcp.example.com"),
        origin: None,
        body: br#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#,
    };

    fn hops() -> Hops {
        Hops::new(Some("a-shared-hop-key-0123"), Duration::from_secs(30))
    }

    #[test]
    fn a_signed_hop_verifies_once() {
        let (sender, receiver) = (hops(), hops());
        let header = sender.sign("a", &T, 1_000_000).unwrap();
        assert!(header.starts_with("v2;a;b;1000000;"));
        assert_eq!(receiver.verify(&header, &T, 1_000_500).unwrap(), "a");
        assert_eq!(receiver.verify(&header, &T, 1_000_600), Err(HopError::Replayed));
    }

    #[test]
    fn hops_signed_in_the_same_millisecond_by_two_replicas_all_verify() {
        let (a, b, receiver) = (hops(), hops(), hops());
        for _ in 0..1000 {
            for sender in [&a, &b] {
                let header = sender.sign("a", &T, 1_000_000).unwrap();
                assert!(receiver.verify(&header, &T, 1_000_000).is_ok(), "{header}");
            }
        }
    }

    #[test]
    fn replays_are_caught_across_a_generation_rotation() {
        let (sender, receiver) = (hops(), hops());
        let header = sender.sign("a", &T, 1_000_000).unwrap();
        assert!(receiver.verify(&header, &T, 1_000_000).is_ok());
        // Later hops rotate the generations; the first nonce is still known.
        let later = sender.sign("a", &T, 1_029_000).unwrap();
        assert!(receiver.verify(&later, &T, 1_029_000).is_ok());
        let fresh = sender.sign("a", &T, 1_032_500).unwrap();
        assert!(receiver.verify(&fresh, &T, 1_032_500).is_ok());
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
        assert_eq!(receiver.verify("v2;a;b;1;zz;00", &T, 1), Err(HopError::Malformed));
        assert_eq!(receiver.verify("garbage", &T, 1), Err(HopError::Malformed));
        let tampered = header.replacen(";a;", ";c;", 1);
        assert_eq!(receiver.verify(&tampered, &T, 1_000_000), Err(HopError::BadSignature));
        assert_eq!(
            Hops::new(None, Duration::from_secs(1)).verify(&header, &T, 1_000_000),
            Err(HopError::NoKey)
        );
    }

    /// The MAC's bytes are the wire format: replicas of two versions (a
    /// rolling upgrade) must compute the same one, so it is pinned here.
    #[test]
    fn the_mac_is_the_one_every_v2_replica_computes() {
        let keyed = Hmac::<Sha256>::new_from_slice(b"a-shared-hop-key-0123").unwrap();
        let header = ["v2", "a", "b", "1000000", "0102030405060708090a0b0c"];
        let mac = |target: &HopTarget<'_>| hex::encode(tag(&keyed, header, target).finalize().into_bytes());
        assert_eq!(
            mac(&T),
            "992b6b631c8135eb1d564f60be6ba7ca40ab30529ca9532c83a58f9a632115a2"
        );
        let other = HopTarget {
            host: None,
            origin: Some(b""),
            ..T
        };
        assert_eq!(
            mac(&other),
            "c4ec2c2cca3f864a469e53027d185aae765aa87a0060dd34908de1865c0da4df"
        );
    }

    #[test]
    fn v1_headers_are_refused() {
        let v1 = format!("v1;a;1000000;{};{}", "0".repeat(24), "00".repeat(32));
        assert_eq!(hops().verify(&v1, &T, 1_000_000), Err(HopError::Malformed));
    }

    #[test]
    fn a_hop_sent_to_another_replica_is_refused() {
        let receiver = hops();
        let to_c = HopTarget { to: "c", ..T };
        let header = hops().sign("a", &to_c, 1_000_000).unwrap();
        // Replayed at b: the MAC holds (it names c), the destination does not.
        assert_eq!(receiver.verify(&header, &T, 1_000_000), Err(HopError::Misdirected));
        // Rewriting the destination breaks the MAC.
        let rewritten = header.replacen(";c;", ";b;", 1);
        assert_eq!(receiver.verify(&rewritten, &T, 1_000_000), Err(HopError::BadSignature));
    }

    #[test]
    fn a_tampered_body_host_or_origin_is_refused() {
        let receiver = hops();
        let header = hops().sign("a", &T, 1_000_000).unwrap();
        let body = HopTarget {
            body: br#"{"jsonrpc":"2.0","id":1,"method":"tools/call"}"#,
            ..T
        };
        assert_eq!(receiver.verify(&header, &body, 1_000_000), Err(HopError::BadSignature));
        let host = HopTarget {
            host: Some(b"evil.example.com"),
            ..T
        };
        assert_eq!(receiver.verify(&header, &host, 1_000_000), Err(HopError::BadSignature));
        let origin = HopTarget {
            origin: Some(b"http://evil.example.com"),
            ..T
        };
        assert_eq!(
            receiver.verify(&header, &origin, 1_000_000),
            Err(HopError::BadSignature)
        );
        let no_host = HopTarget { host: None, ..T };
        assert_eq!(
            receiver.verify(&header, &no_host, 1_000_000),
            Err(HopError::BadSignature)
        );
        assert!(receiver.verify(&header, &T, 1_000_000).is_ok());
    }

    #[test]
    fn future_timestamps_beyond_the_skew_are_refused() {
        let (sender, receiver) = (hops(), hops());
        let far = sender.sign("a", &T, 1_000_000 + 2_001).unwrap();
        assert_eq!(receiver.verify(&far, &T, 1_000_000), Err(HopError::Stale));
        let near = sender.sign("a", &T, 1_000_000 + 1_500).unwrap();
        assert!(receiver.verify(&near, &T, 1_000_000).is_ok());
    }

    #[test]
    fn a_full_cache_rotates_early_without_opening_a_replay_window() {
        let sender = hops();
        let receiver = hops().with_cache_cap(4);
        let first = sender.sign("a", &T, 1_000_000).unwrap();
        assert!(receiver.verify(&first, &T, 1_000_000).is_ok());
        // A flood within one max_age window: the cache rotates every 2 nonces,
        // so `first` is forgotten...
        for i in 1..=5 {
            let h = sender.sign("a", &T, 1_000_000 + i * 1_000).unwrap();
            assert!(receiver.verify(&h, &T, 1_000_000 + i * 1_000).is_ok(), "hop {i}");
        }
        let seen = crate::sync::lock(&receiver.seen);
        assert!(seen.current.len() + seen.previous.len() <= 4, "bounded");
        drop(seen);
        // ...and, still within hop_max_age, its replay is refused all the same.
        assert_eq!(receiver.verify(&first, &T, 1_006_000), Err(HopError::Stale));
        // Fresh hops keep working.
        let fresh = sender.sign("a", &T, 1_006_000).unwrap();
        assert!(receiver.verify(&fresh, &T, 1_006_000).is_ok());
    }
}
