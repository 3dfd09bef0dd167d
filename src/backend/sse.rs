//! Backends of the oldest era (`backends[].transport: sse`, MCP 2024-11-05's
//! HTTP+SSE): a GET opens an event stream whose first `endpoint` event names
//! where to POST; every answer and message of the server comes back on that
//! stream. One stream per backend session, held open while the session
//! lives, so such a session cannot be resumed on another replica: a replica
//! that must serve it opens a new stream and initializes again (counted as
//! `reinitialized`, as for pod-local backends).
//!
//! The stream and the POSTs are given to rmcp's client service as a
//! sink/stream transport, so everything above it (routing what the server
//! sends on its own, cancellation, closing) is the stdio backends' code.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};
use rmcp::model::{ClientConfig, ClientJsonRpcMessage, ServerJsonRpcMessage};
use serde_json::Value;
use tracing::Instrument;

use super::client::{self, Client, Target};
use super::stdio::StdioSession;
use super::stdio_client::StdioClient;
use super::BackendError;

pub struct SseBackend {
    url: String,
    uri: Uri,
    client: Client,
    headers: HeaderMap,
    connect_timeout: Duration,
}

impl SseBackend {
    pub fn new(url: &str, headers: &BTreeMap<String, String>, bounds: super::Bounds) -> Result<Self, BackendError> {
        let connect_timeout = bounds.connect;
        let transport = |e: client::ClientError| BackendError::Transport(e.to_string());
        let target = Target::parse(url).map_err(transport)?;
        let mut prepared = HeaderMap::new();
        for (k, v) in headers {
            let name = HeaderName::from_bytes(k.as_bytes())
                .map_err(|e| BackendError::Protocol(format!("header name {k}: {e}")))?;
            let value = HeaderValue::from_str(v).map_err(|e| BackendError::Protocol(format!("header {k}: {e}")))?;
            prepared.insert(name, value);
        }
        if let Some(credentials) = target.authorization {
            prepared.insert(http::header::AUTHORIZATION, credentials);
        }
        Ok(Self {
            url: url.to_owned(),
            uri: target.uri,
            client: Client::new(connect_timeout)
                .map_err(transport)?
                .with_max_answer(bounds.max_answer)
                .with_keep_alive(bounds.keep_alive),
            headers: prepared,
            connect_timeout,
        })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// Opens the stream, learns the endpoint, and runs the handshake.
    pub async fn connect(&self, params: Value, name: &str) -> Result<StdioSession, BackendError> {
        let info: ClientConfig = serde_json::from_value(params)
            .map_err(|e| BackendError::Protocol(format!("client initialize params: {e}")))?;
        let mut headers = self.headers.clone();
        headers.insert(http::header::ACCEPT, HeaderValue::from_static("text/event-stream"));
        let opened = tokio::time::timeout(
            self.connect_timeout,
            self.client.send(Method::GET, &self.uri, headers, Bytes::new()),
        )
        .await
        .map_err(|_| BackendError::Timeout(self.connect_timeout))?
        .map_err(|e| BackendError::Transport(e.to_string()))?;
        if opened.status() != StatusCode::OK {
            return Err(BackendError::Protocol(format!(
                "GET for the event stream answered {}",
                opened.status()
            )));
        }
        let mut events = sse_stream::SseStream::new(opened.into_body()).boxed();
        let endpoint = tokio::time::timeout(self.connect_timeout, endpoint_of(&mut events))
            .await
            .map_err(|_| BackendError::Timeout(self.connect_timeout))?
            .ok_or_else(|| BackendError::Protocol("the event stream named no endpoint".into()))?;
        let post_to = resolve(&self.uri, endpoint.trim())?;
        // What the server says, as rmcp reads it (events that are not messages are skipped).
        let incoming = events.filter_map(message_of).boxed();
        let (client, mut headers) = (self.client.clone(), self.headers.clone());
        headers.insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        let outgoing = futures_util::sink::unfold(
            Poster {
                client,
                uri: post_to,
                headers,
            },
            post,
        );
        let service_client = StdioClient::new(info, name);
        let service = serve(service_client.clone(), outgoing, incoming, name)
            .await
            .map_err(|e| BackendError::Transport(format!("handshake: {e}")))?;
        StdioSession::over_connection(service_client, service)
    }
}

type Events = futures_util::stream::BoxStream<'static, Result<sse_stream::Sse, sse_stream::Error>>;

/// The data of the stream's first `endpoint` event.
async fn endpoint_of(events: &mut Events) -> Option<String> {
    while let Some(event) = events.next().await {
        let event = event.ok()?;
        if event.event.as_deref() == Some("endpoint") {
            return event.data;
        }
    }
    None
}

/// A server message, if the event carries one.
fn message_of(event: Result<sse_stream::Sse, sse_stream::Error>) -> std::future::Ready<Option<ServerJsonRpcMessage>> {
    let message = event
        .ok()
        .and_then(|e| e.data)
        .and_then(|data| serde_json::from_str(&data).ok());
    std::future::ready(message)
}

/// Where and how messages to the server are POSTed.
struct Poster {
    client: Client,
    uri: Uri,
    headers: HeaderMap,
}

async fn post(poster: Poster, message: ClientJsonRpcMessage) -> Result<Poster, std::io::Error> {
    let body = serde_json::to_vec(&message).map_err(std::io::Error::other)?;
    let answered = poster
        .client
        .send(Method::POST, &poster.uri, poster.headers.clone(), Bytes::from(body))
        .await
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    if !answered.status().is_success() {
        return Err(std::io::Error::other(format!("POST answered {}", answered.status())));
    }
    Ok(poster)
}

type Service = rmcp::service::RunningService<rmcp::RoleClient, StdioClient>;

/// rmcp's client service over the stream and the POSTs, boxed as a `Send`
/// future of its own (rmcp's future borrows nothing of ours).
fn serve(
    client: StdioClient,
    outgoing: impl futures_util::Sink<ClientJsonRpcMessage, Error = std::io::Error> + Send + 'static,
    incoming: futures_util::stream::BoxStream<'static, ServerJsonRpcMessage>,
    name: &str,
) -> futures_util::future::BoxFuture<'static, Result<Service, rmcp::service::ClientInitializeError>> {
    let span = tracing::info_span!(parent: None, "sse_backend", backend = name);
    Box::pin(rmcp::serve_client(client, (Box::pin(outgoing), incoming)).instrument(span))
}

/// The endpoint an `endpoint` event names, against the stream's URL.
fn resolve(base: &Uri, endpoint: &str) -> Result<Uri, BackendError> {
    let bad = || BackendError::Protocol(format!("the endpoint `{endpoint}` is not a URL"));
    if endpoint.starts_with("http://") || endpoint.starts_with("https://") {
        return endpoint.parse().map_err(|_| bad());
    }
    let path = if endpoint.starts_with('/') {
        endpoint.to_owned()
    } else {
        let dir = base.path().rsplit_once('/').map_or("", |(d, _)| d);
        format!("{dir}/{endpoint}")
    };
    let scheme = base.scheme_str().unwrap_or("http");
    let authority = base.authority().map(|a| a.as_str()).ok_or_else(bad)?;
    format!("{scheme}://{authority}{path}").parse().map_err(|_| bad())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_resolve_against_the_streams_url() {
        let base: Uri = "http://127.0.0.1:9/sse".parse().unwrap();
        assert_eq!(
            resolve(&base, "/messages/?session_id=ab").unwrap().to_string(),
            "http://127.0.0.1:9/messages/?session_id=ab"
        );
        assert_eq!(
            resolve(&base, "messages?x=1").unwrap().to_string(),
            "http://127.0.0.1:9/messages?x=1"
        );
        assert_eq!(
            resolve(&base, "http://other:1/m").unwrap().to_string(),
            "http://other:1/m"
        );
    }
}
