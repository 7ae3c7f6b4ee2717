//! `berth stack rm STACK --env E --confirm STACK`: takes a stack out of an environment as a
//! release without services (every instance stops), so its history stays and
//! `berth rollback STACK --env E` brings it back. Without the stack's name typed back it is
//! refused with exit 3 and the message says what would be lost, per service and region.

use std::time::Duration;

use berth_api::control::StackRemoveRequest;

use super::{release, wait};
use crate::context::{client_error, runtime, Globals};

/// `berth stack …`.
#[derive(clap::Subcommand, Debug)]
pub enum Stack {
    /// Stop every instance of a stack in an environment, as a new release (history is kept;
    /// `berth rollback` brings it back). Needs --confirm STACK.
    Rm(RmArgs),
}

/// Arguments of `berth stack rm`.
#[derive(clap::Args, Debug)]
pub struct RmArgs {
    /// The stack to remove.
    stack: String,
    /// The environment to remove it from.
    #[arg(long, value_name = "ENV")]
    env: String,
    /// Type the stack's name back: removing a stack empties every service.
    #[arg(long)]
    confirm: Option<String>,
    /// Wait until every instance stopped; exit 1 if the rollout fails.
    #[arg(long)]
    wait: bool,
    /// How long --wait waits, in seconds.
    #[arg(long, default_value_t = 300)]
    timeout: u64,
}

/// `berth stack …`.
pub fn run(which: Stack, globals: &Globals) -> anyhow::Result<()> {
    match which {
        Stack::Rm(args) => rm(args, globals),
    }
}

fn rm(args: RmArgs, globals: &Globals) -> anyhow::Result<()> {
    let client = globals.client()?;
    runtime()?.block_on(async {
        let req = StackRemoveRequest {
            confirm: args.confirm.clone(),
            dry_run: false,
        };
        let resp = client
            .remove_stack(&args.stack, &args.env, &req)
            .await
            .map_err(client_error)?;
        release::print_deploy(&resp, globals)?;
        match (args.wait, resp.release) {
            (true, Some(n)) => {
                wait::wait_for(
                    &client,
                    &resp.stack,
                    &resp.env,
                    n,
                    Duration::from_secs(args.timeout),
                    globals,
                )
                .await
            }
            _ => Ok(()),
        }
    })
}
