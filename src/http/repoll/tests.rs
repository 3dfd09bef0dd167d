use std::sync::atomic::AtomicUsize;
use std::sync::Mutex;

use super::*;

/// A task's waker that counts its wakes.
#[derive(Default)]
struct Count(AtomicUsize);

impl Wake for Count {
    fn wake(self: Arc<Self>) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

fn task() -> (Arc<Count>, Waker) {
    let count = Arc::new(Count::default());
    (Arc::clone(&count), Waker::from(count))
}

/// Wakes itself during each of its first `wakes` polls; then ready.
struct SelfWaking {
    wakes: usize,
    polls: usize,
}

impl Future for SelfWaking {
    type Output = usize;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<usize> {
        self.polls += 1;
        if self.polls > self.wakes {
            return Poll::Ready(self.polls);
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

#[test]
fn a_wake_during_the_poll_polls_again_without_waking_the_task() {
    let (count, waker) = task();
    let mut fut = Repoll::new(SelfWaking { wakes: 2, polls: 0 });
    let polled = Pin::new(&mut fut).poll(&mut Context::from_waker(&waker));
    assert_eq!(polled, Poll::Ready(3));
    assert_eq!(count.0.load(Ordering::SeqCst), 0);
}

#[test]
fn a_future_that_keeps_waking_itself_yields_after_max_repolls() {
    let (count, waker) = task();
    let mut fut = Repoll::new(SelfWaking {
        wakes: usize::MAX,
        polls: 0,
    });
    let polled = Pin::new(&mut fut).poll(&mut Context::from_waker(&waker));
    assert!(polled.is_pending());
    assert_eq!(fut.inner.polls, MAX_REPOLLS);
    // Handed to the scheduler: the task is woken, exactly once.
    assert_eq!(count.0.load(Ordering::SeqCst), 1);
}

/// Keeps the waker of its last poll where a test can wake it later.
struct Parked(Arc<Mutex<Option<Waker>>>, bool);

impl Future for Parked {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.1 {
            return Poll::Ready(());
        }
        self.1 = true;
        *self.0.lock().unwrap() = Some(cx.waker().clone());
        Poll::Pending
    }
}

#[test]
fn a_wake_after_the_poll_reaches_the_task() {
    let (count, waker) = task();
    let slot = Arc::new(Mutex::new(None));
    let mut fut = Repoll::new(Parked(Arc::clone(&slot), false));
    assert!(Pin::new(&mut fut).poll(&mut Context::from_waker(&waker)).is_pending());
    assert_eq!(count.0.load(Ordering::SeqCst), 0);
    slot.lock().unwrap().take().unwrap().wake();
    assert_eq!(count.0.load(Ordering::SeqCst), 1);
    assert!(Pin::new(&mut fut).poll(&mut Context::from_waker(&waker)).is_ready());
}

#[test]
fn a_wake_from_another_thread_is_never_lost() {
    // Whatever the interleaving with the poll, each wake either causes a
    // poll again or reaches the task.
    for _ in 0..200 {
        let (count, waker) = task();
        let slot = Arc::new(Mutex::new(None));
        let mut fut = Repoll::new(Parked(Arc::clone(&slot), false));
        assert!(Pin::new(&mut fut).poll(&mut Context::from_waker(&waker)).is_pending());
        let stored = slot.lock().unwrap().take().unwrap();
        let waking = std::thread::spawn(move || stored.wake());
        waking.join().unwrap();
        assert_eq!(count.0.load(Ordering::SeqCst), 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_a_runtime_a_connection_like_task_still_completes() {
    let (tx, rx) = tokio::sync::oneshot::channel::<u32>();
    let (relay, mut relayed) = tokio::sync::mpsc::unbounded_channel::<u32>();
    // Like a call: waits for its answer while watching a relay channel whose
    // sender closes (a wake of its own task) in the poll that gets the answer.
    let task = tokio::spawn(Repoll::new(async move {
        let call = async move {
            let answer = rx.await.unwrap_or(0);
            drop(relay);
            answer
        };
        tokio::pin!(call);
        loop {
            tokio::select! {
                biased;
                Some(_) = relayed.recv() => {}
                answer = &mut call => break answer,
            }
        }
    }));
    tokio::task::yield_now().await;
    tx.send(7).unwrap();
    assert_eq!(task.await.unwrap(), 7);
}
