//! W3C Trace Context (<https://www.w3.org/TR/trace-context/>) at the router's hop.
//!
//! The router is a hop of every request's trace: it keeps a valid incoming trace id, gives the
//! request a new parent id (its own span), and starts a trace when `traceparent` is absent or
//! invalid, so that every instance sees a trace id it can log and propagate. `tracestate` travels
//! unchanged with a trace the router kept, and goes with one it had to restart (the spec: a
//! vendor that cannot parse `traceparent` must not use `tracestate`, which describes the other
//! trace). The trace id is what the access log and the `X-Trace-Id` response header carry.
//!
//! Pure: randomness comes in as an argument, so the rules are tested without a socket.

use http::header::{HeaderMap, HeaderName, HeaderValue};

/// The W3C request header that carries the trace.
pub(crate) const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
/// Vendor-specific trace data, passed through with the trace it belongs to.
pub(crate) const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");
/// The response header that tells the client which trace its request was (traefik#10921).
pub(crate) const X_TRACE_ID: HeaderName = HeaderName::from_static("x-trace-id");

/// A trace id: 16 bytes, never all zero (an all-zero id is invalid by the spec).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TraceId([u8; 16]);

impl TraceId {
    /// The id as the spec writes it: 32 lower-case hex digits.
    pub(crate) fn hex(&self) -> [u8; 32] {
        let mut out = [0u8; 32];
        hex_into(&self.0, &mut out);
        out
    }

    /// The `X-Trace-Id` header value.
    pub(crate) fn header_value(&self) -> HeaderValue {
        // 32 hex digits are always a valid header value.
        HeaderValue::from_bytes(&self.hex()).unwrap_or_else(|_| HeaderValue::from_static("0"))
    }
}

/// The trace a request continues or starts at this hop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Hop {
    /// The trace id: the client's when its `traceparent` was valid, else a new one.
    pub(crate) trace_id: TraceId,
    /// This hop's span id, which becomes the instance's parent id.
    pub(crate) parent_id: [u8; 8],
    /// The trace flags (bit 0: sampled), kept from a valid incoming header.
    pub(crate) flags: u8,
    /// Whether the client's trace was kept (then `tracestate` stays).
    pub(crate) continued: bool,
}

impl Hop {
    /// The outgoing `traceparent`: always version `00`, the version this router speaks (a
    /// higher version's first four fields are read as `00`'s, as the spec asks).
    pub(crate) fn traceparent(&self) -> HeaderValue {
        let mut out = [0u8; 55];
        out[..3].copy_from_slice(b"00-");
        hex_into(&self.trace_id.0, &mut out[3..35]);
        out[35] = b'-';
        hex_into(&self.parent_id, &mut out[36..52]);
        out[52] = b'-';
        hex_into(&[self.flags], &mut out[53..55]);
        HeaderValue::from_bytes(&out).unwrap_or_else(|_| HeaderValue::from_static("0"))
    }
}

/// Decides this hop's trace from the request headers and `random` (a source of 64 random
/// bits), and rewrites `traceparent` (and `tracestate`) in `headers` for the instance.
pub(crate) fn hop(headers: &mut HeaderMap, mut random: impl FnMut() -> u64) -> Hop {
    let incoming = {
        let mut values = headers.get_all(TRACEPARENT).iter();
        match (values.next(), values.next()) {
            // Several `traceparent` headers cannot be told apart: the spec treats it as invalid.
            (Some(only), None) => parse(only.as_bytes()),
            _ => None,
        }
    };
    let parent_id = nonzero_span(&mut random);
    let hop = match incoming {
        Some((trace_id, flags)) => Hop {
            trace_id,
            parent_id,
            flags,
            continued: true,
        },
        None => Hop {
            trace_id: new_trace_id(&mut random),
            parent_id,
            flags: 0,
            continued: false,
        },
    };
    if !hop.continued {
        headers.remove(TRACESTATE);
    }
    headers.insert(TRACEPARENT, hop.traceparent());
    hop
}

/// Parses a `traceparent` value: its trace id and flags, or `None` when it is invalid.
fn parse(value: &[u8]) -> Option<(TraceId, u8)> {
    // version "-" trace-id "-" parent-id "-" flags: 2 + 1 + 32 + 1 + 16 + 1 + 2.
    if value.len() < 55 {
        return None;
    }
    let version = unhex::<1>(&value[0..2])?[0];
    if version == 0xff {
        return None;
    }
    // Version 00 is exactly 55 bytes; a later version may append fields after a `-`.
    if (version == 0 && value.len() != 55) || (value.len() > 55 && value[55] != b'-') {
        return None;
    }
    if value[2] != b'-' || value[35] != b'-' || value[52] != b'-' {
        return None;
    }
    let trace = unhex::<16>(&value[3..35])?;
    let parent = unhex::<8>(&value[36..52])?;
    let flags = unhex::<1>(&value[53..55])?[0];
    if trace == [0; 16] || parent == [0; 8] {
        return None;
    }
    // Only the sampled bit is defined for version 00; unknown bits of a later version go.
    let flags = if version == 0 { flags } else { flags & 0x01 };
    Some((TraceId(trace), flags))
}

/// Lower-case hex only: the spec forbids upper case.
fn unhex<const N: usize>(digits: &[u8]) -> Option<[u8; N]> {
    if digits.len() != 2 * N {
        return None;
    }
    let nibble = |d: u8| match d {
        b'0'..=b'9' => Some(d - b'0'),
        b'a'..=b'f' => Some(d - b'a' + 10),
        _ => None,
    };
    let mut out = [0u8; N];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = (nibble(digits[2 * i])? << 4) | nibble(digits[2 * i + 1])?;
    }
    Some(out)
}

fn hex_into(bytes: &[u8], out: &mut [u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for (i, b) in bytes.iter().enumerate() {
        out[2 * i] = HEX[usize::from(b >> 4)];
        out[2 * i + 1] = HEX[usize::from(b & 0xf)];
    }
}

fn new_trace_id(random: &mut impl FnMut() -> u64) -> TraceId {
    loop {
        let mut id = [0u8; 16];
        id[..8].copy_from_slice(&random().to_be_bytes());
        id[8..].copy_from_slice(&random().to_be_bytes());
        if id != [0; 16] {
            return TraceId(id);
        }
    }
}

fn nonzero_span(random: &mut impl FnMut() -> u64) -> [u8; 8] {
    loop {
        let id = random();
        if id != 0 {
            return id.to_be_bytes();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    fn counter() -> impl FnMut() -> u64 {
        let mut n = 0x1111_2222_3333_4444u64;
        move || {
            n = n.wrapping_add(1);
            n
        }
    }

    fn with(values: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for v in values {
            headers.append(TRACEPARENT, HeaderValue::from_str(v).unwrap());
        }
        headers
    }

    #[test]
    fn a_valid_trace_is_kept_with_a_new_parent() {
        let mut headers = with(&[VALID]);
        headers.insert(TRACESTATE, HeaderValue::from_static("congo=t61rcWkgMzE"));
        let hop = hop(&mut headers, counter());
        assert!(hop.continued);
        let out = headers.get(TRACEPARENT).unwrap().to_str().unwrap();
        assert_eq!(&out[..36], &VALID[..36], "version and trace id kept");
        assert_ne!(&out[36..52], &VALID[36..52], "the hop is a new parent");
        assert_eq!(&out[52..], "-01", "the sampled flag is kept");
        assert_eq!(parse(out.as_bytes()).map(|t| t.0), Some(hop.trace_id));
        assert_eq!(
            headers.get(TRACESTATE).unwrap(),
            "congo=t61rcWkgMzE",
            "tracestate goes through unchanged"
        );
        assert_eq!(
            std::str::from_utf8(&hop.trace_id.hex()).unwrap(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
    }

    #[test]
    fn an_absent_header_starts_a_trace() {
        let mut headers = HeaderMap::new();
        let hop = hop(&mut headers, counter());
        assert!(!hop.continued);
        let out = headers.get(TRACEPARENT).unwrap().as_bytes().to_vec();
        assert_eq!(out.len(), 55);
        assert_eq!(parse(&out), Some((hop.trace_id, 0)));
    }

    #[test]
    fn invalid_headers_restart_the_trace_and_drop_tracestate() {
        let invalid = [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "0g-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x",
        ];
        for value in invalid {
            let mut headers = with(&[value]);
            headers.insert(TRACESTATE, HeaderValue::from_static("a=b"));
            let hop = hop(&mut headers, counter());
            assert!(!hop.continued, "{value:?} must be refused");
            assert!(
                headers.get(TRACESTATE).is_none(),
                "{value:?}: tracestate kept"
            );
            assert_ne!(
                &hop.trace_id.hex()[..],
                b"4bf92f3577b34da6a3ce929d0e0e4736",
                "{value:?}"
            );
        }
        // Two headers cannot be told apart.
        let mut headers = with(&[VALID, VALID]);
        assert!(!hop(&mut headers, counter()).continued);
        assert_eq!(headers.get_all(TRACEPARENT).iter().count(), 1);
    }

    #[test]
    fn a_later_version_is_read_as_version_00() {
        let value = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-03-future";
        let mut headers = with(&[value]);
        let hop = hop(&mut headers, counter());
        assert!(hop.continued);
        assert_eq!(hop.flags, 1, "only the sampled bit is known");
        let out = headers.get(TRACEPARENT).unwrap().to_str().unwrap();
        assert!(
            out.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
            "{out}"
        );
    }

    #[test]
    fn zero_randomness_never_makes_an_invalid_id() {
        let mut calls = 0;
        let random = move || {
            calls += 1;
            if calls <= 3 {
                0
            } else {
                7
            }
        };
        let mut headers = HeaderMap::new();
        let hop = hop(&mut headers, random);
        assert_ne!(hop.parent_id, [0; 8]);
        assert_ne!(hop.trace_id.0, [0; 16]);
    }
}
