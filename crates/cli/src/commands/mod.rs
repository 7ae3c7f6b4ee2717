//! One module per command. Each parses nothing itself (clap does) and calls into a library crate.

pub mod agent;
pub mod bench;
pub mod cluster;
pub mod daemons;
pub mod gc;
pub mod node;
pub mod plan;
pub mod render;
pub mod router_tls;
pub mod secret;
pub mod source;
pub mod validate;
pub mod whoami;
