//! Exit codes are part of the command-line contract: scripts and CI branch on them.
//! 3 (refused by policy) comes from `berth_client::ClientError::exit_code`.

use std::fmt;

/// Exit code for success.
pub const OK: i32 = 0;
/// Exit code for a failure or invalid input.
pub const FAILURE: i32 = 1;

/// A command's failure that already printed what the user needs, and only sets the exit code.
#[derive(Debug)]
pub struct Silent(pub i32);

impl fmt::Display for Silent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "exit {}", self.0)
    }
}

impl std::error::Error for Silent {}

/// Prints an error (unless it is [`Silent`]) and maps it to the contract's exit code.
pub fn code_of(result: anyhow::Result<()>) -> i32 {
    match result {
        Ok(()) => OK,
        Err(e) => match e.downcast_ref::<Silent>() {
            Some(Silent(code)) => *code,
            None => {
                eprintln!("error: {e:#}");
                FAILURE
            }
        },
    }
}
