//! The agent's errors. Each names the instance or path it is about and says what to do.

use std::io;
use std::path::PathBuf;

/// Everything the process driver, the health checks and the supervisor can fail with.
///
/// A probe that merely fails is not an error (it is an observation, see
/// [`crate::health::ProbeResult`]); these are the cases where the agent cannot do what it was asked.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An instance id would escape or confuse `DATA_DIR/instances/`.
    #[error("instance id `{id}` cannot be a directory name: expected 1-128 characters from [A-Za-z0-9._-], not `.` or `..`; the server must send such ids")]
    InvalidId {
        /// The offending id.
        id: String,
    },
    /// The service is not a `process:` service.
    #[error("instance `{id}`: service `{service}` has no `process:` section; the process driver only runs `process:` services (`image:` services need the Docker driver)")]
    NotAProcess {
        /// The instance.
        id: String,
        /// Its service.
        service: String,
    },
    /// `process.command` (or `health.exec`) has no program.
    #[error("instance `{id}`: the {what} command is empty; give at least the program to run")]
    EmptyCommand {
        /// The instance.
        id: String,
        /// `process` or `health.exec`.
        what: &'static str,
    },
    /// A port name that cannot become `PORT_<NAME>`.
    #[error("instance `{id}`: port name `{name}` cannot become an environment variable; use letters, digits, `_` or `-`")]
    InvalidPortName {
        /// The instance.
        id: String,
        /// The port name.
        name: String,
    },
    /// A volume's host path is one this agent does not mount (see [`crate::host_paths`]).
    #[error("instance `{id}`: volume `{volume}` of service `{service}` is refused: {why}")]
    HostPathRefused {
        /// The instance.
        id: String,
        /// Its service.
        service: String,
        /// The volume as the stack file wrote it (`/host:/container[:ro]`).
        volume: String,
        /// Why, and the flag that allows it.
        why: crate::host_paths::Refusal,
    },
    /// A file or directory under the data directory could not be used.
    #[error("cannot {action} `{path}`: {source}; check that the data directory exists, has free space and is writable by the agent")]
    Io {
        /// What the agent tried, e.g. `create log file`.
        action: &'static str,
        /// Where.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The workload's program could not be started.
    #[error("instance `{id}`: cannot start `{program}`: {source}; check that it exists on this node and is executable")]
    Spawn {
        /// The instance.
        id: String,
        /// The resolved program.
        program: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// `berth` as `command[0]` needs the agent's own binary, which could not be found.
    #[error("cannot find the agent's own binary to run a `berth` command: {source}; start the agent from an existing file or configure its path")]
    SelfExe {
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// No free port could be reserved.
    #[error("instance `{id}`: cannot pick a free port for `{name}` (binding 127.0.0.1:0 failed): {source}")]
    FreePort {
        /// The instance.
        id: String,
        /// The port name.
        name: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// `instance.json` exists but cannot be read as a record.
    #[error("instance record `{path}` is not valid: {source}; delete it to make the agent forget this instance")]
    Record {
        /// The record file.
        path: PathBuf,
        /// The decoding error.
        #[source]
        source: serde_json::Error,
    },
    /// A signal could not be delivered to an instance's process group.
    #[error("cannot send {signal} to process group {pgid}: {source}; the agent may lack the permission to signal it")]
    Signal {
        /// The process group id (the instance's pid).
        pgid: i32,
        /// `SIGTERM` or `SIGKILL`.
        signal: &'static str,
        /// The errno.
        #[source]
        source: nix::errno::Errno,
    },
    /// The service is not an `image:` service, yet was handed to the Docker driver.
    #[error("instance `{id}`: service `{service}` has no `image:`; the Docker driver only runs `image:` services")]
    NotAContainer {
        /// The instance.
        id: String,
        /// Its service.
        service: String,
    },
    /// An `image:` service reached a node without a usable Docker Engine.
    #[error("instance `{id}`: service `{service}` needs Docker, but this node has no reachable Docker Engine; start dockerd (and restart the agent so it advertises the docker driver) or place the service elsewhere")]
    NoDocker {
        /// The instance.
        id: String,
        /// Its service.
        service: String,
    },
    /// The image is missing and could not be pulled.
    #[error("instance `{id}`: cannot pull image `{image}`: {message}; check the image name and tag, and that its registry is reachable from this node")]
    ImagePull {
        /// The instance.
        id: String,
        /// The image reference from the service.
        image: String,
        /// The Engine's reason.
        message: String,
    },
    /// A Docker Engine call failed.
    #[error("instance `{id}`: cannot {action}: {message}; check that the Docker Engine runs and answers on its socket")]
    Docker {
        /// The instance (`*` for calls about all of them).
        id: String,
        /// What the agent tried, e.g. `create container`.
        action: &'static str,
        /// The Engine's (or the client's) message.
        message: String,
    },
    /// The instance cannot run as the user it asks for (root without
    /// `--allow-root-processes`, an unknown user, an agent that cannot switch).
    #[error("instance `{id}`: service `{service}` {why}")]
    RunAs {
        /// The instance.
        id: String,
        /// Its service.
        service: String,
        /// Why, and what to do.
        why: crate::run_as::RunAsError,
    },
    /// A health check that cannot be built from the service.
    #[error("instance `{id}`: health check {problem}")]
    Health {
        /// The instance.
        id: String,
        /// What is wrong and what to fix, e.g. ``names port `admin`, which `ports:` does not declare``.
        problem: String,
    },
}

impl Error {
    /// Whether retrying the same start can never succeed (a bad spec rather than a bad moment),
    /// so the supervisor marks the instance `failed` instead of backing off and retrying.
    pub fn is_permanent(&self) -> bool {
        matches!(
            self,
            Error::InvalidId { .. }
                | Error::NotAProcess { .. }
                | Error::EmptyCommand { .. }
                | Error::InvalidPortName { .. }
                | Error::Health { .. }
                | Error::NotAContainer { .. }
                | Error::NoDocker { .. }
                | Error::ImagePull { .. }
                | Error::HostPathRefused { .. }
                | Error::RunAs { .. }
        )
    }
}

/// The agent's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Wraps an [`io::Error`] with what was attempted and where.
pub(crate) fn io_err(
    action: &'static str,
    path: impl Into<PathBuf>,
) -> impl FnOnce(io::Error) -> Error {
    let path = path.into();
    move |source| Error::Io {
        action,
        path,
        source,
    }
}
