//! `berth agent`: the node agent (and, with `--router`, the node's router), one per data
//! directory, with a restart that drops no request (`--replace`).
//!
//! A restart by hand is stop-then-start, and between the two nobody listens on the router's
//! port. `berth agent --replace` reverses the order: the new agent starts its router on the
//! same port first (`SO_REUSEPORT`, with the table fetched before it listens, new connections
//! steered to it), then tells the running agent to stop (`SIGTERM`), waits for it to release
//! the data directory, re-registers and adopts the instances it left running. The old agent's
//! router finishes what it had in flight. Clients see neither a refused connection nor a
//! failed request.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use berth_agent::lock::{DataDirLock, LockError};
use berth_agent::node::NodeConfig;
use berth_client::Client;
use tokio::sync::watch;

use super::daemons::{hostname, init_logging, parse_labels, start_router, terminated, RouterOpts};
use crate::context::{default_data_dir, runtime};

/// How long a new agent waits for the one it replaces to let go of the data directory. The old
/// agent releases it as soon as it has stopped supervising (its router drains afterwards).
const TAKEOVER_DEADLINE: Duration = Duration::from_secs(30);

/// How long the agent waits for its own registration before its router can follow the server.
const REGISTRATION_DEADLINE: Duration = Duration::from_secs(30);

/// Arguments of `berth agent`.
#[derive(clap::Args, Debug)]
pub struct AgentArgs {
    // The server's URL is the global `--server` (or BERTH_SERVER).
    /// The join token (DATA_DIR/join.token on the server) on the command line, where every
    /// local user can read it: prefer --join-token-file or BERTH_JOIN_TOKEN.
    #[arg(long, value_name = "TOKEN")]
    join_token: Option<String>,
    /// A file holding the join token (a copy of the server's DATA_DIR/join.token, mode 0600).
    #[arg(long, value_name = "FILE")]
    join_token_file: Option<PathBuf>,
    /// The node's name (default: the host name).
    #[arg(long)]
    name: Option<String>,
    /// Node labels, `k=v,k=v`.
    #[arg(long, value_delimiter = ',')]
    labels: Vec<String>,
    /// Run a router on this address too.
    #[arg(long)]
    router: Option<SocketAddr>,
    /// Where the agent keeps its node token and its instances' records and logs (default:
    /// $BERTH_DATA_DIR/agent, else ~/.berth/agent).
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// The address at which this node's instances are reachable.
    #[arg(long, default_value = "127.0.0.1")]
    address: String,
    /// Take over from the agent already running on this data directory without dropping a
    /// request: start this agent's router beside the old one's, then stop the old agent, then
    /// adopt its instances. Without it, a second agent on one data directory is refused.
    #[arg(long)]
    replace: bool,
    /// Let volumes mount host paths under PREFIX (repeatable). Given, every host path must be
    /// under one; protected paths (`/`, `/etc`, `/root`, the Docker socket, berth's data
    /// directories) only when a prefix names them.
    #[arg(long = "allow-host-path", value_name = "PREFIX")]
    allow_host_path: Vec<PathBuf>,
    #[command(flatten)]
    process_users: super::daemons::ProcessUserOpts,
    #[command(flatten)]
    router_opts: RouterOpts,
}

/// `berth agent`.
pub fn agent(args: AgentArgs, globals: &crate::context::Globals) -> anyhow::Result<()> {
    super::daemons::ignore_sigpipe();
    let server_url = globals
        .server
        .clone()
        .context("berth agent needs --server URL (or BERTH_SERVER): the server it joins")?;
    init_logging();
    // Every connection is a file: start with the most the system allows (issue 10).
    berth_net::raise_fd_limit_or_warn();
    let data_dir = args
        .data_dir
        .clone()
        .unwrap_or_else(|| default_data_dir().join("agent"));
    anyhow::ensure!(
        args.router.is_some() || !args.router_opts.any_given(),
        "--metrics, --metrics-token-file, --access-log, --tls-listen, --tls-cert and --trusted-proxy configure the node's router: add --router ADDR"
    );
    let labels = parse_labels(&args.labels)?;
    let join_token = join_token(
        args.join_token.as_deref(),
        args.join_token_file.as_deref(),
        std::env::var("BERTH_JOIN_TOKEN").ok().as_deref(),
    )?;
    let name = args.name.clone().unwrap_or_else(hostname);
    if let Err(why) = berth_server::auth::validate_node_name(&name) {
        anyhow::bail!(
            "`{name}` is not a node name ({}): {why}; pass --name",
            if args.name.is_some() {
                "--name"
            } else {
                "the host name"
            }
        );
    }
    let router_id = format!("agent-{name}");
    let mut router_opts = args.router_opts.clone();
    router_opts.reuseport = true;
    let mut node = NodeConfig {
        server: server_url.clone(),
        join_token,
        previous_token: None,
        ca_file: globals.ca.clone(),
        name: name.clone(),
        keep_labels: args.labels.is_empty(),
        labels,
        data_dir: data_dir.clone(),
        address: args.address.clone(),
        router: args.router.map(|a| a.to_string()),
    };
    // Whom the agent trusts, checked before anything starts: a malformed join token, or an
    // https server with nothing to trust it by, is an error now rather than a retry loop.
    let trust = berth_agent::node::server_trust(&node)?;
    Client::with_trust(&server_url, None, trust)?;
    // The agent's data directory holds its node token and the instances' records and secret
    // environment: 0700, as `berth up`'s (issue 10, item 6).
    super::daemons::secure_data_dir(&data_dir)?;
    runtime()?.block_on(async move {
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut router: Option<Router> = None;
        let lock = match DataDirLock::acquire(&data_dir) {
            Ok(lock) => lock,
            // Taking over from `berth up` would stop its server and router too: refuse.
            Err(LockError::Held { pid, holder, .. })
                if args.replace && holder.as_deref() != Some(berth_agent::lock::HOLDER_UP) =>
            {
                if let Some(addr) = args.router {
                    // The predecessor's credential is still valid until this agent registers.
                    let token = read_token(&data_dir).with_context(|| {
                        format!(
                            "cannot take over the router: no node token in {} (has the running agent registered?)",
                            data_dir.display()
                        )
                    })?;
                    let trust = berth_agent::node::server_trust(&node)?;
                    let client = Client::with_trust(&server_url, Some(token), trust)?;
                    router = Some(
                        Router::start(client, router_id.clone(), addr, &router_opts, &stop_rx)
                            .await?,
                    );
                }
                stop_predecessor(pid, &data_dir)?;
                DataDirLock::wait(&data_dir, TAKEOVER_DEADLINE).await?
            }
            Err(err) => return Err(err.into()),
        };
        // The agent registers on every start, presenting the credential of its last run (the
        // join token cannot re-register a known name), and gets a new one; the router waits for
        // it, so the old one must not be mistaken for it.
        let previous_token = read_token(&data_dir);
        let _ = std::fs::remove_file(data_dir.join("node.token"));
        node.previous_token = previous_token;
        let mut agent_stop = stop_rx.clone();
        let mut supervisor = super::daemons::supervisor_config(
            &data_dir,
            &default_data_dir(),
            &args.allow_host_path,
            &args.process_users,
        )?;
        supervisor.node_address = publish_address(&args.address);
        let agent = tokio::spawn(berth_agent::node::run(
            node.clone(),
            supervisor,
            async move {
                let _ = agent_stop.wait_for(|s| *s).await;
            },
        ));
        if let Some(addr) = args.router {
            let token = wait_for_token(&data_dir).await?;
            // After registration: the CA the agent stored, if it pinned one.
            let trust = berth_agent::node::server_trust(&node)?;
            let client = Client::with_trust(&server_url, Some(token), trust)?;
            match &router {
                // The router started with the predecessor's token, revoked by this
                // registration: switch it to ours without stopping it.
                Some(running) => {
                    let _ = running.clients.send(client);
                }
                None => {
                    router = Some(
                        Router::start(client, router_id.clone(), addr, &router_opts, &stop_rx)
                            .await?,
                    );
                }
            }
        }
        println!("berth agent {name}: joining {server_url}");
        terminated().await;
        let _ = stop_tx.send(true);
        let outcome = agent
            .await
            .context("the agent task panicked")?
            .context("the agent failed");
        // Supervision has stopped: a successor may take the data directory now, while this
        // router finishes the requests it has in flight.
        drop(lock);
        if let Some(router) = router {
            let _ = router.task.await;
        }
        outcome
    })
}

/// The IP address `--address` names, on which containers publish their ports besides
/// loopback (see `berth_agent::docker::publish_addresses`): the address itself, or the first
/// one a host name resolves to. A name that does not resolve leaves loopback alone (with a
/// warning): instances are then unreachable from other nodes, never reachable from everywhere.
fn publish_address(address: &str) -> std::net::IpAddr {
    use std::net::{IpAddr, Ipv4Addr, ToSocketAddrs};
    if let Ok(ip) = address.parse::<IpAddr>() {
        return ip;
    }
    match (address, 0).to_socket_addrs().map(|mut a| a.next()) {
        Ok(Some(addr)) => addr.ip(),
        _ => {
            tracing::warn!(address, "--address does not resolve: containers publish their ports on 127.0.0.1 only; give the node's IP address");
            IpAddr::V4(Ipv4Addr::LOCALHOST)
        }
    }
}

/// The node's router: its task, and where to send a new credential.
struct Router {
    task: tokio::task::JoinHandle<()>,
    clients: watch::Sender<Client>,
}

impl Router {
    async fn start(
        client: Client,
        id: String,
        addr: SocketAddr,
        opts: &RouterOpts,
        stop: &watch::Receiver<bool>,
    ) -> anyhow::Result<Router> {
        let (clients, receiver) = watch::channel(client);
        let task = start_router(receiver, id, addr, opts, stop.clone()).await?;
        Ok(Router { task, clients })
    }
}

/// Asks the agent holding the data directory to stop (`SIGTERM`: it detaches from its
/// instances, leaving them running, and lets go of the lock).
fn stop_predecessor(pid: Option<u32>, data_dir: &Path) -> anyhow::Result<()> {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    let pid = pid.with_context(|| {
        format!(
            "cannot take over: {} does not say which process holds it",
            data_dir.join(berth_agent::lock::LOCK_FILE).display()
        )
    })?;
    let raw = i32::try_from(pid).context("the lock holder's pid is out of range")?;
    match kill(Pid::from_raw(raw), Signal::SIGTERM) {
        // Gone already: its lock is gone with it.
        Ok(()) | Err(nix::errno::Errno::ESRCH) => Ok(()),
        Err(err) => Err(err).with_context(|| {
            format!("cannot stop the running agent (pid {pid}) to take over from it")
        }),
    }
}

/// The join token from exactly one of `--join-token`, `--join-token-file` and
/// `BERTH_JOIN_TOKEN`. A file others may read, or the token on the command line (where every
/// local user sees it in `/proc/PID/cmdline`), gets a warning.
fn join_token(
    flag: Option<&str>,
    file: Option<&Path>,
    env: Option<&str>,
) -> anyhow::Result<String> {
    let given = [flag.is_some(), file.is_some(), env.is_some()]
        .iter()
        .filter(|g| **g)
        .count();
    anyhow::ensure!(
        given == 1,
        "berth agent needs the join token (DATA_DIR/join.token on the server) exactly one way: --join-token-file FILE, BERTH_JOIN_TOKEN, or --join-token TOKEN; {}",
        if given == 0 { "none was given" } else { "more than one was given" }
    );
    let token = if let Some(path) = file {
        use std::os::unix::fs::PermissionsExt;
        let meta = std::fs::metadata(path)
            .with_context(|| format!("cannot read the join token file {}", path.display()))?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            eprintln!(
                "warning: the join token file {} can be read by other users (mode {mode:o}): run `chmod 600 {}`",
                path.display(),
                path.display()
            );
        }
        std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the join token file {}", path.display()))?
    } else if let Some(token) = env {
        token.to_string()
    } else {
        eprintln!("warning: --join-token is visible to every local user in the process list; use --join-token-file FILE or BERTH_JOIN_TOKEN");
        flag.unwrap_or_default().to_string()
    };
    let token = token.trim().to_string();
    let source = match (file, env) {
        (Some(path), _) => path.display().to_string(),
        (None, Some(_)) => "BERTH_JOIN_TOKEN".to_string(),
        _ => "--join-token".to_string(),
    };
    anyhow::ensure!(
        !token.is_empty(),
        "the join token from {source} is empty: copy the server's DATA_DIR/join.token"
    );
    Ok(token)
}

/// The node token in `data_dir`, if there is one.
fn read_token(data_dir: &Path) -> Option<String> {
    let token = std::fs::read_to_string(data_dir.join("node.token")).ok()?;
    let token = token.trim();
    (!token.is_empty()).then(|| token.to_string())
}

/// Waits for this agent's registration to write its node token.
async fn wait_for_token(data_dir: &Path) -> anyhow::Result<String> {
    let deadline = crate::clock::tokio_now() + REGISTRATION_DEADLINE;
    loop {
        if let Some(token) = read_token(data_dir) {
            return Ok(token);
        }
        anyhow::ensure!(
            crate::clock::tokio_now() < deadline,
            "the agent did not register within {REGISTRATION_DEADLINE:?}; check --server, the join token, and the agent's log"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
