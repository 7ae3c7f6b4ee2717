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
    /// Start after this store revision.
    #[arg(long)]
    since: Option<i64>,
}

/// `berth events`.
pub fn run(args: Args, globals: &Globals) -> anyhow::Result<()> {
    let client = globals.client()?;
    runtime()?.block_on(async {
        let mut stream = Box::pin(client.events(args.follow, args.since));
        while let Some(item) = stream.next().await {
            let event = item.map_err(client_error)?;
            if globals.json() {
                println!(
                    "{}",
                    serde_json::to_string(&event).context("cannot print JSON")?
                );
            } else {
                let by = event
                    .who
                    .as_deref()
                    .map(|w| format!(" (by {w})"))
                    .unwrap_or_default();
                println!(
                    "{:>8}  {:<9} {}{by}",
                    event.revision, event.subject, event.summary
                );
            }
        }
        Ok(())
    })
}
