//! Options every command shares (`--server`, `--token`, `--output`) and how the CLI finds a
//! local `berth up` by itself: `berth up` writes its API URL to `DATA_DIR/api.url`, and the
//! admin token lives beside it, so with no flags and no environment the CLI talks to it.

use std::path::PathBuf;

use anyhow::Context as _;
use berth_client::Client;

/// Output formats every command offers.
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Output {
    /// For people.
    #[default]
    Text,
    /// For machines.
    Json,
}

/// Options shared by every command.
#[derive(clap::Args, Debug, Clone)]
pub struct Globals {
    /// The server's URL (default: $BERTH_SERVER, then the local `berth up`).
    #[arg(long, global = true, env = "BERTH_SERVER")]
    pub server: Option<String>,
    /// The API token (default: $BERTH_TOKEN, then the local `berth up`'s admin.token).
    #[arg(long, global = true, env = "BERTH_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// `text` for people, `json` for machines.
    #[arg(long, global = true, value_enum, default_value_t)]
    pub output: Output,
}

/// The data directory `berth up` uses when none is given: `$BERTH_DATA_DIR`, else `~/.berth`.
pub fn default_data_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("BERTH_DATA_DIR") {
        return PathBuf::from(d);
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    home.join(".berth")
}

impl Globals {
    /// A client for the chosen server, with the chosen token.
    pub fn client(&self) -> anyhow::Result<Client> {
        let dir = default_data_dir();
        let server = match &self.server {
            Some(s) => s.clone(),
            None => std::fs::read_to_string(dir.join("api.url"))
                .map(|s| s.trim().to_string())
                .with_context(|| format!("no server given and no local `berth up` found ({}/api.url): start `berth up`, or pass --server / set BERTH_SERVER", dir.display()))?,
        };
        let token = match &self.token {
            Some(t) => Some(t.clone()),
            None => std::fs::read_to_string(dir.join("admin.token"))
                .ok()
                .map(|s| s.trim().to_string()),
        };
        Client::new(&server, token).with_context(|| format!("cannot use server URL {server}"))
    }

    /// Whether output is for machines.
    pub fn json(&self) -> bool {
        self.output == Output::Json
    }
}

/// A single-threaded-enough runtime for the CLI's commands.
pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// Prints a value as pretty JSON.
pub fn print_json<T: serde::Serialize>(value: &T) -> anyhow::Result<()> {
    println!(
        "{}",
        serde_json::to_string_pretty(value).context("cannot print JSON")?
    );
    Ok(())
}

/// Maps a client error to the contract's exit code, printing it.
pub fn client_error(e: berth_client::ClientError) -> anyhow::Error {
    let code = e.exit_code();
    eprintln!("error: {e}");
    crate::exit::Silent(code).into()
}
