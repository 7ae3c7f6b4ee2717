//! `berth` — one binary for the control plane, the node agent, the router and the command line.
//!
//! ## Layout
//! - `main.rs`      — argument parsing (the command-line contract of DESIGN.md) and dispatch.
//! - `commands/`    — one module per command; each is a thin shell over a library crate.
//! - `exit.rs`      — exit codes: 0 ok, 1 failure or invalid input, 2 usage, 3 refused by policy.

mod commands;
mod exit;

use clap::{Parser, Subcommand};

/// Ship services onto a fleet of machines and keep them running.
#[derive(Parser, Debug)]
#[command(name = "berth", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Check stack files; prints `FILE:LINE:COL: message` per error and exits 1 if any.
    Validate(commands::validate::Args),
    /// Print the fully rendered stack for one environment.
    Render(commands::render::Args),
    /// Show what a deploy would change: the diff, its blast radius, and a plan id.
    Plan(commands::plan::Args),
    /// A tiny HTTP workload that answers with its instance, release and node (for tests and demos).
    Whoami(commands::whoami::Args),
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Validate(args) => commands::validate::run(args),
        Command::Render(args) => commands::render::run(args),
        Command::Plan(args) => commands::plan::run(args),
        Command::Whoami(args) => commands::whoami::run(args),
    };
    std::process::exit(exit::code_of(result));
}
