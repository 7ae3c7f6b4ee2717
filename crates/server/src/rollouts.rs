//! The old home of the rollout controller, kept as paths other code still names. The
//! controllers live in [`crate::controllers`] (one per concern); the rollout record in
//! [`crate::state`].

pub use crate::controllers::drain::DRAIN_DEADLINE_MS;
pub use crate::controllers::{reconcile_once, run_controller, CREATE_BUDGET, TICK};
pub use crate::state::{RolloutPhase as Phase, RolloutRecord};
pub use berth_rollout::dependency_order;
