//! Approvals end to end on `berth up` (issue 13, point 2), through the real binary and real
//! users made with `berth user add`: in an `approval: 2` environment a deploy is pending (exit
//! 3, its plan id printed, nothing stored, an event announcing it); its author cannot approve
//! it; two distinct approvers run it exactly as the author's deploy (who = the author,
//! `approved_by` on the release); a plan whose live state moved is void; a rollback to a
//! release that went live needs no approval; a rejected plan cannot be approved; and a plan
//! past its `approval_timeout` is refused.

mod common;

use std::process::Output;
use std::time::Duration;

use common::cluster::{cli, cli_ok, events, releases, wait_settled};
use common::up::BerthUp;
use common::{
    assert_exit, command, run_command, stderr, stdout, wait_until, write_file, RUN_TIMEOUT,
};
use serde_json::Value;

/// `prod` needs two approvers; `quick` one, within two seconds.
const STACK: &str = r#"stack: shop
environments:
  prod:
    regions: [local]
    approval: 2
  quick:
    regions: [local]
    approval: true
    approval_timeout: 2s
services:
  web:
    process: { command: [sleep, "1000"] }
    replicas: 1
    env: { VERSION: "1" }
    stop_grace: 1s
"#;

/// `berth ARGS…` against `up` with `token` instead of the admin token.
fn as_token(up: &BerthUp, token: &str, args: &[&str]) -> Output {
    let mut cmd = command(args);
    cmd.env("BERTH_SERVER", up.api_url())
        .env("BERTH_TOKEN", token);
    run_command(cmd, RUN_TIMEOUT)
}

/// A new user's token.
fn user(up: &BerthUp, name: &str, role: &str) -> String {
    let out = cli(up, &["user", "add", name, "--role", role]);
    assert_exit(&out, 0);
    stdout(&out).trim().to_string()
}

/// The `plan id: …` line of `berth plan` for `env` with `sets`.
fn plan_id(up: &BerthUp, file: &str, env: &str, sets: &[&str]) -> String {
    let mut args = vec!["plan", "-f", file, "--env", env];
    for s in sets {
        args.extend_from_slice(&["--set", s]);
    }
    let plan = cli_ok(up, &args);
    plan.lines()
        .find_map(|l| l.strip_prefix("plan id: "))
        .unwrap_or_else(|| panic!("no `plan id:` line in the plan:\n{plan}"))
        .trim()
        .to_string()
}

/// The pending plans as `berth approvals --output json` lists them.
fn pending(up: &BerthUp, extra: &[&str]) -> Vec<Value> {
    let mut args = vec!["approvals", "--output", "json"];
    args.extend_from_slice(extra);
    serde_json::from_str::<Value>(&cli_ok(up, &args))
        .expect("approvals JSON")
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// A deploy by `token` in `env` that must be pending: exit 3, naming its plan id.
fn deploy_pending(up: &BerthUp, token: &str, file: &str, env: &str, sets: &[&str]) -> String {
    let id = plan_id(up, file, env, sets);
    let mut args = vec!["deploy", "-f", file, "--env", env];
    for s in sets {
        args.extend_from_slice(&["--set", s]);
    }
    let out = as_token(up, token, &args);
    assert_exit(&out, 3);
    let why = stderr(&out);
    assert!(
        why.contains(&format!("plan {id} is pending approval"))
            && why.contains(&format!("berth approve shop --env {env} --plan {id}")),
        "{why}"
    );
    id
}

#[test]
fn two_approvers_other_than_the_author_run_the_plan_and_a_moved_one_is_void() {
    let up = BerthUp::start();
    let file = write_file(up.dir(), "shop.yaml", STACK);
    let alice = user(&up, "alice", "deployer");
    let bob = user(&up, "bob", "approver");
    let carol = user(&up, "carol", "approver");

    // Pending: exit 3 with the plan id, nothing stored, listed, announced.
    let first = deploy_pending(&up, &alice, &file, "prod", &[]);
    assert!(
        releases(&up, "shop", "prod").is_empty(),
        "nothing is stored"
    );
    let list = pending(&up, &["--stack", "shop", "--env", "prod"]);
    assert_eq!(list.len(), 1, "{list:#?}");
    assert_eq!(list[0]["plan_id"], first.as_str());
    assert_eq!(list[0]["author"], "alice");
    assert_eq!(list[0]["needed"], 2);
    let table = cli_ok(&up, &["approvals"]);
    assert!(
        table.contains(&first) && table.contains("shop/prod") && table.contains("0/2"),
        "{table}"
    );
    let announced = format!("shop/prod plan {first} pending approval (0/2) by alice");
    assert!(
        events(&up, &[])
            .iter()
            .any(|e| e["subject"] == "approval" && e["summary"] == announced.as_str()),
        "no event `{announced}`"
    );

    // The author cannot approve; one approver is not enough; nor is the same one twice.
    let approve = |token: &str, id: &str| {
        as_token(
            &up,
            token,
            &["approve", "shop", "--env", "prod", "--plan", id],
        )
    };
    let out = approve(&alice, &first);
    assert!(
        stderr(&out).contains("missing capability approve"),
        "a deployer cannot approve at all: {}",
        stderr(&out)
    );
    // An admin who authored a plan is refused as its author.
    let author = deploy_pending(&up, &up.token(), &file, "prod", &["web.replicas=2"]);
    let out = cli(
        &up,
        &["approve", "shop", "--env", "prod", "--plan", &author],
    );
    assert_exit(&out, 3);
    assert!(
        stderr(&out).contains("the author of a plan cannot approve it"),
        "{}",
        stderr(&out)
    );
    let out = approve(&bob, &first);
    assert_exit(&out, 0);
    assert!(stdout(&out).contains("(1/2)"), "{}", stdout(&out));
    assert!(
        releases(&up, "shop", "prod").is_empty(),
        "one approval of two"
    );
    let out = approve(&bob, &first);
    assert_exit(&out, 3);
    assert!(
        stderr(&out).contains("already approved"),
        "{}",
        stderr(&out)
    );

    // The second distinct approver runs it as alice's deploy.
    let out = approve(&carol, &first);
    assert_exit(&out, 0);
    let history = releases(&up, "shop", "prod");
    assert_eq!(history.len(), 1, "{history:#?}");
    assert_eq!(history[0]["who"], "alice");
    assert_eq!(history[0]["plan_id"], first.as_str());
    assert_eq!(
        history[0]["approved_by"],
        serde_json::json!(["bob", "carol"])
    );
    wait_settled(&up, "shop", "web", 1, Some(1));
    assert!(
        pending(&up, &["--stack", "shop", "--env", "prod"])
            .iter()
            .all(|p| p["plan_id"] != first.as_str()),
        "a plan that ran is no longer pending"
    );

    // Two plans against release 1; the second runs, so the first is void.
    let v2 = deploy_pending(&up, &alice, &file, "prod", &["web.env.VERSION=2"]);
    let v3 = deploy_pending(&up, &alice, &file, "prod", &["web.env.VERSION=3"]);
    assert_exit(&approve(&bob, &v3), 0);
    assert_exit(&approve(&carol, &v3), 0);
    wait_settled(&up, "shop", "web", 1, Some(2));
    let out = approve(&bob, &v2);
    assert_exit(&out, 3);
    assert!(
        stderr(&out).contains(&format!("plan {v2} of shop in prod is void"))
            && stderr(&out).contains("nothing was changed"),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        releases(&up, "shop", "prod").len(),
        2,
        "a void plan stores nothing"
    );

    // Back to release 1, which was approved and went live: no new approval.
    let out = as_token(&up, &alice, &["rollback", "shop", "--env", "prod"]);
    assert_exit(&out, 0);
    let history = releases(&up, "shop", "prod");
    assert_eq!(history.len(), 3, "{history:#?}");
    assert_eq!(history[0]["rollback_of"], 1);
    assert_eq!(history[0]["who"], "alice");

    // A rejected plan cannot be approved, and is no longer listed.
    let v4 = deploy_pending(&up, &alice, &file, "prod", &["web.env.VERSION=4"]);
    let out = as_token(
        &up,
        &bob,
        &[
            "reject",
            "shop",
            "--env",
            "prod",
            "--plan",
            &v4,
            "--reason",
            "not on a Friday",
        ],
    );
    assert_exit(&out, 0);
    let out = approve(&carol, &v4);
    assert_exit(&out, 3);
    assert!(
        stderr(&out).contains("rejected by bob: not on a Friday"),
        "{}",
        stderr(&out)
    );
    assert!(
        pending(&up, &[])
            .iter()
            .all(|p| p["plan_id"] != v4.as_str()),
        "a rejected plan is not pending"
    );
    assert_eq!(releases(&up, "shop", "prod").len(), 3);

    // `berth stack rm` waits for approval too, authored by its caller (not `admin`).
    let out = as_token(
        &up,
        &alice,
        &["stack", "rm", "shop", "--env", "prod", "--confirm", "shop"],
    );
    assert_exit(&out, 3);
    assert!(
        stderr(&out).contains("is pending approval (0/2), requested by alice"),
        "{}",
        stderr(&out)
    );
    assert_eq!(releases(&up, "shop", "prod").len(), 3, "nothing is stored");

    // Approving and rejecting are audited with the plan id (the policy table's rows).
    let audit: Vec<Value> =
        serde_json::from_str::<Value>(&cli_ok(&up, &["audit", "--output", "json"]))
            .expect("audit JSON")
            .as_array()
            .cloned()
            .unwrap_or_default();
    let has = |user: &str, verb: &str, plan: &str, result: &str| {
        audit.iter().any(|e| {
            e["user"] == user
                && e["action"]
                    == format!("POST /v1/stacks/{{stack}}/{{env}}/approvals/{{plan}}/{verb}")
                        .as_str()
                && e["plan_id"] == plan
                && e["result"] == result
        })
    };
    assert!(has("carol", "approve", &first, "ok"), "{audit:#?}");
    assert!(has("admin", "approve", &author, "refused"), "{audit:#?}");
    assert!(has("bob", "reject", &v4, "ok"), "{audit:#?}");
}

#[test]
fn a_plan_past_its_approval_timeout_is_refused() {
    let up = BerthUp::start();
    let file = write_file(up.dir(), "shop.yaml", STACK);
    let alice = user(&up, "alice", "deployer");
    let bob = user(&up, "bob", "approver");
    let id = deploy_pending(&up, &alice, &file, "quick", &[]);
    assert_eq!(pending(&up, &["--env", "quick"]).len(), 1);
    wait_until(
        Duration::from_secs(30),
        "the pending plan to expire (approval_timeout: 2s)",
        || pending(&up, &["--env", "quick"]).is_empty(),
    );
    let out = as_token(
        &up,
        &bob,
        &["approve", "shop", "--env", "quick", "--plan", &id],
    );
    assert_exit(&out, 3);
    assert!(stderr(&out).contains("expired"), "{}", stderr(&out));
    assert!(
        releases(&up, "shop", "quick").is_empty(),
        "nothing is stored"
    );
}
