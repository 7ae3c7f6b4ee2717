//! Region waves and region-label placement (README, stack file reference and "Several
//! machines"): `regions: [eu, us]` rolls out eu first and starts us only once eu is healthy;
//! "a node without a `region` label takes any region; one with a label takes only its region's
//! wave"; `${region}` is substituted per wave (here in `env`, which `berth whoami` answers as
//! its `version`).
//!
//! Three nodes: `berth up` named eu1 (`region=eu`), an agent us1 (`region=us`) and an agent
//! any1 with no label.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use common::cluster::{
    answers, api_get, cli_ok, instances, service, stack, status, wait_distinct_instances,
};
use common::process::Proc;
use common::up::BerthUp;
use common::{command, write_file};
use serde_json::Value;

/// Two replicas per region; each instance needs 5 passing checks 100 ms apart to be healthy,
/// so a wave takes a measurable while.
const STACK: &str = r#"stack: world
environments:
  prod:
    regions: [eu, us]
services:
  web:
    process: { command: [berth, whoami] }
    ports: { http: 0 }
    replicas: 2
    env: { VERSION: "${region}", ROUND: "1" }
    resources: { cpu: 10m, memory: 16Mi }
    health: { http: /healthz, port: http, interval: 100ms, timeout: 1s, healthy: 5, unhealthy: 3 }
    route: { host: world.localhost, port: http }
    stop_grace: 1s
"#;

/// A `berth agent` named `name` with `labels`, its data inside up's data dir (so up's guard
/// also stops its workloads).
fn agent(up: &BerthUp, name: &str, labels: &str) -> Proc {
    let join = std::fs::read_to_string(up.data_dir().join("join.token")).expect("join.token");
    let dir = up.data_dir().join(format!("node-{name}"));
    let cmd = command([
        "agent",
        "--server",
        &up.api_url(),
        "--join-token",
        join.trim(),
        "--name",
        name,
        "--labels",
        labels,
        "--data-dir",
        dir.to_str().expect("UTF-8 path"),
    ]);
    Proc::spawn(cmd, name, up.dir())
}

/// Instance id → the region its spec was made for (its `VERSION`), from every agent's
/// `instance.json` under the data dir.
fn regions_of_instances(data_dir: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let nodes = std::fs::read_dir(data_dir).into_iter().flatten().flatten();
    for node in nodes {
        let list = std::fs::read_dir(node.path().join("instances"));
        for entry in list.into_iter().flatten().flatten() {
            let Ok(bytes) = std::fs::read(entry.path().join("instance.json")) else {
                continue;
            };
            let Ok(record) = serde_json::from_slice::<Value>(&bytes) else {
                continue;
            };
            if let (Some(id), Some(region)) = (
                record["spec"]["id"].as_str(),
                record["spec"]["spec"]["env"]["VERSION"].as_str(),
            ) {
                out.insert(id.to_string(), region.to_string());
            }
        }
    }
    out
}

/// The instances of world/web of `release` in a status document.
fn of_release(status: &Value, release: u64) -> Vec<Value> {
    service(status, "world", "web")
        .map(instances)
        .unwrap_or_default()
        .into_iter()
        .filter(|i| i["release"] == release)
        .cloned()
        .collect()
}

/// Waits until release `release` runs 4 healthy instances (2 per region), then checks the
/// waves: each us instance was created after every eu instance of the release was healthy.
/// Returns instance id → (region, node).
#[track_caller]
fn wait_waves(up: &BerthUp, release: u64) -> BTreeMap<String, (String, String)> {
    let mut last = None;
    up.wait_until(
        Duration::from_secs(60),
        &format!("release {release}: 4 healthy instances"),
        || {
            last = status(up);
            // `live` too: a deploy while the controller still writes the rollout's progress
            // can be refused as a concurrent deploy (deploy_races.rs, ignored as a bug).
            last.as_ref().is_some_and(|s| {
                let list = of_release(s, release);
                list.len() == 4
                    && list.iter().all(|i| i["state"] == "healthy")
                    && stack(s, "world").is_some_and(|st| st["rollout"] == "live")
            })
        },
    );
    let list = of_release(last.as_ref().expect("a status"), release);
    let regions = regions_of_instances(up.data_dir());
    let mut placed = BTreeMap::new();
    for i in &list {
        let id = i["id"].as_str().expect("an id").to_string();
        let region = regions
            .get(&id)
            .unwrap_or_else(|| panic!("no instance.json for {id}: {regions:?}"))
            .clone();
        let node = i["node"].as_str().expect("a node").to_string();
        placed.insert(id, (region, node));
    }
    let eu_healthy_at = list
        .iter()
        .filter(|i| placed[i["id"].as_str().unwrap_or_default()].0 == "eu")
        .map(|i| i["since_ms"].as_u64().expect("since_ms"))
        .max()
        .expect("eu instances");
    let eu_created_at = list
        .iter()
        .filter(|i| placed[i["id"].as_str().unwrap_or_default()].0 == "eu")
        .map(|i| i["created_ms"].as_u64().expect("created_ms"))
        .min()
        .expect("eu instances");
    // The check below means something only if a wave takes a while (5 checks 100 ms apart).
    assert!(
        eu_healthy_at >= eu_created_at + 400,
        "the eu wave was healthy {} ms after it was created",
        eu_healthy_at.saturating_sub(eu_created_at)
    );
    for i in &list {
        let id = i["id"].as_str().unwrap_or_default();
        if placed[id].0 == "us" {
            let created = i["created_ms"].as_u64().expect("created_ms");
            assert!(
                created >= eu_healthy_at,
                "release {release}: us instance {id} was created at {created}, before the eu wave was healthy at {eu_healthy_at}\n{list:#?}"
            );
        }
    }
    let per_region = |r: &str| placed.values().filter(|(region, _)| region == r).count();
    assert_eq!(
        (per_region("eu"), per_region("us")),
        (2, 2),
        "two per region: {placed:?}"
    );
    placed
}

#[test]
fn regions_roll_out_in_waves_and_labelled_nodes_take_only_their_region() {
    let up = BerthUp::start_with(&["--name", "eu1", "--labels", "region=eu"]);
    let _us = agent(&up, "us1", "region=us");
    let _any = agent(&up, "any1", "");
    up.wait_until(Duration::from_secs(30), "three ready nodes", || {
        api_get(&up, "/v1/nodes")
            .and_then(|n| n.as_array().cloned())
            .is_some_and(|n| n.len() == 3 && n.iter().all(|n| n["state"] == "ready"))
    });

    let file = write_file(up.dir(), "world.yaml", STACK);
    let plan = cli_ok(&up, &["plan", "-f", &file, "--env", "prod"]);
    assert!(plan.contains("eu") && plan.contains("us"), "{plan}");

    for (release, set) in [(1, None), (2, Some("web.env.ROUND=2"))] {
        let mut args = vec!["deploy", "-f", &file, "--env", "prod"];
        if let Some(set) = set {
            args.extend_from_slice(&["--set", set]);
        }
        cli_ok(&up, &args);
        let placed = wait_waves(&up, release);

        // A labelled node takes only its region's wave; the unlabelled one takes any.
        for (id, (region, node)) in &placed {
            match node.as_str() {
                "eu1" => assert_eq!(region, "eu", "{id} on eu1: {placed:?}"),
                "us1" => assert_eq!(region, "us", "{id} on us1: {placed:?}"),
                "any1" => {}
                other => panic!("{id} on an unknown node {other}"),
            }
        }
        let on_any: BTreeSet<&str> = placed
            .values()
            .filter(|(_, node)| node == "any1")
            .map(|(region, _)| region.as_str())
            .collect();
        assert!(
            !on_any.is_empty(),
            "replicas avoid sharing a node, so the unlabelled node takes some: {placed:?}"
        );

        // `${region}` reached each instance's environment: through the router, both regions
        // answer, each from its own instances.
        if release == 2 {
            up.wait_until(Duration::from_secs(30), "release 1 to be gone", || {
                status(&up).is_some_and(|s| {
                    service(&s, "world", "web").is_some_and(|v| instances(v).len() == 4)
                })
            });
            let served = wait_distinct_instances(&up, "world.localhost", 4);
            let ids: BTreeSet<String> = placed.keys().cloned().collect();
            assert_eq!(served, ids, "the router serves release 2's instances");
            for a in answers(&up, "world.localhost", 20) {
                let id = a["instance"].as_str().unwrap_or_default();
                assert_eq!(
                    a["version"].as_str(),
                    placed.get(id).map(|(region, _)| region.as_str()),
                    "an instance's ${{region}}: {a}"
                );
            }
        }
    }
}
