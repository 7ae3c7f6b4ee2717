//! The long-running commands: `berth server`, `berth agent`, `berth router`, and `berth up`,
//! which wires all three into one process on loopback. They speak to each other over HTTP,
//! exactly as they would on separate machines.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use berth_agent::node::NodeConfig;
use berth_agent::SupervisorConfig;
use berth_client::Client;
use berth_router::RouterHandle;
use berth_server::{Clock, ServerConfig};
use berth_store::EmbeddedStore;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::context::{default_data_dir, runtime};

/// The demo stack, built in so `berth up --demo` works from any directory.
const DEMO_STACK: &str = include_str!("../../../../examples/demo/stack.yaml");

/// Options of every router berth runs (in `up`, in an agent, or alone).
#[derive(clap::Args, Debug, Clone, Default)]
pub struct RouterOpts {
    /// Serve the router's Prometheus metrics (`GET /metrics`) on this address.
    #[arg(long)]
    metrics: Option<SocketAddr>,
    /// Log one line per proxied request (tracing target `berth_router::access`).
    #[arg(long)]
    access_log: bool,
    /// Also serve HTTPS on this address (e.g. `0.0.0.0:443`): the router terminates TLS and
    /// serves the same routes over HTTP/2 or HTTP/1.1 (ALPN); instances see
    /// `X-Forwarded-Proto: https`. Needs at least one `--tls-cert`.
    #[arg(long, value_name = "ADDR", requires = "tls_cert")]
    pub(crate) tls_listen: Option<SocketAddr>,
    /// A certificate for `--tls-listen`, chosen by the name the client asks for (SNI); repeat
    /// it for more hosts. HOST is a name (`example.com`) or a one-label wildcard
    /// (`*.example.com`); CERT_PEM holds the chain, leaf first; KEY_PEM its unencrypted key.
    /// The first one is also presented to clients that send no name or an unknown one.
    /// Example: `--tls-cert 'example.com=/etc/berth/example.com.crt:/etc/berth/example.com.key'`.
    #[arg(
        long,
        value_name = "HOST=CERT_PEM:KEY_PEM",
        value_parser = super::router_tls::parse_cert,
        requires = "tls_listen"
    )]
    tls_cert: Vec<super::router_tls::TlsCert>,
    /// A proxy or load balancer in front of the router whose `X-Forwarded-For`,
    /// `X-Forwarded-Proto` and `X-Forwarded-Host` are believed (the router appends the peer to
    /// `X-Forwarded-For`); repeat it for more. CIDR is a network (`10.0.0.0/8`, `fd00::/8`) or
    /// one address. Default: none, so the router replaces a client's claims with what it saw.
    #[arg(long = "trusted-proxy", value_name = "CIDR", value_parser = parse_trusted_proxy)]
    trusted_proxies: Vec<berth_router::Cidr>,
    /// Require `Authorization: Bearer TOKEN` on `/metrics` (else 401), TOKEN being this file's
    /// first line. Without it, `BERTH_METRICS_TOKEN` holds the token if set; with neither,
    /// `/metrics` is open to whoever reaches `--metrics`.
    #[arg(
        long,
        value_name = "FILE",
        value_parser = parse_token_file,
        requires = "metrics"
    )]
    metrics_token_file: Option<MetricsToken>,
    /// Set by `berth agent` and `berth router`, not a flag: bind the router with SO_REUSEPORT.
    #[arg(skip)]
    pub(crate) reuseport: bool,
}

impl RouterOpts {
    /// Whether any router option was given: `berth agent` refuses them without `--router`
    /// rather than ignoring them.
    pub(crate) fn any_given(&self) -> bool {
        self.metrics.is_some()
            || self.access_log
            || self.tls_listen.is_some()
            || !self.tls_cert.is_empty()
            || !self.trusted_proxies.is_empty()
            || self.metrics_token_file.is_some()
    }

    /// The metrics token: `--metrics-token-file`'s, else `BERTH_METRICS_TOKEN`'s (trimmed;
    /// empty counts as unset).
    fn metrics_token(&self) -> Option<String> {
        if let Some(MetricsToken(token)) = &self.metrics_token_file {
            return Some(token.clone());
        }
        std::env::var(METRICS_TOKEN_ENV)
            .ok()
            .map(|t| t.trim().to_owned())
            .filter(|t| !t.is_empty())
    }
}

/// The environment variable that holds the metrics token when no `--metrics-token-file` is
/// given (an environment variable, unlike an argument, is not readable by every local user).
const METRICS_TOKEN_ENV: &str = "BERTH_METRICS_TOKEN";

/// A metrics token read from `--metrics-token-file`. Its `Debug` never shows the token.
#[derive(Clone)]
pub struct MetricsToken(String);

impl std::fmt::Debug for MetricsToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MetricsToken(…)")
    }
}

/// `--metrics-token-file FILE`: the token is the file's first line; a missing, unreadable or
/// empty file is a usage error (exit 2) naming the file.
fn parse_token_file(path: &str) -> Result<MetricsToken, String> {
    let text = std::fs::read_to_string(path).map_err(|err| {
        format!("cannot read {path}: {err}; put the metrics token on its first line")
    })?;
    let token = text.lines().next().unwrap_or_default().trim();
    if token.is_empty() {
        return Err(format!(
            "{path} is empty: put the metrics token on its first line"
        ));
    }
    Ok(MetricsToken(token.to_owned()))
}

/// `--trusted-proxy CIDR`: a bad network is a usage error (exit 2) that says what is wrong.
fn parse_trusted_proxy(value: &str) -> Result<berth_router::Cidr, String> {
    value
        .parse()
        .map_err(|err: berth_router::CidrError| err.to_string())
}

/// A router listener (plain or HTTPS): for a node's router, with SO_REUSEPORT and new
/// connections steered to it when another router already listens there (a restart with
/// `berth agent --replace`); for `berth up`, plainly, so that two of them collide loudly.
async fn bind_router(addr: SocketAddr, reuseport: bool) -> std::io::Result<TcpListener> {
    if reuseport {
        berth_router::bind_reuseport_takeover(addr)
    } else {
        TcpListener::bind(addr).await
    }
}

/// Whether the API speaks TLS (`--api-tls`).
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ApiTlsMode {
    /// TLS unless `--api` is a loopback address.
    #[default]
    Auto,
    /// Always TLS, on loopback too.
    On,
    /// Plain HTTP (a non-loopback `--api` then needs `--insecure-http`).
    Off,
}

/// The API's TLS options, shared by `berth server` and `berth up`.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct ApiTlsOpts {
    /// TLS for the API: `auto` = on unless --api is a loopback address, `on`, or `off`. With
    /// TLS the server creates a cluster CA on first start (DATA_DIR/tls) and a certificate for
    /// the API signed by it; clients trust DATA_DIR/ca.crt, agents the CA's fingerprint in the
    /// join token.
    #[arg(long, value_enum, default_value_t)]
    api_tls: ApiTlsMode,
    /// A DNS name or address by which clients and agents reach the API, put in its certificate
    /// (repeatable); the --api address is always in it, and localhost for a loopback or
    /// wildcard address.
    #[arg(long = "api-name", value_name = "NAME")]
    api_names: Vec<String>,
    /// Serve plain HTTP on a non-loopback --api anyway: tokens and secret values then cross the
    /// network in clear text, and anyone in between can run commands on every node. Warned at
    /// every start.
    #[arg(long)]
    insecure_http: bool,
    /// Make a new API certificate from the same cluster CA at this start (agents trust the CA,
    /// so none needs to join again).
    #[arg(long)]
    rotate_cert: bool,
}

/// How the API was started: its URL and, with TLS, the CA that clients trust.
struct ApiStarted {
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
    /// `http://ADDR` or `https://ADDR` (a wildcard address shown as loopback).
    url: String,
    /// With TLS: `DATA_DIR/ca.crt`.
    ca: Option<PathBuf>,
    /// The join token, as an agent takes it.
    join: berth_api::join::JoinToken,
}

/// Arguments of `berth up`.
#[derive(clap::Args, Debug)]
pub struct UpArgs {
    /// Where state, tokens and instances live (default: $BERTH_DATA_DIR or ~/.berth).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// The API's address.
    #[arg(long, default_value = "127.0.0.1:7070")]
    api: SocketAddr,
    /// The router's address.
    #[arg(long, default_value = "127.0.0.1:8080")]
    router: SocketAddr,
    /// Also deploy the demo stack (three `berth whoami` behind the router).
    #[arg(long)]
    demo: bool,
    /// Labels of the local node, `k=v,k=v` (e.g. `zone=a`).
    #[arg(long, value_delimiter = ',')]
    labels: Vec<String>,
    /// The local node's name (default: the host name).
    #[arg(long)]
    name: Option<String>,
    /// Let volumes mount host paths under PREFIX (repeatable). Given, every host path must be
    /// under one; protected paths (`/`, `/etc`, `/root`, the Docker socket, the data
    /// directory) only when a prefix names them.
    #[arg(long = "allow-host-path", value_name = "PREFIX")]
    allow_host_path: Vec<PathBuf>,
    #[command(flatten)]
    process_users: ProcessUserOpts,
    #[command(flatten)]
    api_tls: ApiTlsOpts,
    #[command(flatten)]
    router_opts: RouterOpts,
}

/// Who the agent runs `process:` instances as (`berth agent` and `berth up`).
#[derive(clap::Args, Debug, Clone, Default)]
pub(crate) struct ProcessUserOpts {
    /// Run `process:` services without `process.user` as USER (a name or a uid; the agent
    /// must be root to switch). Default: as the agent itself.
    #[arg(long = "process-user", value_name = "USER")]
    process_user: Option<String>,
    /// Let `process.user: root` (or uid 0, or --process-user root) run; refused otherwise.
    #[arg(long = "allow-root-processes")]
    allow_root_processes: bool,
}

/// The agent's supervisor settings for `data_dir`: berth's data directory `berth_dir`
/// protected from volumes besides the defaults, the `--allow-host-path` prefixes and the
/// process users. A `--process-user` that cannot be used (unknown, root without
/// `--allow-root-processes`, an agent that is not root) is refused here, at start, rather than
/// failing every instance later.
pub(crate) fn supervisor_config(
    data_dir: &Path,
    berth_dir: &Path,
    allow: &[PathBuf],
    users: &ProcessUserOpts,
) -> anyhow::Result<SupervisorConfig> {
    let mut config = SupervisorConfig::new(data_dir);
    config.host_paths = allow
        .iter()
        .fold(config.host_paths.protect(berth_dir), |p, a| p.allow(a));
    config.process_users = berth_agent::run_as::ProcessUsers {
        default: users.process_user.clone(),
        allow_root: users.allow_root_processes,
    };
    if let Err(why) = config.process_users.resolve(None) {
        anyhow::bail!("--process-user: every process service without `process.user` {why}");
    }
    Ok(config)
}

/// Arguments of `berth server`.
#[derive(clap::Args, Debug)]
pub struct ServerArgs {
    /// `embedded:PATH` (default: DATA_DIR/state.redb), or `etcd://HOST:PORT[,HOST:PORT…]`: an
    /// etcd cluster's client URLs, berth's keys under --etcd-prefix.
    #[arg(long)]
    store: Option<String>,
    /// With `--store etcd://…`: the etcd key prefix berth's keys live under, so several
    /// clusters (or other users) can share one etcd.
    #[arg(long, value_name = "PREFIX", default_value = berth_store::etcd::DEFAULT_PREFIX)]
    etcd_prefix: String,
    /// The address the API listens on (agents, routers and the CLI connect to it).
    #[arg(long, default_value = "127.0.0.1:7070")]
    api: SocketAddr,
    /// Where the store, tokens and certificates live (default: $BERTH_DATA_DIR or ~/.berth).
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    #[command(flatten)]
    api_tls: ApiTlsOpts,
    /// Use this certificate for the API instead of one from the cluster CA (the router's
    /// syntax; repeat for more names, chosen by SNI). CERT_PEM should hold the chain up to the
    /// CA clients are to trust: its last certificate becomes DATA_DIR/ca.crt and the
    /// fingerprint in the join token. Implies TLS.
    #[arg(
        long,
        value_name = "HOST=CERT_PEM:KEY_PEM",
        value_parser = super::router_tls::parse_cert
    )]
    tls_cert: Vec<super::router_tls::TlsCert>,
    /// The key-encryption key of the secrets sealed in the store (64 hex digits, mode 0600).
    /// Default: DATA_DIR/secrets.key, created on the first start. A key that does not open
    /// the store's secrets stops the server at start.
    #[arg(long, value_name = "FILE")]
    secrets_key_file: Option<PathBuf>,
}

/// Arguments of `berth router`.
#[derive(clap::Args, Debug)]
pub struct RouterArgs {
    /// The address the router accepts HTTP on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    #[command(flatten)]
    router_opts: RouterOpts,
}

/// Resolves on SIGTERM or SIGINT.
pub(crate) async fn terminated() {
    use tokio::signal::unix::{signal, SignalKind};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut t), Ok(mut i)) => {
            tokio::select! { _ = t.recv() => {}, _ = i.recv() => {} }
        }
        _ => std::future::pending().await,
    }
}

/// Makes a long-running command ignore SIGPIPE again. `main` restores its default action so
/// that `berth status | head -1` ends quietly, but a daemon writes to sockets, and a write to a
/// connection its peer has closed (a vectored write, which carries no `MSG_NOSIGNAL`; TLS writes
/// are vectored) would then kill the whole process — server, agent and router at once — where
/// ignoring it turns it into an `EPIPE` for that one connection. Workloads are unaffected: std's
/// `Command` resets SIGPIPE to its default in every child.
#[allow(unsafe_code, reason = "signal(2) is unsafe in nix; see SAFETY below")]
pub(crate) fn ignore_sigpipe() {
    use nix::sys::signal::{signal, SigHandler, Signal};
    // SAFETY: called first thing in each daemon command, before its runtime or any thread
    // exists, so nothing races on signal dispositions; SIG_IGN installs no Rust handler.
    let _ = unsafe { signal(Signal::SIGPIPE, SigHandler::SigIgn) };
}

pub(crate) fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("BERTH_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,berth=info"));
    // Colours only for a person at a terminal: a log file or a pipe gets plain text (and
    // `NO_COLOR`, https://no-color.org, turns them off everywhere).
    use std::io::IsTerminal;
    let ansi = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .try_init();
}

/// Opens the store `--store` names (default: DATA_DIR/state.redb), for `berth server` and
/// `berth store export|import`.
pub(crate) async fn open_store(
    data_dir: &Path,
    spec: Option<&str>,
    etcd_prefix: &str,
) -> anyhow::Result<Arc<dyn berth_store::Store>> {
    Ok(open_store_parts(data_dir, spec, etcd_prefix).await?.0)
}

/// [`open_store`], and the etcd store itself when it is one (the server elects its leader
/// through it).
async fn open_store_parts(
    data_dir: &Path,
    spec: Option<&str>,
    etcd_prefix: &str,
) -> anyhow::Result<(Arc<dyn berth_store::Store>, Option<berth_store::EtcdStore>)> {
    let path = match spec {
        None => data_dir.join("state.redb"),
        Some(s) if s.starts_with("etcd://") => {
            let endpoints =
                berth_store::etcd::parse_url(s).map_err(|e| anyhow::anyhow!("--store: {e}"))?;
            let store = berth_store::EtcdStore::connect(&endpoints, etcd_prefix)
                .await
                .with_context(|| format!("cannot open the store {s}"))?;
            return Ok((Arc::new(store.clone()), Some(store)));
        }
        Some(s) => match s.strip_prefix("embedded:") {
            Some(p) => PathBuf::from(p),
            None => anyhow::bail!(
                "--store {s}: write `embedded:PATH` or `etcd://HOST:PORT[,HOST:PORT…]`"
            ),
        },
    };
    let store = EmbeddedStore::open(&path)
        .await
        .with_context(|| format!("cannot open the store {}", path.display()))?;
    Ok((Arc::new(store), None))
}

/// How long `berth up` and `berth server` wait for their parts to stop after SIGTERM or
/// SIGINT: the default `stop_grace` of a service. Past it (or on a second signal) the process
/// exits anyway with status 1 and says so: a stop must never hang on a busy controller.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(10);

/// Waits for `parts` to finish after a stop was requested, within [`SHUTDOWN_GRACE`]; exits the
/// process (status 1) past it or on a second signal.
async fn within_grace<T>(parts: impl std::future::Future<Output = T>) -> T {
    tokio::select! {
        out = parts => out,
        _ = tokio::time::sleep(SHUTDOWN_GRACE) => {
            eprintln!("berth: still stopping after {}s; exiting now (the store recovers on the next start)", SHUTDOWN_GRACE.as_secs());
            std::process::exit(1);
        }
        _ = terminated() => {
            eprintln!("berth: second signal; exiting now");
            std::process::exit(1);
        }
    }
}

/// Creates the data directory with mode 0700, or tightens an existing one to 0700 with a
/// warning: it holds the store (secret values), the tokens and the agent's instance records.
/// Tightening rather than refusing, so a directory made by an older berth (0755) keeps working;
/// the warning says the secrets in it may have been read.
pub(crate) fn secure_data_dir(dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("cannot create the data directory {}", dir.display()))?;
    }
    let meta = std::fs::metadata(dir)
        .with_context(|| format!("cannot read the data directory {}", dir.display()))?;
    anyhow::ensure!(
        meta.is_dir(),
        "the data directory {} is not a directory: pick another --data-dir",
        dir.display()
    );
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).with_context(|| {
            format!(
                "the data directory {} is mode {mode:04o}, readable by other users, and cannot be set to 0700: run `chmod 700 {}`",
                dir.display(),
                dir.display()
            )
        })?;
        eprintln!(
            "warning: the data directory {} was mode {mode:04o}, readable by other users; set it to 0700. Secrets and tokens stored there may have been read: rotate them if others use this machine.",
            dir.display()
        );
    }
    Ok(())
}

/// Writes a file of the data directory with mode 0600 (created so, never briefly wider).
fn write_private(path: &Path, content: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    f.write_all(content.as_bytes())
}

/// Whether the API on `api` speaks TLS, refusing plain HTTP on a non-loopback address without
/// `--insecure-http` (exit 2, before anything is created) and warning when it is given.
fn tls_wanted(api: SocketAddr, opts: &ApiTlsOpts, own_cert: bool) -> anyhow::Result<bool> {
    let loopback = api.ip().is_loopback();
    let tls = match opts.api_tls {
        ApiTlsMode::On => true,
        ApiTlsMode::Off => false,
        ApiTlsMode::Auto => !loopback || own_cert,
    };
    if own_cert && !tls {
        eprintln!("error: --tls-cert gives the API a certificate, but --api-tls off turns TLS off: drop one of them");
        return Err(crate::exit::Silent(2).into());
    }
    if opts.rotate_cert && (!tls || own_cert) {
        eprintln!("error: --rotate-cert makes a new API certificate from the cluster CA: it needs TLS (--api-tls on) and no --tls-cert");
        return Err(crate::exit::Silent(2).into());
    }
    if !tls && !loopback {
        if !opts.insecure_http {
            eprintln!(
                "error: --api {api} is not a loopback address and TLS is off: join and node tokens, \
                 secret values and the commands nodes run would cross the network in clear text. \
                 Drop --api-tls off (TLS is the default there), or pass --insecure-http to accept that."
            );
            return Err(crate::exit::Silent(2).into());
        }
        eprintln!(
            "warning: the API on {api} speaks plain HTTP (--insecure-http): anyone on the network \
             path can read its tokens and secret values and make every node run what they want"
        );
    }
    Ok(tls)
}

/// `https://` or `http://` and the API's address as clients on this machine dial it (a
/// wildcard address as the loopback one, which its certificate names).
fn api_url(api: SocketAddr, tls: bool) -> String {
    let scheme = if tls { "https" } else { "http" };
    let mut dial = api;
    if api.ip().is_unspecified() {
        dial.set_ip(if api.is_ipv4() {
            std::net::Ipv4Addr::LOCALHOST.into()
        } else {
            std::net::Ipv6Addr::LOCALHOST.into()
        });
    }
    format!("{scheme}://{dial}")
}

/// Where the server's state is: `--store`, `--etcd-prefix`, `--secrets-key-file` (`berth up`:
/// the defaults).
#[derive(Clone, Copy, Default)]
struct StoreOpts<'a> {
    spec: Option<&'a str>,
    etcd_prefix: &'a str,
    secrets_key_file: Option<&'a Path>,
}

/// Starts the API server in the background: the tokens, with TLS the cluster CA and the API's
/// certificate (or the operator's, `own_cert`), then the listener.
async fn start_server(
    data_dir: &Path,
    store_opts: StoreOpts<'_>,
    api: SocketAddr,
    tls_opts: &ApiTlsOpts,
    own_cert: &[super::router_tls::TlsCert],
    stop: watch::Receiver<bool>,
) -> anyhow::Result<ApiStarted> {
    let tls = tls_wanted(api, tls_opts, !own_cert.is_empty())?;
    secure_data_dir(data_dir)?;
    let secrets_key_file = store_opts.secrets_key_file;
    let (store, etcd) = open_store_parts(data_dir, store_opts.spec, store_opts.etcd_prefix).await?;
    let listener = TcpListener::bind(api).await.with_context(|| {
        format!("cannot listen on {api} for the API: is another berth running? pick another --api")
    })?;
    let api = listener.local_addr().unwrap_or(api);
    let api_tls = if !tls {
        None
    } else if let Some(first) = own_cert.first() {
        let config = berth_router::tls::server_config(&super::router_tls::config_of(own_cert))
            .context("--tls-cert")?;
        Some(berth_server::pki::operator_tls(
            data_dir,
            config,
            first.cert_path(),
        )?)
    } else {
        let ca = berth_server::pki::Ca::load_or_create(data_dir)?;
        let names = berth_server::pki::api_names(api, &tls_opts.api_names, Some(&hostname()));
        let rotate = if tls_opts.rotate_cert {
            berth_server::pki::Rotate::Yes
        } else {
            berth_server::pki::Rotate::No
        };
        let made = berth_server::pki::server_tls(data_dir, &ca, &names, rotate)?;
        if tls_opts.rotate_cert {
            println!(
                "new API certificate {} from the cluster CA {}",
                made.leaf_fingerprint, made.ca_fingerprint
            );
        }
        Some(made)
    };
    // Create the tokens now, so they exist before anyone needs them; the join token carries
    // the CA's fingerprint when the API speaks TLS.
    berth_server::auth::load_or_create(data_dir, "admin.token")?;
    let join = berth_server::pki::write_join_token(
        data_dir,
        api_tls.as_ref().map(|t| t.ca_fingerprint.as_str()),
    )?;
    let config = ServerConfig {
        data_dir: data_dir.to_path_buf(),
        store,
        clock: Clock::system(),
        tls: api_tls.as_ref().map(|t| t.config.clone()),
        secrets_key_file: secrets_key_file.map(Path::to_path_buf),
    };
    // Opened here, not in the task: a wrong secrets key (or a store that cannot be read)
    // stops `berth server` with its reason before it says it is up.
    let tls_config = config.tls.clone();
    // On etcd, one of the servers sharing its prefix leads (runs the controllers); the
    // embedded store has one server, which always leads.
    let url = api_url(api, tls);
    let election = etcd.map(|etcd| {
        Arc::new(berth_server::leadership::EtcdLeadership::new(
            etcd,
            berth_server::leadership::LeaderRecord {
                id: api.to_string(),
                api: url.clone(),
                since_ms: 0,
            },
            berth_server::leadership::LEADER_TTL,
        ))
    });
    let leadership: Arc<dyn berth_server::leadership::Leadership> = match &election {
        Some(e) => e.clone(),
        None => Arc::new(berth_server::leadership::SoleLeader::new()),
    };
    let shared = berth_server::Shared::with_leadership(config, leadership)
        .await
        .context("the server cannot start")?;
    let _ = shared.me.set(berth_server::servers::ServerRecord::of(
        &api.to_string(),
        &url,
        Clock::system().now_ms(),
    ));
    let mut stop = stop;
    let election_stop = stop.clone();
    let report = election
        .is_some()
        .then(|| tokio::spawn(berth_server::servers::report(shared.clone(), stop.clone())));
    let task = tokio::spawn(async move {
        let campaign = async move {
            if let Some(e) = election {
                let clock = Clock::system();
                e.run(election_stop, move || clock.now_ms()).await;
            }
        };
        let report = async move {
            if let Some(r) = report {
                let _ = r.await;
            }
        };
        let (served, (), ()) = tokio::join!(
            berth_server::serve_shared(listener, shared, tls_config, async move {
                let _ = stop.wait_for(|s| *s).await;
            }),
            campaign,
            report
        );
        served.context("the server stopped")
    });
    Ok(ApiStarted {
        task,
        url,
        ca: tls.then(|| data_dir.join(berth_server::pki::PUBLIC_CA)),
        join,
    })
}

/// A client that never changes, for [`start_router`].
fn fixed(client: Client) -> watch::Receiver<Client> {
    watch::channel(client).1
}

/// Starts a router that follows the server's table, polling with the newest client on
/// `clients` (an agent swaps in its node token when it re-registers).
///
/// The router fetches the current table before it binds: a router that shares its port with
/// a running one (`SO_REUSEPORT`) gets connections the moment it listens, and must route them.
pub(crate) async fn start_router(
    clients: watch::Receiver<Client>,
    id: String,
    listen: SocketAddr,
    opts: &RouterOpts,
    stop: watch::Receiver<bool>,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let handle = RouterHandle::new();
    let first = clients.borrow().clone();
    berth_router::follow::apply_current(&first, &id, &handle)
        .await
        .with_context(|| {
            format!(
                "the router cannot fetch the routing table from {}",
                first.base_url()
            )
        })?;
    // One listener per core in an SO_REUSEPORT group. A node's router joins a running one's
    // group and takes over, so a restarted agent's router listens before the old one lets go
    // and no client sees "connection refused". `berth up`'s router takes the port only if
    // nothing listens there: two of them on one machine must collide loudly, not share a port.
    let listen_error = || format!("cannot listen on {listen} for the router: pick another address");
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    let plain = if opts.reuseport {
        berth_router::bind_per_core_takeover(listen, cores)
    } else {
        berth_router::bind_per_core(listen, cores)
    }
    .with_context(listen_error)?;
    let metrics = match opts.metrics {
        Some(addr) => Some(TcpListener::bind(addr).await.with_context(|| {
            format!("cannot listen on {addr} for the router's metrics: pick another --metrics")
        })?),
        None => None,
    };
    // The HTTPS listener binds like the plain one; its certificates were checked by clap.
    let tls = match opts.tls_listen {
        Some(addr) => Some(
            super::router_tls::listener(addr, &opts.tls_cert, bind_router(addr, opts.reuseport))
                .await?,
        ),
        None => None,
    };
    // The router's config grows (limits); fields berth does not set keep their defaults.
    #[allow(clippy::needless_update)]
    let config = berth_router::RouterConfig {
        metrics,
        access_log: opts.access_log,
        tls,
        trusted_proxies: opts.trusted_proxies.clone(),
        metrics_token: opts.metrics_token(),
        ..Default::default()
    };
    let mut s1 = stop.clone();
    let follower =
        berth_router::follow::follow_server_with(clients, id, handle.clone(), async move {
            let _ = s1.wait_for(|s| *s).await;
        });
    if let Some(steering) = plain.steering {
        tokio::spawn(steering.release_when_alone());
    }
    let serving = serve_per_core(plain.listeners, handle, config, stop)?;
    Ok(tokio::spawn(async move {
        let (_, served) = tokio::join!(follower, serving);
        if let Err(err) = served {
            tracing::error!(%err, "the router stopped abnormally");
        }
    }))
}

/// Serves each of `listeners` on a thread of its own with a single-threaded runtime (a
/// connection, its requests and its upstream connections stay on one core; ~25 % more requests
/// per second than the multi-threaded runtime here), all routing by `handle`. The first core
/// also serves `config`'s TLS and metrics listeners (still driven by the process's runtime,
/// where they were bound). The returned task ends when every core has stopped.
fn serve_per_core(
    listeners: Vec<std::net::TcpListener>,
    handle: RouterHandle,
    config: berth_router::RouterConfig,
    stop: watch::Receiver<bool>,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let sibling = config.sibling();
    let mut first = Some(config);
    let mut cores = Vec::with_capacity(listeners.len());
    for (core, listener) in listeners.into_iter().enumerate() {
        let config = first.take().unwrap_or_else(|| sibling.sibling());
        let (handle, mut stop) = (handle.clone(), stop.clone());
        let (done, finished) = tokio::sync::oneshot::channel::<()>();
        std::thread::Builder::new()
            .name(format!("router-{core}"))
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => runtime,
                    Err(err) => {
                        tracing::error!(%err, core, "cannot start a router runtime");
                        return;
                    }
                };
                runtime.block_on(async move {
                    match TcpListener::from_std(listener) {
                        Ok(listener) => {
                            berth_router::serve_with(listener, handle, config, async move {
                                let _ = stop.wait_for(|s| *s).await;
                            })
                            .await;
                        }
                        Err(err) => {
                            tracing::error!(%err, core, "cannot register the router's listener")
                        }
                    }
                });
                let _ = done.send(());
            })
            .context("cannot start a router thread")?;
        cores.push(finished);
    }
    Ok(tokio::spawn(async move {
        for finished in cores {
            let _ = finished.await;
        }
    }))
}

/// `k=v` pairs from `--labels`.
pub(crate) fn parse_labels(pairs: &[String]) -> anyhow::Result<BTreeMap<String, String>> {
    let mut labels = BTreeMap::new();
    for l in pairs {
        // `--labels ''` is given and empty: it clears the labels (no `--labels` keeps them).
        if l.trim().is_empty() {
            continue;
        }
        let (k, v) = l
            .split_once('=')
            .with_context(|| format!("--labels {l}: expected key=value"))?;
        labels.insert(k.trim().to_string(), v.trim().to_string());
    }
    Ok(labels)
}

pub(crate) fn hostname() -> String {
    std::fs::read_to_string("/etc/hostname")
        .map(|s| s.trim().to_lowercase())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "local".to_string())
}

/// `berth up`: server, agent and router in one process.
pub fn up(args: UpArgs) -> anyhow::Result<()> {
    ignore_sigpipe();
    init_logging();
    // Every connection is a file: start with the most the system allows (issue 10).
    berth_net::raise_fd_limit_or_warn();
    let data_dir = args.data_dir.clone().unwrap_or_else(default_data_dir);
    // A --process-user that cannot be used is refused before anything starts.
    let supervisor = supervisor_config(
        &data_dir.join("agent"),
        &data_dir,
        &args.allow_host_path,
        &args.process_users,
    )?;
    // berth up supervises instances: like every agent it holds DATA_DIR/agent's lock (the
    // directory a `berth agent` defaults to), so a second agent there is refused instead of
    // adopting and restarting them. Held until the process ends.
    let _agent_lock = berth_agent::lock::DataDirLock::acquire_as(
        &data_dir.join("agent"),
        berth_agent::lock::HOLDER_UP,
    )?;
    runtime()?.block_on(async move {
        let (stop_tx, stop_rx) = watch::channel(false);
        let started = start_server(&data_dir, StoreOpts { etcd_prefix: berth_store::etcd::DEFAULT_PREFIX, ..StoreOpts::default() }, args.api, &args.api_tls, &[], stop_rx.clone()).await?;
        let server = started.task;
        let api_url = started.url.clone();
        write_private(&data_dir.join("api.url"), &api_url).with_context(|| format!("cannot write {}/api.url", data_dir.display()))?;
        let admin = std::fs::read_to_string(data_dir.join("admin.token"))?.trim().to_string();
        let trust = started.ca.as_deref().map(berth_client::ServerTrust::from_pem_file).transpose()?;
        let admin_client = Client::with_trust(&api_url, Some(admin), trust)?;
        let router = start_router(fixed(admin_client.clone()), "up".to_string(), args.router, &args.router_opts, stop_rx.clone()).await?;
        let node = NodeConfig {
            server: api_url.clone(),
            // The agent verifies this server like any other: by the join token's fingerprint.
            join_token: started.join.to_string(),
            previous_token: None,
            ca_file: None,
            name: args.name.clone().unwrap_or_else(hostname),
            labels: parse_labels(&args.labels)?,
            keep_labels: args.labels.is_empty(),
            data_dir: data_dir.join("agent"),
            address: "127.0.0.1".to_string(),
            router: Some(args.router.to_string()),
        };
        // A CA the local agent stored that is not this server's (DATA_DIR/tls deleted) is an
        // error now, with what to do, rather than an agent that silently never joins.
        berth_agent::node::server_trust(&node)?;
        let mut agent_stop = stop_rx.clone();
        let agent = tokio::spawn(berth_agent::node::run(node, supervisor, async move {
            let _ = agent_stop.wait_for(|s| *s).await;
        }));
        println!("berth is up");
        println!("  API     {api_url}   (token: {}/admin.token)", data_dir.display());
        if let Some(ca) = &started.ca {
            println!("  CA      {}", ca.display());
        }
        println!("  router  http://{}", args.router);
        if let Some(tls) = args.router_opts.tls_listen {
            println!("  router  https://{tls}");
        }
        println!("  data    {}", data_dir.display());
        if args.demo {
            let req = berth_api::control::DeployRequest {
                file: "examples/demo/stack.yaml".to_string(),
                source: DEMO_STACK.to_string(),
                env: "local".to_string(),
                set: vec![],
                confirm: None,
                plan_id: None,
                dry_run: false,
                force: false,
            };
            match admin_client.deploy(&req).await {
                Ok(r) => match r.release {
                    Some(n) => println!("  demo    release {n} of stack demo is rolling out"),
                    None => println!("  demo    already deployed, nothing changed"),
                },
                Err(e) => eprintln!("cannot deploy the demo: {e}"),
            }
            println!();
            println!("try:    curl -s http://demo.localhost:{}/", args.router.port());
            println!("   or:  curl -s -H 'Host: demo.localhost' http://{}/", args.router);
            println!("        berth status; berth deploy -f examples/demo/stack.yaml --env local --set web.env.VERSION=2 --wait");
        }
        terminated().await;
        println!("stopping; instances keep running and are adopted by the next `berth up`");
        let _ = stop_tx.send(true);
        within_grace(async move {
            let _ = agent.await;
            let _ = router.await;
            server.await.context("the server task panicked")?
        })
        .await
    })
}

/// `berth server`.
pub fn server(args: ServerArgs) -> anyhow::Result<()> {
    ignore_sigpipe();
    init_logging();
    // Every connection is a file: start with the most the system allows (issue 10).
    berth_net::raise_fd_limit_or_warn();
    let data_dir = args.data_dir.clone().unwrap_or_else(default_data_dir);
    runtime()?.block_on(async move {
        let (stop_tx, stop_rx) = watch::channel(false);
        let started = start_server(
            &data_dir,
            StoreOpts {
                spec: args.store.as_deref(),
                etcd_prefix: &args.etcd_prefix,
                secrets_key_file: args.secrets_key_file.as_deref(),
            },
            args.api,
            &args.api_tls,
            &args.tls_cert,
            stop_rx,
        )
        .await?;
        println!(
            "berth server on {}   (tokens in {})",
            started.url,
            data_dir.display()
        );
        if let (Some(ca), Some(fp)) = (&started.ca, &started.join.ca_sha256) {
            println!("  CA      {} (SHA-256 {fp})", ca.display());
        }
        println!(
            "  join    berth agent --server {} --join-token-file {}/join.token",
            started.url,
            data_dir.display()
        );
        terminated().await;
        let _ = stop_tx.send(true);
        within_grace(started.task)
            .await
            .context("the server task panicked")?
    })
}

/// `berth router`.
pub fn router(args: RouterArgs, globals: &crate::context::Globals) -> anyhow::Result<()> {
    ignore_sigpipe();
    init_logging();
    // Every connection is a file: start with the most the system allows (issue 10).
    berth_net::raise_fd_limit_or_warn();
    let client = globals.client()?;
    runtime()?.block_on(async move {
        let (stop_tx, stop_rx) = watch::channel(false);
        let id = format!("edge-{}", args.listen);
        let mut opts = args.router_opts.clone();
        opts.reuseport = true;
        let task = start_router(fixed(client), id, args.listen, &opts, stop_rx).await?;
        println!("berth router on http://{}", args.listen);
        if let Some(tls) = args.router_opts.tls_listen {
            println!("berth router on https://{tls}");
        }
        terminated().await;
        let _ = stop_tx.send(true);
        let _ = task.await;
        Ok(())
    })
}
