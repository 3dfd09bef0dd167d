//! A circuit breaker per backend, shared by every session of the replica.
//!
//! A backend that is down or hung costs the sessions opening it one
//! `init_timeout` each until `failures` consecutive failures open its
//! circuit; from then on new sessions (and rebuilds) skip it at once and name
//! it as unavailable. While open, one background probe at a time tries a real
//! handshake after `open_for` (doubling up to `max_open_for` while it keeps
//! failing): the half-open state. When the probe answers the circuit closes,
//! and the replica's recovery count goes up, which is how sessions that lack
//! the backend learn to open it on their next request.
//!
//! Only failures that say the backend is not there count: no connection,
//! a timeout while opening, a broken protocol. A backend that answers with a
//! JSON-RPC error is healthy. Calls in existing sessions count only when the
//! backend cannot be reached at all (a slow tool is not a sick backend). Each
//! state change is logged once, not once per session.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus::IntGauge;

use crate::sync::lock;

/// When a circuit opens and how long it stays open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CircuitPolicy {
    /// Consecutive failures that open the circuit.
    pub failures: u32,
    /// How long it stays open before the first probe.
    pub open_for: Duration,
    /// The longest wait between probes (the wait doubles while they fail).
    pub max_open_for: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Closed {
        failures: u32,
    },
    /// Open, waiting `wait` before the next probe.
    Open {
        wait: Duration,
    },
    /// A probe is running.
    HalfOpen {
        wait: Duration,
    },
}

/// One backend's circuit.
pub struct Circuit {
    name: Arc<str>,
    policy: CircuitPolicy,
    state: Mutex<State>,
    /// `Closed { failures: 0 }`: lets the hot path skip the lock.
    clean: AtomicBool,
    gauge: IntGauge,
    /// Shared by every circuit of the replica: closings so far.
    recoveries: Arc<AtomicU64>,
}

/// What a failure did to the circuit.
#[derive(Debug, PartialEq, Eq)]
pub enum Tripped {
    /// Still closed (or already open).
    No,
    /// It opened now: the caller starts the probe after this wait.
    Opened(Duration),
}

impl Circuit {
    pub fn new(name: &str, policy: CircuitPolicy, gauge: IntGauge, recoveries: Arc<AtomicU64>) -> Self {
        gauge.set(0);
        Self {
            name: Arc::from(name),
            policy,
            state: Mutex::new(State::Closed { failures: 0 }),
            clean: AtomicBool::new(true),
            gauge,
            recoveries,
        }
    }

    /// Whether new backend sessions should skip this backend now.
    pub fn is_open(&self) -> bool {
        !self.clean.load(Ordering::Acquire) && !matches!(*lock(&self.state), State::Closed { .. })
    }

    /// The backend answered.
    pub fn succeeded(&self) {
        if self.clean.load(Ordering::Acquire) {
            return;
        }
        let mut state = lock(&self.state);
        let was = *state;
        *state = State::Closed { failures: 0 };
        self.clean.store(true, Ordering::Release);
        drop(state);
        if !matches!(was, State::Closed { .. }) {
            self.gauge.set(0);
            self.recoveries.fetch_add(1, Ordering::AcqRel);
            tracing::info!(backend = %self.name, "backend answers again: circuit closed");
        }
    }

    /// The backend could not be reached (`why`, for the log).
    pub fn failed(&self, why: &str) -> Tripped {
        let mut state = lock(&self.state);
        self.clean.store(false, Ordering::Release);
        match *state {
            State::Closed { failures } if failures + 1 >= self.policy.failures => {
                *state = State::Open {
                    wait: self.policy.open_for,
                };
                drop(state);
                self.gauge.set(1);
                tracing::warn!(backend = %self.name, reason = why, retry_in = ?self.policy.open_for,
                    "backend unavailable: circuit open, new sessions skip it");
                Tripped::Opened(self.policy.open_for)
            }
            State::Closed { failures } => {
                *state = State::Closed { failures: failures + 1 };
                Tripped::No
            }
            State::Open { .. } | State::HalfOpen { .. } => Tripped::No,
        }
    }

    /// A probe starts; `None` if the circuit closed meanwhile.
    pub fn probing(&self) -> Option<()> {
        let mut state = lock(&self.state);
        match *state {
            State::Open { wait } => {
                *state = State::HalfOpen { wait };
                drop(state);
                self.gauge.set(2);
                Some(())
            }
            _ => None,
        }
    }

    /// The probe failed: open again, for twice as long (up to the cap).
    pub fn probe_failed(&self) -> Option<Duration> {
        let mut state = lock(&self.state);
        let State::HalfOpen { wait } = *state else {
            return None;
        };
        let wait = (wait * 2).min(self.policy.max_open_for);
        *state = State::Open { wait };
        drop(state);
        self.gauge.set(1);
        tracing::debug!(backend = %self.name, retry_in = ?wait, "backend still unavailable");
        Some(wait)
    }

    pub fn recoveries(&self) -> &Arc<AtomicU64> {
        &self.recoveries
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn circuit(failures: u32) -> Circuit {
        let policy = CircuitPolicy {
            failures,
            open_for: Duration::from_secs(1),
            max_open_for: Duration::from_secs(3),
        };
        Circuit::new("b", policy, IntGauge::new("g", "g").unwrap(), Arc::default())
    }

    #[test]
    fn opens_after_consecutive_failures_and_closes_on_success() {
        let c = circuit(2);
        assert_eq!(c.failed("x"), Tripped::No);
        assert!(!c.is_open());
        c.succeeded(); // resets the count
        assert_eq!(c.failed("x"), Tripped::No);
        assert_eq!(c.failed("x"), Tripped::Opened(Duration::from_secs(1)));
        assert!(c.is_open());
        assert_eq!(c.failed("x"), Tripped::No, "already open");
        assert_eq!(c.gauge.get(), 1);
        c.succeeded();
        assert!(!c.is_open());
        assert_eq!(c.gauge.get(), 0);
        assert_eq!(c.recoveries.load(Ordering::Acquire), 1);
    }

    #[test]
    fn failed_probes_back_off_up_to_the_cap() {
        let c = circuit(1);
        assert_eq!(c.failed("x"), Tripped::Opened(Duration::from_secs(1)));
        let mut waits = Vec::new();
        for _ in 0..3 {
            assert!(c.probing().is_some());
            assert_eq!(c.gauge.get(), 2);
            waits.extend(c.probe_failed());
        }
        assert_eq!(waits, [2, 3, 3].map(Duration::from_secs));
        assert!(c.probing().is_some());
        c.succeeded();
        assert!(c.probing().is_none(), "closed: nothing to probe");
        assert_eq!(c.recoveries.load(Ordering::Acquire), 1);
    }
}
