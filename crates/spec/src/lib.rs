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

#![forbid(unsafe_code)]

#[cfg(test)]
mod clock;
mod decode;
pub mod diag;
pub mod model;
mod render;
pub mod yaml;

pub use diag::{Diagnostic, Diagnostics, Pos};
pub use model::Stack;

/// Checks a stack file completely: structure, types, names, the dependency graph, and every
/// environment rendered with its overlay. Returns every problem, sorted by position (problems
/// without a position first), each reported once.
pub fn validate(source: &[u8]) -> Result<(), Diagnostics> {
    let root = parse(source)?;
    let src = decode::decode(&root);
    finish(render::validate_all(&src))
}

/// Renders a stack file for one environment with `--set` overrides (`service.path=value`).
///
/// The literal parts of the file must be valid (an error in another environment's overlay
/// fails the render too); the services are checked with this environment's values and the
/// overrides. Run [`validate`] to check every environment.
pub fn render(
    source: &[u8],
    environment: &str,
    overrides: &[String],
) -> Result<Stack, Diagnostics> {
    let root = parse(source)?;
    let src = decode::decode(&root);
    render::render_named(&src, environment, overrides).map_err(sorted)
}

/// The rendered stack as canonical YAML: keys sorted, strings quoted, byte-identical for equal
/// stacks. The output is itself a valid stack file.
pub fn to_yaml(stack: &Stack) -> String {
    match serde_json::to_value(stack) {
        Ok(v) => render::yaml_out::emit(&v),
        // Serialising plain structs, maps and strings cannot fail; say so rather than panic.
        Err(e) => format!("# cannot serialise the stack: {e}\n"),
    }
}

/// Bytes → tree, with an empty document reported as such.
fn parse(source: &[u8]) -> Result<yaml::Node, Diagnostics> {
    match yaml::parse(source, &yaml::Limits::default()) {
        Ok(Some(root)) => Ok(root),
        Ok(None) => Err(Diagnostics(vec![Diagnostic::global(
            "the file is empty; expected a stack with `stack`, `environments` and `services`",
        )])),
        Err(d) => Err(Diagnostics(vec![d])),
    }
}

fn sorted(mut diags: Vec<Diagnostic>) -> Diagnostics {
    diags.sort();
    diags.dedup();
    Diagnostics(diags)
}

fn finish(diags: Vec<Diagnostic>) -> Result<(), Diagnostics> {
    if diags.is_empty() {
        Ok(())
    } else {
        Err(sorted(diags))
    }
}

/// The rendered stack as pretty JSON, byte-identical for equal stacks.
pub fn to_json(stack: &Stack) -> String {
    serde_json::to_string_pretty(stack).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
}
