//! The Docker driver: runs `image:` services as containers through the Docker Engine API
//! (bollard), never through the `docker` command.
//!
//! # What a container looks like
//! - name `berth-<instance id>`, so at most one container per instance exists, and a stale one
//!   (left by a crash between two steps) is found and replaced by name;
//! - labels `berth.stack`, `berth.service`, `berth.instance`, `berth.release`, `berth.node`, and
//!   `berth.agent` — the agent's data directory — so that adoption and orphan removal only ever
//!   touch the containers of *this* agent, even when several agents share one Engine (tests,
//!   `berth up` with extra agents);
//! - restart policy `no`: berth owns restarts, with the same back-off as for processes;
//! - every declared port published on a host port the agent picks (see [`host_ports`]); the
//!   host ports are what the instance reports, so the registry and the routers use them. They
//!   are published on loopback only, plus the node's address when it is another one (what
//!   routers on other nodes dial, see [`publish_addresses`]), never on every interface: an
//!   instance is reached through a router, with its limits and its draining, not around it;
//! - `command` as the container's `Cmd`, `env` plus `PORT`, `PORT_<NAME>` (the *container*
//!   ports) and `BERTH_*`, volumes as bind mounts, `resources` as CPU (`NanoCpus`) and memory
//!   limits, `stop_grace` as the stop timeout.
//!
//! # As the supervisor's driver
//! [`DockerDriver`] is the Engine client; [`Containers`] (the client, the agent's data
//! directory for the records, and its `berth.agent` label) is the
//! [`Driver`] the supervisor runs `image:` services through.
//!
//! # Restarts and exits
//! A restart creates a fresh container (the old one is removed by name first), like a fresh
//! process: nothing written inside a container survives a restart. A container that exits and is
//! not restarted is removed at once; its output stays in the instance's log file.
//!
//! # Logs
//! [`follow_logs`] streams a container's stdout and stderr (with Engine timestamps) into the
//! instance's `output.log`, the same file the process driver uses, so `berth logs` and rotation
//! work unchanged. It records in `log.cursor` the container and the timestamp of the last line
//! written (at most once a second, and when it stops), and resumes after it when a new agent
//! adopts the container. After an agent `kill -9`, up to one second of lines may appear twice;
//! never are lines lost while the container runs.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use berth_api::InstanceSpec;
use bollard::errors::Error as EngineError;
use bollard::exec::{CreateExecOptions, StartExecResults};
use bollard::models::{
    ContainerCreateBody, ContainerInspectResponse, HostConfig, PortBinding, RestartPolicy,
    RestartPolicyNameEnum,
};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, CreateImageOptionsBuilder, ListContainersOptionsBuilder,
    LogsOptionsBuilder, RemoveContainerOptionsBuilder, StopContainerOptionsBuilder,
    WaitContainerOptionsBuilder,
};
use bollard::Docker;
use futures::future::BoxFuture;
use futures::StreamExt;
use tokio::io::AsyncWriteExt;
use tokio::sync::oneshot;

use crate::driver::{Driver, LogFollower, Workload};
use crate::error::{io_err, Error, Result};
use crate::health::HealthCheck;
use crate::process::{instance_env, ProcessDriver};
use crate::record::InstanceRecord;

/// Where the Engine is looked for when `DOCKER_HOST` does not name a unix socket.
pub const DEFAULT_ENDPOINT: &str = "unix:///var/run/docker.sock";

/// How long detection (connect, version negotiation, ping) may take before the node is
/// declared to have no Engine: a hung daemon must not hold up the agent's start.
const DETECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The request timeout for ordinary Engine calls (a stop gets its grace on top).
const REQUEST_TIMEOUT_SECS: u64 = 120;

/// How often the log cursor is saved at most.
const CURSOR_EVERY: Duration = Duration::from_secs(1);

/// The label keys berth puts on its containers.
pub mod labels {
    /// The stack of the instance.
    pub const STACK: &str = "berth.stack";
    /// The service of the instance.
    pub const SERVICE: &str = "berth.service";
    /// The instance id: what adoption and orphan removal go by.
    pub const INSTANCE: &str = "berth.instance";
    /// The release number.
    pub const RELEASE: &str = "berth.release";
    /// The node the server placed the instance on.
    pub const NODE: &str = "berth.node";
    /// The data directory of the agent that owns the container.
    pub const AGENT: &str = "berth.agent";
}

/// The name berth gives an instance's container.
pub fn container_name(instance: &str) -> String {
    format!("berth-{instance}")
}

/// The file in the instance directory that remembers how far the logs were copied.
pub const LOG_CURSOR_FILE: &str = "log.cursor";

/// A client of the local Docker Engine, version-negotiated.
///
/// Cheap to clone and share: the underlying client opens a connection per request.
#[derive(Debug, Clone)]
pub struct DockerDriver {
    docker: Docker,
    endpoint: String,
    /// Image ids recently seen present, by reference (see [`DockerDriver::ensure_image`]).
    images: Arc<Mutex<HashMap<String, (String, tokio::time::Instant)>>>,
    /// The host addresses every published port binds (see [`publish_addresses`]).
    publish: Arc<[IpAddr]>,
}

/// How long an image seen present is trusted without asking the Engine again: a rollout
/// starting 50 containers of one image inspects it once, not 50 times, while a re-tagged
/// or removed image is noticed within seconds (and a create that finds it gone re-checks).
const IMAGE_TRUST: Duration = Duration::from_secs(10);

/// Why no Engine could be used; [`DockerDriver::detect`] turns it into one warning line.
#[derive(Debug, thiserror::Error)]
#[error("no Docker Engine at {endpoint} ({reason}): this node runs process services only")]
pub struct Unavailable {
    /// The socket tried, e.g. `unix:///var/run/docker.sock`.
    pub endpoint: String,
    /// What went wrong, e.g. the socket is missing or the daemon did not answer.
    pub reason: String,
}

/// A container the agent started or adopted.
///
/// A task watches it from the start (one `wait` request to the Engine) so that [`wait`]
/// is cancel-safe and cheap to call again. Dropping the handle stops watching; the container
/// keeps running (static stability).
///
/// [`wait`]: Container::wait
#[derive(Debug)]
pub struct Container {
    id: String,
    pid: Option<u32>,
    exit: Option<oneshot::Receiver<ContainerExit>>,
    exited: Option<ContainerExit>,
    watcher: tokio::task::JoinHandle<()>,
}

impl Drop for Container {
    fn drop(&mut self) {
        self.watcher.abort();
    }
}

/// How a container ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerExit {
    /// Its main process's exit status; `None` when unknown (the container vanished).
    pub code: Option<i64>,
    /// Whether the kernel killed it for exceeding its memory limit.
    pub oom_killed: bool,
}

impl ContainerExit {
    /// Whether this counts as a clean exit (status 0) for the `on-failure` policy.
    pub fn success(&self) -> bool {
        self.code == Some(0) && !self.oom_killed
    }
}

impl std::fmt::Display for ContainerExit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.code {
            Some(c) => write!(f, "container exited with status {c}")?,
            None => write!(f, "container is gone (removed outside berth?)")?,
        }
        if self.oom_killed {
            write!(f, " (killed for exceeding its memory limit)")?;
        }
        Ok(())
    }
}

impl Container {
    /// The Engine's container id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The host pid of the container's main process, when the Engine reported one.
    pub fn pid(&self) -> Option<u32> {
        self.pid
    }

    /// Waits until the container stops. Cancel-safe: dropping the future loses nothing.
    pub async fn wait(&mut self) -> ContainerExit {
        if let Some(e) = &self.exited {
            return e.clone();
        }
        let exit = match self.exit.as_mut() {
            Some(rx) => rx.await.unwrap_or(ContainerExit {
                code: None,
                oom_killed: false,
            }),
            None => std::future::pending().await,
        };
        self.exit = None;
        self.exited = Some(exit.clone());
        exit
    }
}

/// A container of this agent found running by [`DockerDriver::list_owned`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owned {
    /// The Engine's container id.
    pub id: String,
    /// Its `berth.instance` label.
    pub instance: String,
    /// Whether it runs.
    pub running: bool,
    /// The Engine's state word: `created`, `running`, `exited`, `dead`, ….
    pub state: String,
}

impl DockerDriver {
    /// Connects to the local Engine (`DOCKER_HOST` when it is a `unix://` socket, else
    /// [`DEFAULT_ENDPOINT`]), negotiates the API version (Debian's dockerd 20.10 speaks 1.41,
    /// older than bollard's default) and pings it.
    pub async fn connect() -> std::result::Result<DockerDriver, Unavailable> {
        let endpoint = match std::env::var("DOCKER_HOST") {
            Ok(h) if h.starts_with("unix://") => h,
            _ => DEFAULT_ENDPOINT.to_string(),
        };
        let unavailable = |reason: String| Unavailable {
            endpoint: endpoint.clone(),
            reason,
        };
        let docker = Docker::connect_with_unix(
            &endpoint,
            REQUEST_TIMEOUT_SECS,
            bollard::API_DEFAULT_VERSION,
        )
        .map_err(|e| unavailable(e.to_string()))?;
        let ready = async {
            let docker = docker.negotiate_version().await?;
            docker.ping().await?;
            Ok::<_, EngineError>(docker)
        };
        let docker = match tokio::time::timeout(DETECT_TIMEOUT, ready).await {
            Ok(Ok(d)) => d,
            Ok(Err(e)) => return Err(unavailable(e.to_string())),
            Err(_) => return Err(unavailable(format!("no answer within {DETECT_TIMEOUT:?}"))),
        };
        Ok(DockerDriver {
            docker,
            endpoint,
            images: Arc::default(),
            publish: publish_addresses(IpAddr::V4(Ipv4Addr::LOCALHOST)).into(),
        })
    }

    /// The same driver publishing ports for a node reachable at `address` (see
    /// [`publish_addresses`]; loopback alone until this is called).
    pub fn with_node_address(mut self, address: IpAddr) -> DockerDriver {
        self.publish = publish_addresses(address).into();
        self
    }

    /// The host addresses published ports bind.
    pub fn publish_addresses(&self) -> &[IpAddr] {
        &self.publish
    }

    /// [`connect`](Self::connect), saying in one warning line why not when there is no
    /// usable Engine: the node then advertises only the process driver.
    pub async fn detect() -> Option<DockerDriver> {
        match DockerDriver::connect().await {
            Ok(d) => {
                tracing::info!(endpoint = %d.endpoint, "Docker Engine found: this node runs image services too");
                Some(d)
            }
            Err(e) => {
                tracing::warn!("{e}");
                None
            }
        }
    }

    /// The socket this driver talks to.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The underlying bollard client (for tests and tools; berth itself goes through the
    /// driver's methods).
    pub fn client(&self) -> &Docker {
        &self.docker
    }

    /// Makes sure `image` is present, pulling it when it is not, and returns its image id
    /// (`sha256:…`, the digest of its configuration: the same id means the same bytes).
    ///
    /// A failed pull is [`Error::ImagePull`] with the Engine's reason (unknown image,
    /// unreachable registry, …).
    ///
    /// An image seen present within the last 10 s (`IMAGE_TRUST`) is not inspected again.
    pub async fn ensure_image(&self, id: &str, image: &str) -> Result<String> {
        if let Some(known) = self.known_image(image) {
            return Ok(known);
        }
        let found = self.find_or_pull(id, image).await?;
        self.images
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(image.to_string(), (found.clone(), crate::clock::now()));
        Ok(found)
    }

    /// The id of `image` if it was seen present within [`IMAGE_TRUST`].
    fn known_image(&self, image: &str) -> Option<String> {
        let images = self.images.lock().unwrap_or_else(|e| e.into_inner());
        images
            .get(image)
            .filter(|(_, seen)| seen.elapsed() < IMAGE_TRUST)
            .map(|(id, _)| id.clone())
    }

    /// Forgets that `image` was present (a create said it is not).
    fn forget_image(&self, image: &str) {
        self.images
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(image);
    }

    /// Makes sure the image a release pinned is present and returns its id. Present: used as
    /// it is, whatever the tag names now and with no registry needed. Missing (a node that
    /// never ran it): `image` is pulled (or found by tag), and used only if it is exactly the
    /// pinned bytes; otherwise the instance fails with [`Error::ImagePull`] saying so, rather
    /// than silently running other code than the release ran.
    pub async fn ensure_pinned(&self, id: &str, image: &str, pinned: &str) -> Result<String> {
        if let Some(known) = self.known_image(pinned) {
            return Ok(known);
        }
        let found = match self.docker.inspect_image(pinned).await {
            Ok(i) => i.id.unwrap_or_else(|| pinned.to_string()),
            Err(e) if is_not_found(&e) => {
                self.forget_image(image);
                let by_tag = self.ensure_image(id, image).await?;
                if by_tag != pinned {
                    return Err(Error::ImagePull {
                        id: id.to_string(),
                        image: image.to_string(),
                        message: format!(
                            "the release pinned image {pinned}, which is not on this node, and {image} now names {by_tag}: load the original image on the node, or deploy a new release"
                        ),
                    });
                }
                by_tag
            }
            Err(e) => return Err(engine(id, "inspect image", e)),
        };
        self.images
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(pinned.to_string(), (found.clone(), crate::clock::now()));
        Ok(found)
    }

    /// The image id an instance runs: its release's pin if it has one, else what its tag names
    /// (pulled when missing).
    async fn resolve_image(&self, spec: &InstanceSpec, image: &str) -> Result<String> {
        match &spec.image_id {
            Some(pinned) => self.ensure_pinned(&spec.id, image, pinned).await,
            None => self.ensure_image(&spec.id, image).await,
        }
    }

    /// The root directory of the Engine's data (`/var/lib/docker` by default), whose
    /// filesystem the disk threshold of garbage collection watches.
    pub async fn data_root(&self) -> Option<PathBuf> {
        match self.docker.info().await {
            Ok(info) => info.docker_root_dir.map(PathBuf::from),
            Err(e) => {
                tracing::debug!(error = %e, "cannot ask the Engine for its data root");
                None
            }
        }
    }

    /// Collects garbage: removes this agent's (`owner`'s) containers that have exited (not
    /// `created` ones: one may be between its create and its start), then every image of the
    /// `ledger` that is not in `keep` (neither its reference nor its id) and that no container
    /// on the Engine uses. An image is removed by its reference, without force: the Engine
    /// untags it, and deletes it only when that was its last tag, so bytes another tag still
    /// names stay. A reference that names other bytes now (re-tagged, re-pulled) is not the
    /// agent's any more; its old image is deleted only if nothing tags it.
    ///
    /// Returns what was removed and what could not be; the generation, trigger and time of the
    /// report are the caller's to fill in.
    pub async fn collect_garbage(
        &self,
        owner: &str,
        keep: &std::collections::HashSet<String>,
        ledger: &crate::gc::ImageLedger,
    ) -> berth_api::control::GcReport {
        use bollard::query_parameters::RemoveImageOptionsBuilder;
        let mut report = berth_api::control::GcReport::default();
        match self.list_owned(owner).await {
            Ok(owned) => {
                for c in owned
                    .iter()
                    .filter(|c| c.state == "exited" || c.state == "dead")
                {
                    match self.remove(&c.instance, &c.id).await {
                        Ok(()) => report.containers_removed += 1,
                        Err(e) => report.errors.push(e.to_string()),
                    }
                }
            }
            Err(e) => report.errors.push(e.to_string()),
        }
        // Which images are in use, by any container (berth's or not, running or not).
        let options = ListContainersOptionsBuilder::default().all(true).build();
        let used: std::collections::HashSet<String> =
            match self.docker.list_containers(Some(options)).await {
                Ok(list) => list.into_iter().filter_map(|c| c.image_id).collect(),
                Err(e) => {
                    // Without knowing what is in use, remove no image at all.
                    report
                        .errors
                        .push(format!("cannot list containers: {}", engine_message(&e)));
                    return report;
                }
            };
        for entry in ledger.images() {
            if keep.contains(&entry.reference)
                || keep.contains(&entry.id)
                || used.contains(&entry.id)
            {
                continue;
            }
            let by_ref = match self.docker.inspect_image(&entry.reference).await {
                Ok(i) => i.id,
                Err(e) if is_not_found(&e) => None,
                Err(e) => {
                    report.errors.push(format!(
                        "cannot inspect image {}: {}",
                        entry.reference,
                        engine_message(&e)
                    ));
                    continue;
                }
            };
            // Remove by reference when it still names the image, else the old image by id,
            // but only if nothing tags it any more (a tag would be someone else's).
            let target = if by_ref.as_deref() == Some(entry.id.as_str()) {
                entry.reference.clone()
            } else {
                match self.docker.inspect_image(&entry.id).await {
                    Ok(i) if i.repo_tags.as_ref().is_none_or(|t| t.is_empty()) => entry.id.clone(),
                    _ => {
                        ledger.forget(&entry);
                        continue;
                    }
                }
            };
            let size = self
                .docker
                .inspect_image(&entry.id)
                .await
                .ok()
                .and_then(|i| i.size)
                .and_then(|s| u64::try_from(s).ok())
                .unwrap_or(0);
            let options = RemoveImageOptionsBuilder::default().force(false).build();
            match self.docker.remove_image(&target, Some(options), None).await {
                Ok(items) => {
                    if items
                        .iter()
                        .any(|i| i.deleted.as_deref() == Some(entry.id.as_str()))
                    {
                        report.bytes_reclaimed += size;
                    }
                    tracing::info!(image = %entry.reference, id = %entry.id, "removed image");
                    report.images_removed.push(entry.reference.clone());
                    self.forget_image(&entry.reference);
                    self.forget_image(&entry.id);
                    ledger.forget(&entry);
                }
                Err(e) if is_not_found(&e) => ledger.forget(&entry),
                Err(e) => report.errors.push(format!(
                    "cannot remove image {}: {}",
                    entry.reference,
                    engine_message(&e)
                )),
            }
        }
        report
    }

    async fn find_or_pull(&self, id: &str, image: &str) -> Result<String> {
        match self.docker.inspect_image(image).await {
            Ok(i) => return Ok(i.id.unwrap_or_default()),
            Err(e) if is_not_found(&e) => {}
            Err(e) => return Err(engine(id, "inspect image", e)),
        }
        let (from_image, tag) = split_reference(image);
        let options = CreateImageOptionsBuilder::default()
            .from_image(from_image)
            .tag(tag)
            .build();
        let mut pull = self.docker.create_image(Some(options), None, None);
        while let Some(item) = pull.next().await {
            let message = match item {
                Ok(info) => info
                    .error_detail
                    .and_then(|d| d.message)
                    .filter(|m| !m.is_empty()),
                Err(e) => Some(engine_message(&e)),
            };
            if let Some(message) = message {
                return Err(Error::ImagePull {
                    id: id.to_string(),
                    image: image.to_string(),
                    message,
                });
            }
        }
        match self.docker.inspect_image(image).await {
            Ok(i) => Ok(i.id.unwrap_or_default()),
            Err(e) => Err(Error::ImagePull {
                id: id.to_string(),
                image: image.to_string(),
                message: format!(
                    "the pull ended but the image is still missing: {}",
                    engine_message(&e)
                ),
            }),
        }
    }

    /// Starts instance `spec` as a fresh container publishing `host_ports` (see
    /// [`host_ports`]), after pulling its image if needed and removing a stale container of the
    /// same instance. Writes the instance record (with the container id) *before* starting it,
    /// so that a restarted agent can always find, adopt or remove what runs; a container whose
    /// record cannot be written is removed and not started.
    ///
    /// `owner` is the agent's identity (its data directory), set as the `berth.agent` label.
    pub async fn start(
        &self,
        paths: &ProcessDriver,
        spec: &InstanceSpec,
        host_ports: BTreeMap<String, u16>,
        restarts: u32,
        owner: &str,
    ) -> Result<(Container, String)> {
        let image = spec
            .spec
            .image
            .as_deref()
            .ok_or_else(|| Error::NotAContainer {
                id: spec.id.clone(),
                service: spec.service.clone(),
            })?;
        let dir = paths.instance_dir(&spec.id)?;
        std::fs::create_dir_all(&dir).map_err(io_err("create instance directory", &dir))?;
        let mut image_id = self.resolve_image(spec, image).await?;
        let name = container_name(&spec.id);
        self.remove(&spec.id, &name).await?;
        let body = create_body(spec, &host_ports, owner, &self.publish)?;
        let options = CreateContainerOptionsBuilder::default().name(&name).build();
        let created = match self
            .docker
            .create_container(Some(options.clone()), body.clone())
            .await
        {
            // The image went away since it was last seen: look (or pull) again, once.
            Err(e) if is_not_found(&e) => {
                self.forget_image(image);
                if let Some(pinned) = &spec.image_id {
                    self.forget_image(pinned);
                }
                image_id = self.resolve_image(spec, image).await?;
                self.docker.create_container(Some(options), body).await
            }
            other => other,
        }
        .map_err(|e| engine(&spec.id, "create container", e))?;
        let record = InstanceRecord {
            spec: spec.clone(),
            pid: 0,
            start_time: 0,
            ports: host_ports,
            restarts,
            started_at_ms: crate::clock::now_ms(),
            finished: None,
            container: Some(created.id.clone()),
            image_id: Some(image_id.clone()),
        };
        if let Err(e) = paths.save_record(&record) {
            let _ = self.remove(&spec.id, &created.id).await;
            return Err(e);
        }
        if let Err(e) = self.docker.start_container(&created.id, None).await {
            let _ = self.remove(&spec.id, &created.id).await;
            return Err(engine(&spec.id, "start container", e));
        }
        let pid = self
            .inspect(&created.id)
            .await
            .ok()
            .flatten()
            .and_then(|i| host_pid(&i));
        Ok((self.watch(created.id, pid), image_id))
    }

    /// A handle on an existing container whose record says it is instance `instance`: `None`
    /// when it does not run any more (or is gone, or carries another instance's label), so the
    /// caller treats the instance as having died while no agent watched.
    pub async fn adopt(&self, instance: &str, container: &str) -> Result<Option<Container>> {
        let Some(info) = self
            .inspect(container)
            .await
            .map_err(|e| engine(instance, "inspect container", e))?
        else {
            return Ok(None);
        };
        let labelled = info
            .config
            .as_ref()
            .and_then(|c| c.labels.as_ref())
            .and_then(|l| l.get(labels::INSTANCE))
            .is_some_and(|l| l == instance);
        let running = info.state.as_ref().and_then(|s| s.running).unwrap_or(false);
        if !labelled || !running {
            return Ok(None);
        }
        let id = info.id.clone().unwrap_or_else(|| container.to_string());
        Ok(Some(self.watch(id, host_pid(&info))))
    }

    /// Stops a container: the image's stop signal (`SIGTERM` by default), then `SIGKILL` after
    /// `grace`; then removes it. Returns how it ended. Idempotent: a container that is already
    /// stopped or gone is only removed.
    pub async fn stop(
        &self,
        instance: &str,
        container: &mut Container,
        grace: Duration,
    ) -> Result<ContainerExit> {
        let secs = i32::try_from(grace.as_millis().div_ceil(1000)).unwrap_or(i32::MAX);
        // The stop request answers once the container stopped: give it the grace on top of the
        // usual request timeout.
        let docker = self
            .docker
            .clone()
            .with_timeout(grace + Duration::from_secs(REQUEST_TIMEOUT_SECS));
        let options = StopContainerOptionsBuilder::default().t(secs).build();
        match docker.stop_container(&container.id, Some(options)).await {
            Ok(()) => {}
            Err(e) if is_not_found(&e) || is_not_modified(&e) => {}
            Err(e) => return Err(engine(instance, "stop container", e)),
        }
        let exit = container.wait().await;
        self.remove(instance, &container.id).await?;
        Ok(exit)
    }

    /// Removes a container (by id or name) whatever its state; a missing one is not an error.
    pub async fn remove(&self, instance: &str, container: &str) -> Result<()> {
        let options = RemoveContainerOptionsBuilder::default().force(true).build();
        match self.docker.remove_container(container, Some(options)).await {
            Ok(()) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            // "removal already in progress": someone else is removing it, which is what we want.
            Err(EngineError::DockerResponseServerError {
                status_code: 409, ..
            }) => Ok(()),
            Err(e) => Err(engine(instance, "remove container", e)),
        }
    }

    /// Every container (running or not) labelled as belonging to the agent `owner`.
    pub async fn list_owned(&self, owner: &str) -> Result<Vec<Owned>> {
        let filters: HashMap<&str, Vec<String>> =
            HashMap::from([("label", vec![format!("{}={owner}", labels::AGENT)])]);
        let options = ListContainersOptionsBuilder::default()
            .all(true)
            .filters(&filters)
            .build();
        let list = self
            .docker
            .list_containers(Some(options))
            .await
            .map_err(|e| engine("*", "list containers", e))?;
        Ok(list
            .into_iter()
            .filter_map(|c| {
                let instance = c.labels.as_ref()?.get(labels::INSTANCE)?.clone();
                let state = c.state.map(|s| s.to_string()).unwrap_or_default();
                Some(Owned {
                    id: c.id?,
                    instance,
                    running: state == "running",
                    state,
                })
            })
            .collect())
    }

    /// Runs `command` inside the container (as the exec health check does) and says whether
    /// it exited 0 within `timeout`. A command that times out keeps running inside the
    /// container: the Engine has no way to kill an exec; checks should be short.
    pub async fn exec(
        &self,
        container: &str,
        command: &[String],
        env: &[String],
        timeout: Duration,
    ) -> std::result::Result<(), String> {
        let run = async {
            let exec = self
                .docker
                .create_exec(
                    container,
                    CreateExecOptions {
                        cmd: Some(command.to_vec()),
                        env: Some(env.to_vec()),
                        attach_stdout: Some(true),
                        attach_stderr: Some(true),
                        ..Default::default()
                    },
                )
                .await
                .map_err(|e| {
                    format!(
                        "cannot create exec `{}`: {}",
                        command.join(" "),
                        engine_message(&e)
                    )
                })?;
            match self.docker.start_exec(&exec.id, None).await {
                Ok(StartExecResults::Attached { mut output, .. }) => {
                    // Drain the output: the exec ends when its streams close.
                    while let Some(Ok(_)) = output.next().await {}
                }
                Ok(StartExecResults::Detached) => {}
                Err(e) => {
                    return Err(format!(
                        "cannot start exec `{}`: {}",
                        command.join(" "),
                        engine_message(&e)
                    ))
                }
            }
            let info = self
                .docker
                .inspect_exec(&exec.id)
                .await
                .map_err(|e| format!("cannot inspect exec: {}", engine_message(&e)))?;
            match info.exit_code {
                Some(0) => Ok(()),
                Some(c) => Err(format!(
                    "`{}` exited with status {c} in the container",
                    command.join(" ")
                )),
                None => Err(format!(
                    "`{}` did not report an exit status",
                    command.join(" ")
                )),
            }
        };
        match tokio::time::timeout(timeout, run).await {
            Ok(r) => r,
            Err(_) => Err(format!(
                "`{}` did not finish within {timeout:?} in the container",
                command.join(" ")
            )),
        }
    }

    /// Inspects a container; `None` when it does not exist.
    async fn inspect(
        &self,
        container: &str,
    ) -> std::result::Result<Option<ContainerInspectResponse>, EngineError> {
        match self.docker.inspect_container(container, None).await {
            Ok(i) => Ok(Some(i)),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Starts the task that waits for `id` to stop.
    fn watch(&self, id: String, pid: Option<u32>) -> Container {
        let (tx, rx) = oneshot::channel();
        let driver = self.clone();
        let cid = id.clone();
        let watcher = tokio::spawn(async move {
            let exit = driver.wait_exit(&cid).await;
            let _ = tx.send(exit);
        });
        Container {
            id,
            pid,
            exit: Some(rx),
            exited: None,
            watcher,
        }
    }

    /// Waits for the container to stop: the Engine's `wait` (condition `not-running`), which
    /// also answers at once for a stopped one. A broken connection (e.g. dockerd restarting) is
    /// retried after a look at the container's state, once a second.
    async fn wait_exit(&self, id: &str) -> ContainerExit {
        loop {
            let options = WaitContainerOptionsBuilder::default()
                .condition("not-running")
                .build();
            let mut wait = self.docker.wait_container(id, Some(options));
            let code = match wait.next().await {
                Some(Ok(r)) => Some(r.status_code),
                Some(Err(EngineError::DockerContainerWaitError { code, .. })) => Some(code),
                _ => None,
            };
            match self.inspect(id).await {
                Ok(None) => {
                    return ContainerExit {
                        code,
                        oom_killed: false,
                    }
                }
                Ok(Some(info)) => {
                    let state = info.state.unwrap_or_default();
                    if !state.running.unwrap_or(false) {
                        return ContainerExit {
                            code: state.exit_code.or(code),
                            oom_killed: state.oom_killed.unwrap_or(false),
                        };
                    }
                }
                Err(e) => {
                    tracing::debug!(container = %id, error = %e, "cannot inspect container; retrying")
                }
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}

/// The Docker driver as the supervisor's [`Driver`]: this agent's containers on one Engine.
/// It runs `image:` services; the instance records live in the process driver's data
/// directory (`paths`), and `owner` (the agent's data directory) labels every container.
#[derive(Debug, Clone)]
pub struct Containers {
    engine: DockerDriver,
    paths: ProcessDriver,
    owner: Arc<str>,
}

impl Containers {
    /// The containers of the agent `owner` on `engine`, recorded under `paths`' data
    /// directory.
    pub fn new(engine: DockerDriver, paths: ProcessDriver, owner: Arc<str>) -> Containers {
        Containers {
            engine,
            paths,
            owner,
        }
    }

    /// The Engine client.
    pub fn engine(&self) -> &DockerDriver {
        &self.engine
    }

    fn workload(
        &self,
        instance: &str,
        container: Container,
        image_id: Option<String>,
    ) -> Box<dyn Workload> {
        Box::new(ContainerWorkload {
            engine: self.engine.clone(),
            instance: instance.to_string(),
            container,
            image_id,
        })
    }
}

impl Driver for Containers {
    fn name(&self) -> &'static str {
        "docker"
    }

    fn runs(&self, spec: &InstanceSpec) -> bool {
        spec.spec.image.is_some()
    }

    /// The Engine's socket: a container that mounts it owns the node.
    fn protected_paths(&self) -> Vec<PathBuf> {
        self.engine
            .endpoint()
            .strip_prefix("unix://")
            .map(PathBuf::from)
            .into_iter()
            .collect()
    }

    fn ports(&self, spec: &InstanceSpec) -> Result<BTreeMap<String, u16>> {
        host_ports(&spec.id, &spec.spec.ports)
    }

    /// The Engine refused the container because one of its host ports is taken: by another
    /// program, or by another container the Engine's own allocator gave it first.
    fn port_taken(&self, error: &Error) -> bool {
        matches!(error, Error::Docker { message, .. } if port_taken(message))
    }

    fn start<'a>(
        &'a self,
        spec: &'a InstanceSpec,
        ports: BTreeMap<String, u16>,
        restarts: u32,
    ) -> BoxFuture<'a, Result<Box<dyn Workload>>> {
        Box::pin(async move {
            let (container, image_id) = self
                .engine
                .start(&self.paths, spec, ports, restarts, &self.owner)
                .await?;
            Ok(self.workload(&spec.id, container, Some(image_id)))
        })
    }

    /// Adopts the container the record names (a record without one, or a container that no
    /// longer runs as this instance, or an Engine that does not answer: `None`, the instance
    /// died).
    fn adopt<'a>(&'a self, record: &'a InstanceRecord) -> BoxFuture<'a, Option<Box<dyn Workload>>> {
        Box::pin(async move {
            let id = &record.spec.id;
            let container = record.container.as_deref()?;
            match self.engine.adopt(id, container).await {
                Ok(Some(c)) => {
                    tracing::info!(id = %id, container = %c.id(), "adopted container");
                    Some(self.workload(id, c, record.image_id.clone()))
                }
                Ok(None) => None,
                Err(e) => {
                    tracing::warn!(id = %id, error = %e, "cannot adopt container");
                    None
                }
            }
        })
    }

    /// Removes every container of this agent whose instance no task knows: left by an
    /// instance whose record was lost, or by a crash between creating a container and
    /// recording it.
    fn remove_unknown(&self, known: std::collections::HashSet<String>) -> BoxFuture<'static, ()> {
        let this = self.clone();
        Box::pin(async move {
            let owned = match this.engine.list_owned(&this.owner).await {
                Ok(o) => o,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot look for orphan containers");
                    return;
                }
            };
            for orphan in owned.into_iter().filter(|o| !known.contains(&o.instance)) {
                tracing::info!(instance = %orphan.instance, container = %orphan.id, "removing orphan container");
                if let Err(e) = this.engine.remove(&orphan.instance, &orphan.id).await {
                    tracing::warn!(error = %e, "cannot remove orphan container");
                }
            }
        })
    }

    /// Removes the instance's container by name: a container that will not run again only
    /// holds disk space; its output is in the log file.
    fn discard<'a>(&'a self, spec: &'a InstanceSpec) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let name = container_name(&spec.id);
            if let Err(e) = self.engine.remove(&spec.id, &name).await {
                tracing::warn!(id = %spec.id, error = %e, "cannot remove container");
            }
        })
    }
}

/// An `image:` instance handed to the supervisor: its container, the image it runs, and the
/// Engine that stops it, runs its `exec` checks and streams its logs.
#[derive(Debug)]
struct ContainerWorkload {
    engine: DockerDriver,
    instance: String,
    container: Container,
    image_id: Option<String>,
}

impl Workload for ContainerWorkload {
    fn pid(&self) -> Option<u32> {
        self.container.pid()
    }

    fn image_id(&self) -> Option<String> {
        self.image_id.clone()
    }

    fn wait(&mut self) -> BoxFuture<'_, (bool, String)> {
        Box::pin(async move {
            let exit = self.container.wait().await;
            (exit.success(), exit.to_string())
        })
    }

    fn stop(&mut self, grace: Duration) -> BoxFuture<'_, Result<String>> {
        Box::pin(async move {
            self.engine
                .stop(&self.instance, &mut self.container, grace)
                .await
                .map(|e| e.to_string())
        })
    }

    fn health_check(
        &self,
        spec: &InstanceSpec,
        ports: &BTreeMap<String, u16>,
    ) -> Result<Option<HealthCheck>> {
        HealthCheck::for_container(&self.engine, self.container.id(), spec, ports)
    }

    fn follow_logs(&self, dir: &Path) -> Option<LogFollower> {
        let (engine, id) = (self.engine.clone(), self.container.id().to_string());
        let (log, cursor) = (dir.join(crate::logs::LOG_FILE), dir.join(LOG_CURSOR_FILE));
        Some(LogFollower::spawn(move |stop| {
            follow_logs(engine, id, log, cursor, stop)
        }))
    }
}

/// Whether the Engine refused a container because one of its host ports is taken: by another
/// program ("address already in use") or by another container that Docker's own allocator
/// gave it first ("port is already allocated").
fn port_taken(message: &str) -> bool {
    message.contains("address already in use") || message.contains("port is already allocated")
}

/// Picks a free host port for every declared port (binding `127.0.0.1:0`; the same accepted
/// race as [`crate::process::resolve_ports`]). Pick them once per instance and reuse them on
/// restarts, so its endpoints do not move.
pub fn host_ports(id: &str, declared: &BTreeMap<String, u16>) -> Result<BTreeMap<String, u16>> {
    declared
        .keys()
        .map(|name| {
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

/// The port each declared port listens on *inside* the container: the declared one, or for a
/// declared `0` the host port (the workload learns it from `$PORT`, as a process would).
pub fn container_ports(
    declared: &BTreeMap<String, u16>,
    host: &BTreeMap<String, u16>,
) -> BTreeMap<String, u16> {
    declared
        .iter()
        .map(|(name, &port)| {
            let inside = if port == 0 {
                host.get(name).copied().unwrap_or(0)
            } else {
                port
            };
            (name.clone(), inside)
        })
        .collect()
}

/// The host addresses a container's ports are published on for a node whose instances are
/// reached at `address` (`berth agent --address`, 127.0.0.1 by default): loopback, where the
/// agent's health checks and the node's own router connect, and `address` too when it is
/// another one, so that routers on other nodes reach the instance. An unspecified `address`
/// (`0.0.0.0`, `::`) is taken at its word: every interface.
pub fn publish_addresses(address: IpAddr) -> Vec<IpAddr> {
    if address.is_loopback() || address.is_unspecified() {
        vec![address]
    } else {
        vec![IpAddr::V4(Ipv4Addr::LOCALHOST), address]
    }
}

/// The Engine's create request for an instance: image, command, environment, labels, port
/// bindings on `publish` (see [`publish_addresses`]), binds, limits, no restart policy. Pure,
/// so it is tested without an Engine.
pub fn create_body(
    spec: &InstanceSpec,
    host_ports: &BTreeMap<String, u16>,
    owner: &str,
    publish: &[IpAddr],
) -> Result<ContainerCreateBody> {
    let service = &spec.spec;
    let inside = container_ports(&service.ports, host_ports);
    let env: Vec<String> = instance_env(spec, &inside)?
        .into_iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    let mut exposed = Vec::new();
    let mut bindings = HashMap::new();
    for (name, port) in &inside {
        let key = format!("{port}/tcp");
        let host = host_ports.get(name).copied().unwrap_or(0);
        exposed.push(key.clone());
        // Never `host_ip: None`: the Engine would publish on 0.0.0.0, around the router.
        let on: Vec<PortBinding> = publish
            .iter()
            .map(|ip| PortBinding {
                host_ip: Some(ip.to_string()),
                host_port: Some(host.to_string()),
            })
            .collect();
        bindings.insert(key, Some(on));
    }
    let labels = HashMap::from([
        (labels::STACK.to_string(), spec.stack.clone()),
        (labels::SERVICE.to_string(), spec.service.clone()),
        (labels::INSTANCE.to_string(), spec.id.clone()),
        (labels::RELEASE.to_string(), spec.release.to_string()),
        (labels::NODE.to_string(), spec.node.clone()),
        (labels::AGENT.to_string(), owner.to_string()),
    ]);
    let binds: Vec<String> = service
        .volumes
        .iter()
        .map(|v| {
            if v.read_only {
                format!("{}:{}:ro", v.host, v.container)
            } else {
                format!("{}:{}", v.host, v.container)
            }
        })
        .collect();
    let nano_cpus =
        i64::try_from(service.resources.cpu.millis.saturating_mul(1_000_000)).unwrap_or(i64::MAX);
    let memory = i64::try_from(service.resources.memory.bytes).unwrap_or(i64::MAX);
    Ok(ContainerCreateBody {
        // The release's pinned id when it has one: exactly the bytes the release ran.
        image: spec.image_id.clone().or_else(|| service.image.clone()),
        cmd: service.command.clone(),
        env: Some(env),
        labels: Some(labels),
        exposed_ports: Some(exposed),
        stop_timeout: Some(
            i64::try_from(service.stop_grace.as_std().as_millis().div_ceil(1000))
                .unwrap_or(i64::MAX),
        ),
        host_config: Some(HostConfig {
            port_bindings: Some(bindings),
            binds: (!binds.is_empty()).then_some(binds),
            nano_cpus: (nano_cpus > 0).then_some(nano_cpus),
            memory: (memory > 0).then_some(memory),
            restart_policy: Some(RestartPolicy {
                name: Some(RestartPolicyNameEnum::NO),
                maximum_retry_count: None,
            }),
            ..Default::default()
        }),
        ..Default::default()
    })
}

/// Splits an image reference into the `fromImage` and `tag` of a pull: `repo:tag` →
/// (`repo`, `tag`), `repo@sha256:…` → (`repo`, `sha256:…`), a registry port is not a tag.
pub fn split_reference(image: &str) -> (&str, &str) {
    if let Some((name, digest)) = image.split_once('@') {
        return (name, digest);
    }
    let slash = image.rfind('/').map_or(0, |i| i + 1);
    match image[slash..].rfind(':') {
        Some(i) => (&image[..slash + i], &image[slash + i + 1..]),
        None => (image, "latest"),
    }
}

/// Copies the container's output into `log`, from where `cursor` says the last copy stopped
/// (for the same container), until the container stops or `stop` fires. Saves the cursor at
/// most once a second and when it ends, so a later agent resumes without gaps.
pub async fn follow_logs(
    driver: DockerDriver,
    container: String,
    log: PathBuf,
    cursor: PathBuf,
    mut stop: oneshot::Receiver<()>,
) {
    let mut last = read_cursor(&cursor, &container);
    let since = last.map_or(0, |(s, _)| i32::try_from(s).unwrap_or(0));
    let options = LogsOptionsBuilder::default()
        .follow(true)
        .stdout(true)
        .stderr(true)
        .timestamps(true)
        .since(since)
        .build();
    let mut file = match tokio::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .await
    {
        Ok(f) => f,
        Err(e) => {
            tracing::warn!(path = %log.display(), error = %e, "cannot open the instance log; container output is not copied");
            return;
        }
    };
    let mut stream = driver.docker.logs(&container, Some(options));
    let mut saved = crate::clock::now();
    let mut dirty = false;
    loop {
        let item = tokio::select! {
            item = stream.next() => item,
            _ = &mut stop => break,
        };
        let Some(Ok(output)) = item else { break };
        let bytes: &[u8] = output.as_ref();
        let (stamp, line) = split_timestamp(bytes);
        if let (Some(s), Some(l)) = (stamp, last) {
            if s <= l {
                continue; // already copied by an earlier agent
            }
        }
        if let Err(e) = file.write_all(line).await {
            tracing::warn!(path = %log.display(), error = %e, "cannot write the instance log");
            break;
        }
        if stamp.is_some() {
            last = stamp;
            dirty = true;
        }
        if dirty && saved.elapsed() >= CURSOR_EVERY {
            write_cursor(&cursor, &container, last);
            saved = crate::clock::now();
            dirty = false;
        }
    }
    let _ = file.flush().await;
    if dirty {
        write_cursor(&cursor, &container, last);
    }
}

/// Splits `2024-05-01T10:00:00.123456789Z message` into its timestamp (seconds, nanoseconds
/// since the epoch) and the message. A line without a parsable timestamp is kept whole.
pub fn split_timestamp(bytes: &[u8]) -> (Option<(i64, u32)>, &[u8]) {
    let Some(space) = bytes.iter().position(|&b| b == b' ') else {
        return (None, bytes);
    };
    match std::str::from_utf8(&bytes[..space])
        .ok()
        .and_then(parse_timestamp)
    {
        Some(t) => (Some(t), &bytes[space + 1..]),
        None => (None, bytes),
    }
}

/// Parses the Engine's RFC 3339 UTC timestamps (`YYYY-MM-DDTHH:MM:SS[.fraction]Z`) into
/// seconds and nanoseconds since the Unix epoch.
pub fn parse_timestamp(s: &str) -> Option<(i64, u32)> {
    let s = s.strip_suffix('Z')?;
    let (date, time) = s.split_once('T')?;
    let mut d = date.splitn(3, '-');
    let year: i64 = d.next()?.parse().ok()?;
    let month: i64 = d.next()?.parse().ok()?;
    let day: i64 = d.next()?.parse().ok()?;
    let (hms, frac) = match time.split_once('.') {
        Some((h, f)) => (h, f),
        None => (time, ""),
    };
    let mut t = hms.splitn(3, ':');
    let hour: i64 = t.next()?.parse().ok()?;
    let min: i64 = t.next()?.parse().ok()?;
    let sec: i64 = t.next()?.parse().ok()?;
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || min > 59 || sec > 60 {
        return None;
    }
    if frac.len() > 9 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let nanos: u32 = if frac.is_empty() {
        0
    } else {
        format!("{frac:0<9}").parse().ok()?
    };
    // Days from civil (Howard Hinnant's algorithm).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some((days * 86_400 + hour * 3600 + min * 60 + sec, nanos))
}

fn read_cursor(path: &Path, container: &str) -> Option<(i64, u32)> {
    let text = std::fs::read_to_string(path).ok()?;
    let mut parts = text.split_whitespace();
    if parts.next()? != container {
        return None;
    }
    let secs = parts.next()?.parse().ok()?;
    let nanos = parts.next()?.parse().ok()?;
    Some((secs, nanos))
}

fn write_cursor(path: &Path, container: &str, last: Option<(i64, u32)>) {
    if let Some((secs, nanos)) = last {
        if let Err(e) = std::fs::write(path, format!("{container} {secs} {nanos}\n")) {
            tracing::debug!(path = %path.display(), error = %e, "cannot save the log cursor");
        }
    }
}

fn host_pid(info: &ContainerInspectResponse) -> Option<u32> {
    info.state
        .as_ref()
        .and_then(|s| s.pid)
        .and_then(|p| u32::try_from(p).ok())
        .filter(|&p| p != 0)
}

fn is_not_found(e: &EngineError) -> bool {
    matches!(
        e,
        EngineError::DockerResponseServerError {
            status_code: 404,
            ..
        }
    )
}

fn is_not_modified(e: &EngineError) -> bool {
    matches!(
        e,
        EngineError::DockerResponseServerError {
            status_code: 304,
            ..
        }
    )
}

/// The Engine's own message when it sent one, else the client error.
fn engine_message(e: &EngineError) -> String {
    match e {
        EngineError::DockerResponseServerError { message, .. } => message.clone(),
        EngineError::DockerStreamError { error } => error.clone(),
        other => other.to_string(),
    }
}

fn engine(id: &str, action: &'static str, source: EngineError) -> Error {
    Error::Docker {
        id: id.to_string(),
        action,
        message: engine_message(&source),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_engine_messages_for_a_taken_host_port_are_recognised() {
        assert!(port_taken(
            "listen tcp4 0.0.0.0:8080: bind: address already in use"
        ));
        assert!(port_taken("driver failed programming external connectivity on endpoint x: Bind for 0.0.0.0:35199 failed: port is already allocated"));
        assert!(!port_taken("no such image"));
    }

    #[test]
    fn references_split_into_name_and_tag() {
        assert_eq!(
            split_reference("berth-test/busybox:v1"),
            ("berth-test/busybox", "v1")
        );
        assert_eq!(
            split_reference("registry:5000/shop/api:git-1"),
            ("registry:5000/shop/api", "git-1")
        );
        assert_eq!(
            split_reference("registry:5000/shop"),
            ("registry:5000/shop", "latest")
        );
        assert_eq!(split_reference("shop@sha256:abc"), ("shop", "sha256:abc"));
    }

    #[test]
    fn timestamps_parse_like_the_engine_writes_them() {
        assert_eq!(parse_timestamp("1970-01-01T00:00:00Z"), Some((0, 0)));
        assert_eq!(
            parse_timestamp("2024-02-29T12:34:56.5Z"),
            Some((1_709_210_096, 500_000_000))
        );
        assert_eq!(
            parse_timestamp("2024-02-29T12:34:56.123456789Z"),
            Some((1_709_210_096, 123_456_789))
        );
        assert_eq!(parse_timestamp("2024-13-01T00:00:00Z"), None);
        assert_eq!(parse_timestamp("yesterday"), None);
        let (t, rest) = split_timestamp(b"2024-02-29T12:34:56.5Z hello world\n");
        assert_eq!(t, Some((1_709_210_096, 500_000_000)));
        assert_eq!(rest, b"hello world\n");
        assert_eq!(
            split_timestamp(b"no stamp here\n"),
            (None, &b"no stamp here\n"[..])
        );
    }

    #[test]
    fn declared_zero_ports_listen_inside_on_the_host_port() {
        let declared = BTreeMap::from([("http".to_string(), 8080), ("admin".to_string(), 0)]);
        let host = BTreeMap::from([("http".to_string(), 40001), ("admin".to_string(), 40002)]);
        assert_eq!(
            container_ports(&declared, &host),
            BTreeMap::from([("http".to_string(), 8080), ("admin".to_string(), 40002)])
        );
    }

    #[test]
    fn ports_are_published_on_loopback_and_the_node_address_never_everywhere_unless_asked() {
        let ip = |s: &str| s.parse::<IpAddr>().expect("an address");
        assert_eq!(publish_addresses(ip("127.0.0.1")), [ip("127.0.0.1")]);
        assert_eq!(publish_addresses(ip("::1")), [ip("::1")]);
        assert_eq!(
            publish_addresses(ip("10.0.0.12")),
            [ip("127.0.0.1"), ip("10.0.0.12")]
        );
        assert_eq!(publish_addresses(ip("0.0.0.0")), [ip("0.0.0.0")]);
    }
}
