//! `berth store export > FILE` and `berth store import FILE`: the whole store at one revision as
//! JSON (format in [`berth_store::export`]), and back into an empty store. They open the store
//! directly, as `berth server` would (`--store`, `--etcd-prefix`, `--data-dir`): stop the server
//! of an embedded store first (its file is locked while it runs).

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;

use crate::context::runtime;

/// Where the store is, as `berth server` takes it.
#[derive(clap::Args, Debug)]
pub struct StoreLocation {
    /// `embedded:PATH` (default: DATA_DIR/state.redb) or `etcd://HOST:PORT[,HOST:PORT…]`.
    #[arg(long)]
    store: Option<String>,
    /// With `--store etcd://…`: the etcd key prefix berth's keys live under.
    #[arg(long, value_name = "PREFIX", default_value = berth_store::etcd::DEFAULT_PREFIX)]
    etcd_prefix: String,
    /// The server's data directory (default: $BERTH_DATA_DIR or ~/.berth).
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

/// `berth store …`
#[derive(clap::Subcommand, Debug)]
pub enum StoreCommand {
    /// Print every key of the store at one revision, as JSON (secret values stay sealed).
    Export {
        #[command(flatten)]
        at: StoreLocation,
    },
    /// Write an export into an empty store (the server that opens it needs the same
    /// secrets.key). Prints how many keys it wrote.
    Import {
        /// The file `berth store export` wrote.
        file: PathBuf,
        #[command(flatten)]
        at: StoreLocation,
    },
}

/// Runs one `berth store` command.
pub fn run(which: StoreCommand) -> anyhow::Result<()> {
    runtime()?.block_on(async {
        match which {
            StoreCommand::Export { at } => {
                let store = open(&at).await?;
                let export = berth_store::export::export(store.as_ref()).await?;
                let mut out = std::io::stdout().lock();
                serde_json::to_writer_pretty(&mut out, &export)?;
                writeln!(out)?;
                out.flush()?;
                eprintln!(
                    "exported {} keys at revision {}",
                    export.keys.len(),
                    export.revision
                );
                Ok(())
            }
            StoreCommand::Import { file, at } => {
                let text = std::fs::read(&file)
                    .with_context(|| format!("cannot read {}", file.display()))?;
                let mut export = berth_store::export::parse(&text)
                    .with_context(|| format!("{}", file.display()))?;
                // The leader key belongs to a lease of the exported cluster: imported, it would
                // outlive that lease and keep every server from ever leading.
                export
                    .keys
                    .retain(|k| k.key != berth_server::leadership::LEADER_KEY);
                let store = open(&at).await?;
                let n = berth_store::export::import(store.as_ref(), &export).await?;
                println!(
                    "imported {n} keys (exported at revision {})",
                    export.revision
                );
                Ok(())
            }
        }
    })
}

async fn open(at: &StoreLocation) -> anyhow::Result<std::sync::Arc<dyn berth_store::Store>> {
    let data_dir = at
        .data_dir
        .clone()
        .unwrap_or_else(crate::context::default_data_dir);
    super::daemons::open_store(&data_dir, at.store.as_deref(), &at.etcd_prefix).await
}
