//! MCP protocol logic of the front door, independent of HTTP: the JSON-RPC
//! envelope, version negotiation, and one [`Command`] per MCP method.

pub mod command;
pub mod headers;
pub mod jsonrpc;
mod plain;

pub use crate::backend::Reply;
pub use command::Command;
pub use jsonrpc::{Incoming, RpcError};

/// Handshake-era protocol versions the front door speaks, oldest first.
pub const SUPPORTED_VERSIONS: &[&str] = &["2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25"];

/// The newest handshake-era version (what the gateway itself asks backends for).
pub const LATEST_VERSION: &str = SUPPORTED_VERSIONS[SUPPORTED_VERSIONS.len() - 1];

/// What a client that names no version (and no header) is assumed to speak.
pub const DEFAULT_HEADER_VERSION: &str = "2025-03-26";

/// The version answered to `initialize`: the client's if supported, else our latest.
pub fn negotiate(requested: &str) -> &'static str {
    SUPPORTED_VERSIONS
        .iter()
        .copied()
        .find(|v| *v == requested)
        .unwrap_or(LATEST_VERSION)
}

pub fn is_supported(version: &str) -> bool {
    SUPPORTED_VERSIONS.contains(&version)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negotiation_echoes_known_versions_and_falls_back_to_latest() {
        assert_eq!(negotiate("2025-03-26"), "2025-03-26");
        assert_eq!(negotiate("1999-01-01"), "2025-11-25");
        assert!(!is_supported("2026-07-28"));
    }
}
