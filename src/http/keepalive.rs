//! A client connection's two clocks: the deadline of a request's head
//! (slowloris), and how long an idle keep-alive connection is kept.
//!
//! hyper has one clock for both. Its `header_read_timeout` runs whenever it
//! waits for a head, so an idle connection was closed at the header deadline
//! (10 s). Load balancers keep idle connections to their upstreams longer
//! (AWS's and nginx's 60 s, Google's 600 s) and reuse them; a request they
//! wrote as our close crossed it was lost: a 502 for a call nobody may send
//! again. The rule is that a server keeps idle connections longer than its
//! clients do. So hyper's clock is off, and the connection's reads are
//! watched here instead:
//! - a head is due `head_timeout` after its first byte (after the accept,
//!   for the first request: a connection that says nothing is closed then);
//! - between requests the connection may idle for `idle_timeout`;
//! - while a request is served (its head read, its answer not yet all
//!   written) neither runs: the body has its own deadline
//!   (`http.body_read_timeout`), and an answer's stream may last.
//!
//! The service counts requests in ([`Activity::begin`]) and hyper's drop of
//! the answer's body counts them out ([`Tracked`]).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::body::{Body, Frame, SizeHint};

use super::connections::{Admitted, Slot};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// Requests begun and ended on one connection.
#[derive(Debug)]
pub struct Activity {
    started: AtomicU64,
    finished: AtomicU64,
    /// When the connection was accepted, and nanoseconds after it when its
    /// last request ended: its idle spell is counted from there.
    accepted: Instant,
    finished_at: AtomicU64,
    /// The connection's place in the budget: told at once when the
    /// connection turns idle (hyper reads again only when bytes arrive).
    slot: Option<Arc<Slot>>,
}

impl Activity {
    pub fn new(slot: Option<Arc<Slot>>) -> Self {
        Self {
            started: AtomicU64::new(0),
            finished: AtomicU64::new(0),
            accepted: Instant::now(),
            finished_at: AtomicU64::new(0),
            slot,
        }
    }

    /// When the last request ended.
    fn last_finished(&self) -> Instant {
        self.accepted + Duration::from_nanos(self.finished_at.load(Ordering::Relaxed))
    }

    /// A request's head has been read; it is served until the guard drops
    /// (with its answer's body, see [`Tracked`]).
    pub fn begin(self: &Arc<Self>) -> Served {
        self.started.fetch_add(1, Ordering::Relaxed);
        if let Some(slot) = &self.slot {
            slot.busy();
        }
        Served(Arc::clone(self))
    }
}

/// One request being served.
#[derive(Debug)]
pub struct Served(Arc<Activity>);

impl Drop for Served {
    fn drop(&mut self) {
        let activity = &self.0;
        let now = Instant::now();
        let since = now.saturating_duration_since(activity.accepted).as_nanos();
        activity
            .finished_at
            .store(u64::try_from(since).unwrap_or(u64::MAX), Ordering::Relaxed);
        let finished = activity.finished.fetch_add(1, Ordering::Release) + 1;
        if let Some(slot) = &activity.slot {
            if finished == activity.started.load(Ordering::Relaxed) {
                slot.idle(now.into_std());
            }
        }
    }
}

/// An answer's body that ends its request when hyper is done with it
/// (hyper drops a body once written to its end, or with the connection).
pub struct Tracked<B> {
    body: B,
    _served: Served,
}

impl<B> Tracked<B> {
    pub fn new(body: B, served: Served) -> Self {
        Self { body, _served: served }
    }
}

impl<B: Body + Unpin> Body for Tracked<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// Where a connection is, as its reads see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for the rest of a head whose first byte came after request
    /// number `n` ended (or for the first head).
    Head(u64),
    /// A request is being served. Its clock is no deadline, only a
    /// reminder: once idle, hyper reads again only when bytes arrive, so
    /// every `idle_timeout` a wait wakes to see whether the request ended.
    Busy,
    /// Idle after request number `n` ended.
    Idle(u64),
}

/// A connection's I/O whose reads fail (`TimedOut`) when a head or an idle
/// spell outlasts its clock; hyper then closes the connection.
pub struct Watched<IO> {
    io: IO,
    activity: Arc<Activity>,
    head_timeout: Duration,
    idle_timeout: Duration,
    phase: Phase,
    /// When the current phase's clock runs out (unused while `Busy`).
    deadline: Instant,
    /// Set to `deadline` lazily: only when a read has to wait.
    sleep: Pin<Box<Sleep>>,
    /// Its place in the connection budget, which may close it while idle.
    budget: Option<Admitted>,
}

impl<IO> Watched<IO> {
    pub fn new(
        io: IO,
        activity: Arc<Activity>,
        head_timeout: Duration,
        idle_timeout: Duration,
        budget: Option<Admitted>,
    ) -> Self {
        let deadline = Instant::now() + head_timeout;
        Self {
            io,
            activity,
            head_timeout,
            idle_timeout,
            phase: Phase::Head(0),
            deadline,
            sleep: Box::pin(tokio::time::sleep_until(deadline)),
            budget,
        }
    }

    /// Moves to the phase the request counts say, starting the idle clock
    /// (from the end of the last answer) when a request has ended since the
    /// last read.
    fn observe(&mut self) -> u64 {
        let started = self.activity.started.load(Ordering::Relaxed);
        let busy = started != self.activity.finished.load(Ordering::Acquire);
        self.phase = match self.phase {
            Phase::Busy if busy => Phase::Busy,
            _ if busy => {
                self.deadline = Instant::now() + self.idle_timeout;
                if let Some(budget) = &self.budget {
                    budget.slot.busy();
                }
                Phase::Busy
            }
            Phase::Head(n) if n == started => Phase::Head(n),
            Phase::Idle(n) if n == started => Phase::Idle(n),
            _ => {
                // Counted from the end of the last answer, however late a
                // read sees it (the reminder may be the first).
                self.deadline = self.activity.last_finished() + self.idle_timeout;
                Phase::Idle(started)
            }
        };
        started
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Watched<IO> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.budget.as_ref().is_some_and(|b| b.slot.is_reclaimed()) {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "idle connection closed to make room (http.max_connections)",
            )));
        }
        let started = this.observe();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.io).poll_read(cx, buf);
        match (&polled, this.phase) {
            (Poll::Ready(Ok(())), Phase::Idle(_)) if buf.filled().len() > before => {
                // The first bytes of the next head: its clock starts.
                this.deadline = Instant::now() + this.head_timeout;
                this.phase = Phase::Head(started);
                if this.budget.as_ref().is_some_and(|b| !b.slot.busy()) {
                    // Closed for room a moment before its next request came.
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::ConnectionAborted,
                        "idle connection closed to make room (http.max_connections)",
                    )));
                }
            }
            (Poll::Pending, phase) => {
                if let Some(budget) = &this.budget {
                    // The connection's task, to close it for room while it idles.
                    budget.slot.register(cx.waker());
                }
                if this.sleep.deadline() != this.deadline {
                    let deadline = this.deadline;
                    this.sleep.as_mut().reset(deadline);
                }
                if this.sleep.as_mut().poll(cx).is_ready() {
                    let why = match phase {
                        Phase::Head(_) => "request head not received in time",
                        Phase::Idle(_) => "idle keep-alive connection",
                        Phase::Busy => {
                            // Still served: the next reminder.
                            this.deadline = Instant::now() + this.idle_timeout;
                            let deadline = this.deadline;
                            this.sleep.as_mut().reset(deadline);
                            let _ = this.sleep.as_mut().poll(cx);
                            return polled;
                        }
                    };
                    return Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, why)));
                }
            }
            _ => {}
        }
        polled
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Watched<IO> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests;
