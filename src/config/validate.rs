//! Checks that serde cannot express; each failure is `(field path, message)`.

use std::collections::HashSet;

use super::{
    is_vmcp_variable, parse_node, AuditSink, BackendAuthConfig, BackendConfig, Config, MembershipKind, RedisConfig,
    StoreKind,
};

type Invalid = (String, String);

fn invalid(field: impl Into<String>, message: impl Into<String>) -> Invalid {
    (field.into(), message.into())
}

pub fn validate(config: &Config) -> Result<(), Invalid> {
    validate_backends(config)?;
    let s = &config.session;
    if s.idle_timeout.is_zero() {
        return Err(invalid("session.idle_timeout", "must be greater than zero"));
    }
    if s.init_timeout.is_zero() {
        return Err(invalid("session.init_timeout", "must be greater than zero"));
    }
    if s.circuit.failures == 0 {
        return Err(invalid("session.circuit.failures", "must be at least 1"));
    }
    if s.circuit.open_for.is_zero() || s.circuit.max_open_for < s.circuit.open_for {
        return Err(invalid(
            "session.circuit.open_for",
            "must be greater than zero and at most max_open_for",
        ));
    }
    if s.close_timeout.is_zero() {
        return Err(invalid("session.close_timeout", "must be greater than zero"));
    }
    if s.call_timeout.is_zero() {
        return Err(invalid("session.call_timeout", "must be greater than zero"));
    }
    if s.max_backend_init_concurrency == 0 {
        return Err(invalid("session.max_backend_init_concurrency", "must be at least 1"));
    }
    if s.max_calls == 0 {
        return Err(invalid("session.max_calls", "must be at least 1"));
    }
    if s.max_sessions == 0 {
        return Err(invalid("session.max_sessions", "must be at least 1"));
    }
    let a = &config.aggregation;
    if a.separator.is_empty() {
        return Err(invalid("aggregation.separator", "must not be empty"));
    }
    if a.page_size == 0 {
        return Err(invalid("aggregation.page_size", "must be at least 1"));
    }
    let names: HashSet<&str> = config.backends.iter().map(|b| b.name.as_str()).collect();
    for (i, name) in a.priority.iter().enumerate() {
        if !names.contains(name.as_str()) {
            return Err(invalid(
                format!("aggregation.priority.{i}"),
                format!("no backend is named `{name}`"),
            ));
        }
    }
    if config.session.max_response_bytes < 1024 {
        return Err(invalid("session.max_response_bytes", "must be at least 1024"));
    }
    if config.http.max_body_bytes < 1024 {
        return Err(invalid("http.max_body_bytes", "must be at least 1024"));
    }
    if config.http.header_read_timeout.is_zero() {
        return Err(invalid("http.header_read_timeout", "must be greater than zero"));
    }
    if config.http.idle_timeout.is_zero() {
        return Err(invalid("http.idle_timeout", "must be greater than zero"));
    }
    if config.http.max_connections == Some(0) {
        return Err(invalid("http.max_connections", "must be at least 1"));
    }
    if config.http.body_read_timeout.is_zero() {
        return Err(invalid("http.body_read_timeout", "must be greater than zero"));
    }
    if config.http.max_batch == 0 {
        return Err(invalid("http.max_batch", "must be at least 1"));
    }
    if config.replica_id.is_empty() {
        return Err(invalid("replica_id", "must not be empty"));
    }
    if config.store.kind == StoreKind::Redis {
        validate_redis(config.store.redis.as_ref())?;
    }
    validate_auth(config)?;
    if config.policy.file.is_some() && config.policy.reload_interval.is_zero() {
        return Err(invalid("policy.reload_interval", "must be greater than zero"));
    }
    validate_admin(config)?;
    validate_limits(config)?;
    validate_audit(config)?;
    validate_membership(config)
}

/// Exactly one of `url`, `sentinel` and `cluster`, each well formed.
fn validate_redis(redis: Option<&RedisConfig>) -> Result<(), Invalid> {
    let Some(r) = redis else {
        return Err(invalid(
            "store.redis.url",
            "store.kind redis needs store.redis.url, store.redis.sentinel or store.redis.cluster",
        ));
    };
    match (&r.url, &r.sentinel, &r.cluster) {
        (None, None, None) => Err(invalid(
            "store.redis.url",
            "store.kind redis needs store.redis.url, store.redis.sentinel or store.redis.cluster",
        )),
        (Some(url), None, None) => {
            if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
                return Err(invalid("store.redis.url", "needs a redis:// or rediss:// URL"));
            }
            if r.tls {
                return Err(invalid("store.redis.tls", "with a URL, say TLS with rediss://"));
            }
            Ok(())
        }
        (None, Some(s), None) => {
            if s.master_name.trim().is_empty() {
                return Err(invalid("store.redis.sentinel.master_name", "must not be empty"));
            }
            validate_nodes("store.redis.sentinel.nodes", &s.nodes)
        }
        (None, None, Some(nodes)) => validate_nodes("store.redis.cluster", nodes),
        _ => Err(invalid("store.redis", "give exactly one of url, sentinel and cluster")),
    }
}

fn validate_nodes(field: &str, nodes: &[String]) -> Result<(), Invalid> {
    if nodes.is_empty() {
        return Err(invalid(field, "needs at least one host:port"));
    }
    for (i, node) in nodes.iter().enumerate() {
        if parse_node(node).is_none() {
            return Err(invalid(format!("{field}.{i}"), "must be host:port"));
        }
    }
    Ok(())
}

/// `[a-z0-9-]+`: backend and limit rule names (metric labels, key parts).
fn name_ok(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

/// Exact names or `prefix*`: a `*` only at the end.
fn pattern_ok(pattern: &str) -> bool {
    let body = pattern.strip_suffix('*').unwrap_or(pattern);
    !pattern.is_empty() && !body.contains('*')
}

fn validate_limits(config: &Config) -> Result<(), Invalid> {
    let mut seen = HashSet::new();
    let backends: HashSet<&str> = config.backends.iter().map(|b| b.name.as_str()).collect();
    for (i, rule) in config.limits.rules.iter().enumerate() {
        let field = |f: &str| format!("limits.rules.{i}.{f}");
        if !name_ok(&rule.name) {
            return Err(invalid(field("name"), format!("`{}` must match [a-z0-9-]+", rule.name)));
        }
        if !seen.insert(rule.name.as_str()) {
            return Err(invalid(field("name"), format!("`{}` is used by two rules", rule.name)));
        }
        if rule.rate == 0 {
            return Err(invalid(field("rate"), "must be at least 1"));
        }
        if rule.per_interval < std::time::Duration::from_millis(1) {
            return Err(invalid(field("per_interval"), "must be at least 1ms"));
        }
        if rule.burst == Some(0) {
            return Err(invalid(field("burst"), "must be at least 1"));
        }
        for (j, name) in rule.matches.backends.iter().enumerate() {
            if !backends.contains(name.as_str()) {
                return Err(invalid(
                    field(&format!("match.backends.{j}")),
                    format!("no backend is named `{name}`"),
                ));
            }
        }
        for (j, pattern) in rule.matches.tools.iter().enumerate() {
            if !pattern_ok(pattern) {
                return Err(invalid(
                    field(&format!("match.tools.{j}")),
                    format!("`{pattern}` must be a name or end with a single `*` (a prefix)"),
                ));
            }
        }
    }
    Ok(())
}

fn validate_audit(config: &Config) -> Result<(), Invalid> {
    let a = &config.audit;
    if a.enabled && a.sink == AuditSink::File && a.path.as_os_str().is_empty() {
        return Err(invalid("audit.path", "sink file needs a path"));
    }
    Ok(())
}

/// The shortest static admin token accepted.
const MIN_ADMIN_TOKEN: usize = 16;

fn validate_admin(config: &Config) -> Result<(), Invalid> {
    let a = &config.admin;
    if a.token.as_deref().is_some_and(|t| t.trim().len() < MIN_ADMIN_TOKEN) {
        // The length only: the value is a secret.
        return Err(invalid(
            "admin.token",
            format!("must be at least {MIN_ADMIN_TOKEN} characters (use ${{VMCP_ADMIN_TOKEN}})"),
        ));
    }
    if let Some(scope) = &a.scope {
        if scope.is_empty() || scope.contains(char::is_whitespace) {
            return Err(invalid("admin.scope", "must be one scope, without spaces"));
        }
        if config.auth.inbound.is_none() {
            return Err(invalid(
                "admin.scope",
                "needs auth.inbound (the access tokens carrying it are validated there)",
            ));
        }
    }
    if a.is_on() && config.admin_listen.is_none() {
        return Err(invalid(
            "admin",
            "the admin API is served on admin_listen only: set admin_listen",
        ));
    }
    Ok(())
}

fn validate_auth(config: &Config) -> Result<(), Invalid> {
    let Some(a) = &config.auth.inbound else {
        return Ok(());
    };
    let is_url = |u: &str| u.starts_with("https://") || u.starts_with("http://");
    if !is_url(&a.issuer) {
        return Err(invalid("auth.inbound.issuer", "must be an http(s) URL"));
    }
    if !is_url(&a.audience) {
        return Err(invalid(
            "auth.inbound.audience",
            "must be this server's public URL of /mcp, e.g. https://mcp.example.com/mcp",
        ));
    }
    if a.jwks_uri.as_deref().is_some_and(|u| !is_url(u)) {
        return Err(invalid("auth.inbound.jwks_uri", "must be an http(s) URL"));
    }
    if a.algorithms.is_empty() {
        return Err(invalid("auth.inbound.algorithms", "must name at least one algorithm"));
    }
    if a.algorithms.iter().any(|alg| alg.eq_ignore_ascii_case("none")) {
        return Err(invalid("auth.inbound.algorithms", "`none` is never accepted"));
    }
    if a.fetch_timeout.is_zero() {
        return Err(invalid("auth.inbound.fetch_timeout", "must be greater than zero"));
    }
    if let Some(i) = &a.introspection {
        if i.endpoint.as_deref().is_some_and(|u| !is_url(u)) {
            return Err(invalid("auth.inbound.introspection.endpoint", "must be an http(s) URL"));
        }
        if i.client_id.is_empty() || i.client_secret.is_empty() {
            return Err(invalid(
                "auth.inbound.introspection",
                "needs client_id and client_secret (the issuer authenticates its introspection clients)",
            ));
        }
        if i.max_concurrent == 0 {
            return Err(invalid(
                "auth.inbound.introspection.max_concurrent",
                "must be at least 1",
            ));
        }
    }
    Ok(())
}

/// `backends[].auth`: fields relative to the backend.
fn validate_backend_auth(config: &Config, b: &BackendConfig, auth: &BackendAuthConfig) -> Result<(), Invalid> {
    if b.url.is_none() {
        return Err(invalid("auth", "applies to Streamable HTTP backends (`url`) only"));
    }
    if b.headers.keys().any(|k| k.eq_ignore_ascii_case("authorization")) {
        return Err(invalid("auth", "conflicts with an `Authorization` entry in `headers`"));
    }
    if auth.needs_caller() && config.auth.inbound.is_none() {
        return Err(invalid(
            "auth.kind",
            "token_exchange and passthrough need `auth.inbound`: only a token vmcp validated is used on",
        ));
    }
    let (BackendAuthConfig::ClientCredentials(c) | BackendAuthConfig::TokenExchange(c)) = auth else {
        return Ok(());
    };
    let is_url = |u: &str| u.starts_with("https://") || u.starts_with("http://");
    if c.token_url.is_none() && c.issuer.is_none() {
        return Err(invalid(
            "auth.token_url",
            "or `auth.issuer` (to discover it) is required",
        ));
    }
    for (name, url) in [
        ("token_url", &c.token_url),
        ("issuer", &c.issuer),
        ("resource", &c.resource),
    ] {
        if url.as_deref().is_some_and(|u| !is_url(u)) {
            return Err(invalid(format!("auth.{name}"), "must be an http(s) URL"));
        }
    }
    if c.client_id.is_empty() {
        return Err(invalid("auth.client_id", "must not be empty"));
    }
    if c.timeout.is_zero() {
        return Err(invalid("auth.timeout", "must be greater than zero"));
    }
    Ok(())
}

fn validate_membership(config: &Config) -> Result<(), Invalid> {
    let m = &config.membership;
    let replicated = match m.kind {
        MembershipKind::Static => {
            for (id, addr) in &m.members {
                if addr.rsplit_once(':').and_then(|(_, p)| p.parse::<u16>().ok()).is_none() {
                    return Err(invalid(
                        format!("membership.members.{id}"),
                        format!("`{addr}` is not host:port"),
                    ));
                }
            }
            if !m.members.is_empty() && !m.members.contains_key(&config.replica_id) {
                return Err(invalid(
                    "membership.members",
                    format!("must list this replica (`{}`, see replica_id)", config.replica_id),
                ));
            }
            m.members.len() > 1
        }
        MembershipKind::Kubernetes => {
            if m.kubernetes.as_ref().is_none_or(|k| k.service.is_empty()) {
                return Err(invalid(
                    "membership.kubernetes.service",
                    "kubernetes membership needs the headless Service name",
                ));
            }
            true
        }
    };
    if replicated && config.affinity.hop_key.as_deref().is_none_or(|k| k.len() < 16) {
        return Err(invalid(
            "affinity.hop_key",
            "several replicas need a shared hop key of at least 16 characters",
        ));
    }
    if replicated && config.store.kind != StoreKind::Redis {
        return Err(invalid(
            "store.kind",
            "several replicas need store.kind redis to share sessions",
        ));
    }
    Ok(())
}

fn validate_backends(config: &Config) -> Result<(), Invalid> {
    let mut seen = HashSet::new();
    for (i, b) in config.backends.iter().enumerate() {
        let field = |f: &str| format!("backends.{i}.{f}");
        if !name_ok(&b.name) {
            return Err(invalid(field("name"), format!("`{}` must match [a-z0-9-]+", b.name)));
        }
        if !seen.insert(b.name.as_str()) {
            return Err(invalid(field("name"), format!("`{}` is used by two backends", b.name)));
        }
        if b.max_response_bytes.is_some_and(|n| n < 1024) {
            return Err(invalid(field("max_response_bytes"), "must be at least 1024"));
        }
        match (&b.url, &b.command) {
            (Some(_), Some(_)) => return Err(invalid(field("url"), "set either url or command, not both")),
            (None, None) => return Err(invalid(field("url"), "set url (Streamable HTTP) or command (stdio)")),
            (Some(url), None) => {
                // Echoed without credentials or query: config errors are logged.
                let shown = crate::redact::url(url);
                let parsed: http::Uri = url
                    .parse()
                    .map_err(|e| invalid(field("url"), format!("`{shown}` is not a URL: {e}")))?;
                if !matches!(parsed.scheme_str(), Some("http" | "https")) || parsed.host().is_none() {
                    return Err(invalid(
                        field("url"),
                        format!("`{shown}` must be an http:// or https:// URL"),
                    ));
                }
            }
            (None, Some(cmd)) => {
                if cmd.first().is_none_or(|p| p.is_empty()) {
                    return Err(invalid(field("command"), "must name a program"));
                }
            }
        }
        for key in b.env.keys() {
            if !env_name_ok(key) {
                return Err(invalid(field(&format!("env.{key}")), "is not a valid variable name"));
            }
            if is_vmcp_variable(key) {
                return Err(invalid(
                    field(&format!("env.{key}")),
                    "VMCP_* variables hold vmcp's own secrets and are never given to a backend",
                ));
            }
        }
        for (j, name) in b.inherit_env.iter().enumerate() {
            if !env_name_ok(name) {
                return Err(invalid(
                    field(&format!("inherit_env.{j}")),
                    format!("`{name}` is not a valid variable name"),
                ));
            }
            if is_vmcp_variable(name) {
                return Err(invalid(
                    field(&format!("inherit_env.{j}")),
                    format!("`{name}`: VMCP_* variables hold vmcp's own secrets and are never passed to a backend"),
                ));
            }
        }
        for (key, value) in &b.headers {
            if http::HeaderName::from_bytes(key.as_bytes()).is_err() {
                return Err(invalid(field(&format!("headers.{key}")), "is not a valid header name"));
            }
            if http::HeaderValue::from_str(value).is_err() {
                return Err(invalid(field(&format!("headers.{key}")), "is not a valid header value"));
            }
        }
        if b.transport == super::HttpTransport::Sse {
            if b.url.is_none() {
                return Err(invalid(field("transport"), "`sse` applies to `url` backends only"));
            }
            if b.era != super::BackendEra::Handshake || b.auth.is_some() {
                return Err(invalid(
                    field("transport"),
                    "`sse` (MCP 2024-11-05) speaks the handshake era, with static headers only (no `era`, no `auth`)",
                ));
            }
        }
        if b.era != super::BackendEra::Handshake && b.url.is_none() {
            return Err(invalid(
                field("era"),
                "applies to Streamable HTTP backends (`url`) only",
            ));
        }
        if let Some(auth) = &b.auth {
            validate_backend_auth(config, b, auth).map_err(|(f, m)| (field(&f), m))?;
        }
    }
    Ok(())
}

/// A name a process environment can hold (no `=`, no NUL, not empty).
fn env_name_ok(name: &str) -> bool {
    !name.is_empty() && !name.contains(['=', '\0'])
}
