//! `berth rollout status STACK --env E`: where the rollout is, service by service.

use berth_server::rollouts::RolloutStatus;

use super::rollout::{duration, percent, Target};
use crate::context::{client_error, print_json, runtime, Globals};

/// `berth rollout status`.
pub fn run(t: &Target, globals: &Globals) -> anyhow::Result<()> {
    let client = globals.client()?;
    runtime()?.block_on(async {
        let status: RolloutStatus = client
            .rollout(&t.stack, &t.env)
            .await
            .map_err(client_error)?;
        if globals.json() {
            return print_json(&status);
        }
        print!("{}", render(&status));
        Ok(())
    })
}

/// The text `status` prints.
pub fn render(s: &RolloutStatus) -> String {
    let mut out = format!("rollout {} in {}: {}\n", s.stack, s.env, s.state);
    if let Some(why) = &s.halted {
        out.push_str(&format!("halted: {why}\n"));
    }
    if s.waves.len() > 1 {
        let waves: Vec<String> = s.waves.iter().map(|(r, st)| format!("{r}: {st}")).collect();
        out.push_str(&format!("waves: {}\n", waves.join(", ")));
    }
    for svc in &s.services {
        let mut line = format!("  {} ({}): {}", svc.service, svc.strategy, svc.phase);
        if let Some(step) = svc.step {
            if step <= svc.steps.len() {
                line.push_str(&format!(
                    ", step {step}/{} ({})",
                    svc.steps.len(),
                    percent(svc.steps[step - 1])
                ));
            } else {
                line.push_str(", to 100%");
            }
        }
        if !svc.weights.is_empty() {
            let w: Vec<String> = svc
                .weights
                .iter()
                .map(|(r, bp)| format!("release {r} {}", percent(*bp)))
                .collect();
            line.push_str(&format!(", weights: {}", w.join(" / ")));
        }
        if let Some(ms) = svc.time_left_ms {
            line.push_str(&format!(", time left: {}", duration(ms)));
        }
        if let Some(why) = &svc.paused {
            line.push_str(&format!(", paused: {why}"));
        }
        out.push_str(&line);
        out.push('\n');
    }
    out
}
