//! `berth node rm NAME`: removes a node from the cluster (its record, its token, its instance
//! records; the controller places replacements elsewhere), so its name is free to join again.

use crate::context::{client_error, print_json, runtime, Globals};

/// `berth node …`.
#[derive(clap::Subcommand, Debug)]
pub enum Node {
    /// Remove a node: its record, its token and its instance records (replaced on other
    /// nodes). A node that is up is refused unless --force: stop its agent first.
    Rm(RmArgs),
}

/// Arguments of `berth node rm`.
#[derive(clap::Args, Debug)]
pub struct RmArgs {
    /// The node's name, as `berth nodes` shows it.
    name: String,
    /// Remove the node even though it is up (its agent, if it keeps running, joins again as a
    /// new node with the join token).
    #[arg(long)]
    force: bool,
}

/// Runs a `berth node` subcommand.
pub fn run(which: Node, globals: &Globals) -> anyhow::Result<()> {
    match which {
        Node::Rm(args) => rm(args, globals),
    }
}

fn rm(args: RmArgs, globals: &Globals) -> anyhow::Result<()> {
    let client = globals.client()?;
    runtime()?.block_on(async {
        let removed = client
            .remove_node(&args.name, args.force)
            .await
            .map_err(client_error)?;
        if globals.json() {
            return print_json(&removed);
        }
        let instances = removed
            .get("instances")
            .and_then(|v| v.as_u64())
            .unwrap_or(0);
        println!(
            "node {} removed: its token is revoked and its {instances} instance(s) are being replaced on other nodes",
            args.name
        );
        Ok(())
    })
}
