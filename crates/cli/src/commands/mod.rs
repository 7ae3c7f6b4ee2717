//! One module per command. Each parses nothing itself (clap does) and calls into a library crate.

pub mod plan;
pub mod render;
pub mod source;
pub mod validate;
pub mod whoami;
