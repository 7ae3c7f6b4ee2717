//! A recording double of a [`Driver`], for the supervisor's unit tests (test builds only): it
//! records every call, and the test decides every outcome — which starts fail and how, which
//! recorded instances still run (adoption), and when and how a workload ends.
//!
//! Nothing runs: a "started" workload is a channel the test ends with [`Recording::exit`].
//! Health checks are real ones (`tcp`/`http` against whatever the test listens on), so the
//! supervisor's health decisions are tested with the probes they use in production.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use berth_api::InstanceSpec;
use futures::future::BoxFuture;
use tokio::sync::{oneshot, watch};

use crate::driver::{Driver, Workload};
use crate::error::{Error, Result};
use crate::health::HealthCheck;
use crate::process::ProcessDriver;
use crate::record::InstanceRecord;

/// One call the supervisor made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Call {
    /// [`Driver::clear_unrecorded`], with the ids of the records it was given.
    ClearUnrecorded(Vec<String>),
    /// [`Driver::adopt`] of this instance's record.
    Adopt(String),
    /// [`Driver::start`] of an instance, its restart count and ports.
    Start {
        id: String,
        restarts: u32,
        ports: BTreeMap<String, u16>,
    },
    /// [`Workload::stop`] with this grace.
    Stop { id: String, grace: Duration },
    /// [`Driver::discard`].
    Discard(String),
    /// [`Driver::remove_unknown`] with the instances the supervisor knew.
    RemoveUnknown(BTreeSet<String>),
}

/// What the test decided, and what happened.
#[derive(Debug, Default)]
struct State {
    calls: Vec<Call>,
    /// Errors the next starts of an instance fail with, in order.
    start_errors: HashMap<String, VecDeque<Error>>,
    /// Recorded instances that still run (what adoption finds), with their pid.
    adoptable: HashMap<String, u32>,
    /// How to end each running workload, by instance.
    running: HashMap<String, oneshot::Sender<(bool, String)>>,
    /// The pid the next start reports.
    next_pid: u32,
}

/// The double: clones share one record of calls.
#[derive(Debug, Clone)]
pub(crate) struct Recording {
    name: &'static str,
    runs: fn(&InstanceSpec) -> bool,
    state: Arc<Mutex<State>>,
    /// Bumped at every call, so a test can wait for one.
    calls: Arc<watch::Sender<usize>>,
    /// Builds `exec` health checks (never used to start anything).
    paths: ProcessDriver,
}

/// How long a test waits for a call before it fails.
const DEADLINE: Duration = Duration::from_secs(20);

impl Recording {
    /// A double named `name` running the specs `runs` accepts, building health checks for the
    /// data directory `dir`.
    pub(crate) fn new(name: &'static str, runs: fn(&InstanceSpec) -> bool, dir: &Path) -> Self {
        Recording {
            name,
            runs,
            state: Arc::new(Mutex::new(State {
                next_pid: 1000,
                ..State::default()
            })),
            calls: Arc::new(watch::channel(0).0),
            paths: ProcessDriver::new(dir),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn record(&self, call: Call) {
        self.state().calls.push(call);
        self.calls.send_modify(|n| *n += 1);
    }

    /// Every call so far, in order.
    pub(crate) fn calls(&self) -> Vec<Call> {
        self.state().calls.clone()
    }

    /// The starts so far of instance `id`.
    pub(crate) fn starts(&self, id: &str) -> usize {
        self.calls()
            .iter()
            .filter(|c| matches!(c, Call::Start { id: i, .. } if i == id))
            .count()
    }

    /// Waits until the calls satisfy `pred` (or fails the test after [`DEADLINE`]).
    pub(crate) async fn wait_for(&self, what: &str, pred: impl Fn(&[Call]) -> bool) -> Vec<Call> {
        let mut rx = self.calls.subscribe();
        let wait = async {
            loop {
                let calls = self.calls();
                if pred(&calls) {
                    return calls;
                }
                if rx.changed().await.is_err() {
                    panic!("the double is gone while waiting for {what}");
                }
            }
        };
        match tokio::time::timeout(DEADLINE, wait).await {
            Ok(calls) => calls,
            Err(_) => panic!(
                "timed out after {DEADLINE:?} waiting for {what}; calls: {:#?}",
                self.calls()
            ),
        }
    }

    /// The next start of `id` fails with `error`.
    pub(crate) fn fail_next_start(&self, id: &str, error: Error) {
        self.state()
            .start_errors
            .entry(id.to_string())
            .or_default()
            .push_back(error);
    }

    /// A recorded instance `id` still runs as process `pid`: adoption finds it.
    pub(crate) fn still_runs(&self, id: &str, pid: u32) {
        self.state().adoptable.insert(id.to_string(), pid);
    }

    /// Ends the running workload of `id` (`ok`: a clean exit), as `reason`. Whether one ran.
    pub(crate) fn exit(&self, id: &str, ok: bool, reason: &str) -> bool {
        let sender = self.state().running.remove(id);
        sender.is_some_and(|tx| tx.send((ok, reason.to_string())).is_ok())
    }

    fn workload(&self, id: &str, pid: u32) -> Box<dyn Workload> {
        let (tx, rx) = oneshot::channel();
        self.state().running.insert(id.to_string(), tx);
        Box::new(Recorded {
            double: self.clone(),
            id: id.to_string(),
            pid,
            exit: Some(rx),
            exited: None,
        })
    }
}

impl Driver for Recording {
    fn name(&self) -> &'static str {
        self.name
    }

    fn runs(&self, spec: &InstanceSpec) -> bool {
        (self.runs)(spec)
    }

    /// The declared ports, as they are.
    fn ports(&self, spec: &InstanceSpec) -> Result<BTreeMap<String, u16>> {
        Ok(spec.spec.ports.clone())
    }

    fn start<'a>(
        &'a self,
        spec: &'a InstanceSpec,
        ports: BTreeMap<String, u16>,
        restarts: u32,
    ) -> BoxFuture<'a, Result<Box<dyn Workload>>> {
        Box::pin(async move {
            let failure = {
                let mut state = self.state();
                state
                    .start_errors
                    .get_mut(&spec.id)
                    .and_then(VecDeque::pop_front)
            };
            self.record(Call::Start {
                id: spec.id.clone(),
                restarts,
                ports,
            });
            if let Some(e) = failure {
                return Err(e);
            }
            let pid = {
                let mut state = self.state();
                state.next_pid += 1;
                state.next_pid
            };
            Ok(self.workload(&spec.id, pid))
        })
    }

    fn adopt<'a>(&'a self, record: &'a InstanceRecord) -> BoxFuture<'a, Option<Box<dyn Workload>>> {
        Box::pin(async move {
            self.record(Call::Adopt(record.spec.id.clone()));
            let pid = self.state().adoptable.get(&record.spec.id).copied()?;
            Some(self.workload(&record.spec.id, pid))
        })
    }

    fn clear_unrecorded(&self, records: &[InstanceRecord]) {
        self.record(Call::ClearUnrecorded(
            records.iter().map(|r| r.spec.id.clone()).collect(),
        ));
    }

    fn remove_unknown(&self, known: HashSet<String>) -> BoxFuture<'static, ()> {
        self.record(Call::RemoveUnknown(known.into_iter().collect()));
        Box::pin(async {})
    }

    fn discard<'a>(&'a self, spec: &'a InstanceSpec) -> BoxFuture<'a, ()> {
        self.record(Call::Discard(spec.id.clone()));
        Box::pin(async {})
    }
}

/// A workload of the double: it ends when the test says so, or when stopped.
#[derive(Debug)]
struct Recorded {
    double: Recording,
    id: String,
    pid: u32,
    exit: Option<oneshot::Receiver<(bool, String)>>,
    exited: Option<(bool, String)>,
}

impl Workload for Recorded {
    fn pid(&self) -> Option<u32> {
        Some(self.pid)
    }

    fn wait(&mut self) -> BoxFuture<'_, (bool, String)> {
        Box::pin(async move {
            if let Some(e) = &self.exited {
                return e.clone();
            }
            let exit = match self.exit.as_mut() {
                Some(rx) => match rx.await {
                    Ok(e) => e,
                    // Replaced by a newer workload of the same instance: this one never ends.
                    Err(_) => std::future::pending().await,
                },
                None => std::future::pending().await,
            };
            self.exit = None;
            self.exited = Some(exit.clone());
            exit
        })
    }

    fn stop(&mut self, grace: Duration) -> BoxFuture<'_, Result<String>> {
        Box::pin(async move {
            self.double.record(Call::Stop {
                id: self.id.clone(),
                grace,
            });
            self.double.state().running.remove(&self.id);
            let reason = "ended by the test double".to_string();
            self.exit = None;
            self.exited = Some((false, reason.clone()));
            Ok(reason)
        })
    }

    fn health_check(
        &self,
        spec: &InstanceSpec,
        ports: &BTreeMap<String, u16>,
    ) -> Result<Option<HealthCheck>> {
        HealthCheck::for_instance(&self.double.paths, spec, ports)
    }
}
