//! Canonical YAML for a rendered stack.
//!
//! Written by hand from the serde form (no YAML serialiser to keep stable across versions):
//! block mappings with keys sorted, block sequences, every string double-quoted with JSON-style
//! escapes (which YAML accepts), numbers and bools plain, `{}` and `[]` for empty collections.
//! Equal stacks give identical bytes, and the text is itself a valid stack file.

use serde_json::Value;

/// Emits any JSON value as canonical block YAML. The top level is expected to be a mapping.
pub fn emit(value: &Value) -> String {
    let mut out = String::new();
    match value {
        Value::Object(m) if !m.is_empty() => mapping(&mut out, m, 0),
        other => {
            inline(&mut out, other);
            out.push('\n');
        }
    }
    out
}

fn indent(out: &mut String, n: usize) {
    out.extend(std::iter::repeat_n(' ', n));
}

/// Writes `value` after `key: ` or `- `, either inline or as a nested block at `depth`.
fn nested(out: &mut String, value: &Value, depth: usize) {
    match value {
        Value::Object(m) if !m.is_empty() => {
            out.push('\n');
            mapping(out, m, depth);
        }
        Value::Array(a) if !a.is_empty() => {
            out.push('\n');
            sequence(out, a, depth);
        }
        other => {
            out.push(' ');
            inline(out, other);
            out.push('\n');
        }
    }
}

fn mapping(out: &mut String, m: &serde_json::Map<String, Value>, depth: usize) {
    let mut keys: Vec<&String> = m.keys().collect();
    keys.sort();
    for k in keys {
        indent(out, depth);
        key(out, k);
        out.push(':');
        nested(out, &m[k.as_str()], depth + 2);
    }
}

fn sequence(out: &mut String, a: &[Value], depth: usize) {
    for item in a {
        indent(out, depth);
        out.push('-');
        nested(out, item, depth + 2);
    }
}

fn inline(out: &mut String, v: &Value) {
    match v {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => out.push_str(&n.to_string()),
        Value::String(s) => quoted(out, s),
        Value::Array(_) => out.push_str("[]"),
        Value::Object(_) => out.push_str("{}"),
    }
}

/// Keys that are plain identifiers and not YAML keywords are written bare; others are quoted.
fn key(out: &mut String, k: &str) {
    let bare = k
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        && !matches!(
            k.to_ascii_lowercase().as_str(),
            "true" | "false" | "null" | "yes" | "no" | "on" | "off" | "y" | "n"
        );
    if bare {
        out.push_str(k);
    } else {
        quoted(out, k);
    }
}

/// A double-quoted scalar. Escapes follow JSON, plus every character YAML does not allow raw
/// (C1 controls, line/paragraph separators, BOM, non-characters).
fn quoted(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20
                || (0x7f..=0x9f).contains(&(c as u32))
                || matches!(
                    c,
                    '\u{2028}' | '\u{2029}' | '\u{feff}' | '\u{fffe}' | '\u{ffff}'
                ) =>
            {
                out.push_str(&format!("\\u{:04x}", c as u32));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn block_style_sorted_and_quoted() {
        let v = json!({
            "b": [ "x", "y" ],
            "a": { "z": 1, "y": true, "e": {}, "l": [] },
            "c": "q\"\n\u{85}",
            "true": 1,
            "items": [ { "k": "v", "j": [1] } ],
        });
        let expected = "\
a:
  e: {}
  l: []
  \"y\": true
  z: 1
b:
  - \"x\"
  - \"y\"
c: \"q\\\"\\n\\u0085\"
items:
  -
    j:
      - 1
    k: \"v\"
\"true\": 1
";
        assert_eq!(emit(&v), expected);
    }
}
