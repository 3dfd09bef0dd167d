use serde_json::{json, Map, Value};

use super::judge;
use crate::auth::AuthError;
use crate::config::InboundAuthConfig;

const NOW: u64 = 1_800_000_000;

fn config(required_scopes: &[&str]) -> InboundAuthConfig {
    let yaml = format!(
        "issuer: https://idp.example.com/\naudience: https://mcp.example.com/mcp\nleeway: 30s\nrequired_scopes: {required_scopes:?}\nintrospection: {{ client_id: vmcp, client_secret: s }}\n"
    );
    serde_yaml_ng::from_str(&yaml).expect("an inbound auth config")
}

fn answer(extra: Value) -> Map<String, Value> {
    let mut a = json!({
        "active": true,
        "client_id": "tickets-agent",
        "iss": "https://idp.example.com",
        "aud": "https://mcp.example.com/mcp",
        "exp": NOW + 300,
        "scope": "mcp:tools mcp:admin",
        "token_type": "Bearer",
    });
    for (k, v) in extra.as_object().into_iter().flatten() {
        if v.is_null() {
            a.as_object_mut().map(|o| o.remove(k));
        } else {
            a[k] = v.clone();
        }
    }
    a.as_object().cloned().unwrap_or_default()
}

fn refused(a: &Map<String, Value>) -> String {
    match judge(a, NOW, &config(&[])) {
        Err(AuthError::Invalid(why)) => why,
        other => panic!("not refused as invalid: {other:?}"),
    }
}

#[test]
fn an_active_token_for_this_resource_is_its_client_or_subject() {
    let p = judge(&answer(json!({})), NOW, &config(&["mcp:tools"])).expect("accepted");
    // No `sub` (a client credentials token): the client is the subject.
    assert_eq!(p.subject, "tickets-agent");
    assert_eq!(p.issuer, "https://idp.example.com");
    assert_eq!(p.scopes, ["mcp:tools", "mcp:admin"]);
    assert_eq!(p.expires, NOW + 300);
    let p = judge(
        &answer(json!({"sub": "alice", "groups": ["eng"], "aud": ["x", "https://mcp.example.com/mcp"], "iss": null, "exp": null})),
        NOW,
        &config(&[]),
    )
    .expect("accepted");
    assert_eq!(
        (p.subject.as_str(), p.groups.as_slice()),
        ("alice", &["eng".to_owned()][..])
    );
    // No `iss` in the answer: the configured issuer, which was asked.
    assert_eq!(p.issuer, "https://idp.example.com/");
    assert_eq!(p.expires, u64::MAX);
}

#[test]
fn inactive_foreign_stale_and_unbound_tokens_are_refused() {
    assert_eq!(refused(&answer(json!({"active": false}))), "token is not active");
    assert_eq!(refused(&answer(json!({"active": "true"}))), "token is not active");
    assert_eq!(refused(&answer(json!({"aud": null}))), "token is for another audience");
    assert_eq!(
        refused(&answer(json!({"aud": ["https://other.example.com/mcp"]}))),
        "token is for another audience"
    );
    assert_eq!(
        refused(&answer(json!({"iss": "https://evil.example.com"}))),
        "token from another issuer"
    );
    assert_eq!(refused(&answer(json!({"exp": NOW - 31}))), "token expired");
    assert!(
        judge(&answer(json!({"exp": NOW - 29})), NOW, &config(&[])).is_ok(),
        "within leeway"
    );
    assert_eq!(refused(&answer(json!({"nbf": NOW + 31}))), "token not valid yet (nbf)");
    assert_eq!(
        refused(&answer(json!({"token_type": "refresh_token"}))),
        "not a bearer access token"
    );
    assert_eq!(
        refused(&answer(json!({"token_type": "DPoP"}))),
        "not a bearer access token"
    );
    assert_eq!(refused(&answer(json!({"client_id": null}))), "claim `sub` missing");
}

#[test]
fn a_missing_scope_is_insufficient_not_invalid() {
    let r = judge(&answer(json!({"scope": "mcp:admin"})), NOW, &config(&["mcp:tools"]));
    assert!(
        matches!(r, Err(AuthError::InsufficientScope(ref s)) if s == "mcp:tools"),
        "{r:?}"
    );
}
