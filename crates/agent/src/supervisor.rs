//! The supervisor: reconciles the instances that run on this node with the desired set.
//!
//! One tokio task owns the set; each instance gets its own task that starts it, watches it
//! (exit, health, log size), restarts it per its policy and stops it when asked. Statuses are
//! published as one map in a [`watch`] channel, so a slow reader only ever sees the latest state.
//!
//! # Drivers
//! What runs an instance is its [`Driver`] (the first of [`Drivers`] that runs its spec: the
//! process driver, and with an Engine the Docker driver); the supervisor only decides — what
//! to start, adopt, restart, stop and report — and never asks which runtime it talks to.
//! Its decisions are unit-tested on a recording double (`supervisor/decisions.rs`).
//!
//! # Health checks
//! An adopted instance is probed at once and keeps its `healthy` verdict until `unhealthy`
//! failures say otherwise. A fresh one is probed after [`FIRST_PROBE`] (50 ms, or its
//! `interval` if shorter) and at that pace until its first success, then every `interval`:
//! a workload that is up in 30 ms gets traffic then, not one `interval` (1 s by default) later.
//! Until that first success only one failure per `interval` counts against `unhealthy`.
//!
//! # Restarts: back-off is for crash loops
//! An instance that exits is restarted per its policy. One that became healthy in the run that
//! just ended (an adopted one counts: it was serving) is restarted at once, however often it is
//! killed: it was serving, and something outside it (an operator, the OOM killer, chaos) ended
//! it. Only runs that never became healthy are a crash loop, and only those back off (500 ms
//! doubling to 10 s; a run of 60 s resets the delay). An instance without a health check counts
//! as healthy once it ran [`SupervisorConfig::served_after`] (1 s).
//!
//! While no other instance of its service on this node is healthy, an instance that has served
//! before waits at most `backoff_base` (500 ms) — never a long delay with the service dark —
//! and a wait in progress is cut short when the last healthy sibling goes. The 500 ms floor is
//! kept on purpose: a workload that crashes at start must not make the agent spin.
//!
//! # Static stability
//! Nothing here stops an instance for lack of news. Shutting the supervisor down (its shutdown
//! future resolving, [`Supervisor::detach`], or dropping the [`Supervisor`]) ends the tasks and
//! leaves every workload running; the next supervisor on the same data directory adopts them.
//! Only a desired set that no longer holds an instance stops it. So the agent shell must call
//! [`Supervisor::set_desired`] only with a set it actually received from the server — never an
//! empty one because the server is unreachable.
//!
//! # Secrets
//! The values of an instance's secrets ([`InstanceSpec::secret_env`]) live in memory only:
//! `instance.json` holds the spec without them. Adoption needs no values (the workload already
//! has its environment), but *starting* one does, so after an agent restart an instance that
//! declares secrets and must be (re)started waits in `pending` until the server's first desired
//! set brings the values again. That is the one place where the agent depends on the control
//! plane to restart a workload: a documented limitation of keeping secrets off the node's disk.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use berth_api::{InstanceSpec, InstanceState, InstanceStatus};
use berth_spec::model::RestartPolicy;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};

use crate::clock;
use crate::docker::{self, DockerDriver};
use crate::driver::{Driver, Drivers, LogFollower, Workload};
use crate::error::{Error, Result};
use crate::gc::ImageLedger;
use crate::health::Transition;
use crate::logs::LogConfig;
use crate::process::{Exit, ProcessDriver};
use crate::record::{Finished, InstanceRecord};

/// Every instance's latest status, by instance id.
pub type Statuses = BTreeMap<String, InstanceStatus>;

/// How a [`Supervisor`] runs. [`SupervisorConfig::new`] gives production defaults.
#[derive(Debug, Clone)]
pub struct SupervisorConfig {
    /// `DATA_DIR`: instances live under `DATA_DIR/instances/<id>/`.
    pub data_dir: PathBuf,
    /// The binary `berth` in a command means; `None` for [`std::env::current_exe`].
    pub self_exe: Option<PathBuf>,
    /// Log rotation limits.
    pub logs: LogConfig,
    /// The first restart delay; each further consecutive restart doubles it.
    pub backoff_base: Duration,
    /// The cap on the restart delay, so a crash-looping instance is retried at least this often.
    pub backoff_max: Duration,
    /// A run at least this long resets the delay to `backoff_base`: the instance was working.
    pub backoff_reset: Duration,
    /// An instance without a health check counts as having served (so it restarts without
    /// back-off) once it ran this long; one with a check, once the check passed.
    pub served_after: Duration,
    /// How often log files are checked for rotation.
    pub rotate_every: Duration,
    /// Wall-clock milliseconds for `since_ms` (injectable so tests can pin it).
    pub clock: fn() -> u64,
    /// The Docker Engine for `image:` services; `None` on a node without one (such instances
    /// then fail, saying so). The agent shell fills it in with [`DockerDriver::detect`].
    pub docker: Option<DockerDriver>,
    /// The agent shell collects garbage on its own when the filesystem holding Docker's data
    /// is used above this fraction (0.85 by default; `BERTH_GC_DISK_PERCENT` overrides).
    pub gc_disk_threshold: f64,
    /// How often that filesystem is looked at (every minute by default).
    pub gc_disk_every: Duration,
    /// The address this node's instances are reached at (`berth agent --address`; 127.0.0.1
    /// by default): containers publish their ports on loopback and on it, never on every
    /// interface (see [`docker::publish_addresses`]).
    pub node_address: std::net::IpAddr,
    /// Which host paths volumes may mount: by default not `/`, `/etc`, `/root`, the Docker
    /// socket, this data directory nor what holds them; the shell adds berth's other data
    /// directories and `--allow-host-path`. Checked at every start; a refused volume fails the
    /// instance, saying which volume and which flag.
    pub host_paths: crate::host_paths::HostPathPolicy,
    /// Who `process:` instances run as: `--process-user` and `--allow-root-processes` (by
    /// default: as the agent, and root only if the agent is root and nothing asks for a user).
    pub process_users: crate::run_as::ProcessUsers,
}

impl SupervisorConfig {
    /// Defaults: back-off 500 ms doubling to 10 s, reset after a 60 s run (none at all after a
    /// run that became healthy, or one of 1 s without a health check), logs 10 MiB × 3
    /// checked every 5 s, the system clock, garbage collection above 85% disk use checked
    /// every minute.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        let data_dir = data_dir.into();
        SupervisorConfig {
            host_paths: crate::host_paths::HostPathPolicy::new().protect(&data_dir),
            data_dir,
            self_exe: None,
            logs: LogConfig::default(),
            backoff_base: Duration::from_millis(500),
            backoff_max: Duration::from_secs(10),
            backoff_reset: Duration::from_secs(60),
            served_after: Duration::from_secs(1),
            rotate_every: Duration::from_secs(5),
            clock: clock::now_ms,
            docker: None,
            gc_disk_threshold: std::env::var("BERTH_GC_DISK_PERCENT")
                .ok()
                .and_then(|p| p.trim().parse::<f64>().ok())
                .filter(|p| (0.0..=100.0).contains(p))
                .map_or(0.85, |p| p / 100.0),
            gc_disk_every: Duration::from_secs(60),
            node_address: std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
            process_users: crate::run_as::ProcessUsers::default(),
        }
    }
}

/// The restart delay before consecutive restart number `attempt` (0-based): `base × 2^attempt`,
/// capped at `max`.
pub fn backoff(base: Duration, max: Duration, attempt: u32) -> Duration {
    base.saturating_mul(2u32.saturating_pow(attempt)).min(max)
}

/// A handle on the running supervisor task. Dropping it detaches (instances keep running).
#[derive(Debug)]
pub struct Supervisor {
    desired: watch::Sender<Option<Vec<InstanceSpec>>>,
    statuses: watch::Receiver<Statuses>,
    driver: Arc<ProcessDriver>,
    task: Option<JoinHandle<()>>,
    /// The `berth.agent` label of this supervisor's containers.
    owner: Arc<str>,
    /// The images this agent created containers from (`DATA_DIR/images.json`).
    ledger: Arc<ImageLedger>,
}

impl Supervisor {
    /// Starts supervising: reads every instance record under the data directory, adopts the
    /// instances still running (same pid and start time), restarts per policy those that died
    /// while no agent ran, and remembers those that had finished. Until the first
    /// [`set_desired`](Self::set_desired) nothing is stopped. Runs until `shutdown` resolves or
    /// the handle is dropped. Must be called inside a tokio runtime.
    pub async fn start(
        config: SupervisorConfig,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<Supervisor> {
        let mut config = config;
        config.docker = config
            .docker
            .take()
            .map(|d| d.with_node_address(config.node_address));
        let paths = process_driver(&config);
        let owner = owner(&config);
        // The process driver runs what is not an image; with an Engine, the Docker driver
        // runs images (without one, they fail saying so: see `Drivers::pick`).
        let mut drivers: Vec<Arc<dyn Driver>> = vec![Arc::new(paths.clone())];
        if let Some(engine) = &config.docker {
            drivers.push(Arc::new(docker::Containers::new(
                engine.clone(),
                paths.clone(),
                owner.clone(),
            )));
        }
        Self::start_with(config, Drivers::new(drivers), shutdown).await
    }

    /// [`start`](Self::start) on the given `drivers` instead of the ones `config` names
    /// (`config.docker` is not looked at): the seam for a runtime berth does not ship, and for
    /// the supervisor's tests (a recording double). Instance records and logs still live under
    /// `config.data_dir`.
    pub async fn start_with(
        config: SupervisorConfig,
        drivers: Drivers,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<Supervisor> {
        let paths = Arc::new(process_driver(&config));
        let records = paths.records()?;
        let owner = owner(&config);
        let ledger = Arc::new(ImageLedger::open(&config.data_dir));
        let (desired_tx, desired_rx) = watch::channel(None);
        let (status_tx, status_rx) = watch::channel(Statuses::new());
        let drivers = Arc::new(drivers);
        let mut main = Main {
            secrets: watch::channel(SecretValues::default()).0,
            ledger: ledger.clone(),
            paths: paths.clone(),
            drivers: drivers.clone(),
            config: Arc::new(config),
            statuses: Arc::new(status_tx),
            tasks: HashMap::new(),
            services: Arc::default(),
            desired: None,
            done: mpsc::unbounded_channel(),
        };
        // Workloads that no record accounts for (spawned, then the agent died before writing
        // the record) would hold their instance's port while it starts again: end them now,
        // before anything is started.
        for driver in drivers.iter() {
            driver.clear_unrecorded(&records);
        }
        for record in records {
            let initial = if let Some(f) = &record.finished {
                Initial::Finished(f.clone())
            } else {
                match drivers.pick(&record.spec) {
                    Ok(driver) => match driver.adopt(&record).await {
                        Some(w) => Initial::Adopted(w),
                        None => Initial::Died,
                    },
                    Err(e) => {
                        tracing::warn!(id = %record.spec.id, error = %e, "cannot adopt instance");
                        Initial::Died
                    }
                }
            };
            // An adopted container keeps reporting the image it runs, so its release gets
            // pinned even if the agent restarted before the first report.
            let image_id = record.container.as_ref().and(record.image_id.clone());
            main.spawn(
                record.spec,
                Some(record.ports),
                record.restarts,
                initial,
                image_id,
            );
        }
        let task = tokio::spawn(main.run(desired_rx, shutdown));
        Ok(Supervisor {
            desired: desired_tx,
            statuses: status_rx,
            driver: paths,
            task: Some(task),
            owner,
            ledger,
        })
    }

    /// Replaces the desired set: instances not running yet are started, running ones not in the
    /// set are stopped (`SIGTERM`, then `SIGKILL` after their `stop_grace`), the others are left
    /// alone. An instance's spec never changes (a new release has new ids), so a changed spec
    /// for a known id is ignored. Repeating a set is harmless.
    pub fn set_desired(&self, desired: Vec<InstanceSpec>) {
        self.desired.send_replace(Some(desired));
    }

    /// A receiver of every instance's status. An instance stopped because it left the desired
    /// set shows `stopped` until the next `set_desired`, then disappears.
    pub fn statuses(&self) -> watch::Receiver<Statuses> {
        self.statuses.clone()
    }

    /// The `berth.agent` label this supervisor puts on its containers (its data directory,
    /// absolute): what garbage collection goes by to touch only this agent's containers.
    pub fn owner(&self) -> &str {
        &self.owner
    }

    /// The images this agent created containers from: the only ones garbage collection may
    /// remove.
    pub fn ledger(&self) -> &Arc<ImageLedger> {
        &self.ledger
    }

    /// The driver, e.g. for [`ProcessDriver::log_path`] when serving `berth logs`.
    pub fn driver(&self) -> &Arc<ProcessDriver> {
        &self.driver
    }

    /// Stops supervising and waits until every task ended, leaving all instances running —
    /// what an agent does when it exits. (A stop already in progress is finished first.)
    pub async fn detach(mut self) {
        let task = self.task.take();
        drop(self);
        if let Some(task) = task {
            let _ = task.await;
        }
    }
}

/// The process driver of `config`'s data directory: it runs `process:` services, and keeps
/// every instance's record and logs (whatever runs it).
fn process_driver(config: &SupervisorConfig) -> ProcessDriver {
    let driver = ProcessDriver::new(&config.data_dir)
        .with_log_config(config.logs)
        .with_users(config.process_users.clone());
    match &config.self_exe {
        Some(exe) => driver.with_self_exe(exe),
        None => driver,
    }
}

/// The agent's identity on a shared Engine: its data directory, as an absolute path (the
/// `berth.agent` label of its containers).
fn owner(config: &SupervisorConfig) -> Arc<str> {
    std::fs::canonicalize(&config.data_dir)
        .unwrap_or_else(|_| config.data_dir.clone())
        .display()
        .to_string()
        .into()
}

/// How an instance task begins.
enum Initial {
    /// Desired and not started: resolve ports and start.
    Fresh,
    /// Found running by a new agent.
    Adopted(Box<dyn Workload>),
    /// Its record says it ran, but it is gone and no one saw it exit.
    Died,
    /// It had exited and was not to be restarted.
    Finished(Finished),
}

enum Command {
    Stop,
}

struct Task {
    commands: mpsc::Sender<Command>,
    stopping: bool,
    _join: JoinHandle<()>,
}

/// Instance id → its service (`stack/service`), for every instance that has a task: what an
/// instance waiting to restart looks at to see whether its service has a healthy instance left
/// on this node.
type Services = Arc<std::sync::Mutex<HashMap<String, String>>>;

/// The key of `spec`'s service in [`Services`].
fn service_key(spec: &InstanceSpec) -> String {
    format!("{}/{}", spec.stack, spec.service)
}

/// Instance id → its secrets' values, as the server last sent them (in memory only).
type SecretValues = Arc<HashMap<String, BTreeMap<String, String>>>;

struct Main {
    /// The secrets' values of the desired instances; instance tasks that must start without
    /// them (after an agent restart) wait on this.
    secrets: watch::Sender<SecretValues>,
    /// The data directory's instance records and logs.
    paths: Arc<ProcessDriver>,
    /// The runtimes, one of which runs each instance.
    drivers: Arc<Drivers>,
    config: Arc<SupervisorConfig>,
    statuses: Arc<watch::Sender<Statuses>>,
    tasks: HashMap<String, Task>,
    /// The service of every instance that has a task (see [`Services`]).
    services: Services,
    desired: Option<BTreeMap<String, InstanceSpec>>,
    done: (
        mpsc::UnboundedSender<String>,
        mpsc::UnboundedReceiver<String>,
    ),
    /// Where every image a container is created from is recorded, for garbage collection.
    ledger: Arc<ImageLedger>,
}

impl Main {
    fn spawn(
        &mut self,
        spec: InstanceSpec,
        ports: Option<BTreeMap<String, u16>>,
        restarts: u32,
        initial: Initial,
        image_id: Option<String>,
    ) {
        let (tx, rx) = mpsc::channel(4);
        let id = spec.id.clone();
        self.services
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id.clone(), service_key(&spec));
        let instance = Instance {
            paths: self.paths.clone(),
            drivers: self.drivers.clone(),
            config: self.config.clone(),
            statuses: self.statuses.clone(),
            spec,
            ports,
            restarts,
            failures: 0,
            served: false,
            services: self.services.clone(),
            pid: None,
            commands: rx,
            image_id,
            ledger: self.ledger.clone(),
            secrets: self.secrets.subscribe(),
        };
        let done = self.done.0.clone();
        let task_id = id.clone();
        let join = tokio::spawn(async move {
            instance.run(initial).await;
            let _ = done.send(task_id);
        });
        self.tasks.insert(
            id,
            Task {
                commands: tx,
                stopping: false,
                _join: join,
            },
        );
    }

    async fn run(
        mut self,
        mut desired_rx: watch::Receiver<Option<Vec<InstanceSpec>>>,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) {
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                changed = desired_rx.changed() => {
                    if changed.is_err() {
                        break; // the Supervisor handle is gone: detach
                    }
                    let list = desired_rx.borrow_and_update().clone();
                    if let Some(list) = list {
                        self.reconcile(list);
                    }
                }
                Some(id) = self.done.1.recv() => {
                    self.tasks.remove(&id);
                    self.services.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
                    if let Some(spec) = self.desired.as_ref().and_then(|d| d.get(&id)).cloned() {
                        // Desired again while it was being stopped: start it afresh.
                        self.spawn(spec, None, 0, Initial::Fresh, None);
                    }
                }
            }
        }
        // Detach: closing every command channel makes each instance task return without
        // touching its process. Wait for them so `detach()` means "nothing runs any more".
        let joins: Vec<JoinHandle<()>> = self.tasks.drain().map(|(_, t)| t._join).collect();
        for join in joins {
            let _ = join.await;
        }
    }

    fn reconcile(&mut self, list: Vec<InstanceSpec>) {
        let desired: BTreeMap<String, InstanceSpec> =
            list.into_iter().map(|s| (s.id.clone(), s)).collect();
        let values: HashMap<String, BTreeMap<String, String>> = desired
            .values()
            .filter(|s| !s.secret_env.is_empty())
            .map(|s| (s.id.clone(), s.secret_env.clone()))
            .collect();
        self.secrets.send_if_modified(|current| {
            let changed = **current != values;
            if changed {
                *current = Arc::new(values);
            }
            changed
        });
        for (id, spec) in &desired {
            if !self.tasks.contains_key(id) {
                self.spawn(spec.clone(), None, 0, Initial::Fresh, None);
            }
        }
        if self.desired.is_none() {
            // The first desired set the server sent: from now on every workload of this agent
            // (a container) is either some task's (desired, or being stopped) or an orphan.
            let known: std::collections::HashSet<String> = self.tasks.keys().cloned().collect();
            for driver in self.drivers.iter() {
                tokio::spawn(driver.remove_unknown(known.clone()));
            }
        }
        for (id, task) in &mut self.tasks {
            if !desired.contains_key(id) && !task.stopping {
                // Capacity 4 and at most one Stop is ever sent, so this cannot be full.
                let _ = task.commands.try_send(Command::Stop);
                task.stopping = true;
            }
        }
        let tasks = &self.tasks;
        self.statuses.send_if_modified(|map| {
            let before = map.len();
            map.retain(|id, _| tasks.contains_key(id) || desired.contains_key(id));
            map.len() != before
        });
        self.desired = Some(desired);
    }
}

/// What an instance task does next.
enum Phase {
    Start,
    Run {
        running: Box<dyn Workload>,
        adopted: bool,
    },
    Exited {
        ok: bool,
        reason: String,
        ran: Duration,
        /// Whether the instance became healthy during the run (see [`Instance::exited`]).
        served: bool,
    },
    Idle,
}

struct Instance {
    /// The data directory's instance records and logs.
    paths: Arc<ProcessDriver>,
    /// The runtimes; [`Drivers::pick`] names this instance's.
    drivers: Arc<Drivers>,
    config: Arc<SupervisorConfig>,
    statuses: Arc<watch::Sender<Statuses>>,
    spec: InstanceSpec,
    /// Resolved once, then kept for the instance's life.
    ports: Option<BTreeMap<String, u16>>,
    restarts: u32,
    /// Consecutive short runs that never became healthy, for the back-off.
    failures: u32,
    /// Whether it was ever healthy under this agent (adopted running counts).
    served: bool,
    /// Every instance's service, to see whether this one's has a healthy instance left.
    services: Services,
    pid: Option<u32>,
    commands: mpsc::Receiver<Command>,
    /// The image id the current container runs, for image instances.
    image_id: Option<String>,
    /// Where the images containers are created from are recorded.
    ledger: Arc<ImageLedger>,
    /// The secrets' values the server sent for every desired instance (see [`Main::secrets`]).
    secrets: watch::Receiver<SecretValues>,
}

impl Instance {
    /// Makes sure the spec holds a value for each secret the service declares before a start.
    /// A spec restored from `instance.json` has none (values never touch the disk): wait in
    /// `pending` for the server to send them. `false` when stopped (or detached) meanwhile.
    async fn await_secrets(&mut self) -> bool {
        loop {
            let complete = |env: &BTreeMap<String, String>| {
                self.spec.spec.secrets.iter().all(|n| env.contains_key(n))
            };
            if complete(&self.spec.secret_env) {
                return true;
            }
            let sent = self.secrets.borrow_and_update().get(&self.spec.id).cloned();
            if let Some(values) = sent.filter(|v| complete(v)) {
                self.spec.secret_env = values;
                return true;
            }
            self.publish(
                InstanceState::Pending,
                Some("waiting for the server to send its secrets (the agent keeps their values in memory only)".to_string()),
            );
            tokio::select! {
                changed = self.secrets.changed() => {
                    if changed.is_err() {
                        return false;
                    }
                }
                command = self.commands.recv() => {
                    if let Some(Command::Stop) = command {
                        self.discard().await;
                        self.forget();
                        self.publish(InstanceState::Stopped, Some("stopped while waiting for its secrets".to_string()));
                    }
                    return false;
                }
            }
        }
    }

    async fn run(mut self, initial: Initial) {
        let mut phase = match initial {
            Initial::Fresh => Phase::Start,
            Initial::Adopted(running) => Phase::Run {
                running,
                adopted: true,
            },
            Initial::Died => Phase::Exited {
                ok: false,
                reason: Exit::Unknown.to_string(),
                ran: Duration::ZERO,
                served: false,
            },
            Initial::Finished(f) => {
                let state = if f.failed {
                    InstanceState::Failed
                } else {
                    InstanceState::Stopped
                };
                self.publish(state, Some(f.message));
                Phase::Idle
            }
        };
        loop {
            let next = match phase {
                Phase::Start => {
                    if !self.await_secrets().await {
                        return;
                    }
                    Some(self.start().await)
                }
                Phase::Run { running, adopted } => self.supervise(running, adopted).await,
                Phase::Exited {
                    ok,
                    reason,
                    ran,
                    served,
                } => self.exited(ok, reason, ran, served).await,
                Phase::Idle => self.idle().await,
            };
            match next {
                Some(p) => phase = p,
                None => return,
            }
        }
    }

    async fn start(&mut self) -> Phase {
        if let Err(e) = self.check_volumes() {
            return self.start_failed(e);
        }
        let driver = match self.drivers.pick(&self.spec) {
            Ok(d) => d.clone(),
            Err(e) => return self.start_failed(e),
        };
        let ports = match &self.ports {
            Some(p) => p.clone(),
            None => match driver.ports(&self.spec) {
                Ok(p) => {
                    self.ports = Some(p.clone());
                    p
                }
                Err(e) => return self.start_failed(e),
            },
        };
        match driver.start(&self.spec, ports, self.restarts).await {
            Ok(running) => {
                if let Some(image_id) = running.image_id() {
                    if let Some(reference) = &self.spec.spec.image {
                        self.ledger.note(reference, &image_id);
                    }
                    self.image_id = Some(image_id);
                }
                Phase::Run {
                    running,
                    adopted: false,
                }
            }
            Err(e) => {
                if driver.port_taken(&e) {
                    // Another program (or another container starting at the same moment, which
                    // was handed the same free port) took a picked host port: pick new ones on
                    // the retry (the instance had no endpoint yet, so nothing moves).
                    self.ports = None;
                }
                self.start_failed(e)
            }
        }
    }

    /// Refuses a start whose volumes mount a host path this agent does not allow.
    fn check_volumes(&self) -> Result<()> {
        let mut policy = self.config.host_paths.clone();
        for path in self.drivers.protected_paths() {
            policy = policy.protect(path);
        }
        for v in &self.spec.spec.volumes {
            policy
                .check(&v.host)
                .map_err(|why| Error::HostPathRefused {
                    id: self.spec.id.clone(),
                    service: self.spec.service.clone(),
                    volume: format!(
                        "{}:{}{}",
                        v.host,
                        v.container,
                        if v.read_only { ":ro" } else { "" }
                    ),
                    why,
                })?;
        }
        Ok(())
    }

    fn start_failed(&mut self, e: crate::Error) -> Phase {
        tracing::warn!(id = %self.spec.id, error = %e, "cannot start instance");
        if e.is_permanent() {
            self.pid = None;
            self.publish(InstanceState::Failed, Some(e.to_string()));
            Phase::Idle
        } else {
            Phase::Exited {
                ok: false,
                reason: e.to_string(),
                ran: Duration::ZERO,
                served: false,
            }
        }
    }

    /// Watches a running instance until it exits (→ `Exited`), is stopped, or the task is
    /// detached (→ `None`).
    async fn supervise(&mut self, mut running: Box<dyn Workload>, adopted: bool) -> Option<Phase> {
        let started = clock::now();
        self.pid = running.pid();
        let ports = self.ports.clone().unwrap_or_default();
        let built = running.health_check(&self.spec, &ports);
        let mut logs = self.follow_logs(running.as_ref());
        // Whether this run became healthy: then its end is not a crash loop (see `exited`).
        // Without a health check, running `served_after` counts (decided at the exit).
        let mut served = adopted;
        let unchecked = matches!(built, Ok(None));
        let mut check = match built {
            Ok(Some(mut c)) => {
                if adopted {
                    c.tracker = c.tracker.with_verdict(Some(true));
                }
                // An adopted instance is probed at once; a fresh one soon (see `Warmup`).
                let first = if adopted {
                    Duration::ZERO
                } else {
                    c.interval.min(FIRST_PROBE)
                };
                self.publish(
                    if adopted {
                        InstanceState::Healthy
                    } else {
                        InstanceState::Starting
                    },
                    None,
                );
                Some((c, first))
            }
            Ok(None) => {
                self.publish(InstanceState::Healthy, None);
                None
            }
            Err(e) => {
                // A check that cannot run never passes: say why instead of claiming health.
                self.publish(InstanceState::Unhealthy, Some(e.to_string()));
                None
            }
        };
        let mut warmup = check
            .as_ref()
            .filter(|(c, first)| !adopted && *first < c.interval)
            .map(|_| Warmup { counted: started });
        let mut probe_tick = check.as_ref().map(|(c, first)| {
            let every = if warmup.is_some() { *first } else { c.interval };
            probe_interval(clock::now() + *first, every)
        });
        let mut rotate_tick = tokio::time::interval(self.config.rotate_every);
        rotate_tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                (ok, reason) = running.wait() => {
                    if let Some(logs) = logs.take() {
                        logs.finish().await;
                    }
                    self.rotate_logs();
                    tracing::info!(id = %self.spec.id, exit = %reason, "instance exited");
                    let ran = started.elapsed();
                    return Some(Phase::Exited {
                        ok,
                        reason,
                        ran,
                        served: served || (unchecked && ran >= self.config.served_after),
                    });
                }
                _ = tick(&mut probe_tick) => {
                    if let Some((c, _)) = check.as_mut() {
                        let result = c.probe.run(c.timeout).await;
                        let transition = match warmup.as_mut() {
                            Some(_) if result.is_ok() => {
                                // First success: from now on, probe every `interval`.
                                warmup = None;
                                probe_tick = Some(probe_interval(clock::now() + c.interval, c.interval));
                                c.tracker.observe(true)
                            }
                            Some(w) => {
                                // Not up yet: a failure counts once per `interval`, as it would
                                // at the normal pace, so `unhealthy` keeps its meaning in time.
                                if w.counted.elapsed() >= c.interval {
                                    w.counted = clock::now();
                                    c.tracker.observe(false)
                                } else {
                                    None
                                }
                            }
                            None => c.tracker.observe(result.is_ok()),
                        };
                        match (transition, result) {
                            (Some(Transition::BecameHealthy), _) => {
                                served = true;
                                self.publish(InstanceState::Healthy, None)
                            }
                            (Some(Transition::BecameUnhealthy), Err(why)) => {
                                self.publish(InstanceState::Unhealthy, Some(why))
                            }
                            _ => {}
                        }
                    }
                }
                _ = rotate_tick.tick() => self.rotate_logs(),
                command = self.commands.recv() => {
                    return match command {
                        Some(Command::Stop) => {
                            self.stop(running.as_mut()).await;
                            if let Some(logs) = logs.take() {
                                logs.finish().await;
                            }
                            None
                        }
                        None => {
                            // Detached: the workload keeps running; save where its logs are.
                            if let Some(logs) = logs.take() {
                                logs.detach().await;
                            }
                            None
                        }
                    };
                }
            }
        }
    }

    async fn stop(&mut self, running: &mut dyn Workload) {
        let grace = self.spec.spec.stop_grace.as_std();
        self.publish(
            InstanceState::Draining,
            Some(format!("stopping: SIGTERM, SIGKILL after {grace:?}")),
        );
        let stopped = running.stop(grace).await;
        match stopped {
            Ok(exit) => {
                self.pid = None;
                self.forget();
                self.publish(InstanceState::Stopped, Some(format!("stopped: {exit}")));
            }
            Err(e) => {
                tracing::error!(id = %self.spec.id, error = %e, "cannot stop instance");
                self.publish(InstanceState::Failed, Some(e.to_string()));
            }
        }
    }

    /// Applies the restart policy after an exit (or a failed start). A run that `served`
    /// (became healthy) restarts at once and resets the back-off; others back off, by at most
    /// `backoff_base` while the service has no other healthy instance here (module docs).
    async fn exited(
        &mut self,
        ok: bool,
        reason: String,
        ran: Duration,
        served: bool,
    ) -> Option<Phase> {
        self.pid = None;
        let restart = match self.spec.spec.restart {
            RestartPolicy::Always => true,
            RestartPolicy::OnFailure => !ok,
            RestartPolicy::Never => false,
        };
        if !restart {
            self.discard().await;
            self.finish(!ok, &reason);
            let state = if ok {
                InstanceState::Stopped
            } else {
                InstanceState::Failed
            };
            self.publish(state, Some(reason));
            return Some(Phase::Idle);
        }
        if served {
            // It was serving: whatever ended it, this is no crash loop.
            self.served = true;
            self.failures = 0;
            self.restarts = self.restarts.saturating_add(1);
            tracing::info!(id = %self.spec.id, "restarting at once: the instance was healthy");
            self.publish(
                InstanceState::Pending,
                Some(format!("{reason}; restarting now (it was healthy)")),
            );
            return Some(Phase::Start);
        }
        if ran >= self.config.backoff_reset {
            self.failures = 0;
        }
        let long = backoff(
            self.config.backoff_base,
            self.config.backoff_max,
            self.failures,
        );
        self.failures = self.failures.saturating_add(1);
        let waiting = clock::now();
        let mut siblings = self.statuses.subscribe();
        loop {
            let delay = if self.served && self.service_dark() {
                long.min(self.config.backoff_base)
            } else {
                long
            };
            self.publish(
                InstanceState::Pending,
                Some(format!("{reason}; restarting in {delay:?}")),
            );
            tokio::select! {
                _ = tokio::time::sleep(delay.saturating_sub(waiting.elapsed())) => {
                    self.restarts = self.restarts.saturating_add(1);
                    return Some(Phase::Start);
                }
                // A sibling's state moved: the service may have gone dark. (The sender lives
                // as long as this task, so this never ends.)
                _ = siblings.changed(), if self.served && delay > self.config.backoff_base => {}
                command = self.commands.recv() => {
                    if let Some(Command::Stop) = command {
                        self.discard().await;
                        self.forget();
                        self.publish(InstanceState::Stopped, Some(format!("stopped while waiting to restart: {reason}")));
                    }
                    return None;
                }
            }
        }
    }

    /// Whether no other instance of this one's service on this node is healthy.
    fn service_dark(&self) -> bool {
        let services = self.services.lock().unwrap_or_else(|e| e.into_inner());
        let Some(mine) = services.get(&self.spec.id) else {
            return true;
        };
        !self.statuses.borrow().values().any(|s| {
            s.id != self.spec.id
                && s.state == InstanceState::Healthy
                && services.get(&s.id) == Some(mine)
        })
    }

    /// Nothing runs; wait to be removed.
    async fn idle(&mut self) -> Option<Phase> {
        if let Some(Command::Stop) = self.commands.recv().await {
            self.discard().await;
            self.forget();
            let message = self.current().and_then(|s| s.message);
            self.publish(InstanceState::Stopped, message);
        }
        None
    }

    /// Persists that the instance finished, so a restarted agent does not start it again.
    fn finish(&self, failed: bool, reason: &str) {
        let finished = Finished {
            failed,
            message: reason.to_string(),
        };
        let record = match self
            .paths
            .record_path(&self.spec.id)
            .and_then(|p| InstanceRecord::read(&p))
        {
            Ok(mut r) => {
                r.finished = Some(finished);
                r
            }
            Err(_) => InstanceRecord {
                spec: self.spec.clone(),
                pid: 0,
                start_time: 0,
                ports: self.ports.clone().unwrap_or_default(),
                restarts: self.restarts,
                started_at_ms: 0,
                finished: Some(finished),
                container: None,
                image_id: None,
            },
        };
        if let Err(e) = self.paths.save_record(&record) {
            tracing::warn!(id = %self.spec.id, error = %e, "cannot record that the instance finished");
        }
    }

    /// Removes what its driver left of the instance (its container, for an image instance):
    /// it will not run again.
    async fn discard(&self) {
        if let Ok(driver) = self.drivers.pick(&self.spec) {
            driver.discard(&self.spec).await;
        }
    }

    /// Starts copying the workload's output into the instance's log file, for runtimes
    /// whose output does not go there by itself (containers).
    fn follow_logs(&self, running: &dyn Workload) -> Option<LogFollower> {
        let dir = self.paths.instance_dir(&self.spec.id).ok()?;
        running.follow_logs(&dir)
    }

    fn forget(&self) {
        if let Err(e) = self.paths.forget(&self.spec.id) {
            tracing::warn!(id = %self.spec.id, error = %e, "cannot remove instance record");
        }
    }

    fn rotate_logs(&self) {
        if let Err(e) = self.paths.rotate_logs(&self.spec.id) {
            tracing::warn!(id = %self.spec.id, error = %e, "cannot rotate instance log");
        }
    }

    fn current(&self) -> Option<InstanceStatus> {
        self.statuses.borrow().get(&self.spec.id).cloned()
    }

    /// Publishes this instance's status if anything in it changed; `since_ms` moves only when
    /// the state does.
    fn publish(&self, state: InstanceState, message: Option<String>) {
        let now = (self.config.clock)();
        let status = InstanceStatus {
            id: self.spec.id.clone(),
            state,
            pid: self.pid,
            ports: self.ports.clone().unwrap_or_default(),
            restarts: self.restarts,
            message,
            since_ms: now,
            image_id: self.image_id.clone(),
        };
        self.statuses.send_if_modified(|map| {
            let mut status = status;
            if let Some(old) = map.get(&status.id) {
                if old.state == status.state {
                    status.since_ms = old.since_ms;
                }
                if *old == status {
                    return false;
                }
            }
            map.insert(status.id.clone(), status);
            true
        });
    }
}

/// How soon a fresh instance is first probed (at most its `interval`), and how often it is
/// probed until its first success: a workload that is up in 30 ms should not wait a whole
/// `interval` (1 s by default) to be seen healthy and get traffic.
pub const FIRST_PROBE: Duration = Duration::from_millis(50);

/// A fresh instance not yet seen answering its health check: probed every [`FIRST_PROBE`]
/// until its first success, then every `interval`. Only one failure per `interval` counts
/// against the `unhealthy` threshold meanwhile, so a slow starter is not called unhealthy
/// sooner than it would be at the normal pace.
struct Warmup {
    /// When a failure last counted (at first, when the instance started).
    counted: Instant,
}

/// A probe schedule: first at `start`, then every `every`; a late tick is not made up for.
fn probe_interval(start: Instant, every: Duration) -> tokio::time::Interval {
    let mut t = tokio::time::interval_at(start, every);
    t.set_missed_tick_behavior(MissedTickBehavior::Delay);
    t
}

/// Ticks an optional interval; never resolves for `None`.
async fn tick(interval: &mut Option<tokio::time::Interval>) {
    match interval {
        Some(i) => {
            i.tick().await;
        }
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod decisions;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_caps() {
        let base = Duration::from_millis(500);
        let max = Duration::from_secs(10);
        let delays: Vec<u64> = (0..7)
            .map(|n| backoff(base, max, n).as_millis() as u64)
            .collect();
        assert_eq!(delays, [500, 1000, 2000, 4000, 8000, 10000, 10000]);
        assert_eq!(backoff(base, max, u32::MAX), max);
    }
}
