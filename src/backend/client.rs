//! The HTTP client of the Streamable HTTP backends: vmcp's connection pool
//! (`crate::pool`) on hyper-util's connector.
//!
//! reqwest, used here before, redid per request what a gateway does once per
//! backend: cloning and re-parsing the URL, cloning its connector, applying a
//! redirect policy. Measured with `cargo bench --bench load` that was ~1.5 µs
//! of CPU per call. It also followed redirects, which a gateway should not do
//! behind its operator's back (a backend's 3xx is now its answer, an error).
//!
//! Credentials in a backend URL (`https://user:token@host/mcp`) become an
//! `Authorization: Basic` header, as reqwest did, and never leave the
//! prepared headers.

use std::time::Duration;

use bytes::Bytes;
use http::header::{Entry, HOST};
use http::{HeaderMap, HeaderValue, Method, Request, Response, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;

pub use crate::pool::Body;
use crate::pool::Pool;
use crate::redact::error_chain;

use super::egress::Egress;

#[cfg(feature = "tls")]
type Connector = hyper_rustls::HttpsConnector<Egress>;
#[cfg(not(feature = "tls"))]
type Connector = Egress;

/// Why a request got no response; described without the URL (it may carry
/// credentials, and the text reaches clients).
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("invalid url: {0}")]
    Url(String),
    #[cfg(feature = "tls")]
    #[error("TLS setup: {0}")]
    Tls(String),
    #[error("{0}")]
    Transport(String),
    /// The answer broke the client's bound ([`Client::with_max_answer`]).
    #[error("the answer is larger than {0} bytes")]
    TooLarge(usize),
}

/// A backend's URL split into what is requested and the credentials it carried.
pub struct Target {
    pub uri: Uri,
    pub authorization: Option<HeaderValue>,
}

impl Target {
    pub fn parse(raw: &str) -> Result<Self, ClientError> {
        let bad = |why: &str| ClientError::Url(format!("`{}`: {why}", crate::redact::url(raw)));
        let (scheme, rest) = raw.split_once("://").ok_or_else(|| bad("no scheme"))?;
        let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let (authority, tail) = rest.split_at(end);
        let (userinfo, host) = match authority.rsplit_once('@') {
            Some((userinfo, host)) => (Some(userinfo), host),
            None => (None, authority),
        };
        let tail = tail.split('#').next().unwrap_or_default();
        let uri: Uri = format!("{scheme}://{host}{tail}")
            .parse()
            .map_err(|_| bad("not a URL"))?;
        match uri.scheme_str() {
            Some("http") => {}
            #[cfg(feature = "tls")]
            Some("https") => {}
            _ => return Err(bad("scheme must be http or https")),
        }
        let authorization = userinfo
            .map(|info| {
                use base64::Engine;
                let (user, password) = info.split_once(':').unwrap_or((info, ""));
                let decode = |s: &str| percent_encoding::percent_decode_str(s).decode_utf8_lossy().into_owned();
                let token =
                    base64::engine::general_purpose::STANDARD.encode(format!("{}:{}", decode(user), decode(password)));
                let mut value =
                    HeaderValue::from_str(&format!("Basic {token}")).map_err(|_| bad("credentials not encodable"))?;
                value.set_sensitive(true);
                Ok(value)
            })
            .transpose()?;
        Ok(Self { uri, authorization })
    }
}

/// The bound of one answer unless set otherwise (`session.max_response_bytes`'s default).
pub const DEFAULT_MAX_ANSWER: usize = 16 * 1024 * 1024;

/// How long an unused connection is kept for reuse unless set otherwise
/// (`backends[].keep_alive`'s default). Below the 5 s after which the
/// common MCP servers close one (uvicorn, Node's `http`): a client must not
/// keep a connection longer than its server does, or it races the server's
/// close, and a request written as the close crosses it is lost.
pub const DEFAULT_KEEP_ALIVE: Duration = Duration::from_secs(4);

/// One backend's pooled keep-alive client (clones share the pool).
#[derive(Clone)]
pub struct Client {
    pool: Pool<Connector>,
}

impl Client {
    /// `connect_timeout` bounds each TCP connect, and a proxy's answer to
    /// CONNECT (the TLS handshake is bounded by the caller's request deadline).
    pub fn new(connect_timeout: Duration) -> Result<Self, ClientError> {
        let mut http = HttpConnector::new();
        http.set_nodelay(true);
        http.set_connect_timeout(Some(connect_timeout));
        http.enforce_http(false);
        // Directly, or through the proxy the environment names (`egress.rs`).
        let http = Egress::from_env(http, connect_timeout);
        #[cfg(feature = "tls")]
        let connector = {
            use rustls_platform_verifier::BuilderVerifierExt;
            let tls = rustls::ClientConfig::builder()
                .with_platform_verifier()
                .map_err(|e| ClientError::Tls(e.to_string()))?
                .with_no_client_auth();
            hyper_rustls::HttpsConnectorBuilder::new()
                .with_tls_config(tls)
                .https_or_http()
                .enable_http1()
                .wrap_connector(http)
        };
        #[cfg(not(feature = "tls"))]
        let connector = http;
        Ok(Self {
            pool: Pool::new(connector, DEFAULT_KEEP_ALIVE).with_max_answer(DEFAULT_MAX_ANSWER),
        })
    }

    /// Unused connections are kept `keep_alive` (before use: the pool is new).
    pub fn with_keep_alive(mut self, keep_alive: Duration) -> Self {
        self.pool = self.pool.with_idle_for(keep_alive);
        self
    }

    /// Answers bring at most `max` bytes (per event of an SSE stream);
    /// [`DEFAULT_MAX_ANSWER`] unless set.
    pub fn with_max_answer(mut self, max: usize) -> Self {
        self.pool = self.pool.with_max_answer(max);
        self
    }

    /// Sends one request; the response's body is left to read.
    pub async fn send(
        &self,
        method: Method,
        uri: &Uri,
        headers: HeaderMap,
        body: Bytes,
    ) -> Result<Response<Body>, ClientError> {
        let mut request = Request::new(Full::new(body));
        *request.method_mut() = method;
        // Origin form (path and query) on the wire; the pool connects to
        // `uri`'s scheme and authority.
        if let Some(path) = uri.path_and_query() {
            *request.uri_mut() = Uri::from(path.clone());
        }
        *request.headers_mut() = headers;
        if let Some(authority) = uri.authority() {
            if let Entry::Vacant(host) = request.headers_mut().entry(HOST) {
                let value = HeaderValue::from_str(authority_without_default_port(uri, authority))
                    .map_err(|_| ClientError::Url("host not encodable".into()))?;
                host.insert(value);
            }
        }
        self.pool
            .send(uri, request)
            .await
            .map_err(|e| ClientError::Transport(error_chain(&e)))
    }
}

/// `Host` as a browser sends it: the authority, without a port that is the
/// scheme's default (and without credentials, which `Target` already took out).
fn authority_without_default_port<'a>(uri: &Uri, authority: &'a http::uri::Authority) -> &'a str {
    let default = match uri.scheme_str() {
        Some("https") => 443,
        _ => 80,
    };
    match authority.port_u16() {
        Some(port) if port == default => authority.host(),
        _ => authority.as_str(),
    }
}

/// A response's whole body.
pub async fn bytes(response: Response<Body>) -> Result<Bytes, ClientError> {
    response
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .map_err(|e| body_error(&e))
}

/// Why reading an answer's body failed: its bound, or the transport.
pub fn body_error(e: &(dyn std::error::Error + 'static)) -> ClientError {
    match crate::pool::BodyError::too_large(e) {
        Some(max) => ClientError::TooLarge(max),
        None => ClientError::Transport(error_chain(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_become_a_basic_header_and_leave_the_uri() {
        let t = Target::parse("http://us%40er:p%3Aw@example.com:8080/mcp?x=1#frag").unwrap();
        assert_eq!(t.uri.to_string(), "http://example.com:8080/mcp?x=1");
        // base64("us@er:p:w")
        assert_eq!(t.authorization.unwrap().to_str().unwrap(), "Basic dXNAZXI6cDp3");
        let plain = Target::parse("http://127.0.0.1:9/mcp").unwrap();
        assert!(plain.authorization.is_none());
        let err = Target::parse("ftp://user:secret@h/x").err().unwrap().to_string();
        assert!(!err.contains("secret"), "{err}");
    }
}
