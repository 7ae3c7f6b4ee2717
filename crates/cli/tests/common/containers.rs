//! berth itself in containers: an image made from the binary under test, and a [`Sandbox`] of
//! Docker networks and containers that one test owns and removes when it ends, pass or fail.
//!
//! For tests that need several machines with a network between them that can be cut
//! (`docker network disconnect`) — what loopback cannot do. The test drives the `docker` CLI
//! directly: tests may act on the Engine behind berth's back; the product never shells out.
//!
//! - [`engine_or_skip`]: whether `docker info` answers; a loud banner and `false` when it does
//!   not, a failure under `BERTH_REQUIRE_DOCKER=1`.
//! - [`berth_image`]: `scripts/build-berth-image` on a [`stable_binary`] link of the binary
//!   under test; the tag (`berth-test/berth:<sha256 prefix>`) names the content, so the image
//!   is built once per binary.
//! - [`Sandbox`]: names everything `berth-test-<pid>-<n>…` (parallel runs and tests never
//!   collide); its drop force-removes every container it started, then every network, and on
//!   a panic first prints each container's log tail.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use super::{run_command, stable_binary, stderr, stdout, temp_dir};

/// How long one `docker` command may take before the test fails instead of hanging.
pub const DOCKER_TIMEOUT: Duration = Duration::from_secs(60);

/// The script that builds the image (see its header).
pub const BUILD_SCRIPT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../scripts/build-berth-image"
);

/// Whether `docker info` answers. `false` when it does not and none is required, after
/// [`super::skip::skip`] recorded the skip of `test`; panics when one is required.
pub fn engine_or_skip(test: &str) -> bool {
    let why = match Command::new("docker")
        .args(["info", "--format", "{{.ServerVersion}}"])
        .stdin(Stdio::null())
        .output()
    {
        Ok(out) if out.status.success() => return true,
        Ok(out) => format!("`docker info` failed: {}", stderr(&out).trim()),
        Err(e) => format!("cannot run `docker`: {e}"),
    };
    super::skip::skip(test, &why);
    false
}

/// `docker ARGS…` to completion (at most [`DOCKER_TIMEOUT`]), whatever its exit.
pub fn docker(args: &[&str]) -> Output {
    let mut cmd = Command::new("docker");
    cmd.args(args).stdin(Stdio::null());
    run_command(cmd, DOCKER_TIMEOUT)
}

/// `docker ARGS…`; asserts success and returns stdout, trimmed.
#[track_caller]
pub fn docker_ok(args: &[&str]) -> String {
    let out = docker(args);
    if !out.status.success() {
        panic!(
            "docker {} failed ({}):\n{}{}",
            args.join(" "),
            out.status,
            stdout(&out),
            stderr(&out)
        );
    }
    stdout(&out).trim().to_string()
}

/// The image running the binary under test (`ENTRYPOINT ["/usr/local/bin/berth"]`), built by
/// [`BUILD_SCRIPT`] unless it exists already; returns its tag.
///
/// The script reads a hard link of the binary, so a `cargo build` replacing
/// `target/debug/berth` meanwhile cannot make the tag name one content and the image hold
/// another.
#[track_caller]
pub fn berth_image() -> String {
    let dir = temp_dir();
    let bin = stable_binary(dir.path());
    let mut cmd = Command::new(BUILD_SCRIPT);
    cmd.arg(&bin).stdin(Stdio::null());
    let out = run_command(cmd, Duration::from_secs(300));
    if !out.status.success() {
        panic!(
            "{BUILD_SCRIPT} {} failed ({}):\n{}",
            bin.display(),
            out.status,
            stderr(&out)
        );
    }
    let tag = stdout(&out).trim().to_string();
    assert!(
        tag.starts_with("berth-test/berth:"),
        "{BUILD_SCRIPT} printed {tag:?}, not a berth-test/berth tag"
    );
    tag
}

/// Distinguishes the sandboxes of one test process.
static SANDBOXES: AtomicUsize = AtomicUsize::new(0);

/// The networks and containers one test made, all named `berth-test-<pid>-<n>-…`, and removed on
/// drop: containers first (`docker rm -f`, which also ends every process inside), then networks
/// (a network with endpoints cannot be removed).
pub struct Sandbox {
    prefix: String,
    containers: std::cell::RefCell<Vec<String>>,
    networks: std::cell::RefCell<Vec<String>>,
}

impl Default for Sandbox {
    fn default() -> Self {
        Self::new()
    }
}

impl Sandbox {
    pub fn new() -> Sandbox {
        let n = SANDBOXES.fetch_add(1, Ordering::Relaxed);
        Sandbox {
            prefix: format!("berth-test-{}-{n}", std::process::id()),
            containers: Default::default(),
            networks: Default::default(),
        }
    }

    /// `berth-test-<pid>-<n>`: the first network is named this; containers are `PREFIX-NAME`.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Creates a user-defined bridge network (containers on it resolve each other by name).
    #[track_caller]
    pub fn network(&self) -> String {
        let name = match self.networks.borrow().len() {
            0 => self.prefix.clone(),
            n => format!("{}-net{n}", self.prefix),
        };
        // Registered before creation: a creation that half-worked is still cleaned up.
        self.networks.borrow_mut().push(name.clone());
        docker_ok(&["network", "create", "--driver", "bridge", &name]);
        name
    }

    /// `docker run -d --name PREFIX-NAME --network NETWORK DOCKER_ARGS… IMAGE ARGS…`; returns the
    /// container's name (also its host name on the network).
    #[track_caller]
    pub fn run(
        &self,
        name: &str,
        network: &str,
        docker_args: &[&str],
        image: &str,
        args: &[&str],
    ) -> String {
        let full = format!("{}-{name}", self.prefix);
        self.containers.borrow_mut().push(full.clone());
        let mut all = vec!["run", "-d", "--name", &full, "--network", network];
        all.extend_from_slice(docker_args);
        all.push(image);
        all.extend_from_slice(args);
        docker_ok(&all);
        full
    }

    /// `docker network disconnect NETWORK CONTAINER`: the container loses that network at once.
    #[track_caller]
    pub fn disconnect(&self, network: &str, container: &str) {
        docker_ok(&["network", "disconnect", network, container]);
    }

    /// `docker network connect NETWORK CONTAINER` (it may get another address; its name stays).
    #[track_caller]
    pub fn connect(&self, network: &str, container: &str) {
        docker_ok(&["network", "connect", network, container]);
    }

    /// The last lines of every container's output, for failure messages.
    pub fn logs_tail(&self) -> String {
        self.containers
            .borrow()
            .iter()
            .map(|c| format!("--- docker logs {c} (tail) ---\n{}", logs_tail(c)))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.logs_tail());
        }
        // Never panic here (a panic while panicking aborts): report what could not be removed.
        let quiet = |args: &[&str]| {
            let out = Command::new("docker")
                .args(args)
                .stdin(Stdio::null())
                .output();
            match out {
                Ok(o) if o.status.success() => {}
                Ok(o) => eprintln!("cleanup: docker {} failed: {}", args.join(" "), stderr(&o)),
                Err(e) => eprintln!("cleanup: cannot run docker {}: {e}", args.join(" ")),
            }
        };
        let containers = self.containers.borrow();
        if !containers.is_empty() {
            let mut args = vec!["rm", "-f"];
            args.extend(containers.iter().map(String::as_str));
            quiet(&args);
        }
        for net in self.networks.borrow().iter() {
            quiet(&["network", "rm", net]);
        }
    }
}

/// The last 40 lines of a container's stdout and stderr.
pub fn logs_tail(container: &str) -> String {
    let out = docker(&["logs", "--tail", "40", container]);
    format!("{}{}", stdout(&out), stderr(&out))
}

/// Copies one file out of a container (running or not); `None` while it does not exist.
pub fn read_file(container: &str, path: &str) -> Option<String> {
    let dir = temp_dir();
    let dest = dir.path().join("file");
    let src = format!("{container}:{path}");
    let out = docker(&[
        "cp",
        &src,
        dest.to_str().expect("temporary paths are UTF-8"),
    ]);
    if !out.status.success() {
        return None;
    }
    std::fs::read_to_string(Path::new(&dest)).ok()
}

/// The host address a container port is published on (`docker port C PORT`), e.g.
/// `127.0.0.1:49153`.
#[track_caller]
pub fn published(container: &str, port: u16) -> std::net::SocketAddr {
    let text = docker_ok(&["port", container, &format!("{port}/tcp")]);
    let first = text.lines().next().unwrap_or_default();
    first
        .parse()
        .unwrap_or_else(|e| panic!("`docker port {container} {port}` printed {text:?}: {e}"))
}

/// A process in a container as `docker top` shows it: host pid, start time and command line.
/// Two snapshots showing the same value show the very same process (a recycled pid would
/// have another start time).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Process {
    pub pid: u32,
    /// `ps`'s `lstart`, e.g. `Sat Nov 22 00:31:08 2026`.
    pub started: String,
    pub args: String,
}

/// The processes running in `container` (`docker top C -o pid,lstart,args`); `None` if the
/// Engine could not say (e.g. the container is not running).
pub fn processes(container: &str) -> Option<Vec<Process>> {
    let out = docker(&["top", container, "-o", "pid,lstart,args"]);
    if !out.status.success() {
        return None;
    }
    let text = stdout(&out);
    let list = text
        .lines()
        .skip(1)
        .filter_map(|line| {
            // PID, then `lstart` (5 words: `Sat Nov 22 00:31:08 2026`), then the command line.
            let mut words = line.split_whitespace();
            let pid = words.next()?.parse().ok()?;
            let started: Vec<&str> = words.by_ref().take(5).collect();
            let args: Vec<&str> = words.collect();
            Some(Process {
                pid,
                started: started.join(" "),
                args: args.join(" "),
            })
        })
        .collect();
    Some(list)
}
