//! One request's guard: who is calling, the policies, the rate limits and
//! the audit record, behind the session's [`Guard`]. Built only when one of
//! them is configured: otherwise the session checks nothing, at no cost.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::BoxFuture;
use serde_json::Value;

use super::{Policies, Principal};
use crate::audit::{AuditEvent, AuditOutcome, AuditRecord, Auditor};
use crate::auth::Identity;
use crate::limits::{CallKind, Limiter, Target};
use crate::session::guard::{Action, Guard, Item, ItemKind, Refusal};
use crate::sync::lock;

/// What guards requests on this replica (`App::guards`).
pub struct Guards {
    pub policies: Option<Arc<Policies>>,
    /// `None` when no rule is configured (no Redis round trip for anyone).
    pub limiter: Option<Arc<Limiter>>,
    /// `None` when the audit log is off.
    pub auditor: Option<Arc<Auditor>>,
    pub replica: Arc<str>,
}

impl Guards {
    /// The guard of one request from `who`; `None` when nothing is configured.
    pub fn for_request(&self, who: &Identity<'_>) -> Option<Arc<RequestGuard>> {
        if self.policies.is_none() && self.limiter.is_none() && self.auditor.is_none() {
            return None;
        }
        let (principal, limit_key) = match who {
            Identity::Principal(p, _) => (Principal::of(p), format!("s:{}\n{}", p.issuer, p.subject)),
            // Without inbound authentication, a caller is its Authorization
            // header (as its sessions are bound), or nobody.
            Identity::Header(Some(h)) => (Principal::anonymous(), format!("t:{h}")),
            Identity::Header(None) => (Principal::anonymous(), "anonymous".to_owned()),
        };
        Some(Arc::new(RequestGuard {
            policies: self.policies.clone(),
            limiter: self.limiter.clone(),
            auditor: self.auditor.clone(),
            replica: Arc::clone(&self.replica),
            principal,
            limit_key,
            seen: Mutex::new(None),
        }))
    }
}

/// The item a request was about, kept for its audit record.
struct Seen {
    backend: String,
    name: String,
    original: String,
    arguments: Option<Value>,
    refusal: Option<Refusal>,
}

pub struct RequestGuard {
    policies: Option<Arc<Policies>>,
    limiter: Option<Arc<Limiter>>,
    auditor: Option<Arc<Auditor>>,
    replica: Arc<str>,
    principal: Principal,
    /// The caller's bucket key for per-principal limits (hashed by the limiter).
    limit_key: String,
    seen: Mutex<Option<Seen>>,
}

/// The action whose decision shows an item in a list: the one that uses it.
fn use_of(kind: ItemKind) -> Action {
    match kind {
        ItemKind::Tool => Action::CallTool,
        ItemKind::Prompt => Action::GetPrompt,
        ItemKind::Resource => Action::ReadResource,
        ItemKind::List => Action::List,
    }
}

/// What a rate limit counts: calls (not lists, subscriptions, completions).
fn counted<'a>(action: Action, item: &Item<'a>) -> Option<Target<'a>> {
    let (kind, tool) = match action {
        Action::CallTool => (CallKind::Tool, Some(item.name)),
        Action::GetPrompt => (CallKind::Prompt, Some(item.name)),
        Action::ReadResource => (CallKind::Resource, None),
        Action::List => (CallKind::List, None),
        _ => return None,
    };
    Some(Target {
        backend: item.backend,
        tool,
        kind,
    })
}

impl RequestGuard {
    fn remember(&self, item: &Item<'_>, refusal: Option<Refusal>) {
        if self.auditor.is_none() {
            return;
        }
        let keep_arguments = self.auditor.as_ref().is_some_and(|a| a.include_arguments());
        *lock(&self.seen) = Some(Seen {
            backend: item.backend.to_owned(),
            name: item.name.to_owned(),
            original: item.original.to_owned(),
            arguments: item.arguments.filter(|_| keep_arguments).cloned(),
            refusal,
        });
    }

    async fn judge(&self, action: Action, item: &Item<'_>) -> Result<(), Refusal> {
        if let Some(p) = &self.policies {
            // A whole list is decided as listing, like the items it shows.
            p.decide(&self.principal, action, item, item.kind == ItemKind::List)?;
        }
        if let (Some(limiter), Some(target)) = (&self.limiter, counted(action, item)) {
            limiter
                .admit(&self.limit_key, &target)
                .await
                .map_err(|l| Refusal::Limited {
                    message: l.message(),
                    data: l.error_data(),
                    rule: l.rule,
                })?;
        }
        Ok(())
    }

    /// Writes the request's audit record, if it was a call or was refused:
    /// `code` is its JSON-RPC error code (`None`: it succeeded).
    pub fn audit(&self, method: &str, session: &str, code: Option<i32>, took: Duration) {
        let Some(auditor) = &self.auditor else {
            return;
        };
        let seen = lock(&self.seen);
        let Some(seen) = seen.as_ref() else {
            return; // nothing was called (a list, a ping)
        };
        let is_call = matches!(method, "tools/call" | "prompts/get" | "resources/read");
        let (event, outcome, rule) = match &seen.refusal {
            Some(Refusal::Denied { policies, .. }) => (AuditEvent::Denied, AuditOutcome::Denied, policies.as_deref()),
            Some(Refusal::Limited { rule, .. }) => (AuditEvent::Limited, AuditOutcome::Limited, Some(rule.as_str())),
            None if !is_call => return,
            None if code.is_some() => (AuditEvent::Call, AuditOutcome::Error, None),
            None => (AuditEvent::Call, AuditOutcome::Ok, None),
        };
        let authenticated = self.principal.authenticated;
        auditor.record(&AuditRecord {
            replica: &self.replica,
            event,
            method,
            sub: authenticated.then_some(self.principal.subject.as_str()),
            iss: authenticated.then_some(self.principal.issuer.as_str()),
            session: Some(session),
            backend: Some(&seen.backend),
            name: Some(&seen.name),
            original: Some(&seen.original),
            outcome,
            code: code.map(i64::from),
            duration: took,
            rule,
            arguments: seen.arguments.as_ref(),
        });
    }
}

impl Guard for RequestGuard {
    fn shows(&self, item: &Item<'_>) -> Result<(), Refusal> {
        match &self.policies {
            Some(p) => p.decide(&self.principal, use_of(item.kind), item, true),
            None => Ok(()),
        }
    }

    fn admit<'a>(&'a self, action: Action, item: Item<'a>) -> BoxFuture<'a, Result<(), Refusal>> {
        Box::pin(async move {
            let judged = self.judge(action, &item).await;
            self.remember(&item, judged.as_ref().err().cloned());
            judged
        })
    }
}
