//! `berth import compose` end to end (issue 18, point 3), on the built binary:
//!
//! 1. a Compose project with `.env` interpolation and two `-f` files imports to a stack that
//!    `berth validate` accepts; warnings go to stderr as `FILE:LINE:COL: warning: …`, the stack
//!    (and nothing else) to stdout, and no secret value anywhere;
//! 2. without `-f`, `compose.override.yaml` is merged over `compose.yaml`, as in Compose;
//! 3. `--strict` fails (exit 1, nothing on stdout) on a warning; `build` without `--image`
//!    fails naming the flag; `--output json` lists the mapping;
//! 4. the imported stack of a process-free project (the locally `docker import`ed busybox
//!    image) deploys on `berth up` and answers through the router. Without a Docker Engine it
//!    is skipped loudly, unless `BERTH_REQUIRE_DOCKER=1`.

mod common;

use std::path::Path;
use std::process::Output;

use common::cluster::{cli_ok, wait_settled};
use common::docker::{engine_or_skip, DockerUp, V1};
use common::{
    assert_exit, command, http, run, run_command, stderr, stdout, temp_dir, write_file, RUN_TIMEOUT,
};

/// `berth import compose ARGS…` in `dir`, with only `PATH` and `HOME` from this environment, so
/// a variable of the developer's shell cannot change what is imported.
fn import(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = command(["import", "compose"].iter().chain(args));
    cmd.current_dir(dir).env_clear();
    for k in ["PATH", "HOME"] {
        if let Some(v) = std::env::var_os(k) {
            cmd.env(k, v);
        }
    }
    cmd.envs(env.iter().copied());
    run_command(cmd, RUN_TIMEOUT)
}

const COMPOSE: &str = r#"name: shop
services:
  web:
    image: ${REGISTRY}/web:${TAG:-1.0.0}
    ports: ["8080:8080"]
    environment:
      DATABASE_URL: postgres://shop:${DB_PASSWORD}@db/shop
      GREETING: ${GREETING:-hello}
    depends_on:
      db: { condition: service_healthy }
    networks: [front]
  db:
    image: postgres:16.2
    environment:
      POSTGRES_PASSWORD: ${DB_PASSWORD:?set DB_PASSWORD}
    healthcheck:
      test: ["CMD-SHELL", "pg_isready"]
      interval: 2s
networks: { front: {} }
"#;

const OVERRIDE: &str = r#"services:
  web:
    image: ${REGISTRY}/web:${TAG}
    deploy: { replicas: 3 }
"#;

#[test]
fn an_imported_project_validates_and_warnings_name_file_line_and_column() {
    let dir = temp_dir();
    write_file(dir.path(), "compose.yaml", COMPOSE);
    write_file(dir.path(), "compose.prod.yaml", OVERRIDE);
    write_file(
        dir.path(),
        ".env",
        "REGISTRY=registry.example.com\nTAG=2.0.1\n",
    );
    let out = import(
        dir.path(),
        &["-f", "compose.yaml", "-f", "compose.prod.yaml"],
        &[("DB_PASSWORD", "hunter2-not-in-output")],
    );
    assert_exit(&out, 0);
    let stack = stdout(&out);
    let err = stderr(&out);
    assert!(
        stack.contains("image: \"registry.example.com/web:2.0.1\""),
        "{stack}"
    );
    assert!(stack.contains("replicas: 3"), "{stack}");
    assert!(stack.contains("secrets: [DATABASE_URL]"), "{stack}");
    assert!(
        err.lines()
            .any(|l| l.starts_with("compose.yaml:11:5: warning: services.web.networks")),
        "{err}"
    );
    assert!(
        err.lines()
            .any(|l| l.starts_with("compose.yaml:19:1: warning: networks")),
        "{err}"
    );
    for text in [&stack, &err] {
        assert!(!text.contains("hunter2"), "a secret value leaked:\n{text}");
    }
    let file = write_file(dir.path(), "shop.yaml", &stack);
    assert_exit(&run(["validate", file.as_str()]), 0);

    // The default file, and the environment over `.env` (as in Compose).
    std::fs::remove_file(dir.path().join("compose.prod.yaml")).unwrap();
    let out = import(dir.path(), &[], &[("DB_PASSWORD", "x"), ("TAG", "3.0.0")]);
    assert_exit(&out, 0);
    assert!(stdout(&out).contains("web:3.0.0"), "{}", stdout(&out));

    // `${DB_PASSWORD:?…}` unset: an error at its position, no stack.
    let out = import(dir.path(), &[], &[]);
    assert_exit(&out, 1);
    assert_eq!(stdout(&out), "");
    assert!(
        stderr(&out).contains(
            "compose.yaml:15:26: error: required variable DB_PASSWORD is not set: set DB_PASSWORD"
        ),
        "{}",
        stderr(&out)
    );
}

#[test]
fn without_f_the_override_file_is_merged_as_compose_does() {
    let dir = temp_dir();
    write_file(dir.path(), "compose.yaml", COMPOSE);
    write_file(
        dir.path(),
        "compose.override.yaml",
        "services:\n  web:\n    deploy: { replicas: 2 }\n",
    );
    let env = [("REGISTRY", "r.example.com"), ("DB_PASSWORD", "x")];
    let out = import(dir.path(), &[], &env);
    assert_exit(&out, 0);
    assert!(stdout(&out).contains("replicas: 2"), "{}", stdout(&out));
    assert!(
        stderr(&out).contains("note: compose.override.yaml is merged over compose.yaml"),
        "{}",
        stderr(&out)
    );
    // Named with -f, the base file alone: the override is left out, as in Compose.
    let out = import(dir.path(), &["-f", "compose.yaml"], &env);
    assert_exit(&out, 0);
    assert!(!stdout(&out).contains("replicas:"), "{}", stdout(&out));
}

#[test]
fn strict_build_and_json() {
    let dir = temp_dir();
    write_file(dir.path(), "compose.yaml", COMPOSE);
    write_file(
        dir.path(),
        ".env",
        "REGISTRY=r.example.com\nDB_PASSWORD=x\n",
    );
    let out = import(dir.path(), &["--strict"], &[]);
    assert_exit(&out, 1);
    assert_eq!(stdout(&out), "", "--strict wrote a stack");
    assert!(
        stderr(&out).contains("compose.yaml:11:5: error: services.web.networks"),
        "{}",
        stderr(&out)
    );

    let out = import(dir.path(), &["--output", "json", "--stack", "shop2"], &[]);
    assert_exit(&out, 0);
    let j: serde_json::Value = serde_json::from_str(&stdout(&out)).expect("JSON");
    assert!(
        j["stack"].as_str().unwrap().starts_with("# Imported"),
        "{j}"
    );
    assert!(j["stack"].as_str().unwrap().contains("stack: shop2"), "{j}");
    assert!(j["mapping"]
        .as_array()
        .unwrap()
        .iter()
        .any(|m| m["compose"] == "healthcheck.test" && m["berth"] == "services.db.health.exec"));

    let dir = temp_dir();
    write_file(
        dir.path(),
        "docker-compose.yml",
        "services:\n  web:\n    build: .\n",
    );
    let out = import(dir.path(), &[], &[]);
    assert_exit(&out, 1);
    assert!(stderr(&out).contains("docker-compose.yml:3:5: error: services.web.build: berth does not build images; build and push it, then pass --image web="), "{}", stderr(&out));
    let out = import(
        dir.path(),
        &["--image", "web=registry.example.com/web:1.0.0"],
        &[],
    );
    assert_exit(&out, 0);
}

/// A process-free project: the busybox httpd image the test suite builds with `docker import`,
/// routed by a Traefik label for host 127.0.0.1 (what the harness's `Host` header matches).
const DEPLOYABLE: &str = r#"services:
  web:
    image: berth-test/busybox:v1
    ports: ["8080"]
    healthcheck:
      test: ["CMD", "wget", "-q", "-O-", "http://127.0.0.1:8080/healthz"]
      interval: 250ms
      timeout: 1s
      retries: 2
    stop_grace_period: 2s
    labels:
      traefik.http.routers.web.rule: Host(`127.0.0.1`)
"#;

#[test]
fn an_imported_stack_deploys_and_serves_through_the_router() {
    if !engine_or_skip("import_compose::an_imported_stack_deploys_and_serves_through_the_router") {
        return;
    }
    let up = DockerUp::start();
    let project = up.dir().join("imported");
    std::fs::create_dir_all(&project).unwrap();
    write_file(&project, "compose.yaml", DEPLOYABLE);
    let out = import(&project, &["--stack", "imported", "--strict"], &[]);
    assert_exit(&out, 0);
    let stack = stdout(&out);
    assert!(stack.contains(&format!("image: \"{V1}\"")), "{stack}");
    let file = write_file(&project, "imported.yaml", &stack);
    cli_ok(&up, &["deploy", "-f", &file, "--env", "local"]);
    wait_settled(&up, "imported", "web", 1, Some(1));
    let r = http::get(up.router(), "/")
        .unwrap_or_else(|e| panic!("through the router: {e}\n{}", up.log_tail()));
    assert_eq!(
        (r.status, r.text().trim()),
        (200, "v1"),
        "{}",
        up.log_tail()
    );
}
