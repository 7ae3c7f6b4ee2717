//! `berth rollback`: a new release with an older one's content and, with `--wait`, its rollout.

use std::time::Duration;

use berth_api::control::RollbackRequest;

use super::{release, wait};
use crate::context::{client_error, runtime, Globals};

/// Arguments of `berth rollback`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The stack to roll back.
    stack: String,
    /// Its environment.
    #[arg(long, value_name = "ENV")]
    env: String,
    /// The release to return to (default: the previous successful one).
    release: Option<u64>,
    /// Wait for the rollout; exit 1 if it fails.
    #[arg(long)]
    wait: bool,
}

/// `berth rollback`.
pub fn run(args: Args, globals: &Globals) -> anyhow::Result<()> {
    let client = globals.client()?;
    runtime()?.block_on(async {
        let resp = client
            .rollback(
                &args.stack,
                &args.env,
                &RollbackRequest {
                    release: args.release,
                },
            )
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
                    Duration::from_secs(300),
                    globals,
                )
                .await
            }
            _ => Ok(()),
        }
    })
}
