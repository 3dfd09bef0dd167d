//! Opening a backend session: the handshake (`initialize`, then
//! `notifications/initialized`), a stateless one found by `server/discover`
//! (2026-07-28), or one resumed from stored metadata with no I/O.

use std::sync::atomic::{AtomicBool, AtomicI64};
use std::sync::Arc;

use http::HeaderValue;
use serde_json::{json, Value};

use super::{post, read_response, stateless, HttpBackend, HttpSession, Outgoing};
use crate::backend::credentials::CallerToken;
use crate::backend::{BackendError, Params};
use crate::config::BackendEra;
use crate::mcp::headers as mcp_headers;

impl HttpBackend {
    fn session(
        &self,
        session_id: Option<&str>,
        protocol_version: &str,
        init: Value,
        origin: Origin,
        caller: Option<Arc<CallerToken>>,
    ) -> Result<HttpSession, BackendError> {
        let (first_id, ours, envelope) = match origin {
            Origin::Opened => (1, true, None),
            Origin::Resumed => (random_first_id(), false, None),
            Origin::Stateless(envelope) => (1, false, Some(envelope)),
        };
        let bad = |what: &str| BackendError::Protocol(format!("{what} is not a valid header value"));
        // A known version is a static header value: no allocation per session.
        let version = match crate::mcp::SUPPORTED_VERSIONS.iter().find(|v| **v == protocol_version) {
            Some(known) => HeaderValue::from_static(known),
            None => HeaderValue::from_str(protocol_version).map_err(|_| bad("protocol version"))?,
        };
        let session_id = session_id
            .map(|s| HeaderValue::from_str(s).map_err(|_| bad("Mcp-Session-Id")))
            .transpose()?;
        Ok(HttpSession {
            caller: caller.filter(|_| self.needs_caller()),
            envelope,
            endpoint: Arc::clone(&self.endpoint),
            session_id,
            version,
            next_id: AtomicI64::new(first_id),
            init: self.init.share(&init),
            closed: AtomicBool::new(false),
            delete_on_drop: AtomicBool::new(ours),
        })
    }

    /// Handshake: `initialize`, then `notifications/initialized` on the new session.
    pub async fn connect(&self, params: Value, caller: Option<Arc<CallerToken>>) -> Result<HttpSession, BackendError> {
        let known = *crate::sync::lock(&self.probed);
        let stateless = match (self.era, known) {
            (BackendEra::Handshake, _) | (BackendEra::Auto, Some(false)) => false,
            (BackendEra::Stateless, _) | (BackendEra::Auto, Some(true)) => true,
            (BackendEra::Auto, None) => {
                let found = self.discover(&params, caller.clone()).await;
                *crate::sync::lock(&self.probed) = Some(found.is_ok());
                match found {
                    Ok(session) => return Ok(session),
                    Err(e) => {
                        tracing::debug!(url = %crate::redact::url(self.url()), error = %e, "backend speaks the handshake era");
                        false
                    }
                }
            }
        };
        if stateless {
            let found = self.discover(&params, caller).await;
            if found.is_err() && self.era == BackendEra::Auto {
                *crate::sync::lock(&self.probed) = None; // probe again next time
            }
            return found;
        }
        self.handshake(params, caller).await
    }

    /// A stateless "session": `server/discover` for the backend's capabilities, then nothing to keep.
    async fn discover(&self, params: &Value, caller: Option<Arc<CallerToken>>) -> Result<HttpSession, BackendError> {
        let envelope = stateless::envelope(params);
        let body = serde_json::to_vec(&Outgoing {
            jsonrpc: "2.0",
            id: Some(0),
            method: "server/discover",
            params: Some(Params::Tree(&json!({ "_meta": envelope }))),
        })
        .map_err(|e| BackendError::Protocol(e.to_string()))?;
        let endpoint = &self.endpoint;
        let mut headers = endpoint.headers.clone();
        headers.insert(mcp_headers::PROTOCOL, HeaderValue::from_static(stateless::VERSION));
        stateless::mirror(&mut headers, "server/discover", None);
        let response = post(endpoint, caller.as_deref(), headers, body).await?;
        let discovered: Value = read_response(response, 0, None, &mut |_| {}).await?;
        if !stateless::is_modern(&discovered) {
            return Err(BackendError::Protocol(format!(
                "server/discover does not name {}",
                stateless::VERSION
            )));
        }
        let origin = Origin::Stateless(Arc::new(stateless::Stateless::new(envelope)));
        self.session(None, stateless::VERSION, discovered, origin, caller)
    }

    /// The handshake: `initialize`, then `notifications/initialized`.
    async fn handshake(&self, params: Value, caller: Option<Arc<CallerToken>>) -> Result<HttpSession, BackendError> {
        let body = serde_json::to_vec(&Outgoing {
            jsonrpc: "2.0",
            id: Some(0),
            method: "initialize",
            params: Some(Params::Tree(&params)),
        })
        .map_err(|e| BackendError::Protocol(e.to_string()))?;
        let endpoint = &self.endpoint;
        let response = post(endpoint, caller.as_deref(), endpoint.headers.clone(), body).await?;
        let session_id = response
            .headers()
            .get(mcp_headers::SESSION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let init: Value = read_response(response, 0, None, &mut |_| {}).await?;
        let protocol_version = init
            .get("protocolVersion")
            .and_then(Value::as_str)
            .ok_or_else(|| BackendError::Protocol("initialize result without protocolVersion".into()))?
            .to_owned();
        // From here on the session exists on the backend: dropped without
        // `close()` (a timeout, a client gone mid-initialize) it is DELETEd.
        let session = self.session(session_id.as_deref(), &protocol_version, init, Origin::Opened, caller)?;
        session.notify("notifications/initialized", None).await?;
        Ok(session)
    }

    /// A session the backend already knows (from stored metadata): no I/O.
    pub fn resume(
        &self,
        session_id: &str,
        protocol_version: String,
        capabilities: Value,
        caller: Option<Arc<CallerToken>>,
    ) -> Result<HttpSession, BackendError> {
        let init = json!({ "protocolVersion": protocol_version, "capabilities": capabilities });
        // Not ours to end if dropped: another replica may still resume it.
        self.session(Some(session_id), &protocol_version, init, Origin::Resumed, caller)
    }
}

/// How a backend session came to be, which decides its first request id,
/// whether it is DELETEd if dropped, and whether it is spoken to statelessly.
enum Origin {
    /// Opened here by a handshake: ours to end.
    Opened,
    /// Taken over from stored metadata: another replica may still use it.
    Resumed,
    /// No backend session at all (2026-07-28).
    Stateless(Arc<stateless::Stateless>),
}

/// Request ids of a resumed session start at a random offset, so they cannot
/// collide with ids the previous holder of the session may still have in flight.
fn random_first_id() -> i64 {
    let mut bytes = [0u8; 4];
    let _ = getrandom::fill(&mut bytes);
    (i64::from(u32::from_le_bytes(bytes)) << 16) + 1
}
