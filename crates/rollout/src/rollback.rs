//! Which release a failed rollout returns to, if any.
//!
//! An automatic rollback exists to restore what worked. Returning to a release that never went
//! live restores nothing: it fails in turn, rolls "back" to the release that just failed, and the
//! two alternate for ever, each round leaving instances behind (the ping-pong of issue 11). So:
//!
//! 1. **Only a release that once went live** is a rollback target.
//! 2. **The previous release first**: the rollout's `from`, when it went live — what ran just
//!    before. Otherwise the newest other release that went live (a deploy that replaced a
//!    release still rolling out has that unfinished one as `from`, while an older live one is
//!    what actually runs).
//! 3. **At most one automatic rollback in a row**: when the automatic rollback itself fails,
//!    the cluster changed under a release that used to work, and rolling back again would only
//!    repeat the failure elsewhere; the rollout stops and says so.
//!
//! Pure: the shell says which releases went live, this decides.

use std::collections::BTreeSet;

/// Why a failed rollout does not roll back.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NoRollback {
    /// No release other than the failed one ever went live (a first deploy, or a deploy after a
    /// failed first deploy).
    #[error("no earlier release went live; nothing to roll back to")]
    NothingWentLive,
    /// The failed rollout was itself the automatic rollback to this release.
    #[error("the automatic rollback to release {to} failed too; not rolling back again")]
    RollbackFailed {
        /// The release the failed rollback returned to.
        to: u64,
    },
}

/// The release a failed rollout to `failed` rolls back to.
///
/// - `from`: the release the rollout replaced (`None` on a first deploy).
/// - `automatic`: the failed rollout was an automatic rollback.
/// - `went_live`: every retained release that once went live (was fully rolled out).
pub fn rollback_target(
    failed: u64,
    from: Option<u64>,
    automatic: bool,
    went_live: &BTreeSet<u64>,
) -> Result<u64, NoRollback> {
    if automatic {
        return Err(NoRollback::RollbackFailed { to: failed });
    }
    if let Some(from) = from.filter(|f| *f != failed && went_live.contains(f)) {
        return Ok(from);
    }
    went_live
        .iter()
        .rev()
        .copied()
        .find(|n| *n != failed)
        .ok_or(NoRollback::NothingWentLive)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn live(ns: &[u64]) -> BTreeSet<u64> {
        ns.iter().copied().collect()
    }

    #[test]
    fn the_previous_release_when_it_went_live() {
        assert_eq!(rollback_target(3, Some(2), false, &live(&[1, 2])), Ok(2));
        // A manual rollback to an older release (a new number) returns to the one it replaced.
        assert_eq!(rollback_target(4, Some(3), false, &live(&[1, 2, 3])), Ok(3));
    }

    #[test]
    fn never_a_release_that_did_not_go_live() {
        // The ping-pong: release 1 failed on its first deploy, release 2 fails too.
        assert_eq!(
            rollback_target(2, Some(1), false, &live(&[])),
            Err(NoRollback::NothingWentLive)
        );
        assert_eq!(
            rollback_target(1, None, false, &live(&[])),
            Err(NoRollback::NothingWentLive)
        );
        // Only the failed release itself went live (a pure scaling of it failed).
        assert_eq!(
            rollback_target(2, Some(2), false, &live(&[2])),
            Err(NoRollback::NothingWentLive)
        );
    }

    #[test]
    fn the_newest_live_one_when_the_previous_never_went_live() {
        // 1 live, 2 replaced by 3 before it finished, 3 fails: 1 is what still runs.
        assert_eq!(rollback_target(3, Some(2), false, &live(&[1])), Ok(1));
        assert_eq!(rollback_target(5, Some(4), false, &live(&[1, 3])), Ok(3));
    }

    #[test]
    fn an_automatic_rollback_that_fails_does_not_roll_back_again() {
        // 2 failed, the rollback to 1 (from 2) failed: 2 went live once, but no second round.
        assert_eq!(
            rollback_target(1, Some(2), true, &live(&[1, 2])),
            Err(NoRollback::RollbackFailed { to: 1 })
        );
    }

    #[test]
    fn the_messages_say_why() {
        assert_eq!(
            NoRollback::NothingWentLive.to_string(),
            "no earlier release went live; nothing to roll back to"
        );
        assert!(NoRollback::RollbackFailed { to: 1 }
            .to_string()
            .contains("rollback to release 1 failed too"));
    }
}
