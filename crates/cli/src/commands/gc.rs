//! `berth gc`: every agent collects garbage once — berth's stopped containers, and the images
//! it ran that no retained release needs and no container uses — and the command waits for
//! each node's report.

use std::time::Duration;

use berth_api::control::{NodeState, NodeView};
use serde::Serialize;

use crate::context::{client_error, print_json, runtime, Globals};
use crate::exit::{Silent, FAILURE};

/// Arguments of `berth gc`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Only ask; do not wait for the nodes' reports.
    #[arg(long)]
    no_wait: bool,
    /// How long to wait for the reports, in seconds.
    #[arg(long, default_value_t = 120)]
    timeout: u64,
}

/// What `--output json` prints.
#[derive(Serialize)]
struct Output {
    generation: u64,
    nodes: Vec<NodeView>,
    /// Nodes that were up but did not report within the timeout.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    missing: Vec<String>,
}

/// `berth gc`. Waits for every node that is not down (a down node collects when it returns:
/// the request is stored, not sent); exit 1 if one did not report in time.
pub fn run(args: Args, globals: &Globals) -> anyhow::Result<()> {
    let client = globals.client()?;
    runtime()?.block_on(async {
        let generation = client.gc().await.map_err(client_error)?.generation;
        if !globals.json() {
            println!("garbage collection {generation} requested");
        }
        if args.no_wait {
            if globals.json() {
                print_json(&Output {
                    generation,
                    nodes: vec![],
                    missing: vec![],
                })?;
            }
            return Ok(());
        }
        let deadline = crate::clock::tokio_now() + Duration::from_secs(args.timeout);
        let done = |n: &NodeView| {
            n.last_gc
                .as_ref()
                .is_some_and(|r| r.generation >= generation)
        };
        // A down node (drained or not: `state` says `down` first) is not waited for.
        let (nodes, down) = loop {
            let (nodes, down): (Vec<NodeView>, Vec<NodeView>) = client
                .nodes()
                .await
                .map_err(client_error)?
                .into_iter()
                .partition(|n| n.state != NodeState::Down);
            if nodes.iter().all(done) || crate::clock::tokio_now() >= deadline {
                break (nodes, down);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        let missing: Vec<String> = nodes
            .iter()
            .filter(|n| !done(n))
            .map(|n| n.name.clone())
            .collect();
        if globals.json() {
            print_json(&Output {
                generation,
                nodes: nodes.iter().filter(|n| done(n)).cloned().collect(),
                missing: missing.clone(),
            })?;
        } else {
            if !down.is_empty() {
                let names: Vec<&str> = down.iter().map(|n| n.name.as_str()).collect();
                println!(
                    "not waiting for down node(s): {} (they collect when they return)",
                    names.join(", ")
                );
            }
            for n in nodes.iter().filter(|n| done(n)) {
                let Some(r) = &n.last_gc else { continue };
                let images = if r.images_removed.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", r.images_removed.join(", "))
                };
                println!(
                    "{}: removed {} container(s), {} image(s){images}, {} MiB reclaimed",
                    n.name,
                    r.containers_removed,
                    r.images_removed.len(),
                    r.bytes_reclaimed / (1 << 20)
                );
                for e in &r.errors {
                    println!("  ! {e}");
                }
            }
        }
        if !missing.is_empty() {
            eprintln!(
                "no report within {} s from: {} (they collect when they next hear from the server)",
                args.timeout,
                missing.join(", ")
            );
            return Err(Silent(FAILURE).into());
        }
        Ok(())
    })
}
