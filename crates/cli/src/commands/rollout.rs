//! `berth rollout status|explain|pause|resume|promote [--full]|abort STACK --env E`: watch and
//! steer a progressive rollout. One module per command: [`super::rollout_status`],
//! [`super::rollout_explain`], and [`super::rollout_command`] for the four that change it.

use crate::context::Globals;

/// Which rollout and where.
#[derive(clap::Args, Debug)]
pub struct Target {
    /// The stack.
    pub stack: String,
    /// The environment.
    #[arg(long)]
    pub env: String,
}

/// `berth rollout …`
#[derive(clap::Subcommand, Debug)]
pub enum Rollout {
    /// Each service's step, traffic weights per release and time left; each wave's state.
    Status(Target),
    /// For each step of each canary: the counts, rates, statistic, threshold and verdict.
    Explain(Target),
    /// Wait where it is (a canary keeps its traffic split) until `resume`.
    Pause(Target),
    /// End a pause; a canary's step starts its clock and counts again.
    Resume(Target),
    /// A canary to its next step now (--full: to 100 %); a blue/green switches.
    Promote {
        #[command(flatten)]
        target: Target,
        /// Straight to 100 %.
        #[arg(long)]
        full: bool,
    },
    /// All traffic back to the stable release at once, the new instances stopped, the release
    /// failed; deploying the same content again then needs --force.
    Abort(Target),
}

/// Runs one `berth rollout` command.
pub fn run(which: Rollout, globals: &Globals) -> anyhow::Result<()> {
    match which {
        Rollout::Status(t) => super::rollout_status::run(&t, globals),
        Rollout::Explain(t) => super::rollout_explain::run(&t, globals),
        Rollout::Pause(t) => super::rollout_command::run(&t, "pause", false, globals),
        Rollout::Resume(t) => super::rollout_command::run(&t, "resume", false, globals),
        Rollout::Promote { target, full } => {
            super::rollout_command::run(&target, "promote", full, globals)
        }
        Rollout::Abort(t) => super::rollout_command::run(&t, "abort", false, globals),
    }
}

/// `10%`, `0.5%`: a share in basis points as the stack file writes it.
pub fn percent(basis_points: u32) -> String {
    berth_spec::model::BasisPoints(basis_points).to_string()
}

/// `1m05s`, `12s`, `800ms`: a time left.
pub fn duration(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0 => format!("{ms}ms"),
        1..=59 => format!("{s}s"),
        _ => format!("{}m{:02}s", s / 60, s % 60),
    }
}
