//! The drain controller: an instance being drained is stopped once every router has let go of
//! it, or once [`DRAIN_DEADLINE_MS`] passed; a stopped instance whose node is gone (down for a
//! minute, so nobody will ever confirm the stop) is forgotten. Pure: a function of the view,
//! the facts and the clock.

use super::{Effect, Facts, CREATE_BUDGET};
use crate::state::Desired;
use crate::view::View;

/// Longest an instance waits in `drain` for routers to let go before it is stopped anyway.
pub const DRAIN_DEADLINE_MS: u64 = 5_000;
/// How long a stop waits for the agent of a node that is down before the record is forgotten.
pub const FORGET_AFTER_MS: u64 = 60_000;

/// At most [`CREATE_BUDGET`] effects per pass (each its own batch); the rest wait for the next
/// pass, which comes at least every [`super::TICK`].
pub fn decide(view: &View, facts: &Facts<'_>, now: u64) -> Vec<Effect> {
    let mut effects = Vec::new();
    for rec in view.instances().values() {
        if effects.len() >= CREATE_BUDGET {
            break;
        }
        let v = &rec.value;
        let since = v.desired_since_ms.unwrap_or(v.created_ms);
        match v.desired {
            Desired::Drain
                if (facts.released)(&v.spec.id)
                    || now.saturating_sub(since) > DRAIN_DEADLINE_MS =>
            {
                let mut record = v.clone();
                record.desired = Desired::Stop;
                record.desired_since_ms = Some(now);
                effects.push(Effect::SetDesired {
                    record,
                    from_revision: rec.mod_revision,
                });
            }
            Desired::Stop
                if !(facts.node_up)(&v.spec.node)
                    && now.saturating_sub(since) > FORGET_AFTER_MS =>
            {
                effects.push(Effect::DeleteInstance {
                    id: v.spec.id.clone(),
                    from_revision: rec.mod_revision,
                });
            }
            _ => {}
        }
    }
    effects
}
