//! `berth drain NODE` and `berth undrain NODE`: a node takes no new instances and its own move
//! elsewhere, or it takes new ones again.

use crate::context::{client_error, print_json, runtime, Globals};

/// Arguments of `berth drain` and `berth undrain`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The node.
    node: String,
}

/// `berth drain NODE` / `berth undrain NODE`.
pub fn run(args: Args, draining: bool, globals: &Globals) -> anyhow::Result<()> {
    let client = globals.client()?;
    runtime()?.block_on(async {
        let node = client.set_draining(&args.node, draining).await.map_err(client_error)?;
        if globals.json() {
            return print_json(&node);
        }
        if draining && node.state == berth_api::control::NodeState::Down {
            println!("node {} is down and draining: it takes no new instances, and its {} instance(s) are replaced elsewhere (a down node's instances are replaced without waiting for it)", node.name, node.instances);
        } else if draining {
            println!("node {} is draining: it takes no new instances, and its {} instance(s) move elsewhere, each stopped once its replacement is healthy", node.name, node.instances);
        } else {
            println!("node {} takes new instances again", node.name);
        }
        Ok(())
    })
}
