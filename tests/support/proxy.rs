//! A TCP proxy in front of a real server that can be frozen: while frozen it
//! still accepts connections but moves no byte in either direction, which is
//! what a hung backend (stuck event loop, GC pause, blackholed peer) looks
//! like from vmcp: connected, then silence. It can also play a server whose
//! keep-alive timer ends an idle connection just as a request arrives on it
//! (`close_idle_after`): the request is dropped unread and the connection closed.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

pub struct FreezableProxy {
    /// `http://127.0.0.1:PORT/mcp`, for a backend serving `/mcp` behind it.
    pub url: String,
    pub addr: String,
    frozen: Arc<AtomicBool>,
    idle_close: Arc<Mutex<Option<Duration>>>,
    /// Connections accepted so far.
    pub accepted: Arc<AtomicUsize>,
    /// Every byte sent toward the server, in order per connection.
    upstream: Arc<Mutex<Vec<u8>>>,
    task: JoinHandle<()>,
}

impl FreezableProxy {
    /// Proxies to `target` (`host:port`).
    pub async fn start(target: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        let frozen = Arc::new(AtomicBool::new(false));
        let accepted = Arc::new(AtomicUsize::new(0));
        let upstream = Arc::new(Mutex::new(Vec::new()));
        let idle_close = Arc::new(Mutex::new(None));
        let (target, flag, count) = (target.to_owned(), Arc::clone(&frozen), Arc::clone(&accepted));
        let (tap, closer) = (Arc::clone(&upstream), Arc::clone(&idle_close));
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                let (target, flag, tap) = (target.clone(), Arc::clone(&flag), Arc::clone(&tap));
                let idle = Idle {
                    close_after: Arc::clone(&closer),
                    last: Arc::new(Mutex::new(Instant::now())),
                };
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(&target).await else {
                        return;
                    };
                    let _ = client.set_nodelay(true);
                    let _ = server.set_nodelay(true);
                    let (cr, cw) = client.into_split();
                    let (sr, sw) = server.into_split();
                    tokio::join!(
                        pump(cr, sw, Arc::clone(&flag), Some(tap), Some(idle.clone())),
                        pump(sr, cw, flag, None, Some(idle))
                    );
                });
            }
        });
        Self {
            url: format!("http://{addr}/mcp"),
            addr,
            frozen,
            idle_close,
            accepted,
            upstream,
            task,
        }
    }

    /// How many times `needle` was sent toward the server (a request's
    /// body arrives in one piece here: they are small and written at once).
    pub fn sent_count(&self, needle: &str) -> usize {
        let sent = self.upstream.lock().expect("tap");
        sent.windows(needle.len()).filter(|w| *w == needle.as_bytes()).count()
    }

    /// From now on a request arriving on a connection idle for `after` or
    /// longer is dropped unread and the connection closed, as by a server
    /// whose keep-alive timer fired at that instant.
    pub fn close_idle_after(&self, after: Duration) {
        *self.idle_close.lock().expect("idle") = Some(after);
    }

    /// From now on no byte moves (connections stay open).
    pub fn freeze(&self) {
        self.frozen.store(true, Ordering::SeqCst);
    }

    /// Bytes flow again (what was held back is delivered).
    pub fn thaw(&self) {
        self.frozen.store(false, Ordering::SeqCst);
    }
}

impl Drop for FreezableProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One connection's last traffic, and the idle time after which a request
/// arriving is refused (only the client-to-server pump acts on it).
#[derive(Clone)]
struct Idle {
    close_after: Arc<Mutex<Option<Duration>>>,
    last: Arc<Mutex<Instant>>,
}

/// Copies `from` to `to`, holding every chunk while frozen.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    frozen: Arc<AtomicBool>,
    tap: Option<Arc<Mutex<Vec<u8>>>>,
    idle: Option<Idle>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        while frozen.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        while frozen.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if let Some(idle) = &idle {
            let mut last = idle.last.lock().expect("last");
            let after = *idle.close_after.lock().expect("idle");
            if tap.is_some() && after.is_some_and(|after| last.elapsed() >= after) {
                break; // toward the server: dropped unread; the server sees the close
            }
            *last = Instant::now();
        }
        if let Some(tap) = &tap {
            tap.lock().expect("tap").extend_from_slice(&buf[..n]);
        }
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}
