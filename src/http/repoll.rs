//! A connection's task polled again at once when it wakes itself.
//!
//! A hyper server connection runs its request handler inside its own task,
//! so that task wakes itself several times per request: the handler reading
//! the request body wakes the connection's dispatcher (hyper's body channel
//! wants the next chunk), and a call's relay channel closing wakes the
//! handler that watches it. tokio treats a wake during a task's own poll as a
//! yield: the task goes to the back of the run queue and a parked worker
//! thread is woken to look for work (a futex wake-up and two context
//! switches), then polled again. Measured at one session: 1.3 such yields per
//! `tools/call`, a third of vmcp's futex calls and context switches.
//!
//! [`Repoll`] absorbs those wakes: while the inner future is being polled,
//! a wake only marks it, and when the poll returns `Pending` with the mark
//! set, the future is polled again right away, as hyper's own dispatcher
//! loops instead of re-scheduling itself. A wake from anywhere at any other
//! time goes to the task's waker as usual. Fairness stays: at most
//! [`MAX_REPOLLS`] polls in a row, and none once the task's cooperative
//! budget is spent; then the wake is handed to tokio, a yield as before.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

use futures_util::task::AtomicWaker;

/// Polls in a row before a self-wake is handed to the scheduler.
pub const MAX_REPOLLS: usize = 4;

const IDLE: u8 = 0;
const POLLING: u8 = 1;
const WOKEN: u8 = 2;

/// Where wakes go: marked while the future is polled, passed on otherwise.
struct Signal {
    state: AtomicU8,
    task: AtomicWaker,
}

impl Wake for Signal {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        let mut state = self.state.load(Ordering::Acquire);
        loop {
            match state {
                WOKEN => return,
                POLLING => match self
                    .state
                    .compare_exchange_weak(POLLING, WOKEN, Ordering::AcqRel, Ordering::Acquire)
                {
                    Ok(_) => return,
                    Err(now) => state = now,
                },
                _ => return self.task.wake(),
            }
        }
    }
}

/// `inner`, polled again at once when it wakes its own task (see the module).
pub struct Repoll<F> {
    inner: Pin<Box<F>>,
    signal: Arc<Signal>,
    waker: Waker,
}

impl<F: Future> Repoll<F> {
    pub fn new(inner: F) -> Self {
        let signal = Arc::new(Signal {
            state: AtomicU8::new(IDLE),
            task: AtomicWaker::new(),
        });
        Self {
            inner: Box::pin(inner),
            waker: Waker::from(Arc::clone(&signal)),
            signal,
        }
    }
}

impl<F: Future> Future for Repoll<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = &mut *self;
        this.signal.task.register(cx.waker());
        let mut inner_cx = Context::from_waker(&this.waker);
        for _ in 0..MAX_REPOLLS {
            this.signal.state.store(POLLING, Ordering::Release);
            let polled = this.inner.as_mut().poll(&mut inner_cx);
            let woken = this.signal.state.swap(IDLE, Ordering::AcqRel) == WOKEN;
            if polled.is_ready() || !woken {
                return polled;
            }
            if !tokio::task::coop::has_budget_remaining() {
                break;
            }
        }
        // Woken during every poll, or out of budget: a yield, as without us.
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

#[cfg(test)]
mod tests;
