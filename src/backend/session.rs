//! One client session's session with one backend: its requests (bounded by
//! the call deadline and the client's cancellation), notices, streams and
//! close, over whichever transport the backend speaks.

use super::*;

/// The live connection of one backend session.
pub(super) enum Conn {
    Http(self::http::HttpSession),
    Stdio(self::stdio::StdioSession),
}

/// One client session's session with one backend.
pub struct BackendSession {
    pub(super) backend: Arc<Backend>,
    pub(super) conn: Conn,
}

impl BackendSession {
    pub fn backend(&self) -> &Arc<Backend> {
        &self.backend
    }

    pub fn name(&self) -> &str {
        self.backend.name()
    }

    /// The backend's `initialize` result (capabilities, serverInfo, instructions).
    pub fn init_result(&self) -> &Value {
        match &self.conn {
            Conn::Http(s) => s.init_result(),
            Conn::Stdio(s) => s.init_result(),
        }
    }

    /// Whether the backend advertised capability `name` (`tools`, `prompts`, ...).
    pub fn has_capability(&self, name: &str) -> bool {
        self.init_result()
            .get("capabilities")
            .and_then(|c| c.get(name))
            .is_some_and(|v| !v.is_null())
    }

    /// Sends one request and waits for its result, at most `timeout`.
    pub async fn request(
        &self,
        method: &str,
        params: Option<&Value>,
        timeout: Duration,
    ) -> Result<Value, BackendError> {
        self.call(method, params, timeout, &CallContext::default()).await
    }

    /// Like [`request`](Self::request), for a client's request: the backend's
    /// messages about it go to the context's relay, and a cancellation or a
    /// timeout is passed on to the backend as `notifications/cancelled`.
    pub async fn call(
        &self,
        method: &str,
        params: Option<&Value>,
        timeout: Duration,
        ctx: &CallContext,
    ) -> Result<Value, BackendError> {
        let params = params.map(Params::Tree);
        match &self.conn {
            Conn::Http(s) => self.call_http(s, method, params, timeout, ctx).await,
            Conn::Stdio(s) => Box::pin(s.call(method, params, timeout, &ctx.cancel, ctx.relay.as_ref())).await,
        }
    }

    /// Like [`Self::call`], for a result that goes back to the client
    /// unread: an HTTP backend's stays the bytes it sent (see [`Reply`]).
    pub async fn call_through(
        &self,
        method: &str,
        params: Option<Params<'_>>,
        timeout: Duration,
        ctx: &CallContext,
    ) -> Result<Reply, BackendError> {
        match &self.conn {
            Conn::Http(s) => self.call_http(s, method, params, timeout, ctx).await.map(Reply::Raw),
            // Boxed, as every large branch an HTTP call does not take:
            // each caller's state holds a future's largest branch, and
            // each level of a call copies it (4.8 KB here).
            Conn::Stdio(s) => Box::pin(s.call(method, params, timeout, &ctx.cancel, ctx.relay.as_ref()))
                .await
                .map(Reply::Tree),
        }
    }

    /// A request to an HTTP backend, its result parsed as `R`; a cancelled
    /// or timed-out request is cancelled at the backend too.
    async fn call_http<R: serde::de::DeserializeOwned>(
        &self,
        s: &self::http::HttpSession,
        method: &str,
        params: Option<Params<'_>>,
        timeout: Duration,
        ctx: &CallContext,
    ) -> Result<R, BackendError> {
        let id = s.next_id();
        let mut relay = |message| ctx.relay(self.name(), message);
        // At most `timeout`, unless the client cancels first. Selected
        // here, not in a helper taking the request's future: an async fn
        // keeps a future argument twice in its state (3.3 KB to 6.8 KB here).
        let outcome = tokio::select! {
            outcome = tokio::time::timeout(timeout, s.request::<R>(id, method, params, &mut relay)) => {
                outcome.unwrap_or(Err(BackendError::Timeout(timeout)))
            }
            _ = ctx.cancel.cancelled() => Err(BackendError::Cancelled),
        };
        if let Err(e @ (BackendError::Cancelled | BackendError::Timeout(_))) = &outcome {
            // In the background: a backend that did not answer in time
            // may not take the notice in time either.
            let notice = json!({
                "jsonrpc": "2.0",
                "method": "notifications/cancelled",
                "params": { "requestId": id, "reason": e.to_string() },
            });
            if let Ok(send) = s.sender(&notice) {
                let name = Arc::clone(&self.backend);
                tokio::spawn(async move {
                    if let Err(e) = send.await {
                        tracing::debug!(backend = name.name(), error = %e, "cancellation not delivered");
                    }
                });
            }
        }
        outcome
    }

    /// Sends a notification; failures are logged, not returned (nobody waits on them).
    pub async fn notify(&self, method: &str, params: Option<Value>) {
        let result = match &self.conn {
            Conn::Http(s) => s.notify(method, params).await,
            Conn::Stdio(s) => s.notify(method, params).await,
        };
        if let Err(e) = result {
            tracing::debug!(backend = self.name(), method, error = %e, "backend notification failed");
        }
    }

    /// Passes the client's answer to one of the backend's requests.
    pub async fn deliver(&self, message: &Value) -> Result<(), BackendError> {
        match &self.conn {
            Conn::Http(s) => s.deliver(message).await,
            Conn::Stdio(s) => s.answer(message),
        }
    }

    /// The backend's own message stream (GET), if it offers one.
    pub async fn listen(&self) -> Result<Option<BoxStream<'static, Value>>, BackendError> {
        match &self.conn {
            Conn::Http(s) => s.listen().await,
            Conn::Stdio(s) => Ok(Some(s.listen())),
        }
    }

    /// Ends the backend session (HTTP DELETE, or kills the child process).
    pub async fn close(&self) {
        match &self.conn {
            Conn::Http(s) => s.close().await,
            Conn::Stdio(s) => s.close().await,
        }
    }

    /// Lets go of the backend session without ending it on the backend, so
    /// another replica can resume it. A stdio child is ours alone: it is killed.
    pub async fn release(&self) {
        match &self.conn {
            Conn::Http(s) => s.release(),
            Conn::Stdio(s) => s.close().await,
        }
    }

    /// This backend session as session metadata.
    pub fn record(&self) -> BackendRecord {
        let (session_id, protocol_version) = match &self.conn {
            Conn::Http(s) => (
                s.session_id().map(str::to_owned),
                Some(shared_version(s.protocol_version())),
            ),
            Conn::Stdio(s) => (None, s.protocol_version().as_deref().map(shared_version)),
        };
        BackendRecord {
            name: Arc::clone(self.backend.shared_name()),
            target: self.backend.target(),
            session_id,
            protocol_version,
            capabilities: self
                .init_result()
                .get("capabilities")
                .map(|caps| self.backend.shared_capabilities(caps)),
        }
    }
}
