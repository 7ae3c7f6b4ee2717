//! The agent as a node of a cluster: it registers with the server, follows the instances the
//! server wants on this node, and reports what they do.
//!
//! Agents dial the server, never the reverse, so they work behind NAT. Static stability: when
//! the server cannot be reached, the agent keeps its instances exactly as they are and retries;
//! it never stops anything for lack of news.

use std::collections::BTreeMap;
use std::future::Future;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::time::Duration;

use berth_api::control::{GcReport, GcTrigger, Heartbeat, NodeResources, RegisterRequest};
use berth_api::join::{JoinToken, JoinTokenError};
use berth_client::{Client, ClientError, ServerTrust};
use berth_spec::model::DriverKind;
use tokio::sync::watch;

use crate::docker::DockerDriver;
use crate::supervisor::{Supervisor, SupervisorConfig};

/// How often the agent reports even when nothing changed (the server's liveness TTL is 3 s).
const HEARTBEAT_EVERY: Duration = Duration::from_millis(1000);
/// How long one long-poll of the desired instances waits.
const POLL_WAIT: Duration = Duration::from_secs(20);

/// The cluster CA, in the agent's data directory, once the agent verified the server with the
/// join token's fingerprint: from then on the agent trusts this CA and nothing else.
pub const SERVER_CA: &str = "server-ca.crt";

/// Where the agent joins and how it presents its node.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// The server's base URL, e.g. `http://127.0.0.1:7070` or `https://berth.internal:7070`.
    pub server: String,
    /// The join token, used only to register a name the server does not know yet.
    pub join_token: String,
    /// The node token of this node's last run, presented to register again (the join token
    /// cannot re-register a known name). `None`: read `DATA_DIR/node.token`, if any.
    pub previous_token: Option<String>,
    /// A CA file to trust an `https://` server with when the join token carries no fingerprint
    /// (`--ca` / `BERTH_CA`).
    pub ca_file: Option<PathBuf>,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    /// No labels were given (no `--labels`): keep the ones the node is registered with.
    pub keep_labels: bool,
    /// Holds `node.token` and every instance's directory.
    pub data_dir: PathBuf,
    /// The host at which this node's instances are reachable.
    pub address: String,
    /// The router this agent runs, if any (reported to the server).
    pub router: Option<String>,
}

/// Why the agent could not start.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("cannot use the agent's data directory {path}: {source}")]
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error(transparent)]
    JoinToken(#[from] JoinTokenError),
    #[error("{path}: {reason}; if the cluster was re-created, delete that file and join again with the new join token")]
    StoredCa { path: PathBuf, reason: String },
    #[error(transparent)]
    Supervisor(#[from] crate::Error),
}

/// Whom the agent trusts for `config.server`:
/// - with a `berth1-CA-SECRET` token, the CA it stored on its first connection
///   (`DATA_DIR/server-ca.crt`, which must have that fingerprint), or, before that, the CA
///   with that fingerprint in the server's chain;
/// - with a plain token, `config.ca_file`, else the stored CA if there is one;
/// - else nobody (fine for `http://`; an `https://` client refuses to start without a trust).
pub fn server_trust(config: &NodeConfig) -> Result<Option<ServerTrust>, NodeError> {
    let token = JoinToken::parse(&config.join_token)?;
    let stored = config.data_dir.join(SERVER_CA);
    let read_stored = || -> Result<Option<ServerTrust>, NodeError> {
        match std::fs::read(&stored) {
            Ok(pem) => Ok(Some(
                ServerTrust::from_pem(&pem, &stored.display().to_string()).map_err(|e| {
                    NodeError::StoredCa {
                        path: stored.clone(),
                        reason: e.to_string(),
                    }
                })?,
            )),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(NodeError::StoredCa {
                path: stored.clone(),
                reason: e.to_string(),
            }),
        }
    };
    match token.ca_sha256 {
        Some(fp) => match read_stored()? {
            Some(ServerTrust::Ca { certs, source }) => {
                if !certs.iter().any(|c| berth_client::fingerprint(c) == fp) {
                    return Err(NodeError::StoredCa {
                        path: stored,
                        reason: "this agent trusts a cluster CA whose fingerprint differs from the join token's".to_string(),
                    });
                }
                Ok(Some(ServerTrust::Ca { certs, source }))
            }
            _ => Ok(Some(ServerTrust::Fingerprint(fp))),
        },
        None => match &config.ca_file {
            Some(file) => Ok(Some(ServerTrust::from_pem_file(file)?)),
            None => read_stored(),
        },
    }
}

/// CPU (millicores) and memory (bytes) of this machine, for the scheduler.
pub fn machine_resources() -> NodeResources {
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get() as u64)
        .unwrap_or(1);
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map(|kb| kb * 1024)
        .unwrap_or(0);
    NodeResources {
        cpu_millis: cpus * 1000,
        memory_bytes: memory,
    }
}

/// Runs the agent until `shutdown`, then detaches from its instances (they keep running).
pub async fn run(
    config: NodeConfig,
    supervisor: SupervisorConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), NodeError> {
    std::fs::create_dir_all(&config.data_dir).map_err(|source| NodeError::DataDir {
        path: config.data_dir.clone(),
        source,
    })?;
    let mut supervisor = supervisor;
    if supervisor.docker.is_none() {
        // One line either way; without an Engine the node serves process services only and
        // never advertises the docker driver, so the scheduler places no image service here.
        supervisor.docker = DockerDriver::detect().await;
    }
    let mut drivers = vec![DriverKind::Process];
    if supervisor.docker.is_some() {
        drivers.push(DriverKind::Docker);
    }
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut sup_stop = stop_rx.clone();
    let docker = supervisor.docker.clone();
    let disk = DiskWatch {
        threshold: supervisor.gc_disk_threshold,
        every: supervisor.gc_disk_every,
    };
    let supervisor = Supervisor::start(supervisor, async move {
        let _ = sup_stop.wait_for(|s| *s).await;
    })
    .await?;
    let trust = server_trust(&config)?;
    let anonymous = Client::with_trust(&config.server, None, trust)?;
    let token = config
        .previous_token
        .clone()
        .or_else(|| read_token(&config.data_dir.join("node.token")));
    let node = Node {
        token: tokio::sync::Mutex::new(token),
        config,
        drivers,
        anonymous,
        client: tokio::sync::Mutex::new(None),
        gc_orders: watch::channel(None).0,
        last_gc: watch::channel(None).0,
    };
    let work = async {
        tokio::join!(
            node.follow_desired(&supervisor, stop_rx.clone()),
            node.report(&supervisor, stop_rx.clone()),
            node.collect_garbage(&supervisor, docker, disk, stop_rx.clone()),
        );
    };
    tokio::select! {
        _ = work => {}
        _ = shutdown => {}
    }
    let _ = stop_tx.send(true);
    supervisor.detach().await;
    Ok(())
}

struct Node {
    config: NodeConfig,
    /// What this node can run, as registered.
    drivers: Vec<DriverKind>,
    anonymous: Client,
    /// The node's current credential, if it has one: what it registers again with.
    token: tokio::sync::Mutex<Option<String>>,
    /// The client with this node's credential, once registered. A mutex, not a lock for
    /// readers, so two tasks needing a credential at once register only once.
    client: tokio::sync::Mutex<Option<Client>>,
    /// What garbage collection must keep and the latest `berth gc` generation, from the last
    /// desired set. `None` until the server answered once: without its keep list no image is
    /// ever removed (static stability applies to disk too).
    gc_orders: watch::Sender<Option<GcOrders>>,
    /// The last collection's report, sent with every heartbeat.
    last_gc: watch::Sender<Option<GcReport>>,
}

/// What the server says about garbage collection.
#[derive(Debug, Clone, PartialEq, Eq)]
struct GcOrders {
    keep: std::collections::HashSet<String>,
    generation: u64,
}

/// When the disk is full enough to collect without being asked.
#[derive(Debug, Clone, Copy)]
struct DiskWatch {
    threshold: f64,
    every: Duration,
}

impl Node {
    fn token_path(&self) -> PathBuf {
        self.config.data_dir.join("node.token")
    }

    /// The client with the node credential. The agent registers on its first call after every
    /// start (so the server always has its current drivers, labels and resources), and again
    /// whenever the server refuses the credential. It registers with its current node token;
    /// only without one, or when the server no longer knows it (the node was removed, or the
    /// server's store is new), with the join token, which the server accepts only for a name
    /// not registered yet. The new credential is saved in `node.token` for the agent's router
    /// and the next start.
    async fn client(&self, force_register: bool) -> Result<Client, ClientError> {
        let mut cached = self.client.lock().await;
        if !force_register {
            if let Some(c) = cached.as_ref() {
                return Ok(c.clone());
            }
        }
        let req = RegisterRequest {
            name: self.config.name.clone(),
            labels: self.config.labels.clone(),
            resources: machine_resources(),
            drivers: self.drivers.clone(),
            address: self.config.address.clone(),
            router: self.config.router.clone(),
            keep_labels: self.config.keep_labels,
        };
        let mut current = self.token.lock().await;
        let mut resp = None;
        if let Some(token) = current.clone() {
            match self.anonymous.with_token(Some(token))?.register(&req).await {
                Ok(r) => resp = Some(r),
                Err(ClientError::Unauthorized { .. }) => {
                    tracing::warn!(node = %self.config.name, "the server refused this node's token (was the node removed?): registering with the join token");
                }
                Err(e) => return Err(e),
            }
        }
        let resp = match resp {
            Some(r) => r,
            None => {
                let joining = self
                    .anonymous
                    .with_token(Some(self.config.join_token.clone()))?;
                joining.register(&req).await?
            }
        };
        *current = Some(resp.node_token.clone());
        // First contact by fingerprint: keep the CA the server was verified with, and trust only
        // it from the next start on (before node.token, which the agent's router waits for).
        if let Some(ca) = self.anonymous.learned_ca() {
            let path = self.config.data_dir.join(SERVER_CA);
            if !path.exists() {
                match write_file(&path, &berth_client::to_pem(&ca), 0o644) {
                    Ok(()) => {
                        tracing::info!(fingerprint = %berth_client::fingerprint(&ca), "stored the cluster CA in {}", path.display())
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot store the cluster CA in {}; the next start verifies the server by the join token's fingerprint again", path.display())
                    }
                }
            }
        }
        if let Err(e) = write_secret(&self.token_path(), &resp.node_token) {
            tracing::warn!(error = %e, "cannot save the node token; the agent will register again after a restart");
        }
        let c = self.anonymous.with_token(Some(resp.node_token))?;
        *cached = Some(c.clone());
        let shown = |l: &BTreeMap<String, String>| {
            if l.is_empty() {
                "none".to_string()
            } else {
                l.iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(",")
            }
        };
        match &resp.previous_labels {
            Some(old) => {
                tracing::warn!(node = %self.config.name, from = %shown(old), to = %shown(&resp.labels), "registered with the server; node labels changed")
            }
            None if self.config.keep_labels => {
                tracing::info!(node = %self.config.name, labels = %shown(&resp.labels), "registered with the server; kept the registered labels (no --labels given)")
            }
            None => {
                tracing::info!(node = %self.config.name, labels = %shown(&resp.labels), "registered with the server")
            }
        }
        Ok(c)
    }

    /// Calls `f` with the node's client, registering again once if the credential is refused.
    async fn with_client<T, F, Fut>(&self, f: F) -> Result<T, ClientError>
    where
        F: Fn(Client) -> Fut,
        Fut: Future<Output = Result<T, ClientError>>,
    {
        let c = self.client(false).await?;
        match f(c).await {
            Err(ClientError::Unauthorized { .. }) => f(self.client(true).await?).await,
            other => other,
        }
    }

    /// Long-polls the node's desired instances and hands each new set to the supervisor.
    async fn follow_desired(&self, supervisor: &Supervisor, mut stop: watch::Receiver<bool>) {
        let mut version: Option<String> = None;
        let mut backoff = Duration::from_millis(100);
        loop {
            let name = self.config.name.clone();
            let known = version.clone();
            let poll = self.with_client(|c| {
                let name = name.clone();
                let known = known.clone();
                async move {
                    c.desired(
                        &name,
                        known.as_deref(),
                        if known.is_some() {
                            POLL_WAIT
                        } else {
                            Duration::ZERO
                        },
                    )
                    .await
                }
            });
            let result = tokio::select! {
                r = poll => r,
                _ = stop.wait_for(|s| *s) => return,
            };
            match result {
                Ok(desired) => {
                    backoff = Duration::from_millis(100);
                    if version.as_deref() != Some(desired.version.as_str()) {
                        supervisor.set_desired(desired.instances);
                        version = Some(desired.version);
                        let orders = GcOrders {
                            keep: desired.keep_images.into_iter().collect(),
                            generation: desired.gc_generation,
                        };
                        self.gc_orders.send_if_modified(|o| {
                            let changed = o.as_ref() != Some(&orders);
                            *o = Some(orders);
                            changed
                        });
                    }
                }
                Err(e) => {
                    // Static stability: keep everything running, try again later.
                    tracing::warn!(error = %e, "cannot fetch this node's instances; keeping them as they are");
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = stop.wait_for(|s| *s) => return,
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    /// Sends a heartbeat with every status on each change, and at least every second.
    async fn report(&self, supervisor: &Supervisor, mut stop: watch::Receiver<bool>) {
        let mut statuses = supervisor.statuses();
        let mut last_gc = self.last_gc.subscribe();
        loop {
            let snapshot: Vec<_> = statuses.borrow_and_update().values().cloned().collect();
            let name = self.config.name.clone();
            let beat = Heartbeat {
                statuses: snapshot,
                last_gc: last_gc.borrow_and_update().clone(),
            };
            if let Err(e) = self
                .with_client(|c| {
                    let name = name.clone();
                    let beat = beat.clone();
                    async move { c.heartbeat(&name, &beat).await }
                })
                .await
            {
                tracing::debug!(error = %e, "heartbeat failed");
            }
            tokio::select! {
                _ = statuses.changed() => {}
                _ = last_gc.changed() => {}
                _ = tokio::time::sleep(HEARTBEAT_EVERY) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
        }
    }

    /// Collects garbage once for every `berth gc` generation not handled yet (remembered in
    /// `images.json`, so across restarts too), and whenever the filesystem holding Docker's
    /// data is fuller than the threshold (looked at every `disk.every`). Nothing is collected
    /// before the server sent its keep list. On a node without an Engine a `berth gc` is only
    /// acknowledged, so the command waiting for every node does not wait for this one.
    async fn collect_garbage(
        &self,
        supervisor: &Supervisor,
        docker: Option<DockerDriver>,
        disk: DiskWatch,
        mut stop: watch::Receiver<bool>,
    ) {
        let mut orders = self.gc_orders.subscribe();
        let mut disk_tick = tokio::time::interval(disk.every);
        disk_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut data_root: Option<PathBuf> = None;
        loop {
            // The select only says what woke the loop; the work (which awaits) comes after it.
            let disk_woke = tokio::select! {
                changed = orders.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    false
                }
                _ = disk_tick.tick() => true,
                _ = stop.wait_for(|s| *s) => return,
            };
            let trigger = if !disk_woke {
                let handled = supervisor.ledger().gc_generation();
                let generation = orders.borrow_and_update().as_ref().map(|o| o.generation);
                match generation {
                    Some(g) if g > handled => GcTrigger::Command,
                    _ => continue,
                }
            } else {
                {
                    let Some(docker) = &docker else { continue };
                    if data_root.is_none() {
                        data_root = docker.data_root().await;
                    }
                    let Some(used) = data_root.as_deref().and_then(crate::gc::disk_used_fraction)
                    else {
                        continue;
                    };
                    let known = orders.borrow().is_some();
                    if used <= disk.threshold || !known {
                        continue;
                    }
                    tracing::info!(
                        used = format!("{:.0}%", used * 100.0),
                        threshold = format!("{:.0}%", disk.threshold * 100.0),
                        "Docker's disk is above the threshold: collecting garbage"
                    );
                    GcTrigger::Disk
                }
            };
            let current = orders.borrow().clone();
            let Some(current) = current else {
                continue;
            };
            let ledger = supervisor.ledger();
            let mut report = match &docker {
                Some(d) => {
                    d.collect_garbage(supervisor.owner(), &current.keep, ledger)
                        .await
                }
                None => GcReport::default(),
            };
            if trigger == GcTrigger::Command {
                ledger.set_gc_generation(current.generation);
            }
            report.generation = ledger.gc_generation();
            report.trigger = Some(trigger);
            report.at_ms = crate::process::now_ms();
            tracing::info!(
                trigger = ?trigger,
                generation = report.generation,
                containers = report.containers_removed,
                images = ?report.images_removed,
                bytes = report.bytes_reclaimed,
                errors = ?report.errors,
                "garbage collection: removed {} container(s) and {} image(s), {} bytes reclaimed",
                report.containers_removed,
                report.images_removed.len(),
                report.bytes_reclaimed
            );
            self.last_gc.send_replace(Some(report));
        }
    }
}

/// The credential in `path`, if there is one.
fn read_token(path: &std::path::Path) -> Option<String> {
    let token = std::fs::read_to_string(path).ok()?;
    let token = token.trim();
    (!token.is_empty()).then(|| token.to_string())
}

/// Writes a credential readable only by its owner.
fn write_secret(path: &std::path::Path, content: &str) -> std::io::Result<()> {
    write_file(path, content, 0o600)
}

/// Writes `path` atomically, created with `mode`.
fn write_file(path: &std::path::Path, content: &str, mode: u32) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)?;
    f.write_all(content.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}
