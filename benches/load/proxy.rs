//! The reference hop: a bare hyper forwarding proxy with no MCP logic (pooled
//! keep-alive client, TCP_NODELAY, body buffered then sent, response streamed).
//! vmcp's forwarding targets are relative to this, measured in the same run.
//!
//! It runs as its own process (this benchmark binary re-executed with
//! `--proxy-upstream`), like a vmcp replica: a proxy inside the load
//! generator's process shares its runtime and skips the cross-process
//! wake-ups every real hop pays, which made the reference look cheaper than
//! any separate process can be (measured: +42 µs p50 in-process).

use std::convert::Infallible;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::{TokioExecutor, TokioIo};

type Body = BoxBody<Bytes, hyper::Error>;

/// A proxy process; killed on drop.
pub struct ProxyProcess {
    child: std::process::Child,
    pub url: String,
}

impl Drop for ProxyProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl ProxyProcess {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

/// Starts a proxy process forwarding everything to `upstream` (`http://host:port`).
pub fn spawn(upstream: &str) -> ProxyProcess {
    spawn_self(&["--proxy-upstream", upstream])
}

/// This benchmark binary re-executed with `args`; it prints its URL first.
/// A hop (not the backend) runs under `VMCP_BENCH_HOP_WRAP` if that names a
/// program (`scripts/instructions-per-call.sh`: callgrind), as `VMCP_BIN` does for vmcp.
pub fn spawn_self(args: &[&str]) -> ProxyProcess {
    use std::io::BufRead;
    let exe = std::env::current_exe().expect("own executable");
    let wrap = std::env::var_os("VMCP_BENCH_HOP_WRAP").filter(|_| args.first() != Some(&"--backend"));
    let mut command = match wrap {
        Some(wrapper) => {
            let mut c = std::process::Command::new(wrapper);
            c.arg(exe);
            c
        }
        None => std::process::Command::new(exe),
    };
    let mut child = command
        .args(args)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn proxy");
    let stdout = child.stdout.take().expect("proxy stdout");
    let mut line = String::new();
    std::io::BufReader::new(stdout).read_line(&mut line).expect("proxy url");
    ProxyProcess {
        child,
        url: line.trim().to_owned(),
    }
}

/// The proxy process's main: prints its URL, serves until killed.
pub async fn serve(upstream: String) {
    let url = start(upstream).await;
    println!("{url}");
    std::future::pending::<()>().await;
}

/// Starts a proxy forwarding everything to `upstream` in this process.
async fn start(upstream: String) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}/mcp", listener.local_addr().expect("addr"));
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client: Client<HttpConnector, Full<Bytes>> = Client::builder(TokioExecutor::new()).build(connector);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let _ = stream.set_nodelay(true);
            let (client, upstream) = (client.clone(), upstream.clone());
            tokio::spawn(async move {
                let service = service_fn(move |req| forward(client.clone(), upstream.clone(), req));
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    url
}

async fn forward(
    client: Client<HttpConnector, Full<Bytes>>,
    upstream: String,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let (mut parts, body) = req.into_parts();
    let bytes = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    let path = parts.uri.path_and_query().map_or("/mcp", |p| p.as_str()).to_owned();
    parts.uri = format!("{upstream}{path}").parse().expect("uri");
    parts.headers.remove(http::header::HOST);
    let response = client.request(Request::from_parts(parts, Full::new(bytes))).await;
    Ok(match response {
        Ok(r) => r.map(|b| b.boxed()),
        Err(_) => Response::builder()
            .status(502)
            .body(Full::new(Bytes::new()).map_err(|e| match e {}).boxed())
            .expect("502"),
    })
}
