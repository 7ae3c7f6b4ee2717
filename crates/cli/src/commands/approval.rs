//! `berth approve`, `berth reject` and `berth approvals`: the second person's side of an
//! `approval: N` environment, where a deploy or rollback waits (exit 3, its plan id printed)
//! until N users other than its author approve exactly that plan.

use std::time::Duration;

use berth_api::control::{ApprovalView, RejectRequest};

use super::{release, wait};
use crate::context::{client_error, print_json, runtime, Globals};

/// Arguments of `berth approve`.
#[derive(clap::Args, Debug)]
pub struct ApproveArgs {
    /// The stack of the pending plan.
    stack: String,
    /// Its environment.
    #[arg(long, value_name = "ENV")]
    env: String,
    /// The pending plan's id (printed by the refused deploy and by `berth approvals`).
    #[arg(long, value_name = "ID")]
    plan: String,
    /// When this approval starts the release, wait for its rollout; exit 1 if it fails.
    #[arg(long)]
    wait: bool,
}

/// Arguments of `berth reject`.
#[derive(clap::Args, Debug)]
pub struct RejectArgs {
    /// The stack of the pending plan.
    stack: String,
    /// Its environment.
    #[arg(long, value_name = "ENV")]
    env: String,
    /// The pending plan's id.
    #[arg(long, value_name = "ID")]
    plan: String,
    /// Why it is refused (shown to everyone who lists or approves it).
    #[arg(long, value_name = "TEXT")]
    reason: String,
}

/// Arguments of `berth approvals`.
#[derive(clap::Args, Debug)]
pub struct ListArgs {
    /// Only this stack's plans.
    #[arg(long, value_name = "STACK")]
    stack: Option<String>,
    /// Only this environment's plans.
    #[arg(long, value_name = "ENV")]
    env: Option<String>,
}

/// `berth approve`.
pub fn approve(args: ApproveArgs, globals: &Globals) -> anyhow::Result<()> {
    let client = globals.client()?;
    runtime()?.block_on(async {
        let resp = client
            .approve(&args.stack, &args.env, &args.plan)
            .await
            .map_err(client_error)?;
        if globals.json() {
            print_json(&resp)?;
        } else {
            if let Some(deploy) = &resp.deploy {
                release::print_deploy(deploy, globals)?;
            }
            println!("{}", resp.message);
        }
        match (args.wait, resp.deploy.and_then(|d| d.release)) {
            (true, Some(n)) => {
                wait::wait_for(
                    &client,
                    &args.stack,
                    &args.env,
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

/// `berth reject`.
pub fn reject(args: RejectArgs, globals: &Globals) -> anyhow::Result<()> {
    let client = globals.client()?;
    runtime()?.block_on(async {
        let view = client
            .reject(
                &args.stack,
                &args.env,
                &args.plan,
                &RejectRequest {
                    reason: args.reason.clone(),
                },
            )
            .await
            .map_err(client_error)?;
        if globals.json() {
            return print_json(&view);
        }
        println!(
            "plan {} of {} in {} rejected {}",
            view.plan_id,
            view.stack,
            view.env,
            view.rejected.as_deref().unwrap_or("")
        );
        Ok(())
    })
}

/// `berth approvals`.
pub fn list(args: ListArgs, globals: &Globals) -> anyhow::Result<()> {
    let client = globals.client()?;
    runtime()?.block_on(async {
        let mut query = Vec::new();
        if let Some(s) = &args.stack {
            query.push(("stack", s.clone()));
        }
        if let Some(e) = &args.env {
            query.push(("env", e.clone()));
        }
        let pending = client.approvals(&query).await.map_err(client_error)?;
        if globals.json() {
            return print_json(&pending);
        }
        if pending.is_empty() {
            println!("no plan waits for approval");
            return Ok(());
        }
        let now = crate::clock::unix_ms();
        println!(
            "{:<14} {:<24} {:<12} {:<10} EXPIRES",
            "PLAN", "STACK/ENV", "AUTHOR", "APPROVALS"
        );
        for v in &pending {
            println!("{}", row(v, now));
        }
        Ok(())
    })
}

/// One line of `berth approvals`.
fn row(v: &ApprovalView, now_ms: u64) -> String {
    let left = v.expires_ms.saturating_sub(now_ms) / 1000;
    let expires = if left >= 3600 {
        format!("in {}h{:02}m", left / 3600, (left % 3600) / 60)
    } else {
        format!("in {}m{:02}s", left / 60, left % 60)
    };
    let approvals = format!("{}/{}", v.approved_by.len(), v.needed);
    format!(
        "{:<14} {:<24} {:<12} {:<10} {expires}",
        v.plan_id,
        format!("{}/{}", v.stack, v.env),
        v.author,
        approvals
    )
}
