//! `audit`: one JSON line per call and per refusal (see [`crate::audit`]).

use std::path::PathBuf;

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditConfig {
    pub enabled: bool,
    pub sink: AuditSink,
    /// The file appended to with `sink: file`.
    pub path: PathBuf,
    /// Whether records carry the call's arguments (they may hold secrets or
    /// personal data); off by default.
    pub include_arguments: bool,
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            sink: AuditSink::Stdout,
            path: PathBuf::from("/var/log/vmcp/audit.jsonl"),
            include_arguments: false,
        }
    }
}

/// Where audit lines go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuditSink {
    /// Standard output, one JSON object per line (logs go to stderr).
    #[default]
    Stdout,
    /// Appended to `path`.
    File,
}
