//! On-disk encodings of the embedded backend: a key's record and a revision's change-log entry.
//!
//! Hand-written, little-endian, each starting with a format tag, so that decoding never trusts
//! the disk: every read is bounds-checked and a bad byte becomes an error naming what was being
//! decoded, never a panic.

use crate::{EventKind, KeyValue, WatchEvent};

const RECORD_V1: u8 = 1;
const LOG_V1: u8 = 1;

/// Metadata and value of one live key (the key itself is the table key).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Record {
    pub create_revision: i64,
    pub mod_revision: i64,
    pub version: i64,
    pub value: Vec<u8>,
}

impl Record {
    pub fn into_kv(self, key: &str) -> KeyValue {
        KeyValue {
            key: key.to_owned(),
            value: self.value,
            create_revision: self.create_revision,
            mod_revision: self.mod_revision,
            version: self.version,
        }
    }
}

pub(crate) fn encode_record(
    create_revision: i64,
    mod_revision: i64,
    version: i64,
    value: &[u8],
) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + 24 + value.len());
    out.push(RECORD_V1);
    out.extend_from_slice(&create_revision.to_le_bytes());
    out.extend_from_slice(&mod_revision.to_le_bytes());
    out.extend_from_slice(&version.to_le_bytes());
    out.extend_from_slice(value);
    out
}

pub(crate) fn decode_record(bytes: &[u8]) -> Result<Record, String> {
    let mut r = Reader::new(bytes, "key record");
    let tag = r.u8()?;
    if tag != RECORD_V1 {
        return Err(format!("key record has unknown format tag {tag}"));
    }
    Ok(Record {
        create_revision: r.i64()?,
        mod_revision: r.i64()?,
        version: r.i64()?,
        value: r.rest().to_vec(),
    })
}

pub(crate) fn encode_events(events: &[WatchEvent]) -> Vec<u8> {
    let mut out = Vec::new();
    out.push(LOG_V1);
    put_u32(&mut out, events.len());
    for e in events {
        out.push(match e.kind {
            EventKind::Put => 0,
            EventKind::Delete => 1,
        });
        encode_kv(&mut out, &e.kv);
        match &e.prev {
            None => out.push(0),
            Some(prev) => {
                out.push(1);
                encode_kv(&mut out, prev);
            }
        }
    }
    out
}

/// Decodes a change-log entry; `revision` is the entry's key, stamped on each event.
pub(crate) fn decode_events(revision: i64, bytes: &[u8]) -> Result<Vec<WatchEvent>, String> {
    let mut r = Reader::new(bytes, "change-log entry");
    let tag = r.u8()?;
    if tag != LOG_V1 {
        return Err(format!(
            "change-log entry of revision {revision} has unknown format tag {tag}"
        ));
    }
    let n = r.u32()?;
    let mut events = Vec::with_capacity(n.min(1024));
    for _ in 0..n {
        let kind = match r.u8()? {
            0 => EventKind::Put,
            1 => EventKind::Delete,
            k => {
                return Err(format!(
                    "change-log entry of revision {revision} has unknown event kind {k}"
                ))
            }
        };
        let kv = decode_kv(&mut r)?;
        let prev = match r.u8()? {
            0 => None,
            1 => Some(decode_kv(&mut r)?),
            f => {
                return Err(format!(
                    "change-log entry of revision {revision} has bad prev flag {f}"
                ))
            }
        };
        events.push(WatchEvent {
            revision,
            kind,
            kv,
            prev,
        });
    }
    if !r.rest().is_empty() {
        return Err(format!(
            "change-log entry of revision {revision} has trailing bytes"
        ));
    }
    Ok(events)
}

fn put_u32(out: &mut Vec<u8>, n: usize) {
    // Keys, values and event counts are far below 4 GiB (redb caps values at 3 GiB).
    let n = u32::try_from(n).unwrap_or(u32::MAX);
    out.extend_from_slice(&n.to_le_bytes());
}

fn encode_kv(out: &mut Vec<u8>, kv: &KeyValue) {
    put_u32(out, kv.key.len());
    out.extend_from_slice(kv.key.as_bytes());
    put_u32(out, kv.value.len());
    out.extend_from_slice(&kv.value);
    out.extend_from_slice(&kv.create_revision.to_le_bytes());
    out.extend_from_slice(&kv.mod_revision.to_le_bytes());
    out.extend_from_slice(&kv.version.to_le_bytes());
}

fn decode_kv(r: &mut Reader<'_>) -> Result<KeyValue, String> {
    let klen = r.u32()?;
    let key = String::from_utf8(r.bytes(klen)?.to_vec())
        .map_err(|_| format!("{} holds a key that is not UTF-8", r.what))?;
    let vlen = r.u32()?;
    let value = r.bytes(vlen)?.to_vec();
    Ok(KeyValue {
        key,
        value,
        create_revision: r.i64()?,
        mod_revision: r.i64()?,
        version: r.i64()?,
    })
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    what: &'static str,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8], what: &'static str) -> Self {
        Reader { buf, pos: 0, what }
    }

    fn bytes(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.buf.len())
            .ok_or_else(|| {
                format!(
                    "{} is truncated: needs {n} bytes at offset {} of {}",
                    self.what,
                    self.pos,
                    self.buf.len()
                )
            })?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.bytes(1)?[0])
    }

    fn u32(&mut self) -> Result<usize, String> {
        let mut b = [0u8; 4];
        b.copy_from_slice(self.bytes(4)?);
        Ok(u32::from_le_bytes(b) as usize)
    }

    fn i64(&mut self) -> Result<i64, String> {
        let mut b = [0u8; 8];
        b.copy_from_slice(self.bytes(8)?);
        Ok(i64::from_le_bytes(b))
    }

    fn rest(&mut self) -> &'a [u8] {
        let s = &self.buf[self.pos..];
        self.pos = self.buf.len();
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(key: &str, value: &[u8], rev: i64) -> KeyValue {
        KeyValue {
            key: key.into(),
            value: value.to_vec(),
            create_revision: 1,
            mod_revision: rev,
            version: 2,
        }
    }

    #[test]
    fn events_round_trip() {
        let events = vec![
            WatchEvent {
                revision: 7,
                kind: EventKind::Put,
                kv: kv("/a", b"x", 7),
                prev: Some(kv("/a", b"", 3)),
            },
            WatchEvent {
                revision: 7,
                kind: EventKind::Delete,
                kv: kv("/é", b"", 7),
                prev: None,
            },
        ];
        assert_eq!(decode_events(7, &encode_events(&events)).unwrap(), events);
    }

    #[test]
    fn truncated_or_garbage_input_is_an_error_not_a_panic() {
        let bytes = encode_events(&[WatchEvent {
            revision: 1,
            kind: EventKind::Put,
            kv: kv("/a", b"value", 1),
            prev: None,
        }]);
        for cut in 0..bytes.len() {
            assert!(decode_events(1, &bytes[..cut]).is_err(), "cut at {cut}");
        }
        assert!(decode_events(1, &[1, 255, 255, 255, 255]).is_err());
        assert!(decode_record(&[]).is_err());
        assert!(decode_record(&[9; 30]).is_err());
        let rec = encode_record(1, 2, 3, b"v");
        assert_eq!(
            decode_record(&rec).unwrap(),
            Record {
                create_revision: 1,
                mod_revision: 2,
                version: 3,
                value: b"v".to_vec()
            }
        );
    }
}
