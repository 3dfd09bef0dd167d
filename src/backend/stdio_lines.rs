//! A stdio child's stdout on its way to rmcp, watched line by line.
//!
//! rmcp drops a line longer than `max_response_bytes` (it must: a child could
//! send one without end), and the call that line answered then waited for
//! `call_timeout`, 5 minutes by default. This reader passes every byte on
//! unchanged, counts each line as rmcp does (its newline included), and right
//! after a dropped line puts in a JSON-RPC error for the request it answered:
//! -32603 `backend answer larger than N bytes`, the answer HTTP backends give.
//!
//! Which request: the line's id, read from its first and last 256 bytes only
//! when it is unmistakable, since failing another call would be worse than
//! waiting. The line must open as a response (`{`, then `"jsonrpc": "2.0"`
//! and `"id"` in either order, then `"result"` or `"error"`; as rmcp and the
//! Python SDK write it), or open with `"result"`/`"error"` and end with the
//! top-level `"id"` (as the TypeScript SDK writes it). Ids with escapes, and
//! requests and notifications from the child, are left alone.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, ReadBuf};

/// How much of an oversized line's start and end is kept to find its id.
const KEPT: usize = 256;

pub struct BoundedLines<R> {
    inner: R,
    max: usize,
    /// Bytes of the current line so far, its newline included once seen.
    len: usize,
    head: Vec<u8>,
    /// The last `KEPT` bytes of an oversized line (only once it is one).
    tail: Vec<u8>,
    /// Read but not yet handed on (what followed an oversized line's end).
    pending: Vec<u8>,
    /// The error to hand on before anything else.
    inject: Vec<u8>,
}

impl<R> BoundedLines<R> {
    pub fn new(inner: R, max: usize) -> Self {
        Self {
            inner,
            max,
            len: 0,
            head: Vec::with_capacity(KEPT),
            tail: Vec::new(),
            pending: Vec::new(),
            inject: Vec::new(),
        }
    }

    /// Counts `bytes` into the current lines. `Some(end)`: an oversized line
    /// ends at `end` (after its newline), and `inject` holds its error if its
    /// id could be read.
    fn scan(&mut self, bytes: &[u8]) -> Option<usize> {
        let mut at = 0;
        while at < bytes.len() {
            let rest = &bytes[at..];
            let (segment, ends) = match memchr::memchr(b'\n', rest) {
                Some(i) => (&rest[..=i], true),
                None => (rest, false),
            };
            let room = KEPT.saturating_sub(self.head.len());
            self.head.extend_from_slice(&segment[..room.min(segment.len())]);
            self.len = self.len.saturating_add(segment.len());
            let over = self.len > self.max;
            if over {
                self.tail.extend_from_slice(segment);
                if self.tail.len() > KEPT {
                    self.tail.drain(..self.tail.len() - KEPT);
                }
            }
            at += segment.len();
            if ends {
                if over {
                    if let Some(id) = answered_id(&self.head, &self.tail) {
                        self.inject = too_large(id, self.max);
                    }
                }
                self.len = 0;
                self.head.clear();
                self.tail.clear();
                if over {
                    return Some(at);
                }
            }
        }
        None
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for BoundedLines<R> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if !this.inject.is_empty() {
            let n = this.inject.len().min(buf.remaining());
            buf.put_slice(&this.inject[..n]);
            this.inject.drain(..n);
            return Poll::Ready(Ok(()));
        }
        // What followed an oversized line first, else the child's next bytes;
        // either way counted, and cut after the next oversized line's end.
        let before = buf.filled().len();
        let polled = if this.pending.is_empty() {
            Pin::new(&mut this.inner).poll_read(cx, buf)
        } else {
            let n = this.pending.len().min(buf.remaining());
            buf.put_slice(&this.pending[..n]);
            this.pending.drain(..n);
            Poll::Ready(Ok(()))
        };
        if let Poll::Ready(Ok(())) = polled {
            let filled = buf.filled().len();
            if let Some(end) = this.scan(&buf.filled()[before..filled]) {
                // Hand on up to the oversized line's end; its error goes next.
                let rest = buf.filled()[before + end..filled].to_vec();
                this.pending.splice(0..0, rest);
                buf.set_filled(before + end);
            }
        }
        polled
    }
}

fn too_large(id: &[u8], max: usize) -> Vec<u8> {
    let mut line = Vec::with_capacity(160);
    line.extend_from_slice(b"{\"jsonrpc\":\"2.0\",\"id\":");
    line.extend_from_slice(id);
    line.extend_from_slice(
        format!(",\"error\":{{\"code\":-32603,\"message\":\"backend answer larger than {max} bytes (max_response_bytes)\"}}}}\n")
            .as_bytes(),
    );
    line
}

/// The id of the response an oversized line was, if unmistakable (see the
/// module): the raw JSON of an integer or of a string without escapes.
fn answered_id<'a>(head: &'a [u8], tail: &'a [u8]) -> Option<&'a [u8]> {
    let mut at = skip_ws(head, 0);
    if head.get(at) != Some(&b'{') {
        return None;
    }
    at += 1;
    let mut id = None;
    for _ in 0..3 {
        at = skip_ws(head, at);
        let (key, after) = plain_string(head, at)?;
        at = skip_ws(head, after);
        if head.get(at) != Some(&b':') {
            return None;
        }
        at = skip_ws(head, at + 1);
        match key {
            b"result" | b"error" => return id.or_else(|| id_at_end(tail)),
            b"jsonrpc" => {
                let (version, after) = plain_string(head, at)?;
                if version != b"2.0" {
                    return None;
                }
                at = after;
            }
            b"id" => {
                let (value, after) = scalar(head, at)?;
                id = Some(value);
                at = after;
            }
            _ => return None, // a request or a notification from the child
        }
        at = skip_ws(head, at);
        if head.get(at) != Some(&b',') {
            return None;
        }
        at += 1;
    }
    None
}

/// The id a line ends with: `, "id": <scalar> }` and its newline.
fn id_at_end(tail: &[u8]) -> Option<&[u8]> {
    let end = skip_ws_back(tail, tail.len());
    if end == 0 || tail[end - 1] != b'}' {
        return None;
    }
    let value_end = skip_ws_back(tail, end - 1);
    let value_start = if tail.get(value_end.checked_sub(1)?) == Some(&b'"') {
        let open = tail[..value_end - 1].iter().rposition(|b| *b == b'"')?;
        if tail[open + 1..value_end - 1].contains(&b'\\') {
            return None;
        }
        open
    } else {
        let start = tail[..value_end]
            .iter()
            .rposition(|b| !(b.is_ascii_digit() || *b == b'-'))
            .map_or(0, |i| i + 1);
        if start == value_end {
            return None;
        }
        start
    };
    let colon = skip_ws_back(tail, value_start);
    if colon == 0 || tail[colon - 1] != b':' {
        return None;
    }
    let at = skip_ws_back(tail, colon - 1);
    let key = b"\"id\"";
    if at < key.len() + 1 || &tail[at - key.len()..at] != key {
        return None;
    }
    // A member of the outermost object: after a comma (nothing can escape one).
    let before = skip_ws_back(tail, at - key.len());
    (before > 0 && tail[before - 1] == b',').then_some(&tail[value_start..value_end])
}

/// Where the whitespace ending `bytes[..at]` begins.
fn skip_ws_back(bytes: &[u8], mut at: usize) -> usize {
    while at > 0 && bytes[at - 1].is_ascii_whitespace() {
        at -= 1;
    }
    at
}

fn skip_ws(bytes: &[u8], mut at: usize) -> usize {
    while bytes.get(at).is_some_and(u8::is_ascii_whitespace) {
        at += 1;
    }
    at
}

/// A string without escapes at `at`: its contents, and where it ends.
fn plain_string(bytes: &[u8], at: usize) -> Option<(&[u8], usize)> {
    if bytes.get(at) != Some(&b'"') {
        return None;
    }
    let close = at + 1 + bytes.get(at + 1..)?.iter().position(|b| *b == b'"')?;
    let inner = &bytes[at + 1..close];
    (!inner.contains(&b'\\')).then_some((inner, close + 1))
}

/// An integer or a plain string at `at`, as raw JSON.
fn scalar(bytes: &[u8], at: usize) -> Option<(&[u8], usize)> {
    if bytes.get(at) == Some(&b'"') {
        let (_, end) = plain_string(bytes, at)?;
        return Some((&bytes[at..end], end));
    }
    let len = bytes
        .get(at..)?
        .iter()
        .take_while(|b| b.is_ascii_digit() || **b == b'-')
        .count();
    (len > 0).then_some((&bytes[at..at + len], at + len))
}

#[cfg(test)]
mod tests;
