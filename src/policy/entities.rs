//! The Cedar request for one decision: the caller, the item and its backend
//! as entities (see `schema.cedarschema`), the action, and the context.

use std::collections::{HashMap, HashSet};
use std::str::FromStr;

use cedar_policy::{Context, Entities, Entity, EntityId, EntityTypeName, EntityUid, Request, RestrictedExpression};
use serde_json::Value;

use crate::session::guard::{Action, Item, ItemKind};

/// The caller as policies see it, built once per request.
#[derive(Debug, Clone)]
pub struct Principal {
    /// The token's subject, or `anonymous`.
    pub subject: String,
    pub issuer: String,
    pub authenticated: bool,
    pub scopes: Vec<String>,
    pub groups: Vec<String>,
}

impl Principal {
    pub fn anonymous() -> Self {
        Self {
            subject: "anonymous".into(),
            issuer: String::new(),
            authenticated: false,
            scopes: Vec::new(),
            groups: Vec::new(),
        }
    }

    pub fn of(p: &crate::auth::Principal) -> Self {
        Self {
            subject: p.subject.clone(),
            issuer: p.issuer.clone(),
            authenticated: true,
            scopes: p.scopes.clone(),
            groups: p.groups.clone(),
        }
    }
}

type Failed = String;

/// The schema's entity types and actions, parsed once (Cedar parses a type
/// name with its full grammar: doing it per decision cost most of one).
pub struct Types {
    group: EntityTypeName,
    caller: EntityTypeName,
    backend: EntityTypeName,
    tool: EntityTypeName,
    prompt: EntityTypeName,
    resource: EntityTypeName,
    list: EntityTypeName,
    actions: Vec<(Action, EntityUid)>,
}

impl Types {
    pub fn new() -> Result<Self, Failed> {
        let name = |kind: &str| EntityTypeName::from_str(kind).map_err(|e| e.to_string());
        let action_type = name("Vmcp::Action")?;
        let actions = [
            Action::List,
            Action::CallTool,
            Action::GetPrompt,
            Action::ReadResource,
            Action::Subscribe,
            Action::Complete,
        ]
        .into_iter()
        .map(|a| {
            (
                a,
                EntityUid::from_type_name_and_id(action_type.clone(), EntityId::new(a.as_str())),
            )
        })
        .collect();
        Ok(Self {
            group: name("Vmcp::Group")?,
            caller: name("Vmcp::Caller")?,
            backend: name("Vmcp::Backend")?,
            tool: name("Vmcp::Tool")?,
            prompt: name("Vmcp::Prompt")?,
            resource: name("Vmcp::Resource")?,
            list: name("Vmcp::List")?,
            actions,
        })
    }

    fn action(&self, action: Action) -> Result<EntityUid, Failed> {
        self.actions
            .iter()
            .find(|(a, _)| *a == action)
            .map(|(_, uid)| uid.clone())
            .ok_or_else(|| format!("unknown action {}", action.as_str()))
    }
}

fn uid(kind: &EntityTypeName, id: &str) -> EntityUid {
    EntityUid::from_type_name_and_id(kind.clone(), EntityId::new(id))
}

fn strings(values: &[String]) -> RestrictedExpression {
    RestrictedExpression::new_set(values.iter().cloned().map(RestrictedExpression::new_string))
}

fn text(s: &str) -> RestrictedExpression {
    RestrictedExpression::new_string(s.to_owned())
}

/// The request and its entities for `principal` doing `action` to `item`.
pub fn request(
    types: &Types,
    principal: &Principal,
    action: Action,
    item: &Item<'_>,
    replica: &str,
    listing: bool,
) -> Result<(Request, Entities), Failed> {
    let mut entities = Vec::with_capacity(4 + principal.groups.len());
    let groups: HashSet<EntityUid> = principal.groups.iter().map(|g| uid(&types.group, g)).collect();
    for group in &groups {
        entities.push(Entity::with_uid(group.clone()));
    }
    let caller = uid(&types.caller, &principal.subject);
    let attrs = HashMap::from([
        ("subject".to_owned(), text(&principal.subject)),
        ("issuer".to_owned(), text(&principal.issuer)),
        (
            "authenticated".to_owned(),
            RestrictedExpression::new_bool(principal.authenticated),
        ),
        ("scopes".to_owned(), strings(&principal.scopes)),
        ("groups".to_owned(), strings(&principal.groups)),
    ]);
    entities.push(Entity::new(caller.clone(), attrs, groups).map_err(|e| e.to_string())?);

    let resource = resource(types, item, &mut entities)?;
    let action_uid = types.action(action)?;
    let now = crate::store::unix_ms() / 1000;
    let context = Context::from_pairs([
        ("replica".to_owned(), text(replica)),
        (
            "time".to_owned(),
            RestrictedExpression::new_long(i64::try_from(now).unwrap_or(i64::MAX)),
        ),
        ("listing".to_owned(), RestrictedExpression::new_bool(listing)),
    ])
    .map_err(|e| e.to_string())?;
    let request = Request::new(caller, action_uid, resource, context, None).map_err(|e| e.to_string())?;
    let entities = Entities::from_entities(entities, None).map_err(|e| e.to_string())?;
    Ok((request, entities))
}

/// The item's entity (and its backend's), pushed onto `entities`; its uid.
fn resource(types: &Types, item: &Item<'_>, entities: &mut Vec<Entity>) -> Result<EntityUid, Failed> {
    if item.kind == ItemKind::List {
        let list = uid(&types.list, item.name);
        entities.push(Entity::with_uid(list.clone()));
        return Ok(list);
    }
    let backend = uid(&types.backend, item.backend);
    entities.push(Entity::with_uid(backend.clone()));
    let parents = HashSet::from([backend]);
    let mut attrs = HashMap::from([("backend".to_owned(), text(item.backend))]);
    let kind = match item.kind {
        ItemKind::Tool => &types.tool,
        ItemKind::Prompt => &types.prompt,
        _ => &types.resource,
    };
    let this = uid(kind, item.name);
    let entity = match item.kind {
        ItemKind::Tool | ItemKind::Prompt => {
            attrs.insert("name".to_owned(), text(item.name));
            attrs.insert("original".to_owned(), text(item.original));
            if item.kind == ItemKind::Tool {
                attrs.insert("annotations".to_owned(), annotations(item.annotations)?);
            }
            Entity::new_with_tags(this.clone(), attrs, parents, tags(item.arguments))
        }
        _ => {
            attrs.insert("uri".to_owned(), text(item.name));
            Entity::new(this.clone(), attrs, parents)
        }
    };
    entities.push(entity.map_err(|e| e.to_string())?);
    Ok(this)
}

/// A tool's annotations, with the MCP spec's defaults for hints it omits.
fn annotations(given: Option<&Value>) -> Result<RestrictedExpression, Failed> {
    let hint = |key: &str, default: bool| {
        let value = given
            .and_then(|a| a.get(key))
            .and_then(Value::as_bool)
            .unwrap_or(default);
        (key.to_owned(), RestrictedExpression::new_bool(value))
    };
    RestrictedExpression::new_record([
        hint("readOnlyHint", false),
        hint("destructiveHint", true),
        hint("idempotentHint", false),
        hint("openWorldHint", true),
    ])
    .map_err(|e| e.to_string())
}

/// A request's arguments as tags: strings as they are, anything else as JSON.
fn tags(arguments: Option<&Value>) -> HashMap<String, RestrictedExpression> {
    let Some(Value::Object(map)) = arguments else {
        return HashMap::new();
    };
    map.iter()
        .map(|(k, v)| {
            let value = match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            (k.clone(), RestrictedExpression::new_string(value))
        })
        .collect()
}
