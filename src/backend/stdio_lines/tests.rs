use tokio::io::AsyncReadExt;

use super::{answered_id, BoundedLines};

fn id(line: &str) -> Option<String> {
    let bytes = line.as_bytes();
    let head = &bytes[..bytes.len().min(super::KEPT)];
    let tail = &bytes[bytes.len().saturating_sub(super::KEPT)..];
    answered_id(head, tail).map(|id| String::from_utf8_lossy(id).into_owned())
}

fn big(n: usize) -> String {
    "x".repeat(n)
}

#[test]
fn the_id_is_read_where_each_sdk_writes_it() {
    let text = big(5000);
    // rmcp
    let rmcp = format!(r#"{{"jsonrpc":"2.0","id":7,"result":{{"content":[{{"type":"text","text":"{text}"}}]}}}}"#);
    assert_eq!(id(&rmcp).as_deref(), Some("7"));
    // the Python SDK (json.dumps spacing), a string id
    let python = format!(r#"{{"jsonrpc": "2.0", "id": "vmcp-3", "result": {{"text": "{text}"}}}}"#);
    assert_eq!(id(&python).as_deref(), Some(r#""vmcp-3""#));
    // the TypeScript SDK: the result first, the id last
    let ts = format!(r#"{{"result":{{"content":[{{"text":"{text}","id":99}}]}},"jsonrpc":"2.0","id":12}}"#);
    assert_eq!(id(&ts).as_deref(), Some("12"));
    let error = format!(r#"{{"jsonrpc":"2.0","id":4,"error":{{"code":1,"message":"{text}"}}}}"#);
    assert_eq!(id(&error).as_deref(), Some("4"));
}

#[test]
fn anything_less_than_unmistakable_is_left_alone() {
    let text = big(5000);
    for line in [
        // A request from the child: its id is in the child's id space.
        format!(r#"{{"jsonrpc":"2.0","id":1,"method":"sampling/createMessage","params":{{"t":"{text}"}}}}"#),
        format!(r#"{{"method":"sampling/createMessage","params":{{"t":"{text}"}},"jsonrpc":"2.0","id":1}}"#),
        // An escaped string id.
        format!(r#"{{"jsonrpc":"2.0","id":"a\"b","result":{{"t":"{text}"}}}}"#),
        // The result first, and no id at the end (cut off, or nested).
        format!(r#"{{"result":{{"t":"{text}"}},"jsonrpc":"2.0"}}"#),
        format!(r#"{{"result":{{"t":"{text}","id":5}}}}"#),
        // Not JSON.
        text.clone(),
    ] {
        assert_eq!(id(&line), None, "{}", &line[..60]);
    }
}

#[tokio::test]
async fn every_byte_passes_and_an_oversized_line_is_followed_by_its_error() {
    let long = format!("{{\"jsonrpc\":\"2.0\",\"id\":2,\"result\":\"{}\"}}\n", big(3000));
    let input = format!(
        "{{\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{{}}}}\n{long}{{\"jsonrpc\":\"2.0\",\"id\":3,\"result\":{{}}}}\n"
    );
    // Read in small pieces: lines and bounds fall anywhere.
    let (mut write, read) = tokio::io::duplex(7);
    let feeder = tokio::spawn({
        let input = input.clone();
        async move {
            use tokio::io::AsyncWriteExt;
            let _ = write.write_all(input.as_bytes()).await;
        }
    });
    let mut lines = BoundedLines::new(read, 1024);
    let mut out = Vec::new();
    lines.read_to_end(&mut out).await.expect("read");
    feeder.await.expect("feeder");
    let error = "{\"jsonrpc\":\"2.0\",\"id\":2,\"error\":{\"code\":-32603,\"message\":\"backend answer larger than 1024 bytes (max_response_bytes)\"}}\n";
    let (first, rest) = input.split_at(input.find('\n').unwrap_or(0) + 1);
    let expected = format!("{first}{long}{error}{}", &rest[long.len()..]);
    assert_eq!(String::from_utf8_lossy(&out), expected);
}

#[tokio::test]
async fn a_line_of_exactly_the_bound_is_not_oversized() {
    let line = format!("{{\"jsonrpc\":\"2.0\",\"id\":1,\"result\":\"{}\"}}\n", big(100));
    let mut lines = BoundedLines::new(line.as_bytes(), line.len());
    let mut out = Vec::new();
    lines.read_to_end(&mut out).await.expect("read");
    assert_eq!(out, line.as_bytes());
}
