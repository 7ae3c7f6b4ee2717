//! `berth nodes`: the nodes of the cluster, their state, load and labels.

use crate::context::{client_error, print_json, runtime, Globals};

/// `berth nodes`.
pub fn run(globals: &Globals) -> anyhow::Result<()> {
    let client = globals.client()?;
    runtime()?.block_on(async {
        let nodes = client.nodes().await.map_err(client_error)?;
        if globals.json() {
            return print_json(&nodes);
        }
        println!(
            "{:<20} {:<14} {:<10} {:<22} {:<10} LABELS",
            "NODE", "STATE", "INSTANCES", "ALLOCATED CPU/MEMORY", "LAST SEEN"
        );
        for n in &nodes {
            let labels: Vec<String> = n.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
            let seen = n
                .last_seen_ms_ago
                .map(|ms| format!("{:.1}s ago", ms as f64 / 1000.0))
                .unwrap_or_else(|| "never".into());
            let cpu = berth_spec::model::Cpu {
                millis: n.allocated.cpu_millis,
            };
            let mem = human_bytes(n.allocated.memory_bytes);
            let cap_cpu = berth_spec::model::Cpu {
                millis: n.resources.cpu_millis,
            };
            let cap_mem = human_bytes(n.resources.memory_bytes);
            // Liveness first, then drain: `down,draining` for a drained node that died.
            let mut state = format!("{:?}", n.state).to_lowercase();
            if n.draining && n.state != berth_api::control::NodeState::Draining {
                state.push_str(",draining");
            }
            println!(
                "{:<20} {:<14} {:<10} {:<22} {:<10} {}",
                n.name,
                state,
                n.instances,
                format!("{cpu}/{cap_cpu} {mem}/{cap_mem}"),
                seen,
                labels.join(",")
            );
        }
        Ok(())
    })
}

/// Memory for people: `512Mi`, `23.5Gi` (rounded to one decimal above a GiB).
fn human_bytes(bytes: u64) -> String {
    const MI: u64 = 1 << 20;
    const GI: u64 = 1 << 30;
    if bytes >= GI {
        format!("{:.1}Gi", bytes as f64 / GI as f64)
    } else {
        format!("{}Mi", bytes.div_ceil(MI))
    }
}
