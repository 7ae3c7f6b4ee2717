//! `--set service.path=value`: command-line overrides of rendered fields.
//!
//! An override is written into the service's tree before it is decoded, so it is checked exactly
//! like the field it sets (its type, its unit, the cross-field rules) and may create a field the
//! file leaves to its default (`--set web.rollout.max_surge=25%`). The nodes it adds carry a
//! position on line 0, which no real file position has; problems found there are turned into
//! global diagnostics that name the override.

use crate::diag::{Diagnostic, Pos};
use crate::yaml::{self, Limits, Node, NodeKind};

/// A parsed `--set`.
#[derive(Debug, Clone)]
pub struct Override {
    /// As given, for messages.
    pub raw: String,
    /// The service it sets a field of.
    pub service: String,
    /// The field path inside the service, like `[rollout, max_surge]`.
    pub path: Vec<String>,
    /// The value, as a tree (positions are rewritten to the override's marker when applied).
    pub value: Node,
}

/// The line that marks positions inside override values.
pub const OVERRIDE_LINE: usize = 0;

/// The position every node of override `index` carries.
pub fn marker(index: usize) -> Pos {
    Pos {
        line: OVERRIDE_LINE,
        col: index + 1,
    }
}

/// Parses `service.path=value`. The value is a plain scalar (typed like YAML: `3` is an integer,
/// `x:v2` a string); one starting with `[`, `{`, `"` or `'` is read as a YAML flow value.
pub fn parse(index: usize, raw: &str) -> Result<Override, Diagnostic> {
    let bad = |why: &str| {
        Diagnostic::global(format!(
            "--set {raw}: {why}; expected service.path=value, like web.replicas=3"
        ))
    };
    let (lhs, value) = raw.split_once('=').ok_or_else(|| bad("missing `=`"))?;
    let mut parts = lhs.split('.');
    let service = parts.next().unwrap_or_default().to_string();
    let path: Vec<String> = parts.map(str::to_string).collect();
    if service.is_empty() || path.is_empty() || path.iter().any(String::is_empty) {
        return Err(bad("the path needs a service and a field"));
    }
    let pos = marker(index);
    let value = if value.starts_with(['[', '{', '"', '\'']) {
        match yaml::parse(value.as_bytes(), &Limits::default()) {
            Ok(Some(mut n)) => {
                relocate(&mut n, pos);
                n
            }
            Ok(None) => scalar(pos, "", false),
            Err(e) => return Err(bad(&format!("the value is not valid YAML ({})", e.message))),
        }
    } else if value.is_empty() {
        scalar(pos, "", false)
    } else {
        scalar(pos, value, true)
    };
    Ok(Override {
        raw: raw.to_string(),
        service,
        path,
        value,
    })
}

fn scalar(pos: Pos, value: &str, plain: bool) -> Node {
    Node {
        pos,
        kind: NodeKind::Scalar {
            value: value.to_string(),
            plain,
        },
    }
}

fn relocate(node: &mut Node, pos: Pos) {
    node.pos = pos;
    match &mut node.kind {
        NodeKind::Scalar { .. } => {}
        NodeKind::Seq(items) => items.iter_mut().for_each(|n| relocate(n, pos)),
        NodeKind::Map(pairs) => pairs.iter_mut().for_each(|(k, v)| {
            relocate(k, pos);
            relocate(v, pos);
        }),
    }
}

/// Writes `value` at `path` inside a service's tree, creating mappings on the way and replacing
/// anything that is not a mapping. The value and every created node carry `pos`.
pub fn apply(node: &mut Node, path: &[String], mut value: Node, pos: Pos) {
    let Some((first, rest)) = path.split_first() else {
        relocate(&mut value, pos);
        *node = value;
        return;
    };
    if !matches!(node.kind, NodeKind::Map(_)) {
        *node = Node {
            pos,
            kind: NodeKind::Map(Vec::new()),
        };
    }
    let NodeKind::Map(pairs) = &mut node.kind else {
        return;
    };
    let found = pairs
        .iter()
        .position(|(k, _)| matches!(&k.kind, NodeKind::Scalar { value, .. } if value == first));
    let i = match found {
        Some(i) => i,
        None => {
            pairs.push((
                scalar(pos, first, true),
                Node {
                    pos,
                    kind: NodeKind::Map(Vec::new()),
                },
            ));
            pairs.len() - 1
        }
    };
    apply(&mut pairs[i].1, rest, value, pos);
}

/// Turns a diagnostic positioned inside override values into a global one naming the override.
pub fn attribute(d: Diagnostic, overrides: &[Override]) -> Diagnostic {
    match d.pos {
        Some(p) if p.line == OVERRIDE_LINE => {
            let raw = overrides
                .get(p.col.wrapping_sub(1))
                .map_or("?", |o| o.raw.as_str());
            Diagnostic::global(format!("--set {raw}: {}", d.message))
        }
        _ => d,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_parse_into_service_path_and_value() {
        let o = parse(0, "web.rollout.max_surge=25%").unwrap();
        assert_eq!(o.service, "web");
        assert_eq!(o.path, ["rollout", "max_surge"]);
        assert_eq!(o.value, scalar(marker(0), "25%", true));
        let o = parse(1, "api.image=x:v2").unwrap();
        assert_eq!(o.value, scalar(marker(1), "x:v2", true));
        let o = parse(0, "web.env.X=").unwrap();
        assert_eq!(o.value, scalar(marker(0), "", false));
        assert!(parse(0, "web").is_err());
        assert!(parse(0, "web=3").is_err());
        assert!(parse(0, "web..x=3").is_err());
    }

    #[test]
    fn apply_creates_missing_mappings() {
        let mut n = Node {
            pos: Pos { line: 1, col: 1 },
            kind: NodeKind::Map(Vec::new()),
        };
        let path = vec!["rollout".to_string(), "max_surge".to_string()];
        apply(&mut n, &path, scalar(marker(0), "2", true), marker(0));
        let NodeKind::Map(pairs) = &n.kind else {
            panic!("not a map")
        };
        assert_eq!(pairs.len(), 1);
        let NodeKind::Map(inner) = &pairs[0].1.kind else {
            panic!("not a map")
        };
        assert_eq!(inner[0].1, scalar(marker(0), "2", true));
    }

    #[test]
    fn diagnostics_on_line_zero_name_the_override() {
        let o = parse(0, "web.replicas=x").unwrap();
        let d = attribute(
            Diagnostic::at(marker(0), "services.web.replicas: bad"),
            &[o],
        );
        assert_eq!(
            d,
            Diagnostic::global("--set web.replicas=x: services.web.replicas: bad")
        );
    }
}
