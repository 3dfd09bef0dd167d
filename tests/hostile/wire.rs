//! How the hostile-input test reaches the front door (in process, HTTP,
//! raw sockets) and how it judges each answer.

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::cases::{Case, Sid, Via};

/// What came back: status, content type and body (`None`: closed without an answer).
pub struct Answer {
    status: u16,
    content_type: String,
    body: Vec<u8>,
}

/// Sends `case` the way it says (`live` is the live session's id).
pub async fn send(
    app: &vmcp::app::App,
    url: &str,
    addr: &str,
    live: &str,
    case: &Case,
) -> Result<Option<Answer>, String> {
    let sid: Option<&[u8]> = match &case.sid {
        Sid::Valid => Some(live.as_bytes()),
        Sid::None => None,
        Sid::Other(s) => Some(s.as_bytes()),
    };
    match case.via {
        Via::InProcess => return in_process(app, addr, sid, case).await.map(Some),
        Via::RawHeader(_) | Via::Garbage => return send_raw(addr, sid, case).await,
        Via::Http => {}
    }
    let method = http::Method::from_bytes(case.method.as_bytes()).map_err(|e| e.to_string())?;
    let mut req = crate::support::http().request(method, url);
    let mut headers = reqwest::header::HeaderMap::new();
    let mut put = |name: &'static str, value: &[u8]| {
        if let Ok(v) = reqwest::header::HeaderValue::from_bytes(value) {
            headers.append(name, v);
        }
    };
    if let Some(sid) = sid {
        put("mcp-session-id", sid);
    }
    for (name, value) in &case.headers {
        put(name, value);
    }
    req = req.headers(headers);
    if case.method == "POST" {
        req = req.body(case.body.clone());
    }
    let resp = req
        .send()
        .await
        .map_err(|e| format!("request failed: {:?}", std::error::Error::source(&e)))?;
    let status = resp.status().as_u16();
    let content_type = resp
        .headers()
        .get("content-type")
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .unwrap_or_default();
    let body = resp.bytes().await.map_err(|e| format!("body failed: {e}"))?.to_vec();
    Ok(Some(Answer {
        status,
        content_type,
        body,
    }))
}

/// The `/mcp` handler called directly with the case's headers and body.
async fn in_process(app: &vmcp::app::App, addr: &str, sid: Option<&[u8]>, case: &Case) -> Result<Answer, String> {
    use http_body_util::BodyExt;
    let mut req = http::Request::builder()
        .method(case.method)
        .uri("/mcp")
        .header("host", addr);
    if let Some(sid) = sid.and_then(|s| http::HeaderValue::from_bytes(s).ok()) {
        req = req.header("mcp-session-id", sid);
    }
    for (name, value) in &case.headers {
        if let Ok(v) = http::HeaderValue::from_bytes(value) {
            req = req.header(*name, v);
        }
    }
    let body = if case.method == "POST" {
        case.body.clone()
    } else {
        Vec::new()
    };
    let req = req.body(bytes::Bytes::from(body)).map_err(|e| e.to_string())?;
    let resp = vmcp::http::handle_buffered(app, req).await;
    let status = resp.status().as_u16();
    let content_type = resp
        .headers()
        .get("content-type")
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .unwrap_or_default();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("body failed: {e}"))?
        .to_bytes()
        .to_vec();
    Ok(Answer {
        status,
        content_type,
        body,
    })
}

/// One request on its own connection, written byte for byte; reads to EOF.
async fn send_raw(addr: &str, sid: Option<&[u8]>, case: &Case) -> Result<Option<Answer>, String> {
    let mut request = Vec::new();
    if case.via == Via::Garbage {
        request.extend_from_slice(&case.body);
        request.extend_from_slice(b"\r\n\r\n");
    } else {
        request.extend_from_slice(
            format!("{} /mcp HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n", case.method).as_bytes(),
        );
        let mut line = |name: &[u8], value: &[u8]| {
            request.extend_from_slice(name);
            request.extend_from_slice(b": ");
            request.extend_from_slice(value);
            request.extend_from_slice(b"\r\n");
        };
        if let Some(sid) = sid {
            line(b"mcp-session-id", sid);
        }
        for (name, value) in &case.headers {
            line(name.as_bytes(), value);
        }
        if let Via::RawHeader(bytes) = &case.via {
            // The hostile value goes where it does most harm: a header vmcp reads.
            let name: &[u8] = match bytes.first().copied().unwrap_or_default() % 4 {
                0 => b"mcp-session-id",
                1 => b"accept",
                2 => b"origin",
                _ => b"mcp-protocol-version",
            };
            line(name, bytes);
        }
        line(b"content-length", case.body.len().to_string().as_bytes());
        request.extend_from_slice(b"\r\n");
        request.extend_from_slice(&case.body);
    }
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    // The server may answer and close before reading everything: not an error.
    let _ = stream.write_all(&request).await;
    let mut received = Vec::new();
    let _ = stream.read_to_end(&mut received).await;
    if received.is_empty() {
        return Ok(None);
    }
    parse_raw(&received).map(Some)
}

fn parse_raw(received: &[u8]) -> Result<Answer, String> {
    let text = String::from_utf8_lossy(received);
    let (head, rest) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("no end of head: {text:.200}"))?;
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line: {head:.200}"))?;
    let mut content_type = String::new();
    let mut chunked = false;
    for l in lines {
        let (k, v) = l.split_once(':').unwrap_or((l, ""));
        match k.trim().to_ascii_lowercase().as_str() {
            "content-type" => content_type = v.trim().to_owned(),
            "transfer-encoding" => chunked = v.to_ascii_lowercase().contains("chunked"),
            _ => {}
        }
    }
    let body = if chunked { unchunk(rest) } else { rest.to_owned() };
    Ok(Answer {
        status,
        content_type,
        body: body.into_bytes(),
    })
}

fn unchunk(mut rest: &str) -> String {
    let mut out = String::new();
    while let Some((size, after)) = rest.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || after.len() < n {
            break;
        }
        out.push_str(&after[..n]);
        rest = after[n..].trim_start_matches("\r\n");
    }
    out
}

/// Statuses the front door may answer to hostile input.
const ALLOWED: &[u16] = &[200, 202, 400, 403, 404, 405, 406, 408, 413, 415, 431];

pub fn check(case: &Case, answer: Option<&Answer>) -> Result<(), String> {
    let Some(answer) = answer else {
        // Closing without an answer is fine only for what is not HTTP at all.
        return if matches!(case.via, Via::Garbage | Via::RawHeader(_)) {
            Ok(())
        } else {
            Err("closed without an answer".into())
        };
    };
    if case.via == Via::Garbage {
        // hyper answers what it cannot parse (400, 431, 505, ...); never a 500.
        return if (400..500).contains(&answer.status) || answer.status == 505 {
            Ok(())
        } else {
            Err(format!("status {} for garbage", answer.status))
        };
    }
    if !ALLOWED.contains(&answer.status) {
        return Err(format!(
            "status {}: {}",
            answer.status,
            String::from_utf8_lossy(&answer.body)
        ));
    }
    let front_door_error = answer.status >= 400;
    if answer.content_type.starts_with("application/json") {
        let v: Value = serde_json::from_slice(&answer.body).map_err(|e| format!("JSON body does not parse: {e}"))?;
        check_payload(&v, front_door_error)
    } else if answer.content_type.starts_with("text/event-stream") {
        let text = String::from_utf8_lossy(&answer.body);
        for data in text.lines().filter_map(|l| l.strip_prefix("data:")).map(str::trim) {
            if data.is_empty() {
                continue;
            }
            let v: Value =
                serde_json::from_str(data).map_err(|e| format!("SSE data does not parse: {e}: {data:.200}"))?;
            check_payload(&v, front_door_error)?;
        }
        Ok(())
    } else if answer.body.is_empty() || answer.status == 431 {
        Ok(())
    } else {
        Err(format!(
            "status {} with an unexpected body ({})",
            answer.status, answer.content_type
        ))
    }
}

fn check_payload(v: &Value, front_door_error: bool) -> Result<(), String> {
    match v {
        Value::Array(items) if !items.is_empty() && !front_door_error => {
            items.iter().try_for_each(|item| check_message(item, false))
        }
        other => check_message(other, front_door_error),
    }
}

/// A JSON-RPC 2.0 response or error (or, on a stream, a server message).
fn check_message(v: &Value, front_door_error: bool) -> Result<(), String> {
    let fail = |why: &str| Err(format!("{why}: {:.300}", v.to_string()));
    let Some(obj) = v.as_object() else {
        return fail("not an object");
    };
    if obj.get("jsonrpc") != Some(&json!("2.0")) {
        return fail("jsonrpc is not \"2.0\"");
    }
    if obj.contains_key("method") && !front_door_error {
        return Ok(()); // a notification or request from a backend, relayed
    }
    match obj.get("id") {
        Some(Value::Null | Value::String(_)) => {}
        Some(Value::Number(n)) if n.is_i64() || n.is_u64() => {}
        _ => return fail("id is not a string, an integer or null"),
    }
    match (obj.get("result"), obj.get("error")) {
        (Some(_), None) if !front_door_error => Ok(()),
        (None, Some(error)) => {
            let Some(code) = error.get("code").and_then(Value::as_i64) else {
                return fail("error code is not an integer");
            };
            if i32::try_from(code).is_err() {
                return fail("error code out of range");
            }
            // JSON-RPC's own codes, and 2026-07-28's envelope refusals (header
            // mismatch -32020, missing capability -32021, unsupported version -32022).
            if front_door_error && !(-32700..=-32600).contains(&code) && !(-32022..=-32020).contains(&code) {
                return fail("an HTTP error status with a code outside -32700..-32600 and -32022..-32020");
            }
            if !error.get("message").is_some_and(Value::is_string) {
                return fail("error message is not a string");
            }
            Ok(())
        }
        _ => fail("neither exactly a result nor an error"),
    }
}
