//! The requests a session routes to one backend (by tool or prompt name, by
//! URI) and its lists, each judged by the request's [`Guard`] when there is
//! one: after the item is known, before any backend traffic. Lists show
//! only what the same guard would let the caller use.

use serde_json::{json, Value};

use super::guard::{Action, Guard, Item, ItemKind};
use super::{str_param, ListKind, Session, SessionError};
use crate::aggregate::{page, Catalog};
use crate::backend::{CallContext, Params, Reply, ToolCall};

impl Session {
    /// One page of a list (`tools`, `prompts`, `resources`, `resourceTemplates`).
    /// With a guard, the list as a whole is admitted first (one policy
    /// decision, one request for the rate limits, whatever its fan-out).
    pub async fn list(
        &self,
        kind: ListKind,
        cursor: Option<&str>,
        guard: Option<&dyn Guard>,
    ) -> Result<Value, SessionError> {
        if let Some(guard) = guard {
            guard.admit(Action::List, Item::list(kind.list_name())).await?;
        }
        let view = self.enter_bounded(false)?;
        let catalog = &view.catalog;
        let items = match kind {
            ListKind::Tools => &catalog.tools,
            ListKind::Prompts => &catalog.prompts,
            ListKind::Resources => &catalog.resources,
            ListKind::ResourceTemplates => &catalog.resource_templates,
        };
        let shown: Vec<Value>;
        let items = match guard {
            None => items.as_slice(),
            Some(guard) => {
                shown = items
                    .iter()
                    .filter(|item| listed_item(catalog, kind, item).is_some_and(|i| guard.shows(&i).is_ok()))
                    .cloned()
                    .collect();
                &shown
            }
        };
        let (chunk, next) = page::page(items, cursor, self.factory.aggregation().page_size)
            .map_err(|e| SessionError::InvalidParams(e.to_string()))?;
        let mut result = json!({ kind.key(): chunk });
        if let Some(next) = next {
            result["nextCursor"] = Value::String(next);
        }
        Ok(result)
    }

    /// `tools/call`: routes by client-facing name, sends the backend's name.
    /// Its arguments are read (built into a tree) only for a guard.
    pub async fn call_tool(
        &self,
        mut call: ToolCall,
        ctx: &CallContext,
        guard: Option<&dyn Guard>,
    ) -> Result<Reply, SessionError> {
        let view = self.enter()?;
        let name = call
            .name()
            .ok_or_else(|| SessionError::InvalidParams("`name` must be a string".into()))?;
        let route = view
            .catalog
            .tool(name)
            .ok_or_else(|| SessionError::UnknownTool(name.to_owned()))?;
        if let Some(guard) = guard {
            // Too deep to read is refused, never judged as "no arguments".
            let arguments = call
                .arguments()
                .map_err(|e| SessionError::InvalidParams(format!("arguments: {e}")))?;
            let item = Item {
                annotations: view.catalog.tools.get(route.index).and_then(|t| t.get("annotations")),
                arguments: arguments.as_deref(),
                ..Item::named(ItemKind::Tool, name, &route.name, &route.backend)
            };
            guard.admit(Action::CallTool, item).await?;
        }
        call.set_name(route.name.clone());
        self.forward(&view, &route.backend, "tools/call", Params::ToolCall(&call), ctx)
            .await
    }

    /// `prompts/get`: like `call_tool`, for prompts.
    pub async fn get_prompt(
        &self,
        mut params: Value,
        ctx: &CallContext,
        guard: Option<&dyn Guard>,
    ) -> Result<Reply, SessionError> {
        let view = self.enter()?;
        let name = str_param(&params, "name")?;
        let route = view
            .catalog
            .prompt(name)
            .ok_or_else(|| SessionError::UnknownPrompt(name.to_owned()))?;
        if let Some(guard) = guard {
            let item = Item {
                arguments: params.get("arguments"),
                ..Item::named(ItemKind::Prompt, name, &route.name, &route.backend)
            };
            guard.admit(Action::GetPrompt, item).await?;
        }
        params["name"] = Value::String(route.name.clone());
        self.forward(&view, &route.backend, "prompts/get", Params::Tree(&params), ctx)
            .await
    }

    /// `resources/read`, `resources/subscribe`, `resources/unsubscribe`:
    /// routed by URI, which is passed through unchanged (so the backend's
    /// `notifications/resources/updated` already carries the client's URI).
    /// Unsubscribing is never refused.
    pub async fn by_uri(
        &self,
        method: &'static str,
        params: Value,
        ctx: &CallContext,
        guard: Option<&dyn Guard>,
    ) -> Result<Reply, SessionError> {
        let view = self.enter()?;
        let uri = str_param(&params, "uri")?;
        let backend = view
            .catalog
            .resource(uri)
            .ok_or_else(|| SessionError::UnknownResource(uri.to_owned()))?;
        let action = match method {
            "resources/read" => Some(Action::ReadResource),
            "resources/subscribe" => Some(Action::Subscribe),
            _ => None,
        };
        if let (Some(guard), Some(action)) = (guard, action) {
            guard.admit(action, Item::resource(uri, &backend)).await?;
        }
        self.forward(&view, &backend, method, Params::Tree(&params), ctx).await
    }

    /// `completion/complete`: routes by the prompt or resource it refers to.
    pub async fn complete(
        &self,
        mut params: Value,
        ctx: &CallContext,
        guard: Option<&dyn Guard>,
    ) -> Result<Reply, SessionError> {
        let view = self.enter()?;
        let reference = params.get("ref").cloned().unwrap_or(Value::Null);
        let backend = match reference.get("type").and_then(Value::as_str) {
            Some("ref/prompt") => {
                let name = str_param(&reference, "name")?;
                let route = view
                    .catalog
                    .prompt(name)
                    .ok_or_else(|| SessionError::UnknownPrompt(name.to_owned()))?;
                if let Some(guard) = guard {
                    let item = Item::named(ItemKind::Prompt, name, &route.name, &route.backend);
                    guard.admit(Action::Complete, item).await?;
                }
                params["ref"]["name"] = Value::String(route.name.clone());
                route.backend.clone()
            }
            Some("ref/resource") => {
                let uri = str_param(&reference, "uri")?;
                let backend = view
                    .catalog
                    .resource(uri)
                    .ok_or_else(|| SessionError::UnknownResource(uri.to_owned()))?;
                if let Some(guard) = guard {
                    guard.admit(Action::Complete, Item::resource(uri, &backend)).await?;
                }
                backend
            }
            _ => {
                return Err(SessionError::InvalidParams(
                    "ref.type must be ref/prompt or ref/resource".into(),
                ))
            }
        };
        self.forward(&view, &backend, "completion/complete", Params::Tree(&params), ctx)
            .await
    }
}

/// A listed item as the guard sees it (`None`: not routable, never shown).
fn listed_item<'a>(catalog: &'a Catalog, kind: ListKind, item: &'a Value) -> Option<Item<'a>> {
    let text = |key: &str| item.get(key).and_then(Value::as_str);
    match kind {
        ListKind::Tools | ListKind::Prompts => {
            let name = text("name")?;
            let (route, kind) = match kind {
                ListKind::Tools => (catalog.tool(name)?, ItemKind::Tool),
                _ => (catalog.prompt(name)?, ItemKind::Prompt),
            };
            Some(Item {
                annotations: item.get("annotations"),
                ..Item::named(kind, name, &route.name, &route.backend)
            })
        }
        ListKind::Resources | ListKind::ResourceTemplates => {
            let uri = text("uri").or_else(|| text("uriTemplate"))?;
            let backend = catalog.resource_backend(uri)?;
            Some(Item::resource(uri, backend))
        }
    }
}
