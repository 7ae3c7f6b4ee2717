//! The runtime seam: what the [`Supervisor`](crate::Supervisor) needs from whatever runs an
//! instance — a process, a container, or whatever comes next.
//!
//! A [`Driver`] starts and adopts instances of the services it runs and hands back a
//! [`Workload`], which is then waited on, health-checked, followed for logs and stopped.
//! The supervisor decides *when* (restarts, back-off, health, the desired set); a driver only
//! knows *how*. Two ship: [`ProcessDriver`](crate::ProcessDriver) for `process:` services and
//! [`docker::Containers`](crate::docker::Containers) for `image:` services. A third runtime is
//! one more file implementing these two traits, and one more entry in [`Drivers`].
//!
//! The supervisor's unit tests run it on a recording double (`driver::recording`, test builds
//! only) that records every call and lets the test decide every outcome.
//!
//! Methods return boxed futures ([`BoxFuture`]) so that drivers can be chosen at run time
//! (`dyn Driver`) and the supervisor's tasks stay `Send`.

use std::collections::{BTreeMap, HashSet};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use berth_api::InstanceSpec;
use futures::future::BoxFuture;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::error::{Error, Result};
use crate::health::HealthCheck;
use crate::record::InstanceRecord;

#[cfg(test)]
pub(crate) mod recording;

/// A runtime that starts and adopts the instances of some services.
///
/// Every method is called by the supervisor only for instances whose spec [`runs`] said yes
/// (except [`clear_unrecorded`] and [`remove_unknown`], which look at everything of the
/// driver's own).
///
/// [`runs`]: Driver::runs
/// [`clear_unrecorded`]: Driver::clear_unrecorded
/// [`remove_unknown`]: Driver::remove_unknown
pub trait Driver: Send + Sync + std::fmt::Debug {
    /// A short name for logs (`process`, `docker`).
    fn name(&self) -> &'static str;

    /// Whether this driver runs `spec`'s service (by the runtime the service names).
    fn runs(&self, spec: &InstanceSpec) -> bool;

    /// Host paths that no volume may mount because of this runtime (the Engine's socket):
    /// added to the agent's host-path policy at every start.
    fn protected_paths(&self) -> Vec<PathBuf> {
        Vec::new()
    }

    /// The host ports of a fresh instance, for its declared `ports:` (a declared `0` picks a
    /// free one). Picked once per instance and kept across restarts, so endpoints do not move.
    fn ports(&self, spec: &InstanceSpec) -> Result<BTreeMap<String, u16>>;

    /// Whether a failed start means one of the picked host ports was taken, so the retry
    /// picks new ones (the instance had no endpoint yet, so nothing moves).
    fn port_taken(&self, _error: &Error) -> bool {
        false
    }

    /// Starts `spec` on `ports` (its `restarts`-th restart), writing its instance record so a
    /// restarted agent can adopt it.
    fn start<'a>(
        &'a self,
        spec: &'a InstanceSpec,
        ports: BTreeMap<String, u16>,
        restarts: u32,
    ) -> BoxFuture<'a, Result<Box<dyn Workload>>>;

    /// A handle on what a previous agent started for `record`, if it still runs as that
    /// instance; `None` when it does not (the instance then counts as having died unseen).
    /// Never starts, stops or signals anything.
    fn adopt<'a>(&'a self, record: &'a InstanceRecord) -> BoxFuture<'a, Option<Box<dyn Workload>>>;

    /// When the agent starts, before anything is adopted or started: ends workloads of this
    /// driver that no record in `records` accounts for (spawned, then the agent died before
    /// recording them), which would otherwise hold their instance's ports.
    fn clear_unrecorded(&self, _records: &[InstanceRecord]) {}

    /// Once the server's first desired set arrived: removes what this driver holds for
    /// instances not in `known` (every instance the supervisor has a task for). The future is
    /// spawned; it must not hold up supervision.
    fn remove_unknown(&self, _known: HashSet<String>) -> BoxFuture<'static, ()> {
        Box::pin(async {})
    }

    /// Removes what an instance that will not run again leaves behind (its container); its
    /// logs stay. Failures are logged, not returned: nothing waits on them.
    fn discard<'a>(&'a self, _spec: &'a InstanceSpec) -> BoxFuture<'a, ()> {
        Box::pin(async {})
    }
}

/// One running instance, as its driver handed it over: started or adopted.
///
/// Dropping it stops watching and leaves the instance running (static stability); only
/// [`stop`](Workload::stop) ends it.
pub trait Workload: Send + std::fmt::Debug {
    /// The host pid to report, when known.
    fn pid(&self) -> Option<u32>;

    /// The image id it runs (`sha256:…`), for runtimes that run images: reported in the
    /// instance's status (the server pins releases on it) and noted for garbage collection.
    fn image_id(&self) -> Option<String> {
        None
    }

    /// Waits until it ends: whether that was a clean exit (for `on-failure`), and how it
    /// ended, for the status message. Cancel-safe: dropping the future loses nothing.
    fn wait(&mut self) -> BoxFuture<'_, (bool, String)>;

    /// Stops it: a polite signal, then a forced end after `grace`. Returns how it ended.
    /// Idempotent on one that already ended.
    fn stop(&mut self, grace: Duration) -> BoxFuture<'_, Result<String>>;

    /// The service's health check made concrete for this workload (`exec` runs the way this
    /// runtime runs commands), or `None` when the service has none.
    fn health_check(
        &self,
        spec: &InstanceSpec,
        ports: &BTreeMap<String, u16>,
    ) -> Result<Option<HealthCheck>>;

    /// Starts copying its output into the instance's log file `dir/output.log`, for runtimes
    /// whose output does not go there by itself (a process writes it directly: `None`).
    fn follow_logs(&self, _dir: &Path) -> Option<LogFollower> {
        None
    }
}

/// A task copying a workload's output into the instance's log file.
#[derive(Debug)]
pub struct LogFollower {
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

/// How long the copy of a stopped workload's last output may take.
const LOG_DRAIN: Duration = Duration::from_secs(2);

impl LogFollower {
    /// Spawns `copy`, which copies output until it reaches the end or the receiver it is
    /// given fires (then it saves where it got to and returns).
    pub fn spawn<F>(copy: impl FnOnce(oneshot::Receiver<()>) -> F) -> LogFollower
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let (stop, stop_rx) = oneshot::channel();
        LogFollower {
            stop,
            task: tokio::spawn(copy(stop_rx)),
        }
    }

    /// The workload stopped: let the copy reach the end of its output (bounded by
    /// 2 s), then end it.
    pub async fn finish(mut self) {
        if tokio::time::timeout(LOG_DRAIN, &mut self.task)
            .await
            .is_err()
        {
            let _ = self.stop.send(());
            let _ = self.task.await;
        }
    }

    /// The agent detaches: stop copying now, saving the cursor for the next agent.
    pub async fn detach(self) {
        let _ = self.stop.send(());
        let _ = self.task.await;
    }
}

/// The drivers of one agent, in order: an instance goes to the first that [`runs`] it.
///
/// [`runs`]: Driver::runs
#[derive(Debug, Clone, Default)]
pub struct Drivers {
    drivers: Vec<Arc<dyn Driver>>,
}

impl Drivers {
    /// The drivers `list`, tried in this order.
    pub fn new(list: Vec<Arc<dyn Driver>>) -> Drivers {
        Drivers { drivers: list }
    }

    /// The driver of `spec`, or why none on this node runs it: an `image:` service on a node
    /// without a Docker Engine is [`Error::NoDocker`], anything else with no driver
    /// [`Error::NotAProcess`] (what the process driver says of a spec it cannot run).
    pub fn pick(&self, spec: &InstanceSpec) -> Result<&Arc<dyn Driver>> {
        self.drivers
            .iter()
            .find(|d| d.runs(spec))
            .ok_or_else(|| missing(spec))
    }

    /// Every driver, in order.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<dyn Driver>> {
        self.drivers.iter()
    }

    /// Every host path some driver protects (see [`Driver::protected_paths`]).
    pub fn protected_paths(&self) -> Vec<PathBuf> {
        self.drivers
            .iter()
            .flat_map(|d| d.protected_paths())
            .collect()
    }
}

/// The error for a spec no driver runs.
fn missing(spec: &InstanceSpec) -> Error {
    if spec.spec.image.is_some() {
        Error::NoDocker {
            id: spec.id.clone(),
            service: spec.service.clone(),
        }
    } else {
        Error::NotAProcess {
            id: spec.id.clone(),
            service: spec.service.clone(),
        }
    }
}
