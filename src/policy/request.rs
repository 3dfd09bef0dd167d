//! One request's guard: the caller, the policies, and (when configured) the
//! rate limits and the audit record, behind the session's [`Guard`].

use std::sync::Arc;

use futures_util::future::BoxFuture;

use super::{Policies, Principal};
use crate::session::guard::{Action, Guard, Item, ItemKind, Refusal};

pub struct RequestGuard {
    policies: Option<Arc<Policies>>,
    principal: Principal,
}

impl RequestGuard {
    pub fn new(policies: Option<Arc<Policies>>, principal: Principal) -> Self {
        Self { policies, principal }
    }
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

impl Guard for RequestGuard {
    fn shows(&self, item: &Item<'_>) -> Result<(), Refusal> {
        match &self.policies {
            Some(p) => p.decide(&self.principal, use_of(item.kind), item, true),
            None => Ok(()),
        }
    }

    fn admit<'a>(&'a self, action: Action, item: Item<'a>) -> BoxFuture<'a, Result<(), Refusal>> {
        Box::pin(async move {
            if let Some(p) = &self.policies {
                p.decide(&self.principal, action, &item, false)?;
            }
            Ok(())
        })
    }
}

/// The guard of a request from `who`, or `None` when nothing guards requests
/// (no policies): then the session checks nothing, at no cost.
pub fn guard_for(policies: Option<&Arc<Policies>>, who: &crate::auth::Identity<'_>) -> Option<Arc<dyn Guard>> {
    let policies = policies?;
    let principal = match who {
        crate::auth::Identity::Principal(p, _) => Principal::of(p),
        crate::auth::Identity::Header(_) => Principal::anonymous(),
    };
    Some(Arc::new(RequestGuard::new(Some(Arc::clone(policies)), principal)))
}
