//! Health checks: a pure threshold state machine ([`HealthTracker`]) and the I/O probes
//! ([`Probe`]) that feed it.
//!
//! The split keeps the policy — how many consecutive results flip an instance — testable without
//! sockets or clocks, and the probes — one attempt, bounded by a timeout — testable against real
//! servers.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use berth_api::InstanceSpec;
use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::rt::TokioIo;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::net::TcpStream;

use crate::docker::{container_ports, DockerDriver};
use crate::error::{Error, Result};
use crate::process::{instance_env, primary_port, Launch, ProcessDriver};

/// A change of health verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// `healthy` consecutive successes after being unknown or unhealthy.
    BecameHealthy,
    /// `unhealthy` consecutive failures after being unknown or healthy.
    BecameUnhealthy,
}

/// Counts consecutive probe results against the `healthy` / `unhealthy` thresholds.
///
/// It starts with no verdict (the instance is `starting`); the first verdict is whichever
/// threshold is reached first. A single result against the current verdict only starts a streak;
/// a threshold of 0 acts as 1.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthTracker {
    healthy_after: u32,
    unhealthy_after: u32,
    verdict: Option<bool>,
    successes: u32,
    failures: u32,
}

impl HealthTracker {
    /// A tracker needing `healthy` consecutive successes to call an instance healthy and
    /// `unhealthy` consecutive failures to call it unhealthy.
    pub fn new(healthy: u32, unhealthy: u32) -> Self {
        HealthTracker {
            healthy_after: healthy.max(1),
            unhealthy_after: unhealthy.max(1),
            verdict: None,
            successes: 0,
            failures: 0,
        }
    }

    /// Starts from a known verdict instead of none. The supervisor uses `Some(true)` for an
    /// adopted instance: it ran before the agent restarted, and static stability prefers keeping
    /// its traffic until `unhealthy` consecutive failures say otherwise over a `starting` blip.
    pub fn with_verdict(mut self, verdict: Option<bool>) -> Self {
        self.verdict = verdict;
        self
    }

    /// The current verdict: `None` until a threshold was first reached.
    pub fn verdict(&self) -> Option<bool> {
        self.verdict
    }

    /// Records one probe result; returns the transition it causes, if any.
    pub fn observe(&mut self, ok: bool) -> Option<Transition> {
        if ok {
            self.successes = self.successes.saturating_add(1);
            self.failures = 0;
            if self.verdict != Some(true) && self.successes >= self.healthy_after {
                self.verdict = Some(true);
                return Some(Transition::BecameHealthy);
            }
        } else {
            self.failures = self.failures.saturating_add(1);
            self.successes = 0;
            if self.verdict != Some(false) && self.failures >= self.unhealthy_after {
                self.verdict = Some(false);
                return Some(Transition::BecameUnhealthy);
            }
        }
        None
    }
}

/// The outcome of one probe: `Err` holds why it failed, for the instance's status message.
pub type ProbeResult = std::result::Result<(), String>;

/// One kind of check against one instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    /// `GET path` over HTTP/1.1 must answer 2xx or 3xx.
    Http {
        /// Where the instance listens (always loopback: the agent probes its own node).
        addr: SocketAddr,
        /// The request path, starting with `/`.
        path: String,
    },
    /// A TCP connection must be accepted.
    Tcp {
        /// Where the instance listens.
        addr: SocketAddr,
    },
    /// The command must exit 0 (run with the instance's environment and directory).
    Exec(Launch),
    /// The command must exit 0 when run inside the instance's container (`docker exec`).
    ContainerExec(ContainerExec),
}

/// An exec check of an `image:` instance: a command run inside its container through the
/// Engine's exec API, with the instance's environment.
#[derive(Debug, Clone)]
pub struct ContainerExec {
    /// The Engine client.
    pub driver: DockerDriver,
    /// The container's id.
    pub container: String,
    /// The command (`health.exec`).
    pub command: Vec<String>,
    /// `NAME=value` pairs: the instance's environment.
    pub env: Vec<String>,
}

impl PartialEq for ContainerExec {
    /// Same container, command and environment (the client is not compared).
    fn eq(&self, other: &Self) -> bool {
        self.container == other.container && self.command == other.command && self.env == other.env
    }
}

impl Eq for ContainerExec {}

/// A service's health check made concrete for one instance: probe, schedule and thresholds.
#[derive(Debug, Clone)]
pub struct HealthCheck {
    /// What to check.
    pub probe: Probe,
    /// Time between the starts of two probes.
    pub interval: Duration,
    /// How long one probe may take before it counts as failed.
    pub timeout: Duration,
    /// The verdict so far.
    pub tracker: HealthTracker,
}

impl HealthCheck {
    /// Builds the instance's check from its service's `health:`, or `None` when it has none
    /// (then a running instance counts as healthy). `http` and `tcp` use the port named by
    /// `health.port`, else the instance's main port (see [`primary_port`]).
    pub fn for_instance(
        driver: &ProcessDriver,
        spec: &InstanceSpec,
        ports: &BTreeMap<String, u16>,
    ) -> Result<Option<HealthCheck>> {
        Self::build(spec, ports, |cmd| {
            Ok(Probe::Exec(driver.launch(
                spec,
                ports,
                cmd,
                "health.exec",
            )?))
        })
    }

    /// Builds the check of an `image:` instance running as `container`: `http` and `tcp` go to
    /// the published *host* ports in `ports` on 127.0.0.1; `exec` runs inside the container
    /// with the instance's environment (its container ports as `PORT…`).
    pub fn for_container(
        driver: &DockerDriver,
        container: &str,
        spec: &InstanceSpec,
        ports: &BTreeMap<String, u16>,
    ) -> Result<Option<HealthCheck>> {
        Self::build(spec, ports, |cmd| {
            if cmd.is_empty() {
                return Err(Error::EmptyCommand {
                    id: spec.id.clone(),
                    what: "health.exec",
                });
            }
            let inside = container_ports(&spec.spec.ports, ports);
            let env = instance_env(spec, &inside)?
                .into_iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            Ok(Probe::ContainerExec(ContainerExec {
                driver: driver.clone(),
                container: container.to_string(),
                command: cmd.to_vec(),
                env,
            }))
        })
    }

    fn build(
        spec: &InstanceSpec,
        ports: &BTreeMap<String, u16>,
        exec: impl FnOnce(&[String]) -> Result<Probe>,
    ) -> Result<Option<HealthCheck>> {
        let Some(h) = &spec.spec.health else {
            return Ok(None);
        };
        let bad = |problem: String| Error::Health {
            id: spec.id.clone(),
            problem,
        };
        let addr = || -> Result<SocketAddr> {
            let port = match &h.port {
                Some(name) => *ports.get(name).ok_or_else(|| {
                    bad(format!(
                        "names port `{name}`, which `ports:` does not declare; declare it or fix `health.port`"
                    ))
                })?,
                None => {
                    primary_port(ports)
                        .ok_or_else(|| {
                            bad("needs a port but the service declares none under `ports:`".into())
                        })?
                        .1
                }
            };
            Ok(SocketAddr::from(([127, 0, 0, 1], port)))
        };
        let probe = match (&h.http, h.tcp, &h.exec) {
            (Some(path), None | Some(false), None) => Probe::Http {
                addr: addr()?,
                path: if path.starts_with('/') {
                    path.clone()
                } else {
                    format!("/{path}")
                },
            },
            (None, Some(true), None) => Probe::Tcp { addr: addr()? },
            (None, None | Some(false), Some(cmd)) => exec(cmd)?,
            _ => {
                return Err(bad(
                    "must have exactly one of `http`, `tcp: true` or `exec`".into(),
                ))
            }
        };
        Ok(Some(HealthCheck {
            probe,
            interval: h.interval.as_std().max(Duration::from_millis(10)),
            timeout: h.timeout.as_std().max(Duration::from_millis(1)),
            tracker: HealthTracker::new(h.healthy, h.unhealthy),
        }))
    }

    /// Runs one probe and feeds the tracker; returns the probe's result and any transition.
    pub async fn check(&mut self) -> (ProbeResult, Option<Transition>) {
        let result = self.probe.run(self.timeout).await;
        let transition = self.tracker.observe(result.is_ok());
        (result, transition)
    }
}

impl Probe {
    /// Runs the probe once, bounded by `timeout`.
    pub async fn run(&self, timeout: Duration) -> ProbeResult {
        match self {
            Probe::Http { addr, path } => {
                match tokio::time::timeout(timeout, http_get(*addr, path)).await {
                    Ok(Ok(status)) if (200..400).contains(&status) => Ok(()),
                    Ok(Ok(status)) => Err(format!("GET {path} on {addr} answered {status}")),
                    Ok(Err(e)) => Err(format!("GET {path} on {addr} failed: {e}")),
                    Err(_) => Err(format!("GET {path} on {addr} timed out after {timeout:?}")),
                }
            }
            Probe::Tcp { addr } => {
                match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err(e)) => Err(format!("TCP connect to {addr} failed: {e}")),
                    Err(_) => Err(format!("TCP connect to {addr} timed out after {timeout:?}")),
                }
            }
            Probe::Exec(launch) => exec(launch, timeout).await,
            Probe::ContainerExec(c) => {
                c.driver
                    .exec(&c.container, &c.command, &c.env, timeout)
                    .await
            }
        }
    }
}

/// One `GET` with hyper's HTTP/1 client over a fresh connection; returns the status code.
async fn http_get(addr: SocketAddr, path: &str) -> std::result::Result<u16, String> {
    let stream = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    let request = hyper::Request::get(path)
        .header(hyper::header::HOST, addr.to_string())
        .header(hyper::header::CONNECTION, "close")
        .header(hyper::header::USER_AGENT, "berth-agent-health")
        .body(Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    // The connection future must be polled for the request to progress. It runs beside the
    // request rather than racing it: with `Connection: close` the server may finish the
    // connection in the same instant it sends the response, and the response must still win.
    // The guard aborts it however this future ends, a timeout included, so a server that never
    // answers does not keep a connection task alive after the probe gave up.
    let _driver = AbortOnDrop(tokio::spawn(conn));
    sender
        .send_request(request)
        .await
        .map(|r| r.status().as_u16())
        .map_err(|e| e.to_string())
}

/// Aborts a spawned task when dropped.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Runs an exec check in its own process group, killing the whole group on timeout.
async fn exec(launch: &Launch, timeout: Duration) -> ProbeResult {
    let mut cmd = tokio::process::Command::new(&launch.program);
    cmd.args(&launch.args)
        .env_clear()
        .envs(&launch.env)
        .current_dir(&launch.cwd)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .process_group(0)
        .kill_on_drop(true);
    // The check runs as the workload does: a `process.user` service's check is not root's.
    if let Some(run) = &launch.run_as {
        crate::run_as::switch_in_child(&mut cmd, run);
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot run `{}`: {e}", launch.program.display()))?;
    match tokio::time::timeout(timeout, child.wait()).await {
        Ok(Ok(status)) if status.success() => Ok(()),
        Ok(Ok(status)) => Err(format!("`{}` {status}", launch.program.display())),
        Ok(Err(e)) => Err(format!(
            "waiting for `{}` failed: {e}",
            launch.program.display()
        )),
        Err(_) => {
            if let Some(pid) = child.id().and_then(|p| i32::try_from(p).ok()) {
                let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
            }
            let _ = child.wait().await;
            Err(format!(
                "`{}` did not finish within {timeout:?}",
                launch.program.display()
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_need_consecutive_results() {
        let mut t = HealthTracker::new(2, 3);
        assert_eq!(t.verdict(), None);
        assert_eq!(t.observe(true), None);
        assert_eq!(
            t.observe(false),
            None,
            "a failure resets the success streak"
        );
        assert_eq!(t.observe(true), None);
        assert_eq!(t.observe(true), Some(Transition::BecameHealthy));
        assert_eq!(t.observe(true), None, "no repeated transition");
        assert_eq!(t.observe(false), None);
        assert_eq!(t.observe(false), None);
        assert_eq!(t.observe(true), None, "a success resets the failure streak");
        assert_eq!(t.verdict(), Some(true));
        assert_eq!(t.observe(false), None);
        assert_eq!(t.observe(false), None);
        assert_eq!(t.observe(false), Some(Transition::BecameUnhealthy));
        assert_eq!(t.observe(false), None);
        assert_eq!(t.observe(true), None);
        assert_eq!(t.observe(true), Some(Transition::BecameHealthy));
    }

    #[test]
    fn first_verdict_can_be_unhealthy_and_zero_thresholds_act_as_one() {
        let mut t = HealthTracker::new(1, 2);
        assert_eq!(t.observe(false), None);
        assert_eq!(t.observe(false), Some(Transition::BecameUnhealthy));
        let mut t = HealthTracker::new(0, 0);
        assert_eq!(t.observe(true), Some(Transition::BecameHealthy));
        assert_eq!(t.observe(false), Some(Transition::BecameUnhealthy));
    }
}
