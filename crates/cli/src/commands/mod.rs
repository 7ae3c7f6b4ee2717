//! One module per command. Each parses nothing itself (clap does) and calls into a library crate.
//!
//! `release` and `wait` are not commands: they hold what `deploy`, `rollback` and `plan` share
//! (the deploy request and the printing of its answer; following a release with `--wait`).

pub mod agent;
pub mod approval;
pub mod audit;
pub mod bench;
pub mod clock_time;
pub mod completions;
pub mod daemons;
pub mod deploy;
pub mod drain;
pub mod events;
pub mod gc;
pub mod history;
pub mod import;
pub mod logs;
pub mod maintenance;
pub mod node;
pub mod nodes;
pub mod plan;
pub mod release;
pub mod render;
pub mod rollback;
pub mod rollout;
pub mod rollout_command;
pub mod rollout_explain;
pub mod rollout_status;
pub mod router_tls;
pub mod secret;
pub mod servers;
pub mod source;
pub mod stack;
pub mod status;
pub mod store;
pub mod user;
pub mod validate;
pub mod wait;
pub mod whoami;
