//! Issue 10, item 5: a stack with the largest allowed replica count does not wedge the
//! controller. Its instances are placed with one scheduler call per (rollout, region) and at
//! most `CREATE_BUDGET` per pass, so another stack deploys meanwhile and the server stops
//! promptly.

mod harness;

use std::collections::BTreeMap;
use std::time::Duration;

use berth_api::control::{Heartbeat, NodeResources, RegisterRequest, ReleaseStatus};
use berth_spec::model::{DriverKind, MAX_REPLICAS};
use harness::{all_healthy, deploy, eventually, wait_release, Agent, Server, Timeline};

/// The largest count, on two nodes labelled `pool=big` that take them all.
fn huge_stack() -> String {
    format!(
        r#"stack: huge
environments:
  staging:
    regions: [local]
services:
  web:
    process: {{command: [sleep, "1000"]}}
    replicas: {MAX_REPLICAS}
    resources: {{ cpu: 1m, memory: 1Mi }}
    placement: {{ constraints: ["pool == big"] }}
    rollout: {{ progress_deadline: 1h }}
"#
    )
}

/// One instance, kept off the big nodes (whose simulated agents never report anything).
const SMALL: &str = r#"stack: small
environments:
  staging:
    regions: [local]
services:
  web:
    process: {command: [sleep, "1000"]}
    replicas: 1
    placement: { constraints: ["pool != big"] }
    rollout: { progress_deadline: 1h }
"#;

/// Registers `name` as a node with room for every instance of [`huge_stack`], and keeps it
/// alive with empty heartbeats (its instances stay pending: nothing runs them).
async fn big_node(server: &Server, name: &str) -> tokio::task::JoinHandle<()> {
    let joining = server.client(Some(&server.join_token));
    let token = joining
        .register(&RegisterRequest {
            name: name.to_string(),
            labels: BTreeMap::from([("pool".to_string(), "big".to_string())]),
            resources: NodeResources {
                cpu_millis: 1 << 40,
                memory_bytes: 1 << 50,
            },
            drivers: vec![DriverKind::Process],
            address: "127.0.0.1".to_string(),
            router: None,
            keep_labels: false,
        })
        .await
        .unwrap_or_else(|e| panic!("register {name}: {e}"))
        .node_token;
    let client = server.client(Some(&token));
    let name = name.to_string();
    tokio::spawn(async move {
        loop {
            let _ = client
                .heartbeat(
                    &name,
                    &Heartbeat {
                        statuses: vec![],
                        last_gc: None,
                    },
                )
                .await;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
}

async fn instances_of(server: &Server, stack: &str) -> usize {
    match server.admin.status(Some(stack)).await {
        Ok(s) => s
            .stacks
            .iter()
            .flat_map(|s| &s.services)
            .map(|svc| svc.instances.len())
            .sum(),
        Err(_) => 0,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_largest_replica_count_neither_starves_another_stack_nor_delays_shutdown() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = Server::start(dir.path()).await;
    let beats = [
        big_node(&server, "big1").await,
        big_node(&server, "big2").await,
    ];
    let agent = Agent::join(&server, "small1", all_healthy(), Timeline::default()).await;

    let huge = deploy(&server, &huge_stack()).await;
    assert_eq!(huge, 1);
    // The huge stack's rollout starts placing before the small one is deployed.
    eventually("the huge stack's first instances", || async {
        match instances_of(&server, "huge").await {
            0 => Err("none yet".to_string()),
            n => Ok(n),
        }
    })
    .await;

    let started = harness::clock::now();
    let small = deploy(&server, SMALL).await;
    agent.wait_running(small, 1).await;
    wait_release(&server, "small", small, ReleaseStatus::Live).await;
    let took = started.elapsed();
    let huge_now = instances_of(&server, "huge").await;
    assert!(
        huge_now < MAX_REPLICAS as usize || took < Duration::from_secs(5),
        "the small stack waited {took:?}, until the huge one had all {huge_now} instances"
    );

    // The huge stack keeps progressing, in budgeted passes.
    eventually("the huge stack to keep growing", || async {
        match instances_of(&server, "huge").await {
            n if n > huge_now.max(1_000) => Ok(n),
            n => Err(format!("{n} instances")),
        }
    })
    .await;

    for b in beats {
        b.abort();
    }
    drop(agent);
    let stopping = harness::clock::now();
    server.stop().await;
    assert!(
        stopping.elapsed() < Duration::from_secs(5),
        "stopping took {:?}",
        stopping.elapsed()
    );
}
