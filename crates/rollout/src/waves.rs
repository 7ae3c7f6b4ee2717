//! Region waves and dependency order: the order a release reaches a stack's services.
//!
//! A release rolls out one region at a time, in the order the environment lists its regions
//! (a *wave* per region); within a wave a service starts only once every service it depends on
//! is done in that wave. Pure: the shell keeps the wave index and the set of done services in
//! its rollout record and asks here what comes next.

use std::collections::BTreeSet;

use berth_spec::model::Stack;

/// What a wave's progress means for the rollout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaveStep {
    /// Services of the current wave are still rolling out.
    Stay,
    /// The current wave is done: start this one (its services from scratch).
    Next(usize),
    /// The last wave is done: the release runs everywhere.
    Finished,
}

/// Where a rollout goes after a pass in which `done` services of wave `wave` finished.
pub fn advance(wave: usize, done: usize, stack: &Stack) -> WaveStep {
    if wave >= stack.regions().len() {
        return WaveStep::Finished;
    }
    if done < stack.services.len() {
        return WaveStep::Stay;
    }
    if wave + 1 >= stack.regions().len() {
        WaveStep::Finished
    } else {
        WaveStep::Next(wave + 1)
    }
}

/// Services in an order where each comes after what it depends on (the validator refused
/// cycles; anything left over is appended so nothing is forgotten).
pub fn dependency_order(stack: &Stack) -> Vec<String> {
    let mut order: Vec<String> = Vec::new();
    let mut placed: BTreeSet<&str> = BTreeSet::new();
    loop {
        let mut progressed = false;
        for (name, svc) in &stack.services {
            if !placed.contains(name.as_str())
                && svc
                    .depends_on
                    .iter()
                    .all(|d| placed.contains(d.as_str()) || !stack.services.contains_key(d))
            {
                placed.insert(name);
                order.push(name.clone());
                progressed = true;
            }
        }
        if !progressed {
            break;
        }
    }
    for name in stack.services.keys() {
        if !placed.contains(name.as_str()) {
            order.push(name.clone());
        }
    }
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stack(regions: &str) -> Stack {
        let src = format!(
            r#"stack: shop
environments:
  prod:
    regions: [{regions}]
services:
  db:
    process: {{command: [sleep, "1"]}}
  api:
    process: {{command: [sleep, "1"]}}
    depends_on: [db]
  web:
    process: {{command: [sleep, "1"]}}
    depends_on: [api]
"#
        );
        berth_spec::render(src.as_bytes(), "prod", &[]).expect("a valid stack")
    }

    #[test]
    fn services_come_after_what_they_depend_on() {
        assert_eq!(dependency_order(&stack("eu")), ["db", "api", "web"]);
    }

    #[test]
    fn waves_go_region_by_region_once_every_service_is_done() {
        let s = stack("eu, us");
        assert_eq!(advance(0, 2, &s), WaveStep::Stay);
        assert_eq!(advance(0, 3, &s), WaveStep::Next(1));
        assert_eq!(advance(1, 1, &s), WaveStep::Stay);
        assert_eq!(advance(1, 3, &s), WaveStep::Finished);
        assert_eq!(advance(2, 0, &s), WaveStep::Finished);
    }
}
