//! The OpenID provider harness (`tests/support/oidc.rs`): a real
//! `oidc-provider` issues RS256 JWT access tokens for a resource, publishes
//! its keys, and rotates them across a restart.

mod support;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde_json::Value;
use support::oidc::OidcProvider;

const RESOURCE: &str = "http://127.0.0.1:9/mcp";

/// A JWT's header and payload, decoded without checking the signature.
fn decode(jwt: &str) -> (Value, Value) {
    let parts: Vec<&str> = jwt.split('.').collect();
    assert_eq!(parts.len(), 3, "a JWS in compact form: {jwt}");
    let part =
        |s: &str| -> Value { serde_json::from_slice(&URL_SAFE_NO_PAD.decode(s).expect("base64url")).expect("JSON") };
    (part(parts[0]), part(parts[1]))
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_secs()
}

async fn kids(op: &OidcProvider) -> Vec<String> {
    let jwks = op.jwks().await;
    let keys = jwks["keys"].as_array().expect("keys");
    for key in keys {
        assert!(key.get("d").is_none(), "a private key is published: {key}");
    }
    keys.iter()
        .map(|k| k["kid"].as_str().expect("kid").to_owned())
        .collect()
}

#[tokio::test]
async fn issues_a_jwt_for_the_resource_and_rotates_its_key() {
    let mut op = OidcProvider::start().await;
    assert_eq!(op.jwks_uri(), format!("{}/jwks", op.issuer()));

    let token = op.token("vmcp-test", "vmcp-test-secret", RESOURCE, "mcp:tools").await;
    let (header, payload) = decode(&token);
    assert_eq!(header["alg"], "RS256");
    assert_eq!(header["typ"], "at+jwt");
    let first_kid = header["kid"].as_str().expect("kid").to_owned();
    assert_eq!(kids(&op).await, std::slice::from_ref(&first_kid));
    assert_eq!(payload["iss"], op.issuer().as_str());
    assert_eq!(payload["aud"], RESOURCE);
    assert_eq!(payload["client_id"], "vmcp-test");
    assert_eq!(payload["sub"], "vmcp-test");
    assert_eq!(payload["scope"], "mcp:tools");
    let exp = payload["exp"].as_u64().expect("exp");
    assert!(exp > now(), "expired: {payload}");
    assert_eq!(exp - payload["iat"].as_u64().expect("iat"), 300);

    // The other client; no scope asked, none granted.
    let token = op.token("other-client", "other-secret", RESOURCE, "").await;
    let (_, payload) = decode(&token);
    assert_eq!(payload["client_id"], "other-client");
    assert_eq!(payload["aud"], RESOURCE);
    assert!(payload.get("scope").is_none(), "{payload}");

    op.restart_rotated().await;
    let token = op
        .token("vmcp-test", "vmcp-test-secret", RESOURCE, "mcp:tools mcp:admin")
        .await;
    let (header, payload) = decode(&token);
    let second_kid = header["kid"].as_str().expect("kid").to_owned();
    assert_ne!(second_kid, first_kid);
    assert_eq!(kids(&op).await, [second_kid, first_kid]);
    assert_eq!(payload["iss"], op.issuer().as_str());
    assert_eq!(payload["scope"], "mcp:tools mcp:admin");
}

#[tokio::test]
async fn short_lived_tokens_and_refusals() {
    let op = OidcProvider::start_with_ttl(Duration::from_secs(2)).await;
    let (_, payload) = decode(&op.token("vmcp-test", "vmcp-test-secret", RESOURCE, "").await);
    assert_eq!(
        payload["exp"].as_u64().expect("exp") - payload["iat"].as_u64().expect("iat"),
        2
    );

    let (status, body) = op.token_response("vmcp-test", "wrong", RESOURCE, "").await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["error"], "invalid_client");
    let (status, body) = op
        .token_response("vmcp-test", "vmcp-test-secret", "https://example.com/mcp", "")
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"], "invalid_target");
}

#[tokio::test]
async fn exchanges_a_callers_token_for_one_for_another_resource() {
    let op = OidcProvider::start().await;
    let caller = op.token("vmcp-test", "vmcp-test-secret", RESOURCE, "").await;
    let backend = "http://127.0.0.1:10/mcp";
    let (status, body) = op
        .exchange_response("vmcp-gateway", "vmcp-gateway-secret", &caller, backend)
        .await;
    assert!(status.is_success(), "{status} {body}");
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(
        body["issued_token_type"],
        "urn:ietf:params:oauth:token-type:access_token"
    );
    let (header, payload) = decode(body["access_token"].as_str().expect("access_token"));
    assert_eq!(header["alg"], "RS256");
    assert_eq!(payload["sub"], "vmcp-test");
    assert_eq!(payload["aud"], backend);
    assert_eq!(payload["act"]["sub"], "vmcp-gateway");
    assert_eq!(payload["iss"], op.issuer().as_str());

    // Not a token of this issuer, or a client without the grant: refused.
    let forged = format!("{}x", caller);
    let (status, body) = op
        .exchange_response("vmcp-gateway", "vmcp-gateway-secret", &forged, backend)
        .await;
    assert_eq!(
        (status.as_u16(), body["error"].as_str()),
        (400, Some("invalid_grant")),
        "{body}"
    );
    let (status, body) = op
        .exchange_response("vmcp-test", "vmcp-test-secret", &caller, backend)
        .await;
    assert_eq!(status.as_u16(), 400, "{body}");
    // oidc-provider says `invalid_request` here (the grant is not the client's).
    assert!(body["error"].is_string(), "{body}");
}
