//! Rollbacks: a new release with an older one's content and pinned image ids.

use berth_api::control::{DeployResponse, Release};

use super::deploy::{self, Start};
use super::ReleaseError;
use crate::state::{went_live, Versioned};
use crate::Shared;

/// The release a rollback returns to, among the retained `releases` (oldest first) of a
/// stack whose rollout targets `current`: release `requested` if given (any retained one);
/// by default the newest release that went live ([`went_live`]: not one that failed, nor one
/// replaced before its rollout finished), other than the current one and with other content.
pub fn target<'a>(
    releases: &'a [Versioned<Release>],
    current: Option<&Release>,
    requested: Option<u64>,
    stack: &str,
    env: &str,
) -> Result<&'a Release, ReleaseError> {
    let found = match requested {
        Some(number) => releases.iter().find(|r| r.value.number == number),
        None => releases.iter().rev().find(|r| {
            Some(r.value.number) != current.map(|c| c.number)
                && went_live(&r.value)
                && current.is_none_or(|c| c.spec != r.value.spec)
        }),
    };
    found.map(|r| &r.value).ok_or_else(|| match requested {
        Some(number) => ReleaseError::NotRetained {
            number,
            stack: stack.to_string(),
            env: env.to_string(),
        },
        None => ReleaseError::NoRollbackTarget {
            stack: stack.to_string(),
            env: env.to_string(),
        },
    })
}

/// `berth rollback`: starts a new release with the content and pinned image ids of
/// [`target`]'s choice. Confirmed and forced: it returns to what ran before, so neither the
/// capacity policy nor placement holds it back. In an `approval: N` environment a rollback
/// to a release that went live needs no new approval; to one that never did, it is pending
/// like a deploy.
pub async fn rollback(
    shared: &Shared,
    stack: &str,
    env: &str,
    requested: Option<u64>,
    who: &str,
) -> Result<DeployResponse, ReleaseError> {
    deploy::catch_up(shared).await?;
    let (spec, number, images, exempt) = {
        let view = shared.view.read();
        let releases: Vec<Versioned<Release>> = view
            .releases_of(stack, env)
            .map(|all| all.values().cloned().collect())
            .unwrap_or_default();
        let current = view
            .rollout(stack, env)
            .and_then(|r| view.release(stack, env, r.value.to))
            .map(|r| &r.value);
        let target = target(&releases, current, requested, stack, env)?;
        // A release that went live was approved (or needed no approval) when it ran.
        (
            target.spec.clone(),
            target.number,
            target.images.clone(),
            went_live(target),
        )
    };
    deploy::deploy(
        shared,
        env,
        &spec,
        &Start {
            who,
            confirm: Some(stack),
            plan_id: None,
            rollback_of: Some(number),
            images: Some(images),
            dry_run: false,
            force: true,
            removes_stack: false,
            approved_by: None,
            approval_exempt: exempt,
        },
    )
    .await
}
