//! `berth render -f FILE --env E [--set …]`: the fully rendered stack, byte-identical for equal input.

use crate::exit::{Silent, FAILURE};

use super::source;
use crate::context::{Globals, Output};

/// Arguments of `berth render`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The stack file.
    #[arg(short = 'f', long = "file")]
    file: String,
    /// The environment to render.
    #[arg(long)]
    env: String,
    /// Override a rendered field: `service.path=value`, e.g. `web.env.VERSION=2`.
    #[arg(long = "set", value_name = "SVC.PATH=VALUE")]
    set: Vec<String>,
}

/// Renders the stack and prints it on stdout.
pub fn run(args: Args, globals: &Globals) -> anyhow::Result<()> {
    let bytes = source::read(&args.file)?;
    match berth_spec::render(&bytes, &args.env, &args.set) {
        Ok(stack) => {
            match globals.output {
                Output::Text => print!("{}", berth_spec::to_yaml(&stack)),
                Output::Json => println!("{}", berth_spec::to_json(&stack)),
            }
            Ok(())
        }
        Err(diagnostics) => {
            source::print_diagnostics(&args.file, &diagnostics);
            Err(Silent(FAILURE).into())
        }
    }
}
