//! What the admin API shows of a session: who and where, never a secret.
//!
//! Left out: the identity hash, the client's `initialize` params beyond
//! `clientInfo` name and version, backend URLs and commands (they may carry
//! credentials, see `crate::redact`), and backend session ids.

use serde::Serialize;
use serde_json::Value;

use crate::store::{BackendTarget, SessionMetadata, SubjectRef};

#[derive(Debug, Serialize)]
pub struct SessionView<'a> {
    pub id: &'a str,
    pub created_at_ms: u64,
    /// When the metadata was last written (touches extend the lifetime without rewriting it).
    pub last_seen_ms: u64,
    /// Whether the session is bound to a caller (a token or a subject).
    pub authenticated: bool,
    pub subject: Option<&'a SubjectRef>,
    pub replica: Option<&'a str>,
    pub protocol_version: &'a str,
    pub client: ClientView<'a>,
    pub backends: Vec<BackendView<'a>>,
}

#[derive(Debug, Serialize)]
pub struct ClientView<'a> {
    pub name: Option<&'a str>,
    pub version: Option<&'a str>,
}

#[derive(Debug, Serialize)]
pub struct BackendView<'a> {
    pub name: &'a str,
    pub transport: &'static str,
    /// Whether the backend issued a session of its own (its id is not shown).
    pub has_session: bool,
}

impl<'a> SessionView<'a> {
    pub fn of(meta: &'a SessionMetadata) -> Self {
        let info = |key: &str| {
            meta.client_init
                .get("clientInfo")
                .and_then(|c| c.get(key))
                .and_then(Value::as_str)
        };
        Self {
            id: &meta.id,
            created_at_ms: meta.created_at_ms,
            last_seen_ms: meta.last_seen_ms,
            authenticated: meta.identity.is_some(),
            subject: meta.subject.as_ref(),
            replica: meta.replica.as_deref(),
            protocol_version: &meta.protocol_version,
            client: ClientView {
                name: info("name"),
                version: info("version"),
            },
            backends: meta
                .backends
                .iter()
                .map(|b| BackendView {
                    name: &b.name,
                    transport: match b.target {
                        BackendTarget::StreamableHttp { .. } => "streamable_http",
                        BackendTarget::Stdio { .. } => "stdio",
                        BackendTarget::Sse { .. } => "sse",
                    },
                    has_session: b.session_id.is_some(),
                })
                .collect(),
        }
    }
}

/// The listing's filters; unset ones match everything.
#[derive(Debug, Default)]
pub struct Filter {
    pub issuer: Option<String>,
    pub subject: Option<String>,
    pub backend: Option<String>,
    pub replica: Option<String>,
}

impl Filter {
    pub fn is_empty(&self) -> bool {
        self.issuer.is_none() && self.subject.is_none() && self.backend.is_none() && self.replica.is_none()
    }

    pub fn matches(&self, meta: &SessionMetadata) -> bool {
        let subject = meta.subject.as_ref();
        let same = |want: &Option<String>, have: Option<&str>| want.as_deref().is_none_or(|w| have == Some(w));
        same(&self.issuer, subject.map(|s| s.issuer.as_str()))
            && same(&self.subject, subject.map(|s| s.subject.as_str()))
            && same(&self.replica, meta.replica.as_deref())
            && self
                .backend
                .as_deref()
                .is_none_or(|b| meta.backends.iter().any(|r| &*r.name == b))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::store::BackendRecord;

    fn meta() -> SessionMetadata {
        SessionMetadata {
            id: "s1".into(),
            created_at_ms: 1,
            last_seen_ms: 2,
            identity: Some("s:secret-hash".into()),
            subject: Some(SubjectRef {
                issuer: "https://idp".into(),
                subject: "alice".into(),
            }),
            replica: Some("r1".into()),
            protocol_version: "2025-06-18".into(),
            client_init: Arc::new(serde_json::json!({
                "clientInfo": {"name": "cli", "version": "1.0"},
                "capabilities": {"x-secret": "do-not-show"}
            })),
            backends: vec![BackendRecord {
                name: "alpha".into(),
                target: BackendTarget::StreamableHttp {
                    url: "https://user:pw@host/mcp?token=t".into(),
                },
                session_id: Some("backend-session-secret".into()),
                protocol_version: None,
                capabilities: None,
            }],
        }
    }

    #[test]
    fn the_view_holds_no_secret() {
        let meta = meta();
        let json = serde_json::to_string(&SessionView::of(&meta)).unwrap();
        for secret in [
            "secret-hash",
            "do-not-show",
            "pw",
            "token",
            "backend-session-secret",
            "host",
        ] {
            assert!(!json.contains(secret), "{secret} in {json}");
        }
        let v: Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["client"]["name"], "cli");
        assert_eq!(v["subject"]["subject"], "alice");
        assert_eq!(v["backends"][0]["has_session"], true);
        assert_eq!(v["authenticated"], true);
    }

    #[test]
    fn filters_match_each_field() {
        let meta = meta();
        let f = |issuer: Option<&str>, subject: Option<&str>, backend: Option<&str>, replica: Option<&str>| Filter {
            issuer: issuer.map(Into::into),
            subject: subject.map(Into::into),
            backend: backend.map(Into::into),
            replica: replica.map(Into::into),
        };
        assert!(f(None, None, None, None).matches(&meta));
        assert!(f(Some("https://idp"), Some("alice"), Some("alpha"), Some("r1")).matches(&meta));
        assert!(!f(None, Some("bob"), None, None).matches(&meta));
        assert!(!f(Some("https://other"), None, None, None).matches(&meta));
        assert!(!f(None, None, Some("beta"), None).matches(&meta));
        assert!(!f(None, None, None, Some("r2")).matches(&meta));
    }
}
