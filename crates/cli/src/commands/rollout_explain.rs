//! `berth rollout explain STACK --env E`: for each step of each canary, the counts, the rates,
//! the statistic, the threshold and the verdict — finished steps from their reports, the
//! current one from the counters so far.

use berth_server::rollouts::{Analysis, RolloutStatus, Verdict};

use super::rollout::{percent, Target};
use crate::context::{client_error, print_json, runtime, Globals};

/// `berth rollout explain`.
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

/// One analysis as a line: `new 3/300 (1.00%) vs stable 27/2700 (1.00%), ln Λ 0.12 < 4.61,
/// p99 40 ms (limit 80 ms): pass`.
fn line(a: &Analysis) -> String {
    let p99 = match (a.new.p99_ms, a.latency_limit_ms) {
        (Some(n), Some(limit)) => format!(", p99 {n} ms (limit {limit} ms)"),
        (Some(n), None) => format!(", p99 {n} ms"),
        _ => String::new(),
    };
    let cmp = if a.statistic >= a.threshold {
        "≥"
    } else {
        "<"
    };
    let why = match &a.verdict {
        Verdict::Fail(w) | Verdict::Abort(w) => {
            format!(" ({w})")
        }
        _ => String::new(),
    };
    format!(
        "new {}/{} 5xx ({:.2}%) vs stable {}/{} ({:.2}%), min {} requests, ln Λ {:.2} {cmp} {:.2}{p99}: {}{why}",
        a.new.errors_5xx,
        a.new.requests,
        100.0 * a.new.error_rate(),
        a.stable.errors_5xx,
        a.stable.requests,
        100.0 * a.stable.error_rate(),
        a.min_requests,
        a.statistic,
        a.threshold,
        a.verdict.word()
    )
}

/// The text `explain` prints.
pub fn render(s: &RolloutStatus) -> String {
    let mut out = super::rollout_status::render(s);
    for svc in &s.services {
        if svc.strategy != "canary" {
            continue;
        }
        out.push_str(&format!("{}:\n", svc.service));
        for r in &svc.reports {
            let what = match &r.analysis {
                Some(a) => line(a),
                None => "no analysis".to_string(),
            };
            out.push_str(&format!(
                "  step {} ({}): {what} → {}\n",
                r.step + 1,
                percent(r.basis_points),
                r.outcome
            ));
        }
        match (&svc.current, svc.step) {
            (Some(a), Some(step)) => out.push_str(&format!(
                "  step {step} ({}), so far: {}\n",
                svc.steps
                    .get(step - 1)
                    .map(|b| percent(*b))
                    .unwrap_or_default(),
                line(a)
            )),
            (None, Some(step)) if step <= svc.steps.len() => out.push_str(&format!(
                "  step {step}: waiting for its instances to be healthy\n"
            )),
            _ => {}
        }
    }
    out
}
