//! `berth events`: every state change, and with `-f` the new ones as they happen.

use anyhow::Context;
use futures::StreamExt;

use crate::context::{client_error, runtime, Globals};

/// Arguments of `berth events`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Keep streaming new changes.
    #[arg(short = 'f', long)]
    follow: bool,
    /// Start after this store revision (the first column of an earlier `berth events`).
    #[arg(long, value_name = "REV")]
    since: Option<i64>,
    /// Only this stack's changes.
    #[arg(long, value_name = "STACK")]
    stack: Option<String>,
    /// Only this environment's changes.
    #[arg(long, value_name = "ENV")]
    env: Option<String>,
}

/// `berth events`.
pub fn run(args: Args, globals: &Globals) -> anyhow::Result<()> {
    let client = globals.client()?;
    runtime()?.block_on(async {
        let mut stream = Box::pin(client.events_of(
            args.follow,
            args.since,
            args.stack.as_deref(),
            args.env.as_deref(),
        ));
        while let Some(item) = stream.next().await {
            let event = item.map_err(client_error)?;
            if globals.json() {
                println!(
                    "{}",
                    serde_json::to_string(&event).context("cannot print JSON")?
                );
            } else {
                // The time the server saw the change; `-` for one older than its start.
                let at = event
                    .at_ms
                    .map(super::clock_time::format_time)
                    .unwrap_or_else(|| "-".to_string());
                let by = event
                    .who
                    .as_deref()
                    .map(|w| format!(" (by {w})"))
                    .unwrap_or_default();
                println!(
                    "{:>8}  {:<19}  {:<9} {}{by}",
                    event.revision, at, event.subject, event.summary
                );
            }
        }
        Ok(())
    })
}
