//! What an import found besides the stack: errors, warnings (keys berth cannot map, each with
//! what berth does instead), notes (choices it made) and the mapping of every key it did map.

use serde::Serialize;

use crate::tree::At;

/// One message about a place in a Compose file.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Item {
    pub at: At,
    pub message: String,
}

/// A Compose key and the berth field it became, for `--output json`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Mapped {
    #[serde(skip)]
    pub at: At,
    /// The Compose service (empty for top-level keys).
    pub service: String,
    /// The Compose key, as a path (`deploy.resources.limits.memory`).
    pub compose: String,
    /// The berth field (`services.web.resources.memory`).
    pub berth: String,
    /// Why, where a choice was made.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub note: String,
}

/// Everything an import reports, gathered as it goes so one run shows every problem.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    pub errors: Vec<Item>,
    pub warnings: Vec<Item>,
    pub notes: Vec<Item>,
    pub mapped: Vec<Mapped>,
}

impl Report {
    /// Something that stops the import (no stack is written).
    pub fn error(&mut self, at: At, message: impl Into<String>) {
        self.errors.push(Item {
            at,
            message: message.into(),
        });
    }

    /// A key berth cannot map, with what berth does instead; an error under `--strict`.
    pub fn warn(&mut self, at: At, message: impl Into<String>) {
        self.warnings.push(Item {
            at,
            message: message.into(),
        });
    }

    /// A choice the import made, also written as a comment in the stack.
    pub fn note(&mut self, at: At, message: impl Into<String>) {
        self.notes.push(Item {
            at,
            message: message.into(),
        });
    }

    /// Records that `compose` (in `service`) became `berth`.
    pub fn mapped(&mut self, at: At, service: &str, compose: &str, berth: &str, note: &str) {
        self.mapped.push(Mapped {
            at,
            service: service.to_string(),
            compose: compose.to_string(),
            berth: berth.to_string(),
            note: note.to_string(),
        });
    }

    /// Sorted by file and position, each message once, so output is deterministic.
    pub fn sort(&mut self) {
        for v in [&mut self.errors, &mut self.warnings, &mut self.notes] {
            v.sort();
            v.dedup();
        }
        self.mapped
            .sort_by(|a, b| a.at.cmp(&b.at).then(a.berth.cmp(&b.berth)));
        self.mapped.dedup();
    }
}
