//! Credentials toward backends (`backends[].auth`, issue 13): vmcp's own
//! token by the client credentials grant, the caller's token exchanged
//! (RFC 8693) for one whose audience is the backend, explicit passthrough,
//! and a backend's 401 reported as the backend's error. Against a real
//! OpenID provider (npm `oidc-provider`) and a backend that verifies every
//! token's signature, issuer and audience.

mod support;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;
use serde_json::{json, Value};
use support::bearer::BearerRule;
use support::deps::free_port;
use support::oidc::OidcProvider;
use support::process::VmcpProcess;
use support::{Client, Options, Replica, TestBackend};

const GATEWAY: (&str, &str) = ("vmcp-gateway", "vmcp-gateway-secret");
const CALLER: (&str, &str) = ("vmcp-test", "vmcp-test-secret");
const OTHER: (&str, &str) = ("other-client", "other-secret");

/// A backend that accepts only tokens of `idp` whose audience is its URL.
async fn guarded_backend(idp: &OidcProvider) -> (TestBackend, Arc<BearerRule>) {
    let rule = BearerRule::new(idp.issuer(), &idp.jwks().await);
    let options = Options {
        bearer: Some(Arc::clone(&rule)),
        ..Options::default()
    };
    (TestBackend::start_with("t", options).await, rule)
}

fn backend_yaml(url: &str, auth: &str) -> String {
    format!("backends:\n  - name: t\n    url: {url}\n    auth:\n{auth}")
}

fn token_client(kind: &str, idp: &OidcProvider) -> String {
    format!(
        "      kind: {kind}\n      issuer: {}\n      client_id: {}\n      client_secret: {}\n",
        idp.issuer(),
        GATEWAY.0,
        GATEWAY.1
    )
}

/// A replica with inbound auth on (its own URL the audience), on a known port.
async fn authenticated_replica(idp: &OidcProvider, backends: &str) -> Replica {
    let port = free_port();
    let inbound = format!(
        "auth:\n  inbound:\n    issuer: {}\n    audience: http://127.0.0.1:{port}/mcp\n",
        idp.issuer()
    );
    Replica::start_on(port, &format!("{backends}{inbound}")).await
}

fn text(reply: &support::client::Reply) -> String {
    reply.body["result"]["content"][0]["text"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test]
async fn client_credentials_give_vmcp_its_own_token_cached_and_renewed() {
    let idp = OidcProvider::start_with_ttl(Duration::from_secs(3)).await;
    let (backend, rule) = guarded_backend(&idp).await;
    let config = backend_yaml(&backend.url, &token_client("client_credentials", &idp));
    let vmcp = Replica::start(&config).await;

    let (mut a, mut b) = (vmcp.client(), vmcp.client());
    a.initialize().await;
    b.initialize().await;
    for i in 0..3 {
        for c in [&mut a, &mut b] {
            let reply = c.call_tool("t_echo", json!({"message": format!("m{i}")})).await;
            assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
            assert!(text(&reply).contains(&format!("m{i}")), "{reply:?}");
        }
    }
    // One token for every request of both sessions: vmcp's own, for the backend.
    let accepted = rule.accepted();
    assert_eq!(accepted.len(), 1, "{accepted:?}");
    let claims = &accepted[0].1;
    assert_eq!(claims["sub"], GATEWAY.0);
    assert_eq!(claims["aud"], backend.url.as_str());
    assert_eq!(rule.refused.load(Ordering::SeqCst), 0);

    // Renewed before it expires (a 3 s token, renewed at half its life).
    tokio::time::sleep(Duration::from_millis(3200)).await;
    let reply = a.call_tool("t_echo", json!({"message": "later"})).await;
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    assert_eq!(rule.accepted().len(), 2);
    assert_eq!(rule.refused.load(Ordering::SeqCst), 0, "an expired token was sent");
}

#[tokio::test]
async fn the_callers_token_is_exchanged_for_one_for_the_backend() {
    let idp = OidcProvider::start().await;
    let (backend, rule) = guarded_backend(&idp).await;
    let vmcp = authenticated_replica(&idp, &backend_yaml(&backend.url, &token_client("token_exchange", &idp))).await;

    let mut sessions = Vec::new();
    for (id, secret) in [CALLER, OTHER] {
        let mut c = vmcp.client();
        c.token = Some(idp.token(id, secret, &vmcp.url, "").await);
        let init = c.initialize().await;
        let reply = c.call_tool("t_echo", json!({"message": id})).await;
        assert!(text(&reply).contains(id), "{init:?} {reply:?}");
        sessions.push(c);
    }
    let accepted = rule.accepted();
    let subjects: Vec<&Value> = accepted.iter().map(|(_, c)| &c["sub"]).collect();
    assert_eq!(subjects, [CALLER.0, OTHER.0], "{accepted:?}");
    for (_, claims) in &accepted {
        assert_eq!(claims["aud"], backend.url.as_str());
        assert_eq!(claims["act"]["sub"], GATEWAY.0, "{claims}");
    }
    // The callers' own tokens (for vmcp) never reach the backend.
    let seen = rule.tokens();
    for c in &sessions {
        assert!(
            !seen.contains(c.token.as_ref().unwrap()),
            "a caller's token was passed through"
        );
    }

    // A refreshed caller token is exchanged again; the session stays.
    let first = &mut sessions[0];
    first.token = Some(idp.token(CALLER.0, CALLER.1, &vmcp.url, "").await);
    let reply = first.call_tool("t_echo", json!({"message": "refreshed"})).await;
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    let accepted = rule.accepted();
    assert_eq!(accepted.len(), 3, "{accepted:?}");
    assert_eq!(accepted[2].1["sub"], CALLER.0);
    assert_eq!(rule.refused.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn passthrough_sends_the_callers_token_only_when_configured() {
    let idp = OidcProvider::start().await;
    let (backend, rule) = guarded_backend(&idp).await;
    let vmcp = authenticated_replica(&idp, &backend_yaml(&backend.url, "      kind: passthrough\n")).await;
    // The caller's token (its audience is vmcp) reaches the backend unchanged;
    // this backend checks for its own audience and refuses it, as the MCP
    // security guidance says a backend should.
    let mut c = vmcp.client();
    c.token = Some(idp.token(CALLER.0, CALLER.1, &vmcp.url, "").await);
    c.initialize().await;
    assert!(
        rule.tokens().contains(c.token.as_ref().unwrap()),
        "passthrough sends the caller's token"
    );
    assert!(rule.accepted().is_empty());
}

#[tokio::test]
async fn a_backends_401_is_the_backends_error_not_vmcps() {
    let idp = OidcProvider::start().await;
    let (backend, rule) = guarded_backend(&idp).await;
    let vmcp = Replica::start(&backend_yaml(&backend.url, &token_client("client_credentials", &idp))).await;
    let mut c: Client = vmcp.client();
    c.initialize().await;
    assert_eq!(
        c.call_tool("t_echo", json!({"message": "ok"})).await.status,
        StatusCode::OK
    );

    // The backend revokes vmcp's access: the call fails, named after the backend.
    rule.refuse.store(true, Ordering::SeqCst);
    let refused_before = rule.refused.load(Ordering::SeqCst);
    let reply = c.call_tool("t_echo", json!({"message": "no"})).await;
    assert_eq!(reply.status, StatusCode::OK, "vmcp's own status stays 200: {reply:?}");
    let error = &reply.body["error"];
    assert_eq!(error["code"], -32603, "{reply:?}");
    let message = error["message"].as_str().unwrap_or_default();
    assert!(message.contains("backend `t`") && message.contains("401"), "{message}");
    // Refused once, then once more with a fresh token: a 401 was provably not acted on.
    assert_eq!(rule.refused.load(Ordering::SeqCst) - refused_before, 2);
    assert!(!message.contains("eyJ"), "a token leaked into the error: {message}");

    // Access restored: the next call works, the session was never lost.
    rule.refuse.store(false, Ordering::SeqCst);
    assert_eq!(
        c.call_tool("t_echo", json!({"message": "back"})).await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn a_wrong_client_secret_leaves_the_backend_out_and_says_why() {
    let idp = OidcProvider::start().await;
    let (backend, rule) = guarded_backend(&idp).await;
    let auth = token_client("client_credentials", &idp).replace(GATEWAY.1, "wrong-secret");
    let plain = TestBackend::start("p").await;
    let config = format!(
        "{}  - name: p\n    url: {}\n",
        backend_yaml(&backend.url, &auth),
        plain.url
    );
    let log = std::env::temp_dir().join(format!("vmcp-backend-auth-{}.log", std::process::id()));
    let vmcp = VmcpProcess::start_logged(free_port(), &config, &[("RUST_LOG", "debug")], &log).await;
    let mut c = Client::new(&vmcp.url);
    let init = c.initialize().await;
    let instructions = init.instructions();
    assert!(instructions.contains("invalid_client"), "{init:?}");
    assert!(!instructions.contains("wrong-secret"), "{instructions}");
    assert_eq!(
        c.call_tool("p_echo", json!({"message": "p"})).await.status,
        StatusCode::OK
    );
    assert!(
        rule.tokens().is_empty(),
        "no request reached the backend without a token"
    );
    let logs = std::fs::read_to_string(&log).unwrap_or_default();
    let _ = std::fs::remove_file(&log);
    assert!(logs.contains("invalid_client"), "the refusal is logged");
    assert!(!logs.contains("wrong-secret"), "the secret reached the log");
}
