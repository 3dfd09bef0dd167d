//! Buckets in this replica's memory, behind one lock (a decision over several
//! buckets is then trivially all-or-nothing; it is a few float operations).
//!
//! A bucket that would be full now is the same as no bucket, so buckets are
//! dropped once full: a sweep every [`SWEEP_EVERY`] of use, and sooner when
//! the map has doubled since the last sweep (amortised O(1) per decision).
//! Memory is thus bounded by the callers active within one refill period.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use super::Claim;

const SWEEP_EVERY: Duration = Duration::from_secs(10);
/// Below this many buckets the map is never swept for its size.
const SWEEP_MIN_LEN: usize = 1024;

pub(super) struct MemoryBuckets {
    state: Mutex<State>,
}

struct State {
    /// (rule index, principal or "" for a global rule) → bucket.
    buckets: HashMap<(usize, String), Bucket>,
    next_sweep: Instant,
    /// The map's length after the last sweep, times two.
    sweep_at_len: usize,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
    /// When it is full again (and may be dropped); `None`: not in this
    /// process's lifetime (a refill period of centuries).
    full_at: Option<Instant>,
}

impl MemoryBuckets {
    pub(super) fn new() -> Self {
        Self {
            state: Mutex::new(State {
                buckets: HashMap::new(),
                next_sweep: Instant::now() + SWEEP_EVERY,
                sweep_at_len: SWEEP_MIN_LEN,
            }),
        }
    }

    /// Takes one token from each claimed bucket if every one has one; else
    /// the claim to wait longest for, and how long.
    pub(super) fn take(&self, claims: &[Claim<'_>]) -> Option<(usize, Duration)> {
        let now = Instant::now();
        // A poisoned lock only means another decision panicked mid-way; the
        // buckets are plain numbers, still usable.
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let keys: Vec<(usize, String)> = claims
            .iter()
            .map(|c| (c.rule, c.principal.unwrap_or_default().to_owned()))
            .collect();
        let mut tokens = Vec::with_capacity(claims.len());
        let mut refused: Option<(usize, u64)> = None;
        for (i, (claim, key)) in claims.iter().zip(&keys).enumerate() {
            let spec = claim.spec;
            let t = match state.buckets.get(key) {
                Some(b) => {
                    (b.tokens + now.duration_since(b.at).as_secs_f64() * 1000.0 * spec.per_ms).min(spec.capacity)
                }
                None => spec.capacity,
            };
            if t < 1.0 {
                let wait = spec.wait_ms(t);
                if refused.is_none_or(|(_, w)| wait > w) {
                    refused = Some((i, wait));
                }
            }
            tokens.push(t);
        }
        if let Some((i, wait)) = refused {
            return Some((i, Duration::from_millis(wait)));
        }
        for ((claim, key), t) in claims.iter().zip(keys).zip(tokens) {
            let left = t - 1.0;
            let to_full = (claim.spec.capacity - left) / claim.spec.per_ms;
            let bucket = Bucket {
                tokens: left,
                at: now,
                full_at: Duration::try_from_secs_f64(to_full.max(0.0) / 1000.0)
                    .ok()
                    .and_then(|d| now.checked_add(d)),
            };
            state.buckets.insert(key, bucket);
        }
        if now >= state.next_sweep || state.buckets.len() >= state.sweep_at_len {
            state.buckets.retain(|_, b| b.full_at.is_none_or(|at| at > now));
            state.next_sweep = now + SWEEP_EVERY;
            state.sweep_at_len = (state.buckets.len() * 2).max(SWEEP_MIN_LEN);
        }
        None
    }

    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.state.lock().map(|s| s.buckets.len()).unwrap_or_default()
    }
}
