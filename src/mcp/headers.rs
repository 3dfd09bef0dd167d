//! The HTTP header names MCP's Streamable HTTP transport defines, as
//! [`HeaderName`] constants: the front door reads them and the backend
//! clients write them, and neither parses a name per request.

use http::HeaderName;

/// The session a handshake-era request belongs to.
pub const SESSION: HeaderName = HeaderName::from_static("mcp-session-id");
/// The protocol version a client or server speaks.
pub const PROTOCOL: HeaderName = HeaderName::from_static("mcp-protocol-version");
/// 2026-07-28: the request's method, mirrored from the body.
pub const METHOD: HeaderName = HeaderName::from_static("mcp-method");
/// 2026-07-28: the tool, prompt or resource a request names, mirrored from the body.
pub const NAME: HeaderName = HeaderName::from_static("mcp-name");
/// The SSE event id a stream resumes after (not MCP's own; listed for the same reason).
pub const LAST_EVENT_ID: HeaderName = HeaderName::from_static("last-event-id");

#[cfg(test)]
mod tests {
    #[test]
    fn names_are_lower_case_header_names() {
        for name in [
            super::SESSION,
            super::PROTOCOL,
            super::METHOD,
            super::NAME,
            super::LAST_EVENT_ID,
        ] {
            assert_eq!(http::HeaderName::from_bytes(name.as_str().as_bytes()).ok(), Some(name));
        }
    }
}
