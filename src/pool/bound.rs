//! How much of an answer may be held at once: the whole of a JSON (or any
//! other) body, or one event of an SSE stream (a stream may run for hours;
//! each of its messages is read whole before it is parsed, so that is what
//! must be bounded). Counted as the bytes arrive, before anyone buffers them.

/// The bytes an answer has brought, against its bound.
#[derive(Debug)]
pub struct Bound {
    max: usize,
    /// Bytes of the body, or of the current SSE event.
    seen: usize,
    /// For an SSE stream: where the last bytes left off.
    events: Option<Lines>,
}

/// An SSE event ends at an empty line; a line ends at CRLF, LF or CR.
/// An event's size is the bytes of its lines, their endings included (not
/// the empty line that ends it).
#[derive(Debug, Default)]
struct Lines {
    /// The last byte ended a line (or nothing came yet).
    at_line_start: bool,
    /// The last byte was CR (an LF next completes the same line ending).
    after_cr: bool,
    /// The last line ending was the empty line that ended an event.
    closed: bool,
}

impl Bound {
    /// No bound (a peer replica's answers: its owner bounded them already).
    pub fn none() -> Self {
        Self {
            max: usize::MAX,
            seen: 0,
            events: None,
        }
    }

    /// At most `max` bytes in all, or per event if `sse`.
    pub fn new(max: usize, sse: bool) -> Self {
        Self {
            max,
            seen: 0,
            events: (sse && max != usize::MAX).then(|| Lines {
                at_line_start: true,
                ..Lines::default()
            }),
        }
    }

    pub fn max(&self) -> usize {
        self.max
    }

    /// The bound was broken (it stays so: nothing more is counted).
    pub fn broken(&self) -> bool {
        self.seen > self.max
    }

    /// Counts `data`; false once the body (or an event) is over the bound.
    pub fn admit(&mut self, data: &[u8]) -> bool {
        let Some(lines) = &mut self.events else {
            self.seen = self.seen.saturating_add(data.len());
            return self.seen <= self.max;
        };
        let mut rest = data;
        while let Some(i) = memchr::memchr2(b'\r', b'\n', rest) {
            if i > 0 {
                lines.at_line_start = false;
                lines.after_cr = false;
                lines.closed = false;
            }
            self.seen = self.seen.saturating_add(i);
            let ending = rest[i];
            if ending == b'\n' && lines.after_cr {
                // The LF of a CRLF: part of its line, unless that was the empty one.
                lines.after_cr = false;
                if !lines.closed {
                    self.seen = self.seen.saturating_add(1);
                }
            } else if lines.at_line_start {
                self.seen = 0; // an empty line: the event is complete
                lines.closed = true;
                lines.after_cr = ending == b'\r';
            } else {
                self.seen = self.seen.saturating_add(1);
                lines.at_line_start = true;
                lines.after_cr = ending == b'\r';
                lines.closed = false;
            }
            if self.seen > self.max {
                return false;
            }
            rest = &rest[i + 1..];
        }
        if !rest.is_empty() {
            lines.at_line_start = false;
            lines.after_cr = false;
            lines.closed = false;
            self.seen = self.seen.saturating_add(rest.len());
        }
        self.seen <= self.max
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admits(bound: &mut Bound, chunks: &[&str]) -> bool {
        chunks.iter().all(|c| bound.admit(c.as_bytes()))
    }

    #[test]
    fn a_body_is_bounded_as_a_whole() {
        let mut b = Bound::new(10, false);
        assert!(admits(&mut b, &["12345", "\n\n", "678"]));
        assert!(!b.admit(b"9"));
        assert!(admits(&mut Bound::none(), &["x"; 1000]));
    }

    #[test]
    fn a_stream_is_bounded_per_event_whatever_its_line_endings() {
        for ending in ["\n", "\r\n", "\r"] {
            // 16 bytes of data, one line ending, then the empty line.
            let event = format!("data: 0123456789{ending}{ending}");
            let size = 16 + ending.len();
            // Any number of events, each within the bound, in any chunks.
            let mut b = Bound::new(size, true);
            for chunk in event.repeat(50).as_bytes().chunks(7) {
                assert!(b.admit(chunk), "{ending:?}");
            }
            // An event a byte over it is not.
            let mut b = Bound::new(size - 1, true);
            assert!(!b.admit(event.as_bytes()), "{ending:?}");
            assert!(b.broken());
        }
    }

    #[test]
    fn a_crlf_split_across_chunks_is_one_line_ending() {
        // "a\r" | "\n" | "b\r\n\r\n": the CRLF after `a` is not an empty line.
        let mut b = Bound::new(5, true);
        assert!(admits(&mut b, &["a\r", "\n"]));
        assert!(
            !b.admit(b"bcd\r\n"),
            "the first line's bytes still count: no event ended"
        );
        let mut b = Bound::new(100, true);
        assert!(admits(&mut b, &["data: x\r", "\n", "\r", "\n"]));
        assert_eq!(b.seen, 0, "CRLF CRLF ends the event");
    }

    #[test]
    fn a_single_oversized_line_is_refused_before_it_ends() {
        let mut b = Bound::new(1024, true);
        let line = format!("data: {}", "x".repeat(600));
        assert!(b.admit(line.as_bytes()));
        assert!(!b.admit(line.as_bytes()), "1212 bytes of one unfinished event");
    }
}
