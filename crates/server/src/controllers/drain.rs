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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controllers::testing::{shop, World};

    /// A world with one live instance of `web`, now being drained.
    fn draining() -> (World, String) {
        let mut w = World::new();
        w.node("a", None);
        w.deploy(&shop(1, "local", "1"), 1, None, false);
        w.settle(20);
        let id = w.running("web")[0].spec.id.clone();
        let mut r = w.view.instance(&id).expect("instance").value.clone();
        r.desired = Desired::Drain;
        r.desired_since_ms = Some(w.now);
        w.put(&crate::keys::instance(&id), crate::state::encode(&r));
        (w, id)
    }

    fn facts_decide(w: &World) -> Vec<Effect> {
        let up = w.up.clone();
        let node_up = move |n: &str| up.contains(n);
        let released = w.routers_released;
        let released = move |_: &str| released;
        decide(
            &w.view,
            &Facts {
                node_up: &node_up,
                released: &released,
                traffic: &crate::controllers::NoTraffic,
            },
            w.now,
        )
    }

    #[test]
    fn a_drained_instance_stops_once_the_routers_let_go() {
        let (mut w, id) = draining();
        w.routers_released = false;
        assert!(facts_decide(&w).is_empty(), "routers still route to it");
        w.routers_released = true;
        match facts_decide(&w).as_slice() {
            [Effect::SetDesired { record, .. }] => {
                assert_eq!(record.spec.id, id);
                assert_eq!(record.desired, Desired::Stop);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_drained_instance_stops_after_the_deadline_anyway() {
        let (mut w, _) = draining();
        w.routers_released = false;
        w.now += DRAIN_DEADLINE_MS + 1;
        assert_eq!(facts_decide(&w).len(), 1);
    }

    #[test]
    fn a_stop_on_a_node_gone_for_a_minute_is_forgotten() {
        let (mut w, id) = draining();
        let batch = facts_decide(&w);
        w.apply(&[crate::controllers::Batch { effects: batch }]);
        w.up.clear();
        assert!(facts_decide(&w).is_empty(), "not yet a minute");
        w.now += FORGET_AFTER_MS + 1;
        match facts_decide(&w).as_slice() {
            [Effect::DeleteInstance { id: gone, .. }] => assert_eq!(*gone, id),
            other => panic!("{other:?}"),
        }
    }
}
