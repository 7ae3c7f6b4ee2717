//! `berth deploy`: creates a release from a stack file and, with `--wait`, follows its rollout.

use std::time::Duration;

use berth_api::control::DeployRequest;

use super::{release, wait};
use crate::context::{client_error, runtime, Globals};

/// Arguments of `berth deploy`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The stack file to deploy.
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    file: String,
    /// The environment of the stack file to deploy to.
    #[arg(long, value_name = "ENV")]
    env: String,
    /// Override a rendered field: `service.path=value`, e.g. `web.env.VERSION=2` (repeatable).
    #[arg(long = "set", value_name = "SVC.PATH=VALUE")]
    set: Vec<String>,
    /// Wait for the rollout, showing progress; exit 1 if it fails.
    #[arg(long)]
    wait: bool,
    /// Type the stack's name back to allow a destructive plan.
    #[arg(long)]
    confirm: Option<String>,
    /// Apply only if the plan still has this id.
    #[arg(long = "plan")]
    plan_id: Option<String>,
    /// How long --wait waits, in seconds.
    #[arg(long, default_value_t = 300)]
    timeout: u64,
    /// Deploy even though the plan says some instances cannot be placed (else refused, exit 3).
    #[arg(long)]
    force: bool,
}

/// `berth deploy`.
pub fn run(args: Args, globals: &Globals) -> anyhow::Result<()> {
    let client = globals.client()?;
    let req = DeployRequest {
        force: args.force,
        ..release::request(
            &args.file,
            &args.env,
            &args.set,
            args.confirm.clone(),
            args.plan_id.clone(),
        )?
    };
    runtime()?.block_on(async {
        let resp = client.deploy(&req).await.map_err(client_error)?;
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
