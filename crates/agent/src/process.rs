//! The process driver: starts `process:` services as detached sessions, stops them, and adopts
//! the ones a previous agent started.
//!
//! # What "detached" means here
//! Each workload runs in a **new session** (`setsid` between `fork` and `exec`), which also makes
//! it the leader of a new process group whose id is its pid. So:
//! - the agent's death (even `kill -9`), a `SIGINT`/`SIGHUP` to the agent's terminal or process
//!   group, or the end of its tokio runtime does not reach the workload (tokio's `kill_on_drop`
//!   stays off; stdin is `/dev/null`; stdout/stderr go to a file, not a pipe — see [`crate::logs`]);
//! - a stop reaches the workload *and everything it forked* with one `killpg`.
//!
//! A workload that the agent did not start in this process (an adopted one) is not its child, so
//! its exit is noticed by polling `/proc/<pid>/stat` every 250 ms, not by `wait`.
//!
//! # Environment
//! A workload does not inherit the agent's environment (it may hold the agent's tokens). It gets
//! `PATH`, `HOME`, `USER`, `LOGNAME`, `LANG`, `LC_ALL`, `TZ` and `TMPDIR` from the agent when they
//! are set, then the service's `env`, then its secrets' values (`secret_env`, never logged nor
//! written to `instance.json`), then — winning over all — `PORT`, `PORT_<NAME>`,
//! `BERTH_SERVICE`, `BERTH_INSTANCE`, `BERTH_RELEASE` and `BERTH_NODE`. Its working directory is
//! its instance directory.
//!
//! # User
//! It runs as `process.user`, else the agent's `--process-user`, else as the agent; root only
//! with `--allow-root-processes`. `HOME`, `USER` and `LOGNAME` are then that user's. The switch,
//! and why the instance directory stays the agent's, are in [`crate::run_as`].

use std::collections::BTreeMap;
use std::fs;
use std::net::TcpListener;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use berth_api::InstanceSpec;
use futures::future::BoxFuture;
use nix::errno::Errno;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;

use crate::driver::{Driver, Workload};
use crate::error::{io_err, Error, Result};
use crate::health::HealthCheck;
use crate::logs::{self, LogConfig, LOG_FILE};
use crate::record::{self, InstanceRecord};
use crate::run_as::{ProcessUsers, RunAs};

/// The record file in each instance's directory.
pub const RECORD_FILE: &str = "instance.json";

/// Variables passed from the agent's environment to workloads: what programs commonly need to
/// run at all, and nothing that could be a credential.
const PASSTHROUGH_ENV: &[&str] = &[
    "PATH", "HOME", "USER", "LOGNAME", "LANG", "LC_ALL", "TZ", "TMPDIR",
];

/// How often an adopted (non-child) process is checked for having exited.
const ADOPTED_POLL: Duration = Duration::from_millis(250);

/// How often a stop checks whether the process group is gone.
const STOP_POLL: Duration = Duration::from_millis(20);

/// Starts, stops and adopts `process:` instances under one data directory.
///
/// Cheap to share behind an `Arc`: it holds only paths and settings; every running process is
/// owned by a [`Running`] handle.
#[derive(Debug, Clone)]
pub struct ProcessDriver {
    data_dir: PathBuf,
    self_exe: Option<PathBuf>,
    logs: LogConfig,
    users: ProcessUsers,
}

/// How a process ended, as far as the agent could tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// It exited with this status code.
    Code(i32),
    /// A signal killed it.
    Signal(i32),
    /// It was not the agent's child (adopted), so its status is unknowable; restart policies
    /// treat this as a failure, the conservative reading for `on-failure`.
    Unknown,
}

impl Exit {
    /// Whether this counts as a clean exit (status 0) for the `on-failure` policy.
    pub fn success(self) -> bool {
        self == Exit::Code(0)
    }

    fn from_status(status: ExitStatus) -> Exit {
        match (status.code(), status.signal()) {
            (Some(c), _) => Exit::Code(c),
            (None, Some(s)) => Exit::Signal(s),
            (None, None) => Exit::Unknown,
        }
    }
}

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Exit::Code(c) => write!(f, "exited with status {c}"),
            Exit::Signal(s) => match Signal::try_from(*s) {
                Ok(sig) => write!(f, "killed by {sig}"),
                Err(_) => write!(f, "killed by signal {s}"),
            },
            Exit::Unknown => write!(f, "exited (status unknown: started by an earlier agent)"),
        }
    }
}

/// A running workload: either a child of this agent or an adopted process.
///
/// Dropping it leaves the process running (that is the point); only [`ProcessDriver::stop`]
/// ends it.
#[derive(Debug)]
pub struct Running {
    pid: u32,
    start_time: u64,
    child: Option<tokio::process::Child>,
    exited: Option<Exit>,
}

impl Running {
    /// The workload's pid, which is also its process group and session id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Its start time in clock ticks after boot (`/proc/<pid>/stat` field 22).
    pub fn start_time(&self) -> u64 {
        self.start_time
    }

    /// Whether this agent started it (so its exit status is known).
    pub fn is_child(&self) -> bool {
        self.child.is_some()
    }

    /// Whether it has exited, without waiting; reaps it if it is a child.
    pub fn try_exit(&mut self) -> Option<Exit> {
        if self.exited.is_none() {
            self.exited = match &mut self.child {
                Some(child) => match child.try_wait() {
                    Ok(Some(status)) => Some(Exit::from_status(status)),
                    Ok(None) => None,
                    Err(_) => (!record::is_same_process(self.pid, self.start_time))
                        .then_some(Exit::Unknown),
                },
                None => {
                    (!record::is_same_process(self.pid, self.start_time)).then_some(Exit::Unknown)
                }
            };
        }
        self.exited
    }

    /// Waits until it exits. Cancel-safe: dropping the future loses nothing.
    pub async fn wait(&mut self) -> Exit {
        if let Some(exit) = self.exited {
            return exit;
        }
        if let Some(child) = &mut self.child {
            let exit = match child.wait().await {
                Ok(status) => Exit::from_status(status),
                Err(_) => loop {
                    // Not waitable (should not happen for our own child): fall back to polling.
                    if !record::is_same_process(self.pid, self.start_time) {
                        break Exit::Unknown;
                    }
                    tokio::time::sleep(ADOPTED_POLL).await;
                },
            };
            self.exited = Some(exit);
            return exit;
        }
        loop {
            if let Some(exit) = self.try_exit() {
                return exit;
            }
            tokio::time::sleep(ADOPTED_POLL).await;
        }
    }
}

/// A live instance found on disk by [`ProcessDriver::adopt`].
#[derive(Debug)]
pub struct Adopted {
    /// Its record, as the previous agent left it.
    pub record: InstanceRecord,
    /// A handle on its process (not a child: exit is detected by polling).
    pub running: Running,
}

/// Everything needed to `exec` a command for an instance: its workload or its exec health check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Launch {
    /// The program: `command[0]`, or the agent's own binary for `berth`.
    pub program: PathBuf,
    /// `command[1..]`.
    pub args: Vec<String>,
    /// The complete environment (nothing else is inherited).
    pub env: BTreeMap<String, String>,
    /// The working directory: the instance's directory.
    pub cwd: PathBuf,
    /// The user it runs as (`process.user`, else the agent's `--process-user`); `None`: as
    /// the agent.
    pub run_as: Option<RunAs>,
}

impl ProcessDriver {
    /// A driver keeping its state under `DATA_DIR/instances/`.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        ProcessDriver {
            data_dir: data_dir.into(),
            self_exe: None,
            logs: LogConfig::default(),
            users: ProcessUsers::default(),
        }
    }

    /// Sets who `process:` instances run as: `--process-user` (for services without
    /// `process.user`) and `--allow-root-processes`. See [`crate::run_as`].
    pub fn with_users(mut self, users: ProcessUsers) -> Self {
        self.users = users;
        self
    }

    /// Uses `path` for `berth` as `command[0]` instead of [`std::env::current_exe`]: tests run
    /// inside a test harness binary, and packagers may wrap the binary.
    pub fn with_self_exe(mut self, path: impl Into<PathBuf>) -> Self {
        self.self_exe = Some(path.into());
        self
    }

    /// Sets log rotation limits (default 10 MiB × 3 files).
    pub fn with_log_config(mut self, logs: LogConfig) -> Self {
        self.logs = logs;
        self
    }

    /// The data directory this driver works in.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The log rotation limits in force.
    pub fn log_config(&self) -> LogConfig {
        self.logs
    }

    /// `DATA_DIR/instances/<id>`, after checking `id` is a safe directory name.
    pub fn instance_dir(&self, id: &str) -> Result<PathBuf> {
        let ok = !id.is_empty()
            && id.len() <= 128
            && id != "."
            && id != ".."
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
        if !ok {
            return Err(Error::InvalidId { id: id.to_string() });
        }
        Ok(self.data_dir.join("instances").join(id))
    }

    /// The current log file of an instance (what `berth logs` tails).
    pub fn log_path(&self, id: &str) -> Result<PathBuf> {
        Ok(self.instance_dir(id)?.join(LOG_FILE))
    }

    /// The record file of an instance.
    pub fn record_path(&self, id: &str) -> Result<PathBuf> {
        Ok(self.instance_dir(id)?.join(RECORD_FILE))
    }

    /// Rotates an instance's log file if it outgrew its limit; see [`logs::rotate_if_needed`].
    pub fn rotate_logs(&self, id: &str) -> Result<bool> {
        logs::rotate_if_needed(&self.log_path(id)?, &self.logs)
    }

    fn self_exe(&self) -> Result<PathBuf> {
        match &self.self_exe {
            Some(p) => Ok(p.clone()),
            None => std::env::current_exe()
                .map(without_deleted_suffix)
                .map_err(|source| Error::SelfExe { source }),
        }
    }

    /// What to execute for `command` on behalf of instance `spec` with resolved `ports`: the
    /// program (`berth` → the agent's binary), its arguments, its environment (see the module
    /// docs) and working directory. `what` names the command in errors.
    pub fn launch(
        &self,
        spec: &InstanceSpec,
        ports: &BTreeMap<String, u16>,
        command: &[String],
        what: &'static str,
    ) -> Result<Launch> {
        let (first, rest) = command.split_first().ok_or_else(|| Error::EmptyCommand {
            id: spec.id.clone(),
            what,
        })?;
        let program = if first == "berth" {
            self.self_exe()?
        } else {
            PathBuf::from(first)
        };
        let wanted = spec.spec.process.as_ref().and_then(|p| p.user.as_deref());
        let run_as = self.users.resolve(wanted).map_err(|why| Error::RunAs {
            id: spec.id.clone(),
            service: spec.service.clone(),
            why,
        })?;
        let mut env: BTreeMap<String, String> = PASSTHROUGH_ENV
            .iter()
            .filter_map(|k| std::env::var(k).ok().map(|v| (k.to_string(), v)))
            .collect();
        if let Some(run) = &run_as {
            env.insert("HOME".into(), run.home.display().to_string());
            env.insert("USER".into(), run.name.clone());
            env.insert("LOGNAME".into(), run.name.clone());
        }
        env.extend(instance_env(spec, ports)?);
        Ok(Launch {
            program,
            args: rest.to_vec(),
            env,
            cwd: self.instance_dir(&spec.id)?,
            run_as,
        })
    }

    /// Starts an instance with already resolved `ports` (see [`resolve_ports`]; reuse them on a
    /// restart so the endpoints do not move), writes its record and returns its handle.
    ///
    /// The process runs in its own session with stdin from `/dev/null` and stdout and stderr
    /// appended to its log file; it survives the agent.
    pub fn start(
        &self,
        spec: &InstanceSpec,
        ports: BTreeMap<String, u16>,
        restarts: u32,
    ) -> Result<Running> {
        let process = spec
            .spec
            .process
            .as_ref()
            .ok_or_else(|| Error::NotAProcess {
                id: spec.id.clone(),
                service: spec.service.clone(),
            })?;
        let launch = self.launch(spec, &ports, &process.command, "process")?;
        fs::create_dir_all(&launch.cwd)
            .map_err(io_err("create instance directory", &launch.cwd))?;
        let log_path = launch.cwd.join(LOG_FILE);
        let stdout = logs::open_for_append(&log_path)?;
        let stderr = stdout
            .try_clone()
            .map_err(io_err("duplicate log file handle", &log_path))?;

        let mut cmd = tokio::process::Command::new(&launch.program);
        cmd.args(&launch.args)
            .env_clear()
            .envs(&launch.env)
            .current_dir(&launch.cwd)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .kill_on_drop(false);
        // SAFETY: the closure runs in the forked child before `exec`, where only
        // async-signal-safe functions may be called (another thread of the parent may have held a
        // lock at fork time). It calls only `setsid(2)`, which POSIX lists as async-signal-safe
        // (signal-safety(7)); `nix::unistd::setsid` is a direct `libc::setsid` call plus an errno
        // read, and `io::Error::from_raw_os_error` builds an error without allocating. It touches
        // no memory shared with the parent. `setsid` cannot fail with EPERM here because the child
        // is not yet a process-group leader (no `process_group` is set on this command).
        #[allow(
            unsafe_code,
            reason = "a new session for the workload needs pre_exec, which is unsafe; see SAFETY"
        )]
        unsafe {
            cmd.pre_exec(|| {
                nix::unistd::setsid()
                    .map(drop)
                    .map_err(|e| std::io::Error::from_raw_os_error(e as i32))
            });
        }
        // After the new session (which needs no privilege either way) and after std's chdir.
        if let Some(run) = &launch.run_as {
            crate::run_as::switch_in_child(&mut cmd, run);
        }
        let child = cmd.spawn().map_err(|source| Error::Spawn {
            id: spec.id.clone(),
            program: launch.program.display().to_string(),
            source,
        })?;
        // `id()` is `None` only once the child was reaped, which nothing has done yet.
        let pid = child.id().unwrap_or(0);
        // The child is not reaped, so its /proc entry exists even if it already exited.
        let start_time = record::proc_stat(pid).map_or(0, |s| s.start_time);
        let running = Running {
            pid,
            start_time,
            child: Some(child),
            exited: None,
        };
        let rec = InstanceRecord {
            spec: spec.clone(),
            pid,
            start_time,
            ports,
            restarts,
            started_at_ms: now_ms(),
            finished: None,
            container: None,
            image_id: None,
        };
        // Without its record a restarted agent could neither adopt nor stop this process, so an
        // instance that cannot be recorded must not run: kill its group and report the error.
        if let Err(e) = rec.write(&launch.cwd.join(RECORD_FILE)) {
            if let Ok(pgid) = i32::try_from(pid) {
                let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
            }
            return Err(e);
        }
        Ok(running)
    }

    /// Stops an instance: `SIGTERM` to its whole process group, then, if anything of the group is
    /// still alive after `grace`, `SIGKILL`; returns once the leader exited (and, if it was a
    /// child, was reaped). Returns how the leader ended. Idempotent on an exited instance.
    pub async fn stop(&self, running: &mut Running, grace: Duration) -> Result<Exit> {
        let pgid = Pid::from_raw(i32::try_from(running.pid).unwrap_or(0));
        if pgid.as_raw() <= 0 {
            return Ok(running.wait().await);
        }
        if running.try_exit().is_none() || group_alive(pgid) {
            send(pgid, Signal::SIGTERM)?;
        }
        let deadline = crate::clock::now() + grace;
        loop {
            if running.try_exit().is_some() && !group_alive(pgid) {
                return Ok(running.wait().await);
            }
            if crate::clock::now() >= deadline {
                break;
            }
            tokio::time::sleep(STOP_POLL).await;
        }
        send(pgid, Signal::SIGKILL)?;
        Ok(running.wait().await)
    }

    /// Every readable record under `DATA_DIR/instances/`. Unreadable or corrupt records are
    /// skipped with a warning (one bad file must not stop the agent from adopting the others).
    pub fn records(&self) -> Result<Vec<InstanceRecord>> {
        let root = self.data_dir.join("instances");
        let entries = match fs::read_dir(&root) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_err("list instance directories in", root)(e)),
        };
        let mut out = Vec::new();
        for entry in entries {
            let entry = entry.map_err(io_err("list instance directories in", &root))?;
            let path = entry.path().join(RECORD_FILE);
            if !path.exists() {
                continue;
            }
            match InstanceRecord::read(&path) {
                Ok(rec) if Some(rec.spec.id.as_str()) == entry.file_name().to_str() => {
                    out.push(rec)
                }
                Ok(rec) => tracing::warn!(
                    path = %path.display(), id = %rec.spec.id,
                    "instance record names another instance than its directory; ignored"
                ),
                Err(e) => tracing::warn!(error = %e, "ignoring instance record"),
            }
        }
        out.sort_by(|a, b| a.spec.id.cmp(&b.spec.id));
        Ok(out)
    }

    /// Finds the instances a previous agent started that still run: a record whose pid is alive
    /// *and* has the recorded start time (a recycled pid does not match). Never starts, stops or
    /// signals anything.
    pub fn adopt(&self) -> Result<Vec<Adopted>> {
        Ok(self
            .records()?
            .into_iter()
            .filter_map(|record| {
                let running = adopt_record(&record)?;
                Some(Adopted { record, running })
            })
            .collect())
    }

    /// Saves a record (e.g. with `finished` set) atomically.
    pub fn save_record(&self, record: &InstanceRecord) -> Result<()> {
        let dir = self.instance_dir(&record.spec.id)?;
        fs::create_dir_all(&dir).map_err(io_err("create instance directory", &dir))?;
        record.write(&dir.join(RECORD_FILE))
    }

    /// Deletes an instance's record once it was stopped on purpose, so no agent adopts or
    /// restarts it again. Its logs stay for `berth logs`.
    pub fn forget(&self, id: &str) -> Result<()> {
        let path = self.record_path(id)?;
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err("remove instance record", path)(e)),
        }
    }
}

/// The process driver as the supervisor's [`Driver`]: every service that is not an `image:`
/// one (a spec without `process:` fails to start, saying so).
impl Driver for ProcessDriver {
    fn name(&self) -> &'static str {
        "process"
    }

    fn runs(&self, spec: &InstanceSpec) -> bool {
        spec.spec.image.is_none()
    }

    fn ports(&self, spec: &InstanceSpec) -> Result<BTreeMap<String, u16>> {
        resolve_ports(&spec.id, &spec.spec.ports)
    }

    fn start<'a>(
        &'a self,
        spec: &'a InstanceSpec,
        ports: BTreeMap<String, u16>,
        restarts: u32,
    ) -> BoxFuture<'a, Result<Box<dyn Workload>>> {
        let started = ProcessDriver::start(self, spec, ports, restarts);
        Box::pin(async move {
            let running = started?;
            Ok(Box::new(ProcessWorkload {
                driver: self.clone(),
                running,
            }) as Box<dyn Workload>)
        })
    }

    fn adopt<'a>(&'a self, record: &'a InstanceRecord) -> BoxFuture<'a, Option<Box<dyn Workload>>> {
        Box::pin(async move {
            let running = adopt_record(record)?;
            tracing::info!(id = %record.spec.id, pid = running.pid(), "adopted instance");
            Some(Box::new(ProcessWorkload {
                driver: self.clone(),
                running,
            }) as Box<dyn Workload>)
        })
    }

    /// Kills the processes that no record accounts for. Each instance is its own session and
    /// group leader, so an adopted instance's group is its recorded pid.
    fn clear_unrecorded(&self, records: &[InstanceRecord]) {
        let adopted_groups: std::collections::HashSet<u32> = records
            .iter()
            .filter(|r| r.container.is_none())
            .filter_map(adopt_record)
            .map(|running| running.pid())
            .collect();
        let orphans = crate::orphans::find(&self.data_dir, &adopted_groups);
        for orphan in &orphans {
            tracing::warn!(pid = orphan.pid, instance = %orphan.instance, "killing a workload no record accounts for");
        }
        crate::orphans::kill(&orphans);
    }
}

/// A `process:` instance handed to the supervisor: its process and the driver that stops it
/// and builds its `exec` health check.
#[derive(Debug)]
struct ProcessWorkload {
    driver: ProcessDriver,
    running: Running,
}

impl Workload for ProcessWorkload {
    fn pid(&self) -> Option<u32> {
        Some(self.running.pid())
    }

    fn wait(&mut self) -> BoxFuture<'_, (bool, String)> {
        Box::pin(async move {
            let exit = self.running.wait().await;
            (exit.success(), exit.to_string())
        })
    }

    fn stop(&mut self, grace: Duration) -> BoxFuture<'_, Result<String>> {
        Box::pin(async move {
            self.driver
                .stop(&mut self.running, grace)
                .await
                .map(|e| e.to_string())
        })
    }

    fn health_check(
        &self,
        spec: &InstanceSpec,
        ports: &BTreeMap<String, u16>,
    ) -> Result<Option<HealthCheck>> {
        HealthCheck::for_instance(&self.driver, spec, ports)
    }
}

/// A handle on a record's process if it is still the recorded one.
pub(crate) fn adopt_record(record: &InstanceRecord) -> Option<Running> {
    (record.finished.is_none() && record.is_live()).then(|| Running {
        pid: record.pid,
        start_time: record.start_time,
        child: None,
        exited: None,
    })
}

fn send(pgid: Pid, signal: Signal) -> Result<()> {
    match killpg(pgid, signal) {
        Ok(()) | Err(Errno::ESRCH) => Ok(()),
        Err(source) => Err(Error::Signal {
            pgid: pgid.as_raw(),
            signal: signal.as_str(),
            source,
        }),
    }
}

/// Whether any process is left in the group (signal 0 probes without delivering anything).
fn group_alive(pgid: Pid) -> bool {
    !matches!(killpg(pgid, None), Err(Errno::ESRCH))
}

/// Resolves declared ports: a `0` becomes a free port found by binding `127.0.0.1:0`, reading the
/// port and closing the socket.
///
/// There is a small race, accepted: another process may take the port between this check and
/// the workload binding it; the workload then fails to start and is restarted per its policy
/// (with the same port, since resolved ports are kept for the instance's life).
pub fn resolve_ports(id: &str, declared: &BTreeMap<String, u16>) -> Result<BTreeMap<String, u16>> {
    declared
        .iter()
        .map(|(name, &port)| {
            if port != 0 {
                return Ok((name.clone(), port));
            }
            let free = TcpListener::bind(("127.0.0.1", 0))
                .and_then(|l| l.local_addr())
                .map_err(|source| Error::FreePort {
                    id: id.to_string(),
                    name: name.clone(),
                    source,
                })?
                .port();
            Ok((name.clone(), free))
        })
        .collect()
}

/// The instance's main port, exported as `PORT`: the one named `http` if there is one, else the
/// first by name.
pub fn primary_port(ports: &BTreeMap<String, u16>) -> Option<(&str, u16)> {
    berth_api::primary_port(ports)
}

/// The environment berth defines for an instance: the service's `env`, then the values of its
/// secrets ([`InstanceSpec::secret_env`], so a secret wins over an `env` entry of the same
/// name), overridden by `PORT`, `PORT_<NAME>` (upper case, `-` → `_`), `BERTH_SERVICE`,
/// `BERTH_INSTANCE`, `BERTH_RELEASE` and `BERTH_NODE` (berth's own variables always mean what
/// berth says). Pure, so it is tested without processes. Never log its result: it holds
/// secret values.
pub fn instance_env(
    spec: &InstanceSpec,
    ports: &BTreeMap<String, u16>,
) -> Result<BTreeMap<String, String>> {
    let mut env = spec.spec.env.clone();
    env.extend(spec.secret_env.iter().map(|(k, v)| (k.clone(), v.clone())));
    for (name, port) in ports {
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            return Err(Error::InvalidPortName {
                id: spec.id.clone(),
                name: name.clone(),
            });
        }
        let var = format!("PORT_{}", name.to_ascii_uppercase().replace('-', "_"));
        env.insert(var, port.to_string());
    }
    if let Some((_, port)) = primary_port(ports) {
        env.insert("PORT".into(), port.to_string());
    }
    env.insert("BERTH_SERVICE".into(), spec.service.clone());
    env.insert("BERTH_INSTANCE".into(), spec.id.clone());
    env.insert("BERTH_RELEASE".into(), spec.release.to_string());
    env.insert("BERTH_NODE".into(), spec.node.clone());
    Ok(env)
}

/// Wall-clock milliseconds since the Unix epoch (0 if the clock is before 1970); the
/// agent's [`clock`](crate::clock), kept here for the callers that name it so.
pub fn now_ms() -> u64 {
    crate::clock::now_ms()
}

/// When the agent's binary is replaced on disk while it runs (an upgrade, a rebuild), Linux
/// reports its old path with ` (deleted)` appended. The binary now at that path is the one to
/// start: it is the upgraded berth.
fn without_deleted_suffix(path: PathBuf) -> PathBuf {
    match path.to_str().and_then(|s| s.strip_suffix(" (deleted)")) {
        Some(original) => PathBuf::from(original),
        None => path,
    }
}

#[cfg(test)]
mod self_exe_tests {
    use super::*;

    #[test]
    fn a_replaced_binary_resolves_to_the_file_now_at_its_path() {
        assert_eq!(
            without_deleted_suffix(PathBuf::from("/usr/bin/berth (deleted)")),
            PathBuf::from("/usr/bin/berth")
        );
        assert_eq!(
            without_deleted_suffix(PathBuf::from("/usr/bin/berth")),
            PathBuf::from("/usr/bin/berth")
        );
    }
}
