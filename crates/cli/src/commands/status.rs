//! `berth status`: stacks, services and instances with their state.

use crate::context::{client_error, print_json, runtime, Globals};

/// Arguments of `berth status`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Only this stack.
    stack: Option<String>,
}

/// `berth status`.
pub fn run(args: Args, globals: &Globals) -> anyhow::Result<()> {
    let client = globals.client()?;
    runtime()?.block_on(async {
        let view = client
            .status(args.stack.as_deref())
            .await
            .map_err(client_error)?;
        if globals.json() {
            return print_json(&view);
        }
        if view.stacks.is_empty() {
            println!(
                "no stack deployed: try `berth deploy -f examples/demo/stack.yaml --env local`"
            );
        }
        for s in &view.stacks {
            println!(
                "{} ({}) release {} — {}",
                s.stack,
                s.env,
                s.live_release.map(|n| n.to_string()).unwrap_or("-".into()),
                s.rollout
            );
            for svc in &s.services {
                println!(
                    "  {}  {}/{} healthy{}",
                    svc.name,
                    svc.healthy,
                    svc.desired,
                    if svc.maintenance {
                        "  MAINTENANCE (routers answer 503: `berth maintenance off` ends it)"
                    } else {
                        ""
                    }
                );
                if let Some(why) = &svc.pending {
                    println!("    pending: {why}");
                }
                for line in traffic_lines(&svc.name, &svc.traffic) {
                    println!("    {line}");
                }
                for i in &svc.instances {
                    println!(
                        "    {:<32} {:<10} release {:<4} node {:<12} {:<22} restarts {:<3} wanted: {}{}",
                        i.id,
                        format!("{:?}", i.state).to_lowercase(),
                        i.release,
                        i.node,
                        i.addr.clone().unwrap_or_default(),
                        i.restarts,
                        i.desired,
                        i.message
                            .as_ref()
                            .map(|m| format!("  ({m})"))
                            .unwrap_or_default()
                    );
                }
            }
        }
        Ok(())
    })
}

/// `traffic (last 60s) ARM: N requests, E 5xx (R%), p99 L ms` for each arm of a service with an
/// A/B split or a canary (the route's own arm is named after the service, a canary's arms
/// after their release).
fn traffic_lines(service: &str, arms: &[berth_api::control::ArmTrafficView]) -> Vec<String> {
    let secs = berth_api::control::STATUS_TRAFFIC_WINDOW_MS / 1_000;
    arms.iter()
        .map(|a| {
            let name = match (a.arm.as_str(), a.release) {
                ("release", Some(n)) => format!("release {n}"),
                ("release", None) => service.to_string(),
                (other, _) => other.to_string(),
            };
            let rate = if a.requests > 0 {
                format!(" ({:.1}%)", 100.0 * a.errors_5xx as f64 / a.requests as f64)
            } else {
                String::new()
            };
            let p99 = a
                .p99_ms
                .map(|ms| format!("p99 {ms} ms"))
                .unwrap_or_else(|| "p99 -".to_string());
            format!(
                "traffic (last {secs}s) {name}: {} requests, {} 5xx{rate}, {p99}",
                a.requests, a.errors_5xx
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use berth_api::control::ArmTrafficView;

    #[test]
    fn each_arm_is_one_line_with_its_figures() {
        let arm = |arm: &str, release, requests, errors, p99| ArmTrafficView {
            arm: arm.to_string(),
            release,
            requests,
            errors_5xx: errors,
            p99_ms: p99,
        };
        let lines = super::traffic_lines(
            "web",
            &[
                arm("release", None, 800, 8, Some(25)),
                arm("web-next", None, 0, 0, None),
                arm("release", Some(2), 10, 0, Some(50)),
            ],
        );
        assert_eq!(
            lines,
            [
                "traffic (last 60s) web: 800 requests, 8 5xx (1.0%), p99 25 ms",
                "traffic (last 60s) web-next: 0 requests, 0 5xx, p99 -",
                "traffic (last 60s) release 2: 10 requests, 0 5xx (0.0%), p99 50 ms",
            ]
        );
    }
}
