//! What the session asks before it lists an item or sends a request to a
//! backend: may this caller do this to this item? The session knows the
//! item (its backend, the name the backend knows, its annotations); the
//! answer comes from whoever guards the request (policies, rate limits),
//! so the session stays free of either.

use futures_util::future::BoxFuture;
use serde_json::Value;

/// What a request does to an item (the policy language's actions).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    List,
    CallTool,
    GetPrompt,
    ReadResource,
    Subscribe,
    Complete,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::List => "list",
            Self::CallTool => "call_tool",
            Self::GetPrompt => "get_prompt",
            Self::ReadResource => "read_resource",
            Self::Subscribe => "subscribe",
            Self::Complete => "complete",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ItemKind {
    Tool,
    Prompt,
    /// A resource or a resource template, by URI.
    Resource,
    /// A whole list (`tools`, `prompts`, ...), for `Action::List`.
    List,
}

/// The item a request is about, as the session's catalog knows it.
#[derive(Debug, Clone, Copy)]
pub struct Item<'a> {
    pub kind: ItemKind,
    /// Client-facing name, the URI, or the list's name.
    pub name: &'a str,
    /// The name (or URI) its backend knows.
    pub original: &'a str,
    /// Its backend ("" for a whole list).
    pub backend: &'a str,
    /// A tool's `annotations`, as listed.
    pub annotations: Option<&'a Value>,
    /// The request's arguments (`None` when listing).
    pub arguments: Option<&'a Value>,
}

impl<'a> Item<'a> {
    /// A whole list (`Action::List`): `name` is its policy id (`tools`, ...).
    pub fn list(name: &'a str) -> Self {
        Self {
            kind: ItemKind::List,
            name,
            original: name,
            backend: "",
            annotations: None,
            arguments: None,
        }
    }

    /// A resource (or template) by URI.
    pub fn resource(uri: &'a str, backend: &'a str) -> Self {
        Self {
            kind: ItemKind::Resource,
            name: uri,
            original: uri,
            backend,
            annotations: None,
            arguments: None,
        }
    }

    /// A tool or prompt: its client-facing `name`, and the name and backend its route knows.
    pub fn named(kind: ItemKind, name: &'a str, original: &'a str, backend: &'a str) -> Self {
        Self {
            kind,
            name,
            original,
            backend,
            annotations: None,
            arguments: None,
        }
    }
}

/// Why a request was refused before any backend traffic.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Refusal {
    /// A policy decision: why, and the forbidding policies' ids (none: no permit).
    #[error("forbidden by policy: {message}")]
    Denied { message: String, policies: Option<String> },
    /// A rate limit: the rule, what to tell the client, and the error's
    /// `data` (the rule and when to retry, as the limiter renders it).
    #[error("{message}")]
    Limited { rule: String, message: String, data: Value },
}

pub trait Guard: Send + Sync {
    /// Whether `item` may be shown in a list: a policy decision, no side effect.
    fn shows(&self, item: &Item<'_>) -> Result<(), Refusal>;
    /// Whether the request may reach the backend now (policy, then limits);
    /// a guard may remember the item (for the audit record).
    fn admit<'a>(&'a self, action: Action, item: Item<'a>) -> BoxFuture<'a, Result<(), Refusal>>;
}
