//! `berth stack rm`: a stack leaves an environment as a release like any other — the live
//! release's content without its services — so the history keeps every release before it and
//! `berth rollback STACK --env E` brings the stack back. It empties every service, so it needs
//! `--confirm STACK` (the deploy's emptying rule does the refusing).

use berth_api::control::DeployResponse;

use super::deploy::{self, Start};
use super::ReleaseError;
use crate::Shared;

/// What the live release of `stack` in `env` becomes without its services; refused (404) when
/// the stack has no release there.
fn emptied(shared: &Shared, stack: &str, env: &str) -> Result<berth_spec::Stack, ReleaseError> {
    let view = shared.view.read();
    let current = view
        .rollout(stack, env)
        .and_then(|r| view.release(stack, env, r.value.to))
        .map(|r| r.value.clone())
        .ok_or_else(|| ReleaseError::NoHistory {
            stack: stack.to_string(),
            env: env.to_string(),
        })?;
    let mut target = current.spec;
    target.services.clear();
    Ok(target)
}

/// Stores release N+1 of `stack` in `env` with no services (its rollout stops every
/// instance), or with `how.dry_run` only plans it. `how.confirm` must be the stack's name
/// unless the stack has nothing left to remove, which answers "nothing to change".
pub async fn remove(
    shared: &Shared,
    stack: &str,
    env: &str,
    how: &Start<'_>,
) -> Result<DeployResponse, ReleaseError> {
    deploy::catch_up(shared).await?;
    let target = emptied(shared, stack, env)?;
    let how = Start {
        removes_stack: true,
        rollback_of: None,
        images: None,
        plan_id: None,
        ..how.clone()
    };
    deploy::deploy(shared, env, &target, &how).await
}
