//! An authorization server's metadata: RFC 8414 first, then OpenID Connect
//! discovery. The inbound side reads its `jwks_uri` and
//! `introspection_endpoint`; the outbound side (token exchange, client
//! credentials) its `token_endpoint`.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use serde::Deserialize;

use crate::backend::client::{self, Client};

#[derive(Debug, Deserialize)]
pub struct ServerMetadata {
    pub issuer: String,
    #[serde(default)]
    pub jwks_uri: Option<String>,
    #[serde(default)]
    pub token_endpoint: Option<String>,
    #[serde(default)]
    pub introspection_endpoint: Option<String>,
}

/// The metadata of `issuer`, which must name the same issuer.
pub async fn discover(client: &Client, issuer_url: &str, timeout: Duration) -> Result<ServerMetadata, String> {
    let issuer = issuer_url.trim_end_matches('/');
    let (origin, path) = split_origin(issuer);
    let candidates = [
        format!("{origin}/.well-known/oauth-authorization-server{path}"),
        format!("{issuer}/.well-known/openid-configuration"),
    ];
    let mut last = String::new();
    for url in candidates {
        let Ok(uri) = url.parse::<Uri>() else {
            return Err(format!("issuer `{issuer_url}` is not a URL"));
        };
        match get(client, &uri, timeout).await {
            Ok(body) => {
                let meta: ServerMetadata = serde_json::from_slice(&body).map_err(|e| format!("{url}: {e}"))?;
                if meta.issuer.trim_end_matches('/') != issuer {
                    return Err(format!("{url} names issuer `{}`, not `{issuer_url}`", meta.issuer));
                }
                return Ok(meta);
            }
            Err(e) => last = format!("{url}: {e}"),
        }
    }
    Err(last)
}

/// A GET answered 200, its body (bounded by `timeout`).
pub async fn get(client: &Client, uri: &Uri, timeout: Duration) -> Result<Bytes, String> {
    let mut headers = HeaderMap::new();
    headers.insert(http::header::ACCEPT, HeaderValue::from_static("application/json"));
    let request = async {
        let response = client
            .send(Method::GET, uri, headers, Bytes::new())
            .await
            .map_err(|e| e.to_string())?;
        if response.status() != StatusCode::OK {
            return Err(format!("answered {}", response.status()));
        }
        client::bytes(response).await.map_err(|e| e.to_string())
    };
    tokio::time::timeout(timeout, request)
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {timeout:?}")))
}

/// `https://host:port` and the path (with its leading `/`, or empty).
fn split_origin(url: &str) -> (&str, &str) {
    let after_scheme = url.find("://").map_or(0, |i| i + 3);
    match url[after_scheme..].find('/') {
        Some(i) => url.split_at(after_scheme + i),
        None => (url, ""),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_urls_insert_the_well_known_part_before_the_path() {
        assert_eq!(split_origin("https://idp.example.com"), ("https://idp.example.com", ""));
        assert_eq!(
            split_origin("https://idp.example.com/realms/x"),
            ("https://idp.example.com", "/realms/x")
        );
    }
}
