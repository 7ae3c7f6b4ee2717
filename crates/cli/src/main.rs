//! `berth` — one binary for the control plane, the node agent, the router and the command line.
//!
//! ## Layout
//! - `main.rs`      — argument parsing (the command-line contract of DESIGN.md) and dispatch.
//! - `context.rs`   — options every command shares, and finding the local `berth up`.
//! - `commands/`    — one module per command; each is a thin shell over a library crate.
//! - `clock.rs`     — the one module that reads the time (clippy.toml forbids it elsewhere).
//! - `exit.rs`      — exit codes: 0 ok, 1 failure or invalid input, 2 usage, 3 refused by policy.

#![deny(unsafe_code)]

mod clock;
mod commands;
mod context;
mod exit;

use clap::{CommandFactory, Parser, Subcommand};
use commands::{agent, daemons};

/// Ship services onto a fleet of machines and keep them running.
#[derive(Parser, Debug)]
#[command(name = "berth", version, about, propagate_version = true)]
struct Cli {
    #[command(flatten)]
    globals: context::Globals,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Server, agent and router in one process on loopback: the quickest way to run berth.
    Up(daemons::UpArgs),
    /// The control plane: API, store and controllers.
    Server(daemons::ServerArgs),
    /// The node agent: runs the instances the server places on this node.
    Agent(agent::AgentArgs),
    /// A router alone, at the edge, following the server's routing table.
    Router(daemons::RouterArgs),
    /// Check stack files; prints `FILE:LINE:COL: message` per error and exits 1 if any.
    Validate(commands::validate::Args),
    /// Write a stack file from another tool's description: `berth import compose`.
    #[command(subcommand)]
    Import(commands::import::Import),
    /// Print the fully rendered stack for one environment.
    Render(commands::render::Args),
    /// Show what a deploy would change: the diff, its blast radius, and a plan id.
    Plan(commands::plan::Args),
    /// Create a release from a stack file and roll it out.
    Deploy(commands::deploy::Args),
    /// Stacks, services and instances with their state.
    Status(commands::status::Args),
    /// The releases of a stack in an environment.
    History(commands::history::Args),
    /// A new release with an older one's content (default: the previous successful one).
    Rollback(commands::rollback::Args),
    /// Manage a deployed stack: `berth stack rm STACK --env E --confirm STACK`.
    #[command(subcommand)]
    Stack(commands::stack::Stack),
    /// Watch and steer a progressive rollout: status, explain, pause, resume, promote, abort.
    #[command(subcommand)]
    Rollout(commands::rollout::Rollout),
    /// Every state change, as it happens with -f.
    Events(commands::events::Args),
    /// The nodes of the cluster.
    Nodes,
    /// The control-plane servers: API address, version, last seen, which one leads and since when.
    Servers,
    /// Manage one node: `berth node rm NAME` removes it from the cluster.
    #[command(subcommand)]
    Node(commands::node::Node),
    /// Move a node's instances elsewhere with zero downtime; it takes no new ones until undrained.
    Drain(commands::drain::Args),
    /// Let a drained node take new instances again.
    Undrain(commands::drain::Args),
    /// Answer a service's traffic with a maintenance page (503), leaving its instances alone.
    Maintenance(commands::maintenance::Args),
    /// Secret values for the names stack files declare (`secrets: [DB_PASSWORD]`).
    #[command(subcommand)]
    Secret(commands::secret::Secret),
    /// Back up or move the store: `berth store export > FILE`, `berth store import FILE`.
    #[command(subcommand)]
    Store(commands::store::StoreCommand),
    /// A service's output.
    Logs(commands::logs::Args),
    /// Every agent removes berth's stopped containers and the images no retained release needs.
    Gc(commands::gc::Args),
    /// Benchmarks that print comparable figures.
    #[command(subcommand)]
    Bench(commands::bench::Bench),
    /// A tiny HTTP workload that answers with its instance, release and node (for tests and demos).
    Whoami(commands::whoami::Args),
    /// Print a shell completion script (bash, zsh, fish, …).
    Completions(commands::completions::CompletionsArgs),
    /// Print berth's man page, or write one per command with --out DIR.
    Man(commands::completions::ManArgs),
    /// Users with a role (viewer, deployer, approver, admin) and their tokens.
    #[command(subcommand)]
    User(commands::user::User),
    /// Your own token: `berth token rotate` replaces it.
    #[command(subcommand)]
    Token(commands::user::Token),
    /// The audit log: who did what, when, from where; `berth audit verify` checks its chain.
    Audit(commands::audit::Args),
    /// Approve a pending plan (`approval: N` environments); the N-th approval runs it.
    Approve(commands::approval::ApproveArgs),
    /// Refuse a pending plan, with a reason; it can never be approved then.
    Reject(commands::approval::RejectArgs),
    /// The plans waiting for approval: id, stack/env, author, approvals so far, expiry.
    Approvals(commands::approval::ListArgs),
}

/// Restores the default SIGPIPE action, so `berth status | head -1` ends quietly like any Unix
/// tool instead of panicking on a closed stdout (Rust ignores SIGPIPE by default).
#[allow(unsafe_code, reason = "signal(2) is unsafe in nix; see SAFETY below")]
fn restore_sigpipe() {
    use nix::sys::signal::{signal, SigHandler, Signal};
    // SAFETY: called first thing in `main`, before any thread or runtime exists, so no other
    // code can be racing on signal dispositions; SIG_DFL installs no Rust handler at all.
    let _ = unsafe { signal(Signal::SIGPIPE, SigHandler::SigDfl) };
}

fn main() {
    restore_sigpipe();
    let cli = Cli::parse();
    let g = &cli.globals;
    let result = match cli.command {
        Command::Up(args) => daemons::up(args),
        Command::Server(args) => daemons::server(args),
        Command::Agent(args) => agent::agent(args, g),
        Command::Router(args) => daemons::router(args, g),
        Command::Validate(args) => commands::validate::run(args),
        Command::Import(which) => commands::import::run(which, g),
        Command::Render(args) => commands::render::run(args, g),
        Command::Plan(args) => commands::plan::run(args, g),
        Command::Deploy(args) => commands::deploy::run(args, g),
        Command::Status(args) => commands::status::run(args, g),
        Command::History(args) => commands::history::run(args, g),
        Command::Rollback(args) => commands::rollback::run(args, g),
        Command::Stack(which) => commands::stack::run(which, g),
        Command::Rollout(which) => commands::rollout::run(which, g),
        Command::Events(args) => commands::events::run(args, g),
        Command::Nodes => commands::nodes::run(g),
        Command::Servers => commands::servers::run(g),
        Command::Node(which) => commands::node::run(which, g),
        Command::Drain(args) => commands::drain::run(args, true, g),
        Command::Undrain(args) => commands::drain::run(args, false, g),
        Command::Maintenance(args) => commands::maintenance::run(args, g),
        Command::Logs(args) => commands::logs::run(args, g),
        Command::Secret(which) => commands::secret::run(which, g),
        Command::Store(which) => commands::store::run(which),
        Command::Gc(args) => commands::gc::run(args, g),
        Command::Bench(which) => commands::bench::run(which),
        Command::Whoami(args) => commands::whoami::run(args),
        Command::Completions(args) => commands::completions::completions(args, Cli::command()),
        Command::Man(args) => commands::completions::man(args, Cli::command()),
        Command::User(which) => commands::user::run(which, g),
        Command::Token(which) => commands::user::run_token(which, g),
        Command::Audit(args) => commands::audit::run(args, g),
        Command::Approve(args) => commands::approval::approve(args, g),
        Command::Reject(args) => commands::approval::reject(args, g),
        Command::Approvals(args) => commands::approval::list(args, g),
    };
    std::process::exit(exit::code_of(result));
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    /// Every command and every flag says what it is for in `--help` (issue 17: `deploy -f`,
    /// `agent --data-dir`, `server --api`, `router --listen` had none). A new flag without a
    /// doc comment fails here, naming it.
    #[test]
    fn every_command_and_flag_has_help_text() {
        fn walk(command: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for arg in command.get_arguments() {
                let id = arg.get_id().as_str();
                if matches!(id, "help" | "version") {
                    continue;
                }
                if arg.get_help().is_none() && arg.get_long_help().is_none() {
                    missing.push(format!("{path} {id}"));
                }
            }
            for sub in command.get_subcommands() {
                let name = format!("{path} {}", sub.get_name());
                if sub.get_about().is_none() && sub.get_long_about().is_none() {
                    missing.push(name.clone());
                }
                walk(sub, &name, missing);
            }
        }
        let mut missing = Vec::new();
        walk(&super::Cli::command(), "berth", &mut missing);
        assert!(
            missing.is_empty(),
            "give these a doc comment (it becomes their --help):\n{}",
            missing.join("\n")
        );
    }

    #[test]
    fn the_command_line_definition_is_consistent() {
        super::Cli::command().debug_assert();
    }
}
