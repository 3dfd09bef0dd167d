//! A TCP proxy in front of a real server that can be frozen: while frozen it
//! still accepts connections but moves no byte in either direction, which is
//! what a hung backend (stuck event loop, GC pause, blackholed peer) looks
//! like from vmcp: connected, then silence.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

pub struct FreezableProxy {
    /// `http://127.0.0.1:PORT/mcp`, for a backend serving `/mcp` behind it.
    pub url: String,
    pub addr: String,
    frozen: Arc<AtomicBool>,
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
        let (target, flag, count) = (target.to_owned(), Arc::clone(&frozen), Arc::clone(&accepted));
        let tap = Arc::clone(&upstream);
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                let (target, flag, tap) = (target.clone(), Arc::clone(&flag), Arc::clone(&tap));
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(&target).await else {
                        return;
                    };
                    let _ = client.set_nodelay(true);
                    let _ = server.set_nodelay(true);
                    let (cr, cw) = client.into_split();
                    let (sr, sw) = server.into_split();
                    tokio::join!(pump(cr, sw, Arc::clone(&flag), Some(tap)), pump(sr, cw, flag, None));
                });
            }
        });
        Self {
            url: format!("http://{addr}/mcp"),
            addr,
            frozen,
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

/// Copies `from` to `to`, holding every chunk while frozen.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    frozen: Arc<AtomicBool>,
    tap: Option<Arc<Mutex<Vec<u8>>>>,
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
        if let Some(tap) = &tap {
            tap.lock().expect("tap").extend_from_slice(&buf[..n]);
        }
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}
