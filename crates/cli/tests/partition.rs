//! A network partition (issue 6): agents in containers on a Docker network, one cut off with
//! `docker network disconnect`, then healed.
//!
//! What DESIGN promises ("static stability"): if the control plane is unreachable, agents keep
//! their instances running; nothing is stopped for lack of news. And the README's "Several
//! machines": a node that misses heartbeats for 3 s is down, its instances are replaced elsewhere
//! and stopped when it returns — so no duplicate survives the healing.
//!
//! ## Topology
//! - The image is the binary under test (`common::containers::berth_image`, built once per
//!   binary content by `scripts/build-berth-image`).
//! - A user-defined bridge network `berth-test-<pid>-<n>`; on it the server container
//!   (`berth server --api 0.0.0.0:7070 --data-dir /data`, published on a loopback port Docker
//!   picks, so the test's CLI and API calls stay on 127.0.0.1) and two agent containers
//!   `a1` (zone=a) and `a2` (zone=b), each `--server http://SERVER_CONTAINER:7070
//!   --address ITS_CONTAINER_NAME --router 0.0.0.0:8080 --data-dir /data`. The agents find the
//!   server by name through Docker's DNS; their own name is their `--address` because a
//!   reconnected container may get another IP. The tokens are read with `docker cp` (the image
//!   holds nothing but berth and its libraries: no `cat`, no shell).
//!
//! ## What is observed, and how
//! - **Workloads** are `berth whoami` processes, which listen on `127.0.0.1:$PORT` inside their
//!   agent's container; a fixed `--listen 0.0.0.0:P` would need a fixed port, and a fixed port
//!   allows one replica per node. So traffic is not sent to them across containers; what the
//!   test checks is the processes themselves: `docker top` (host pid, start time, command line)
//!   on each agent container. The same pid *and* start time means the very same process.
//! - **What the server wants and sees** through `GET /v1/status?stack=part` and `GET /v1/nodes`
//!   with the admin token, on the published port.
//!
//! ## Scenario
//! 1. 4 replicas spread over zones: 2 on a1, 2 on a2, all healthy.
//! 2. `docker network disconnect NET a2`. For at least 6 s (twice the node TTL), polled, a2's two
//!    workloads are the same processes at every poll (never stopped, never restarted), and
//!    within the deadline the server marks a2 down and runs 4 healthy replicas on a1 (a1's
//!    first two untouched).
//! 3. `docker network connect NET a2`. a2 becomes ready again; then, polled, a2's old workloads
//!    are stopped, exactly 4 instances are wanted, all healthy, and exactly 4 `whoami`
//!    processes exist across both agents — held over 2 s of controller passes.
//!
//! Skipped with a banner when `docker info` fails, unless `BERTH_REQUIRE_DOCKER=1`.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::Duration;

use common::containers::{self, berth_image, engine_or_skip, processes, Process, Sandbox};
use common::{assert_exit, command, http, run_command, write_file};
use serde_json::Value;

const STACK: &str = r#"stack: part
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
    placement: { spread: [zone] }
    stop_grace: 2s
"#;

/// How long a2's workloads are watched while it is cut off: longer than the server's 3 s TTL,
/// so the server has declared a2 down and replaced its instances meanwhile.
const PARTITION_AT_LEAST: Duration = Duration::from_secs(6);

/// The server and two agents in containers, and what the test needs to talk to them.
/// Field order matters for Drop: nothing here outlives the sandbox that removes the containers.
struct Cluster {
    sandbox: Sandbox,
    net: String,
    /// Agent containers by node name.
    agents: BTreeMap<String, String>,
    /// The server's API as published on loopback.
    api: SocketAddr,
    admin: String,
    /// Holds the stack file.
    dir: tempfile::TempDir,
}

impl Cluster {
    fn start() -> Cluster {
        let image = berth_image();
        let sandbox = Sandbox::new();
        let net = sandbox.network();
        let server = sandbox.run(
            "server",
            &net,
            &["-p", "127.0.0.1::7070"],
            &image,
            // Plain HTTP on purpose (this test is about partitions, and reads the API raw).
            &[
                "server",
                "--api",
                "0.0.0.0:7070",
                "--api-tls",
                "off",
                "--insecure-http",
                "--data-dir",
                "/data",
            ],
        );
        let api = containers::published(&server, 7070);
        let mut tokens = None;
        let up = common::poll_until(Duration::from_secs(30), || {
            if !http::is_ok(api, "/v1/health") {
                return false;
            }
            let join = containers::read_file(&server, "/data/join.token");
            let admin = containers::read_file(&server, "/data/admin.token");
            if let (Some(j), Some(a)) = (join, admin) {
                tokens = Some((j.trim().to_string(), a.trim().to_string()));
            }
            tokens.is_some()
        });
        let Some((join, admin)) = tokens.filter(|_| up) else {
            panic!(
                "the server container did not answer on {api} with its tokens written within 30 s\n{}",
                sandbox.logs_tail()
            );
        };
        let mut agents = BTreeMap::new();
        for (node, zone) in [("a1", "a"), ("a2", "b")] {
            let name = format!("{}-{node}", sandbox.prefix());
            let labels = format!("zone={zone}");
            let server_url = format!("http://{server}:7070");
            let container = sandbox.run(
                node,
                &net,
                &[],
                &image,
                &[
                    "agent",
                    "--server",
                    &server_url,
                    "--join-token",
                    &join,
                    "--name",
                    node,
                    "--labels",
                    &labels,
                    "--address",
                    &name,
                    "--router",
                    "0.0.0.0:8080",
                    "--data-dir",
                    "/data",
                ],
            );
            assert_eq!(container, name);
            agents.insert(node.to_string(), container);
        }
        let cluster = Cluster {
            sandbox,
            net,
            agents,
            api,
            admin,
            dir: common::temp_dir(),
        };
        cluster.wait_until(Duration::from_secs(30), "a1 and a2 ready", || {
            let n = cluster.nodes();
            n.get("a1").map(String::as_str) == Some("ready")
                && n.get("a2").map(String::as_str) == Some("ready")
        });
        cluster
    }

    fn agent(&self, node: &str) -> &str {
        &self.agents[node]
    }

    /// `berth ARGS… --server API --token ADMIN`; asserts exit 0 and returns stdout.
    #[track_caller]
    fn cli_ok(&self, args: &[&str]) -> String {
        let url = format!("http://{}", self.api);
        let mut all: Vec<&str> = args.to_vec();
        all.extend_from_slice(&["--server", &url, "--token", &self.admin]);
        let out = run_command(command(&all), common::RUN_TIMEOUT);
        assert_exit(&out, 0);
        common::stdout(&out)
    }

    /// `GET path` with the admin token: the JSON body if it answered 200.
    fn api_get(&self, path: &str) -> Option<Value> {
        let r = http::get_auth(self.api, path, &self.admin).ok()?;
        (r.status == 200).then(|| r.json())
    }

    /// Node name → state (`ready`, `down`, …); empty if the API did not answer.
    fn nodes(&self) -> BTreeMap<String, String> {
        self.api_get("/v1/nodes")
            .and_then(|v| v.as_array().cloned())
            .unwrap_or_default()
            .iter()
            .map(|n| {
                (
                    n["name"].as_str().unwrap_or_default().to_string(),
                    n["state"].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect()
    }

    /// Every instance of `part/web` the server lists; empty if the API did not answer.
    fn instances(&self) -> Vec<Value> {
        let Some(status) = self.api_get("/v1/status?stack=part") else {
            return Vec::new();
        };
        status["stacks"][0]["services"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|s| s["name"] == "web")
            .flat_map(|s| s["instances"].as_array().cloned().unwrap_or_default())
            .collect()
    }

    /// The `berth whoami` processes running in a node's container; `None` if `docker top`
    /// could not say.
    fn workloads(&self, node: &str) -> Option<BTreeSet<Process>> {
        processes(self.agent(node)).map(|list| {
            list.into_iter()
                .filter(|p| p.args.split_whitespace().nth(1) == Some("whoami"))
                .collect()
        })
    }

    /// What the test sees, for failure messages: nodes, instances, and processes per agent.
    fn snapshot(&self) -> String {
        let instances: Vec<String> = self
            .instances()
            .iter()
            .map(|i| {
                format!(
                    "  {} node={} state={} desired={}",
                    i["id"].as_str().unwrap_or_default(),
                    i["node"].as_str().unwrap_or_default(),
                    i["state"].as_str().unwrap_or_default(),
                    i["desired"].as_str().unwrap_or_default()
                )
            })
            .collect();
        let procs: Vec<String> = self
            .agents
            .keys()
            .map(|n| format!("  {n}: {:?}", self.workloads(n)))
            .collect();
        format!(
            "nodes: {:?}\ninstances:\n{}\nwhoami processes:\n{}",
            self.nodes(),
            instances.join("\n"),
            procs.join("\n")
        )
    }

    /// Polls `condition` until `timeout`; panics with a [`Cluster::snapshot`] (and, from the
    /// sandbox's drop, every container's log tail) if it never holds.
    #[track_caller]
    fn wait_until(&self, timeout: Duration, what: &str, condition: impl FnMut() -> bool) {
        if !common::poll_until(timeout, condition) {
            panic!(
                "timed out after {timeout:?} waiting for {what}\n{}",
                self.snapshot()
            );
        }
    }
}

/// Instances the server wants running and sees healthy, per node.
fn healthy_running(instances: &[Value]) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for i in instances {
        if i["desired"] == "run" && i["state"] == "healthy" {
            *out.entry(i["node"].as_str().unwrap_or_default().to_string())
                .or_default() += 1;
        }
    }
    out
}

/// Instances the server wants running (whatever their state).
fn wanted(instances: &[Value]) -> usize {
    instances.iter().filter(|i| i["desired"] == "run").count()
}

#[test]
fn a_partitioned_agent_keeps_its_workloads_and_no_duplicate_survives_healing() {
    if !engine_or_skip("a_partitioned_agent_keeps_its_workloads_and_no_duplicate_survives_healing")
    {
        return;
    }
    let c = Cluster::start();
    let file = write_file(c.dir.path(), "part.yaml", STACK);
    c.cli_ok(&["deploy", "-f", &file, "--env", "local", "--wait"]);
    c.wait_until(Duration::from_secs(30), "2 healthy on a1, 2 on a2", || {
        let instances = c.instances();
        let h = healthy_running(&instances);
        h.get("a1") == Some(&2) && h.get("a2") == Some(&2) && wanted(&instances) == 4
    });
    let mut before = BTreeMap::new();
    c.wait_until(
        Duration::from_secs(10),
        "2 whoami processes in each agent container",
        || {
            for node in ["a1", "a2"] {
                match c.workloads(node) {
                    Some(w) if w.len() == 2 => {
                        before.insert(node, w);
                    }
                    _ => return false,
                }
            }
            true
        },
    );
    let a2_before = before["a2"].clone();
    let a1_before = before["a1"].clone();

    // --- Partition: a2 loses the network that reaches the server. ---
    c.sandbox.disconnect(&c.net, c.agent("a2"));
    let cut = common::clock::now();
    let mut down_at = None;
    let mut replaced_at = None;
    let mut polls = 0;
    let done = common::poll_until(Duration::from_secs(30), || {
        polls += 1;
        let now = c.workloads("a2");
        assert_eq!(
            now.as_ref(),
            Some(&a2_before),
            "{:.2} s into the partition, a2's workloads are not the same processes: static \
             stability broken (before: {a2_before:?})\n{}",
            cut.elapsed().as_secs_f64(),
            c.snapshot()
        );
        if down_at.is_none() && c.nodes().get("a2").map(String::as_str) == Some("down") {
            down_at = Some(cut.elapsed());
        }
        let instances = c.instances();
        let h = healthy_running(&instances);
        if replaced_at.is_none() && h.get("a1") == Some(&4) && wanted(&instances) == 4 {
            replaced_at = Some(cut.elapsed());
        }
        cut.elapsed() >= PARTITION_AT_LEAST && down_at.is_some() && replaced_at.is_some()
    });
    if !done {
        panic!(
            "within 30 s of the partition: a2 down at {down_at:?}, 4 healthy on a1 at \
             {replaced_at:?}\n{}",
            c.snapshot()
        );
    }
    let partitioned_for = cut.elapsed();
    eprintln!(
        "partition: a2 down after {:.2} s, 4 healthy on a1 after {:.2} s; a2's 2 workloads \
         unchanged over {polls} polls in {:.2} s",
        down_at.unwrap_or_default().as_secs_f64(),
        replaced_at.unwrap_or_default().as_secs_f64(),
        partitioned_for.as_secs_f64()
    );
    let a1_during = c.workloads("a1").unwrap_or_default();
    assert!(
        a1_during.is_superset(&a1_before) && a1_during.len() == 4,
        "a1 should run its first 2 workloads untouched plus 2 replacements: before \
         {a1_before:?}, now {a1_during:?}"
    );

    // --- Heal: a2 reaches the server again. ---
    c.sandbox.connect(&c.net, c.agent("a2"));
    let healed = common::clock::now();
    c.wait_until(
        Duration::from_secs(30),
        "a2 ready again after healing",
        || c.nodes().get("a2").map(String::as_str) == Some("ready"),
    );
    let ready_after = healed.elapsed();
    let mut last = (BTreeSet::new(), 0);
    c.wait_until(
        Duration::from_secs(30),
        "a2's old workloads stopped, 4 wanted and healthy, 4 whoami processes in all",
        || {
            let (Some(w1), Some(w2)) = (c.workloads("a1"), c.workloads("a2")) else {
                return false;
            };
            let instances = c.instances();
            let healthy: usize = healthy_running(&instances).values().sum();
            last = (w2.clone(), w1.len() + w2.len());
            w2.is_disjoint(&a2_before)
                && w1.len() + w2.len() == 4
                && wanted(&instances) == 4
                && healthy == 4
        },
    );
    eprintln!(
        "heal: a2 ready after {:.2} s, no duplicate after {:.2} s (a2 runs {:?}, {} whoami in all)",
        ready_after.as_secs_f64(),
        healed.elapsed().as_secs_f64(),
        last.0,
        last.1
    );

    // Several controller passes (every 100 ms) and heartbeats: it stays at exactly 4.
    let until = common::clock::now() + Duration::from_secs(2);
    while common::clock::now() < until {
        let instances = c.instances();
        let healthy: usize = healthy_running(&instances).values().sum();
        let w1 = c.workloads("a1").unwrap_or_default();
        let w2 = c.workloads("a2").unwrap_or_default();
        assert!(
            wanted(&instances) == 4 && healthy == 4 && w1.len() + w2.len() == 4,
            "after healing, not exactly 4 wanted, healthy and running\n{}",
            c.snapshot()
        );
        assert!(
            w2.is_disjoint(&a2_before),
            "a2's old workloads are back: {w2:?}"
        );
        std::thread::sleep(common::POLL);
    }
}
