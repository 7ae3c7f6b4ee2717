//! Options every command shares (`--server`, `--token`, `--ca`, `--output`) and how the CLI
//! finds a local `berth up` by itself: `berth up` writes its API URL to `DATA_DIR/api.url`
//! (`https://…` when the API speaks TLS), and the admin token and the cluster CA (`ca.crt`)
//! live beside it, so with no flags and no environment the CLI talks to it.

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
    /// The cluster CA certificate (PEM) an `https://` server is trusted by, and nothing else
    /// (default: $BERTH_CA, then the local `berth up`'s ca.crt beside api.url). It is the
    /// server's DATA_DIR/ca.crt.
    #[arg(long, global = true, env = "BERTH_CA", value_name = "FILE")]
    pub ca: Option<PathBuf>,
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
    /// A client for the chosen server, with the chosen token and CA.
    pub fn client(&self) -> anyhow::Result<Client> {
        let dir = default_data_dir();
        let local_url = || {
            std::fs::read_to_string(dir.join("api.url"))
                .ok()
                .map(|s| s.trim().to_string())
        };
        let server = match &self.server {
            Some(s) => s.clone(),
            None => local_url().with_context(|| format!("no server given and no local `berth up` found ({}/api.url): start `berth up`, or pass --server / set BERTH_SERVER", dir.display()))?,
        };
        let token = match &self.token {
            Some(t) => Some(t.clone()),
            None => std::fs::read_to_string(dir.join("admin.token"))
                .ok()
                .map(|s| s.trim().to_string()),
        };
        // The local `berth up`'s CA only for the local `berth up`: another server is trusted
        // by the CA given for it, or not at all.
        let local = self.server.is_none() || local_url().as_deref() == Some(server.trim());
        let trust = self.trust(local.then(|| dir.join(berth_server::pki::PUBLIC_CA)))?;
        Client::with_trust(&server, token, trust)
            .with_context(|| format!("cannot use server URL {server}"))
    }

    /// The CA to trust: `--ca` / `BERTH_CA`, else `local_ca` if that file exists.
    pub fn trust(
        &self,
        local_ca: Option<PathBuf>,
    ) -> anyhow::Result<Option<berth_client::ServerTrust>> {
        let file = self.ca.clone().or_else(|| local_ca.filter(|p| p.exists()));
        Ok(file
            .map(|f| berth_client::ServerTrust::from_pem_file(&f))
            .transpose()?)
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
