//! `berth maintenance on|off SERVICE`: the routers answer the service's traffic with a
//! maintenance page (503), leaving its instances alone.

use anyhow::Context;

use crate::context::{client_error, print_json, runtime, Globals};

/// `on` or `off`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnOff {
    On,
    Off,
}

/// Arguments of `berth maintenance`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// `on` or `off`.
    #[arg(value_enum)]
    mode: OnOff,
    /// The service: `SERVICE` when one deployed stack has it, else `STACK/SERVICE`.
    service: String,
    /// An HTML file to answer with instead of the router's own maintenance page.
    #[arg(long)]
    page: Option<std::path::PathBuf>,
}

/// `berth maintenance on|off SERVICE`: the routers answer 503 with a maintenance page; the
/// instances are left alone.
pub fn run(args: Args, globals: &Globals) -> anyhow::Result<()> {
    let client = globals.client()?;
    let page_html = match &args.page {
        Some(p) => Some(
            std::fs::read_to_string(p)
                .with_context(|| format!("cannot read the maintenance page {}", p.display()))?,
        ),
        None => None,
    };
    runtime()?.block_on(async {
        let (stack, service) = match args.service.split_once('/') {
            Some((s, v)) => (s.to_string(), v.to_string()),
            None => {
                let status = client.status(None).await.map_err(client_error)?;
                let stacks: std::collections::BTreeSet<String> =
                    status.stacks.iter().filter(|s| s.services.iter().any(|v| v.name == args.service)).map(|s| s.stack.clone()).collect();
                match stacks.len() {
                    1 => (stacks.into_iter().next().unwrap_or_default(), args.service.clone()),
                    0 => anyhow::bail!("no deployed stack has a service {}: see `berth status`", args.service),
                    _ => anyhow::bail!("several stacks have a service {}: name it as STACK/{}", args.service, args.service),
                }
            }
        };
        let on = args.mode == OnOff::On;
        let answer = client
            .maintenance(&stack, &service, &berth_api::control::MaintenanceRequest { on, page_html })
            .await
            .map_err(client_error)?;
        if globals.json() {
            return print_json(&answer);
        }
        if on {
            println!("{stack}/{service} is in maintenance: the routers answer 503 with the maintenance page; its instances keep running");
        } else {
            println!("{stack}/{service} serves traffic again");
        }
        Ok(())
    })
}
