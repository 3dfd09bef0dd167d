//! How vmcp reaches a backend or an issuer: directly, or through the forward
//! proxy the environment names, as curl, Go and the SDKs' clients do.
//!
//! - `HTTPS_PROXY` for https:// URLs, `HTTP_PROXY` for http:// ones,
//!   `ALL_PROXY` for both (upper or lower case; read when a client is made);
//! - except the hosts in `NO_PROXY`: names, `.suffixes`, IP addresses,
//!   CIDR blocks, or `*` (in a cluster: `.svc,.cluster.local,10.0.0.0/8`).
//!
//! Through a proxy, a connection is a CONNECT tunnel to the backend's host and
//! port, and TLS (for https://) runs inside it, end to end with the backend.
//! The proxy's credentials (`http://user:password@proxy:3128`) go in
//! `Proxy-Authorization`, and never in a log line or an error. Only http://
//! proxies are spoken: another scheme (socks5://) fails each connect with
//! an error that says so. Peer replicas are never reached through a proxy
//! (the forwarder has its own connector), nor is Redis.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::Uri;
use hyper_util::client::legacy::connect::proxy::Tunnel;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::proxy::matcher::Matcher;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tower_service::Service;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Connects directly or through the environment's proxy (see the module).
#[derive(Clone)]
pub struct Egress {
    direct: HttpConnector,
    proxies: Arc<Matcher>,
    /// Bounds the proxy's answer to CONNECT (the TCP connect has its own).
    handshake_timeout: Duration,
}

impl Egress {
    /// With the proxies the environment names now.
    pub fn from_env(direct: HttpConnector, handshake_timeout: Duration) -> Self {
        Self::new(direct, Matcher::from_env(), handshake_timeout)
    }

    pub fn new(direct: HttpConnector, proxies: Matcher, handshake_timeout: Duration) -> Self {
        Self {
            direct,
            proxies: Arc::new(proxies),
            handshake_timeout,
        }
    }
}

impl Service<Uri> for Egress {
    type Response = TokioIo<TcpStream>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.direct.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, dst: Uri) -> Self::Future {
        let Some(proxy) = self.proxies.intercept(&dst) else {
            let connecting = self.direct.call(dst);
            return Box::pin(async move { connecting.await.map_err(Into::into) });
        };
        if proxy.uri().scheme_str() != Some("http") {
            let scheme = proxy.uri().scheme_str().unwrap_or("none").to_owned();
            return Box::pin(async move {
                Err(format!("the proxy's scheme is {scheme}: only http:// proxies are supported (CONNECT)").into())
            });
        }
        let mut tunnel = Tunnel::new(proxy.uri().clone(), self.direct.clone());
        if let Some(auth) = proxy.basic_auth() {
            tunnel = tunnel.with_auth(auth.clone());
        }
        let target = tunnel_target(&dst);
        let bound = self.handshake_timeout;
        Box::pin(async move {
            let target = target?;
            match tokio::time::timeout(bound, tunnel.call(target)).await {
                Ok(tunnelled) => tunnelled.map_err(|e| format!("proxy: {}", crate::redact::error_chain(&e)).into()),
                Err(_) => Err(format!("proxy: no tunnel within {bound:?}").into()),
            }
        })
    }
}

/// What the tunnel is asked for: the backend's host and port, the port
/// always written (hyper-util's tunnel takes a missing one for 443).
fn tunnel_target(dst: &Uri) -> Result<Uri, BoxError> {
    let host = dst.host().ok_or("a URL without a host")?;
    let port = dst
        .port_u16()
        .unwrap_or(if dst.scheme_str() == Some("https") { 443 } else { 80 });
    Ok(Uri::builder()
        .scheme("http")
        .authority(format!("{host}:{port}"))
        .path_and_query("/")
        .build()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tunnel_is_asked_for_the_backends_port() {
        let target = |url: &str| tunnel_target(&url.parse().expect("uri")).expect("target").to_string();
        assert_eq!(target("http://mcp.example.com/mcp"), "http://mcp.example.com:80/");
        assert_eq!(target("https://mcp.example.com/mcp"), "http://mcp.example.com:443/");
        assert_eq!(
            target("https://mcp.example.com:8443/mcp"),
            "http://mcp.example.com:8443/"
        );
        assert_eq!(target("http://[::1]:9000/mcp"), "http://[::1]:9000/");
    }

    #[test]
    fn no_proxy_hosts_are_reached_directly() {
        let proxies = Matcher::builder()
            .all("http://user:secret@proxy.internal:3128")
            .no(".svc,10.0.0.0/8,localhost")
            .build();
        let through = |url: &str| proxies.intercept(&url.parse().expect("uri")).is_some();
        assert!(through("https://api.example.com/mcp"));
        assert!(!through("http://github.default.svc/mcp"));
        assert!(!through("http://10.1.2.3:8080/mcp"));
        assert!(!through("http://localhost:8080/mcp"));
        let proxy = proxies.intercept(&"https://api.example.com/mcp".parse().expect("uri"));
        let proxy = proxy.expect("intercepted");
        assert!(
            !proxy.uri().to_string().contains("secret"),
            "credentials stay out of the URI"
        );
        assert!(proxy.basic_auth().is_some());
    }
}
