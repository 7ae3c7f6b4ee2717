//! Several `-f` files merged as `docker compose` merges them: mappings merge key by key (the
//! later file wins), `environment`, `labels` and `depends_on` merge as mappings whichever syntax
//! each file used, sequences of ports, volumes and the like are appended, and every other value
//! (`command`, `image`, a healthcheck's `test` …) is replaced by the later file's.

use crate::tree::{At, Entry, Kind, Scalar, Value};

/// Keys whose sequences are appended when files merge (Compose's "sequence" merge rule).
const APPENDED: &[&str] = &[
    "ports",
    "expose",
    "volumes",
    "env_file",
    "dns",
    "dns_search",
    "cap_add",
    "cap_drop",
    "secrets",
    "configs",
    "devices",
    "tmpfs",
    "security_opt",
    "extra_hosts",
    "external_links",
    "links",
];

/// Keys whose list syntax (`- KEY=VALUE`, `- name`) is the same as a mapping.
const LIST_AS_MAP: &[&str] = &[
    "environment",
    "labels",
    "depends_on",
    "annotations",
    "sysctls",
];

/// Rewrites every service's list-syntax `environment`, `labels` and `depends_on` as mappings, so
/// that merging and mapping see one shape.
pub fn normalise(root: &mut Value) {
    let Kind::Map(top) = &mut root.kind else {
        return;
    };
    for e in top.iter_mut().filter(|e| e.key == "services") {
        let Kind::Map(services) = &mut e.value.kind else {
            continue;
        };
        for svc in services.iter_mut() {
            let Kind::Map(fields) = &mut svc.value.kind else {
                continue;
            };
            for f in fields.iter_mut() {
                if LIST_AS_MAP.contains(&f.key.as_str()) {
                    list_to_map(&mut f.value, f.key != "depends_on");
                }
            }
        }
    }
}

/// `[A=1, B]` → `{A: "1", B: null}` (with `split` on `=`), or `[db]` → `{db: null}`.
fn list_to_map(v: &mut Value, split: bool) {
    let Kind::Seq(items) = &v.kind else {
        return;
    };
    let entries = items
        .iter()
        .filter_map(|item| {
            let Kind::Str(s) = &item.kind else {
                return None;
            };
            let (key, value) = match s.text.split_once('=') {
                Some((k, v)) if split => (k, Some(v)),
                _ => (s.text.as_str(), None),
            };
            Some(Entry {
                key: key.to_string(),
                key_at: item.at,
                value: Value {
                    at: item.at,
                    kind: Kind::Str(Scalar {
                        text: value.unwrap_or_default().to_string(),
                        plain: value.is_none(),
                        vars: s.vars.clone(),
                    }),
                },
            })
        })
        .collect();
    v.kind = Kind::Map(entries);
}

/// Merges `over` (a later `-f` file) into `base`.
pub fn merge(base: &mut Value, over: Value) {
    merge_under(base, over, "");
}

fn merge_under(base: &mut Value, over: Value, key: &str) {
    match (&mut base.kind, over.kind) {
        (Kind::Map(b), Kind::Map(o)) => {
            for entry in o {
                match b.iter_mut().find(|e| e.key == entry.key) {
                    Some(existing) => {
                        existing.key_at = entry.key_at;
                        merge_under(&mut existing.value, entry.value, &entry.key);
                    }
                    None => b.push(entry),
                }
            }
        }
        (Kind::Seq(b), Kind::Seq(o)) if APPENDED.contains(&key) => {
            for item in o {
                if !b.iter().any(|x| x.kind == item.kind) {
                    b.push(item);
                }
            }
        }
        (_, kind) => *base = Value { at: over.at, kind },
    }
}

/// The position to blame for a file as a whole (its first line).
pub fn file_start(file: usize) -> At {
    At {
        file,
        pos: berth_spec::Pos { line: 1, col: 1 },
    }
}
