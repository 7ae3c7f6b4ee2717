//! What a deploy, plan, history or rollback can refuse, with the words people see. The HTTP
//! layer only maps each to a status code (`http::releases`).

use crate::state::StateError;

/// Why a release operation stored nothing.
#[derive(Debug, thiserror::Error)]
pub enum ReleaseError {
    /// Secrets the target's services declare are not set (one line per secret, naming the
    /// command that sets it).
    #[error("{} secret(s) of stack {stack} not set; nothing was stored: {}", .missing.len(), .missing.join("; "))]
    MissingSecrets { stack: String, missing: Vec<String> },
    /// The pure planner failed (a bug, not the caller's doing).
    #[error("cannot compute the plan: {0}")]
    Plan(String),
    /// `--plan ID` names a plan that is no longer the plan.
    #[error("the live state moved since plan {given} (the plan is now {now}): run `berth plan` again and review it")]
    PlanMoved { given: String, now: String },
    /// The plan loses more capacity than the environment allows without `--confirm STACK`.
    /// `lost`: one line per service that loses capacity, with its counts per region.
    #[error("this plan loses {percent}% of {worst}'s healthy capacity, more than {env}'s max_capacity_drop of {max}: it would lose {}; nothing was stored. Review it with `berth plan`, then deploy again with --confirm {stack}", .lost.join("; "))]
    CapacityDrop {
        percent: u32,
        worst: String,
        env: String,
        max: String,
        stack: String,
        lost: Vec<String>,
    },
    /// The plan removes a service, stops every instance of one or empties a region: it needs
    /// `--confirm STACK` whatever the environment's `max_capacity_drop` allows. `lost`: one
    /// line per such change, saying what would be lost per service and region.
    #[error("this plan is destructive and needs --confirm {stack} whatever {env} allows: {}; nothing was stored. {again}", .lost.join("; "))]
    Destructive {
        stack: String,
        env: String,
        lost: Vec<String>,
        /// What to do now, for a deploy or for `berth stack rm`.
        again: String,
    },
    /// The environment asks for `approval: N`: the plan is stored as pending (exit 3, its id
    /// printed) until N users other than its author approve it.
    #[error("{}/{}: plan {} is pending approval ({}/{}), requested by {}; nothing was deployed yet. It runs when {} user(s) other than {} approve it with `berth approve {} --env {} --plan {}` before it expires (approval_timeout); `berth approvals` lists what waits, `berth reject` refuses it", .view.stack, .view.env, .view.plan_id, .view.approved_by.len(), .view.needed, .view.author, .view.needed, .view.author, .view.stack, .view.env, .view.plan_id)]
    Pending {
        view: Box<berth_api::control::ApprovalView>,
    },
    /// Some instances cannot be placed on the cluster as it is now (and no `--force`).
    #[error("this plan cannot be placed on the cluster as it is now, so its rollout would fail: {}; nothing was stored. Add or undrain nodes, free capacity or relax the constraints, or deploy anyway with --force", .reasons.join("; "))]
    Unplaceable { reasons: Vec<String> },
    /// The same content as a release whose canary analysis failed or that was aborted: it is
    /// known bad, so deploying it again needs `--force`.
    #[error("release {number} of {stack} in {env} had exactly this content and was stopped ({reason}): fix the release, or deploy it again anyway with --force")]
    Vetoed {
        number: u64,
        reason: String,
        stack: String,
        env: String,
    },
    /// The stack's older releases kept changing under the deploy's retries.
    #[error("the releases of this stack kept changing during the deploy: try again")]
    KeptChanging,
    /// Another deploy of the stack won the race.
    #[error("another deploy of this stack landed at the same time: plan again and retry")]
    ConcurrentDeploy,
    /// `history` of a stack and environment with no release.
    #[error("stack {stack} has no release in environment {env}: deploy it first, or check `berth status`")]
    NoHistory { stack: String, env: String },
    /// A rollback to a release number that is not retained.
    #[error("release {number} of {stack} in {env} is not retained: see `berth history {stack} --env {env}`")]
    NotRetained {
        number: u64,
        stack: String,
        env: String,
    },
    /// A rollback with no number and no earlier release that went live.
    #[error("{stack} in {env} has no earlier successful release to roll back to: no earlier release went live (see `berth history {stack} --env {env}`; `berth rollback {stack} --env {env} N` returns to a release by number)")]
    NoRollbackTarget { stack: String, env: String },
    /// The store failed or holds a record this version cannot read.
    #[error(transparent)]
    State(#[from] StateError),
}
