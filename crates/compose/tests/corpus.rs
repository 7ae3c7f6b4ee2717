//! The corpus: realistic Compose projects under `tests/corpus/`, each imported and compared with
//! its golden output (`tests/snapshots/`, reviewed and committed; with `INSTA_UPDATE=no`, as in
//! CI, a mismatch fails). Each golden holds the stack file and every warning, note and error as
//! `FILE:LINE:COL: …`; every stack written must pass `berth_spec::validate`.
//!
//! The variables are the project's `.env` plus the case's own, never the test's environment, so
//! the goldens do not depend on the machine; the project directory is a fixed `/srv/NAME`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use berth_compose::{ComposeFile, Options, Outcome, Vars};

struct Case {
    dir: &'static str,
    files: &'static [&'static str],
    images: &'static [(&'static str, &'static str)],
    vars: &'static [(&'static str, &'static str)],
    strict: bool,
    /// Whether a stack is expected (false: the import must fail).
    ok: bool,
}

const fn case(dir: &'static str) -> Case {
    Case {
        dir,
        files: &["compose.yaml"],
        images: &[],
        vars: &[],
        strict: false,
        ok: true,
    }
}

fn corpus() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus")
}

fn run(c: &Case) -> Outcome {
    let dir = corpus().join(c.dir);
    let files: Vec<ComposeFile> = c
        .files
        .iter()
        .map(|f| ComposeFile {
            name: f.to_string(),
            bytes: std::fs::read(dir.join(f)).unwrap(),
        })
        .collect();
    let mut vars = Vars::new();
    if let Ok(text) = std::fs::read_to_string(dir.join(".env")) {
        for l in berth_compose::dotenv::parse(&text).unwrap() {
            vars.insert(l.key, l.value);
        }
    }
    for (k, v) in c.vars {
        vars.insert(k.to_string(), v.to_string());
    }
    let options = Options {
        stack: None,
        env: "local".to_string(),
        images: c
            .images
            .iter()
            .map(|(s, r)| (s.to_string(), r.to_string()))
            .collect::<BTreeMap<_, _>>(),
        project_dir: format!("/srv/{}", c.dir),
        project_name: c.dir.to_string(),
        strict: c.strict,
    };
    let read = |p: &str| std::fs::read_to_string(dir.join(p)).map_err(|e| format!("{p}: {e}"));
    berth_compose::import(&files, &vars, &options, &read)
}

/// The golden text: the stack (or `(no stack)`), then every message as the CLI prints it.
fn golden(o: &Outcome) -> String {
    let mut s = match &o.stack {
        Some(stack) => stack.clone(),
        None => "(no stack)\n".to_string(),
    };
    s.push_str("\n--- stderr ---\n");
    for (kind, items) in [
        ("error", &o.report.errors),
        ("warning", &o.report.warnings),
        ("note", &o.report.notes),
    ] {
        for i in items.iter() {
            s.push_str(&o.display(kind, i));
            s.push('\n');
        }
    }
    s
}

fn check(name: &str, c: Case) {
    let o = run(&c);
    assert_eq!(
        o.stack.is_some(),
        c.ok,
        "{name}: expected ok={}, got:\n{}",
        c.ok,
        golden(&o)
    );
    if let Some(stack) = &o.stack {
        if let Err(d) = berth_spec::validate(stack.as_bytes()) {
            panic!("{name}: the stack does not validate: {d:?}\n{stack}");
        }
        // Deterministic: a second import writes the same bytes.
        assert_eq!(run(&c).stack.as_deref(), Some(stack.as_str()));
    }
    insta::assert_snapshot!(name, golden(&o));
}

#[test]
fn web_db_cache() {
    check("web_db_cache", case("web-db-cache"));
}

#[test]
fn workers() {
    check("workers", case("workers"));
}

#[test]
fn healthchecks() {
    check("healthchecks", case("healthchecks"));
}

#[test]
fn depends_on_conditions() {
    check("depends_on", case("depends-on"));
}

#[test]
fn several_files_merge_as_compose_does() {
    check(
        "multi_file",
        Case {
            files: &["compose.yaml", "compose.prod.yaml"],
            ..case("multi-file")
        },
    );
}

#[test]
fn dotenv_interpolation() {
    check("dotenv", case("dotenv"));
}

#[test]
fn traefik_labels() {
    check("traefik", case("traefik"));
}

#[test]
fn build_is_an_error_without_image() {
    check(
        "build_without_image",
        Case {
            ok: false,
            ..case("build")
        },
    );
}

#[test]
fn build_with_image() {
    check(
        "build_with_image",
        Case {
            images: &[
                ("web", "registry.example.com/acme/web:1.2.0"),
                ("worker", "registry.example.com/acme/worker:1.2.0"),
                ("redis", "redis:7.2"),
            ],
            ..case("build")
        },
    );
}

#[test]
fn secrets_in_env() {
    check(
        "secrets_in_env",
        Case {
            vars: &[("DB_PASSWORD", "hunter2"), ("GITHUB_TOKEN", "ghp_x")],
            ..case("secrets-in-env")
        },
    );
}

#[test]
fn a_required_variable_unset_is_an_error_at_its_position() {
    check(
        "secrets_in_env_unset",
        Case {
            ok: false,
            ..case("secrets-in-env")
        },
    );
}

#[test]
fn a_secret_interpolated_outside_environment_is_an_error() {
    check(
        "secrets_in_command",
        Case {
            vars: &[
                ("DB_PASSWORD", "hunter2"),
                ("TENANT_KEY", "acme"),
                ("API_TOKEN", "tok"),
            ],
            ok: false,
            ..case("secrets-in-command")
        },
    );
}

#[test]
fn volumes_restart_and_odd_keys() {
    check("volumes_restart", case("volumes-restart"));
}

#[test]
fn strict_turns_warnings_into_errors() {
    let o = run(&Case {
        strict: true,
        ok: false,
        ..case("web-db-cache")
    });
    assert!(o.stack.is_none());
    assert!(o.report.errors.is_empty() && !o.report.warnings.is_empty());
}

#[test]
fn no_secret_value_reaches_the_stack_or_the_messages() {
    let o = run(&Case {
        vars: &[("DB_PASSWORD", "hunter2"), ("GITHUB_TOKEN", "ghp_x")],
        ..case("secrets-in-env")
    });
    // And where a secret is interpolated outside `environment` (an error, not a stack in clear).
    let in_command = run(&Case {
        vars: &[
            ("DB_PASSWORD", "hunter2"),
            ("TENANT_KEY", "acme"),
            ("API_TOKEN", "ghp_x"),
        ],
        ..case("secrets-in-command")
    });
    let all = format!(
        "{}{}{}{}",
        golden(&o),
        o.to_json(),
        golden(&in_command),
        in_command.to_json()
    );
    for secret in [
        "hunter2",
        "ghp_x",
        "sk_live_not_in_the_stack",
        "AKIAEXAMPLE",
    ] {
        assert!(!all.contains(secret), "{secret} leaked:\n{all}");
    }
}

#[test]
fn warnings_name_file_line_and_column() {
    let o = run(&Case {
        files: &["compose.yaml", "compose.prod.yaml"],
        ..case("multi-file")
    });
    let lines: Vec<String> = o
        .report
        .warnings
        .iter()
        .map(|w| o.display("warning", w))
        .collect();
    // The label's key in the first file, line 9 col 7; `delay` in the second, line 13 col 9.
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("compose.yaml:9:7: warning: services.web.labels")),
        "{lines:#?}"
    );
    assert!(
        lines.iter().any(|l| l.starts_with(
            "compose.prod.yaml:13:9: warning: services.web.deploy.update_config.delay"
        )),
        "{lines:#?}"
    );
}

#[test]
fn json_lists_the_mapping() {
    let o = run(&case("web-db-cache"));
    let j = o.to_json();
    let mapping = j["mapping"].as_array().unwrap();
    assert!(mapping.iter().any(|m| m["compose"] == "ports"
        && m["berth"] == "services.web.ports.http"
        && m["file"] == "compose.yaml"
        && m["line"] == 7
        && m["col"] == 9));
    assert!(j["stack"].as_str().unwrap().contains("stack: web-db-cache"));
}
