use std::time::Duration;

use serde_json::json;

use super::*;
use crate::session::guard::ItemKind;

struct File(PathBuf);

impl Drop for File {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn file(name: &str, text: &str) -> File {
    let path = std::env::temp_dir().join(format!("vmcp-policy-{}-{name}.cedar", std::process::id()));
    std::fs::write(&path, text).unwrap();
    File(path)
}

fn load(f: &File) -> Result<Arc<Policies>, PolicyError> {
    let config = PolicyConfig {
        file: Some(f.0.clone()),
        reload_interval: Duration::from_secs(1),
    };
    Policies::load(&config, "r1", &Registry::new()).map(|p| p.unwrap())
}

fn caller(subject: &str, groups: &[&str]) -> Principal {
    Principal {
        subject: subject.into(),
        issuer: "https://idp".into(),
        authenticated: true,
        scopes: vec![],
        groups: groups.iter().map(|g| g.to_string()).collect(),
    }
}

fn tool<'a>(name: &'a str, annotations: Option<&'a serde_json::Value>) -> Item<'a> {
    Item {
        kind: ItemKind::Tool,
        name,
        original: name.strip_prefix("gh_").unwrap_or(name),
        backend: "gh",
        annotations,
        arguments: None,
    }
}

const POLICIES: &str = r#"
@id("readers-read")
permit(principal in Vmcp::Group::"readers", action == Vmcp::Action::"call_tool", resource)
  when { resource.annotations.readOnlyHint };
@id("admins-all")
permit(principal in Vmcp::Group::"admins", action, resource);
@id("no-destruction-for-bob")
forbid(principal == Vmcp::Caller::"bob", action == Vmcp::Action::"call_tool", resource)
  when { resource.annotations.destructiveHint };
@id("no-etc")
forbid(principal, action == Vmcp::Action::"call_tool", resource in Vmcp::Backend::"gh")
  when { resource.hasTag("path") && resource.getTag("path") like "/etc/*" };
"#;

#[test]
fn decisions_follow_groups_annotations_and_arguments() {
    let f = file("decide", POLICIES);
    let p = load(&f).unwrap();
    let read_only = json!({"readOnlyHint": true, "destructiveHint": false});
    let alice = caller("alice", &["readers"]);
    assert!(p
        .decide(&alice, Action::CallTool, &tool("gh_get", Some(&read_only)), false)
        .is_ok());
    // No annotations: the spec's defaults (not read-only, destructive).
    let Err(Refusal::Denied { message: why, .. }) = p.decide(&alice, Action::CallTool, &tool("gh_push", None), false)
    else {
        panic!("denied expected");
    };
    assert_eq!(why, "no policy permits call_tool on tool `gh_push`");

    let bob = caller("bob", &["admins"]);
    assert!(p
        .decide(&bob, Action::CallTool, &tool("gh_get", Some(&read_only)), false)
        .is_ok());
    let Err(Refusal::Denied { message: why, .. }) = p.decide(&bob, Action::CallTool, &tool("gh_push", None), false)
    else {
        panic!("denied expected");
    };
    assert!(why.contains("forbidden by no-destruction-for-bob"), "{why}");

    // Arguments are the tool's tags on a call.
    let args = json!({"path": "/etc/passwd", "n": 3});
    let mut call = tool("gh_get", Some(&read_only));
    call.arguments = Some(&args);
    let Err(Refusal::Denied { message: why, .. }) = p.decide(&alice, Action::CallTool, &call, false) else {
        panic!("denied expected");
    };
    assert!(why.contains("no-etc"), "{why}");
    let fine = json!({"path": "/tmp/x"});
    call.arguments = Some(&fine);
    assert!(p.decide(&alice, Action::CallTool, &call, false).is_ok());

    // Nobody else may do anything (Cedar denies by default).
    assert!(p
        .decide(
            &Principal::anonymous(),
            Action::CallTool,
            &tool("gh_get", Some(&read_only)),
            true
        )
        .is_err());
}

#[test]
fn invalid_files_are_refused_with_cedars_message_and_the_old_policies_stay() {
    let bad = file("syntax", "permit(principal, action, resource) when { ;");
    let Err(PolicyError::Invalid { message, .. }) = load(&bad) else {
        panic!("a syntax error is refused");
    };
    assert!(!message.is_empty());

    // Valid syntax, but an attribute the schema does not have.
    let typo = file(
        "typo",
        "permit(principal, action, resource) when { principal.grups.contains(\"x\") };",
    );
    let Err(PolicyError::Invalid { message, .. }) = load(&typo) else {
        panic!("a schema error is refused");
    };
    assert!(message.contains("grups"), "{message}");

    let f = file("reload", POLICIES);
    let p = load(&f).unwrap();
    let alice = caller("alice", &["readers"]);
    let ro = json!({"readOnlyHint": true});
    assert!(p
        .decide(&alice, Action::CallTool, &tool("gh_get", Some(&ro)), false)
        .is_ok());
    std::fs::write(&f.0, "permit(principal, action, resource) when { oops").unwrap();
    assert!(p.reload().is_err());
    assert!(!p.reload().unwrap(), "a refused text is not tried (and logged) again");
    assert!(p
        .decide(&alice, Action::CallTool, &tool("gh_get", Some(&ro)), false)
        .is_ok());
    std::fs::write(&f.0, "forbid(principal, action, resource);").unwrap();
    assert!(p.reload().unwrap());
    assert!(p
        .decide(&alice, Action::CallTool, &tool("gh_get", Some(&ro)), false)
        .is_err());
}

#[test]
fn lists_prompts_and_resources_have_their_actions() {
    let f = file(
        "kinds",
        r#"
permit(principal, action == Vmcp::Action::"list", resource == Vmcp::List::"tools");
permit(principal, action == Vmcp::Action::"read_resource", resource)
  when { resource.uri like "file:///public/*" };
permit(principal, action in [Vmcp::Action::"get_prompt", Vmcp::Action::"complete"], resource in Vmcp::Backend::"docs");
"#,
    );
    let p = load(&f).unwrap();
    let anyone = Principal::anonymous();
    let list = |name| Item {
        kind: ItemKind::List,
        name,
        original: name,
        backend: "",
        annotations: None,
        arguments: None,
    };
    assert!(p.decide(&anyone, Action::List, &list("tools"), true).is_ok());
    assert!(p.decide(&anyone, Action::List, &list("prompts"), true).is_err());
    let resource = |uri| Item {
        kind: ItemKind::Resource,
        name: uri,
        original: uri,
        backend: "fs",
        annotations: None,
        arguments: None,
    };
    assert!(p
        .decide(&anyone, Action::ReadResource, &resource("file:///public/a"), false)
        .is_ok());
    assert!(p
        .decide(&anyone, Action::ReadResource, &resource("file:///secret/a"), false)
        .is_err());
    let prompt = |backend| Item {
        kind: ItemKind::Prompt,
        name: "p",
        original: "p",
        backend,
        annotations: None,
        arguments: None,
    };
    assert!(p.decide(&anyone, Action::GetPrompt, &prompt("docs"), false).is_ok());
    assert!(p.decide(&anyone, Action::Complete, &prompt("docs"), false).is_ok());
    assert!(p.decide(&anyone, Action::GetPrompt, &prompt("other"), false).is_err());
}

#[test]
fn remembered_decisions_follow_reloads_and_skip_policies_that_read_inputs() {
    let f = file(
        "memo",
        "permit(principal in Vmcp::Group::\"readers\", action, resource);",
    );
    let p = load(&f).unwrap();
    let ro = json!({"readOnlyHint": true, "destructiveHint": false});
    let (alice, bob) = (caller("alice", &["readers"]), caller("bob", &[]));
    for _ in 0..3 {
        assert!(p
            .decide(&alice, Action::CallTool, &tool("gh_get", Some(&ro)), false)
            .is_ok());
        assert!(p
            .decide(&bob, Action::CallTool, &tool("gh_get", Some(&ro)), false)
            .is_err());
    }
    // Another item, other annotations: decided on their own.
    let destructive = json!({"destructiveHint": true});
    std::fs::write(
        &f.0,
        "permit(principal, action, resource) unless { resource has annotations && resource.annotations.destructiveHint };",
    )
    .unwrap();
    assert!(p.reload().unwrap());
    assert!(
        p.decide(&bob, Action::CallTool, &tool("gh_get", Some(&ro)), false)
            .is_ok(),
        "the new policies apply"
    );
    assert!(p
        .decide(&bob, Action::CallTool, &tool("gh_get", Some(&destructive)), false)
        .is_err());
    assert!(
        memo::Memo::for_policies("permit(principal, action, resource) when { context.time > 0 };")
            .key(&bob, Action::CallTool, &tool("x", None), false)
            .is_none(),
        "policies that read the clock are decided every time"
    );
}
