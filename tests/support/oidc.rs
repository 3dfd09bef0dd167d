//! A real OpenID provider (npm `oidc-provider`, OpenID Certified) on a free
//! port, run by `tests/support/oidc/provider.mjs`: it issues RS256 JWT access
//! tokens by the client credentials grant, `aud` being the requested `resource`
//! (RFC 8707). Clients: `vmcp-test` / `vmcp-test-secret` and `other-client` /
//! `other-secret`; scopes `mcp:tools mcp:admin`; any resource URL on 127.0.0.1.
//!
//! [`OidcProvider::start_opaque`] issues opaque access tokens instead, which
//! a resource server learns about by introspection (RFC 7662); any token can
//! be revoked (RFC 7009) with [`OidcProvider::revoke`]. Tokens live in the
//! provider's memory: a restart forgets every opaque token it issued.
//!
//! Key rotation: the private JWKS lives in a file of the provider's temp dir;
//! the first key signs and every key is published at `jwks_uri`.
//! [`OidcProvider::restart_rotated`] restarts the provider on the same port
//! with `ROTATE=1`, which puts a new key first: new tokens carry the new `kid`,
//! and tokens signed before still validate against the published old key.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// How long node may take to start the provider (it may generate an RSA key).
const READY_TIMEOUT: Duration = Duration::from_secs(30);

pub struct OidcProvider {
    pub port: u16,
    child: Option<Child>,
    /// Holds `keys.json` (the private JWKS) and `stderr.log`; removed on drop.
    dir: PathBuf,
    ttl: Option<Duration>,
    opaque: bool,
    token_endpoint: String,
    jwks_uri: String,
    revocation_endpoint: String,
}

impl OidcProvider {
    /// Starts a provider whose access tokens live 300 s.
    pub async fn start() -> Self {
        Self::start_inner(None, false).await
    }

    /// Starts a provider whose access tokens live `ttl` (whole seconds, at least 1).
    pub async fn start_with_ttl(ttl: Duration) -> Self {
        Self::start_inner(Some(ttl), false).await
    }

    /// Starts a provider whose access tokens are opaque (300 s).
    pub async fn start_opaque() -> Self {
        Self::start_inner(None, true).await
    }

    async fn start_inner(ttl: Option<Duration>, opaque: bool) -> Self {
        let port = super::deps::free_port();
        let dir = std::env::temp_dir().join(format!("vmcp-oidc-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create the provider's temp dir");
        let mut provider = Self {
            port,
            child: None,
            dir,
            ttl,
            opaque,
            token_endpoint: String::new(),
            jwks_uri: String::new(),
            revocation_endpoint: String::new(),
        };
        provider.spawn(false).await;
        let discovery: Value = super::http()
            .get(format!("{}/.well-known/openid-configuration", provider.issuer()))
            .send()
            .await
            .expect("discovery request")
            .json()
            .await
            .expect("discovery document");
        let endpoint = |name: &str| {
            discovery[name]
                .as_str()
                .unwrap_or_else(|| panic!("discovery has no {name}: {discovery}"))
                .to_owned()
        };
        provider.token_endpoint = endpoint("token_endpoint");
        provider.jwks_uri = endpoint("jwks_uri");
        provider.revocation_endpoint = endpoint("revocation_endpoint");
        provider
    }

    /// `http://127.0.0.1:PORT`, the `iss` of its tokens.
    pub fn issuer(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Where the public keys are published (the same across restarts).
    pub fn jwks_uri(&self) -> String {
        self.jwks_uri.clone()
    }

    /// The published JWKS (`{"keys": [...]}`, public parts only).
    pub async fn jwks(&self) -> Value {
        super::http()
            .get(&self.jwks_uri)
            .send()
            .await
            .expect("jwks request")
            .json()
            .await
            .expect("jwks document")
    }

    /// A client credentials access token (a JWT) for `resource`, with `scope`
    /// (space-separated, may be empty); panics unless the provider issues one.
    pub async fn token(&self, client_id: &str, secret: &str, resource: &str, scope: &str) -> String {
        let (status, body) = self.token_response(client_id, secret, resource, scope).await;
        assert!(status.is_success(), "token request refused: {status} {body}");
        body["access_token"]
            .as_str()
            .unwrap_or_else(|| panic!("no access_token in {body}"))
            .to_owned()
    }

    /// The token endpoint's status and JSON answer, for tests of refusals.
    pub async fn token_response(
        &self,
        client_id: &str,
        secret: &str,
        resource: &str,
        scope: &str,
    ) -> (reqwest::StatusCode, Value) {
        let encode = |v: &str| utf8_percent_encode(v, NON_ALPHANUMERIC).to_string();
        let mut form = format!("grant_type=client_credentials&resource={}", encode(resource));
        if !scope.is_empty() {
            form.push_str(&format!("&scope={}", encode(scope)));
        }
        self.post_form(client_id, secret, form).await
    }

    /// An RFC 8693 token exchange by `client_id`: the status and JSON answer.
    pub async fn exchange_response(
        &self,
        client_id: &str,
        secret: &str,
        subject_token: &str,
        resource: &str,
    ) -> (reqwest::StatusCode, Value) {
        let encode = |v: &str| utf8_percent_encode(v, NON_ALPHANUMERIC).to_string();
        let form = format!(
            "grant_type={}&subject_token={}&subject_token_type={}&resource={}",
            encode("urn:ietf:params:oauth:grant-type:token-exchange"),
            encode(subject_token),
            encode("urn:ietf:params:oauth:token-type:access_token"),
            encode(resource)
        );
        self.post_form(client_id, secret, form).await
    }

    /// POSTs `form` to the token endpoint as `client_id` (client_secret_basic).
    async fn post_form(&self, client_id: &str, secret: &str, form: String) -> (reqwest::StatusCode, Value) {
        let encode = |v: &str| utf8_percent_encode(v, NON_ALPHANUMERIC).to_string();
        let response = super::http()
            .post(&self.token_endpoint)
            .basic_auth(encode(client_id), Some(encode(secret)))
            .header(http::header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(form)
            .send()
            .await
            .expect("token request");
        let status = response.status();
        (status, response.json().await.expect("token endpoint answers JSON"))
    }

    /// Revokes `token` (RFC 7009) as `client_id` (client_secret_basic).
    pub async fn revoke(&self, client_id: &str, secret: &str, token: &str) {
        let encode = |v: &str| utf8_percent_encode(v, NON_ALPHANUMERIC).to_string();
        let response = super::http()
            .post(&self.revocation_endpoint)
            .basic_auth(encode(client_id), Some(encode(secret)))
            .header(http::header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(format!("token={}&token_type_hint=access_token", encode(token)))
            .send()
            .await
            .expect("revocation request");
        assert!(
            response.status().is_success(),
            "revocation refused: {}",
            response.status()
        );
    }

    /// Starts the provider again after [`OidcProvider::stop`], on the same
    /// port with the same keys (opaque tokens issued before are forgotten).
    pub async fn restart(&mut self) {
        self.stop().await;
        self.spawn(false).await;
    }

    /// Kills the provider (SIGKILL) and waits until it is gone.
    pub async fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill().await;
        }
    }

    /// Restarts the provider on the same port with a new signing key, the old
    /// keys still published after it.
    pub async fn restart_rotated(&mut self) {
        self.stop().await;
        self.spawn(true).await;
    }

    /// Runs `provider.mjs` on Node 22 and waits for its `ready` line.
    async fn spawn(&mut self, rotate: bool) {
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/support/oidc/provider.mjs");
        let log = self.dir.join("stderr.log");
        let stderr = std::fs::File::create(&log).expect("create the provider's log");
        let mut command = Command::new(super::deps::node22());
        command
            .arg(&script)
            .env("PORT", self.port.to_string())
            .env("KEYS_FILE", self.dir.join("keys.json"))
            .env("NODE_DEPS", super::deps::oidc_provider_deps())
            .env("ROTATE", if rotate { "1" } else { "0" })
            .env("OPAQUE", if self.opaque { "1" } else { "0" });
        if let Some(ttl) = self.ttl {
            command.env("ACCESS_TOKEN_TTL", ttl.as_secs().max(1).to_string());
        }
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(stderr))
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("Node 22 does not run ({e}): run scripts/test.sh (it installs it)"));
        let mut lines = BufReader::new(child.stdout.take().expect("piped stdout")).lines();
        let issuer = self.issuer();
        let ready = tokio::time::timeout(READY_TIMEOUT, async {
            while let Ok(Some(line)) = lines.next_line().await {
                if line.strip_prefix("ready ") == Some(issuer.as_str()) {
                    return true;
                }
            }
            false
        })
        .await;
        if !matches!(ready, Ok(true)) {
            let _ = child.kill().await;
            let why = match ready {
                Err(_) => format!("was not ready within {} s", READY_TIMEOUT.as_secs()),
                Ok(_) => "exited".to_owned(),
            };
            panic!(
                "oidc-provider (node {}) on port {} {why}; its stderr:\n{}",
                script.display(),
                self.port,
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        // The provider's notices go on to stdout: drain it so that it never blocks.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        self.child = Some(child);
    }
}

impl Drop for OidcProvider {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.start_kill();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
