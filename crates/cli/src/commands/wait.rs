//! `--wait` of `berth deploy` and `berth rollback`: follows a release until it is live or
//! failed, printing the rollout's progress.

use std::time::Duration;

use berth_api::control::ReleaseStatus;

use crate::context::{client_error, Globals};
use crate::exit::{Silent, FAILURE};

/// Follows a release until it is live (exit 0) or failed (exit 1), printing healthy/desired.
pub async fn wait_for(
    client: &berth_client::Client,
    stack: &str,
    env: &str,
    number: u64,
    timeout: Duration,
    globals: &Globals,
) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut last = String::new();
    loop {
        let releases = client.releases(stack, env).await.map_err(client_error)?;
        let release = releases.iter().find(|r| r.number == number);
        let status = client.status(Some(stack)).await.map_err(client_error)?;
        if !globals.json() {
            let progress: Vec<String> = status
                .stacks
                .iter()
                .filter(|s| s.env == env)
                .flat_map(|s| {
                    s.services
                        .iter()
                        .map(|svc| format!("{} {}/{}", svc.name, svc.healthy, svc.desired))
                })
                .collect();
            let line = format!(
                "{} — {}",
                status
                    .stacks
                    .iter()
                    .find(|s| s.env == env)
                    .map(|s| s.rollout.clone())
                    .unwrap_or_default(),
                progress.join(", ")
            );
            if line != last {
                println!("{line}");
                last = line;
            }
        }
        match release.map(|r| (r.status, r.reason.clone())) {
            Some((ReleaseStatus::Live, _)) => {
                if !globals.json() {
                    println!("release {number} is live");
                }
                return Ok(());
            }
            Some((ReleaseStatus::Failed, reason)) => {
                eprintln!(
                    "release {number} failed: {}; the previous release was restored",
                    reason.unwrap_or_default()
                );
                return Err(Silent(FAILURE).into());
            }
            Some((ReleaseStatus::Superseded, _)) => {
                eprintln!("release {number} was replaced by a later deploy before it finished");
                return Err(Silent(FAILURE).into());
            }
            None => {
                eprintln!("release {number} is no longer retained");
                return Err(Silent(FAILURE).into());
            }
            Some((ReleaseStatus::RollingOut, _)) => {}
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "release {number} did not finish within {} s; see `berth status {stack}`",
            timeout.as_secs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
