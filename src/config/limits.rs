//! `limits`: token-bucket rate limits on calls (see [`crate::limits`]).

use std::time::Duration;

use serde::Deserialize;

use super::duration;

/// Rate limits; with no rules (the default) nothing is limited and the
/// limiter is skipped entirely.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// What a call gets while the shared bucket store (Redis) does not answer.
    pub on_store_error: OnStoreError,
    /// Every rule a call matches must have a token for it.
    pub rules: Vec<LimitRule>,
}

/// Fail open or closed when the bucket store is unavailable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnStoreError {
    /// Let the call through (fail open).
    #[default]
    Allow,
    /// Refuse the call (fail closed).
    Deny,
}

/// Whose calls share one bucket of a rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LimitScope {
    /// One bucket per caller.
    Principal,
    /// One bucket for every caller together.
    Global,
}

/// What a call is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CallKind {
    /// `tools/call`.
    Tool,
    /// `prompts/get`.
    Prompt,
    /// `resources/read`.
    Resource,
    /// A list (`tools/list`, `prompts/list`, `resources/list`,
    /// `resources/templates/list`): one request however many backends it
    /// asks. Counted only by rules that name `list` in `match.kinds`.
    List,
}

/// One token bucket per caller (or one for everyone) over the calls it matches.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitRule {
    /// `[a-z0-9-]+`, unique; the `rule` label of the metrics and the rule
    /// named in a refusal.
    pub name: String,
    pub per: LimitScope,
    /// Which calls count; empty: every call.
    #[serde(default, rename = "match")]
    pub matches: LimitMatch,
    /// Tokens added per `per_interval` (calls allowed per interval, sustained).
    pub rate: u32,
    #[serde(with = "duration")]
    pub per_interval: Duration,
    /// Bucket capacity (calls allowed at once after a quiet spell); default `rate`.
    #[serde(default)]
    pub burst: Option<u32>,
}

impl LimitRule {
    /// The bucket capacity in force.
    pub fn capacity(&self) -> u32 {
        self.burst.unwrap_or(self.rate)
    }
}

/// Which calls a rule applies to; each non-empty list must match.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitMatch {
    /// Backend names.
    pub backends: Vec<String>,
    /// Client-facing tool or prompt names, exact or `prefix*`; a call
    /// without a name (`resources/read`) never matches a non-empty list.
    pub tools: Vec<String>,
    /// `tool`, `prompt`, `resource`.
    pub kinds: Vec<CallKind>,
}
