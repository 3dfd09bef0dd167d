//! What callers may do: Cedar policies (`policy.file`) over listing and
//! calling tools, prompts and resources (README "Authorization").
//!
//! The file is parsed and validated against vmcp's schema
//! (`schema.cedarschema`) when loaded: a syntax error, or a policy naming an
//! attribute, type or action the schema does not have, refuses the file with
//! Cedar's message. At start-up that stops vmcp; on a reload (SIGHUP, or the
//! file changed) the policies in force stay. Decisions run in memory from the
//! compiled set: no I/O per request.

mod entities;
mod memo;
mod request;

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use cedar_policy::{Authorizer, Decision, PolicySet, Schema, ValidationMode, Validator};
use prometheus::{IntCounterVec, Opts, Registry};
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

pub use entities::Principal;
pub use request::{Guards, RequestGuard};

use crate::config::PolicyConfig;
use crate::session::guard::{Action, Item, Refusal};
use crate::sync::lock;

const SCHEMA: &str = include_str!("schema.cedarschema");

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("{file}: cannot read: {source}")]
    Read { file: PathBuf, source: std::io::Error },
    #[error("{file}: {message}")]
    Invalid { file: PathBuf, message: String },
    #[error("policy metrics: {0}")]
    Metrics(#[from] prometheus::Error),
}

/// The policies in force and the decisions remembered for them.
struct Compiled {
    set: PolicySet,
    memo: memo::Memo,
}

impl Compiled {
    fn new(set: PolicySet, text: &str) -> Arc<Self> {
        Arc::new(Self {
            memo: memo::Memo::for_policies(text),
            set,
        })
    }
}

pub struct Policies {
    file: PathBuf,
    schema: Schema,
    set: RwLock<Arc<Compiled>>,
    /// SHA-256 of the text in force, and of the last text refused (logged once).
    seen: Mutex<([u8; 32], Option<[u8; 32]>)>,
    authorizer: Authorizer,
    types: entities::Types,
    replica: String,
    reload_interval: Duration,
    decisions: IntCounterVec,
    /// Denials by the policy that forbade (its `@id`), or `no_permit`.
    denials: IntCounterVec,
    reloads: IntCounterVec,
}

impl Policies {
    /// The policies of `config`, or `None` when no file is configured.
    pub fn load(config: &PolicyConfig, replica: &str, registry: &Registry) -> Result<Option<Arc<Self>>, PolicyError> {
        let Some(file) = &config.file else {
            return Ok(None);
        };
        let schema = schema().map_err(|message| PolicyError::Invalid {
            file: PathBuf::from("schema.cedarschema"),
            message,
        })?;
        let text = read(file)?;
        let set = compile(&text, &schema).map_err(|message| PolicyError::Invalid {
            file: file.clone(),
            message,
        })?;
        let decisions = IntCounterVec::new(
            Opts::new("vmcp_policy_decisions_total", "Policy decisions by action and decision"),
            &["action", "decision"],
        )?;
        let denials = IntCounterVec::new(
            Opts::new(
                "vmcp_policy_denials_total",
                "Policy denials by the forbidding policy (or no_permit)",
            ),
            &["policy"],
        )?;
        let reloads = IntCounterVec::new(
            Opts::new("vmcp_policy_reloads_total", "Policy file reloads by outcome"),
            &["outcome"],
        )?;
        registry.register(Box::new(decisions.clone()))?;
        registry.register(Box::new(denials.clone()))?;
        registry.register(Box::new(reloads.clone()))?;
        tracing::info!(file = %file.display(), policies = set.policies().count(), "policies loaded");
        Ok(Some(Arc::new(Self {
            file: file.clone(),
            schema,
            set: RwLock::new(Compiled::new(set, &text)),
            seen: Mutex::new((digest(&text), None)),
            authorizer: Authorizer::new(),
            types: entities::Types::new().map_err(|message| PolicyError::Invalid {
                file: PathBuf::from("schema.cedarschema"),
                message,
            })?,
            replica: replica.to_owned(),
            reload_interval: config.reload_interval,
            decisions,
            denials,
            reloads,
        })))
    }

    /// Reads the file again; a new valid text replaces the policies in force,
    /// an invalid one is refused (logged once) and changes nothing.
    pub fn reload(&self) -> Result<bool, PolicyError> {
        let text = read(&self.file)?;
        let hash = digest(&text);
        {
            let seen = lock(&self.seen);
            if seen.0 == hash || seen.1 == Some(hash) {
                return Ok(false);
            }
        }
        match compile(&text, &self.schema) {
            Ok(set) => {
                let count = set.policies().count();
                *self.set.write().unwrap_or_else(|p| p.into_inner()) = Compiled::new(set, &text);
                *lock(&self.seen) = (hash, None);
                self.reloads.with_label_values(&["ok"]).inc();
                tracing::info!(file = %self.file.display(), policies = count, "policies reloaded");
                Ok(true)
            }
            Err(message) => {
                lock(&self.seen).1 = Some(hash);
                self.reloads.with_label_values(&["refused"]).inc();
                Err(PolicyError::Invalid {
                    file: self.file.clone(),
                    message,
                })
            }
        }
    }

    /// Reloads when the file changes, until `shutdown`.
    pub async fn watch(self: Arc<Self>, shutdown: CancellationToken) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(self.reload_interval) => {}
                _ = shutdown.cancelled() => return,
            }
            if let Err(e) = self.reload() {
                tracing::error!(error = %e, "policies not reloaded; the previous ones stay in force");
            }
        }
    }

    /// Whether `principal` may do `action` to `item`.
    pub fn decide(&self, principal: &Principal, action: Action, item: &Item<'_>, listing: bool) -> Result<(), Refusal> {
        let compiled = Arc::clone(&self.set.read().unwrap_or_else(|p| p.into_inner()));
        let key = compiled.memo.key(principal, action, item, listing);
        if let Some(known) = key.and_then(|k| compiled.memo.get(k)) {
            self.count(action, &known);
            return known;
        }
        let set = &compiled.set;
        let decided = entities::request(&self.types, principal, action, item, &self.replica, listing)
            .map(|(request, entities)| self.authorizer.is_authorized(&request, set, &entities));
        let outcome = match decided {
            Ok(response) if response.decision() == Decision::Allow => Ok(()),
            Ok(response) => {
                let (message, policies) = reason(set, &response, action, item);
                Err(Refusal::Denied { message, policies })
            }
            // An item that cannot be described is not allowed.
            Err(e) => Err(Refusal::Denied {
                message: format!("{} cannot be judged: {e}", describe(item)),
                policies: None,
            }),
        };
        if let Some(k) = key {
            compiled.memo.put(k, &outcome);
        }
        self.count(action, &outcome);
        outcome
    }

    fn count(&self, action: Action, outcome: &Result<(), Refusal>) {
        let label = if outcome.is_ok() { "allow" } else { "deny" };
        self.decisions.with_label_values(&[action.as_str(), label]).inc();
        if let Err(Refusal::Denied { policies, .. }) = outcome {
            let by = policies.as_deref().unwrap_or("no_permit");
            self.denials.with_label_values(&[by]).inc();
        }
    }
}

fn read(file: &Path) -> Result<String, PolicyError> {
    std::fs::read_to_string(file).map_err(|source| PolicyError::Read {
        file: file.to_owned(),
        source,
    })
}

fn digest(text: &str) -> [u8; 32] {
    Sha256::digest(text.as_bytes()).into()
}

fn schema() -> Result<Schema, String> {
    Schema::from_cedarschema_str(SCHEMA)
        .map(|(schema, _warnings)| schema)
        .map_err(|e| format!("{e:?}"))
}

/// Parses and validates a policy file: Cedar's messages on failure.
fn compile(text: &str, schema: &Schema) -> Result<PolicySet, String> {
    let set = PolicySet::from_str(text).map_err(|e| cedar_message(&e))?;
    let result = Validator::new(schema.clone()).validate(&set, ValidationMode::Strict);
    if !result.validation_passed() {
        let errors: Vec<String> = result.validation_errors().map(|e| e.to_string()).collect();
        return Err(errors.join("; "));
    }
    Ok(set)
}

/// Every message of a Cedar parse error (its `Display` shows only the first).
fn cedar_message(e: &cedar_policy::ParseErrors) -> String {
    let all: Vec<String> = e.iter().map(|one| one.to_string()).collect();
    all.join("; ")
}

fn describe(item: &Item<'_>) -> String {
    use crate::session::guard::ItemKind;
    match item.kind {
        ItemKind::Tool => format!("tool `{}`", item.name),
        ItemKind::Prompt => format!("prompt `{}`", item.name),
        ItemKind::Resource => format!("resource `{}`", item.name),
        ItemKind::List => format!("list `{}`", item.name),
    }
}

/// Why a request was denied: the forbidding policies by `@id` (or Cedar's
/// id), or that none permits it.
fn reason(
    set: &PolicySet,
    response: &cedar_policy::Response,
    action: Action,
    item: &Item<'_>,
) -> (String, Option<String>) {
    let named: Vec<String> = response
        .diagnostics()
        .reason()
        .map(|id| {
            set.policy(id)
                .and_then(|p| p.annotation("id").map(str::to_owned))
                .unwrap_or_else(|| id.to_string())
        })
        .collect();
    if named.is_empty() {
        return (
            format!("no policy permits {} on {}", action.as_str(), describe(item)),
            None,
        );
    }
    let named = named.join(", ");
    let message = format!("{} on {} is forbidden by {named}", action.as_str(), describe(item));
    (message, Some(named))
}

#[cfg(test)]
mod tests;
