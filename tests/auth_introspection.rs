//! Opaque access tokens (`auth.inbound.introspection`, RFC 7662), against a
//! real OpenID provider (npm `oidc-provider`) that issues opaque tokens,
//! introspects and revokes them: tokens judged on the issuer's answer, each
//! asked about once, revocation felt within `cache_ttl`, and an issuer that
//! hangs or dies answered with 503 without holding up tokens already known.

mod support;

use std::time::Duration;

use http::StatusCode;
use serde_json::json;
use support::deps::free_port;
use support::oidc::OidcProvider;
use support::process::VmcpProcess;
use support::proxy::FreezableProxy;
use support::{Client, Replica, TestBackend};

const CLIENT: (&str, &str) = ("vmcp-test", "vmcp-test-secret");
const OTHER: (&str, &str) = ("other-client", "other-secret");
/// vmcp's own client at the provider (any confidential client may introspect).
const GATEWAY: (&str, &str) = ("vmcp-gateway", "vmcp-gateway-secret");

/// `auth.inbound` with introspection as `GATEWAY`; `extra` adds keys to
/// `introspection` (six spaces in).
fn auth_yaml(idp: &OidcProvider, audience: &str, inbound: &str, extra: &str) -> String {
    format!(
        "auth:\n  inbound:\n    issuer: {}\n    audience: {audience}\n    leeway: 0s\n{inbound}    introspection:\n      client_id: {}\n      client_secret: {}\n{extra}",
        idp.issuer(),
        GATEWAY.0,
        GATEWAY.1
    )
}

fn introspections(vmcp: &Replica, outcome: &str) -> f64 {
    vmcp.metric(&format!("vmcp_auth_introspections_total{{outcome=\"{outcome}\"}}"))
}

async fn echo(client: &Client, message: &str) -> support::client::Reply {
    client.call_tool("t_echo", json!({ "message": message })).await
}

#[tokio::test]
async fn opaque_tokens_are_introspected_once_and_judged_like_jwts() {
    let idp = OidcProvider::start_opaque().await;
    let backend = TestBackend::start("t").await;
    let vmcp = Replica::start_for_audience(&backend.url, |aud| {
        auth_yaml(&idp, aud, "    required_scopes: [\"mcp:tools\"]\n", "")
    })
    .await;
    let token = idp.token(CLIENT.0, CLIENT.1, &vmcp.url, "mcp:tools").await;
    assert_ne!(token.split('.').count(), 3, "the provider issued a JWT: {token}");

    // Accepted, and asked about once however many requests carry it.
    let mut client = vmcp.client_with_token(&token);
    client.initialize().await;
    for i in 0..3 {
        let reply = echo(&client, &format!("call {i}")).await;
        assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    }
    assert_eq!(introspections(&vmcp, "accepted"), 1.0);

    // Refused on the issuer's word: 401 invalid_token with the reason, never the token.
    let elsewhere = idp
        .token(CLIENT.0, CLIENT.1, "http://127.0.0.1:9/mcp", "mcp:tools")
        .await;
    let cases = [
        ("another audience", elsewhere, "audience"),
        ("made up", "d2hhdGV2ZXI-not-a-token".to_owned(), "not active"),
    ];
    for (what, bad, reason) in &cases {
        let mut c = vmcp.client_with_token(bad);
        c.session = client.session.clone();
        for _ in 0..2 {
            let reply = echo(&c, "x").await;
            assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{what}: {reply:?}");
            let header = reply.challenge();
            assert!(header.contains("error=\"invalid_token\""), "{what}: {header}");
            assert!(header.contains(reason), "{what}: {header}");
            assert!(!header.contains(bad.as_str()) && !reply.body.to_string().contains(bad.as_str()));
        }
    }
    // Each refusal asked once too: a client retrying a bad token does not reach the issuer again.
    assert_eq!(introspections(&vmcp, "refused"), 2.0);

    // A token without the required scope: 403 insufficient_scope.
    let unscoped = vmcp.client_with_token(&idp.token(CLIENT.0, CLIENT.1, &vmcp.url, "").await);
    let reply = unscoped.request("ping", json!({})).await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN, "{reply:?}");
    assert!(
        reply.challenge().contains("insufficient_scope"),
        "{}",
        reply.challenge()
    );

    // The session is bound to the subject (the client, for a client's own
    // token): another client's valid token gets 404, a fresh token of the
    // same client carries on.
    let mut intruder = vmcp.client_with_token(&idp.token(OTHER.0, OTHER.1, &vmcp.url, "mcp:tools").await);
    intruder.session = client.session.clone();
    assert_eq!(echo(&intruder, "x").await.status, StatusCode::NOT_FOUND);
    client.token = Some(idp.token(CLIENT.0, CLIENT.1, &vmcp.url, "mcp:tools").await);
    let reply = echo(&client, "fresh token").await;
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    assert_eq!(introspections(&vmcp, "unavailable"), 0.0);
}

#[tokio::test]
async fn a_revoked_token_stops_working_within_cache_ttl() {
    let idp = OidcProvider::start_opaque().await;
    let backend = TestBackend::start("t").await;
    let vmcp = Replica::start_for_audience(&backend.url, |aud| auth_yaml(&idp, aud, "", "      cache_ttl: 1s\n")).await;
    let token = idp.token(CLIENT.0, CLIENT.1, &vmcp.url, "").await;
    let mut client = vmcp.client_with_token(&token);
    client.initialize().await;
    assert_eq!(echo(&client, "before").await.status, StatusCode::OK);

    idp.revoke(CLIENT.0, CLIENT.1, &token).await;
    support::eventually("the revoked token is refused", || async {
        echo(&client, "after").await.status == StatusCode::UNAUTHORIZED
    })
    .await;
    let reply = echo(&client, "after").await;
    assert!(reply.challenge().contains("not active"), "{}", reply.challenge());
    assert_eq!(introspections(&vmcp, "accepted"), 1.0);

    // The session outlives the token: a new one for the same subject carries on.
    client.token = Some(idp.token(CLIENT.0, CLIENT.1, &vmcp.url, "").await);
    assert_eq!(echo(&client, "new token").await.status, StatusCode::OK);
}

#[tokio::test]
async fn a_hung_introspection_endpoint_gets_503_within_the_timeout_and_holds_up_no_known_token() {
    let idp = OidcProvider::start_opaque().await;
    let proxy = FreezableProxy::start(&format!("127.0.0.1:{}", idp.port)).await;
    let backend = TestBackend::start("t").await;
    let vmcp = Replica::start_for_audience(&backend.url, |aud| {
        auth_yaml(
            &idp,
            aud,
            "    fetch_timeout: 2s\n",
            &format!(
                "      endpoint: http://{}/token/introspection\n      max_concurrent: 2\n",
                proxy.addr
            ),
        )
    })
    .await;
    let mut known = vmcp.client_with_token(&idp.token(CLIENT.0, CLIENT.1, &vmcp.url, "").await);
    known.initialize().await;
    let mut fresh = Vec::new();
    for _ in 0..6 {
        fresh.push(idp.token(CLIENT.0, CLIENT.1, &vmcp.url, "").await);
    }

    // The endpoint hangs: six new tokens wait on two introspections in flight.
    proxy.freeze();
    let started = std::time::Instant::now();
    let waiting: Vec<_> = fresh
        .iter()
        .map(|t| {
            let mut c = vmcp.client_with_token(t);
            c.session = known.session.clone();
            tokio::spawn(async move { echo(&c, "new").await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(200)).await;
    // A token answered before is served meanwhile: it waits on nothing.
    let reply = echo(&known, "known").await;
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    assert!(
        waiting.iter().all(|w| !w.is_finished()),
        "a new token was answered although the endpoint hangs"
    );
    for w in waiting {
        let reply = w.await.expect("request task");
        assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE, "{reply:?}");
        assert!(
            reply.body.to_string().contains("cannot verify access tokens now"),
            "{reply:?}"
        );
    }
    // Each waited at most fetch_timeout for a permit and fetch_timeout for its answer.
    assert!(started.elapsed() < Duration::from_secs(10), "{:?}", started.elapsed());
    assert_eq!(introspections(&vmcp, "unavailable"), 6.0);

    // The endpoint recovers: new tokens are accepted again.
    proxy.thaw();
    let mut thawed = vmcp.client_with_token(&fresh[0]);
    thawed.session = known.session.clone();
    let reply = echo(&thawed, "thawed").await;
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
}

#[tokio::test]
async fn a_dead_issuer_gets_503_once_answers_are_too_old_and_a_restarted_one_is_asked_again() {
    let mut idp = OidcProvider::start_opaque().await;
    let backend = TestBackend::start("t").await;
    let vmcp = Replica::start_for_audience(&backend.url, |aud| auth_yaml(&idp, aud, "", "      cache_ttl: 1s\n")).await;
    let token = idp.token(CLIENT.0, CLIENT.1, &vmcp.url, "").await;
    let unseen = idp.token(CLIENT.0, CLIENT.1, &vmcp.url, "").await;
    let mut client = vmcp.client_with_token(&token);
    client.initialize().await;

    idp.stop().await;
    // A token never answered cannot be judged: 503, not a guess.
    let mut stranger = vmcp.client_with_token(&unseen);
    stranger.session = client.session.clone();
    let reply = echo(&stranger, "x").await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE, "{reply:?}");
    // Nor one whose answer is older than cache_ttl.
    support::eventually("the known token's answer runs out", || async {
        echo(&client, "late").await.status == StatusCode::SERVICE_UNAVAILABLE
    })
    .await;

    // The provider restarts with no memory of the tokens it issued: they
    // are inactive now, and new ones work, in the same session.
    idp.restart().await;
    let reply = echo(&client, "forgotten").await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{reply:?}");
    client.token = Some(idp.token(CLIENT.0, CLIENT.1, &vmcp.url, "").await);
    assert_eq!(echo(&client, "back").await.status, StatusCode::OK);
}

#[tokio::test]
async fn wrong_client_credentials_are_warned_once_and_neither_secret_nor_token_reaches_the_log() {
    let idp = OidcProvider::start_opaque().await;
    let backend = TestBackend::start("t").await;
    let port = free_port();
    let audience = format!("http://127.0.0.1:{port}/mcp");
    let secret = "wrong-but-secret-7f3a9c";
    let yaml = support::config_yaml(
        &[("t", &backend.url)],
        &format!(
            "auth:\n  inbound:\n    issuer: {}\n    audience: {audience}\n    introspection:\n      client_id: {}\n      client_secret: \"${{INTROSPECTION_SECRET}}\"\n",
            idp.issuer(),
            GATEWAY.0
        ),
    );
    let log = std::env::temp_dir().join(format!("vmcp-introspection-{port}.log"));
    let vmcp = VmcpProcess::start_logged(
        port,
        &yaml,
        &[("INTROSPECTION_SECRET", secret), ("RUST_LOG", "debug")],
        &log,
    )
    .await;
    let token = idp.token(CLIENT.0, CLIENT.1, &audience, "").await;
    let mut client = Client::new(&vmcp.url);
    client.token = Some(token.clone());
    for _ in 0..3 {
        let reply = client
            .post_raw(
                json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {}}).to_string(),
                &[],
            )
            .await;
        // The issuer refuses vmcp's credentials: not the caller's fault.
        assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE, "{reply:?}");
        assert!(reply.body.to_string().contains("invalid_client"), "{reply:?}");
        assert!(!reply.body.to_string().contains(secret));
    }
    drop(vmcp);
    let text = std::fs::read_to_string(&log).expect("vmcp's log");
    let _ = std::fs::remove_file(&log);
    // Warned once, not once per request.
    assert_eq!(
        text.matches("the introspection endpoint refuses vmcp's client credentials")
            .count(),
        1,
        "{text}"
    );
    assert!(!text.contains(secret), "the client secret is in the log");
    assert!(!text.contains(&token), "the access token is in the log");
}
