//! # berth-compose — `berth import compose`
//!
//! Pure: no I/O, no clock. A shell hands in the Compose files' bytes, the variables (`.env`
//! overridden by the environment), the options and a function that reads an `env_file`, and gets
//! back a stack file that `berth validate` accepts, or every error found, and in both cases the
//! warnings (each Compose key berth cannot map, at its `FILE:LINE:COL`, with what berth does
//! instead), the notes (choices made, also written as comments) and the mapping of every key.
//!
//! ## Layout
//! - [`interp`]  — `${VAR:-default}` and the other Compose interpolations.
//! - [`dotenv`]  — `.env` / `env_file` syntax.
//! - `tree`      — the positioned, interpolated Compose tree (on `berth_spec::yaml`).
//! - `merge`     — several `-f` files merged as `docker compose` does.
//! - `service`, `env`, `ports`, `deploy`, `units` — one Compose service → one berth service.
//! - `out`       — the stack being built and its commented text.
//! - [`report`]  — errors, warnings, notes and the mapping.

#![forbid(unsafe_code)]

mod deploy;
pub mod dotenv;
mod env;
pub mod interp;
mod merge;
mod out;
mod ports;
pub mod report;
mod service;
pub mod tree;
mod units;

use std::collections::BTreeMap;

use berth_spec::yaml;

pub use interp::Vars;
pub use report::{Item, Mapped, Report};

/// One `-f` file: its name as the user wrote it (for `FILE:LINE:COL`) and its bytes.
#[derive(Debug, Clone)]
pub struct ComposeFile {
    pub name: String,
    pub bytes: Vec<u8>,
}

/// The import's options.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// `--stack NAME`; else the Compose `name:`, else `project_name`.
    pub stack: Option<String>,
    /// `--env NAME`: the one environment written.
    pub env: String,
    /// `--image SERVICE=REF`: the image for a service that Compose builds (or a replacement).
    pub images: BTreeMap<String, String>,
    /// The project directory, absolute: relative bind sources are resolved against it.
    pub project_dir: String,
    /// The project's default name (the directory's), used when nothing else names the stack.
    pub project_name: String,
    /// `--strict`: every warning is an error.
    pub strict: bool,
}

/// What an import produced.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The stack file, when there were no errors (and no warnings under `--strict`).
    pub stack: Option<String>,
    pub report: Report,
    /// The file names, for [`Outcome::display`].
    pub files: Vec<String>,
}

impl Outcome {
    /// `FILE:LINE:COL: KIND: message` for one item.
    pub fn display(&self, kind: &str, item: &Item) -> String {
        if item.at.pos.line == 0 {
            return format!("{kind}: {}", item.message);
        }
        let file = self.files.get(item.at.file).map_or("?", String::as_str);
        format!(
            "{file}:{}:{}: {kind}: {}",
            item.at.pos.line, item.at.pos.col, item.message
        )
    }

    /// The `--output json` form: the stack, the mapping of every key, the warnings and notes.
    pub fn to_json(&self) -> serde_json::Value {
        let items = |v: &[Item]| -> Vec<serde_json::Value> {
            v.iter()
                .map(|i| {
                    serde_json::json!({
                        "file": self.files.get(i.at.file),
                        "line": i.at.pos.line,
                        "col": i.at.pos.col,
                        "message": i.message,
                    })
                })
                .collect()
        };
        let mapping: Vec<serde_json::Value> = self
            .report
            .mapped
            .iter()
            .map(|m| {
                let mut v = serde_json::to_value(m).unwrap_or_default();
                if let Some(o) = v.as_object_mut() {
                    o.insert("file".into(), self.files.get(m.at.file).cloned().into());
                    o.insert("line".into(), m.at.pos.line.into());
                    o.insert("col".into(), m.at.pos.col.into());
                }
                v
            })
            .collect();
        serde_json::json!({
            "stack": self.stack,
            "mapping": mapping,
            "warnings": items(&self.report.warnings),
            "notes": items(&self.report.notes),
            "errors": items(&self.report.errors),
        })
    }
}

/// A name as berth's `[a-z][a-z0-9-]*` (at most 63): lower case, `_` and `.` as `-`.
fn dns_name(s: &str) -> String {
    let mut n: String = s
        .to_ascii_lowercase()
        .chars()
        .map(|c| {
            if c.is_ascii_lowercase() || c.is_ascii_digit() {
                c
            } else {
                '-'
            }
        })
        .collect();
    while n.contains("--") {
        n = n.replace("--", "-");
    }
    let mut n = n.trim_matches('-').to_string();
    if !n.starts_with(|c: char| c.is_ascii_lowercase()) {
        n.insert_str(0, "s-");
    }
    n.truncate(63);
    n.trim_end_matches('-').to_string()
}

/// What berth does instead of the top-level keys it has no equivalent for.
fn top_level_instead(key: &str) -> Option<&'static str> {
    Some(match key {
        "networks" => "berth has no container networks; services reach each other through the router. Not kept",
        "volumes" => "berth has no Docker volumes; use bind volumes with absolute host paths. Not kept",
        "secrets" | "configs" => "berth's secrets are set with `berth secret set STACK NAME` and passed as environment variables. Not kept",
        _ => return None,
    })
}

/// Imports a Compose project. `read_env_file` reads an `env_file` path as written in the file
/// (relative to the project directory); it is the only I/O, and the shell's.
pub fn import(
    files: &[ComposeFile],
    vars: &Vars,
    options: &Options,
    read_env_file: &dyn Fn(&str) -> Result<String, String>,
) -> Outcome {
    let mut report = Report::default();
    let names: Vec<String> = files.iter().map(|f| f.name.clone()).collect();
    let mut root: Option<tree::Value> = None;
    for (i, f) in files.iter().enumerate() {
        let node = match yaml::parse(&f.bytes, &yaml::Limits::default()) {
            Ok(Some(n)) => n,
            Ok(None) => {
                report.error(
                    merge::file_start(i),
                    "the file is empty; expected `services:`",
                );
                continue;
            }
            Err(d) => {
                let at = tree::At {
                    file: i,
                    pos: d.pos.unwrap_or_default(),
                };
                report.error(at, d.message);
                continue;
            }
        };
        let mut value = tree::from_yaml(&node, i, vars, &mut report);
        merge::normalise(&mut value);
        match &mut root {
            None => root = Some(value),
            Some(r) => merge::merge(r, value),
        }
    }
    let stack = root.and_then(|r| build(&r, &names, vars, options, read_env_file, &mut report));
    report.sort();
    let stack = if report.errors.is_empty() && (!options.strict || report.warnings.is_empty()) {
        stack
    } else {
        None
    };
    Outcome {
        stack,
        report,
        files: names,
    }
}

fn build(
    root: &tree::Value,
    files: &[String],
    vars: &Vars,
    options: &Options,
    read_env_file: &dyn Fn(&str) -> Result<String, String>,
    report: &mut Report,
) -> Option<String> {
    let tree::Kind::Map(top) = &root.kind else {
        report.error(root.at, "a Compose file must be a mapping with `services:`");
        return None;
    };
    let mut compose_name = None;
    let mut services = None;
    for e in top {
        match e.key.as_str() {
            "services" => services = Some(e),
            "name" => compose_name = e.value.str().map(str::to_string),
            "version" => report.note(e.key_at, "`version` is obsolete in Compose and ignored"),
            "include" => report.error(
                e.key_at,
                "`include` is not followed: pass every file with -f instead",
            ),
            k if k.starts_with("x-") => {}
            k => match top_level_instead(k) {
                Some(what) => report.warn(e.key_at, format!("{k}: {what}")),
                None => report.warn(
                    e.key_at,
                    format!("{k}: not a Compose key berth knows; not kept"),
                ),
            },
        }
    }
    let Some(services) = services else {
        report.error(merge::file_start(0), "no `services:`: nothing to import");
        return None;
    };
    let stack_name = match &options.stack {
        Some(s) => s.clone(),
        None => dns_name(compose_name.as_deref().unwrap_or(&options.project_name)),
    };
    let mut opts = options.clone();
    opts.stack = Some(stack_name.clone());
    let mut names = BTreeMap::new();
    for e in services.value.entries() {
        let n = dns_name(&e.key);
        if let Some((other, _)) = names.iter().find(|(_, v)| **v == n) {
            report.error(e.key_at, format!("services {other} and {} both become `{n}` in berth (names are [a-z][a-z0-9-]*); rename one", e.key));
        }
        names.insert(e.key.clone(), n);
    }
    for k in options.images.keys() {
        if !names.contains_key(k) && !names.values().any(|v| v == k) {
            report.error(
                tree::At::default(),
                format!("--image {k}=…: the Compose project has no service `{k}`"),
            );
        }
    }
    let mut stack = out::Stack {
        name: stack_name,
        env: options.env.clone(),
        header: vec![
            format!(
                "Imported by `berth import compose` from {}.",
                files.join(", ")
            ),
            "Comments mark the choices it made; the warnings it printed list what it left out."
                .to_string(),
        ],
        services: BTreeMap::new(),
    };
    for e in services.value.entries() {
        let name = names.get(&e.key).cloned().unwrap_or_default();
        let mut svc = service::Svc {
            compose: &e.key,
            key_at: e.key_at,
            name: name.clone(),
            names: &names,
            options: &opts,
            vars,
            read_env_file,
            report,
            out: out::Service::default(),
            traefik: Vec::new(),
        };
        if name != e.key {
            svc.note(
                e.key_at,
                "",
                &format!(
                    "compose service `{}`, renamed: berth's names are [a-z][a-z0-9-]*",
                    e.key
                ),
            );
        }
        service::map(&mut svc, &e.value);
        let built = svc.out;
        stack.services.insert(name, built);
    }
    let text = out::emit(&stack);
    if report.errors.is_empty() {
        if let Err(d) = berth_spec::validate(text.as_bytes()) {
            for x in d.0 {
                let at = x
                    .pos
                    .map_or_else(String::new, |p| format!(" (line {} of the stack)", p.line));
                report.error(tree::At::default(), format!("the stack written does not validate{at}: {}; this is a bug in `berth import compose`, please report it with the compose file", x.message));
            }
            return None;
        }
    }
    Some(text)
}
