//! `environment` and `env_file` → `env` and `secrets`.
//!
//! A variable whose name looks like a secret (`*PASSWORD*`, `*SECRET*`, `*TOKEN*`, `*KEY*`), or
//! whose value interpolates one (`DATABASE_URL: postgres://app:${DB_PASSWORD}@db/app`), becomes
//! a secret: its name goes to `secrets:` and its value is written nowhere, with a note to set it
//! with `berth secret set`.

use crate::dotenv;
use crate::service::Svc;
use crate::tree::{At, Value};

/// Whether a variable name looks like it holds a secret.
pub fn looks_secret(name: &str) -> bool {
    let up = name.to_ascii_uppercase();
    ["PASSWORD", "SECRET", "TOKEN", "KEY"]
        .iter()
        .any(|w| up.contains(w))
}

fn valid_env_name(k: &str) -> bool {
    k.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn valid_secret_name(k: &str) -> bool {
    k.starts_with(|c: char| c.is_ascii_uppercase() || c == '_')
        && k.chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
}

/// Maps `env_file` (first) and `environment` (which overrides it), as Compose orders them.
pub fn map(svc: &mut Svc<'_>, env_files: Option<&Value>, environment: Option<&Value>) {
    if let Some(files) = env_files {
        for (at, path, required) in file_list(files) {
            read_env_file(svc, at, &path, required);
        }
    }
    if let Some(env) = environment {
        for e in env.entries() {
            let (value, vars) = if e.value.is_null() {
                // `- NAME` or `NAME:`: the value comes from the environment the import runs in.
                match svc.vars.get(&e.key) {
                    Some(v) => (v.clone(), vec![e.key.clone()]),
                    None => {
                        svc.warn(e.key_at, "environment", &format!("{} takes its value from the shell, where it is not set: not kept (set it in the environment or .env and import again)", e.key));
                        continue;
                    }
                }
            } else {
                match e.value.str() {
                    Some(s) => (s.to_string(), e.value.vars()),
                    None => {
                        svc.report.error(
                            e.value.at,
                            format!(
                                "services.{}.environment.{}: expected a string",
                                svc.compose, e.key
                            ),
                        );
                        continue;
                    }
                }
            };
            put(svc, e.key_at, "environment", &e.key, value, &vars);
        }
    }
    let secrets: Vec<String> = svc.out.secrets.iter().cloned().collect();
    if !secrets.is_empty() {
        let stack = svc
            .options
            .stack
            .clone()
            .unwrap_or_else(|| "STACK".to_string());
        svc.out.comment(
            "secrets",
            "values not imported (they look like secrets, or interpolate one): set each before deploying,",
        );
        for s in secrets {
            svc.out
                .comment("secrets", format!("  berth secret set {stack} {s}"));
        }
    }
}

/// `env_file: a.env`, `[a.env, b.env]` or `[{path: a.env, required: false}]`.
fn file_list(v: &Value) -> Vec<(At, String, bool)> {
    let one = |v: &Value| -> Option<(At, String, bool)> {
        if let Some(s) = v.str() {
            return Some((v.at, s.to_string(), true));
        }
        let path = v.get("path")?.str()?.to_string();
        let required = v.get("required").and_then(Value::str) != Some("false");
        Some((v.at, path, required))
    };
    match &v.kind {
        crate::tree::Kind::Seq(items) => items.iter().filter_map(one).collect(),
        _ => one(v).into_iter().collect(),
    }
}

fn read_env_file(svc: &mut Svc<'_>, at: At, path: &str, required: bool) {
    let text = match (svc.read_env_file)(path) {
        Ok(t) => t,
        Err(e) if required => {
            svc.report
                .error(at, format!("services.{}.env_file: {e}", svc.compose));
            return;
        }
        Err(_) => return,
    };
    let lines = match dotenv::parse(&text) {
        Ok(l) => l,
        Err((pos, e)) => {
            svc.report.error(
                at,
                format!(
                    "services.{}.env_file: {path}:{}: {e}",
                    svc.compose, pos.line
                ),
            );
            return;
        }
    };
    for line in lines {
        let i = match crate::interp::interpolate(&line.value, svc.vars) {
            Ok(i) => i,
            Err(e) => {
                svc.report.error(
                    at,
                    format!(
                        "services.{}.env_file: {path}:{}: {e}",
                        svc.compose, line.pos.line
                    ),
                );
                continue;
            }
        };
        put(svc, at, "env_file", &line.key, i.text, &i.vars);
    }
}

/// Puts one variable in `env` or, if it is a secret, its name in `secrets`.
fn put(svc: &mut Svc<'_>, at: At, from: &str, key: &str, value: String, vars: &[String]) {
    if !valid_env_name(key) {
        svc.warn(
            at,
            from,
            &format!(
                "`{key}` is not a variable name berth accepts ([A-Za-z_][A-Za-z0-9_]*). Not kept"
            ),
        );
        return;
    }
    let secret_var = vars.iter().find(|v| looks_secret(v) && v.as_str() != key);
    if looks_secret(key) || secret_var.is_some() {
        if !valid_secret_name(key) {
            svc.warn(at, from, &format!("`{key}` looks like a secret but is not a berth secret name ([A-Z_][A-Z0-9_]*): rename it in upper case and set it with `berth secret set`. Not kept"));
            return;
        }
        svc.out.env.remove(key);
        svc.out.secrets.insert(key.to_string());
        let why = match secret_var {
            Some(v) if !looks_secret(key) => format!("its value interpolates ${{{v}}}"),
            _ => "its name looks like a secret".to_string(),
        };
        svc.mapped(at, &format!("{from}.{key}"), "secrets", &why);
        svc.report.note(at, format!("services.{}: {key} is a secret ({why}): its value is not written; set it with `berth secret set`", svc.compose));
        return;
    }
    svc.out.secrets.remove(key);
    svc.mapped(at, &format!("{from}.{key}"), &format!("env.{key}"), "");
    svc.out.env.insert(key.to_string(), value);
}
