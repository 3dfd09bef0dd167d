//! The admin API (issue 13 item 4) on real replicas sharing one Redis:
//! paged and filtered listing, a session's metadata without secrets,
//! deleting one session and revoking a subject's sessions on every replica,
//! its own credential, its absence from the MCP listener, and the
//! `vmcp sessions` CLI (the built binary) against it.

mod support;

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use http::StatusCode;
use serde_json::{json, Value};
use support::deps::free_port;
use support::redis::RedisServer;
use support::{Client, Replica, TestBackend};
use vmcp::session::{Caller, ResolveError};

const TOKEN: &str = "admin-token-0123456789";
const ISSUER: &str = "https://idp.example";

/// A replica with `admin_listen` on a free port and the admin token from the environment.
struct Node {
    replica: Replica,
    admin: String,
}

async fn node(id: &str, backend: &TestBackend, redis: Option<&RedisServer>, admin_yaml: &str) -> Node {
    let port = free_port();
    let mut extra = format!("replica_id: {id}\nadmin_listen: 127.0.0.1:{port}\n{admin_yaml}");
    if let Some(redis) = redis {
        extra.push_str(&format!(
            "store:\n  kind: redis\n  touch_interval: 200ms\n  redis: {{ url: \"{}\", key_prefix: \"adm:\" }}\n",
            redis.url()
        ));
    }
    let yaml = support::config_yaml(&[("b", &backend.url)], &extra);
    let env = HashMap::from([("VMCP_ADMIN_TOKEN".to_owned(), TOKEN.to_owned())]);
    let replica = Replica::start_env(&yaml, env).await;
    let admin = format!("http://127.0.0.1:{port}");
    support::eventually("the admin listener is up", || async {
        support::http().get(format!("{admin}/healthz")).send().await.is_ok()
    })
    .await;
    Node { replica, admin }
}

const WITH_TOKEN: &str = "admin:\n  token: \"${VMCP_ADMIN_TOKEN}\"\n";

async fn call(method: reqwest::Method, url: &str, token: Option<&str>, body: Option<Value>) -> (StatusCode, Value) {
    let mut req = support::http().request(method, url);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    let response = req.send().await.expect("admin request sent");
    let status = response.status();
    let text = response.text().await.unwrap_or_default();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

async fn get(node: &Node, path: &str) -> (StatusCode, Value) {
    call(
        reqwest::Method::GET,
        &format!("{}{path}", node.admin),
        Some(TOKEN),
        None,
    )
    .await
}

/// Every session id a listing returns, following `next_cursor` with pages of `limit`.
async fn all_ids(node: &Node, query: &str, limit: usize) -> BTreeSet<String> {
    let mut ids = BTreeSet::new();
    let mut cursor: Option<String> = None;
    for _ in 0..100 {
        let after = cursor.as_ref().map(|c| format!("&cursor={c}")).unwrap_or_default();
        let (status, page) = get(node, &format!("/admin/sessions?limit={limit}{query}{after}")).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        let sessions = page["sessions"].as_array().expect("sessions");
        assert!(sessions.len() <= limit, "{page}");
        ids.extend(sessions.iter().map(|s| s["id"].as_str().expect("id").to_owned()));
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => return ids,
        }
    }
    panic!("the listing never ended");
}

async fn session_with_token(replica: &Replica, token: &str) -> Client {
    let mut c = replica.client();
    c.token = Some(token.to_owned());
    c.initialize().await;
    c
}

/// A session created by `subject` (as `auth.inbound` would name it), on `replica`.
async fn subject_session(replica: &Replica, subject: &str) -> String {
    let init =
        json!({"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}});
    let caller = Caller::Subject {
        issuer: ISSUER,
        subject,
    };
    let session = replica
        .app
        .manager
        .create(init, "2025-06-18".into(), caller, None)
        .await
        .expect("session created");
    session.id().to_owned()
}

/// Whether `subject`'s session `id` is gone on `replica` (what `/mcp` asks).
async fn gone(replica: &Replica, id: &str, subject: &str) -> bool {
    let caller = Caller::Subject {
        issuer: ISSUER,
        subject,
    };
    matches!(
        replica.app.manager.resolve(id, caller, None).await,
        Err(ResolveError::NotFound)
    )
}

/// Polls `f` for up to a second.
async fn within_a_second<F, Fut>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(1) {
        if f().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("not within a second: {what}");
}

#[tokio::test]
async fn sessions_are_listed_shown_and_deleted_across_replicas() {
    let redis = RedisServer::start().await;
    let backend = TestBackend::start("b").await;
    let a = node("ra", &backend, Some(&redis), WITH_TOKEN).await;
    let b = node("rb", &backend, Some(&redis), WITH_TOKEN).await;
    let mut on_a = Vec::new();
    for i in 0..3 {
        on_a.push(session_with_token(&a.replica, &format!("Bearer user-{i}-secret")).await);
    }
    let on_b = [
        session_with_token(&b.replica, "Bearer user-b-secret").await,
        session_with_token(&b.replica, "Bearer user-c-secret").await,
    ];

    // Either replica lists every session, page by page.
    let everything: BTreeSet<String> = on_a.iter().chain(&on_b).map(|c| c.session.clone().unwrap()).collect();
    assert_eq!(all_ids(&a, "", 2).await, everything);
    assert_eq!(all_ids(&b, "", 500).await, everything);
    let from_b: BTreeSet<String> = on_b.iter().map(|c| c.session.clone().unwrap()).collect();
    assert_eq!(all_ids(&a, "&replica=rb", 1).await, from_b);
    assert_eq!(all_ids(&a, "&backend=b", 3).await, everything);
    assert!(all_ids(&a, "&backend=nope", 2).await.is_empty());
    assert_eq!(get(&a, "/admin/sessions?limit=0").await.0, StatusCode::BAD_REQUEST);
    assert_eq!(
        get(&a, "/admin/sessions?cursor=garbage").await.0,
        StatusCode::BAD_REQUEST
    );

    // One session: who and where, no secrets.
    let victim = on_a[0].session.clone().unwrap();
    let (status, shown) = get(&b, &format!("/admin/sessions/{victim}")).await;
    assert_eq!(status, StatusCode::OK, "{shown}");
    assert_eq!(shown["id"], victim.as_str());
    assert_eq!(shown["replica"], "ra");
    assert_eq!(shown["authenticated"], true);
    assert_eq!(shown["client"]["name"], "vmcp-tests");
    assert_eq!(shown["backends"][0]["name"], "b");
    assert_eq!(shown["backends"][0]["transport"], "streamable_http");
    let text = shown.to_string();
    for secret in ["secret", &backend.url, "identity", "s:", "t:"] {
        assert!(!text.contains(secret), "`{secret}` shown: {text}");
    }

    // Deleted through B's admin API: the session is gone on both replicas.
    let (status, _) = call(
        reqwest::Method::DELETE,
        &format!("{}/admin/sessions/{victim}", b.admin),
        Some(TOKEN),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let via_b = on_a[0].via(&b.replica.url);
    within_a_second("the deleted session 404s on both replicas", || async {
        on_a[0].call_tool("b_echo", json!({"message": "x"})).await.status == StatusCode::NOT_FOUND
            && via_b.call_tool("b_echo", json!({"message": "x"})).await.status == StatusCode::NOT_FOUND
    })
    .await;
    assert_eq!(
        on_a[1].call_tool("b_echo", json!({"message": "x"})).await.status,
        StatusCode::OK,
        "the others live on"
    );
    assert_eq!(
        get(&a, &format!("/admin/sessions/{victim}")).await.0,
        StatusCode::NOT_FOUND
    );
    let (status, body) = call(
        reqwest::Method::DELETE,
        &format!("{}/admin/sessions/{victim}", a.admin),
        Some(TOKEN),
        None,
    )
    .await;
    assert_eq!((status, body["error"].is_string()), (StatusCode::NOT_FOUND, true));
    assert_eq!(all_ids(&b, "", 10).await.len(), 4);
}

#[tokio::test]
async fn revoking_a_subject_ends_its_sessions_on_every_replica() {
    let mut redis = RedisServer::start().await;
    let backend = TestBackend::start("b").await;
    let a = node("ra", &backend, Some(&redis), WITH_TOKEN).await;
    let b = node("rb", &backend, Some(&redis), WITH_TOKEN).await;
    let alice = [
        subject_session(&a.replica, "alice").await,
        subject_session(&a.replica, "alice").await,
        subject_session(&b.replica, "alice").await,
    ];
    let bob = subject_session(&b.replica, "bob").await;
    // Each replica serves the other's sessions (rebuilt from the store).
    for id in &alice {
        assert!(!gone(&a.replica, id, "alice").await && !gone(&b.replica, id, "alice").await);
    }

    let listed = all_ids(&a, "&subject=alice", 2).await;
    assert_eq!(listed, alice.iter().cloned().collect());
    let (_, shown) = get(&a, &format!("/admin/sessions/{bob}")).await;
    assert_eq!(shown["subject"], json!({"issuer": ISSUER, "subject": "bob"}));

    let revoke = format!("{}/admin/revoke", a.admin);
    let (status, body) = call(
        reqwest::Method::POST,
        &revoke,
        Some(TOKEN),
        Some(json!({"issuer": ISSUER, "subject": "alice"})),
    )
    .await;
    assert_eq!(
        (status, body.clone()),
        (StatusCode::OK, json!({"revoked": 3})),
        "{body}"
    );
    within_a_second("every session of alice 404s on both replicas", || async {
        for id in &alice {
            if !gone(&a.replica, id, "alice").await || !gone(&b.replica, id, "alice").await {
                return false;
            }
        }
        true
    })
    .await;
    assert!(!gone(&a.replica, &bob, "bob").await && !gone(&b.replica, &bob, "bob").await);
    assert!(all_ids(&b, "&subject=alice", 10).await.is_empty());
    let (status, _) = call(
        reqwest::Method::POST,
        &revoke,
        Some(TOKEN),
        Some(json!({"subject": "bob"})),
    )
    .await;
    assert_eq!(
        status,
        StatusCode::BAD_REQUEST,
        "no issuer and no auth.inbound to default to"
    );
    let (status, _) = call(reqwest::Method::POST, &revoke, Some(TOKEN), Some(json!({"who": "bob"}))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    // The store down: 503, said in JSON.
    redis.stop().await;
    let (status, body) = get(&a, "/admin/sessions").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(body["error"].is_string());
}

#[tokio::test]
async fn the_admin_api_needs_its_credential_and_lives_on_the_admin_listener_only() {
    let backend = TestBackend::start("b").await;
    let on = node("r", &backend, None, WITH_TOKEN).await;
    let sessions = format!("{}/admin/sessions", on.admin);
    for token in [None, Some("wrong-token-0123456789"), Some("")] {
        let response = {
            let mut req = support::http().get(&sessions);
            if let Some(t) = token {
                req = req.bearer_auth(t);
            }
            req.send().await.unwrap()
        };
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{token:?}");
        let challenge = response.headers()["www-authenticate"].to_str().unwrap().to_owned();
        assert!(challenge.starts_with("Bearer"), "{challenge}");
        let body: Value = response.json().await.unwrap();
        assert!(!body.to_string().contains(TOKEN));
    }
    assert_eq!(get(&on, "/admin/sessions").await.0, StatusCode::OK);
    assert_eq!(get(&on, "/admin/nothing").await.0, StatusCode::NOT_FOUND);
    let (status, _) = call(reqwest::Method::PUT, &sessions, Some(TOKEN), None).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    // The MCP listener has no admin routes, whatever the credential.
    let main = format!("{}/admin/sessions", on.replica.base);
    assert_eq!(
        call(reqwest::Method::GET, &main, Some(TOKEN), None).await.0,
        StatusCode::NOT_FOUND
    );

    // Without a credential configured the API is off.
    let off = node("r", &backend, None, "").await;
    let (status, body) = get(&off, "/admin/sessions").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(body["error"].as_str().unwrap().contains("off"), "{body}");
}

/// Runs `vmcp sessions ARGS` against `node`; (exit success, stdout, stderr).
async fn cli(node: &Node, token: &str, args: &[&str]) -> (bool, String, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_vmcp"))
        .arg("sessions")
        .args(args)
        .env("VMCP_ADMIN_URL", &node.admin)
        .env("VMCP_ADMIN_TOKEN", token)
        .output()
        .await
        .expect("vmcp runs");
    let text = |b: Vec<u8>| String::from_utf8_lossy(&b).into_owned();
    (out.status.success(), text(out.stdout), text(out.stderr))
}

#[tokio::test]
async fn the_cli_lists_shows_deletes_and_revokes() {
    let backend = TestBackend::start("b").await;
    let node = node("cli-replica", &backend, None, WITH_TOKEN).await;
    let alice = [
        subject_session(&node.replica, "alice").await,
        subject_session(&node.replica, "alice").await,
    ];
    let bob = subject_session(&node.replica, "bob").await;

    let (ok, out, err) = cli(&node, TOKEN, &["list", "--json", "--limit", "2", "--all"]).await;
    assert!(ok, "{err}");
    let listed: BTreeSet<String> = out
        .lines()
        .flat_map(|line| {
            let page: Value = serde_json::from_str(line).expect("one JSON page per line");
            page["sessions"].as_array().unwrap().clone()
        })
        .map(|s| s["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(listed.len(), 3);
    let (ok, table, _) = cli(&node, TOKEN, &["list", "--subject", "bob"]).await;
    assert!(
        ok && table.starts_with("ID") && table.contains(&bob) && !table.contains(&alice[0]),
        "{table}"
    );

    let (ok, shown, _) = cli(&node, TOKEN, &["show", &bob]).await;
    let shown: Value = serde_json::from_str(&shown).expect("JSON");
    assert!(ok);
    assert_eq!(shown["subject"]["subject"], "bob");
    assert_eq!(shown["replica"], "cli-replica");

    let (ok, _, err) = cli(&node, TOKEN, &["delete", &bob]).await;
    assert!(ok, "{err}");
    assert!(gone(&node.replica, &bob, "bob").await);
    let (ok, _, err) = cli(&node, TOKEN, &["delete", &bob]).await;
    assert!(!ok && err.contains("404"), "{err}");

    let (ok, out, err) = cli(&node, TOKEN, &["revoke", "--subject", "alice", "--issuer", ISSUER]).await;
    assert!(ok, "{err}");
    assert_eq!(serde_json::from_str::<Value>(&out).unwrap(), json!({"revoked": 2}));
    for id in &alice {
        assert!(gone(&node.replica, id, "alice").await);
    }

    let (ok, _, err) = cli(&node, "wrong-token-0123456789", &["list"]).await;
    assert!(!ok && err.contains("401"), "{err}");
    assert!(!err.contains("wrong-token"), "the token is never printed: {err}");
}

/// With real tokens from a real OpenID provider: the admin credential is an
/// access token with the admin scope, and revoking a subject ends the
/// sessions its tokens opened over HTTP, on both replicas.
#[tokio::test]
async fn a_scoped_token_revokes_a_subjects_sessions_over_http() {
    let idp = support::oidc::OidcProvider::start().await;
    let redis = RedisServer::start().await;
    let backend = TestBackend::start("b").await;
    let audience = format!("http://127.0.0.1:{}/mcp", free_port());
    let yaml = format!(
        "admin:\n  scope: mcp:admin\nauth:\n  inbound:\n    issuer: {}\n    audience: {audience}\n",
        idp.issuer()
    );
    let (a, b) = (
        node("ra", &backend, Some(&redis), &yaml).await,
        node("rb", &backend, Some(&redis), &yaml).await,
    );
    let alice_token = idp.token("vmcp-test", "vmcp-test-secret", &audience, "").await;
    let bob_token = idp.token("other-client", "other-secret", &audience, "").await;
    let alice = [
        session_with_token(&a.replica, &alice_token).await,
        session_with_token(&b.replica, &alice_token).await,
    ];
    let bob = session_with_token(&b.replica, &bob_token).await;

    // The admin credential: a token with the scope, not any valid token.
    let admin = idp.token("vmcp-test", "vmcp-test-secret", &audience, "mcp:admin").await;
    let list = format!("{}/admin/sessions?subject=vmcp-test", a.admin);
    let (status, _) = call(reqwest::Method::GET, &list, Some(&alice_token), None).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, page) = call(reqwest::Method::GET, &list, Some(&admin), None).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    let listed: BTreeSet<&str> = page["sessions"]
        .as_array()
        .expect("sessions")
        .iter()
        .filter_map(|s| s["id"].as_str())
        .collect();
    let ids: BTreeSet<&str> = alice.iter().filter_map(|c| c.session.as_deref()).collect();
    assert_eq!(listed, ids);
    assert!(!page.to_string().contains(&alice_token), "a token in the listing");

    let (status, body) = call(
        reqwest::Method::POST,
        &format!("{}/admin/revoke", b.admin),
        Some(&admin),
        Some(json!({"subject": "vmcp-test"})),
    )
    .await;
    assert_eq!((status, body["revoked"].as_u64()), (StatusCode::OK, Some(2)), "{body}");
    // Each of alice's sessions, entering at either replica, 404s within a second.
    within_a_second("alice's sessions 404 on both replicas", || {
        let clients: Vec<Client> = alice
            .iter()
            .flat_map(|c| [c.via(&a.replica.url), c.via(&b.replica.url)])
            .map(|mut c| {
                c.token = Some(alice_token.clone());
                c
            })
            .collect();
        async move {
            for c in clients {
                if c.request("ping", json!({})).await.status != StatusCode::NOT_FOUND {
                    return false;
                }
            }
            true
        }
    })
    .await;
    let mut bob = bob.via(&a.replica.url);
    bob.token = Some(bob_token);
    assert_eq!(bob.request("ping", json!({})).await.status, StatusCode::OK);
}
