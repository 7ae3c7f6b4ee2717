//! The test harness: a real `berth-server` on a loopback port over a real embedded store in a
//! temporary directory, driven through `berth-client`, with a simulated agent and a simulated
//! router played by the test itself.
//!
//! - [`Server`] starts and stops the server (a restart reuses the data directory).
//! - [`Agent`] registers a node, long-polls its desired instances and heartbeats the statuses a
//!   [`Policy`] chooses — so rollouts are driven deterministically without real processes.
//! - [`Router`] long-polls the routing table, "applies" each new table after a delay and then
//!   acknowledges it, as a real router does.
//! - [`Timeline`] records, in one order, what the agent was told to run and what the router
//!   acknowledged, so ordering properties (drain before stop) can be checked afterwards.

// Each test binary uses a different part of the harness.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::path::Path;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use berth_api::control::{
    DeployRequest, EndpointView, Heartbeat, NodeResources, RegisterRequest, Release, ReleaseStatus,
    RoutingTable,
};
use berth_api::{InstanceSpec, InstanceState, InstanceStatus};
use berth_client::{Client, ClientError};
use berth_server::{Clock, ServerConfig, StartError};
use berth_spec::model::DriverKind;
use berth_store::EmbeddedStore;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// How long any awaited condition may take before the test fails.
pub const DEADLINE: Duration = Duration::from_secs(10);

/// Polls `check` every 25 ms until it returns `Ok`, or fails the test after [`DEADLINE`] with
/// `what` and the last `Err` it returned (what was observed instead).
pub async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let start = clock::now();
    loop {
        match check().await {
            Ok(v) => return v,
            Err(last) => {
                if start.elapsed() > DEADLINE {
                    panic!("timed out after {DEADLINE:?} waiting for {what}; last seen: {last}");
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Milliseconds since the Unix epoch (for `since_ms` in statuses).
fn now_ms() -> u64 {
    clock::unix_ms()
}

/// The tests' clock: the one place in the server's tests that reads the time (`clippy.toml`).
pub mod clock {
    /// Now, on the monotonic clock.
    #[expect(
        clippy::disallowed_methods,
        reason = "the server tests' clock module: the one place that reads the monotonic clock"
    )]
    pub fn now() -> std::time::Instant {
        std::time::Instant::now()
    }

    /// Milliseconds since the Unix epoch (0 before it).
    #[expect(
        clippy::disallowed_methods,
        reason = "the server tests' clock module: the one place that reads the wall clock"
    )]
    pub fn unix_ms() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }
}

/// A running `berth-server` on `127.0.0.1:0`.
pub struct Server {
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    /// A client with the admin token.
    pub admin: Client,
    /// The admin token, as written to `admin.token`.
    pub admin_token: String,
    /// The join token, as written to `join.token`.
    pub join_token: String,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), StartError>>,
}

impl Server {
    /// Starts a server on `dir` (created if needed) and waits until `/v1/health` answers.
    ///
    /// The store file is opened with retries: after [`Server::stop`] the previous server's
    /// store may take a moment to be released by the blocking pool.
    pub async fn start(dir: &Path) -> Server {
        let path = dir.join("state.redb");
        let store = eventually("the store file to open", || {
            let path = path.clone();
            async move { EmbeddedStore::open(path).await.map_err(|e| e.to_string()) }
        })
        .await;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a loopback port");
        let url = format!("http://{}", listener.local_addr().expect("local addr"));
        let (stop, stopped) = oneshot::channel::<()>();
        let config = ServerConfig {
            data_dir: dir.to_path_buf(),
            store: Arc::new(store),
            clock: Clock::system(),
            tls: None,
            secrets_key_file: None,
        };
        let task = tokio::spawn(berth_server::serve(listener, config, async move {
            let _ = stopped.await;
        }));
        let anonymous = Client::new(&url, None).expect("client");
        eventually("the server to answer /v1/health", || {
            let c = anonymous.clone();
            async move { c.health().await.map_err(|e| e.to_string()) }
        })
        .await;
        let read = |name: &str| {
            std::fs::read_to_string(dir.join(name))
                .unwrap_or_else(|e| panic!("read {name}: {e}"))
                .trim()
                .to_string()
        };
        let admin_token = read("admin.token");
        let join_token = read("join.token");
        let admin = Client::new(&url, Some(admin_token.clone())).expect("admin client");
        Server {
            url,
            admin,
            admin_token,
            join_token,
            stop: Some(stop),
            task,
        }
    }

    /// A client for this server with `token` (or none).
    pub fn client(&self, token: Option<&str>) -> Client {
        Client::new(&self.url, token.map(str::to_string)).expect("client")
    }

    /// Resolves the shutdown future and waits for `serve` to return `Ok` (long-polls in flight
    /// finish first, so this takes up to a poll's wait).
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let result = tokio::time::timeout(DEADLINE, &mut self.task)
            .await
            .expect("the server stops within the deadline")
            .expect("the server task does not panic");
        result.expect("serve returns Ok after a graceful shutdown");
    }
}

/// A deploy request for `source` (named `stack.yaml`) in `env`.
pub fn deploy_request(source: &str, env: &str) -> DeployRequest {
    DeployRequest {
        file: "stack.yaml".to_string(),
        source: source.to_string(),
        env: env.to_string(),
        set: vec![],
        confirm: None,
        plan_id: None,
        dry_run: false,
        force: false,
    }
}

/// A stack `name` with one routed 3-replica process service `web` in environment `staging`,
/// rolled with max_surge 1 / max_unavailable 0. `version` lands in `env.VERSION`, so each
/// version is a different release; `progress_deadline` is the rollout's.
pub fn web_stack(name: &str, version: u32, progress_deadline: &str) -> String {
    stack_with(name, version, progress_deadline, 10)
}

/// [`web_stack`] keeping `history` releases.
pub fn stack_with(name: &str, version: u32, progress_deadline: &str, history: u32) -> String {
    format!(
        r#"stack: {name}
history: {history}
environments:
  staging:
    regions: [local]
services:
  web:
    process: {{command: [sleep, "1000"]}}
    env: {{ VERSION: "{version}" }}
    ports: {{ http: 0 }}
    replicas: 3
    health: {{ http: /healthz, port: http, interval: 1s, timeout: 1s, healthy: 1, unhealthy: 3 }}
    route: {{ host: {name}.local, path: /, port: http }}
    rollout: {{ strategy: rolling, max_surge: 1, max_unavailable: 0, progress_deadline: {progress_deadline} }}
"#
    )
}

/// Deploys `source` to `staging` and returns the new release number.
pub async fn deploy(server: &Server, source: &str) -> u64 {
    let resp = server
        .admin
        .deploy(&deploy_request(source, "staging"))
        .await
        .unwrap_or_else(|e| panic!("deploy: {e}"));
    resp.release.expect("the deploy created a release")
}

/// Release `number` of `stack` in `staging`, if retained.
pub async fn release(server: &Server, stack: &str, number: u64) -> Option<Release> {
    match server.admin.releases(stack, "staging").await {
        Ok(all) => all.into_iter().find(|r| r.number == number),
        Err(ClientError::NotFound { .. }) => None,
        Err(e) => panic!("history: {e}"),
    }
}

/// Waits until release `number` of `stack` in `staging` has `status`, and returns it.
pub async fn wait_release(
    server: &Server,
    stack: &str,
    number: u64,
    status: ReleaseStatus,
) -> Release {
    eventually(
        &format!("release {number} of {stack} to be {status:?}"),
        || async {
            match release(server, stack, number).await {
                Some(r) if r.status == status => Ok(r),
                other => Err(format!(
                    "{:?}; status: {:?}",
                    other.map(|r| (r.status, r.reason)),
                    server.admin.status(Some(stack)).await.map(|s| s
                        .stacks
                        .into_iter()
                        .map(|s| s.rollout)
                        .collect::<Vec<_>>())
                )),
            }
        },
    )
    .await
}

/// What the simulated agent reports for an instance, given its spec and how long ago the agent
/// first saw it: the state and the restart count.
pub type Policy = Arc<dyn Fn(&InstanceSpec, Duration) -> (InstanceState, u32) + Send + Sync>;

/// Every instance healthy at once.
pub fn all_healthy() -> Policy {
    Arc::new(|_, _| (InstanceState::Healthy, 0))
}

/// Instances of `release` get `bad`; every other instance is healthy.
pub fn release_reports(release: u64, bad: (InstanceState, u32)) -> Policy {
    Arc::new(move |spec, _| {
        if spec.release == release {
            bad
        } else {
            (InstanceState::Healthy, 0)
        }
    })
}

/// Every instance is `starting` for `delay` after the agent first sees it, then healthy —
/// so a rollout has to wait for new instances, as with real processes.
pub fn healthy_after(delay: Duration) -> Policy {
    Arc::new(move |_, age| {
        if age >= delay {
            (InstanceState::Healthy, 0)
        } else {
            (InstanceState::Starting, 0)
        }
    })
}

/// One thing that happened, in the order the simulated agent and router saw it.
#[derive(Debug, Clone)]
pub enum Entry {
    /// The agent got its desired list: every instance (id, release), and how many of them it
    /// had already reported healthy to the server at that moment.
    Desired {
        instances: Vec<(String, u64)>,
        reported_healthy: usize,
    },
    /// The router is about to acknowledge (send back) a table holding these instances.
    RouterAck { instances: BTreeSet<String> },
    /// The router received a table with these endpoints.
    RouterTable { endpoints: Vec<EndpointView> },
}

/// An append-only, shared log of [`Entry`]s; its order is the order things happened in.
#[derive(Clone, Default)]
pub struct Timeline(Arc<Mutex<Vec<Entry>>>);

impl Timeline {
    /// Appends one entry.
    pub fn push(&self, e: Entry) {
        self.0.lock().unwrap().push(e);
    }

    /// How many entries so far (a mark to look from later).
    pub fn len(&self) -> usize {
        self.0.lock().unwrap().len()
    }

    /// Every entry from index `from` on.
    pub fn since(&self, from: usize) -> Vec<Entry> {
        self.0.lock().unwrap()[from..].to_vec()
    }
}

/// The agent's memory, shared by its poller and heartbeat tasks and kept across restarts.
struct AgentState {
    policy: Mutex<Policy>,
    /// The latest desired list.
    desired: Mutex<Vec<InstanceSpec>>,
    /// When each instance was first seen.
    first_seen: Mutex<HashMap<String, Instant>>,
    /// The port given to each instance (for its single named port).
    ports: Mutex<HashMap<String, u16>>,
    /// The state last accepted by the server for each instance.
    reported: Mutex<HashMap<String, InstanceState>>,
    /// Each instance's current state and since when (so an unchanged status is repeated
    /// byte for byte, as a real agent's is).
    since: Mutex<HashMap<String, (InstanceState, u64)>>,
    timeline: Timeline,
}

/// Ports handed to simulated instances; unique within the test process.
static NEXT_PORT: AtomicU16 = AtomicU16::new(20_000);

/// A simulated agent: one node, driven by a [`Policy`].
pub struct Agent {
    /// The node's name.
    pub name: String,
    /// The node token the server issued.
    pub token: String,
    state: Arc<AgentState>,
    tasks: Vec<JoinHandle<()>>,
}

impl Agent {
    /// Registers node `name` with the join token and starts polling and heartbeating.
    pub async fn join(server: &Server, name: &str, policy: Policy, timeline: Timeline) -> Agent {
        Agent::join_as(server, register_request(name), policy, timeline).await
    }

    /// [`Agent::join`] with a registration of the test's own (other drivers, labels).
    pub async fn join_as(
        server: &Server,
        request: RegisterRequest,
        policy: Policy,
        timeline: Timeline,
    ) -> Agent {
        let name = request.name.as_str();
        let joining = server.client(Some(&server.join_token));
        let token = joining
            .register(&request)
            .await
            .unwrap_or_else(|e| panic!("register {name}: {e}"))
            .node_token;
        let state = Arc::new(AgentState {
            policy: Mutex::new(policy),
            desired: Mutex::new(vec![]),
            first_seen: Mutex::new(HashMap::new()),
            ports: Mutex::new(HashMap::new()),
            reported: Mutex::new(HashMap::new()),
            since: Mutex::new(HashMap::new()),
            timeline,
        });
        let mut agent = Agent {
            name: name.to_string(),
            token,
            state,
            tasks: vec![],
        };
        agent.connect(server);
        agent
    }

    /// (Re)starts the agent's tasks against `server` (after a server restart), keeping its
    /// node token and everything it knows about its instances.
    pub fn connect(&mut self, server: &Server) {
        self.disconnect();
        let client = server.client(Some(&self.token));
        self.tasks.push(tokio::spawn(poll_desired(
            client.clone(),
            self.name.clone(),
            self.state.clone(),
        )));
        self.tasks.push(tokio::spawn(heartbeat(
            client,
            self.name.clone(),
            self.state.clone(),
        )));
    }

    /// Stops the agent's tasks (the node goes quiet, as if the agent were cut off).
    pub fn disconnect(&mut self) {
        for t in self.tasks.drain(..) {
            t.abort();
        }
    }

    /// Replaces what the agent reports from now on.
    pub fn set_policy(&self, policy: Policy) {
        *self.state.policy.lock().unwrap() = policy;
    }

    /// The latest desired list.
    pub fn desired(&self) -> Vec<InstanceSpec> {
        self.state.desired.lock().unwrap().clone()
    }

    /// The state the server last accepted for `id`.
    pub fn reported(&self, id: &str) -> Option<InstanceState> {
        self.state.reported.lock().unwrap().get(id).copied()
    }

    /// The port the agent gave instance `id`.
    pub fn port(&self, id: &str) -> Option<u16> {
        self.state.ports.lock().unwrap().get(id).copied()
    }

    /// Waits until the desired list has exactly `n` instances, all of `release` and all
    /// reported healthy; returns their ids, sorted.
    pub async fn wait_running(&self, release: u64, n: usize) -> Vec<String> {
        eventually(
            &format!(
                "{n} healthy instances of release {release} on {}",
                self.name
            ),
            || async {
                let desired = self.desired();
                let ok = desired.len() == n
                    && desired.iter().all(|i| {
                        i.release == release && self.reported(&i.id) == Some(InstanceState::Healthy)
                    });
                let mut ids: Vec<String> = desired.iter().map(|i| i.id.clone()).collect();
                ids.sort();
                if ok {
                    Ok(ids)
                } else {
                    Err(format!(
                        "{:?}",
                        desired
                            .iter()
                            .map(|i| (i.id.clone(), i.release, self.reported(&i.id)))
                            .collect::<Vec<_>>()
                    ))
                }
            },
        )
        .await
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.disconnect();
    }
}

/// A node registration for a process-driver node on loopback.
pub fn register_request(name: &str) -> RegisterRequest {
    RegisterRequest {
        name: name.to_string(),
        labels: BTreeMap::new(),
        resources: NodeResources {
            cpu_millis: 8_000,
            memory_bytes: 16 << 30,
        },
        drivers: vec![DriverKind::Process],
        address: "127.0.0.1".to_string(),
        router: None,
        keep_labels: false,
    }
}

/// The agent's long-poll loop: records every desired list it is given.
async fn poll_desired(client: Client, name: String, state: Arc<AgentState>) {
    let mut version: Option<String> = None;
    loop {
        match client
            .desired(&name, version.as_deref(), Duration::from_secs(1))
            .await
        {
            Ok(d) => {
                {
                    let mut seen = state.first_seen.lock().unwrap();
                    let mut ports = state.ports.lock().unwrap();
                    for i in &d.instances {
                        seen.entry(i.id.clone()).or_insert_with(clock::now);
                        ports
                            .entry(i.id.clone())
                            .or_insert_with(|| NEXT_PORT.fetch_add(1, Ordering::Relaxed));
                    }
                }
                let reported_healthy = {
                    let reported = state.reported.lock().unwrap();
                    d.instances
                        .iter()
                        .filter(|i| reported.get(&i.id) == Some(&InstanceState::Healthy))
                        .count()
                };
                state.timeline.push(Entry::Desired {
                    instances: d
                        .instances
                        .iter()
                        .map(|i| (i.id.clone(), i.release))
                        .collect(),
                    reported_healthy,
                });
                *state.desired.lock().unwrap() = d.instances;
                version = Some(d.version);
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// The agent's heartbeat loop: every 50 ms, the policy's statuses for the current desired list.
async fn heartbeat(client: Client, name: String, state: Arc<AgentState>) {
    loop {
        let desired = state.desired.lock().unwrap().clone();
        let policy = state.policy.lock().unwrap().clone();
        let statuses: Vec<InstanceStatus> = desired
            .iter()
            .map(|i| {
                let age = state
                    .first_seen
                    .lock()
                    .unwrap()
                    .get(&i.id)
                    .map(|t| t.elapsed())
                    .unwrap_or_default();
                let (st, restarts) = policy(i, age);
                let port = state.ports.lock().unwrap().get(&i.id).copied().unwrap_or(0);
                let since_ms = {
                    let mut since = state.since.lock().unwrap();
                    let entry = since.entry(i.id.clone()).or_insert((st, now_ms()));
                    if entry.0 != st {
                        *entry = (st, now_ms());
                    }
                    entry.1
                };
                InstanceStatus {
                    id: i.id.clone(),
                    state: st,
                    pid: None,
                    ports: i.spec.ports.keys().map(|k| (k.clone(), port)).collect(),
                    restarts,
                    message: (st != InstanceState::Healthy).then(|| format!("simulated {st:?}")),
                    since_ms,
                    image_id: None,
                }
            })
            .collect();
        if client
            .heartbeat(
                &name,
                &Heartbeat {
                    statuses: statuses.clone(),
                    last_gc: None,
                },
            )
            .await
            .is_ok()
        {
            let mut reported = state.reported.lock().unwrap();
            for s in statuses {
                reported.insert(s.id, s.state);
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A simulated router with a stable id: long-polls the routing table and acknowledges each
/// new table only after "applying" it for `apply_delay`, recording both in the [`Timeline`].
pub struct Router {
    task: JoinHandle<()>,
    latest: Arc<Mutex<Option<RoutingTable>>>,
}

impl Router {
    /// Starts router `id` against `server` with a node (or admin) `token`.
    pub fn start(
        server: &Server,
        id: &str,
        token: &str,
        apply_delay: Duration,
        timeline: Timeline,
    ) -> Router {
        let client = server.client(Some(token));
        let id = id.to_string();
        let latest = Arc::new(Mutex::new(None));
        let seen = latest.clone();
        let task = tokio::spawn(async move {
            let mut applied: Option<RoutingTable> = None;
            loop {
                if let Some(t) = &applied {
                    timeline.push(Entry::RouterAck {
                        instances: table_instances(t),
                    });
                }
                let version = applied.as_ref().map(|t| t.version.clone());
                match client
                    .routes(Some(&id), version.as_deref(), Duration::from_secs(1))
                    .await
                {
                    Ok(table) => {
                        timeline.push(Entry::RouterTable {
                            endpoints: table
                                .routes
                                .iter()
                                .flat_map(|r| r.endpoints.clone())
                                .collect(),
                        });
                        *seen.lock().unwrap() = Some(table.clone());
                        if version.as_deref() != Some(table.version.as_str()) {
                            tokio::time::sleep(apply_delay).await;
                            applied = Some(table);
                        }
                    }
                    Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }
        });
        Router { task, latest }
    }

    /// The last table received.
    pub fn latest(&self) -> Option<RoutingTable> {
        self.latest.lock().unwrap().clone()
    }
}

impl Drop for Router {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Every instance a table routes to.
pub fn table_instances(t: &RoutingTable) -> BTreeSet<String> {
    t.routes
        .iter()
        .flat_map(|r| r.endpoints.iter().map(|e| e.instance.clone()))
        .collect()
}
