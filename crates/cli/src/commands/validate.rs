//! `berth validate FILE…`: exit 0 when every file is valid, else one line per error and exit 1.

use crate::exit::{Silent, FAILURE};

use super::source;

/// Arguments of `berth validate`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Stack files to check.
    #[arg(required = true)]
    files: Vec<String>,
}

/// Validates every file, reporting every error of every file before exiting.
pub fn run(args: Args) -> anyhow::Result<()> {
    let mut failed = false;
    for path in &args.files {
        let bytes = match source::read(path) {
            Ok(b) => b,
            Err(e) => {
                eprintln!("{e:#}");
                failed = true;
                continue;
            }
        };
        if let Err(diagnostics) = berth_spec::validate(&bytes) {
            source::print_diagnostics(path, &diagnostics);
            failed = true;
        }
    }
    if failed {
        return Err(Silent(FAILURE).into());
    }
    Ok(())
}
