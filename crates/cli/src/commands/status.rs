//! `berth status`: stacks, services and instances with their state.

use crate::context::{client_error, print_json, runtime, Globals};

/// Arguments of `berth status`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Only this stack.
    stack: Option<String>,
}

/// `berth status`.
pub fn run(args: Args, globals: &Globals) -> anyhow::Result<()> {
    let client = globals.client()?;
    runtime()?.block_on(async {
        let view = client
            .status(args.stack.as_deref())
            .await
            .map_err(client_error)?;
        if globals.json() {
            return print_json(&view);
        }
        if view.stacks.is_empty() {
            println!(
                "no stack deployed: try `berth deploy -f examples/demo/stack.yaml --env local`"
            );
        }
        for s in &view.stacks {
            println!(
                "{} ({}) release {} — {}",
                s.stack,
                s.env,
                s.live_release.map(|n| n.to_string()).unwrap_or("-".into()),
                s.rollout
            );
            for svc in &s.services {
                println!("  {}  {}/{} healthy", svc.name, svc.healthy, svc.desired);
                if let Some(why) = &svc.pending {
                    println!("    pending: {why}");
                }
                for i in &svc.instances {
                    println!(
                        "    {:<32} {:<10} release {:<4} node {:<12} {:<22} wanted: {}{}",
                        i.id,
                        format!("{:?}", i.state).to_lowercase(),
                        i.release,
                        i.node,
                        i.addr.clone().unwrap_or_default(),
                        i.desired,
                        i.message
                            .as_ref()
                            .map(|m| format!("  ({m})"))
                            .unwrap_or_default()
                    );
                }
            }
        }
        Ok(())
    })
}
