//! `berth plan`: the diff between the live (or `--against FILE`) release and the proposed one,
//! with its blast radius and a plan id.

use anyhow::Context;

use super::{release, source};
use crate::context::{client_error, print_json, runtime, Globals, Output};
use crate::exit::{Silent, FAILURE};

/// Arguments of `berth plan`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The stack file.
    #[arg(short = 'f', long = "file")]
    pub file: String,
    /// The environment to plan for.
    #[arg(long)]
    pub env: String,
    /// Override a rendered field: `service.path=value`, e.g. `web.env.VERSION=2`.
    #[arg(long = "set", value_name = "SVC.PATH=VALUE")]
    pub set: Vec<String>,
    /// Plan offline against another stack file instead of the live release.
    #[arg(long, value_name = "OLD_FILE")]
    pub against: Option<String>,
}

/// Renders one file for the plan, printing its diagnostics when it is invalid.
fn render(path: &str, env: &str, set: &[String]) -> anyhow::Result<berth_spec::Stack> {
    let bytes = source::read(path)?;
    berth_spec::render(&bytes, env, set).map_err(|d| {
        source::print_diagnostics(path, &d);
        Silent(FAILURE).into()
    })
}

/// `berth plan` against the live release.
fn plan_live(args: &Args, globals: &Globals) -> anyhow::Result<()> {
    let client = globals.client()?;
    let req = release::request(&args.file, &args.env, &args.set, None, None)?;
    runtime()?.block_on(async {
        let resp = client.plan(&req).await.map_err(client_error)?;
        if globals.json() {
            print_json(&resp)
        } else {
            print!("{}", resp.plan.text);
            Ok(())
        }
    })
}

/// Prints the plan.
pub fn run(args: Args, globals: &Globals) -> anyhow::Result<()> {
    let Some(against) = &args.against else {
        return plan_live(&args, globals);
    };
    let target = render(&args.file, &args.env, &args.set)?;
    let base = render(against, &args.env, &[])?;
    let plan = berth_plan::Plan::new(Some(&base), &target).context("cannot compute the plan")?;
    match globals.output {
        Output::Text => print!("{plan}"),
        Output::Json => println!(
            "{}",
            serde_json::to_string_pretty(&plan).context("cannot print the plan as JSON")?
        ),
    }
    Ok(())
}
