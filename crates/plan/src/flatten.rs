//! A value's serde JSON form as sorted `path → leaf` pairs.
//!
//! Flattening is what makes the diff generic: a field added to the model tomorrow shows up in
//! plans without any code here changing. Objects are walked key by key; arrays are leaves, because
//! an element inserted at the front of `command` or `regions` reads better as one `[…] → […]`
//! change than as every index shifting.

use std::collections::BTreeMap;

use serde_json::Value;

/// The object keys from the root to a leaf. Kept as segments (not a joined string) so that a key
/// containing a dot can never be mistaken for two levels, e.g. when matching
/// [`crate::IN_PLACE_FIELDS`].
pub(crate) type Path = Vec<String>;

/// Every leaf of `value` by its path, sorted by path. An empty object has no leaves: its keys
/// appearing later show up as added leaves, which is the change a person cares about.
pub(crate) fn flatten(value: &Value) -> BTreeMap<Path, Value> {
    let mut out = BTreeMap::new();
    walk(value, &mut Vec::new(), &mut out);
    out
}

fn walk(value: &Value, path: &mut Path, out: &mut BTreeMap<Path, Value>) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                path.push(k.clone());
                walk(v, path, out);
                path.pop();
            }
        }
        leaf => {
            out.insert(path.clone(), leaf.clone());
        }
    }
}

/// A path as a person reads it: `env.VERSION`, `health.interval`. A segment that is not a plain
/// word (say an env key `a.b`) is written as a JSON string, `env."a.b"`, so the rendering stays
/// unambiguous.
pub(crate) fn path_string(path: &[String]) -> String {
    let plain = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    };
    let mut out = String::new();
    for (i, seg) in path.iter().enumerate() {
        if i > 0 {
            out.push('.');
        }
        if plain(seg) {
            out.push_str(seg);
        } else {
            out.push_str(&Value::String(seg.clone()).to_string());
        }
    }
    out
}

/// Whether `path` is `prefix` or lies under it, segment by segment.
pub(crate) fn under(path: &[String], prefix: &str) -> bool {
    let prefix: Vec<&str> = prefix.split('.').collect();
    path.len() >= prefix.len() && path.iter().zip(&prefix).all(|(a, b)| a == b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn objects_are_walked_and_arrays_are_leaves() {
        let v = json!({"b": {"y": 1, "x": [1, 2]}, "a": "s", "e": {}});
        let flat = flatten(&v);
        let keys: Vec<String> = flat.keys().map(|p| path_string(p)).collect();
        assert_eq!(keys, ["a", "b.x", "b.y"]);
        assert_eq!(flat[&vec!["b".to_string(), "x".to_string()]], json!([1, 2]));
    }

    #[test]
    fn odd_keys_are_quoted() {
        let p = vec!["env".to_string(), "a.b".to_string()];
        assert_eq!(path_string(&p), r#"env."a.b""#);
        assert!(!under(&p, "env.a"));
        assert!(under(&p, "env"));
        assert!(under(
            &["placement".into(), "spread".into()],
            "placement.spread"
        ));
        assert!(!under(&["placement".into()], "placement.spread"));
    }
}
