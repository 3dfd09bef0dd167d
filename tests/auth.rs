//! vmcp as an OAuth 2.1 resource server (issue 13), against a real OpenID
//! provider (npm `oidc-provider`) issuing JWT access tokens with resource
//! indicators: discovery, validation, key rotation, refused tokens, and
//! sessions bound to the subject across token refreshes and replicas.

mod support;

use std::time::Duration;

use base64::Engine;
use http::StatusCode;
use serde_json::{json, Value};
use support::deps::free_port;
use support::oidc::OidcProvider;
use support::redis::RedisServer;
use support::{Replica, TestBackend};

const CLIENT: (&str, &str) = ("vmcp-test", "vmcp-test-secret");
const OTHER: (&str, &str) = ("other-client", "other-secret");

fn auth_yaml(idp: &OidcProvider, audience: &str, extra: &str) -> String {
    format!(
        "auth:\n  inbound:\n    issuer: {}\n    audience: {audience}\n    jwks_min_refresh: 200ms\n    leeway: 0s\n{extra}",
        idp.issuer()
    )
}

/// The same token with one character of its signature changed.
fn tampered(token: &str) -> String {
    let (head, sig) = token.rsplit_once('.').expect("a JWT");
    let mut sig: Vec<char> = sig.chars().collect();
    let i = sig.len() / 2;
    sig[i] = if sig[i] == 'A' { 'B' } else { 'A' };
    format!("{head}.{}", sig.into_iter().collect::<String>())
}

/// The same token with another `kid` in its header.
fn with_kid(token: &str, kid: &str) -> String {
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let (_, rest) = token.split_once('.').expect("a JWT");
    let header = format!(r#"{{"alg":"RS256","typ":"at+jwt","kid":"{kid}"}}"#);
    format!("{}.{rest}", b64.encode(header))
}

/// An unsigned token (`alg: none`) with the claims of `token`.
fn unsigned(token: &str) -> String {
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let payload = token.split('.').nth(1).expect("a JWT");
    format!("{}.{payload}.", b64.encode(br#"{"alg":"none","typ":"JWT"}"#))
}

#[tokio::test]
async fn tokens_are_validated_and_refused_ones_get_a_challenge() {
    let idp = OidcProvider::start().await;
    let backend = TestBackend::start("t").await;
    let vmcp = Replica::start_for_audience(&backend.url, |aud| auth_yaml(&idp, aud, "")).await;
    let audience = vmcp.url.clone();

    // No token: 401 and where to start (RFC 9728), and nothing else runs.
    let mut anonymous = vmcp.client();
    let reply = anonymous
        .post_raw(
            json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {}}).to_string(),
            &[],
        )
        .await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{reply:?}");
    let metadata_url = format!("{}/.well-known/oauth-protected-resource/mcp", vmcp.base);
    assert_eq!(
        reply.challenge(),
        format!("Bearer resource_metadata=\"{metadata_url}\"")
    );
    let metadata: Value = anonymous
        .http()
        .get(&metadata_url)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(metadata["resource"], json!(audience));
    assert_eq!(metadata["authorization_servers"], json!([idp.issuer()]));
    anonymous.session = None;

    // A token for this audience opens a session and calls through it.
    let token = idp.token(CLIENT.0, CLIENT.1, &audience, "").await;
    let mut client = vmcp.client_with_token(&token);
    client.initialize().await;
    let reply = client.call_tool("t_echo", json!({"message": "hi"})).await;
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");

    // Refused tokens: 401 invalid_token with a reason, never the token itself.
    let elsewhere = idp.token(CLIENT.0, CLIENT.1, "http://127.0.0.1:9/mcp", "").await;
    let cases = [
        ("another audience", elsewhere.clone(), "audience"),
        ("tampered signature", tampered(&token), "signature"),
        ("alg none", unsigned(&token), "malformed"),
        ("not a JWT", "abc".to_owned(), "malformed"),
        (
            "unknown kid",
            with_kid(&token, "not-a-key-of-the-issuer"),
            "key the issuer does not publish",
        ),
        (
            "bad header",
            format!("{}.e30.x", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode("{")),
            "malformed",
        ),
    ];
    for (what, bad, reason) in cases {
        let mut c = vmcp.client_with_token(&bad);
        c.session = client.session.clone();
        let reply = c.call_tool("t_echo", json!({"message": "x"})).await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{what}: {reply:?}");
        let header = reply.challenge();
        assert!(header.contains("error=\"invalid_token\""), "{what}: {header}");
        assert!(header.contains(reason), "{what}: {header}");
        assert!(
            !header.contains(&bad) && !reply.body.to_string().contains(&bad),
            "{what}"
        );
    }
    // A scheme other than Bearer is no token at all.
    let mut basic = vmcp.client();
    basic.session = client.session.clone();
    let ping = json!({"jsonrpc": "2.0", "id": 9, "method": "ping"}).to_string();
    let reply = basic.post_raw(ping.clone(), &[("authorization", "Basic eDp5")]).await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{reply:?}");
    // Two Authorization headers (the good token and another): 400, not either one.
    let reply = client.post_raw(ping, &[("authorization", "Basic eDp5")]).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{reply:?}");
    assert!(reply.challenge().contains("invalid_request"), "{}", reply.challenge());
    // The good token still works, and its session is untouched.
    assert_eq!(
        client.call_tool("t_echo", json!({"message": "again"})).await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn expired_tokens_and_other_issuers_are_refused() {
    let idp = OidcProvider::start_with_ttl(Duration::from_secs(2)).await;
    let stranger = OidcProvider::start().await;
    let backend = TestBackend::start("t").await;
    let vmcp = Replica::start_for_audience(&backend.url, |aud| auth_yaml(&idp, aud, "")).await;
    let token = idp.token(CLIENT.0, CLIENT.1, &vmcp.url, "").await;
    let mut client = vmcp.client_with_token(&token);
    client.initialize().await;

    let foreign = stranger.token(CLIENT.0, CLIENT.1, &vmcp.url, "").await;
    let reply = vmcp.client_with_token(&foreign).request("ping", json!({})).await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{reply:?}");

    tokio::time::sleep(Duration::from_millis(3100)).await;
    let reply = client.call_tool("t_echo", json!({"message": "late"})).await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{reply:?}");
    assert!(reply.challenge().contains("expired"), "{}", reply.challenge());
    // A fresh token for the same subject carries on with the same session.
    client.token = Some(idp.token(CLIENT.0, CLIENT.1, &vmcp.url, "").await);
    assert_eq!(
        client.call_tool("t_echo", json!({"message": "fresh"})).await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn required_scopes_are_enforced_with_403() {
    let idp = OidcProvider::start().await;
    let backend = TestBackend::start("t").await;
    let vmcp = Replica::start_for_audience(&backend.url, |aud| {
        auth_yaml(&idp, aud, "    required_scopes: [\"mcp:tools\"]\n")
    })
    .await;
    let without = idp.token(CLIENT.0, CLIENT.1, &vmcp.url, "").await;
    let mut c = vmcp.client_with_token(&without);
    let reply = c
        .post_raw(
            json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {}}).to_string(),
            &[],
        )
        .await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN, "{reply:?}");
    assert!(reply
        .challenge()
        .contains("error=\"insufficient_scope\", scope=\"mcp:tools\""));
    c.token = Some(idp.token(CLIENT.0, CLIENT.1, &vmcp.url, "mcp:tools").await);
    c.initialize().await;
}

#[tokio::test]
async fn rotated_keys_are_fetched_again() {
    let mut idp = OidcProvider::start().await;
    let backend = TestBackend::start("t").await;
    let vmcp = Replica::start_for_audience(&backend.url, |aud| auth_yaml(&idp, aud, "")).await;
    let mut client = vmcp.client_with_token(&idp.token(CLIENT.0, CLIENT.1, &vmcp.url, "").await);
    client.initialize().await;
    idp.restart_rotated().await;
    tokio::time::sleep(Duration::from_millis(300)).await; // past jwks_min_refresh
    client.token = Some(idp.token(CLIENT.0, CLIENT.1, &vmcp.url, "").await);
    let reply = client.call_tool("t_echo", json!({"message": "new key"})).await;
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
}

#[tokio::test]
async fn a_session_follows_its_subject_across_token_refreshes_and_replicas() {
    let idp = OidcProvider::start().await;
    let redis = RedisServer::start().await;
    let backend = TestBackend::start("t").await;
    // Two replicas behind one public URL: the audience is that URL, not either replica's.
    let audience = format!("http://127.0.0.1:{}/mcp", free_port());
    let config = support::config_yaml(
        &[("t", &backend.url)],
        &format!(
            "{}store:\n  kind: redis\n  redis: {{ url: \"{}\" }}\n",
            auth_yaml(&idp, &audience, ""),
            redis.url()
        ),
    );
    let (a, b) = (Replica::start(&config).await, Replica::start(&config).await);
    let mut on_a = a.client_with_token(&idp.token(CLIENT.0, CLIENT.1, &audience, "").await);
    on_a.initialize().await;
    assert_eq!(
        on_a.call_tool("t_echo", json!({"message": "a"})).await.status,
        StatusCode::OK
    );

    // A new token for the same subject, on the other replica: same session.
    let mut on_b = on_a.via(&b.url);
    on_b.token = Some(idp.token(CLIENT.0, CLIENT.1, &audience, "").await);
    assert_ne!(on_b.token, on_a.token);
    let reply = on_b.call_tool("t_echo", json!({"message": "b"})).await;
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");

    // Another subject with a valid token: the session does not exist for it.
    let mut intruder = on_a.via(&b.url);
    intruder.token = Some(idp.token(OTHER.0, OTHER.1, &audience, "").await);
    assert_eq!(
        intruder.call_tool("t_echo", json!({"message": "x"})).await.status,
        StatusCode::NOT_FOUND
    );
    let mut intruder_a = intruder.via(&a.url);
    intruder_a.token = intruder.token.clone();
    assert_eq!(intruder_a.delete().await, StatusCode::NOT_FOUND);
    assert_eq!(
        on_a.call_tool("t_echo", json!({"message": "still"})).await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn the_python_sdk_oauth_client_connects_from_the_url_alone() {
    let idp = OidcProvider::start().await;
    let backend = TestBackend::start("t").await;
    let vmcp = Replica::start_for_audience(&backend.url, |aud| auth_yaml(&idp, aud, "")).await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/clients/python_oauth_client.py");
    let output = tokio::process::Command::new(support::deps::python())
        .args([script, &vmcp.url, &idp.issuer(), CLIENT.0, CLIENT.1])
        .output()
        .await
        .expect("python runs");
    assert!(
        output.status.success(),
        "python OAuth client failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let seen: Value = serde_json::from_slice(&output.stdout).expect("python client prints JSON");
    assert_eq!(seen["server"], "vmcp");
    assert!(seen["tools"].as_array().unwrap().contains(&json!("t_echo")), "{seen}");
    assert!(seen["echo"].as_str().unwrap().contains("with a token"), "{seen}");
    assert!(
        seen["token_type"].as_str().unwrap().eq_ignore_ascii_case("bearer"),
        "{seen}"
    );
}
