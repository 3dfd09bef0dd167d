use std::collections::HashMap;
use std::path::Path;

use super::*;

fn parse(yaml: &str) -> Result<Config, ConfigError> {
    let env = HashMap::from([("ALPHA_KEY".to_owned(), "k-123".to_owned())]);
    Config::parse(yaml, Path::new("vmcp.yaml"), &env)
}

fn field_error(yaml: &str) -> (String, String) {
    match parse(yaml) {
        Err(ConfigError::Field { field, message, file }) => {
            assert_eq!(file, Path::new("vmcp.yaml"));
            (field, message)
        }
        other => panic!("expected a field error, got {other:?}"),
    }
}

#[test]
fn empty_file_gives_documented_defaults() {
    let c = parse("").unwrap();
    assert_eq!(c.listen.to_string(), "127.0.0.1:8080");
    assert_eq!(c.session.idle_timeout, Duration::from_secs(1800));
    assert_eq!(c.session.init_timeout, Duration::from_secs(5));
    assert_eq!(c.session.max_backend_init_concurrency, 10);
    assert_eq!(c.aggregation.conflict, ConflictMode::Prefix);
    assert_eq!(c.aggregation.separator, "_");
    assert_eq!(c.http.max_body_bytes, 4 * 1024 * 1024);
    assert_eq!(c.http.header_read_timeout, Duration::from_secs(10));
    assert_eq!(c.http.idle_timeout, Duration::from_secs(620));
    assert_eq!(c.http.body_read_timeout, Duration::from_secs(30));
    assert_eq!(c.http.max_batch, 64);
    assert_eq!(c.store.kind, StoreKind::Memory);
}

#[test]
fn design_example_parses_with_secrets_from_the_environment() {
    let c = parse(
        r#"
listen: 127.0.0.1:8080
replica_id: a
backends:
  - name: alpha
    url: http://127.0.0.1:9001/mcp
    headers: { x-api-key: "${ALPHA_KEY}" }
  - name: everything
    command: [npx, -y, "@modelcontextprotocol/server-everything"]
    env: { }
session:
  idle_timeout: 30m
  init_timeout: 5s
  max_backend_init_concurrency: 10
aggregation:
  conflict: prefix
  separator: "_"
store:
  kind: memory
  redis: { url: "redis://127.0.0.1:6379/0", key_prefix: "vmcp:" }
membership:
  kind: static
  members: { a: "127.0.0.1:8080" }
"#,
    )
    .unwrap();
    assert_eq!(c.backends[0].headers["x-api-key"], "k-123");
    assert_eq!(c.backends[1].command.as_ref().unwrap()[0], "npx");
    assert_eq!(c.session.idle_timeout, Duration::from_secs(30 * 60));
    assert_eq!(c.membership.members.len(), 1);
}

#[test]
fn errors_name_the_field() {
    let (field, msg) = field_error("session:\n  init_timeout: soon\n");
    assert_eq!(field, "session.init_timeout");
    assert!(msg.contains("soon"), "{msg}");

    let (field, _) = field_error("backends:\n  - name: Bad_Name\n    url: http://x/mcp\n");
    assert_eq!(field, "backends.0.name");

    let (field, _) = field_error("backends:\n  - name: a\n    url: http://x/mcp\n  - name: a\n    url: http://y/mcp\n");
    assert_eq!(field, "backends.1.name");

    let (field, _) = field_error("backends:\n  - name: a\n");
    assert_eq!(field, "backends.0.url");

    let (field, _) = field_error("backends:\n  - name: a\n    url: ftp://x\n");
    assert_eq!(field, "backends.0.url");

    let (field, msg) =
        field_error("backends:\n  - name: a\n    url: http://x/mcp\n    headers: { k: \"${MISSING}\" }\n");
    assert_eq!(field, "backends.0.headers.k");
    assert!(msg.contains("MISSING"));

    // Typos are caught, naming the unknown key itself.
    let (field, msg) = field_error("sesion: {}\n");
    assert_eq!(field, "sesion");
    assert!(msg.contains("unknown field"), "{msg}");
    let (field, _) = field_error("session:\n  idle_timeot: 5s\n");
    assert_eq!(field, "session.idle_timeot");

    let (field, _) = field_error("aggregation:\n  conflict: random\n");
    assert_eq!(field, "aggregation.conflict");

    let (field, _) = field_error("aggregation:\n  priority: [ghost]\n");
    assert_eq!(field, "aggregation.priority.0");

    let (field, _) = field_error("session:\n  max_backend_init_concurrency: 0\n");
    assert_eq!(field, "session.max_backend_init_concurrency");

    for key in [
        "header_read_timeout: 0s",
        "idle_timeout: 0s",
        "body_read_timeout: 0s",
        "max_batch: 0",
    ] {
        let (field, _) = field_error(&format!("http:\n  {key}\n"));
        assert_eq!(field, format!("http.{}", key.split(':').next().unwrap_or_default()));
    }

    let (field, _) = field_error("store:\n  kind: redis\n");
    assert_eq!(field, "store.redis.url");

    let (field, _) = field_error("membership:\n  members: { a: nowhere }\n");
    assert_eq!(field, "membership.members.a");

    let (field, msg) = field_error("membership:\n  members: { a: \"x:1\", b: \"y:1\" }\n");
    assert_eq!(field, "membership.members");
    assert!(msg.contains("vmcp-0"), "{msg}");

    let two = "replica_id: a\nmembership:\n  members: { a: \"x:1\", b: \"y:1\" }\n";
    let (field, _) = field_error(two);
    assert_eq!(field, "affinity.hop_key");
    let (field, _) = field_error(&format!("{two}affinity:\n  hop_key: 0123456789abcdef\n"));
    assert_eq!(field, "store.kind");

    let (field, _) = field_error("membership:\n  kind: kubernetes\n");
    assert_eq!(field, "membership.kubernetes.service");
}

#[test]
fn syntax_errors_name_the_file() {
    let err = parse("backends: [").unwrap_err();
    assert!(matches!(err, ConfigError::Syntax { .. }));
    assert!(err.to_string().starts_with("vmcp.yaml:"), "{err}");
}

#[test]
fn environment_overrides_apply() {
    let env = HashMap::from([
        ("VMCP_REPLICA_ID".to_owned(), "pod-7".to_owned()),
        ("VMCP_LOG_FORMAT".to_owned(), "json".to_owned()),
        ("VMCP_REDIS_URL".to_owned(), "redis://:pw@10.0.0.1:6379/0".to_owned()),
        (
            "VMCP_IDENTITY_KEY".to_owned(),
            "identity-key-from-the-secret".to_owned(),
        ),
    ]);
    let c = Config::parse("store:\n  kind: redis\n", Path::new("x.yaml"), &env).unwrap();
    assert_eq!(c.replica_id, "pod-7");
    assert_eq!(c.log.format, LogFormat::Json);
    assert_eq!(
        c.store.redis.unwrap().url.as_deref(),
        Some("redis://:pw@10.0.0.1:6379/0")
    );
    assert_eq!(c.session.identity_key.as_deref(), Some("identity-key-from-the-secret"));
}

#[test]
fn example_configs_in_the_repository_are_valid() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let env = HashMap::from([
        ("ALPHA_KEY".to_owned(), "x".to_owned()),
        ("REDIS_PASSWORD".to_owned(), "x".to_owned()),
        ("VMCP_IDENTITY_KEY".to_owned(), "x".to_owned()),
        ("VMCP_HOP_KEY".to_owned(), "0123456789abcdef".to_owned()),
    ]);
    let mut checked = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml") {
            Config::load(&path, &env).unwrap_or_else(|e| panic!("{e}"));
            checked += 1;
        }
    }
    assert!(checked >= 2, "examples/ holds the demo and the reference config");
}

#[test]
fn inherit_env_copies_named_variables_and_refuses_vmcp_ones() {
    let env = HashMap::from([
        ("TOKEN_A".to_owned(), "a".to_owned()),
        ("SET_BOTH".to_owned(), "inherited".to_owned()),
    ]);
    let yaml = "backends:\n  - name: s\n    command: [x]\n    env: { SET_BOTH: explicit }\n    inherit_env: [TOKEN_A, SET_BOTH, UNSET_ONE]\n";
    let c = Config::parse(yaml, Path::new("x.yaml"), &env).unwrap();
    let b = &c.backends[0];
    assert_eq!(b.env.get("TOKEN_A").map(String::as_str), Some("a"));
    assert_eq!(b.env.get("SET_BOTH").map(String::as_str), Some("explicit"));
    assert!(!b.env.contains_key("UNSET_ONE"));

    let (field, message) =
        field_error("backends:\n  - name: s\n    command: [x]\n    inherit_env: [PATH, VMCP_HOP_KEY]\n");
    assert_eq!(field, "backends.0.inherit_env.1");
    assert!(message.contains("VMCP_HOP_KEY"), "{message}");
    let (field, _) = field_error("backends:\n  - name: s\n    command: [x]\n    env: { vmcp_redis_url: x }\n");
    assert_eq!(field, "backends.0.env.vmcp_redis_url");
    let (field, _) = field_error("backends:\n  - name: s\n    command: [x]\n    inherit_env: [\"A=B\"]\n");
    assert_eq!(field, "backends.0.inherit_env.0");
}

#[test]
fn url_errors_do_not_echo_credentials_or_query() {
    let (field, message) = field_error("backends:\n  - name: a\n    url: \"ftp://user:pw-Q9@h/mcp?token=tk-Q9\"\n");
    assert_eq!(field, "backends.0.url");
    assert!(message.contains("ftp://h/mcp"), "{message}");
    assert!(!message.contains("pw-Q9") && !message.contains("tk-Q9"), "{message}");
    let (_, message) = field_error("backends:\n  - name: a\n    url: \"http://user:pw-Q9@h h/?token=tk-Q9\"\n");
    assert!(!message.contains("pw-Q9") && !message.contains("tk-Q9"), "{message}");
}

#[test]
fn inbound_auth_is_off_by_default_and_checked_when_on() {
    assert!(parse("").unwrap().auth.inbound.is_none());
    let c =
        parse("auth:\n  inbound:\n    issuer: https://idp.example.com\n    audience: https://mcp.example.com/mcp\n")
            .unwrap();
    let a = c.auth.inbound.unwrap();
    assert_eq!(a.algorithms, ["RS256", "PS256", "ES256"]);
    assert_eq!((a.leeway, a.groups_claim.as_str()), (Duration::from_secs(30), "groups"));
    let (field, _) = field_error("auth:\n  inbound:\n    issuer: idp\n    audience: https://m/mcp\n");
    assert_eq!(field, "auth.inbound.issuer");
    let (field, _) =
        field_error("auth:\n  inbound:\n    issuer: https://i\n    audience: https://m/mcp\n    algorithms: [none]\n");
    assert_eq!(field, "auth.inbound.algorithms");
    let (field, _) = field_error("auth:\n  inbound:\n    issuer: https://i\n    audiense: https://m/mcp\n");
    assert!(field.starts_with("auth.inbound"), "{field}");
}

#[test]
fn introspection_is_optional_and_checked() {
    let base = "auth:\n  inbound:\n    issuer: https://i\n    audience: https://m/mcp\n    introspection:\n";
    let c = parse(&format!(
        "{base}      client_id: vmcp\n      client_secret: s3cret-Q9\n"
    ))
    .unwrap();
    let i = c.auth.inbound.unwrap().introspection.unwrap();
    assert_eq!((i.cache_ttl, i.max_concurrent), (Duration::from_secs(60), 16));
    assert_eq!(
        (i.endpoint.as_deref(), i.auth_method),
        (None, ClientAuthMethod::ClientSecretBasic)
    );
    assert!(!format!("{i:?}").contains("s3cret-Q9"), "the secret in Debug output");
    let (field, _) = field_error(&format!("{base}      client_id: vmcp\n      client_secret: \"\"\n"));
    assert_eq!(field, "auth.inbound.introspection");
    let (field, _) = field_error(&format!(
        "{base}      client_id: vmcp\n      client_secret: s\n      endpoint: idp/introspect\n"
    ));
    assert_eq!(field, "auth.inbound.introspection.endpoint");
    let (field, _) = field_error(&format!(
        "{base}      client_id: vmcp\n      client_secret: s\n      max_concurrent: 0\n"
    ));
    assert_eq!(field, "auth.inbound.introspection.max_concurrent");
    let (field, _) = field_error(&format!(
        "{base}      client_id: vmcp\n      client_secret: s\n      cache: 1s\n"
    ));
    assert!(field.starts_with("auth.inbound"), "{field}");
}

#[test]
fn backend_auth_parses_and_is_checked() {
    let ok = parse(
        "backends:\n  - name: a\n    url: http://x/mcp\n    auth:\n      kind: client_credentials\n      issuer: https://idp\n      client_id: vmcp\n      client_secret: s\n      scope: \"a b\"\n",
    )
    .unwrap();
    let Some(BackendAuthConfig::ClientCredentials(c)) = &ok.backends[0].auth else {
        panic!("client credentials expected");
    };
    assert_eq!((c.client_id.as_str(), c.scope.as_deref()), ("vmcp", Some("a b")));
    assert_eq!(c.auth_method, ClientAuthMethod::ClientSecretBasic);
    assert!(!format!("{:?}", ok.backends[0]).contains("client_secret: \"s\""));
    assert!(format!("{c:?}").contains("client_id: \"vmcp\""));

    let cc = "      client_id: vmcp\n      client_secret: s\n";
    let (field, msg) = field_error(&format!(
        "backends:\n  - name: a\n    url: http://x/mcp\n    auth:\n      kind: token_exchange\n      token_url: https://idp/token\n{cc}"
    ));
    assert_eq!(field, "backends.0.auth.kind");
    assert!(msg.contains("auth.inbound"), "{msg}");
    let (field, _) = field_error(&format!(
        "backends:\n  - name: a\n    url: http://x/mcp\n    auth:\n      kind: client_credentials\n{cc}"
    ));
    assert_eq!(field, "backends.0.auth.token_url");
    let (field, _) = field_error(&format!(
        "backends:\n  - name: a\n    command: [x]\n    auth:\n      kind: client_credentials\n      issuer: https://idp\n{cc}"
    ));
    assert_eq!(field, "backends.0.auth");
    let (field, _) = field_error(
        "backends:\n  - name: a\n    url: http://x/mcp\n    headers: { Authorization: x }\n    auth: { kind: passthrough }\n",
    );
    assert_eq!(field, "backends.0.auth");
    let (field, msg) = field_error("backends:\n  - name: a\n    url: http://x/mcp\n    auth: { kind: magic }\n");
    assert!(field.contains("auth"), "{field}: {msg}");
    assert!(msg.contains("magic"), "{msg}");
    // A typo inside is caught too.
    let (_, msg) = field_error(
        "backends:\n  - name: a\n    url: http://x/mcp\n    auth:\n      kind: client_credentials\n      issuer: https://idp\n      client_id: v\n      client_secret: s\n      scopes: x\n",
    );
    assert!(msg.contains("scopes"), "{msg}");
}

#[test]
fn admin_api_is_off_by_default_and_its_credential_is_checked() {
    let c = parse("").unwrap();
    assert!(!c.admin.is_on());
    let on = parse("admin_listen: 127.0.0.1:9090\nadmin:\n  token: \"${ALPHA_KEY}-0123456789\"\n").unwrap();
    assert!(on.admin.is_on());
    assert!(
        !format!("{:?}", on.admin).contains("k-123"),
        "Debug never prints the token"
    );
    let (field, message) = field_error("admin_listen: 127.0.0.1:9090\nadmin:\n  token: \"${ALPHA_KEY}\"\n");
    assert_eq!(field, "admin.token");
    assert!(!message.contains("k-123"), "{message}");
    let (field, _) = field_error("admin:\n  token: 0123456789abcdef\n");
    assert_eq!(field, "admin", "needs admin_listen");
    let (field, _) = field_error("admin_listen: 127.0.0.1:9090\nadmin:\n  scope: vmcp:admin\n");
    assert_eq!(field, "admin.scope", "needs auth.inbound");
    let scoped = "admin_listen: 127.0.0.1:9090\nadmin:\n  scope: vmcp:admin\nauth:\n  inbound:\n    issuer: https://i\n    audience: https://m/mcp\n";
    assert!(parse(scoped).unwrap().admin.is_on());
    let (field, _) = field_error("admin_listen: 127.0.0.1:9090\nadmin:\n  tokn: x\n");
    assert_eq!(field, "admin.tokn");
}

#[test]
fn limits_parse_with_defaults_and_are_checked() {
    let c = parse("").unwrap();
    assert!(c.limits.rules.is_empty());
    assert_eq!(c.limits.on_store_error, OnStoreError::Allow);
    let backends = "backends:\n  - name: alpha\n    url: http://x/mcp\n";
    let c = parse(&format!(
        "{backends}limits:\n  on_store_error: deny\n  rules:\n    - name: per-caller\n      per: principal\n      match: {{ backends: [alpha], tools: [\"search*\"], kinds: [tool] }}\n      rate: 60\n      per_interval: 1m\n    - name: all\n      per: global\n      rate: 1000\n      per_interval: 1s\n      burst: 50\n"
    ))
    .unwrap();
    assert_eq!(c.limits.on_store_error, OnStoreError::Deny);
    let r = &c.limits.rules[0];
    assert_eq!((r.per, r.rate, r.capacity()), (LimitScope::Principal, 60, 60));
    assert_eq!(r.per_interval, Duration::from_secs(60));
    assert_eq!(r.matches.tools, ["search*"]);
    assert_eq!(r.matches.kinds, [CallKind::Tool]);
    assert_eq!(
        (c.limits.rules[1].per, c.limits.rules[1].capacity()),
        (LimitScope::Global, 50)
    );

    let rule = |extra: &str| {
        format!("{backends}limits:\n  rules:\n    - name: r\n      per: global\n      rate: 1\n      per_interval: 1s\n{extra}")
    };
    let (field, _) = field_error(&rule("      burst: 0\n"));
    assert_eq!(field, "limits.rules.0.burst");
    let (field, msg) = field_error(&rule("      match: { backends: [beta] }\n"));
    assert_eq!(field, "limits.rules.0.match.backends.0");
    assert!(msg.contains("beta"), "{msg}");
    let (field, _) = field_error(&rule("      match: { tools: [\"a*b\"] }\n"));
    assert_eq!(field, "limits.rules.0.match.tools.0");
    let (field, _) = field_error(&rule("      match: { tool: [x] }\n"));
    assert_eq!(field, "limits.rules[0].match.tool");
    let (field, _) = field_error("limits:\n  rules:\n    - { name: Bad, per: global, rate: 1, per_interval: 1s }\n");
    assert_eq!(field, "limits.rules.0.name");
    let (field, _) = field_error(
        "limits:\n  rules:\n    - { name: a, per: global, rate: 1, per_interval: 1s }\n    - { name: a, per: principal, rate: 1, per_interval: 1s }\n",
    );
    assert_eq!(field, "limits.rules.1.name");
    let (field, _) = field_error("limits:\n  rules:\n    - { name: a, per: global, rate: 0, per_interval: 1s }\n");
    assert_eq!(field, "limits.rules.0.rate");
    let (field, _) = field_error("limits:\n  rules:\n    - { name: a, per: everyone, rate: 1, per_interval: 1s }\n");
    assert_eq!(field, "limits.rules[0].per");
    let (field, _) = field_error("limits:\n  on_store_error: maybe\n");
    assert_eq!(field, "limits.on_store_error");
}

#[test]
fn audit_is_off_by_default_and_checked() {
    let c = parse("").unwrap();
    assert!(!c.audit.enabled && !c.audit.include_arguments);
    assert_eq!(c.audit.sink, AuditSink::Stdout);
    let c = parse("audit: { enabled: true, sink: file, path: /tmp/a.jsonl, include_arguments: true }\n").unwrap();
    assert_eq!(
        (c.audit.sink, c.audit.path.to_str()),
        (AuditSink::File, Some("/tmp/a.jsonl"))
    );
    assert!(c.audit.include_arguments);
    let (field, _) = field_error("audit: { enabled: true, sink: file, path: \"\" }\n");
    assert_eq!(field, "audit.path");
    let (field, _) = field_error("audit: { sink: syslog }\n");
    assert_eq!(field, "audit.sink");
    let (field, _) = field_error("audit: { enable: true }\n");
    assert_eq!(field, "audit.enable");
}

#[test]
fn redis_topologies_take_exactly_one_of_url_sentinel_cluster() {
    let c = parse(
        "store:\n  kind: redis\n  redis:\n    sentinel: { master_name: mymaster, nodes: [\"s1:26379\", \"10.0.0.2:26379\"] }\n    password: \"${ALPHA_KEY}\"\n",
    )
    .unwrap();
    let r = c.store.redis.unwrap();
    let s = r.sentinel.as_ref().unwrap();
    assert_eq!((s.master_name.as_str(), s.nodes.len()), ("mymaster", 2));
    assert_eq!(r.password.as_deref(), Some("k-123"));
    assert!(!format!("{r:?}").contains("k-123"), "a password in Debug output");

    let c =
        parse("store:\n  kind: redis\n  redis:\n    cluster: [\"n1:7000\", \"[::1]:7001\"]\n    key_prefix: \"x:\"\n")
            .unwrap();
    assert_eq!(c.store.redis.unwrap().cluster.unwrap().len(), 2);

    for (yaml, want) in [
        ("url: redis://a:6379\n    cluster: [\"n1:7000\"]", "store.redis"),
        (
            "url: redis://a:6379\n    sentinel: { master_name: m, nodes: [\"s:1\"] }",
            "store.redis",
        ),
        (
            "sentinel: { master_name: m, nodes: [\"s:1\"] }\n    cluster: [\"n1:7000\"]",
            "store.redis",
        ),
        ("key_prefix: \"x:\"", "store.redis.url"),
        ("url: http://a:6379", "store.redis.url"),
        ("url: redis://a:6379\n    tls: true", "store.redis.tls"),
        ("cluster: []", "store.redis.cluster"),
        ("cluster: [\"n1\"]", "store.redis.cluster.0"),
        ("cluster: [\"n1:7000\", \"u:pw@n2:7000\"]", "store.redis.cluster.1"),
        ("cluster: [\"n1:0\"]", "store.redis.cluster.0"),
        (
            "sentinel: { master_name: \"\", nodes: [\"s:1\"] }",
            "store.redis.sentinel.master_name",
        ),
        ("sentinel: { master_name: m, nodes: [] }", "store.redis.sentinel.nodes"),
        (
            "sentinel: { master_name: m, nodes: [\"s/x:1\"] }",
            "store.redis.sentinel.nodes.0",
        ),
    ] {
        let (field, _) = field_error(&format!("store:\n  kind: redis\n  redis:\n    {yaml}\n"));
        assert_eq!(field, want, "{yaml}");
    }
}

#[test]
fn the_redis_url_variable_replaces_a_sentinel_or_cluster() {
    let env = HashMap::from([("VMCP_REDIS_URL".to_owned(), "redis://10.0.0.1:6379/0".to_owned())]);
    let yaml = "store:\n  kind: redis\n  redis:\n    cluster: [\"n1:7000\"]\n    key_prefix: \"k:\"\n";
    let r = Config::parse(yaml, Path::new("x.yaml"), &env)
        .unwrap()
        .store
        .redis
        .unwrap();
    assert_eq!(
        (r.url.as_deref(), r.cluster, r.key_prefix.as_str()),
        (Some("redis://10.0.0.1:6379/0"), None, "k:")
    );
}
