//! Approvals (`approval: N` on an environment): a deploy or rollback there is stored as a
//! *pending* plan (`/approvals/STACK/ENV/PLAN_ID`) instead of a release, and runs — exactly as
//! its author's deploy would have, `who` the author — once N distinct users other than the
//! author approved that plan id while it was still the plan and before it expired.
//!
//! - [`decide`] is the whole rule, pure: who may approve, the count, expiry and staleness.
//! - [`pend`], [`approve`], [`reject`] and [`list`] are the thin shell: read the record and the
//!   current plan, call [`decide`], write the result.

use std::collections::BTreeMap;

use berth_api::control::{ApprovalView, ApproveResponse};
use berth_spec::Stack;
use berth_store::{Compare, Op, Txn};
use serde::{Deserialize, Serialize};

use crate::releases::{self, ReleaseError, Start};
use crate::state::{decode, encode, StateError};
use crate::{keys, Shared};

/// The longest reason `berth reject` stores (characters beyond are refused, not cut).
pub const MAX_REASON_CHARS: usize = 1000;

/// A deploy or rollback waiting for its approvals: the request as the server will run it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingApproval {
    pub stack: String,
    pub env: String,
    /// The plan id approvers approve; the run is refused if the plan is no longer this one.
    pub plan_id: String,
    /// Who asked (the release's `who` once it runs); never one of its approvers.
    pub author: String,
    /// The rendered stack, as the author's request rendered it.
    pub target: Stack,
    /// The author's `--confirm`.
    #[serde(default)]
    pub confirm: Option<String>,
    /// The author's `--force`.
    #[serde(default)]
    pub force: bool,
    /// A rollback: the release it returns to, and that release's pinned image ids.
    #[serde(default)]
    pub rollback_of: Option<u64>,
    #[serde(default)]
    pub images: Option<BTreeMap<String, String>>,
    /// `berth stack rm`.
    #[serde(default)]
    pub removes_stack: bool,
    pub created_ms: u64,
    pub expires_ms: u64,
    /// `approval: N`.
    pub needed: u32,
    /// The distinct users who approved so far, in order.
    #[serde(default)]
    pub approved_by: Vec<String>,
    /// Set by `berth reject`: it can never be approved then.
    #[serde(default)]
    pub rejected: Option<Rejection>,
}

/// Who rejected a pending plan, when and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rejection {
    pub by: String,
    pub reason: String,
    pub at_ms: u64,
}

impl PendingApproval {
    /// `pending`, `rejected` or `expired` at `now_ms`.
    pub fn status(&self, now_ms: u64) -> &'static str {
        if self.rejected.is_some() {
            "rejected"
        } else if now_ms >= self.expires_ms {
            "expired"
        } else {
            "pending"
        }
    }

    /// As `berth approvals` shows it.
    pub fn view(&self, now_ms: u64) -> ApprovalView {
        ApprovalView {
            stack: self.stack.clone(),
            env: self.env.clone(),
            plan_id: self.plan_id.clone(),
            author: self.author.clone(),
            approved_by: self.approved_by.clone(),
            needed: self.needed,
            created_ms: self.created_ms,
            expires_ms: self.expires_ms,
            status: self.status(now_ms).to_string(),
            rejected: self
                .rejected
                .as_ref()
                .map(|r| format!("by {}: {}", r.by, r.reason)),
            rollback_of: self.rollback_of,
        }
    }
}

/// Who is approving: the caller's name, and whether it holds the approve capability for the
/// plan's stack and environment (the policy table checked it; the rule does not assume so).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Approver {
    pub name: String,
    pub may_approve: bool,
}

/// What one more approval does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Recorded; `have` of `needed` now.
    Recorded { have: u32, needed: u32 },
    /// This is the N-th: run the plan, approved by these users.
    Run { approved_by: Vec<String> },
}

/// Why an approval is refused (nothing changes).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("plan {plan} of {stack} in {env} was rejected by {by}: {reason}; it cannot be approved. The author can plan and deploy again to ask anew")]
    Rejected {
        plan: String,
        stack: String,
        env: String,
        by: String,
        reason: String,
    },
    #[error("plan {plan} of {stack} in {env} expired {ago} ago (its approval_timeout passed): it cannot be approved any more; the author deploys again to ask anew")]
    Expired {
        plan: String,
        stack: String,
        env: String,
        ago: String,
    },
    #[error("{who} may not approve plans of {stack} in {env}: that takes the approve capability in their scope (roles approver or admin; see `berth user add`)")]
    NotAllowed {
        who: String,
        stack: String,
        env: String,
    },
    #[error("{who} requested plan {plan}: the author of a plan cannot approve it; another user with the approve capability must (`berth approve {stack} --env {env} --plan {plan}`)")]
    Author {
        who: String,
        plan: String,
        stack: String,
        env: String,
    },
    #[error("{who} already approved plan {plan} ({have}/{needed}): its approvals must come from {needed} distinct users, none of them its author")]
    Already {
        who: String,
        plan: String,
        have: u32,
        needed: u32,
    },
    #[error("plan {plan} of {stack} in {env} is void: the live state moved since it was requested (the plan is now {now}), so approving it would run something nobody reviewed; nothing was changed. The author deploys again to ask for approval of the current plan")]
    Stale {
        plan: String,
        now: String,
        stack: String,
        env: String,
    },
}

/// The rule, pure: may `caller` approve `pending` at `now_ms`, while the plan computed from the
/// live state is `current_plan`, and what does the approval do. Checked in this order: a
/// rejected or expired plan, a caller without the capability, the author, a second approval by
/// the same user, a void (stale) plan; then the count.
pub fn decide(
    pending: &PendingApproval,
    caller: &Approver,
    now_ms: u64,
    current_plan: &str,
) -> Result<Decision, Refusal> {
    let (plan, stack, env) = (
        pending.plan_id.clone(),
        pending.stack.clone(),
        pending.env.clone(),
    );
    if let Some(r) = &pending.rejected {
        return Err(Refusal::Rejected {
            plan,
            stack,
            env,
            by: r.by.clone(),
            reason: r.reason.clone(),
        });
    }
    if now_ms >= pending.expires_ms {
        return Err(Refusal::Expired {
            plan,
            stack,
            env,
            ago: berth_spec::model::Duration::from_millis(now_ms - pending.expires_ms).to_string(),
        });
    }
    if !caller.may_approve {
        return Err(Refusal::NotAllowed {
            who: caller.name.clone(),
            stack,
            env,
        });
    }
    if caller.name == pending.author {
        return Err(Refusal::Author {
            who: caller.name.clone(),
            plan,
            stack,
            env,
        });
    }
    let needed = pending.needed.max(1);
    let have = u32::try_from(pending.approved_by.len()).unwrap_or(u32::MAX);
    if pending.approved_by.contains(&caller.name) {
        return Err(Refusal::Already {
            who: caller.name.clone(),
            plan,
            have,
            needed,
        });
    }
    if current_plan != pending.plan_id {
        return Err(Refusal::Stale {
            plan,
            now: current_plan.to_string(),
            stack,
            env,
        });
    }
    let mut approved_by = pending.approved_by.clone();
    approved_by.push(caller.name.clone());
    let have = have.saturating_add(1);
    if have >= needed {
        Ok(Decision::Run { approved_by })
    } else {
        Ok(Decision::Recorded { have, needed })
    }
}

/// What approving, rejecting or listing can refuse.
#[derive(Debug, thiserror::Error)]
pub enum ApprovalError {
    /// The rule refused it.
    #[error(transparent)]
    Refused(#[from] Refusal),
    /// No such pending plan.
    #[error("no plan {plan} of {stack} in {env} waits for approval: see `berth approvals --stack {stack} --env {env}` (one that ran is in `berth history {stack} --env {env}`)")]
    NotFound {
        plan: String,
        stack: String,
        env: String,
    },
    /// `berth reject` without a usable reason.
    #[error("{0}")]
    BadInput(String),
    /// The record kept changing under concurrent approvals.
    #[error("plan {0}'s approvals kept changing while recording this one: try again")]
    KeptChanging(String),
    /// Planning or running the release failed.
    #[error(transparent)]
    Release(#[from] ReleaseError),
    /// The store failed.
    #[error(transparent)]
    State(#[from] StateError),
}

/// Stores `target`'s plan `plan_id` in `env` as pending (or finds it pending already) and
/// answers the refusal a deploy there gives: exit 3, with the plan id and what to run. A plan
/// that was rejected or expired is asked for anew.
pub async fn pend(
    shared: &Shared,
    env: &str,
    target: &Stack,
    how: &Start<'_>,
    plan_id: &str,
) -> Result<ReleaseError, ReleaseError> {
    let key = keys::approval(&target.stack, env, plan_id);
    let now = shared.clock.now_ms();
    let existing = shared.store.get(&key).await.map_err(StateError::from)?;
    if let Some(kv) = &existing {
        let record: PendingApproval = decode(&key, &kv.value)?;
        if record.status(now) == "pending" {
            return Ok(ReleaseError::Pending {
                view: Box::new(record.view(now)),
            });
        }
    }
    let (needed, timeout) = target
        .environment()
        .map(|(_, e)| (e.approval.max(1), e.approval_timeout.millis))
        .unwrap_or((1, berth_spec::model::DEFAULT_APPROVAL_TIMEOUT.millis));
    let record = PendingApproval {
        stack: target.stack.clone(),
        env: env.to_string(),
        plan_id: plan_id.to_string(),
        author: how.who.to_string(),
        target: target.clone(),
        confirm: how.confirm.map(str::to_string),
        force: how.force,
        rollback_of: how.rollback_of,
        images: how.images.clone(),
        removes_stack: how.removes_stack,
        created_ms: now,
        expires_ms: now.saturating_add(timeout),
        needed,
        approved_by: Vec::new(),
        rejected: None,
    };
    let rev = existing.map(|kv| kv.mod_revision).unwrap_or(0);
    let written = shared
        .store
        .cas(&key, rev, encode(&record))
        .await
        .map_err(StateError::from)?;
    match written {
        Some(revision) => {
            shared.view.caught_up(revision).await;
            Ok(ReleaseError::Pending {
                view: Box::new(record.view(now)),
            })
        }
        // The same plan was asked for at the same moment: that request's record stands.
        None => Err(ReleaseError::ConcurrentDeploy),
    }
}

/// Reads one pending record and its `mod_revision`.
async fn read(
    shared: &Shared,
    stack: &str,
    env: &str,
    plan: &str,
) -> Result<(PendingApproval, i64), ApprovalError> {
    let key = keys::approval(stack, env, plan);
    match shared.store.get(&key).await.map_err(StateError::from)? {
        Some(kv) => Ok((decode(&key, &kv.value)?, kv.mod_revision)),
        None => Err(ApprovalError::NotFound {
            plan: plan.to_string(),
            stack: stack.to_string(),
            env: env.to_string(),
        }),
    }
}

/// How many times an approval is retried when another approval changed the record meanwhile.
const RETRIES: usize = 5;

/// `berth approve STACK --env E --plan ID`: records `caller`'s approval; the N-th runs the
/// plan as its author's deploy would have (who = the author, `approved_by` on the release).
pub async fn approve(
    shared: &Shared,
    stack: &str,
    env: &str,
    plan: &str,
    caller: &Approver,
) -> Result<ApproveResponse, ApprovalError> {
    for _ in 0..RETRIES {
        let (record, rev) = read(shared, stack, env, plan).await?;
        let now = shared.clock.now_ms();
        // Expired or rejected plans are refused before anything is planned.
        let current = if record.status(now) == "pending" {
            releases::plan(shared, env, &record.target).await?.plan.id
        } else {
            record.plan_id.clone()
        };
        let key = keys::approval(stack, env, plan);
        match decide(&record, caller, now, &current)? {
            Decision::Recorded { have, needed } => {
                let mut updated = record.clone();
                updated.approved_by.push(caller.name.clone());
                let written = shared
                    .store
                    .cas(&key, rev, encode(&updated))
                    .await
                    .map_err(StateError::from)?;
                let Some(revision) = written else { continue };
                shared.view.caught_up(revision).await;
                return Ok(ApproveResponse {
                    message: format!(
                        "{} approved plan {plan} of {stack} in {env} ({have}/{needed}); it runs when {} more approve",
                        caller.name,
                        needed - have
                    ),
                    approval: updated.view(now),
                    deploy: None,
                });
            }
            Decision::Run { approved_by } => {
                let how = Start {
                    who: &record.author,
                    confirm: record.confirm.as_deref(),
                    plan_id: Some(&record.plan_id),
                    rollback_of: record.rollback_of,
                    images: record.images.clone(),
                    dry_run: false,
                    force: record.force,
                    removes_stack: record.removes_stack,
                    approved_by: Some(&approved_by),
                    approval_exempt: false,
                };
                let deployed = match releases::deploy(shared, env, &record.target, &how).await {
                    Err(ReleaseError::PlanMoved { now, .. }) => {
                        return Err(Refusal::Stale {
                            plan: plan.to_string(),
                            now,
                            stack: stack.to_string(),
                            env: env.to_string(),
                        }
                        .into())
                    }
                    other => other?,
                };
                // Done: the pending record goes (the release records its approvers).
                let txn = Txn {
                    compares: vec![Compare::mod_revision(&key, rev)],
                    success: vec![Op::delete(&key)],
                    failure: vec![],
                };
                let resp = shared.store.txn(txn).await.map_err(StateError::from)?;
                shared.view.caught_up(resp.revision).await;
                let mut updated = record.clone();
                updated.approved_by = approved_by.clone();
                let what = match deployed.release {
                    Some(n) => format!("release {n} is rolling out"),
                    None => deployed
                        .unchanged
                        .clone()
                        .unwrap_or_else(|| "nothing to change".to_string()),
                };
                return Ok(ApproveResponse {
                    message: format!(
                        "{} approved plan {plan} of {stack} in {env} ({}/{}), approved by {}: {what} (who: {})",
                        caller.name,
                        approved_by.len(),
                        record.needed.max(1),
                        approved_by.join(", "),
                        record.author
                    ),
                    approval: updated.view(now),
                    deploy: Some(deployed),
                });
            }
        }
    }
    Err(ApprovalError::KeptChanging(plan.to_string()))
}

/// `berth reject STACK --env E --plan ID --reason TEXT`: refuses a pending plan for good.
pub async fn reject(
    shared: &Shared,
    stack: &str,
    env: &str,
    plan: &str,
    by: &str,
    reason: &str,
) -> Result<ApprovalView, ApprovalError> {
    let reason = reason.trim();
    if reason.is_empty() {
        return Err(ApprovalError::BadInput(
            "reason: say why the plan is rejected (`--reason TEXT`); nothing was changed".into(),
        ));
    }
    if reason.chars().count() > MAX_REASON_CHARS {
        return Err(ApprovalError::BadInput(format!(
            "reason: at most {MAX_REASON_CHARS} characters; nothing was changed"
        )));
    }
    for _ in 0..RETRIES {
        let (record, rev) = read(shared, stack, env, plan).await?;
        let now = shared.clock.now_ms();
        if let Some(r) = &record.rejected {
            return Err(Refusal::Rejected {
                plan: plan.to_string(),
                stack: stack.to_string(),
                env: env.to_string(),
                by: r.by.clone(),
                reason: r.reason.clone(),
            }
            .into());
        }
        let mut updated = record;
        updated.rejected = Some(Rejection {
            by: by.to_string(),
            reason: reason.to_string(),
            at_ms: now,
        });
        let key = keys::approval(stack, env, plan);
        if let Some(revision) = shared
            .store
            .cas(&key, rev, encode(&updated))
            .await
            .map_err(StateError::from)?
        {
            shared.view.caught_up(revision).await;
            return Ok(updated.view(now));
        }
    }
    Err(ApprovalError::KeptChanging(plan.to_string()))
}

/// `berth approvals [--stack S] [--env E]`: the plans still waiting (not rejected, not
/// expired), oldest first.
pub async fn list(
    shared: &Shared,
    stack: Option<&str>,
    env: Option<&str>,
) -> Result<Vec<ApprovalView>, ApprovalError> {
    let prefix = match (stack, env) {
        (Some(s), Some(e)) => keys::approvals(s, e),
        (Some(s), None) => format!("{}{s}/", keys::APPROVALS),
        _ => keys::APPROVALS.to_string(),
    };
    let now = shared.clock.now_ms();
    let range = shared
        .store
        .range(&prefix)
        .await
        .map_err(StateError::from)?;
    let mut out = Vec::new();
    for kv in range.kvs {
        let record: PendingApproval = decode(&kv.key, &kv.value)?;
        if env.is_some_and(|e| e != record.env) || record.status(now) != "pending" {
            continue;
        }
        out.push(record.view(now));
    }
    out.sort_by_key(|v| v.created_ms);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pending(needed: u32, approved_by: &[&str]) -> PendingApproval {
        let source = "stack: shop\nenvironments:\n  prod:\n    regions: [local]\n    approval: 2\nservices:\n  web:\n    image: example/web:1\n";
        PendingApproval {
            stack: "shop".into(),
            env: "prod".into(),
            plan_id: "ab12cd34ef56".into(),
            author: "alice".into(),
            target: berth_spec::render(source.as_bytes(), "prod", &[]).expect("stack"),
            confirm: None,
            force: false,
            rollback_of: None,
            images: None,
            removes_stack: false,
            created_ms: 1_000,
            expires_ms: 11_000,
            needed,
            approved_by: approved_by.iter().map(|s| s.to_string()).collect(),
            rejected: None,
        }
    }

    fn who(name: &str) -> Approver {
        Approver {
            name: name.into(),
            may_approve: true,
        }
    }

    const PLAN: &str = "ab12cd34ef56";

    #[test]
    fn the_author_cannot_approve_their_own_plan() {
        let err = decide(&pending(1, &[]), &who("alice"), 2_000, PLAN).expect_err("author");
        assert!(matches!(err, Refusal::Author { .. }), "{err:?}");
        assert!(err
            .to_string()
            .contains("the author of a plan cannot approve it"));
    }

    #[test]
    fn two_distinct_approvers_are_needed_where_approval_is_two() {
        let p = pending(2, &[]);
        assert_eq!(
            decide(&p, &who("bob"), 2_000, PLAN),
            Ok(Decision::Recorded { have: 1, needed: 2 })
        );
        let p = pending(2, &["bob"]);
        let again = decide(&p, &who("bob"), 2_000, PLAN).expect_err("the same user twice");
        assert!(
            matches!(
                again,
                Refusal::Already {
                    have: 1,
                    needed: 2,
                    ..
                }
            ),
            "{again:?}"
        );
        assert_eq!(
            decide(&p, &who("carol"), 2_000, PLAN),
            Ok(Decision::Run {
                approved_by: vec!["bob".into(), "carol".into()]
            })
        );
    }

    #[test]
    fn approval_true_means_one_approver() {
        assert_eq!(
            decide(&pending(1, &[]), &who("bob"), 2_000, PLAN),
            Ok(Decision::Run {
                approved_by: vec!["bob".into()]
            })
        );
        // A count of 0 in a record still needs one (an environment without approval never
        // makes a pending record).
        assert!(matches!(
            decide(&pending(0, &[]), &who("bob"), 2_000, PLAN),
            Ok(Decision::Run { .. })
        ));
    }

    #[test]
    fn an_expired_plan_is_refused_from_its_expiry_on() {
        let p = pending(1, &[]);
        assert!(decide(&p, &who("bob"), 10_999, PLAN).is_ok());
        let err = decide(&p, &who("bob"), 11_000, PLAN).expect_err("expired");
        assert!(matches!(err, Refusal::Expired { .. }), "{err:?}");
        assert_eq!(p.status(11_000), "expired");
        assert_eq!(p.status(10_999), "pending");
    }

    #[test]
    fn a_stale_plan_is_void_and_says_what_the_plan_is_now() {
        let err = decide(&pending(1, &[]), &who("bob"), 2_000, "999999999999").expect_err("stale");
        assert!(
            matches!(&err, Refusal::Stale { now, .. } if now == "999999999999"),
            "{err:?}"
        );
        assert!(err.to_string().contains("is void"), "{err}");
    }

    #[test]
    fn a_rejected_plan_cannot_be_approved_and_a_caller_without_the_capability_is_refused() {
        let mut p = pending(1, &[]);
        let denied = decide(
            &p,
            &Approver {
                name: "dave".into(),
                may_approve: false,
            },
            2_000,
            PLAN,
        )
        .expect_err("no capability");
        assert!(matches!(denied, Refusal::NotAllowed { .. }), "{denied:?}");
        p.rejected = Some(Rejection {
            by: "carol".into(),
            reason: "not on a Friday".into(),
            at_ms: 1_500,
        });
        let err = decide(&p, &who("bob"), 2_000, PLAN).expect_err("rejected");
        assert!(
            err.to_string()
                .contains("rejected by carol: not on a Friday"),
            "{err}"
        );
        assert_eq!(p.status(2_000), "rejected");
    }

    #[test]
    fn a_record_reads_back_as_written() {
        let p = pending(2, &["bob"]);
        let back: PendingApproval = decode("/approvals/shop/prod/x", &encode(&p)).expect("decodes");
        assert_eq!(back, p);
    }
}
