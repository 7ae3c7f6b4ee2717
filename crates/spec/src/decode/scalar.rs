//! How a plain YAML scalar reads under the YAML 1.2 core schema, and how a node is described in
//! an error message.
//!
//! The tree from [`crate::yaml`] keeps every scalar as text, so typing happens here, once, with
//! the same rules everywhere: `~`/`null`/empty is null, `true`/`false` are bools (not `yes`/`no`),
//! `12`/`0x1f`/`0o17` are integers, `1.5`/`1e3`/`.inf` are floats, anything else is a string.
//! Quoted scalars are always strings.

use crate::yaml::{Node, NodeKind};

/// The core-schema reading of a scalar.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// `~`, `null`, or nothing.
    Null,
    /// `true`/`false` (any case variant YAML 1.2 allows).
    Bool(bool),
    /// Decimal, `0x` or `0o`.
    Int,
    /// Decimal with a dot or an exponent, `.inf`, `.nan`.
    Float,
    /// Anything else, and every quoted scalar.
    Str,
}

/// Classifies a scalar's text; `plain` is false for quoted and block scalars.
pub fn classify(text: &str, plain: bool) -> Class {
    if !plain {
        return Class::Str;
    }
    match text {
        "" | "~" | "null" | "Null" | "NULL" => return Class::Null,
        "true" | "True" | "TRUE" => return Class::Bool(true),
        "false" | "False" | "FALSE" => return Class::Bool(false),
        ".nan" | ".NaN" | ".NAN" => return Class::Float,
        _ => {}
    }
    if is_int(text) {
        Class::Int
    } else if is_float(text) {
        Class::Float
    } else {
        Class::Str
    }
}

fn is_int(s: &str) -> bool {
    if let Some(h) = s.strip_prefix("0x") {
        return !h.is_empty() && h.bytes().all(|b| b.is_ascii_hexdigit());
    }
    if let Some(o) = s.strip_prefix("0o") {
        return !o.is_empty() && o.bytes().all(|b| (b'0'..=b'7').contains(&b));
    }
    let d = s.strip_prefix(['-', '+']).unwrap_or(s);
    !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit())
}

fn is_float(s: &str) -> bool {
    let s = s.strip_prefix(['-', '+']).unwrap_or(s);
    if matches!(s, ".inf" | ".Inf" | ".INF") {
        return true;
    }
    let (mantissa, exp) = match s.find(['e', 'E']) {
        Some(i) => (&s[..i], Some(&s[i + 1..])),
        None => (s, None),
    };
    let (whole, frac) = match mantissa.split_once('.') {
        Some((w, f)) => (w, Some(f)),
        None => (mantissa, None),
    };
    let digits = |x: &str| x.bytes().all(|b| b.is_ascii_digit());
    let mantissa_ok = match frac {
        None => !whole.is_empty() && digits(whole),
        Some(f) => digits(whole) && digits(f) && !(whole.is_empty() && f.is_empty()),
    };
    let exp_ok = match exp {
        None => true,
        Some(e) => {
            let e = e.strip_prefix(['-', '+']).unwrap_or(e);
            !e.is_empty() && digits(e)
        }
    };
    mantissa_ok && exp_ok
}

/// Parses an integer scalar (decimal, `0x`, `0o`). `None` when it does not fit an `i128`.
pub fn parse_int(s: &str) -> Option<i128> {
    if let Some(h) = s.strip_prefix("0x") {
        return i128::from_str_radix(h, 16).ok();
    }
    if let Some(o) = s.strip_prefix("0o") {
        return i128::from_str_radix(o, 8).ok();
    }
    s.parse().ok()
}

/// A scalar as an error message shows it: strings in double quotes, everything else as written.
pub fn describe_scalar(text: &str, plain: bool) -> String {
    match classify(text, plain) {
        Class::Null => "null".to_string(),
        Class::Bool(_) | Class::Int | Class::Float => text.to_string(),
        Class::Str => quote(text),
    }
}

/// Any node as an error message shows it after "got".
pub fn describe(node: &Node) -> String {
    match &node.kind {
        NodeKind::Scalar { value, plain } => describe_scalar(value, *plain),
        NodeKind::Seq(_) => "a list".to_string(),
        NodeKind::Map(_) => "a mapping".to_string(),
    }
}

/// A string in double quotes with JSON escapes, short enough for a message.
pub fn quote(s: &str) -> String {
    const MAX: usize = 80;
    if s.chars().count() > MAX {
        let cut: String = s.chars().take(MAX).collect();
        format!("{}…", serde_json::Value::String(cut))
    } else {
        serde_json::Value::String(s.to_string()).to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_scalars_follow_the_core_schema() {
        assert_eq!(classify("", true), Class::Null);
        assert_eq!(classify("~", true), Class::Null);
        assert_eq!(classify("true", true), Class::Bool(true));
        assert_eq!(classify("yes", true), Class::Str);
        assert_eq!(classify("12", true), Class::Int);
        assert_eq!(classify("-12", true), Class::Int);
        assert_eq!(classify("0x1F", true), Class::Int);
        assert_eq!(classify("1.5", true), Class::Float);
        assert_eq!(classify("1e999", true), Class::Float);
        assert_eq!(classify(".5", true), Class::Float);
        assert_eq!(classify("1.", true), Class::Float);
        assert_eq!(classify(".", true), Class::Str);
        assert_eq!(classify("-.inf", true), Class::Float);
        assert_eq!(classify("1.2.3", true), Class::Str);
        assert_eq!(classify("12", false), Class::Str);
        assert_eq!(classify("250m", true), Class::Str);
    }

    #[test]
    fn integers_parse_or_report_overflow() {
        assert_eq!(parse_int("42"), Some(42));
        assert_eq!(parse_int("-3"), Some(-3));
        assert_eq!(parse_int("0x10"), Some(16));
        assert_eq!(parse_int("0o17"), Some(15));
        assert_eq!(parse_int(&"9".repeat(60)), None);
    }

    #[test]
    fn descriptions_quote_strings_only() {
        assert_eq!(describe_scalar("abc", true), "\"abc\"");
        assert_eq!(describe_scalar("3", false), "\"3\"");
        assert_eq!(describe_scalar("3", true), "3");
        assert_eq!(describe_scalar("", true), "null");
        assert!(quote(&"x".repeat(200)).ends_with('…'));
    }
}
