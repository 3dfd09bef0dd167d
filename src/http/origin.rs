//! DNS rebinding protection. A server on a loopback address is reachable
//! from the user's browser: a page on `evil.example` whose name resolves to
//! 127.0.0.1 could drive it. Such requests carry the attacker's name in
//! `Host` (and `Origin`), so `/mcp` only answers the names it is meant to
//! have: by default the loopback names when vmcp listens on loopback, and
//! any name otherwise (behind a Service, `Host` is whatever clients use).

use std::net::SocketAddr;

use http::{HeaderMap, HeaderValue};

/// Which `Host`/`Origin` names `/mcp` accepts.
#[derive(Debug, Clone)]
pub struct HostGuard {
    /// `None`: any; otherwise lower-case host names without port.
    allowed: Option<Vec<String>>,
}

impl HostGuard {
    pub fn new(configured: Option<&[String]>, listen: SocketAddr) -> Self {
        let allowed = match configured {
            Some([]) => None,
            Some(names) => Some(names.iter().map(|n| n.to_ascii_lowercase()).collect()),
            None if listen.ip().is_loopback() => Some(["localhost", "127.0.0.1", "[::1]"].map(String::from).to_vec()),
            None => None,
        };
        Self { allowed }
    }

    /// Whether the request's `Host` and (if sent) `Origin` name an allowed host.
    /// Compared as bytes: a name that is not visible ASCII matches no allowed
    /// name anyway, so there is nothing to decode.
    pub fn admits(&self, headers: &HeaderMap) -> bool {
        let Some(allowed) = &self.allowed else {
            return true;
        };
        let ok = |authority: &[u8]| {
            let host = host_of(authority);
            allowed.iter().any(|a| a.as_bytes().eq_ignore_ascii_case(host))
        };
        let host = headers.get(http::header::HOST).map(HeaderValue::as_bytes);
        host.is_some_and(ok)
            && headers.get(http::header::ORIGIN).is_none_or(|origin| {
                let origin = origin.as_bytes();
                origin
                    .windows(3)
                    .position(|w| w == b"://")
                    .is_some_and(|at| ok(&origin[at + 3..]))
            })
    }
}

/// The host of `host[:port]` (an IPv6 literal keeps its brackets), as sent
/// (compared without regard to case).
fn host_of(authority: &[u8]) -> &[u8] {
    let mut authority = authority.trim_ascii();
    while let [rest @ .., b'/'] = authority {
        authority = rest;
    }
    match authority.iter().rposition(|b| *b == b']') {
        Some(end) => &authority[..=end],
        None => authority.split(|b| *b == b':').next().unwrap_or(authority),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn loopback_listeners_accept_only_loopback_names() {
        let guard = HostGuard::new(None, "127.0.0.1:8080".parse().unwrap());
        assert!(guard.admits(&headers(&[("host", "127.0.0.1:8080")])));
        assert!(guard.admits(&headers(&[("host", "localhost"), ("origin", "http://localhost:3000")])));
        assert!(guard.admits(&headers(&[("host", "[::1]:8080")])));
        assert!(!guard.admits(&headers(&[("host", "evil.example.com")])));
        assert!(!guard.admits(&headers(&[
            ("host", "localhost:8080"),
            ("origin", "http://evil.example.com")
        ])));
        assert!(!guard.admits(&headers(&[])));
        assert!(guard.admits(&headers(&[("host", "localhost"), ("origin", "http://localhost//")])));
        assert!(!guard.admits(&headers(&[("host", "localhost"), ("origin", "localhost")])));
        assert!(!guard.admits(&headers(&[("host", "LOCALHOST.evil"), ("origin", "null")])));
    }

    #[test]
    fn other_listeners_accept_any_name_unless_configured() {
        let any = HostGuard::new(None, "0.0.0.0:8080".parse().unwrap());
        assert!(any.admits(&headers(&[("host", "vmcp.example.com")])));
        let off = HostGuard::new(Some(&[]), "127.0.0.1:8080".parse().unwrap());
        assert!(off.admits(&headers(&[("host", "evil.example.com")])));
        let listed = HostGuard::new(Some(&["MCP.example.com".into()]), "0.0.0.0:8080".parse().unwrap());
        assert!(listed.admits(&headers(&[("host", "mcp.example.com:443")])));
        assert!(!listed.admits(&headers(&[("host", "other.example.com")])));
    }
}
