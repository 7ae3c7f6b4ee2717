//! `berth logs`: a service's output, read from this machine's agent.

use std::collections::BTreeMap;

use futures::StreamExt;

use crate::context::{client_error, runtime, Globals};

/// Arguments of `berth logs`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The service (`SERVICE` or `STACK/SERVICE`).
    service: String,
    /// Keep streaming new lines.
    #[arg(short = 'f', long)]
    follow: bool,
    /// The agent data directory holding the instances (default: the local `berth up`'s).
    #[arg(long)]
    agent_dir: Option<std::path::PathBuf>,
}

/// `berth logs`: the service's instances' output, read from this machine's agent (the logs of
/// instances on other nodes are not reachable yet: agents never accept connections).
pub fn run(args: Args, globals: &Globals) -> anyhow::Result<()> {
    let client = globals.client()?;
    let (stack_filter, service) = match args.service.split_once('/') {
        Some((s, v)) => (Some(s.to_string()), v.to_string()),
        None => (None, args.service.clone()),
    };
    let agent_dir = args
        .agent_dir
        .clone()
        .unwrap_or_else(|| crate::context::default_data_dir().join("agent"));
    runtime()?.block_on(async {
        let view = client.status(stack_filter.as_deref()).await.map_err(client_error)?;
        // A bare service name must name one stack's service (as `berth maintenance` asks).
        let owners: std::collections::BTreeSet<&str> = view
            .stacks
            .iter()
            .filter(|s| s.services.iter().any(|v| v.name == service))
            .map(|s| s.stack.as_str())
            .collect();
        anyhow::ensure!(
            stack_filter.is_some() || owners.len() <= 1,
            "several stacks have a service {service}: name it as STACK/{service}"
        );
        let ids: Vec<String> = view.stacks.iter().flat_map(|s| s.services.iter()).filter(|s| s.name == service).flat_map(|s| s.instances.iter().map(|i| i.id.clone())).collect();
        anyhow::ensure!(!ids.is_empty(), "no instance of service {service} found: see `berth status`");
        let mut streams = futures::stream::SelectAll::new();
        let mut found = 0;
        for id in &ids {
            let path = agent_dir.join("instances").join(id).join(berth_agent::logs::LOG_FILE);
            if path.exists() {
                found += 1;
                let id = id.clone();
                streams.push(Box::pin(berth_agent::logs::tail(path, args.follow).map(move |l| (id.clone(), l))));
            }
        }
        anyhow::ensure!(found > 0, "the logs of {service}'s instances are not on this machine ({}): run `berth logs` where the agent runs, or pass --agent-dir", agent_dir.display());
        let mut prefixes: BTreeMap<String, String> = BTreeMap::new();
        for id in &ids {
            prefixes.insert(id.clone(), id.rsplit('-').next().unwrap_or(id).to_string());
        }
        while let Some((id, line)) = streams.next().await {
            match line {
                Ok(l) => println!("{} | {l}", prefixes.get(&id).cloned().unwrap_or_default()),
                Err(e) => eprintln!("{id}: {e}"),
            }
        }
        Ok(())
    })
}
