//! Reading typed fields out of the positioned tree while collecting every problem.
//!
//! [`Ctx`] is the one place that turns a [`Node`] into a Rust value. Each getter either returns
//! the value or records a [`Diagnostic`] at the node that is wrong and returns `None`, so a caller
//! keeps going with a default and the run reports every error. Inside `services`, every scalar is
//! read through `${…}` substitution (see [`super::template`]); elsewhere scalars are literal.

use std::borrow::Cow;
use std::str::FromStr;

use super::names::{did_you_mean, NameKind};
use super::scalar::{classify, describe, describe_scalar, parse_int, Class};
use super::template::{self, REGION};
use super::Values;
use crate::diag::{Diagnostic, Pos};
use crate::yaml::{Node, NodeKind};

/// Where `${region}` may appear. It is only substituted in env values and placement
/// constraints, so anywhere else it would reach a node unexpanded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Region {
    /// `${region}` may stay in the text.
    Allow,
    /// `${region}` is an error here.
    Deny,
}

/// A scalar after substitution.
#[derive(Debug, Clone)]
pub struct Scalar<'n> {
    /// The text after substitution (borrowed when nothing was substituted).
    pub text: Cow<'n, str>,
    /// Whether the text reads as a plain YAML scalar (may be a number, bool or null).
    pub plain: bool,
    /// Where the scalar is written: errors point here even after substitution.
    pub pos: Pos,
    /// `${values.NAME}` when the whole scalar came from a value.
    pub from: Option<String>,
}

impl Scalar<'_> {
    /// The core-schema class of the (substituted) text.
    pub fn class(&self) -> Class {
        classify(&self.text, self.plain)
    }

    /// How an error message shows this scalar after "got".
    pub fn got(&self) -> String {
        let d = describe_scalar(&self.text, self.plain);
        match &self.from {
            Some(from) => format!("{d} (from {from})"),
            None => d,
        }
    }
}

/// `path.key`, or `key` at the top level.
pub fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

/// `path: `, or nothing at the top level.
fn prefix(path: &str) -> String {
    if path.is_empty() {
        String::new()
    } else {
        format!("{path}: ")
    }
}

/// One string of a list, with where it is written and its index in the list (items that were
/// refused are skipped, so the index is not the position in the returned vector).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    /// The string.
    pub text: String,
    /// Where it is written.
    pub pos: Pos,
    /// Its index in the list as written, for `path[index]` in messages.
    pub index: usize,
}

/// The bounds and wording of an integer field.
#[derive(Debug, Clone, Copy)]
pub struct IntSpec {
    /// What the message says was expected, like "a non-negative integer".
    pub what: &'static str,
    /// The smallest accepted value.
    pub lo: i128,
    /// The largest accepted value.
    pub hi: i128,
    /// Whether `what` leaves the upper bound unsaid, so a too-large value names it.
    pub say_max: bool,
}

/// The mapping fields of one object, after unknown fields were reported.
pub struct Fields<'n> {
    entries: Vec<(&'n str, Pos, &'n Node)>,
}

impl<'n> Fields<'n> {
    /// The value of a known field, if present.
    pub fn get(&self, name: &str) -> Option<&'n Node> {
        self.entries
            .iter()
            .find(|(k, _, _)| *k == name)
            .map(|(_, _, v)| *v)
    }

    /// The position of a field's key, if present.
    pub fn key_pos(&self, name: &str) -> Option<Pos> {
        self.entries
            .iter()
            .find(|(k, _, _)| *k == name)
            .map(|(_, p, _)| *p)
    }
}

/// Collects diagnostics and, inside services, substitutes values.
pub struct Ctx<'v> {
    /// Every problem found so far, in the order found (sorted at the end).
    pub diags: Vec<Diagnostic>,
    values: Option<&'v Values>,
}

impl<'v> Ctx<'v> {
    /// A context for literal parts of the file (no substitution).
    pub fn literal() -> Self {
        Ctx {
            diags: Vec::new(),
            values: None,
        }
    }

    /// A context that substitutes `${values.NAME}` from `values`.
    pub fn with_values(values: &'v Values) -> Self {
        Ctx {
            diags: Vec::new(),
            values: Some(values),
        }
    }

    /// Records a problem at `pos`.
    pub fn error(&mut self, pos: Pos, message: impl Into<String>) {
        self.diags.push(Diagnostic::at(pos, message));
    }

    /// Entries of a mapping with arbitrary keys (env, ports, services…), duplicates reported.
    pub fn entries<'n>(
        &mut self,
        node: &'n Node,
        path: &str,
        what: &str,
    ) -> Option<Vec<(&'n str, Pos, &'n Node)>> {
        let NodeKind::Map(pairs) = &node.kind else {
            self.error(
                node.pos,
                format!("{}expected {what}, got {}", prefix(path), describe(node)),
            );
            return None;
        };
        let mut out: Vec<(&'n str, Pos, &'n Node)> = Vec::with_capacity(pairs.len());
        let mut seen = std::collections::HashSet::with_capacity(pairs.len());
        for (k, v) in pairs {
            let NodeKind::Scalar { value: key, .. } = &k.kind else {
                self.error(
                    k.pos,
                    format!("{path}: expected a name as key, got {}", describe(k)),
                );
                continue;
            };
            if !seen.insert(key.as_str()) {
                self.error(k.pos, format!("{}: duplicate key", join(path, key)));
                continue;
            }
            out.push((key.as_str(), k.pos, v));
        }
        Some(out)
    }

    /// The fields of an object; unknown fields are reported at their key, with a suggestion.
    pub fn fields<'n>(
        &mut self,
        node: &'n Node,
        path: &str,
        what: &str,
        known: &[&str],
    ) -> Option<Fields<'n>> {
        let entries = self.entries(node, path, what)?;
        let mut kept = Vec::with_capacity(entries.len());
        for (k, pos, v) in entries {
            if known.contains(&k) {
                kept.push((k, pos, v));
            } else {
                let hint = did_you_mean(k, known.iter().copied());
                let hint = if hint.is_empty() {
                    format!(" (expected one of: {})", known.join(", "))
                } else {
                    hint
                };
                self.error(pos, format!("{}: unknown field{hint}", join(path, k)));
            }
        }
        Some(Fields { entries: kept })
    }

    /// A scalar, substituted. Reports lists/maps as "expected {what}", template problems, and
    /// `${region}` where it is not allowed.
    pub fn scalar<'n>(
        &mut self,
        node: &'n Node,
        path: &str,
        what: &str,
        region: Region,
    ) -> Option<Scalar<'n>> {
        let NodeKind::Scalar { value, plain } = &node.kind else {
            self.error(
                node.pos,
                format!("{path}: expected {what}, got {}", describe(node)),
            );
            return None;
        };
        let Some(values) = self.values else {
            return Some(Scalar {
                text: Cow::Borrowed(value),
                plain: *plain,
                pos: node.pos,
                from: None,
            });
        };
        match template::expand(value, values) {
            Ok(None) => Some(Scalar {
                text: Cow::Borrowed(value),
                plain: *plain,
                pos: node.pos,
                from: None,
            }),
            Ok(Some(e)) => {
                if e.has_region && region == Region::Deny {
                    self.error(
                        node.pos,
                        format!("{path}: `{REGION}` can only be used in env values and placement constraints"),
                    );
                    return None;
                }
                Some(Scalar {
                    text: Cow::Owned(e.text),
                    plain: e.plain,
                    pos: node.pos,
                    from: e.from,
                })
            }
            Err(msg) => {
                self.error(node.pos, format!("{path}: {msg}"));
                None
            }
        }
    }

    /// A string. Plain numbers and bools are taken as written (`VERSION: 1.10` is "1.10").
    ///
    /// A NUL byte (`"\0"` in a double-quoted string, or from a value) is refused here, where the
    /// position is known: no environment value, argument or path can hold one, and the agent
    /// would otherwise fail at start with a message blaming the program.
    pub fn string(&mut self, node: &Node, path: &str, region: Region) -> Option<String> {
        let s = self.scalar(node, path, "a string", region)?;
        if s.class() == Class::Null {
            self.error(s.pos, format!("{path}: expected a string, got {}", s.got()));
            return None;
        }
        if let Some(at) = s.text.find('\0') {
            let from = s.from.map(|f| format!(" (from {f})")).unwrap_or_default();
            self.error(
                s.pos,
                format!("{path}: contains a NUL byte (\\0) at byte {at}{from}; environment values, arguments and paths cannot hold one: remove it"),
            );
            return None;
        }
        Some(s.text.into_owned())
    }

    /// A non-empty string checked against a name rule.
    pub fn name(&mut self, node: &Node, path: &str, kind: NameKind) -> Option<String> {
        let s = self.string(node, path, Region::Deny)?;
        if !kind.accepts(&s) {
            self.error(
                node.pos,
                format!(
                    "{path}: expected a name matching {}, got {}",
                    kind.rule(),
                    super::scalar::quote(&s)
                ),
            );
            return None;
        }
        Some(s)
    }

    /// An integer within `spec`'s bounds.
    pub fn int(&mut self, node: &Node, path: &str, spec: IntSpec) -> Option<i128> {
        let s = self.scalar(node, path, spec.what, Region::Deny)?;
        if s.class() != Class::Int {
            self.error(
                s.pos,
                format!("{path}: expected {}, got {}", spec.what, s.got()),
            );
            return None;
        }
        let value = parse_int(&s.text);
        if let Some(v) = value.filter(|v| (spec.lo..=spec.hi).contains(v)) {
            return Some(v);
        }
        // Too small (including a huge negative number), or too large for the field.
        let too_small = value.map_or(s.text.starts_with('-'), |v| v < spec.lo);
        let bound = if spec.say_max && !too_small {
            format!(" no larger than {}", spec.hi)
        } else {
            String::new()
        };
        self.error(
            s.pos,
            format!("{path}: expected {}{bound}, got {}", spec.what, s.got()),
        );
        None
    }

    /// `true` or `false`.
    pub fn bool(&mut self, node: &Node, path: &str) -> Option<bool> {
        let s = self.scalar(node, path, "true or false", Region::Deny)?;
        match s.class() {
            Class::Bool(b) => Some(b),
            _ => {
                self.error(
                    s.pos,
                    format!("{path}: expected true or false, got {}", s.got()),
                );
                None
            }
        }
    }

    /// A value with a unit (`1s`, `250m`, `128Mi`, `25%`), parsed by its `FromStr`.
    pub fn unit<T: FromStr<Err = String>>(
        &mut self,
        node: &Node,
        path: &str,
        what: &str,
    ) -> Option<T> {
        let s = self.scalar(node, path, what, Region::Deny)?;
        if s.class() == Class::Null {
            self.error(s.pos, format!("{path}: expected {what}, got null"));
            return None;
        }
        match s.text.parse::<T>() {
            Ok(v) => Some(v),
            Err(e) => {
                let from = s.from.map(|f| format!(" (from {f})")).unwrap_or_default();
                self.error(s.pos, format!("{path}: {e}{from}"));
                None
            }
        }
    }

    /// The items of a list.
    pub fn list<'n>(&mut self, node: &'n Node, path: &str, what: &str) -> Option<&'n [Node]> {
        match &node.kind {
            NodeKind::Seq(items) => Some(items),
            _ => {
                self.error(
                    node.pos,
                    format!("{path}: expected {what}, got {}", describe(node)),
                );
                None
            }
        }
    }

    /// A list of strings; bad items are reported and skipped.
    pub fn strings(
        &mut self,
        node: &Node,
        path: &str,
        what: &str,
        region: Region,
    ) -> Option<Vec<Item>> {
        let items = self.list(node, path, what)?;
        let mut out = Vec::with_capacity(items.len());
        for (index, item) in items.iter().enumerate() {
            if let Some(text) = self.string(item, &format!("{path}[{index}]"), region) {
                out.push(Item {
                    text,
                    pos: item.pos,
                    index,
                });
            }
        }
        Some(out)
    }

    /// A list of names following `kind`, without duplicates.
    pub fn names(
        &mut self,
        node: &Node,
        path: &str,
        what: &str,
        kind: NameKind,
    ) -> Option<Vec<Item>> {
        let items = self.list(node, path, what)?;
        let mut out: Vec<Item> = Vec::with_capacity(items.len());
        for (index, item) in items.iter().enumerate() {
            let p = format!("{path}[{index}]");
            let Some(text) = self.name(item, &p, kind) else {
                continue;
            };
            if out.iter().any(|o| o.text == text) {
                self.error(item.pos, format!("{p}: `{text}` is listed twice"));
                continue;
            }
            out.push(Item {
                text,
                pos: item.pos,
                index,
            });
        }
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scalar(text: &str, plain: bool) -> Node {
        Node {
            pos: Pos { line: 3, col: 7 },
            kind: NodeKind::Scalar {
                value: text.to_string(),
                plain,
            },
        }
    }

    const REPLICAS: IntSpec = IntSpec {
        what: "a non-negative integer",
        lo: 0,
        hi: u32::MAX as i128,
        say_max: true,
    };

    #[test]
    fn integers_are_checked_for_type_and_range() {
        let mut ctx = Ctx::literal();
        assert_eq!(ctx.int(&scalar("3", true), "r", REPLICAS), Some(3));
        assert_eq!(ctx.int(&scalar("abc", true), "r", REPLICAS), None);
        assert_eq!(ctx.int(&scalar("-1", true), "r", REPLICAS), None);
        assert_eq!(ctx.int(&scalar("1e999", true), "r", REPLICAS), None);
        assert_eq!(ctx.int(&scalar("99999999999", true), "r", REPLICAS), None);
        assert_eq!(ctx.int(&scalar(&"9".repeat(50), true), "r", REPLICAS), None);
        assert_eq!(ctx.int(&scalar("3", false), "r", REPLICAS), None);
        let msgs: Vec<_> = ctx.diags.iter().map(|d| d.message.as_str()).collect();
        assert_eq!(
            msgs,
            [
                "r: expected a non-negative integer, got \"abc\"",
                "r: expected a non-negative integer, got -1",
                "r: expected a non-negative integer, got 1e999",
                "r: expected a non-negative integer no larger than 4294967295, got 99999999999",
                &format!(
                    "r: expected a non-negative integer no larger than 4294967295, got {}",
                    "9".repeat(50)
                ),
                "r: expected a non-negative integer, got \"3\"",
            ]
        );
        assert!(ctx
            .diags
            .iter()
            .all(|d| d.pos == Some(Pos { line: 3, col: 7 })));
    }

    #[test]
    fn strings_accept_plain_scalars_as_written_but_not_null() {
        let mut ctx = Ctx::literal();
        assert_eq!(
            ctx.string(&scalar("1.10", true), "v", Region::Deny),
            Some("1.10".into())
        );
        assert_eq!(ctx.string(&scalar("~", true), "v", Region::Deny), None);
        assert_eq!(ctx.diags[0].message, "v: expected a string, got null");
    }

    #[test]
    fn region_is_refused_where_it_would_not_be_substituted() {
        let values = Values::new();
        let mut ctx = Ctx::with_values(&values);
        let n = scalar("x-${region}", true);
        assert!(ctx.string(&n, "a", Region::Allow).is_some());
        assert!(ctx.string(&n, "b", Region::Deny).is_none());
        assert_eq!(ctx.diags.len(), 1);
    }
}
