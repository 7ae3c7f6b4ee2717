//! An incremental decoder for `text/event-stream` bodies.
//!
//! Bytes go in as the network delivers them, in chunks cut anywhere (inside a line, inside a
//! UTF-8 character, between `\r` and `\n`); complete events' `data` come out. Only what is
//! not yet a complete line is buffered, so a `berth events -f` that runs for days holds one
//! line at most.
//!
//! Follows the WHATWG rules that matter here: lines end with `\n`, `\r\n` or `\r`; a blank
//! line dispatches the event; `data:` lines are joined with `\n`; one space after the colon is
//! dropped; comments (`:` lines), `event:`, `id:` and `retry:` are ignored; an event not
//! terminated by a blank line when the stream ends is discarded.

/// Longest line accepted. A server sending more without a line end is broken (or not berth),
/// and buffering it without bound would let it exhaust the client's memory.
pub const MAX_LINE: usize = 1 << 20;

/// A line longer than [`MAX_LINE`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LineTooLong;

/// The decoder's state between chunks.
#[derive(Debug, Default)]
pub struct SseDecoder {
    /// Bytes of the current, incomplete line.
    line: Vec<u8>,
    /// The previous chunk ended with `\r`: a `\n` at the start of the next one belongs to it.
    after_cr: bool,
    /// `data` lines of the event being read, joined with `\n`.
    data: String,
    /// Whether the event being read had at least one `data` field (which may be empty).
    has_data: bool,
}

impl SseDecoder {
    /// A decoder at the start of a stream.
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds one chunk; pushes the `data` of each event it completes onto `out`, in order.
    pub fn feed(&mut self, chunk: &[u8], out: &mut Vec<String>) -> Result<(), LineTooLong> {
        let mut rest = chunk;
        if self.after_cr {
            self.after_cr = false;
            if let Some(stripped) = rest.strip_prefix(b"\n") {
                rest = stripped;
            }
        }
        while let Some(end) = rest.iter().position(|&b| b == b'\n' || b == b'\r') {
            let (content, tail) = rest.split_at(end);
            self.push(content)?;
            let line = std::mem::take(&mut self.line);
            self.line_ended(&line, out);
            self.line = line;
            self.line.clear();
            rest = match tail {
                [b'\r', b'\n', more @ ..] => more,
                [b'\r'] => {
                    self.after_cr = true;
                    &[]
                }
                [_, more @ ..] => more,
                [] => &[],
            };
        }
        self.push(rest)
    }

    fn push(&mut self, bytes: &[u8]) -> Result<(), LineTooLong> {
        if self.line.len() + bytes.len() > MAX_LINE {
            return Err(LineTooLong);
        }
        self.line.extend_from_slice(bytes);
        Ok(())
    }

    fn line_ended(&mut self, line: &[u8], out: &mut Vec<String>) {
        if line.is_empty() {
            if self.has_data {
                out.push(std::mem::take(&mut self.data));
            }
            self.data.clear();
            self.has_data = false;
            return;
        }
        let (field, value) = match line.iter().position(|&b| b == b':') {
            Some(0) => return, // a comment (keep-alive)
            Some(i) => {
                let value = &line[i + 1..];
                (&line[..i], value.strip_prefix(b" ").unwrap_or(value))
            }
            None => (line, &b""[..]),
        };
        if field == b"data" {
            if self.has_data {
                self.data.push('\n');
            }
            self.data.push_str(&String::from_utf8_lossy(value));
            self.has_data = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_in(chunks: &[&[u8]]) -> Vec<String> {
        let mut decoder = SseDecoder::new();
        let mut out = Vec::new();
        for chunk in chunks {
            decoder.feed(chunk, &mut out).expect("short lines");
        }
        out
    }

    #[test]
    fn every_split_point_gives_the_same_events() {
        let stream: &[u8] = b": hello\r\n\r\ndata: {\"a\":1}\n\nevent: x\ndata:{\"b\":\"\xc3\xa9\"}\r\rdata: one\ndata: two\r\n\r\nid: 7\n\ndata: unterminated";
        let whole = decode_in(&[stream]);
        assert_eq!(whole, ["{\"a\":1}", "{\"b\":\"é\"}", "one\ntwo"]);
        for i in 0..=stream.len() {
            for j in i..=stream.len() {
                let parts = [&stream[..i], &stream[i..j], &stream[j..]];
                assert_eq!(decode_in(&parts), whole, "split at {i} and {j}");
            }
        }
    }

    #[test]
    fn byte_by_byte_works() {
        let stream = b"data: x\r\n\r\ndata: y\n\n";
        let chunks: Vec<&[u8]> = stream.chunks(1).collect();
        assert_eq!(decode_in(&chunks), ["x", "y"]);
    }

    #[test]
    fn an_endless_line_is_refused() {
        let mut decoder = SseDecoder::new();
        let mut out = Vec::new();
        let chunk = vec![b'x'; MAX_LINE / 2 + 1];
        assert_eq!(decoder.feed(&chunk, &mut out), Ok(()));
        assert_eq!(decoder.feed(&chunk, &mut out), Err(LineTooLong));
    }
}
