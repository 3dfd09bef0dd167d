//! A TCP proxy that can be frozen: while frozen it still accepts connections
//! but moves no byte in either direction, which is what a hung backend (stuck
//! event loop, GC pause, blackholed peer) looks like from vmcp: connected,
//! then silence. Thawing delivers what was held back, so calls vmcp gave up
//! on may still run afterwards (the report counts those).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

pub struct FreezableProxy {
    /// `host:port` it listens on.
    pub addr: String,
    frozen: Arc<AtomicBool>,
}

impl FreezableProxy {
    /// Proxies to `target` (`host:port`) until `stop` is cancelled.
    pub async fn start(target: &str, stop: CancellationToken) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?.to_string();
        let frozen = Arc::new(AtomicBool::new(false));
        let (target, flag) = (target.to_owned(), Arc::clone(&frozen));
        tokio::spawn(async move {
            loop {
                let client = tokio::select! {
                    Ok((client, _)) = listener.accept() => client,
                    _ = stop.cancelled() => return,
                };
                let (target, flag, stop) = (target.clone(), Arc::clone(&flag), stop.clone());
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(&target).await else {
                        return;
                    };
                    let _ = client.set_nodelay(true);
                    let _ = server.set_nodelay(true);
                    let (cr, cw) = client.into_split();
                    let (sr, sw) = server.into_split();
                    tokio::select! {
                        _ = async { tokio::join!(pump(cr, sw, Arc::clone(&flag)), pump(sr, cw, flag)) } => {}
                        _ = stop.cancelled() => {}
                    }
                });
            }
        });
        Ok(Self { addr, frozen })
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

/// Copies `from` to `to`, holding every chunk while frozen.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    frozen: Arc<AtomicBool>,
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
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}
