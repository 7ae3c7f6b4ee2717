//! The Docker Engine seen from an e2e test: whether one answers (a loud skip banner when not,
//! a failure under `BERTH_REQUIRE_DOCKER=1`), the test images, the containers a `berth up`'s
//! agent owns, and their removal when the test ends, pass or fail.
//!
//! The engine is reached through `berth_agent::DockerDriver` — the very client the product
//! uses — so a test skips exactly when `berth up` would not advertise the docker driver.
//! Tests may also act on containers behind berth's back (a `kill`), which the product never does.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use berth_agent::docker::Owned;
use berth_agent::DockerDriver;

use super::http;
use super::up::BerthUp;

/// The test images `scripts/build-test-images` makes: busybox httpd on 8080 serving `/` with
/// the version (`v1\n`, `v2\n`) and `/healthz` with `ok`.
pub const V1: &str = "berth-test/busybox:v1";
pub const V2: &str = "berth-test/busybox:v2";

/// A small runtime for the Engine calls of a blocking test.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("cannot build a tokio runtime")
}

/// Whether an Engine answers and the test images exist (building them if not). `false` when
/// there is none and none is required, after [`super::skip::skip`] recorded the skip of `test`;
/// panics when one is required.
pub fn engine_or_skip(test: &str) -> bool {
    let rt = runtime();
    let docker = match rt.block_on(DockerDriver::connect()) {
        Ok(d) => d,
        Err(e) => {
            super::skip::skip(test, &e.to_string());
            return false;
        }
    };
    let missing = [V1, V2]
        .iter()
        .any(|image| rt.block_on(docker.client().inspect_image(image)).is_err());
    if missing {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/build-test-images");
        let status = std::process::Command::new(&script)
            .status()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
        assert!(status.success(), "{} failed", script.display());
    }
    true
}

/// A `berth up` whose agent runs containers, and the guard that removes them.
///
/// Drop order is the field order: berth first (so its agent starts nothing more), then every
/// container labelled `berth.agent=<its agent's data dir>` — running or not — is force-removed.
pub struct DockerUp {
    pub up: BerthUp,
    containers: Containers,
}

impl DockerUp {
    /// `berth up` (see [`BerthUp::start`]) with its containers removed on drop.
    pub fn start() -> DockerUp {
        let up = BerthUp::start();
        // `berth up` gives its agent `DATA_DIR/agent`, and the agent labels its containers with
        // that path made absolute.
        let data = std::fs::canonicalize(up.data_dir()).expect("the data dir exists");
        let containers = Containers::new(data.join("agent"));
        DockerUp { up, containers }
    }

    /// The containers of this `berth up`'s agent.
    pub fn containers(&self) -> &Containers {
        &self.containers
    }
}

impl std::ops::Deref for DockerUp {
    type Target = BerthUp;
    fn deref(&self) -> &BerthUp {
        &self.up
    }
}

impl std::ops::DerefMut for DockerUp {
    fn deref_mut(&mut self) -> &mut BerthUp {
        &mut self.up
    }
}

/// The containers one agent owns (by its `berth.agent` label); all removed on drop.
pub struct Containers {
    owner: String,
    rt: tokio::runtime::Runtime,
    docker: DockerDriver,
}

impl Containers {
    /// The containers of the agent whose data directory is `agent_dir` (absolute).
    pub fn new(agent_dir: PathBuf) -> Containers {
        let rt = runtime();
        let docker = rt
            .block_on(DockerDriver::connect())
            .unwrap_or_else(|e| panic!("the Engine answered a moment ago: {e}"));
        Containers {
            owner: agent_dir.display().to_string(),
            rt,
            docker,
        }
    }

    /// Every container of the agent, running or not.
    #[track_caller]
    pub fn all(&self) -> Vec<Owned> {
        self.rt
            .block_on(self.docker.list_owned(&self.owner))
            .unwrap_or_else(|e| panic!("cannot list containers: {e}"))
    }

    /// The running containers of the agent, sorted by instance.
    #[track_caller]
    pub fn running(&self) -> Vec<Owned> {
        let mut list: Vec<Owned> = self.all().into_iter().filter(|c| c.running).collect();
        list.sort_by(|a, b| a.instance.cmp(&b.instance));
        list
    }

    /// `State.StartedAt` of a container: changes when it is (re)started, even under the same id.
    #[track_caller]
    pub fn started_at(&self, id: &str) -> String {
        let info = self
            .rt
            .block_on(self.docker.client().inspect_container(id, None))
            .unwrap_or_else(|e| panic!("cannot inspect container {id}: {e}"));
        info.state
            .and_then(|s| s.started_at)
            .unwrap_or_else(|| panic!("container {id} has no start time"))
    }

    /// SIGKILLs a container behind berth's back, as `docker kill` does.
    #[track_caller]
    pub fn kill(&self, id: &str) {
        self.rt
            .block_on(self.docker.client().kill_container(id, None))
            .unwrap_or_else(|e| panic!("cannot kill container {id}: {e}"));
    }

    /// Force-removes every container of the agent; returns how many there were.
    pub fn remove_all(&self) -> usize {
        let list = self
            .rt
            .block_on(self.docker.list_owned(&self.owner))
            .unwrap_or_default();
        for c in &list {
            let _ = self.rt.block_on(self.docker.remove("test cleanup", &c.id));
        }
        list.len()
    }
}

impl Drop for Containers {
    fn drop(&mut self) {
        self.remove_all();
    }
}

/// What a load generator saw through the router.
#[derive(Debug, Default, Clone)]
pub struct Seen {
    /// Answers by body (trimmed), e.g. `v1` → 412.
    pub bodies: std::collections::BTreeMap<String, usize>,
    /// Every failure: a transport error or a non-200, described (at most 20 kept).
    pub failures: Vec<String>,
    /// How many failed (all of them, not only those kept).
    pub failed: usize,
    /// How many requests were sent.
    pub sent: usize,
    /// How long the load ran.
    pub elapsed: Duration,
}

impl Seen {
    /// Requests per second over the whole run.
    pub fn rate(&self) -> f64 {
        self.sent as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Constant load through a router: `GET /` at a steady pace from a background thread until
/// stopped, bounded in count and time (reaching a bound is reported as a failure, so a test
/// whose awaited event never comes does not run forever).
pub struct Load {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicUsize>,
    seen: Arc<Mutex<Seen>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Load {
    /// Starts sending one request every `every` (a fresh connection each, `Host: ADDR`, so a
    /// route for host `127.0.0.1` matches), at most `max` requests within `deadline`.
    pub fn start(
        router: std::net::SocketAddr,
        every: Duration,
        max: usize,
        deadline: Duration,
    ) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicUsize::new(0));
        let seen = Arc::new(Mutex::new(Seen::default()));
        let thread = {
            let (stop, sent, seen) = (stop.clone(), sent.clone(), seen.clone());
            std::thread::spawn(move || {
                let started = super::clock::now();
                let mut next = started;
                while !stop.load(Ordering::Relaxed) {
                    let mut s = seen.lock().unwrap_or_else(|e| e.into_inner());
                    if s.sent >= max || started.elapsed() > deadline {
                        let why = format!(
                            "load bound reached ({} requests, {:?}) before the test stopped it",
                            s.sent,
                            started.elapsed()
                        );
                        s.failed += 1;
                        s.failures.push(why);
                        break;
                    }
                    drop(s);
                    let outcome = match http::get(router, "/") {
                        Ok(r) if r.status == 200 => Ok(r.text().trim().to_string()),
                        Ok(r) => Err(format!("{} {}", r.status, r.text().trim())),
                        Err(e) => Err(format!("error: {e}")),
                    };
                    let mut s = seen.lock().unwrap_or_else(|e| e.into_inner());
                    s.sent += 1;
                    sent.fetch_add(1, Ordering::Relaxed);
                    match outcome {
                        Ok(body) => *s.bodies.entry(body).or_default() += 1,
                        Err(why) => {
                            s.failed += 1;
                            if s.failures.len() < 20 {
                                let why = format!("request {}: {why}", s.sent);
                                s.failures.push(why);
                            }
                        }
                    }
                    s.elapsed = started.elapsed();
                    drop(s);
                    // A steady pace: the next request at the next slot, never a burst to catch up.
                    next += every;
                    let now = super::clock::now();
                    if next > now {
                        std::thread::sleep(next - now);
                    } else {
                        next = now;
                    }
                }
            })
        };
        Load {
            stop,
            sent,
            seen,
            thread: Some(thread),
        }
    }

    /// How many requests were sent so far.
    pub fn sent(&self) -> usize {
        self.sent.load(Ordering::Relaxed)
    }

    /// A copy of what was seen so far.
    pub fn snapshot(&self) -> Seen {
        self.seen.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Stops the load and returns what it saw.
    pub fn finish(mut self) -> Seen {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().expect("the load thread panicked");
        }
        self.snapshot()
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
