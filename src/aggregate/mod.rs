//! Capability aggregation: many backends' tools, prompts and resources as one
//! server's, with a routing table from each client-facing name back to the
//! backend that owns it and the name that backend knows.
//!
//! A [`Catalog`] is immutable: a session swaps in a new one when a backend's
//! lists change, so readers never hold a lock across I/O.

mod naming;
pub mod page;

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::Value;

use crate::config::{AggregationConfig, BackendConfig};

/// Everything one backend listed for one session.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Listing {
    pub tools: Vec<Value>,
    pub prompts: Vec<Value>,
    pub resources: Vec<Value>,
    pub resource_templates: Vec<Value>,
}

/// Where a client-facing name goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub backend: Arc<str>,
    /// The name (or URI) the backend knows.
    pub name: String,
    /// Where the item is in its list (`Catalog::tools` or `::prompts`).
    pub index: usize,
}

/// The aggregated view of one session's backends.
#[derive(Debug, Default)]
pub struct Catalog {
    pub tools: Vec<Value>,
    pub prompts: Vec<Value>,
    pub resources: Vec<Value>,
    pub resource_templates: Vec<Value>,
    tool_routes: HashMap<String, Route>,
    prompt_routes: HashMap<String, Route>,
    resource_routes: HashMap<String, Arc<str>>,
    /// Literal prefix of each URI template (text before the first `{`) → backend.
    template_routes: Vec<(String, Arc<str>)>,
}

impl Catalog {
    /// Builds the catalog from per-backend listings, in priority order, so that
    /// on a name clash the earlier backend keeps the name.
    pub fn build(config: &AggregationConfig, listings: &[(&BackendConfig, &Listing)]) -> Self {
        let names: Vec<&str> = listings.iter().map(|(b, _)| b.name.as_str()).collect();
        let mut catalog = Catalog::default();
        for name in naming::priority_order(config, &names) {
            let Some((backend, listing)) = listings.iter().find(|(b, _)| b.name == name) else {
                continue;
            };
            let id: Arc<str> = Arc::from(name);
            catalog.add_named(config, &id, backend, listing);
            catalog.add_resources(&id, listing);
        }
        catalog
    }

    fn add_named(&mut self, config: &AggregationConfig, id: &Arc<str>, backend: &BackendConfig, listing: &Listing) {
        let kinds = [
            (
                &listing.tools,
                &backend.tools,
                &mut self.tools,
                &mut self.tool_routes,
                "tool",
            ),
            (
                &listing.prompts,
                &backend.prompts,
                &mut self.prompts,
                &mut self.prompt_routes,
                "prompt",
            ),
        ];
        for (items, filter, out, routes, kind) in kinds {
            for item in items {
                let Some(original) = item.get("name").and_then(Value::as_str) else {
                    continue;
                };
                let Some(exposed) = naming::client_name(config, id, filter, original) else {
                    continue;
                };
                if let Some(owner) = routes.get(&exposed) {
                    if first_time(&format!("{kind}\n{exposed}\n{}\n{id}", owner.backend)) {
                        tracing::warn!(kind, name = %exposed, kept = %owner.backend, dropped = %id, "name conflict");
                    }
                    continue;
                }
                let mut item = item.clone();
                item["name"] = Value::String(exposed.clone());
                out.push(item);
                routes.insert(
                    exposed,
                    Route {
                        backend: id.clone(),
                        name: original.to_owned(),
                        index: out.len() - 1,
                    },
                );
            }
        }
    }

    fn add_resources(&mut self, id: &Arc<str>, listing: &Listing) {
        for item in &listing.resources {
            let Some(uri) = item.get("uri").and_then(Value::as_str) else {
                continue;
            };
            if let Some(owner) = self.resource_routes.get(uri) {
                if first_time(&format!("uri\n{uri}\n{owner}\n{id}")) {
                    tracing::warn!(uri, kept = %owner, dropped = %id, "resource URI conflict");
                }
                continue;
            }
            self.resource_routes.insert(uri.to_owned(), id.clone());
            self.resources.push(item.clone());
        }
        for item in &listing.resource_templates {
            let Some(template) = item.get("uriTemplate").and_then(Value::as_str) else {
                continue;
            };
            let prefix = template.split('{').next().unwrap_or_default().to_owned();
            self.template_routes.push((prefix, id.clone()));
            self.resource_templates.push(item.clone());
        }
    }

    pub fn tool(&self, name: &str) -> Option<&Route> {
        self.tool_routes.get(name)
    }

    /// The backend serving `uri` (see [`Catalog::resource`]), borrowed.
    pub fn resource_backend(&self, uri: &str) -> Option<&str> {
        self.resource_route(uri).map(|b| &**b)
    }

    pub fn prompt(&self, name: &str) -> Option<&Route> {
        self.prompt_routes.get(name)
    }

    /// The backend serving `uri`: the one that listed it, else the template
    /// with the longest matching literal prefix.
    pub fn resource(&self, uri: &str) -> Option<Arc<str>> {
        self.resource_route(uri).cloned()
    }

    fn resource_route(&self, uri: &str) -> Option<&Arc<str>> {
        if let Some(b) = self.resource_routes.get(uri) {
            return Some(b);
        }
        self.template_routes
            .iter()
            .filter(|(prefix, _)| !prefix.is_empty() && uri.starts_with(prefix.as_str()))
            // The longest prefix wins; among equals the first (priority order).
            .min_by_key(|(prefix, _)| std::cmp::Reverse(prefix.len()))
            .map(|(_, b)| b)
    }
}

/// Whether a conflict is seen for the first time in this process: catalogs
/// are built per session, and the same conflict is logged once, not once per
/// `initialize`. Bounded: past the cap, conflicts are no longer logged.
fn first_time(conflict: &str) -> bool {
    const CAP: usize = 10_000;
    static SEEN: std::sync::OnceLock<std::sync::Mutex<std::collections::HashSet<String>>> = std::sync::OnceLock::new();
    let mut seen = crate::sync::lock(SEEN.get_or_init(Default::default));
    seen.len() < CAP && seen.insert(conflict.to_owned())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::config::ConflictMode;

    fn backend(name: &str) -> BackendConfig {
        serde_json::from_value(json!({"name": name, "url": "http://127.0.0.1:1/mcp"})).unwrap()
    }

    fn listing(tools: &[&str]) -> Listing {
        Listing {
            tools: tools
                .iter()
                .map(|t| json!({"name": t, "inputSchema": {"type": "object"}}))
                .collect(),
            resources: vec![json!({"uri": format!("mem://{}", tools[0]), "name": "r"})],
            resource_templates: vec![json!({"uriTemplate": format!("tpl://{}/{{id}}", tools[0]), "name": "t"})],
            ..Default::default()
        }
    }

    #[test]
    fn prefix_mode_routes_back_to_original_names() {
        let (a, b) = (backend("alpha"), backend("beta"));
        let (la, lb) = (listing(&["echo", "add"]), listing(&["echo"]));
        let catalog = Catalog::build(&AggregationConfig::default(), &[(&a, &la), (&b, &lb)]);
        let names: Vec<_> = catalog.tools.iter().map(|t| t["name"].as_str().unwrap()).collect();
        assert_eq!(names, ["alpha_echo", "alpha_add", "beta_echo"]);
        let route = catalog.tool("beta_echo").unwrap();
        assert_eq!((&*route.backend, route.name.as_str()), ("beta", "echo"));
        assert_eq!(catalog.resource("mem://echo").as_deref(), Some("alpha"));
        assert_eq!(catalog.resource("tpl://echo/42").as_deref(), Some("alpha"));
        assert_eq!(catalog.resource("nope://x"), None);
    }

    #[test]
    fn priority_mode_keeps_the_preferred_backend() {
        let config = AggregationConfig {
            conflict: ConflictMode::Priority,
            priority: vec!["beta".into()],
            ..Default::default()
        };
        let (a, b) = (backend("alpha"), backend("beta"));
        let (la, lb) = (listing(&["echo", "add"]), listing(&["echo"]));
        let catalog = Catalog::build(&config, &[(&a, &la), (&b, &lb)]);
        assert_eq!(&*catalog.tool("echo").unwrap().backend, "beta");
        assert_eq!(&*catalog.tool("add").unwrap().backend, "alpha");
        assert_eq!(catalog.tools.len(), 2);
    }
}
