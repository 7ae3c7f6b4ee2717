//! The deploy policies the README promises, through the real binary: exit code 3 ("refused by
//! policy") for `approval: true` (the deploy waits for an approver) and for a capacity drop without `--confirm STACK`, and
//! `berth deploy --plan ID`, which applies exactly the plan with that id and is refused once
//! the live state moved since it was printed. A refusal stores nothing.

mod common;

use common::cluster::{cli, cli_ok, releases, wait_settled};
use common::up::BerthUp;
use common::{assert_exit, stderr, stdout, write_file};

/// `staging` deploys freely; `production` needs approval; `careful` allows a 50 % drop.
const STACK: &str = r#"stack: gated
environments:
  staging:
    regions: [local]
  production:
    regions: [local]
    approval: true
  careful:
    regions: [local]
    max_capacity_drop: 50%
services:
  web:
    process: { command: [berth, whoami] }
    ports: { http: 0 }
    replicas: 2
    env: { VERSION: "1" }
    resources: { cpu: 10m, memory: 16Mi }
    health: { http: /healthz, port: http, interval: 100ms, timeout: 1s, healthy: 1, unhealthy: 3 }
    stop_grace: 2s
"#;

/// The `plan id: …` line of a printed plan.
#[track_caller]
fn plan_id(plan: &str) -> String {
    plan.lines()
        .find_map(|l| l.strip_prefix("plan id: "))
        .unwrap_or_else(|| panic!("no `plan id:` line in the plan:\n{plan}"))
        .trim()
        .to_string()
}

/// The release numbers retained for `env`, oldest first.
fn numbers(up: &BerthUp, env: &str) -> Vec<u64> {
    let mut n: Vec<u64> = releases(up, "gated", env)
        .iter()
        .filter_map(|r| r["number"].as_u64())
        .collect();
    n.sort_unstable();
    n
}

#[test]
fn approval_true_and_an_unconfirmed_capacity_drop_exit_3_and_store_nothing() {
    let up = BerthUp::start();
    let file = write_file(up.dir(), "gated.yaml", STACK);

    // `approval: true`: plain, confirmed and forced deploys all wait for one approver other
    // than their author (exit 3, the plan id printed; see tests/approvals.rs for the rest).
    let plan = cli_ok(&up, &["plan", "-f", &file, "--env", "production"]);
    assert!(plan.contains("plan id: "), "plan still works:\n{plan}");
    let id = plan_id(&plan);
    for extra in [&[][..], &["--confirm", "gated"], &["--force"]] {
        let mut args = vec!["deploy", "-f", &file, "--env", "production"];
        args.extend_from_slice(extra);
        let out = cli(&up, &args);
        assert_exit(&out, 3);
        let why = stderr(&out);
        assert!(
            why.contains(&format!(
                "plan {id} is pending approval (0/1), requested by admin"
            )) && why.contains(&format!("berth approve gated --env production --plan {id}")),
            "berth {args:?}: {why}"
        );
    }
    assert!(
        numbers(&up, "production").is_empty(),
        "a refused deploy stored a release"
    );

    // The same file deploys to an environment without approval.
    cli_ok(&up, &["deploy", "-f", &file, "--env", "staging", "--wait"]);
    assert_eq!(numbers(&up, "staging"), vec![1]);

    // `max_capacity_drop: 50%`: from 4 healthy instances to 1 loses 75 %, which needs the
    // stack's name typed back; a wrong name (or the wrong case) is no confirmation.
    cli_ok(
        &up,
        &[
            "deploy",
            "-f",
            &file,
            "--env",
            "careful",
            "--set",
            "web.replicas=4",
            "--wait",
        ],
    );
    let drop = [
        "deploy",
        "-f",
        &file,
        "--env",
        "careful",
        "--set",
        "web.replicas=1",
    ];
    for confirm in [None, Some("web"), Some("GATED")] {
        let mut args = drop.to_vec();
        if let Some(c) = confirm {
            args.extend_from_slice(&["--confirm", c]);
        }
        let out = cli(&up, &args);
        assert_exit(&out, 3);
        let why = stderr(&out);
        assert!(
            why.contains("max_capacity_drop of 50%") && why.contains("--confirm gated"),
            "berth {args:?}: {why}"
        );
    }
    assert_eq!(
        numbers(&up, "careful"),
        vec![1],
        "a refusal stored a release"
    );
    let mut confirmed = drop.to_vec();
    confirmed.extend_from_slice(&["--confirm", "gated", "--wait"]);
    cli_ok(&up, &confirmed);
    assert_eq!(numbers(&up, "careful"), vec![1, 2]);
}

#[test]
fn deploy_plan_id_applies_exactly_that_plan_and_is_refused_once_the_live_state_moved() {
    let up = BerthUp::start();
    let file = write_file(up.dir(), "gated.yaml", STACK);
    cli_ok(&up, &["deploy", "-f", &file, "--env", "staging", "--wait"]);
    wait_settled(&up, "gated", "web", 2, Some(1));

    // Two plans printed against release 1.
    let v2 = [
        "-f",
        &file,
        "--env",
        "staging",
        "--set",
        "web.env.VERSION=2",
    ];
    let v3 = [
        "-f",
        &file,
        "--env",
        "staging",
        "--set",
        "web.env.VERSION=3",
    ];
    let plan_v2 = cli_ok(&up, &[&["plan"][..], &v2].concat());
    let plan_v3 = cli_ok(&up, &[&["plan"][..], &v3].concat());
    let (id2, id3) = (plan_id(&plan_v2), plan_id(&plan_v3));
    assert_ne!(id2, id3, "different changes, different ids");

    // The id names the content: another change under plan v2's id is refused.
    let out = cli(&up, &[&["deploy"][..], &v3, &["--plan", &id2]].concat());
    assert_ne!(out.status.code(), Some(0), "{}", stdout(&out));
    let why = stderr(&out);
    assert!(
        why.contains(&format!("the live state moved since plan {id2}"))
            && why.contains(&format!("the plan is now {id3}"))
            && why.contains("run `berth plan` again"),
        "{why}"
    );
    assert_eq!(
        numbers(&up, "staging"),
        vec![1],
        "a refusal stored a release"
    );

    // Its own change under its id applies, as release 2 carrying that id.
    let applied = cli_ok(
        &up,
        &[&["deploy"][..], &v2, &["--plan", &id2, "--wait"]].concat(),
    );
    assert!(
        applied.contains("release 2 of gated in staging created"),
        "{applied}"
    );
    let history = cli_ok(
        &up,
        &["history", "gated", "--env", "staging", "--output", "json"],
    );
    let history: serde_json::Value = serde_json::from_str(&history).expect("history JSON");
    let release2 = history
        .as_array()
        .and_then(|a| a.iter().find(|r| r["number"] == 2))
        .unwrap_or_else(|| panic!("no release 2 in {history}"));
    assert_eq!(release2["plan_id"], id2.as_str(), "{release2}");
    wait_settled(&up, "gated", "web", 2, Some(2));

    // Plan v3 was printed against release 1; release 2 is live now, so it is refused although
    // its file and flags are the very ones it was printed for.
    let out = cli(&up, &[&["deploy"][..], &v3, &["--plan", &id3]].concat());
    assert_ne!(out.status.code(), Some(0), "{}", stdout(&out));
    let why = stderr(&out);
    assert!(
        why.contains(&format!("the live state moved since plan {id3}")),
        "{why}"
    );
    assert_eq!(
        numbers(&up, "staging"),
        vec![1, 2],
        "a refusal stored a release"
    );
    // Planned again, it applies.
    let id3_now = plan_id(&cli_ok(&up, &[&["plan"][..], &v3].concat()));
    assert_ne!(id3_now, id3);
    cli_ok(&up, &[&["deploy"][..], &v3, &["--plan", &id3_now]].concat());
    assert_eq!(numbers(&up, "staging"), vec![1, 2, 3]);
}
