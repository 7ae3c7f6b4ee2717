//! [`BerthUp`]: `berth up` (server + agent + router in one process) on a temporary data dir and
//! loopback ports, owned by one test.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use super::process::{kill_recorded, stat, Proc};
use super::{
    command, command_of, describe_status, free_port, http, run_command, stable_binary, temp_dir,
    RUN_TIMEOUT,
};

/// How long `berth up` may take to answer `GET /v1/health` after a (re)start.
pub const HEALTH_TIMEOUT: Duration = Duration::from_secs(30);

/// How many times [`BerthUp::start`] retries with new ports when one was taken between
/// [`free_port`] and `berth up` binding it.
const PORT_RETRIES: usize = 3;

/// A workload process as `berth up`'s agent recorded it in `DATA_DIR/instances/*/instance.json`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Workload {
    /// The instance record's folder name (the instance id).
    pub instance: String,
    /// The recorded pid (the agent starts each workload as a session and group leader).
    pub pid: i32,
    /// The recorded `/proc/PID/stat` start time, if the record has one.
    pub start_time: Option<u64>,
}

/// `berth up --data-dir TMP/data --api 127.0.0.1:P1 --router 127.0.0.1:P2`.
///
/// - The binary is a [`stable_binary`] link in `TMP`, so a rebuild of `target/debug/berth` during
///   the test changes neither berth nor the `berth` its agent starts workloads from.
/// - The process runs in its own process group; its stdout/stderr go to `TMP/berth-up.*.log`,
///   and every failure message of [`BerthUp::wait_until`] carries their tail.
/// - [`BerthUp::kill9`] kills the berth process only: workloads survive it, as they must.
/// - [`BerthUp::restart`] starts it again on the same data dir and ports.
/// - Drop SIGKILLs berth (and its process group), then every workload its agent recorded (each its
///   own process group), then any process still working in the data dir (a workload started
///   just before berth died, before its record was written), each checked by start time so a
///   recycled pid is left alone. A panicking test keeps `TMP` for post-mortem and prints where
///   it is.
pub struct BerthUp {
    // Field order matters for Drop: the process goes before the directory.
    proc: Option<Proc>,
    dir: Option<tempfile::TempDir>,
    bin: PathBuf,
    data_dir: PathBuf,
    api: SocketAddr,
    router: SocketAddr,
    extra_args: Vec<String>,
}

impl BerthUp {
    /// Starts `berth up` and waits until `GET /v1/health` answers 200.
    pub fn start() -> BerthUp {
        BerthUp::start_with(&[])
    }

    /// Like [`BerthUp::start`], with more arguments after the standard ones (kept on restart).
    pub fn start_with(extra_args: &[&str]) -> BerthUp {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let up = BerthUp::spawn_with(extra_args);
            let api = up.api;
            let proc = up.proc();
            let healthy = super::poll_until(HEALTH_TIMEOUT, || {
                http::is_ok(api, "/v1/health") || proc.try_exit().is_some()
            }) && proc.try_exit().is_none();
            if healthy {
                return up;
            }
            let Some(status) = proc.try_exit() else {
                panic!(
                    "timed out after {HEALTH_TIMEOUT:?} waiting for GET /v1/health to answer 200\n{}",
                    up.log_tail()
                );
            };
            let port_taken = proc.stderr_text().contains("Address already in use");
            if !port_taken || attempt >= PORT_RETRIES {
                panic!(
                    "berth up exited ({}) before it was healthy\n{}",
                    describe_status(status),
                    up.log_tail()
                );
            }
        }
    }

    /// Spawns `berth up` on fresh ports without waiting for it; see [`BerthUp::wait_healthy`].
    pub fn spawn() -> BerthUp {
        BerthUp::spawn_with(&[])
    }

    /// Like [`BerthUp::spawn`], with more arguments after the standard ones.
    pub fn spawn_with(extra_args: &[&str]) -> BerthUp {
        let dir = temp_dir();
        let data_dir = dir.path().join("data");
        std::fs::create_dir_all(&data_dir).expect("cannot create the data dir");
        let bin = stable_binary(dir.path());
        let loopback = |port| SocketAddr::from(([127, 0, 0, 1], port));
        let mut up = BerthUp {
            proc: None,
            dir: Some(dir),
            bin,
            data_dir,
            api: loopback(free_port()),
            router: loopback(free_port()),
            extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
        };
        up.launch();
        up
    }

    fn launch(&mut self) {
        let mut cmd = command_of(&self.bin, ["up", "--data-dir"]);
        cmd.arg(&self.data_dir)
            .arg("--api")
            .arg(self.api.to_string())
            .arg("--router")
            .arg(self.router.to_string())
            .args(&self.extra_args)
            .env("RUST_BACKTRACE", "1");
        self.proc = Some(Proc::spawn(cmd, "berth-up", self.dir()));
    }

    /// The running (or last) `berth up` process.
    pub fn proc(&self) -> &Proc {
        self.proc.as_ref().expect("berth up was started")
    }

    /// The temporary directory holding `data/` and the logs.
    pub fn dir(&self) -> &Path {
        self.dir
            .as_ref()
            .expect("the directory lives as long as BerthUp")
            .path()
    }

    /// `--data-dir`.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The API address (`--api`).
    pub fn api(&self) -> SocketAddr {
        self.api
    }

    /// `http://` + the API address: what `--server` and `BERTH_SERVER` take.
    pub fn api_url(&self) -> String {
        format!("http://{}", self.api)
    }

    /// The router address (`--router`).
    pub fn router(&self) -> SocketAddr {
        self.router
    }

    /// The pid of the current `berth up` process.
    pub fn pid(&self) -> i32 {
        self.proc().pid().as_raw()
    }

    /// Waits until `GET /v1/health` answers 200; panics with the log tail if berth exits or
    /// [`HEALTH_TIMEOUT`] passes.
    #[track_caller]
    pub fn wait_healthy(&self) {
        let api = self.api;
        self.wait_until(HEALTH_TIMEOUT, "GET /v1/health to answer 200", || {
            http::is_ok(api, "/v1/health")
        });
        // `berth up` serves its API before its router has fetched the table and bound (it
        // prints "berth is up" after both): a test that sends traffic right after a restart
        // must not race the router's bind (docker_up's kill -9 test once met "connection
        // refused" there).
        let router = self.router;
        self.wait_until(HEALTH_TIMEOUT, "the router to accept connections", || {
            std::net::TcpStream::connect_timeout(&router, Duration::from_millis(200)).is_ok()
        });
    }

    /// Waits until `condition` holds, polling every 20 ms; panics with berth's log tail on
    /// timeout, or at once if berth exits meanwhile.
    #[track_caller]
    pub fn wait_until(&self, timeout: Duration, what: &str, condition: impl FnMut() -> bool) {
        self.proc().wait_until(timeout, what, condition);
    }

    /// The last lines of berth's stdout and stderr.
    pub fn log_tail(&self) -> String {
        self.proc().log_tail()
    }

    /// The admin token from `DATA_DIR/admin.token` (trimmed); panics if it is missing or empty.
    #[track_caller]
    pub fn token(&self) -> String {
        let path = self.token_path();
        let token = std::fs::read_to_string(&path).unwrap_or_else(|e| {
            panic!(
                "cannot read the admin token {}: {e}\n{}",
                path.display(),
                self.log_tail()
            )
        });
        let token = token.trim().to_string();
        assert!(!token.is_empty(), "{} is empty", path.display());
        token
    }

    /// `DATA_DIR/admin.token`.
    pub fn token_path(&self) -> PathBuf {
        self.data_dir.join("admin.token")
    }

    /// Runs a `berth` command against this server (`BERTH_SERVER` and `BERTH_TOKEN` set).
    pub fn cli<I, S>(&self, args: I) -> Output
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        let mut cmd = command(args);
        cmd.env("BERTH_SERVER", self.api_url())
            .env("BERTH_TOKEN", self.token());
        run_command(cmd, RUN_TIMEOUT)
    }

    /// SIGKILLs the berth process only (not its group, not its workloads) and reaps it: a crash.
    pub fn kill9(&mut self) {
        if let Some(proc) = &self.proc {
            proc.kill9();
        }
    }

    /// Kills berth if it still runs (like [`BerthUp::kill9`]), starts it again on the same data
    /// dir and ports, and waits until it is healthy.
    #[track_caller]
    pub fn restart(&mut self) {
        self.kill9();
        self.launch();
        self.wait_healthy();
    }

    /// The workloads recorded as `{"pid": N, "start_time": T, …}` in `instance.json` files under
    /// `DATA_DIR/instances/*/` or one level deeper, `DATA_DIR/*/instances/*/` (`berth up` gives
    /// its agent `DATA_DIR/agent/`). Missing folders, unreadable or half-written records are
    /// skipped, never an error.
    pub fn workloads(&self) -> Vec<Workload> {
        let mut roots = vec![self.data_dir.join("instances")];
        if let Ok(entries) = std::fs::read_dir(&self.data_dir) {
            roots.extend(entries.flatten().map(|e| e.path().join("instances")));
        }
        let mut found = Vec::new();
        for root in roots {
            let Ok(entries) = std::fs::read_dir(root) else {
                continue;
            };
            for entry in entries.flatten() {
                if let Some(w) = read_record(&entry.path()) {
                    found.push(w);
                }
            }
        }
        found.sort_by(|a, b| a.instance.cmp(&b.instance));
        found
    }

    /// Every live process whose working directory is inside the data dir, as `(pid, start
    /// time)`: the agent runs each workload in its instance's directory, so this finds the
    /// workloads themselves rather than what their records say — including one started just
    /// before berth was killed, before its record was written.
    pub fn processes(&self) -> Vec<(i32, u64)> {
        let data_dir = self
            .data_dir
            .canonicalize()
            .unwrap_or_else(|_| self.data_dir.clone());
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return Vec::new();
        };
        let mut found: Vec<(i32, u64)> = entries
            .flatten()
            .filter_map(|e| {
                let pid: i32 = e.file_name().to_str()?.parse().ok()?;
                let cwd = std::fs::read_link(e.path().join("cwd")).ok()?;
                if !cwd.starts_with(&data_dir) {
                    return None;
                }
                stat(pid).map(|(_, start_time)| (pid, start_time))
            })
            .collect();
        found.sort_unstable();
        found
    }
}

/// One `INSTANCE_DIR/instance.json`, if it is readable and has a plausible pid.
fn read_record(instance_dir: &Path) -> Option<Workload> {
    let bytes = std::fs::read(instance_dir.join("instance.json")).ok()?;
    let record: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    let pid = record
        .get("pid")
        .and_then(|p| p.as_i64())
        .and_then(|p| i32::try_from(p).ok())
        .filter(|p| *p > 1)?;
    Some(Workload {
        instance: instance_dir.file_name()?.to_string_lossy().into_owned(),
        pid,
        start_time: record.get("start_time").and_then(|t| t.as_u64()),
    })
}

impl Drop for BerthUp {
    fn drop(&mut self) {
        // Berth first, so no new workload starts while we clean up; Proc's Drop kills its group.
        drop(self.proc.take());
        for w in self.workloads() {
            kill_recorded(w.pid, w.start_time);
        }
        // Then whatever still runs in the data dir without a record (see `processes`).
        for (pid, start_time) in self.processes() {
            kill_recorded(pid, Some(start_time));
        }
        if std::thread::panicking() {
            if let Some(dir) = self.dir.take() {
                eprintln!(
                    "berth up's directory kept for inspection: {}",
                    dir.keep().display()
                );
            }
        }
    }
}
