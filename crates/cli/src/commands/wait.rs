//! `--wait` of `berth deploy` and `berth rollback`: follows a release until it is live or
//! failed, printing the rollout's progress.
//!
//! It follows the server's event stream (`GET /v1/events?follow=true`, the one `berth events -f`
//! shows) instead of polling: every change wakes it to read the release and the stack's status
//! again, so progress shows as it happens and an idle wait costs the server nothing. Changes
//! that arrive together are read once. The whole wait is bounded by `--timeout`.

use std::time::Duration;

use berth_api::control::{ReleaseStatus, StatusView};
use berth_client::{Client, ClientError};
use futures::{FutureExt, Stream, StreamExt};

use crate::context::{client_error, Globals};
use crate::exit::{Silent, FAILURE};

/// How soon to read again when the release has failed but the stack's status does not show
/// what the server did about it yet (a status read from a view a moment behind the release).
const CATCH_UP: Duration = Duration::from_millis(100);

/// Follows release `number` of `stack` in `env` until it is live (exit 0) or failed (exit 1),
/// printing `ROLLOUT — SERVICE HEALTHY/DESIRED, …` each time that line changes.
pub async fn wait_for(
    client: &Client,
    stack: &str,
    env: &str,
    number: u64,
    timeout: Duration,
    globals: &Globals,
) -> anyhow::Result<()> {
    let expired = tokio::time::sleep(timeout);
    tokio::pin!(expired);
    // The stream connects on its first poll and replays the server's recent changes, so a
    // change made between the first read below and the connection still wakes a read.
    let mut events = Box::pin(client.events(true, None));
    let mut last = String::new();
    loop {
        let releases = client.releases(stack, env).await.map_err(client_error)?;
        let status = client.status(Some(stack)).await.map_err(client_error)?;
        let rollout = status
            .stacks
            .iter()
            .find(|s| s.env == env)
            .map(|s| s.rollout.as_str());
        if !globals.json() {
            let line = progress(&status, env);
            if line != last {
                println!("{line}");
                last = line;
            }
        }
        let release = releases
            .iter()
            .find(|r| r.number == number)
            .map(|r| (r.status, r.reason.as_deref()));
        let verdict = judge(number, release, rollout);
        match &verdict {
            Verdict::Live => {
                if !globals.json() {
                    println!("release {number} is live");
                }
                return Ok(());
            }
            Verdict::Failed(message) => {
                eprintln!("{message}");
                return Err(Silent(FAILURE).into());
            }
            Verdict::Pending | Verdict::CatchingUp => {}
        }
        let catch_up = tokio::time::sleep(CATCH_UP);
        tokio::select! {
            () = &mut expired => anyhow::bail!(
                "release {number} did not finish within {} s; see `berth status {stack}`",
                timeout.as_secs()
            ),
            () = catch_up, if verdict == Verdict::CatchingUp => {}
            change = next_change(&mut events) => change.map_err(|e| match e {
                Ended::Error(e) => client_error(e),
                Ended::Closed => anyhow::anyhow!(
                    "the server closed its event stream before release {number} finished; see `berth status {stack}`"
                ),
            })?,
        }
    }
}

/// `ROLLOUT — SERVICE HEALTHY/DESIRED, …` for the stack in `env`.
fn progress(status: &StatusView, env: &str) -> String {
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
    format!(
        "{} — {}",
        status
            .stacks
            .iter()
            .find(|s| s.env == env)
            .map(|s| s.rollout.clone())
            .unwrap_or_default(),
        progress.join(", ")
    )
}

/// Why the event stream stopped waking the wait.
enum Ended {
    /// A transport error or an error status, as the client reports it.
    Error(ClientError),
    /// The server ended the stream (it only does when it shuts down).
    Closed,
}

/// Waits for the next change, then takes every change already received with it, so a burst
/// (one transaction, or the replay on connecting) costs one read. An event that does not decode
/// is still a change.
async fn next_change<S>(events: &mut S) -> Result<(), Ended>
where
    S: Stream<Item = Result<berth_api::control::Event, ClientError>> + Unpin,
{
    let mut item = events.next().await;
    loop {
        match item {
            None => return Err(Ended::Closed),
            Some(Err(e)) if !matches!(e, ClientError::Decode { .. }) => {
                return Err(Ended::Error(e))
            }
            Some(_) => {}
        }
        match events.next().now_or_never() {
            Some(next) => item = next,
            None => return Ok(()),
        }
    }
}

/// Where the followed release is.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Verdict {
    /// Still rolling out.
    Pending,
    /// Failed, but the stack's status does not show yet what the server did about it.
    CatchingUp,
    /// Fully rolled out.
    Live,
    /// Over without going live; the line says what happened.
    Failed(String),
}

/// Decides from the release's status and reason (`None`: no longer retained) and the stack's
/// rollout line (what
/// `berth status` shows: `rolling back to 1 (…)`, `failed: …`) where release `number` is.
///
/// A failed release says what the server did next, in its words: the automatic rollback to an
/// earlier release, or that there was nothing to roll back to and why.
fn judge(
    number: u64,
    release: Option<(ReleaseStatus, Option<&str>)>,
    rollout: Option<&str>,
) -> Verdict {
    let Some((status, reason)) = release else {
        return Verdict::Failed(format!("release {number} is no longer retained"));
    };
    match status {
        ReleaseStatus::RollingOut => Verdict::Pending,
        ReleaseStatus::Live => Verdict::Live,
        ReleaseStatus::Superseded => Verdict::Failed(format!(
            "release {number} was replaced by a later deploy before it finished"
        )),
        ReleaseStatus::Failed => {
            let reason = reason.unwrap_or_default();
            let failed = format!("release {number} failed: {reason}");
            let Some(rollout) = rollout else {
                return Verdict::Failed(failed);
            };
            if let Some(to) = rollout.strip_prefix("rolling back to ") {
                let to = to.split(' ').next().unwrap_or_default();
                return Verdict::Failed(format!("{failed}; rolling back to release {to}"));
            }
            if let Some(to) = rollout.strip_prefix("rolled back to ") {
                let to = to.split(' ').next().unwrap_or_default();
                return Verdict::Failed(format!("{failed}; release {to} was restored"));
            }
            if let Some(detail) = rollout.strip_prefix("failed: ") {
                // The server's own account: `REASON; no earlier release went live; nothing to
                // roll back to` (or why it did not roll back again).
                let why = detail
                    .strip_prefix(reason)
                    .map(|rest| rest.trim_start_matches("; "))
                    .filter(|rest| !rest.is_empty())
                    .unwrap_or(detail);
                return Verdict::Failed(format!("{failed}; nothing was rolled back: {why}"));
            }
            if rolls_out_to(rollout, number) {
                return Verdict::CatchingUp;
            }
            Verdict::Failed(format!("{failed}; the stack is now: {rollout}"))
        }
    }
}

/// Whether the rollout line still describes the rollout to `number` (`rolling out 3`,
/// `rolling out 2 → 3`).
fn rolls_out_to(rollout: &str, number: u64) -> bool {
    rollout
        .strip_prefix("rolling out ")
        .and_then(|rest| rest.rsplit(' ').next())
        .is_some_and(|to| to == number.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn release(status: ReleaseStatus, reason: Option<&str>) -> (ReleaseStatus, Option<&str>) {
        (status, reason)
    }

    const WHY: &str = "service web in local: no progress for 3s: 0/3 new instances healthy";

    #[test]
    fn a_failed_release_with_nothing_to_roll_back_to_says_so_with_the_servers_reason() {
        let r = release(ReleaseStatus::Failed, Some(WHY));
        let rollout =
            format!("failed: {WHY}; no earlier release went live; nothing to roll back to");
        assert_eq!(
            judge(2, Some(r), Some(&rollout)),
            Verdict::Failed(format!(
                "release 2 failed: {WHY}; nothing was rolled back: no earlier release went live; nothing to roll back to"
            ))
        );
    }

    #[test]
    fn a_failed_release_names_the_release_rolled_back_to() {
        let r = release(ReleaseStatus::Failed, Some(WHY));
        let back = format!("rolling back to 1 (release 2 failed: {WHY})");
        assert_eq!(
            judge(2, Some(r), Some(&back)),
            Verdict::Failed(format!(
                "release 2 failed: {WHY}; rolling back to release 1"
            ))
        );
        let done = format!("rolled back to 1 (release 2 failed: {WHY})");
        assert_eq!(
            judge(2, Some(r), Some(&done)),
            Verdict::Failed(format!("release 2 failed: {WHY}; release 1 was restored"))
        );
    }

    #[test]
    fn a_status_behind_the_release_is_read_again() {
        let r = release(ReleaseStatus::Failed, Some(WHY));
        assert_eq!(
            judge(2, Some(r), Some("rolling out 1 → 2")),
            Verdict::CatchingUp
        );
        assert_eq!(
            judge(2, Some(r), Some("rolling out 2")),
            Verdict::CatchingUp
        );
        assert_eq!(
            judge(2, Some(r), Some("rolling out 2 → 3")),
            Verdict::Failed(format!(
                "release 2 failed: {WHY}; the stack is now: rolling out 2 → 3"
            ))
        );
    }

    #[test]
    fn the_other_outcomes() {
        let r = release(ReleaseStatus::RollingOut, None);
        assert_eq!(
            judge(2, Some(r), Some("rolling out 1 → 2")),
            Verdict::Pending
        );
        let r = release(ReleaseStatus::Live, None);
        assert_eq!(judge(2, Some(r), Some("live")), Verdict::Live);
        let r = release(ReleaseStatus::Superseded, None);
        assert_eq!(
            judge(2, Some(r), Some("rolling out 2 → 3")),
            Verdict::Failed("release 2 was replaced by a later deploy before it finished".into())
        );
        assert_eq!(
            judge(2, None, None),
            Verdict::Failed("release 2 is no longer retained".into())
        );
    }
}
