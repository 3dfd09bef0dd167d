//! The front door's connection budget (`http.max_connections`).
//!
//! Idle keep-alive connections are kept long (`http.idle_timeout`, 620 s),
//! so a client that opens a connection per request and never closes one, or
//! a flood of them, could hold every file descriptor: then vmcp can open no
//! connection to a backend, a child's pipes or Redis, and every session
//! fails. So the front door holds at most `max_connections` (by default
//! three quarters of the process's file descriptor limit, the rest kept for
//! what vmcp opens itself). At the budget, a new connection makes room by
//! closing the connections idle the longest (a sixteenth of the idle ones,
//! at least one), as nginx reuses its keep-alive connections; only when none
//! is idle is the new connection refused (closed at once, counted, warned
//! about at most once a minute). A connection serving a request, streaming
//! an answer or sending its head is never closed for room.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::task::Waker;
use std::time::{Duration, Instant};

use futures_util::task::AtomicWaker;
use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts, Registry};

use crate::telemetry::Throttle;

const BUSY: u8 = 0;
const IDLE: u8 = 1;
const RECLAIMED: u8 = 2;

/// How often a refusal is warned about at most.
const WARN_EVERY: Duration = Duration::from_secs(60);

/// One admitted connection as the budget sees it.
#[derive(Debug, Default)]
pub struct Slot {
    state: AtomicU8,
    /// Nanoseconds since [`epoch`] when it last turned idle.
    idle_since: AtomicU64,
    waker: AtomicWaker,
}

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

impl Slot {
    /// The connection waits for its next request (since `at`).
    pub fn idle(&self, at: Instant) {
        let since = u64::try_from(at.saturating_duration_since(epoch()).as_nanos()).unwrap_or(u64::MAX);
        self.idle_since.store(since, Ordering::Relaxed);
        let _ = self
            .state
            .compare_exchange(BUSY, IDLE, Ordering::AcqRel, Ordering::Acquire);
    }

    /// The connection has work again; `false` if it was closed for room first.
    pub fn busy(&self) -> bool {
        match self
            .state
            .compare_exchange(IDLE, BUSY, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) => true,
            Err(now) => now != RECLAIMED,
        }
    }

    pub fn is_reclaimed(&self) -> bool {
        self.state.load(Ordering::Acquire) == RECLAIMED
    }

    /// Who to wake when the connection is closed for room (while it idles).
    pub fn register(&self, waker: &Waker) {
        self.waker.register(waker);
    }

    /// Closes it for room if it is still idle.
    fn reclaim(&self) -> bool {
        let taken = self
            .state
            .compare_exchange(IDLE, RECLAIMED, Ordering::AcqRel, Ordering::Acquire)
            .is_ok();
        if taken {
            self.waker.wake();
        }
        taken
    }
}

#[derive(Default)]
struct Open {
    slots: HashMap<u64, Arc<Slot>>,
    /// Closed for room, not yet gone.
    leaving: usize,
    next_id: u64,
}

pub struct Connections {
    max: usize,
    open: Mutex<Open>,
    gauge: IntGauge,
    reclaimed: IntCounter,
    refused: IntCounter,
    refusals: Throttle,
}

/// A connection's place in the budget; dropped with the connection.
pub struct Admitted {
    connections: Arc<Connections>,
    id: u64,
    pub slot: Arc<Slot>,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut open = self.connections.lock();
        open.slots.remove(&self.id);
        if self.slot.is_reclaimed() {
            open.leaving = open.leaving.saturating_sub(1);
        }
        self.connections
            .gauge
            .set(i64::try_from(open.slots.len()).unwrap_or(i64::MAX));
    }
}

impl Connections {
    pub fn new(max: usize, registry: &Registry) -> Result<Arc<Self>, prometheus::Error> {
        let gauge = IntGauge::new("vmcp_http_connections", "Client connections open on the MCP listener")?;
        let closed = IntCounterVec::new(
            Opts::new(
                "vmcp_http_connections_closed_total",
                "Client connections closed by the connection budget: idle ones closed to make room (reclaimed), new ones refused because none was idle (refused)",
            ),
            &["reason"],
        )?;
        registry.register(Box::new(gauge.clone()))?;
        registry.register(Box::new(closed.clone()))?;
        Ok(Arc::new(Self {
            max: max.max(1),
            open: Mutex::default(),
            gauge,
            reclaimed: closed.with_label_values(&["reclaimed"]),
            refused: closed.with_label_values(&["refused"]),
            refusals: Throttle::new(WARN_EVERY),
        }))
    }

    fn lock(&self) -> MutexGuard<'_, Open> {
        crate::sync::lock(&self.open)
    }

    /// A place for a new connection, making room if need be; `None`: refuse it.
    pub fn admit(self: &Arc<Self>) -> Option<Admitted> {
        let mut open = self.lock();
        if open.slots.len() - open.leaving.min(open.slots.len()) >= self.max {
            let made = Self::reclaim(&open.slots);
            if made == 0 {
                drop(open);
                self.refused.inc();
                self.warn_refusal();
                return None;
            }
            open.leaving += made;
            self.reclaimed.inc_by(made as u64);
        }
        open.next_id += 1;
        let id = open.next_id;
        let slot = Arc::new(Slot::default());
        open.slots.insert(id, Arc::clone(&slot));
        self.gauge.set(i64::try_from(open.slots.len()).unwrap_or(i64::MAX));
        Some(Admitted {
            connections: Arc::clone(self),
            id,
            slot,
        })
    }

    /// Closes the connections idle the longest: a sixteenth of the idle
    /// ones, at least one. Returns how many.
    fn reclaim(slots: &HashMap<u64, Arc<Slot>>) -> usize {
        let mut idle: Vec<(u64, &Arc<Slot>)> = slots
            .values()
            .filter(|s| s.state.load(Ordering::Acquire) == IDLE)
            .map(|s| (s.idle_since.load(Ordering::Relaxed), s))
            .collect();
        if idle.is_empty() {
            return 0;
        }
        let n = (idle.len() / 16).max(1);
        if n < idle.len() {
            idle.select_nth_unstable_by_key(n, |(since, _)| *since);
        }
        idle[..n].iter().filter(|(_, slot)| slot.reclaim()).count()
    }

    fn warn_refusal(&self) {
        if self.refusals.due() {
            tracing::warn!(
                max_connections = self.max,
                "a client connection was refused: every connection is busy (http.max_connections; vmcp_http_connections_closed_total counts refusals)"
            );
        }
    }
}

/// The default budget: three quarters of the file descriptor limit
/// (unbounded if the limit is, or cannot be read).
pub fn default_max() -> usize {
    match nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE) {
        Ok((soft, _)) if soft != nix::sys::resource::RLIM_INFINITY => {
            usize::try_from(soft / 4 * 3).unwrap_or(usize::MAX).max(64)
        }
        _ => usize::MAX,
    }
}

#[cfg(test)]
mod tests;
