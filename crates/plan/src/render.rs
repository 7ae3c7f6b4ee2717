//! The human rendering of a plan, like terraform's: `+` added, `~` changed, `-` removed, one line
//! per changed field, then the blast radius and the plan id. Secrets are already masked in the
//! plan's data, so nothing here can leak one.

use std::fmt;

use serde_json::Value;

use crate::{ChangeKind, FieldChange, Plan, ServiceChange, SECRET_MASK};

/// A leaf as JSON (`"1"`, `3`, `["a","b"]`), or the bare mask for a secret.
struct Shown<'a>(&'a Value, bool);

impl fmt::Display for Shown<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.1 {
            f.write_str(SECRET_MASK)
        } else {
            write!(f, "{}", self.0)
        }
    }
}

fn field(f: &mut fmt::Formatter<'_>, c: &FieldChange, indent: &str) -> fmt::Result {
    match (&c.old, &c.new) {
        (Some(o), Some(n)) => writeln!(
            f,
            "{indent}{}: {} → {}",
            c.path,
            Shown(o, c.secret),
            Shown(n, c.secret)
        ),
        (None, Some(n)) => writeln!(f, "{indent}+ {}: {}", c.path, Shown(n, c.secret)),
        (Some(o), None) => writeln!(f, "{indent}- {}: {}", c.path, Shown(o, c.secret)),
        (None, None) => Ok(()),
    }
}

fn plural(n: u64) -> &'static str {
    if n == 1 {
        "instance"
    } else {
        "instances"
    }
}

/// `    runs as: nobody` for a process service whose instances start, so a reviewer sees where
/// its command runs (also when the stack leaves it to the agent).
fn runs_as(f: &mut fmt::Formatter<'_>, s: &ServiceChange) -> fmt::Result {
    match &s.runs_as {
        Some(user) => writeln!(f, "    runs as: {user}"),
        None => Ok(()),
    }
}

/// `  (eu 2 → 0, us 2 → 1)`: a service's counts per region, when it runs in more than one.
fn per_region(s: &ServiceChange) -> String {
    if s.regions.len() < 2 {
        return String::new();
    }
    let parts: Vec<String> = s
        .regions
        .iter()
        .map(|d| format!("{} {} → {}", d.region, d.before, d.after))
        .collect();
    format!("  {}", parts.join(", "))
}

fn service(f: &mut fmt::Formatter<'_>, s: &ServiceChange) -> fmt::Result {
    match s.kind {
        ChangeKind::Added => {
            writeln!(f, "+ service {} ({} {})", s.name, s.after, plural(s.after))?;
            // An empty list on a new service says nothing a reader needs; the JSON keeps it.
            let empty = |c: &&FieldChange| matches!(&c.new, Some(Value::Array(a)) if a.is_empty());
            for c in s.fields.iter().filter(|c| !empty(c)) {
                field(f, c, "    ")?;
            }
            runs_as(f, s)?;
        }
        ChangeKind::Removed => {
            writeln!(
                f,
                "- service {} ({} {})",
                s.name,
                s.before,
                plural(s.before)
            )?;
        }
        ChangeKind::Changed => {
            let how = if s.replaces_instances {
                format!("replace: {} → {} {}", s.before, s.after, plural(s.after))
            } else if s.before != s.after || s.start > 0 || s.stop > 0 {
                format!("scale: {} → {} {}", s.before, s.after, plural(s.after))
            } else {
                "in place".to_string()
            };
            writeln!(f, "~ service {} ({how})", s.name)?;
            for c in &s.fields {
                field(f, c, "    ")?;
            }
            if s.fields.is_empty() {
                writeln!(
                    f,
                    "    (no field changes: the environment's regions changed)"
                )?;
            }
            if s.start > 0 {
                runs_as(f, s)?;
            }
        }
    }
    Ok(())
}

impl fmt::Display for Plan {
    /// Renders the plan for a terminal. Stable enough for people, not for scripts: those use the
    /// JSON form.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let env = self.environment.as_deref().unwrap_or("(none)");
        if self.is_empty() {
            writeln!(
                f,
                "no changes: stack {}, environment {env} is up to date",
                self.stack
            )?;
            return writeln!(f, "plan id: {}", self.id);
        }
        writeln!(f, "plan for stack {}, environment {env}", self.stack)?;
        writeln!(f)?;
        if !self.stack_changes.is_empty() {
            let sign = if self.first_deploy { '+' } else { '~' };
            writeln!(f, "{sign} stack {}", self.stack)?;
            for c in &self.stack_changes {
                field(f, c, "    ")?;
            }
        }
        for s in &self.services {
            service(f, s)?;
        }

        let b = &self.blast_radius;
        writeln!(f)?;
        writeln!(f, "blast radius:")?;
        writeln!(f, "  instances: {} to start, {} to stop", b.start, b.stop)?;
        let stopping: Vec<&ServiceChange> = self.services.iter().filter(|s| s.stop > 0).collect();
        if !stopping.is_empty() {
            writeln!(f, "  capacity lost:")?;
            let width = stopping.iter().map(|s| s.name.len()).max().unwrap_or(0);
            for s in stopping {
                let note = if s.replaces_instances {
                    ", replaced"
                } else {
                    ""
                };
                writeln!(
                    f,
                    "    {:<width$} {:>3}%  ({} → {}{note}){}",
                    s.name,
                    s.capacity_lost_percent,
                    s.before,
                    s.after,
                    per_region(s)
                )?;
            }
        }
        let verdict = if self.exceeds_capacity_drop {
            format!(
                " — exceeds the allowed drop: needs --confirm {}",
                self.stack
            )
        } else {
            String::new()
        };
        match &b.worst_service {
            Some(w) => writeln!(
                f,
                "  worst: {}% ({w}); allowed without confirmation: {}{verdict}",
                b.worst_capacity_lost_percent, self.max_capacity_drop
            )?,
            None => writeln!(
                f,
                "  worst: 0%; allowed without confirmation: {}",
                self.max_capacity_drop
            )?,
        }
        if b.regions_touched.is_empty() {
            writeln!(f, "  regions touched: none")?;
        } else {
            writeln!(f, "  regions touched: {}", b.regions_touched.join(", "))?;
        }
        writeln!(
            f,
            "  destructive: {}",
            if self.destructive { "yes" } else { "no" }
        )?;
        if !self.emptying.is_empty() {
            writeln!(
                f,
                "  needs --confirm {} whatever the environment allows:",
                self.stack
            )?;
            for e in &self.emptying {
                writeln!(f, "    {e}")?;
            }
        }
        if self.approval {
            writeln!(
                f,
                "  approval: required before apply ({} approver(s), not the author)",
                self.approvals_needed.max(1)
            )?;
        }
        for w in &self.warnings {
            writeln!(f, "warning: {w}")?;
        }
        writeln!(f, "plan id: {}", self.id)
    }
}
