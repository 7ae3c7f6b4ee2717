//! The plan as the server shows, identifies and summarises it: pure functions of the base
//! release, the target stack and the secrets' versions.

use std::collections::BTreeMap;

use berth_api::control::{PlanView, Release, ReleaseStatus};
use berth_plan::Plan;
use berth_spec::Stack;

use super::ReleaseError;

/// How the secrets of `target` move against the base release: one line per service and
/// secret whose version changed, `api: secret DB_PASSWORD: version 1 → 2` (versions only,
/// never values). A secret new to a service is already in the plan's `secrets` field diff; a
/// version is compared only when both the base and the target declare the secret.
pub fn secret_changes(
    base: Option<&Release>,
    target: &Stack,
    versions: &BTreeMap<String, u64>,
) -> Vec<(String, String)> {
    let Some(base) = base else {
        return Vec::new();
    };
    let mut lines = Vec::new();
    for (service, svc) in &target.services {
        let Some(old_svc) = base.spec.services.get(service) else {
            continue;
        };
        for name in &svc.secrets {
            if !old_svc.secrets.contains(name) {
                continue;
            }
            let old = base.secrets.get(name).copied().unwrap_or(0);
            let new = versions.get(name).copied().unwrap_or(0);
            if old != new {
                lines.push((
                    service.clone(),
                    format!("{service}: secret {name}: version {old} → {new}"),
                ));
            }
        }
    }
    lines
}

/// The plan as the server shows and identifies it: the pure plan of the specs, plus the secret
/// version changes (which the specs cannot show, values and versions being kept out of them).
/// With secret changes the id covers them too, so `--plan ID` refuses a plan whose secrets
/// moved since.
pub struct FullPlan {
    pub plan: Plan,
    pub secrets: Vec<String>,
    pub id: String,
    /// Instances replaced because of secret changes alone: the blast radius of a plan whose
    /// only changes are secrets.
    pub secret_instances: u64,
    /// The target environment's regions, in rollout order.
    pub regions: Vec<String>,
    /// A line for people below the plan (a retry of a release that did not go live).
    pub note: Option<String>,
}

impl FullPlan {
    /// The full plan of `plan` with the secret version `changes` (service, line).
    pub fn new(plan: Plan, changes: Vec<(String, String)>, target: &Stack) -> FullPlan {
        let regions: Vec<String> = target.regions().to_vec();
        let services: std::collections::BTreeSet<&String> =
            changes.iter().map(|(s, _)| s).collect();
        let secret_instances = services
            .iter()
            .filter_map(|s| target.services.get(*s))
            .map(|s| u64::from(berth_spec::model::desired_replicas(s)) * regions.len() as u64)
            .sum();
        let secrets: Vec<String> = changes.into_iter().map(|(_, line)| line).collect();
        let id = if secrets.is_empty() {
            plan.id.clone()
        } else {
            use sha2::Digest;
            let mut h = sha2::Sha256::new();
            h.update(plan.hash.as_bytes());
            for line in &secrets {
                h.update(b"\n");
                h.update(line.as_bytes());
            }
            let full = hex::encode(h.finalize());
            full[..plan.id.len().min(full.len())].to_string()
        };
        FullPlan {
            plan,
            secrets,
            id,
            secret_instances,
            regions,
            note: None,
        }
    }

    /// Nothing changes: neither the specs nor a secret's version.
    pub fn is_empty(&self) -> bool {
        self.plan.is_empty() && self.secrets.is_empty()
    }
}

/// The plan as the API answers it: its id, the human text, the detail and the placement lines.
pub fn view(full: &FullPlan, placement: Vec<String>) -> PlanView {
    let plan = &full.plan;
    let text = plan_text(full, &placement);
    let mut detail = serde_json::to_value(plan).unwrap_or_default();
    if let Some(obj) = detail.as_object_mut() {
        obj.insert("id".into(), serde_json::json!(full.id));
        obj.insert("secret_changes".into(), serde_json::json!(full.secrets));
    }
    PlanView {
        id: full.id.clone(),
        text,
        detail,
        placement,
    }
}

/// The human plan: the pure plan's rendering with the secrets block before its closing
/// `plan id:` line, which names the full id (the one `--plan ID` takes). A plan whose only
/// changes are secrets gets a header, a blast radius (its services' instances are replaced) and
/// the id, like any other plan.
fn plan_text(full: &FullPlan, placement: &[String]) -> String {
    let plan = &full.plan;
    let mut text = String::new();
    if full.secrets.is_empty() {
        text.push_str(&plan.to_string());
    } else {
        if plan.is_empty() {
            let env = plan.environment.as_deref().unwrap_or("(none)");
            text.push_str(&format!(
                "plan for stack {}, environment {env}\n\n",
                plan.stack
            ));
        } else {
            let rendered = plan.to_string();
            let body = rendered
                .trim_end_matches('\n')
                .rsplit_once('\n')
                .map(|(body, _plan_id_line)| body)
                .unwrap_or("");
            text.push_str(body);
            text.push_str("\n\n");
        }
        text.push_str("secrets (their instances are replaced; values are never shown):\n");
        for line in &full.secrets {
            text.push_str(&format!("  ~ {line}\n"));
        }
        if plan.is_empty() {
            // Every region runs the replaced services (an empty pure plan touches none itself).
            let regions = if full.secret_instances > 0 && !full.regions.is_empty() {
                full.regions.join(", ")
            } else {
                "none".to_string()
            };
            text.push_str(&format!(
                "\nblast radius:\n  instances: {n} to start, {n} to stop (replaced with the new secret versions)\n  worst: 0%; allowed without confirmation: {}\n  regions touched: {regions}\n  destructive: no\n",
                plan.max_capacity_drop,
                n = full.secret_instances,
            ));
        }
        text.push_str(&format!("plan id: {}\n", full.id));
    }
    if let Some(note) = &full.note {
        text.push_str(note);
        text.push('\n');
    }
    if !placement.is_empty() {
        text.push_str("\nplacement (on the cluster as it is now):\n");
        for line in placement {
            text.push_str(&format!("  ! {line}\n"));
        }
    }
    text
}

/// The pure plan of `target` against `base`'s spec.
pub fn plan_of(base: Option<&Release>, target: &Stack) -> Result<Plan, ReleaseError> {
    Plan::new(base.map(|r| &r.spec), target).map_err(|e| ReleaseError::Plan(e.to_string()))
}

/// Why a deploy with no changes against `base` stores nothing, or `None` when it must store a
/// new release anyway: `base` did not go live (it failed), so deploying it again retries it.
pub fn unchanged(base: Option<&Release>, stack: &str, env: &str) -> Option<String> {
    let base = base?;
    match base.status {
        ReleaseStatus::Live => Some(format!(
            "nothing to change: {stack} in {env} already runs this (release {} is live)",
            base.number
        )),
        ReleaseStatus::RollingOut => Some(format!(
            "nothing to change: release {} of {stack} in {env} is already rolling out exactly this; follow it with `berth status {stack}`",
            base.number
        )),
        ReleaseStatus::Failed | ReleaseStatus::Superseded => None,
    }
}

/// For a plan with no changes against a release that did not go live: say that applying it
/// is a retry, not a no-op.
pub fn retry_note(base: Option<&Release>, full: &FullPlan) -> Option<String> {
    let base = base?;
    if !full.is_empty() || matches!(base.status, ReleaseStatus::Live | ReleaseStatus::RollingOut) {
        return None;
    }
    let why = base
        .reason
        .as_deref()
        .map(|r| format!(": {r}"))
        .unwrap_or_default();
    let status = match base.status {
        ReleaseStatus::Failed => "failed",
        _ => "superseded before it went live",
    };
    Some(format!(
        "release {} {status}{why}; deploying this again retries it as a new release",
        base.number
    ))
}

/// One line for `berth history`.
pub fn summarize(full: &FullPlan, rollback_of: Option<u64>) -> String {
    let plan = &full.plan;
    let mut parts = Vec::new();
    if let Some(n) = rollback_of {
        parts.push(format!("rollback to {n}"));
    }
    for s in &plan.services {
        let what = match s.kind {
            berth_plan::ChangeKind::Added => format!("+{}", s.name),
            berth_plan::ChangeKind::Removed => format!("-{}", s.name),
            berth_plan::ChangeKind::Changed => {
                let fields: Vec<&str> = s.fields.iter().map(|f| f.path.as_str()).take(3).collect();
                format!("~{} ({})", s.name, fields.join(", "))
            }
        };
        parts.push(what);
    }
    for line in &full.secrets {
        parts.push(format!("~{line}"));
    }
    if parts.is_empty() {
        "no changes".to_string()
    } else {
        parts.join("; ")
    }
}
