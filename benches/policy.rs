//! Criterion benchmark of one Cedar policy decision, as the owner makes it
//! for every guarded `tools/call` (and per item when it filters a list):
//! the request's entities built, the compiled policies evaluated.
//! `cargo bench --bench policy`.

use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use serde_json::json;
use vmcp::config::PolicyConfig;
use vmcp::policy::{Policies, Principal};
use vmcp::session::guard::{Action, Item, ItemKind};

/// Five policies, as a small deployment might write them.
const POLICIES: &str = r#"
permit(principal, action == Vmcp::Action::"list", resource);
permit(principal, action == Vmcp::Action::"call_tool", resource)
  when { principal.scopes.contains("mcp:tools") && resource.annotations.readOnlyHint };
permit(principal in Vmcp::Group::"admins", action, resource);
forbid(principal == Vmcp::Caller::"mallory", action, resource);
forbid(principal, action == Vmcp::Action::"call_tool", resource in Vmcp::Backend::"github")
  when { resource.hasTag("path") && resource.getTag("path") like "/etc/*" };
"#;

/// The same, without the policy that reads the call's arguments.
const UNTAGGED: &str = r#"
permit(principal, action == Vmcp::Action::"list", resource);
permit(principal, action == Vmcp::Action::"call_tool", resource)
  when { principal.scopes.contains("mcp:tools") && resource.annotations.readOnlyHint };
permit(principal in Vmcp::Group::"admins", action, resource);
forbid(principal == Vmcp::Caller::"mallory", action, resource);
"#;

fn decide(c: &mut Criterion) {
    let path = std::env::temp_dir().join(format!("vmcp-bench-{}.cedar", std::process::id()));
    std::fs::write(&path, POLICIES).expect("write policies");
    let config = PolicyConfig {
        file: Some(path.clone()),
        reload_interval: Duration::from_secs(60),
    };
    let policies = Policies::load(&config, "vmcp-0", &prometheus::Registry::new())
        .expect("valid policies")
        .expect("configured");
    let caller = Principal {
        subject: "alice".into(),
        issuer: "https://idp.example.com".into(),
        authenticated: true,
        scopes: vec!["mcp:tools".into()],
        groups: vec!["engineering".into(), "oncall".into()],
    };
    let annotations = json!({"readOnlyHint": true, "destructiveHint": false});
    let arguments = json!({"path": "/src/main.rs", "limit": 20});
    let item = Item {
        kind: ItemKind::Tool,
        name: "github_get_file",
        original: "get_file",
        backend: "github",
        annotations: Some(&annotations),
        arguments: Some(&arguments),
    };
    c.bench_function("policy/call_tool (allow, 5 policies)", |b| {
        b.iter(|| std::hint::black_box(policies.decide(&caller, Action::CallTool, std::hint::black_box(&item), false)))
    });
    let denied = Item {
        arguments: None,
        annotations: None,
        ..item
    };
    c.bench_function("policy/call_tool (deny, 5 policies)", |b| {
        b.iter(|| {
            std::hint::black_box(policies.decide(&caller, Action::CallTool, std::hint::black_box(&denied), false))
        })
    });
    // Without the policy that reads arguments, decisions are remembered (src/policy/memo.rs).
    std::fs::write(&path, UNTAGGED).expect("write policies");
    policies.reload().expect("valid policies");
    c.bench_function("policy/call_tool (allow, 4 policies, remembered)", |b| {
        b.iter(|| std::hint::black_box(policies.decide(&caller, Action::CallTool, std::hint::black_box(&item), false)))
    });
    let _ = std::fs::remove_file(&path);
}

criterion_group!(benches, decide);
criterion_main!(benches);
