//! Keep-alive HTTP/1 connections to upstreams (backends, peer replicas),
//! pooled per destination, on hyper's connection API.
//!
//! hyper-util's legacy pooled client, used before, did per call what this
//! pool does per connection or not at all: it SipHashed its pool key twice,
//! wrapped the checkout in futures, and for every answer whose body was still
//! to be read it spawned a task that waited for the connection to turn idle
//! and put it back (a task and a cross-thread wake-up per call). Here the
//! answer's body puts its connection back itself when it ends.
//!
//! Whether a request reached the peer decides whether a caller may run it
//! elsewhere, so failures are sorted by that ([`PoolError`]):
//! - a pooled connection found closed before the request was written is
//!   dropped and the request goes on another (or a new) connection;
//! - a failed connect, or a new connection that closed before the request
//!   was written: the request was not sent;
//! - anything after writing began: the outcome is unknown.
//!
//! An answer's body may be bounded ([`Pool::with_max_answer`], `bound.rs`):
//! past the bound it ends with [`BodyError::TooLarge`] and its connection is
//! closed, so a backend cannot make vmcp hold more than that for one answer.

use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::uri::{Authority, Scheme};
use http::{Request, Response, Uri};
use http_body_util::Full;
use hyper::body::{Body as _, Frame, Incoming, SizeHint};
use hyper::client::conn::http1::{self, SendRequest};
use tower_service::Service;

use crate::sync::lock;

mod bound;
use bound::Bound;

type Sender = SendRequest<Full<Bytes>>;
type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// At most this many idle connections are kept per destination.
const MAX_IDLE: usize = 512;

/// Why a request got no answer, by whether it may have reached the peer.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error("not an absolute http(s) URL")]
    Uri,
    /// Connection refused, timed out, or its TLS handshake failed: not sent.
    #[error("cannot connect: {0}")]
    Connect(#[source] BoxError),
    /// A new connection closed before the request was written: not sent.
    #[error("connection closed before the request was written: {0}")]
    Unwritten(#[source] hyper::Error),
    /// Writing began: the peer may or may not have the request.
    #[error("{0}")]
    Sent(#[source] hyper::Error),
}

/// Why an answer's body ended early.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error(transparent)]
    Hyper(#[from] hyper::Error),
    /// More than the pool's bound, in all or in one SSE event.
    #[error("the answer is larger than {0} bytes")]
    TooLarge(usize),
}

impl BodyError {
    /// The bound an answer broke, if that is why its body ended (found
    /// through wrappers such as an SSE parser's error).
    pub fn too_large(e: &(dyn std::error::Error + 'static)) -> Option<usize> {
        let mut at = Some(e);
        while let Some(e) = at {
            if let Some(Self::TooLarge(max)) = e.downcast_ref::<Self>() {
                return Some(*max);
            }
            at = e.source();
        }
        None
    }
}

/// Where connections go: a scheme and an authority.
#[derive(Clone)]
struct Key {
    tls: bool,
    authority: Authority,
}

impl Key {
    /// Byte for byte (a destination spelled in two cases gets two lists):
    /// cheaper than `Authority`'s case-folding comparison, and each caller
    /// spells its destinations one way.
    fn is(&self, other: &Key) -> bool {
        self.tls == other.tls && self.authority.as_str() == other.authority.as_str()
    }
}

struct Idle {
    sender: Sender,
    since: Instant,
}

/// The idle connections to one destination, oldest first.
struct Slot {
    key: Key,
    idle: Vec<Idle>,
}

/// A handful of destinations per pool (one backend; the peer replicas):
/// found by a scan, without hashing.
#[derive(Default)]
struct Lists {
    slots: Vec<Slot>,
    /// Whether a reaper task is running (it ends when nothing is idle).
    reaping: bool,
}

impl Lists {
    fn slot(&mut self, key: &Key) -> Option<&mut Slot> {
        self.slots.iter_mut().find(|s| s.key.is(key))
    }
}

struct Shared {
    lists: Mutex<Lists>,
    idle_for: Duration,
}

/// A pool of keep-alive connections made by `connector` (clones share it).
#[derive(Clone)]
pub struct Pool<C> {
    connector: C,
    shared: Arc<Shared>,
    /// The most bytes an answer may bring (per event for an SSE stream).
    max_answer: usize,
}

impl<C> Pool<C>
where
    C: Service<Uri> + Clone + Send + Sync + 'static,
    C::Response: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    C::Future: Send,
    C::Error: Into<BoxError>,
{
    /// `idle_for`: how long an unused connection is kept (and reused).
    pub fn new(connector: C, idle_for: Duration) -> Self {
        Self {
            connector,
            shared: Arc::new(Shared {
                lists: Mutex::default(),
                idle_for,
            }),
            max_answer: usize::MAX,
        }
    }

    /// A pool keeping unused connections for `idle_for` instead; the
    /// connections pooled so far are not carried over (set it before use).
    pub fn with_idle_for(self, idle_for: Duration) -> Self {
        Self {
            shared: Arc::new(Shared {
                lists: Mutex::default(),
                idle_for,
            }),
            ..self
        }
    }

    /// Answers bring at most `max` bytes: in all, or per event of an SSE
    /// stream (`text/event-stream`). Unbounded unless set.
    pub fn with_max_answer(mut self, max: usize) -> Self {
        self.max_answer = max;
        self
    }

    /// Sends `request` to `uri`'s scheme and authority; the request's own URI
    /// is sent as it is (origin form: path and query). The answer's body
    /// puts the connection back in the pool when it has been read to its end.
    pub async fn send(&self, uri: &Uri, mut request: Request<Full<Bytes>>) -> Result<Response<Body>, PoolError> {
        let key = Key {
            tls: match uri.scheme() {
                Some(s) if *s == Scheme::HTTP => false,
                Some(s) if *s == Scheme::HTTPS => true,
                _ => return Err(PoolError::Uri),
            },
            authority: uri.authority().cloned().ok_or(PoolError::Uri)?,
        };
        loop {
            let (mut sender, reused) = match self.checkout(&key) {
                Some(sender) => (sender, true),
                // Boxed: connecting is rare, and its future (the
                // connector's, the handshake's) would otherwise sit in every
                // call's future, copied with it (~12 KB per call).
                None => (Box::pin(self.connect(uri)).await?, false),
            };
            match sender.try_send_request(request).await {
                Ok(response) => {
                    let back = GiveBack {
                        shared: Arc::clone(&self.shared),
                        key,
                        sender,
                    };
                    let (parts, inner) = response.into_parts();
                    let bound = if self.max_answer == usize::MAX {
                        Bound::none()
                    } else {
                        let sse = parts
                            .headers
                            .get(http::header::CONTENT_TYPE)
                            .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
                        Bound::new(self.max_answer, sse)
                    };
                    let mut body = Body {
                        inner,
                        back: Some(back),
                        bound,
                    };
                    if body.inner.is_end_stream() {
                        // Nothing to read (a 202, a 204): no one may poll it.
                        body.give_back();
                    }
                    return Ok(Response::from_parts(parts, body));
                }
                Err(mut e) => match e.take_message() {
                    // A pooled connection that closed unseen: try the next one.
                    Some(unsent) if reused => request = unsent,
                    Some(_) => return Err(PoolError::Unwritten(e.into_error())),
                    None => return Err(PoolError::Sent(e.into_error())),
                },
            }
        }
    }

    /// The newest idle connection to `key` that is ready; expired and closed
    /// ones are dropped on the way. One still finishing its last answer
    /// (its body read, the connection not yet idle) is left for later.
    fn checkout(&self, key: &Key) -> Option<Sender> {
        let mut lists = lock(&self.shared.lists);
        let list = &mut lists.slot(key)?.idle;
        let mut stale = Vec::new();
        let now = Instant::now();
        let expired = |i: &Idle| now.saturating_duration_since(i.since) >= self.shared.idle_for;
        if list.first().is_some_and(expired) {
            // Oldest first: the expired ones are a prefix.
            let n = list.partition_point(expired);
            stale.extend(list.drain(..n));
        }
        let mut found = None;
        let mut at = list.len();
        while at > 0 {
            at -= 1;
            if list[at].sender.is_ready() {
                found = Some(list.remove(at).sender);
                break;
            }
            if list[at].sender.is_closed() {
                stale.push(list.remove(at));
            }
        }
        drop(lists);
        drop(stale); // outside the lock: dropping a sender wakes its connection
        found
    }

    async fn connect(&self, uri: &Uri) -> Result<Sender, PoolError> {
        let mut connector = self.connector.clone();
        std::future::poll_fn(|cx| connector.poll_ready(cx))
            .await
            .map_err(|e| PoolError::Connect(e.into()))?;
        let io = connector
            .call(uri.clone())
            .await
            .map_err(|e| PoolError::Connect(e.into()))?;
        let (sender, connection) = http1::handshake(io).await.map_err(|e| PoolError::Connect(e.into()))?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %crate::redact::error_chain(&e), "upstream connection ended");
            }
        });
        Ok(sender)
    }

    /// How many idle connections are pooled (for tests).
    pub fn idle(&self) -> usize {
        lock(&self.shared.lists).slots.iter().map(|s| s.idle.len()).sum()
    }
}

/// A connection lent to one answer, until its body ends.
struct GiveBack {
    shared: Arc<Shared>,
    key: Key,
    sender: Sender,
}

impl GiveBack {
    fn give(self) {
        if self.sender.is_closed() {
            return;
        }
        let idle = Idle {
            sender: self.sender,
            since: Instant::now(),
        };
        let mut lists = lock(&self.shared.lists);
        match lists.slot(&self.key) {
            Some(slot) if slot.idle.len() >= MAX_IDLE => return,
            Some(slot) => slot.idle.push(idle),
            None => lists.slots.push(Slot {
                key: self.key,
                idle: vec![idle],
            }),
        }
        if !lists.reaping {
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                lists.reaping = true;
                runtime.spawn(reap(Arc::downgrade(&self.shared)));
            }
        }
    }
}

/// Drops connections idle for too long (or closed by their peer) while any
/// are pooled, so that an upstream no longer called does not keep sockets
/// open; ends when none are left (the next one put back starts it again).
async fn reap(shared: Weak<Shared>) {
    loop {
        let every = match shared.upgrade() {
            Some(shared) => shared.idle_for.max(Duration::from_millis(100)),
            None => return,
        };
        tokio::time::sleep(every).await;
        let Some(shared) = shared.upgrade() else { return };
        let now = Instant::now();
        let mut stale = Vec::new();
        let mut lists = lock(&shared.lists);
        lists.slots.retain_mut(|slot| {
            let (keep, drop): (Vec<Idle>, Vec<Idle>) = slot
                .idle
                .drain(..)
                .partition(|i| now.saturating_duration_since(i.since) < shared.idle_for && !i.sender.is_closed());
            slot.idle = keep;
            stale.extend(drop);
            !slot.idle.is_empty()
        });
        let done = lists.slots.is_empty();
        if done {
            lists.reaping = false;
        }
        drop(lists);
        drop(stale);
        if done {
            return;
        }
    }
}

/// An answer's body: hyper's, which puts its connection back in the pool
/// once read to the end. Dropped before that, the connection is closed
/// (HTTP/1 cannot skip the rest of an answer), as it is when the answer
/// breaks its bound.
pub struct Body {
    inner: Incoming,
    back: Option<GiveBack>,
    bound: Bound,
}

impl Body {
    fn give_back(&mut self) {
        if let Some(back) = self.back.take() {
            back.give();
        }
    }
}

impl hyper::body::Body for Body {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = &mut *self;
        if this.bound.broken() {
            return Poll::Ready(None); // the error was the end of it
        }
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if frame.data_ref().is_some_and(|data| !this.bound.admit(data)) {
                    // The rest is never read: the connection goes with the body.
                    this.back = None;
                    return Poll::Ready(Some(Err(BodyError::TooLarge(this.bound.max()))));
                }
                if this.inner.is_end_stream() {
                    this.give_back();
                }
            }
            Poll::Ready(None) => this.give_back(),
            Poll::Ready(Some(Err(_))) => this.back = None,
            Poll::Pending => {}
        }
        polled.map(|frame| frame.map(|result| result.map_err(BodyError::Hyper)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests;
