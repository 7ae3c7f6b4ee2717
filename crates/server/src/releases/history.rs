//! `berth history`: the retained releases of a stack in one environment.

use berth_api::control::Release;

use super::ReleaseError;
use crate::view::View;

/// Every retained release of `stack` in `env`, newest first, with pinned image ids merged
/// in; refused when there is none.
pub fn history(view: &View, stack: &str, env: &str) -> Result<Vec<Release>, ReleaseError> {
    let releases: Vec<Release> = view
        .releases_of(stack, env)
        .map(|all| all.values().rev().map(|r| r.value.clone()).collect())
        .unwrap_or_default();
    if releases.is_empty() {
        return Err(ReleaseError::NoHistory {
            stack: stack.to_string(),
            env: env.to_string(),
        });
    }
    Ok(releases)
}
