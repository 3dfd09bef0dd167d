//! vmcp as a confidential OAuth client at an authorization server's endpoints
//! (token, introspection): a form-encoded POST that authenticates the client
//! by `client_secret_basic` or `client_secret_post` (RFC 6749 §2.3.1),
//! bounded by a timeout. The secret goes into the request and nowhere else:
//! no error names it.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};
use serde::Deserialize;

use crate::backend::client::{self, Client};
use crate::config::ClientAuthMethod;

#[derive(Debug, Clone, thiserror::Error)]
pub enum PostError {
    /// The server could not be asked or did not answer in time.
    #[error("{0}")]
    Unreachable(String),
    /// The client id or secret cannot be sent in a header.
    #[error("client credentials are not a valid header value")]
    Credentials,
}

/// An `application/x-www-form-urlencoded` body.
#[derive(Default)]
pub struct Form(String);

impl Form {
    pub fn push(&mut self, key: &str, value: &str) {
        if !self.0.is_empty() {
            self.0.push('&');
        }
        self.0.push_str(key);
        self.0.push('=');
        self.0.push_str(&encode(value));
    }
}

/// Who vmcp is at the server, and how it says so.
#[derive(Clone)]
pub struct ClientAuth {
    pub client_id: String,
    pub client_secret: String,
    pub method: ClientAuthMethod,
}

impl std::fmt::Debug for ClientAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientAuth")
            .field("client_id", &self.client_id)
            .field("method", &self.method)
            .finish_non_exhaustive()
    }
}

impl ClientAuth {
    /// POSTs `form` to `endpoint` as this client; the status and body,
    /// whatever the status.
    pub async fn post(
        &self,
        http: &Client,
        endpoint: &Uri,
        mut form: Form,
        timeout: Duration,
    ) -> Result<(StatusCode, Bytes), PostError> {
        let mut headers = HeaderMap::new();
        headers.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/x-www-form-urlencoded"),
        );
        headers.insert(http::header::ACCEPT, HeaderValue::from_static("application/json"));
        match self.method {
            ClientAuthMethod::ClientSecretBasic => {
                headers.insert(http::header::AUTHORIZATION, self.basic()?);
            }
            ClientAuthMethod::ClientSecretPost => {
                form.push("client_id", &self.client_id);
                form.push("client_secret", &self.client_secret);
            }
        }
        let exchange = async {
            let response = http
                .send(Method::POST, endpoint, headers, Bytes::from(form.0))
                .await
                .map_err(|e| PostError::Unreachable(e.to_string()))?;
            let status = response.status();
            let body = client::bytes(response)
                .await
                .map_err(|e| PostError::Unreachable(e.to_string()))?;
            Ok((status, body))
        };
        tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| PostError::Unreachable(format!("no answer within {timeout:?}")))?
    }

    /// `client_secret_basic`: each part form-encoded first (RFC 6749 §2.3.1).
    fn basic(&self) -> Result<HeaderValue, PostError> {
        use base64::Engine;
        let pair = format!("{}:{}", encode(&self.client_id), encode(&self.client_secret));
        let encoded = base64::engine::general_purpose::STANDARD.encode(pair);
        let mut value = HeaderValue::from_str(&format!("Basic {encoded}")).map_err(|_| PostError::Credentials)?;
        value.set_sensitive(true);
        Ok(value)
    }
}

/// What an OAuth error answer says (its `error` code, RFC 6749 §5.2), or
/// its status: never the request.
pub fn refusal(status: StatusCode, body: &[u8]) -> String {
    #[derive(Deserialize)]
    struct ErrorResponse {
        error: String,
    }
    serde_json::from_slice::<ErrorResponse>(body)
        .map(|e| e.error)
        .unwrap_or_else(|_| format!("HTTP {status}"))
}

fn encode(value: &str) -> String {
    utf8_percent_encode(value, NON_ALPHANUMERIC).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms_encode_every_value() {
        let mut form = Form::default();
        form.push("grant_type", "client_credentials");
        form.push("resource", "https://a.example/mcp?x=1&y");
        assert_eq!(
            form.0,
            "grant_type=client%5Fcredentials&resource=https%3A%2F%2Fa%2Eexample%2Fmcp%3Fx%3D1%26y"
        );
    }

    #[test]
    fn refusals_name_the_error_code_or_the_status() {
        assert_eq!(
            refusal(
                StatusCode::BAD_REQUEST,
                br#"{"error":"invalid_grant","error_description":"x"}"#
            ),
            "invalid_grant"
        );
        assert_eq!(refusal(StatusCode::BAD_GATEWAY, b"<html>"), "HTTP 502 Bad Gateway");
    }

    #[test]
    fn the_secret_is_not_in_debug_output() {
        let auth = ClientAuth {
            client_id: "vmcp".into(),
            client_secret: "s3cret-value".into(),
            method: ClientAuthMethod::ClientSecretBasic,
        };
        assert!(!format!("{auth:?}").contains("s3cret"));
    }
}
