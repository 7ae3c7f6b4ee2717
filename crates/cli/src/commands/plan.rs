//! `berth plan`: the diff between the live (or `--against`) release and the proposed one.

/// Arguments of `berth plan`.
#[derive(clap::Args, Debug)]
pub struct Args {}

/// Prints the plan.
pub fn run(_args: Args) -> anyhow::Result<()> {
    anyhow::bail!("berth plan is not wired yet")
}
