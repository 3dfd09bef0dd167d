//! The admin API, served on `admin_listen` only, behind its own credential
//! (`admin.token`, or an access token with `admin.scope`):
//!
//! - `GET /admin/sessions?limit=&cursor=&subject=&issuer=&backend=&replica=`
//!   → `{"sessions": [...], "next_cursor": ...}`;
//! - `GET /admin/sessions/{id}` → one session (see [`view`]: no secrets);
//! - `DELETE /admin/sessions/{id}` → 204, or 404;
//! - `POST /admin/revoke` `{"issuer": ..., "subject": ...}` → `{"revoked": N}`.
//!
//! Everything goes through the session store, so it acts on the sessions of
//! every replica: a deleted session's tombstone is published, and every
//! replica drops its runtime and answers 404 for it from then on.

mod credential;
mod view;

use std::collections::HashMap;

use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use serde::Deserialize;
use serde_json::json;

use crate::app::App;
use crate::http::reply::{self, Body};
use crate::store::{StoreError, MAX_PAGE};
pub use credential::AdminAuth;
use view::{Filter, SessionView};

/// Sessions a listing returns unless `limit` says otherwise.
const DEFAULT_LIMIT: usize = 100;
/// Sessions one listing request reads at most while filtering (the rest
/// are for the next request, from `next_cursor`).
const SCAN_BUDGET: usize = 5_000;
/// The largest request body (`POST /admin/revoke`).
const MAX_BODY: usize = 16 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("the admin API is off: configure admin.token or admin.scope")]
    Disabled,
    #[error("an admin credential is required")]
    Unauthorized,
    #[error("the access token lacks scope `{0}`")]
    Forbidden(String),
    #[error("cannot verify access tokens now: {0}")]
    AuthUnavailable(String),
    #[error("no such session")]
    NoSession,
    #[error("no such admin route")]
    NoRoute,
    #[error("method not allowed")]
    Method,
    #[error("bad request: {0}")]
    BadRequest(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl AdminError {
    pub fn status(&self) -> StatusCode {
        match self {
            Self::Disabled | Self::NoSession | Self::NoRoute => StatusCode::NOT_FOUND,
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::Method => StatusCode::METHOD_NOT_ALLOWED,
            Self::BadRequest(_) | Self::Store(StoreError::Cursor) => StatusCode::BAD_REQUEST,
            Self::AuthUnavailable(_) | Self::Store(StoreError::Unavailable(_)) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Store(StoreError::Corrupt(_)) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn into_response(self) -> Response<Body> {
        let status = self.status();
        if status.is_server_error() {
            tracing::warn!(error = %self, "admin request failed");
        } else {
            tracing::debug!(error = %self, "admin request refused");
        }
        let mut response = json_reply(status, &json!({ "error": self.to_string() }));
        let challenge = match &self {
            Self::Unauthorized => Some("Bearer realm=\"vmcp-admin\"".to_owned()),
            Self::Forbidden(scope) => Some(format!(
                "Bearer realm=\"vmcp-admin\", error=\"insufficient_scope\", scope=\"{}\"",
                scope.replace(['"', '\\'], "'")
            )),
            _ => None,
        };
        if let Some(value) = challenge.and_then(|c| HeaderValue::from_str(&c).ok()) {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, value);
        }
        response
    }
}

/// Answers one request to `/admin/...` on the admin listener.
pub async fn handle(app: &App, req: Request<Incoming>) -> Response<Body> {
    match serve(app, req).await {
        Ok(response) => response,
        Err(e) => e.into_response(),
    }
}

async fn serve(app: &App, req: Request<Incoming>) -> Result<Response<Body>, AdminError> {
    if !app.admin.is_on() {
        return Err(AdminError::Disabled);
    }
    app.admin.check(req.headers(), &app.auth).await?;
    let path = req.uri().path().to_owned();
    let method = req.method().clone();
    match (path.as_str(), path.strip_prefix("/admin/sessions/")) {
        ("/admin/sessions", _) if method == Method::GET => list(app, req.uri().query().unwrap_or("")).await,
        ("/admin/revoke", _) if method == Method::POST => revoke(app, req).await,
        (_, Some(id)) if method == Method::GET => show(app, id).await,
        (_, Some(id)) if method == Method::DELETE => delete(app, id).await,
        ("/admin/sessions" | "/admin/revoke", _) | (_, Some(_)) => Err(AdminError::Method),
        _ => Err(AdminError::NoRoute),
    }
}

async fn list(app: &App, query: &str) -> Result<Response<Body>, AdminError> {
    let mut q = parse_query(query);
    let limit = match q.remove("limit") {
        Some(l) => l
            .parse::<usize>()
            .ok()
            .filter(|l| (1..=MAX_PAGE).contains(l))
            .ok_or_else(|| AdminError::BadRequest(format!("limit must be 1 to {MAX_PAGE}")))?,
        None => DEFAULT_LIMIT,
    };
    let filter = Filter {
        issuer: q.remove("issuer"),
        subject: q.remove("subject"),
        backend: q.remove("backend"),
        replica: q.remove("replica"),
    };
    let store = app.manager.store();
    let (mut found, mut cursor, mut scanned) = (Vec::new(), q.remove("cursor"), 0);
    loop {
        let page = store.list(cursor.as_deref(), limit).await?;
        scanned += page.sessions.len();
        let matching: Vec<_> = page.sessions.into_iter().filter(|m| filter.matches(m)).collect();
        if found.len() + matching.len() > limit {
            // This page is read again from the same cursor next time.
            break;
        }
        found.extend(matching);
        cursor = page.next_cursor;
        if filter.is_empty() || cursor.is_none() || found.len() == limit || scanned >= SCAN_BUDGET {
            break;
        }
    }
    let sessions: Vec<SessionView> = found.iter().map(SessionView::of).collect();
    Ok(json_reply(
        StatusCode::OK,
        &json!({ "sessions": sessions, "next_cursor": cursor }),
    ))
}

async fn show(app: &App, id: &str) -> Result<Response<Body>, AdminError> {
    if !crate::session::is_well_formed(id) {
        return Err(AdminError::NoSession);
    }
    let meta = app.manager.store().get(id).await?.ok_or(AdminError::NoSession)?;
    Ok(json_reply(StatusCode::OK, &SessionView::of(&meta)))
}

async fn delete(app: &App, id: &str) -> Result<Response<Body>, AdminError> {
    if !crate::session::is_well_formed(id) || !app.manager.delete_any(id).await? {
        return Err(AdminError::NoSession);
    }
    tracing::info!(session.id = %id, "session deleted through the admin API");
    Ok(reply::empty(StatusCode::NO_CONTENT))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Revoke {
    #[serde(default)]
    issuer: Option<String>,
    subject: String,
}

async fn revoke(app: &App, req: Request<Incoming>) -> Result<Response<Body>, AdminError> {
    let body = tokio::time::timeout(
        app.config.http.body_read_timeout,
        Limited::new(req.into_body(), MAX_BODY).collect(),
    )
    .await
    .map_err(|_| AdminError::BadRequest("request body not received in time".into()))?
    .map_err(|e| AdminError::BadRequest(format!("cannot read the request body: {e}")))?
    .to_bytes();
    let revoke: Revoke = serde_json::from_slice(&body).map_err(|e| AdminError::BadRequest(e.to_string()))?;
    let issuer = revoke
        .issuer
        .or_else(|| app.config.auth.inbound.as_ref().map(|i| i.issuer.clone()))
        .ok_or_else(|| AdminError::BadRequest("`issuer` is required (auth.inbound is off)".into()))?;
    let ids = app.manager.store().sessions_of(&issuer, &revoke.subject).await?;
    let mut revoked = 0;
    for id in &ids {
        if app.manager.delete_any(id).await? {
            revoked += 1;
        }
    }
    tracing::info!(%issuer, subject = %revoke.subject, revoked, "sessions revoked through the admin API");
    Ok(json_reply(StatusCode::OK, &json!({ "revoked": revoked })))
}

fn json_reply(status: StatusCode, body: &impl serde::Serialize) -> Response<Body> {
    let text = serde_json::to_string(body).unwrap_or_else(|_| r#"{"error":"cannot encode the answer"}"#.into());
    reply::text(status, "application/json", text)
}

/// `a=1&b=x%20y` (also `+` for a space); the last value of a key wins.
fn parse_query(query: &str) -> HashMap<String, String> {
    let decode = |s: &str| {
        percent_encoding::percent_decode_str(&s.replace('+', " "))
            .decode_utf8_lossy()
            .into_owned()
    };
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (decode(k), decode(v))
        })
        .filter(|(_, v)| !v.is_empty())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_decode() {
        let q = parse_query("subject=a%40b+c&limit=5&empty=&cursor=1%3Aab");
        assert_eq!(q["subject"], "a@b c");
        assert_eq!(q["limit"], "5");
        assert_eq!(q["cursor"], "1:ab");
        assert!(!q.contains_key("empty"));
    }

    #[test]
    fn errors_have_their_status() {
        assert_eq!(AdminError::Disabled.status(), StatusCode::NOT_FOUND);
        assert_eq!(AdminError::Unauthorized.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(
            AdminError::Store(StoreError::Unavailable("down".into())).status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
        let r = AdminError::Unauthorized.into_response();
        assert!(r.headers()[header::WWW_AUTHENTICATE]
            .to_str()
            .unwrap()
            .starts_with("Bearer"));
    }
}
