//! The Compose file as a positioned tree: every value knows its file and its `LINE:COL`, and
//! every scalar has been interpolated (`${VAR:-default}` …) and remembers which variables it read,
//! so a value built from `${DB_PASSWORD}` can be treated as a secret.

use berth_spec::yaml::{Node, NodeKind};
use berth_spec::Pos;

use crate::interp::{self, Vars};
use crate::report::Report;

/// Where a value was written: which `-f` file (an index into the import's files) and where in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct At {
    pub file: usize,
    pub pos: Pos,
}

/// A scalar after interpolation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scalar {
    pub text: String,
    /// Plain (unquoted) style: only such a scalar may be `null`, a number or a bool.
    pub plain: bool,
    /// The variables its interpolation read, in order.
    pub vars: Vec<String>,
}

/// One value of a Compose file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Value {
    pub at: At,
    pub kind: Kind,
}

/// The shape of a [`Value`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    Str(Scalar),
    Seq(Vec<Value>),
    Map(Vec<Entry>),
}

/// A mapping entry: keys are plain text (Compose never interpolates keys).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub key: String,
    pub key_at: At,
    pub value: Value,
}

impl Value {
    /// A scalar's text, or `None` for a collection.
    pub fn str(&self) -> Option<&str> {
        match &self.kind {
            Kind::Str(s) => Some(&s.text),
            _ => None,
        }
    }

    /// Whether this is YAML's null (`~`, `null`, or nothing at all).
    pub fn is_null(&self) -> bool {
        matches!(&self.kind, Kind::Str(s) if s.plain && matches!(s.text.as_str(), "" | "~" | "null" | "Null" | "NULL"))
    }

    /// The entries of a mapping (empty for anything else).
    pub fn entries(&self) -> &[Entry] {
        match &self.kind {
            Kind::Map(m) => m,
            _ => &[],
        }
    }

    /// The value of `key` in a mapping.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.entries()
            .iter()
            .find(|e| e.key == key)
            .map(|e| &e.value)
    }

    /// Every variable the value's scalars read.
    pub fn vars(&self) -> Vec<String> {
        let mut out = Vec::new();
        let mut stack = vec![self];
        while let Some(v) = stack.pop() {
            match &v.kind {
                Kind::Str(s) => out.extend(s.vars.iter().cloned()),
                Kind::Seq(items) => stack.extend(items.iter()),
                Kind::Map(m) => stack.extend(m.iter().map(|e| &e.value)),
            }
        }
        out
    }
}

/// Converts the positioned YAML tree of file `file` into a [`Value`], interpolating every scalar
/// value with `vars`. Problems (a `${VAR:?err}` that fires, a bad `${…}`, a non-scalar key) go
/// to `report` as errors; the value is kept as written so the import can go on and report more.
pub fn from_yaml(node: &Node, file: usize, vars: &Vars, report: &mut Report) -> Value {
    let at = At {
        file,
        pos: node.pos,
    };
    let kind = match &node.kind {
        NodeKind::Scalar { value, plain } => {
            let (text, used) = match interp::interpolate(value, vars) {
                Ok(i) => {
                    for name in &i.unset {
                        report.warn(
                            at,
                            format!("variable {name} is not set: an empty string is used, as Compose does (set it in the environment or in .env)"),
                        );
                    }
                    (i.text, i.vars)
                }
                Err(e) => {
                    report.error(at, e);
                    (value.clone(), Vec::new())
                }
            };
            Kind::Str(Scalar {
                text,
                plain: *plain,
                vars: used,
            })
        }
        NodeKind::Seq(items) => Kind::Seq(
            items
                .iter()
                .map(|n| from_yaml(n, file, vars, report))
                .collect(),
        ),
        NodeKind::Map(entries) => Kind::Map(
            entries
                .iter()
                .filter_map(|(k, v)| {
                    let key_at = At { file, pos: k.pos };
                    match k.as_scalar() {
                        Some(key) => Some(Entry {
                            key: key.to_string(),
                            key_at,
                            value: from_yaml(v, file, vars, report),
                        }),
                        None => {
                            report.error(key_at, "a mapping key must be a plain string");
                            None
                        }
                    }
                })
                .collect(),
        ),
    };
    Value { at, kind }
}
