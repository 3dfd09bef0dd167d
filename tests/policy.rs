//! Cedar policies (issue 14) on two replicas sharing one Redis, with callers
//! authenticated by a real OpenID provider: permits and forbids by subject,
//! group and tool annotation; lists filtered by the decision that gates
//! calls; a forwarded request judged the same way; a denied call never
//! reaching the backend; reloads that keep sessions, and refuse a bad file.

mod support;

use std::sync::atomic::Ordering;
use std::time::Duration;

use http::StatusCode;
use serde_json::json;
use support::deps::free_port;
use support::oidc::OidcProvider;
use support::redis::RedisServer;
use support::{Client, Options, Replica, TestBackend};

const POLICIES: &str = r#"
@id("lists")
permit(principal, action == Vmcp::Action::"list", resource);
@id("tools-scope-reads")
permit(principal, action == Vmcp::Action::"call_tool", resource)
  when { principal.scopes.contains("mcp:tools") && resource.annotations.readOnlyHint };
@id("admins")
permit(principal in Vmcp::Group::"mcp:admin", action, resource);
@id("no-counter-for-other-client")
forbid(principal == Vmcp::Caller::"other-client", action, resource == Vmcp::Tool::"t_counter");
@id("no-secrets")
forbid(principal, action == Vmcp::Action::"call_tool", resource)
  when { resource.hasTag("message") && resource.getTag("message") like "*secret*" };
"#;

struct Setup {
    idp: OidcProvider,
    _redis: RedisServer,
    backend: TestBackend,
    a: Replica,
    b: Replica,
    audience: String,
    policy_file: std::path::PathBuf,
}

impl Drop for Setup {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.policy_file);
        let _ = std::fs::remove_file(self.policy_file.with_extension("audit.jsonl"));
    }
}

async fn setup(name: &str) -> Setup {
    let idp = OidcProvider::start().await;
    let redis = RedisServer::start().await;
    let options = Options {
        read_only: vec!["echo", "whoami"],
        ..Options::default()
    };
    let backend = TestBackend::start_with("t", options).await;
    let policy_file = std::env::temp_dir().join(format!("vmcp-policy-{}-{name}.cedar", std::process::id()));
    std::fs::write(&policy_file, POLICIES).unwrap();
    let audience = format!("http://127.0.0.1:{}/mcp", free_port());
    let config = support::config_yaml(
        &[("t", &backend.url)],
        &format!(
            "auth:\n  inbound:\n    issuer: {}\n    audience: {audience}\n    groups_claim: scope\n\
             policy:\n  file: {}\n  reload_interval: 100ms\n\
             audit:\n  enabled: true\n  sink: file\n  path: {}\n\
             store:\n  kind: redis\n  redis: {{ url: \"{}\" }}\n",
            idp.issuer(),
            policy_file.display(),
            policy_file.with_extension("audit.jsonl").display(),
            redis.url()
        ),
    );
    let (a, b) = (Replica::start(&config).await, Replica::start(&config).await);
    Setup {
        idp,
        _redis: redis,
        backend,
        a,
        b,
        audience,
        policy_file,
    }
}

async fn client(s: &Setup, replica: &Replica, id: &str, secret: &str, scope: &str) -> Client {
    let mut c = replica.client();
    c.token = Some(s.idp.token(id, secret, &s.audience, scope).await);
    c.initialize().await;
    c
}

async fn tool_names(c: &Client) -> Vec<String> {
    let reply = c.request("tools/list", json!({})).await;
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    let mut names: Vec<String> = reply.body["result"]["tools"]
        .as_array()
        .unwrap_or(&Vec::new())
        .iter()
        .filter_map(|t| t["name"].as_str().map(str::to_owned))
        .collect();
    names.sort();
    names
}

fn denied(reply: &support::client::Reply) -> Option<String> {
    (reply.body["error"]["code"] == -32003).then(|| reply.body["error"]["message"].as_str().unwrap_or("").to_owned())
}

#[tokio::test]
async fn policies_gate_calls_and_lists_the_same_way_on_every_replica() {
    let s = setup("gate").await;
    let reader = client(&s, &s.a, "vmcp-test", "vmcp-test-secret", "mcp:tools").await;
    // Through the other replica too (forwarded to the owner, judged there).
    let reader_via_b = {
        let mut c = reader.via(&s.b.url);
        c.token = reader.token.clone();
        c
    };
    for c in [&reader, &reader_via_b] {
        assert_eq!(tool_names(c).await, ["t_echo", "t_whoami"], "read-only tools only");
        let ok = c.call_tool("t_echo", json!({"message": "hi"})).await;
        assert_eq!(ok.status, StatusCode::OK, "{ok:?}");
        assert!(ok.body["result"].is_object(), "{ok:?}");
        let calls = s.backend.stats.calls.load(Ordering::SeqCst);
        let no = c.call_tool("t_counter", json!({})).await;
        assert_eq!(no.status, StatusCode::OK, "a JSON-RPC error, not an HTTP one: {no:?}");
        let why = denied(&no).unwrap_or_else(|| panic!("denied: {no:?}"));
        assert_eq!(
            why,
            "forbidden by policy: no policy permits call_tool on tool `t_counter`"
        );
        // An argument a forbid looks at.
        let secret = c.call_tool("t_echo", json!({"message": "my secret"})).await;
        assert!(denied(&secret).is_some_and(|w| w.contains("no-secrets")), "{secret:?}");
        // Arguments too deep to read are refused, never judged as absent
        // (vmcp forwards arguments as raw text and reads them only here).
        let deep = format!(
            r#"{{"jsonrpc":"2.0","id":9,"method":"tools/call","params":{{"name":"t_echo","arguments":{{"message":"my secret","x":{}1{}}}}}}}"#,
            "[".repeat(200),
            "]".repeat(200)
        );
        let deep = c.post_raw(deep, &[]).await;
        assert_eq!(deep.body["error"]["code"], -32602, "{deep:?}");
        assert_eq!(
            s.backend.stats.calls.load(Ordering::SeqCst),
            calls,
            "a denied call reached the backend"
        );
    }

    // A group (the `scope` claim here) permits everything but what is forbidden.
    let admin = client(&s, &s.b, "other-client", "other-secret", "mcp:admin").await;
    let names = tool_names(&admin).await;
    assert!(names.contains(&"t_slow".to_owned()), "{names:?}");
    assert!(
        !names.contains(&"t_counter".to_owned()),
        "forbidden for this subject: {names:?}"
    );
    let no = admin.call_tool("t_counter", json!({})).await;
    assert!(
        denied(&no).is_some_and(|w| w.contains("no-counter-for-other-client")),
        "{no:?}"
    );
    assert_eq!(admin.call_tool("t_slow", json!({"ms": 1})).await.status, StatusCode::OK);

    // Every denial is in the audit log (both replicas append to one file here).
    let audit = s.policy_file.with_extension("audit.jsonl");
    support::eventually("the denials are audited", || async {
        std::fs::read_to_string(&audit)
            .unwrap_or_default()
            .matches("\"denied\"")
            .count()
            >= 2 * 5
    })
    .await;
    let text = std::fs::read_to_string(&audit).unwrap();
    let lines: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let denial = lines
        .iter()
        .find(|l| l["event"] == "denied" && l["rule"] == "no-counter-for-other-client")
        .unwrap_or_else(|| panic!("{text}"));
    assert_eq!(
        (denial["sub"].as_str(), denial["name"].as_str()),
        (Some("other-client"), Some("t_counter"))
    );
    assert_eq!(denial["code"], -32003);
    assert!(!text.contains("my secret"), "argument values stay out of the audit log");
    // And in the metrics, by the policy that forbade.
    let mut metrics = String::new();
    for r in [&s.a, &s.b] {
        metrics += &support::http()
            .get(format!("{}/metrics", r.base))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
    }
    assert!(
        metrics.contains("vmcp_policy_denials_total{policy=\"no-counter-for-other-client\"}"),
        "{metrics}"
    );
    assert!(metrics.contains("vmcp_policy_denials_total{policy=\"no_permit\"}"));
}

#[tokio::test]
async fn policies_reload_without_dropping_sessions_and_a_bad_file_changes_nothing() {
    let s = setup("reload").await;
    let reader = client(&s, &s.a, "vmcp-test", "vmcp-test-secret", "mcp:tools").await;
    assert_eq!(
        reader.call_tool("t_echo", json!({"message": "1"})).await.status,
        StatusCode::OK
    );

    // A bad file: refused on both replicas, the policies in force stay.
    std::fs::write(
        &s.policy_file,
        "permit(principal, action, resource) when { principal.nope };",
    )
    .unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    let ok = reader.call_tool("t_echo", json!({"message": "2"})).await;
    assert!(ok.body["result"].is_object(), "{ok:?}");

    // A new valid file: applied within the reload interval, the session kept.
    let tightened = POLICIES.replace("resource.annotations.readOnlyHint", "resource.name == \"t_whoami\"");
    std::fs::write(&s.policy_file, tightened).unwrap();
    support::eventually("the new policies apply", || async {
        denied(&reader.call_tool("t_echo", json!({"message": "3"})).await).is_some()
    })
    .await;
    let reply = reader.call_tool("t_whoami", json!({})).await;
    assert!(
        reply.body["result"].is_object(),
        "same session, new policies: {reply:?}"
    );
    let via_b = {
        let mut c = reader.via(&s.b.url);
        c.token = reader.token.clone();
        c
    };
    assert_eq!(tool_names(&via_b).await, ["t_whoami"]);
}

#[tokio::test]
async fn a_malformed_policy_file_is_refused_with_cedars_message() {
    let file = std::env::temp_dir().join(format!("vmcp-policy-{}-malformed.cedar", std::process::id()));
    std::fs::write(
        &file,
        "permit(principal, action, resource) when { principal.grups.contains(\"x\") };",
    )
    .unwrap();
    let config = std::env::temp_dir().join(format!("vmcp-policy-{}-malformed.yaml", std::process::id()));
    std::fs::write(&config, format!("policy:\n  file: {}\n", file.display())).unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_vmcp"))
        .args(["validate", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let _ = (std::fs::remove_file(&file), std::fs::remove_file(&config));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(
        stderr.contains("grups"),
        "Cedar's message names the attribute: {stderr}"
    );
}
