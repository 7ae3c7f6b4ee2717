//! berth's node agent, as a library: the process driver, health checks, instance logs,
//! adoption of running instances, and the supervisor that reconciles them with the desired set.
//! The agent shell (talking to the server over HTTP) drives it; this crate never talks to the
//! server.
//!
//! # Map
//! - [`supervisor`] — [`Supervisor`]: given the desired [`InstanceSpec`](berth_api::InstanceSpec)s,
//!   starts, stops, restarts (with back-off) and health-checks instances, and publishes their
//!   [`InstanceStatus`](berth_api::InstanceStatus)es.
//! - [`driver`] — the [`Driver`] and [`Workload`] traits: what the supervisor needs from a
//!   runtime (start, adopt, stop, wait, health `exec`, logs). The process and Docker drivers
//!   implement them; a new runtime is a new module implementing them, added to [`Drivers`].
//! - [`process`] — [`ProcessDriver`]: starts a `process:` service detached from the agent, stops
//!   it (`SIGTERM`, then `SIGKILL` after `stop_grace`), adopts those a previous agent started;
//!   the instance environment and free ports.
//! - [`docker`] — [`DockerDriver`] (the Engine client) and [`docker::Containers`] (its
//!   [`Driver`]): runs `image:` services as containers over the Docker Engine API (labels,
//!   published host ports, limits, pulls, logs into the same log file, adoption by label).
//! - [`health`] — [`HealthTracker`](health::HealthTracker) (pure thresholds) and
//!   [`Probe`](health::Probe) (http, tcp, exec).
//! - [`logs`] — per-instance log files, copy-truncate rotation, [`tail`](logs::tail) for
//!   `berth logs [-f]`.
//! - [`record`] — `instance.json`, atomic writes, `/proc/<pid>/stat` identity.
//! - [`gc`] — the ledger of images this agent ran (`images.json`) and the disk usage that
//!   triggers garbage collection; the Engine side is `DockerDriver::collect_garbage`.
//! - [`host_paths`] — which host paths volumes may mount (`--allow-host-path`).
//! - [`lock`] — one agent per data directory (`agent.lock`, with the holder's pid).
//! - [`orphans`] — workloads no record accounts for (spawned, then the agent died before
//!   recording them), killed when the agent starts.
//! - [`clock`] — the one module that reads the time (the workspace lints forbid it
//!   elsewhere).
//! - [`node`] — the agent shell: registers with the server, feeds the supervisor the node's
//!   desired instances, reports their statuses.
//!
//! # On disk
//! ```text
//! DATA_DIR/instances/<id>/instance.json    spec, pid, start time, ports, restarts (atomic writes)
//! DATA_DIR/instances/<id>/output.log       stdout + stderr, O_APPEND; .1, .2 after rotation
//! DATA_DIR/agent.lock                     flock of the running agent; its pid
//! DATA_DIR/images.json                     the images this agent ran; the last `berth gc` handled
//! ```
//! An instance's directory is also its working directory.
//!
//! # Vocabulary
//! - **instance** — one running copy of a service; its id is unique and never reused.
//! - **adopt** — take over supervision of a workload a previous agent started, recognised by
//!   pid *and* start time; an adopted workload is never restarted for being adopted.
//! - **detach** — stop supervising without stopping anything (agent exit): static stability.
//! - **stop grace** — the time between `SIGTERM` and `SIGKILL` when an instance is stopped.
//! - **back-off** — the growing delay between restarts of a crashing instance (500 ms doubling,
//!   capped at 10 s by default); only for runs that never became healthy (see [`supervisor`]).

// The one `unsafe` (the `setsid` before a workload's `exec`, in `process`) is allowed where it
// stands, with its SAFETY comment; anything new must do the same.
#![deny(unsafe_code)]

#[warn(missing_docs)]
pub mod clock;
#[warn(missing_docs)]
pub mod docker;
#[warn(missing_docs)]
pub mod driver;
#[warn(missing_docs)]
pub mod error;
#[warn(missing_docs)]
pub mod gc;
#[warn(missing_docs)]
pub mod health;
#[warn(missing_docs)]
pub mod host_paths;
#[warn(missing_docs)]
pub mod lock;
#[warn(missing_docs)]
pub mod logs;
pub mod node;
#[warn(missing_docs)]
pub mod orphans;
#[warn(missing_docs)]
pub mod process;
#[warn(missing_docs)]
pub mod record;
#[warn(missing_docs)]
pub mod run_as;
#[warn(missing_docs)]
pub mod supervisor;

/// The Engine client [`DockerDriver::client`] hands out, re-exported so tests and tools that act
/// on the Engine (make an image, kill a container) use exactly berth's version of it.
pub use bollard;
pub use docker::DockerDriver;
pub use driver::{Driver, Drivers, Workload};
pub use error::{Error, Result};
pub use process::{Adopted, Exit, ProcessDriver, Running};
pub use supervisor::{Supervisor, SupervisorConfig};
