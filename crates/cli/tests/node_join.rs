//! Joining and leaving a cluster through the real binary (issue 10, item 1): `berth agent`
//! takes the join token from a file or `BERTH_JOIN_TOKEN` (exactly one way), the join token
//! cannot take over a registered node, and `berth node rm` removes a node whose instances then
//! move to the others.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::cluster::{api_get, cli, cli_ok, nodes_ready};
use common::process::{kill_recorded, Proc};
use common::up::BerthUp;
use common::{assert_exit, command, stderr, stdout, write_file};
use serde_json::Value;

const STACK: &str = r#"stack: moving
environments:
  local:
    regions: [local]
services:
  web:
    process:
      command: [berth, whoami]
    ports: { http: 0 }
    replicas: 4
    resources: { cpu: 10m, memory: 16Mi }
    health: { http: /healthz, port: http, interval: 200ms, timeout: 1s, healthy: 1, unhealthy: 3 }
    route: { host: 127.0.0.1, path: /, port: http }
    placement: { spread: [zone] }
    stop_grace: 5s
"#;

/// A copy of up's join token in `dir/name` with `mode`.
fn join_token_file(up: &BerthUp, dir: &Path, name: &str, mode: u32) -> PathBuf {
    let path = dir.join(name);
    std::fs::copy(up.data_dir().join("join.token"), &path).expect("copy join.token");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod");
    path
}

/// `berth agent --server … --name NAME --labels zone=ZONE --data-dir …` plus `extra`, without a
/// join token in the environment unless the test puts one there.
fn agent_command(up: &BerthUp, name: &str, zone: &str, extra: &[&str]) -> std::process::Command {
    let dir = agent_dir(up, name);
    let labels = format!("zone={zone}");
    let mut cmd = command([
        "agent",
        "--server",
        &up.api_url(),
        "--name",
        name,
        "--labels",
        &labels,
        "--data-dir",
        dir.to_str().expect("utf-8 path"),
    ]);
    cmd.args(extra).env_remove("BERTH_JOIN_TOKEN");
    cmd
}

fn agent_dir(up: &BerthUp, name: &str) -> PathBuf {
    up.data_dir().join(format!("node-{name}"))
}

/// The state `berth nodes` shows for `name`, if it is listed.
fn node_state(up: &BerthUp, name: &str) -> Option<String> {
    api_get(up, "/v1/nodes")?
        .as_array()?
        .iter()
        .find(|n| n["name"] == name)
        .map(|n| n["state"].as_str().unwrap_or_default().to_string())
}

/// Instances of `moving/web` the server wants running, and how many of them are healthy, per node.
fn per_node(up: &BerthUp) -> Vec<(String, bool)> {
    let Some(status) = api_get(up, "/v1/status?stack=moving") else {
        return vec![];
    };
    let mut out = vec![];
    for svc in status["stacks"][0]["services"]
        .as_array()
        .into_iter()
        .flatten()
    {
        for i in svc["instances"].as_array().into_iter().flatten() {
            if i["desired"] == "run" {
                out.push((
                    i["node"].as_str().unwrap_or_default().to_string(),
                    i["state"] == "healthy",
                ));
            }
        }
    }
    out
}

/// SIGKILL of an agent and of every workload it recorded: the whole node is gone.
fn kill_node(up: &BerthUp, name: &str, proc: &Proc) {
    proc.kill9();
    let instances = agent_dir(up, name).join("instances");
    for entry in std::fs::read_dir(instances).into_iter().flatten().flatten() {
        let Ok(bytes) = std::fs::read(entry.path().join("instance.json")) else {
            continue;
        };
        let Ok(record) = serde_json::from_slice::<Value>(&bytes) else {
            continue;
        };
        if let Some(pid) = record["pid"].as_i64() {
            kill_recorded(pid as i32, record["start_time"].as_u64());
        }
    }
}

#[test]
fn the_join_token_comes_from_a_file_or_the_environment_and_cannot_take_a_node_over() {
    let up = BerthUp::start_with(&["--name", "n1", "--labels", "zone=a"]);
    let tmp = common::temp_dir();
    let private = join_token_file(&up, tmp.path(), "join.private", 0o600);
    let n2 = Proc::spawn(
        agent_command(
            &up,
            "n2",
            "b",
            &["--join-token-file", private.to_str().unwrap()],
        ),
        "n2",
        up.dir(),
    );
    let token = std::fs::read_to_string(up.data_dir().join("join.token")).unwrap();
    // A dotted name, as EC2 host names are, authenticates like any other (item 7).
    let mut with_env = agent_command(&up, "n3.example.com", "c", &[]);
    with_env.env("BERTH_JOIN_TOKEN", token.trim());
    let n3 = Proc::spawn(with_env, "n3", up.dir());
    up.wait_until(
        Duration::from_secs(20),
        "n1, n2 and n3.example.com ready",
        || nodes_ready(&up) == 3,
    );
    for p in [&n2, &n3] {
        assert!(
            !p.stderr_text().contains("warning"),
            "a private file or the environment gets no warning:\n{}",
            p.stderr_text()
        );
    }

    // A file others can read works, with a warning.
    let open = join_token_file(&up, tmp.path(), "join.open", 0o644);
    let n4 = Proc::spawn(
        agent_command(
            &up,
            "n4",
            "d",
            &["--join-token-file", open.to_str().unwrap()],
        ),
        "n4",
        up.dir(),
    );
    n4.wait_until(Duration::from_secs(20), "the mode warning", || {
        n4.stderr_text().contains("can be read by other users")
    });
    assert!(
        n4.stderr_text().contains("chmod 600"),
        "{}",
        n4.stderr_text()
    );

    // Exactly one way: two, or none, is an error before anything starts.
    let mut both = agent_command(
        &up,
        "n5",
        "e",
        &[
            "--join-token-file",
            private.to_str().unwrap(),
            "--join-token",
            token.trim(),
        ],
    );
    both.env("BERTH_JOIN_TOKEN", token.trim());
    let out = common::run_command(both, Duration::from_secs(20));
    assert_exit(&out, 1);
    assert!(stderr(&out).contains("exactly one way"), "{}", stderr(&out));
    let out = common::run_command(agent_command(&up, "n5", "e", &[]), Duration::from_secs(20));
    assert_exit(&out, 1);
    assert!(
        stderr(&out).contains("--join-token-file") && stderr(&out).contains("BERTH_JOIN_TOKEN"),
        "{}",
        stderr(&out)
    );

    // A name that is not a DNS name is refused before anything starts.
    let out = common::run_command(
        agent_command(
            &up,
            "web_1",
            "e",
            &["--join-token-file", private.to_str().unwrap()],
        ),
        Duration::from_secs(20),
    );
    assert_exit(&out, 1);
    assert!(stderr(&out).contains("not a node name"), "{}", stderr(&out));

    // A second agent claiming n2 with the join token (a fresh data dir, no node token) is
    // refused and says why; the real n2 stays ready.
    let mut thief = command([
        "agent",
        "--server",
        &up.api_url(),
        "--name",
        "n2",
        "--join-token-file",
        private.to_str().unwrap(),
        "--data-dir",
        tmp.path().join("thief").to_str().unwrap(),
        "--address",
        "127.0.0.66",
    ]);
    thief.env_remove("BERTH_JOIN_TOKEN");
    let thief = Proc::spawn(thief, "thief", up.dir());
    thief.wait_until(Duration::from_secs(20), "the thief to be refused", || {
        thief.stderr_text().contains("already registered")
    });
    assert_eq!(node_state(&up, "n2").as_deref(), Some("ready"));
    drop(thief);
    drop((n2, n3, n4));
}

#[test]
fn berth_node_rm_removes_a_down_node_and_its_instances_move() {
    let up = BerthUp::start_with(&["--name", "n1", "--labels", "zone=a"]);
    let tmp = common::temp_dir();
    let private = join_token_file(&up, tmp.path(), "join.private", 0o600);
    let args = ["--join-token-file", private.to_str().unwrap()];
    let n2 = Proc::spawn(agent_command(&up, "n2", "b", &args), "n2", up.dir());
    up.wait_until(Duration::from_secs(20), "n1 and n2 ready", || {
        nodes_ready(&up) == 2
    });
    let file = write_file(tmp.path(), "moving.yaml", STACK);
    cli_ok(&up, &["deploy", "-f", &file, "--env", "local", "--wait"]);
    up.wait_until(
        Duration::from_secs(30),
        "2 healthy instances on each node",
        || {
            let p = per_node(&up);
            p.iter().filter(|(n, h)| n == "n2" && *h).count() == 2
                && p.iter().filter(|(n, h)| n == "n1" && *h).count() == 2
        },
    );

    // A node that is up is refused, saying what to do.
    let out = cli(&up, &["node", "rm", "n2"]);
    assert_exit(&out, 1);
    assert!(stderr(&out).contains("--force"), "{}", stderr(&out));
    assert_eq!(node_state(&up, "n2").as_deref(), Some("ready"));

    // The node is lost; removed, its instances move to n1.
    kill_node(&up, "n2", &n2);
    up.wait_until(Duration::from_secs(20), "n2 down", || {
        node_state(&up, "n2").as_deref() == Some("down")
    });
    let out = cli_ok(&up, &["node", "rm", "n2"]);
    assert!(out.contains("node n2 removed"), "{out}");
    assert!(
        !stdout(&up.cli(["nodes"])).contains("n2"),
        "n2 still listed"
    );
    assert_eq!(node_state(&up, "n2"), None);
    up.wait_until(Duration::from_secs(30), "4 healthy instances on n1", || {
        let p = per_node(&up);
        p.len() == 4 && p.iter().all(|(n, h)| n == "n1" && *h)
    });
    let out = cli(&up, &["node", "rm", "n2"]);
    assert_exit(&out, 1);
    assert!(
        stderr(&out).contains("no node named n2"),
        "{}",
        stderr(&out)
    );

    // The same machine joins again: its old token is refused, the free name takes the join token.
    let again = Proc::spawn(agent_command(&up, "n2", "b", &args), "n2-again", up.dir());
    up.wait_until(Duration::from_secs(20), "n2 ready again", || {
        node_state(&up, "n2").as_deref() == Some("ready")
    });
    drop(again);
}
