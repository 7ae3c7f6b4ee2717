//! # berth-spec — the stack file
//!
//! Pure: no I/O, no clock, no threads. A shell hands in the file's bytes and gets back either a
//! fully rendered [`model::Stack`] or every [`diag::Diagnostic`] it could find.
//!
//! ## Layout
//! - [`yaml`]   — bytes → a positioned tree, with limits on size, depth and alias expansion.
//! - [`diag`]   — a problem and where it is (`FILE:LINE:COL: message`).
//! - [`model`]  — the rendered, typed stack that releases store and plans diff.
//! - `decode`   — tree → source stack (values, environments, services), checking every field.
//! - `render`   — source stack + environment + `--set` → [`model::Stack`]; canonical YAML/JSON.
//!
//! ## Vocabulary
//! - *source stack*: the file as written, with `values`, every environment and `${…}` templates.
//! - *rendered stack*: one environment, overlays applied, values substituted, defaults explicit;
//!   `${region}` stays until the stack is instantiated per region wave.
//! - *override*: a `--set service.path=value` from the command line.

pub mod diag;
pub mod model;
pub mod yaml;

pub use diag::{Diagnostic, Diagnostics, Pos};
pub use model::Stack;

/// Checks a stack file completely: structure, types, names, the dependency graph, and every
/// environment rendered with its overlay. Returns every problem, sorted by position.
pub fn validate(source: &[u8]) -> Result<(), Diagnostics> {
    let _ = source;
    todo!("validate")
}

/// Renders a stack file for one environment with `--set` overrides (`service.path=value`).
pub fn render(
    source: &[u8],
    environment: &str,
    overrides: &[String],
) -> Result<Stack, Diagnostics> {
    let _ = (source, environment, overrides);
    todo!("render")
}

/// The rendered stack as canonical YAML: keys sorted, strings quoted, byte-identical for equal
/// stacks. The output is itself a valid stack file.
pub fn to_yaml(stack: &Stack) -> String {
    let _ = stack;
    todo!("to_yaml")
}

/// The rendered stack as pretty JSON, byte-identical for equal stacks.
pub fn to_json(stack: &Stack) -> String {
    serde_json::to_string_pretty(stack).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
}
