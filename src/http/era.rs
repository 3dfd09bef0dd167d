//! Which protocol era a request speaks, decided once, and the stateless
//! era's envelope checks (MCP 2026-07-28): every request names its method in
//! `Mcp-Method` (and its tool, prompt or URI in `Mcp-Name`), its version in
//! `MCP-Protocol-Version`, and carries `params._meta` with the same version
//! and the client's capabilities. Pure functions, table-tested.

use http::{HeaderMap, HeaderName, StatusCode};
use serde_json::{json, Value};

use crate::backend::Params;
use crate::mcp::headers::{METHOD, NAME, PROTOCOL, SESSION};
use crate::mcp::RpcError;

/// The stateless-era versions vmcp speaks.
pub const MODERN_VERSIONS: &[&str] = &["2026-07-28"];

pub const META_VERSION: &str = "io.modelcontextprotocol/protocolVersion";
pub const META_CAPABILITIES: &str = "io.modelcontextprotocol/clientCapabilities";
pub const META_CLIENT: &str = "io.modelcontextprotocol/clientInfo";

/// Header and body disagree (2026-07-28).
pub const HEADER_MISMATCH: i32 = -32020;
/// A client capability the request needs is missing (2026-07-28).
pub const MISSING_CAPABILITY: i32 = -32021;
/// An unsupported protocol version, with the supported ones in `data`.
pub const UNSUPPORTED_VERSION: i32 = -32022;

/// A stateless-era request: a POST with no session that names its method
/// in `Mcp-Method`, or a protocol version that is not a handshake one.
pub fn is_stateless(method: &http::Method, headers: &HeaderMap) -> bool {
    if method != http::Method::POST || headers.contains_key(SESSION) {
        return false;
    }
    let version = headers.get(PROTOCOL).and_then(|v| v.to_str().ok());
    headers.contains_key(METHOD) || version.is_some_and(|v| !crate::mcp::is_supported(v))
}

/// What a checked stateless request declares about its client.
#[derive(Debug, Clone, PartialEq)]
pub struct Envelope {
    pub version: &'static str,
    pub capabilities: Value,
    pub client: Option<Value>,
}

fn mismatch(what: &str) -> RpcError {
    RpcError::new(HEADER_MISMATCH, what.to_owned(), StatusCode::BAD_REQUEST)
}

/// Checks headers against the body of request `method` with `params`.
pub fn check(headers: &HeaderMap, method: &str, params: Option<Params<'_>>) -> Result<Envelope, RpcError> {
    let header = |name: &HeaderName| headers.get(name).and_then(|v| v.to_str().ok());
    // A version vmcp does not speak is said first: the client can pick another.
    if let Some(named) = header(&PROTOCOL).filter(|v| !MODERN_VERSIONS.contains(v)) {
        if !crate::mcp::is_supported(named) {
            return Err(unsupported(named));
        }
    }
    if header(&METHOD) != Some(method) {
        return Err(mismatch("Mcp-Method header does not match the request body's method"));
    }
    let named = match method {
        "tools/call" | "prompts/get" => Some(("name", params.and_then(|p| p.get("name")))),
        "resources/read" => Some(("uri", params.and_then(|p| p.get("uri")))),
        _ => None,
    };
    if let Some((key, value)) = named {
        if header(&NAME).is_none() || header(&NAME) != value.and_then(Value::as_str) {
            return Err(mismatch(&format!(
                "Mcp-Name header does not match the request body's `{key}`"
            )));
        }
    }
    let meta = params.and_then(|p| p.get("_meta"));
    let field = |key: &str| meta.and_then(|m| m.get(key));
    let missing = |key: &str| {
        RpcError::invalid_params(format!("params._meta is missing the required envelope key {key}"))
            .with_status(StatusCode::BAD_REQUEST)
    };
    let requested = field(META_VERSION)
        .and_then(Value::as_str)
        .ok_or_else(|| missing(META_VERSION))?;
    let Some(version) = MODERN_VERSIONS.iter().copied().find(|v| *v == requested) else {
        return Err(unsupported(requested));
    };
    if header(&PROTOCOL) != Some(version) {
        return Err(mismatch("MCP-Protocol-Version header does not match params._meta"));
    }
    let capabilities = field(META_CAPABILITIES)
        .filter(|c| c.is_object())
        .cloned()
        .ok_or_else(|| missing(META_CAPABILITIES))?;
    Ok(Envelope {
        version,
        capabilities,
        client: field(META_CLIENT).cloned(),
    })
}

/// Every version vmcp speaks, the stateless ones first.
pub fn supported_versions() -> Vec<&'static str> {
    MODERN_VERSIONS
        .iter()
        .chain(crate::mcp::SUPPORTED_VERSIONS.iter().rev())
        .copied()
        .collect()
}

fn unsupported(requested: &str) -> RpcError {
    RpcError {
        code: UNSUPPORTED_VERSION,
        message: "Unsupported protocol version".into(),
        data: Some(json!({ "supported": supported_versions(), "requested": requested })),
        status: StatusCode::BAD_REQUEST,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(params: &Value) -> Option<Params<'_>> {
        Some(Params::Tree(params))
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(HeaderName::from_bytes(k.as_bytes()).unwrap(), v.parse().unwrap());
        }
        h
    }

    fn meta(version: &str) -> Value {
        json!({"_meta": {META_VERSION: version, META_CAPABILITIES: {}}})
    }

    #[test]
    fn the_era_is_decided_from_the_headers() {
        let post = http::Method::POST;
        assert!(is_stateless(&post, &headers(&[("mcp-method", "server/discover")])));
        assert!(is_stateless(&post, &headers(&[("mcp-protocol-version", "2026-07-28")])));
        assert!(!is_stateless(&post, &headers(&[])), "an initialize");
        assert!(!is_stateless(
            &post,
            &headers(&[("mcp-protocol-version", "2025-06-18")])
        ));
        assert!(!is_stateless(
            &post,
            &headers(&[("mcp-method", "tools/list"), ("mcp-session-id", "abc")])
        ));
        assert!(!is_stateless(&http::Method::GET, &headers(&[("mcp-method", "x")])));
    }

    #[test]
    fn headers_and_body_must_agree() {
        let ok = headers(&[("mcp-method", "tools/list"), ("mcp-protocol-version", "2026-07-28")]);
        assert_eq!(
            check(&ok, "tools/list", tree(&meta("2026-07-28"))).unwrap().version,
            "2026-07-28"
        );
        assert_eq!(
            check(&ok, "tools/call", tree(&meta("2026-07-28"))).unwrap_err().code,
            HEADER_MISMATCH
        );
        let err = check(&ok, "tools/list", tree(&meta("2027-01-01"))).unwrap_err();
        assert_eq!(err.code, UNSUPPORTED_VERSION);
        assert_eq!(err.data.unwrap()["supported"][0], "2026-07-28");
        let no_caps = json!({"_meta": {META_VERSION: "2026-07-28"}});
        assert_eq!(check(&ok, "tools/list", tree(&no_caps)).unwrap_err().code, -32602);
        assert_eq!(check(&ok, "tools/list", None).unwrap_err().code, -32602);
        let old_header = headers(&[("mcp-method", "tools/list"), ("mcp-protocol-version", "2025-11-25")]);
        assert_eq!(
            check(&old_header, "tools/list", tree(&meta("2026-07-28")))
                .unwrap_err()
                .code,
            HEADER_MISMATCH
        );

        let mut call = meta("2026-07-28");
        call["name"] = json!("t_echo");
        let named = |n: &str| {
            headers(&[
                ("mcp-method", "tools/call"),
                ("mcp-protocol-version", "2026-07-28"),
                ("mcp-name", n),
            ])
        };
        assert!(check(&named("t_echo"), "tools/call", tree(&call)).is_ok());
        assert_eq!(
            check(&named("other"), "tools/call", tree(&call)).unwrap_err().code,
            HEADER_MISMATCH
        );
        let unnamed = headers(&[("mcp-method", "tools/call"), ("mcp-protocol-version", "2026-07-28")]);
        assert_eq!(
            check(&unnamed, "tools/call", tree(&call)).unwrap_err().code,
            HEADER_MISMATCH
        );
    }
}
