//! A simulated agent: it registers with the join token, long-polls its node's desired
//! instances, reports every one `healthy` at once (with a port, so routes get endpoints), and
//! heartbeats on every change and at least every second, as `berth agent` does
//! (crates/agent/src/node.rs), over the same client and API. It runs nothing.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use berth_api::control::{Heartbeat, NodeResources, RegisterRequest};
use berth_api::{InstanceSpec, InstanceState, InstanceStatus};
use berth_client::{Client, ServerTrust};
use berth_spec::model::DriverKind;
use tokio::sync::{watch, Semaphore};

use super::change::Change;
use super::clock;
use super::tally::{Errors, Latencies};

/// How often a real agent heartbeats when nothing changes (`berth agent`'s interval).
pub const HEARTBEAT_EVERY: Duration = Duration::from_millis(1000);
/// How long one desired-instances long-poll waits (as `berth agent`).
const POLL_WAIT: Duration = Duration::from_secs(20);
/// What every simulated node offers: far more than its share of the tiny instances.
const RESOURCES: NodeResources = NodeResources {
    cpu_millis: 64_000,
    memory_bytes: 256 << 30,
};

/// What all simulated agents share with the run.
#[derive(Debug, Default)]
pub struct Fleet {
    /// Agents whose first heartbeat was accepted.
    pub joined: AtomicUsize,
    /// Instances reported healthy in an accepted heartbeat (each counted once, by its node).
    pub reported: AtomicUsize,
    pub heartbeats: Latencies,
    pub errors: Errors,
    /// The next port to report (only a number in the table; nothing listens on it).
    next_port: AtomicU16,
}

impl Fleet {
    fn port(&self) -> u16 {
        10_000 + self.next_port.fetch_add(1, Ordering::Relaxed) % 50_000
    }
}

/// How a simulated agent reaches the server.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub name: String,
    pub server: String,
    pub join_token: String,
    /// The join token's CA fingerprint, as `berth agent` trusts a TLS server on first contact.
    pub trust: Option<ServerTrust>,
}

/// A running simulated agent.
pub struct Agent {
    pub name: String,
    /// When it last sent anything to the server (each call proves it alive).
    pub last_contact: Arc<Mutex<Option<Instant>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Agent {
    /// Stops it at once, as a node that loses power: its connections close, nothing is sent.
    pub fn kill(&self) {
        self.task.abort();
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts an agent; `joining` bounds how many register at once (a fleet does not boot in one
/// millisecond, and ten thousand TLS handshakes at once only measure the accept queue).
pub fn spawn(
    config: AgentConfig,
    fleet: Arc<Fleet>,
    change: Arc<Change>,
    joining: Arc<Semaphore>,
) -> Agent {
    let last_contact = Arc::new(Mutex::new(None));
    let name = config.name.clone();
    let contact = last_contact.clone();
    let task = tokio::spawn(async move {
        let Some(client) = register(&config, &fleet, &joining, &contact).await else {
            return;
        };
        let (tx, rx) = watch::channel(BTreeMap::new());
        tokio::join!(
            follow(&config.name, client.clone(), &fleet, &contact, tx),
            report(&config.name, client, &fleet, &change, &contact, rx),
        );
    });
    Agent {
        name,
        last_contact,
        task,
    }
}

fn touch(contact: &Mutex<Option<Instant>>) -> Instant {
    let now = clock::now();
    if let Ok(mut c) = contact.lock() {
        *c = Some(now);
    }
    now
}

/// Registers with the join token until it works; the client with the node token.
async fn register(
    config: &AgentConfig,
    fleet: &Fleet,
    joining: &Semaphore,
    contact: &Mutex<Option<Instant>>,
) -> Option<Client> {
    let anonymous = match Client::with_trust(&config.server, None, config.trust.clone()) {
        Ok(c) => c,
        Err(e) => {
            fleet.errors.note("client", &e);
            return None;
        }
    };
    let req = RegisterRequest {
        name: config.name.clone(),
        labels: BTreeMap::new(),
        resources: RESOURCES,
        drivers: vec![DriverKind::Process],
        address: "127.0.0.1".to_string(),
        router: None,
        keep_labels: false,
    };
    let mut backoff = Duration::from_millis(100);
    loop {
        let result = {
            let _permit = joining.acquire().await.ok()?;
            touch(contact);
            match anonymous.with_token(Some(config.join_token.clone())) {
                Ok(joining) => joining.register(&req).await,
                Err(e) => Err(e),
            }
        };
        match result.and_then(|r| anonymous.with_token(Some(r.node_token))) {
            Ok(client) => return Some(client),
            Err(e) => fleet.errors.note("register", &e),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

/// An instance's status as a healthy workload would have it.
fn healthy(spec: &InstanceSpec, fleet: &Fleet) -> InstanceStatus {
    InstanceStatus {
        id: spec.id.clone(),
        state: InstanceState::Healthy,
        pid: None,
        ports: spec
            .spec
            .ports
            .keys()
            .map(|name| (name.clone(), fleet.port()))
            .collect(),
        restarts: 0,
        message: None,
        since_ms: clock::unix_ms(),
        image_id: None,
    }
}

/// What the agent runs: instance → (its release, its status).
type Running = BTreeMap<String, (u64, InstanceStatus)>;

/// Long-polls the desired instances; each new set becomes what the node "runs".
async fn follow(
    name: &str,
    client: Client,
    fleet: &Fleet,
    contact: &Mutex<Option<Instant>>,
    running: watch::Sender<Running>,
) {
    let mut version: Option<String> = None;
    let mut backoff = Duration::from_millis(100);
    loop {
        let wait = if version.is_some() {
            POLL_WAIT
        } else {
            Duration::ZERO
        };
        touch(contact);
        match client.desired(name, version.as_deref(), wait).await {
            Ok(desired) => {
                backoff = Duration::from_millis(100);
                if version.as_deref() == Some(desired.version.as_str()) {
                    continue;
                }
                let before = running.borrow().clone();
                let now: Running = desired
                    .instances
                    .iter()
                    .map(|spec| {
                        let status = before
                            .get(&spec.id)
                            .cloned()
                            .unwrap_or_else(|| (spec.release, healthy(spec, fleet)));
                        (spec.id.clone(), status)
                    })
                    .collect();
                running.send_replace(now);
                version = Some(desired.version);
            }
            Err(e) => {
                fleet.errors.note("desired", &e);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// Heartbeats with every status on each change and at least every second.
async fn report(
    name: &str,
    client: Client,
    fleet: &Fleet,
    change: &Change,
    contact: &Mutex<Option<Instant>>,
    mut running: watch::Receiver<Running>,
) {
    let mut reported: HashSet<String> = HashSet::new();
    let mut joined = false;
    loop {
        let now = running.borrow_and_update().clone();
        let beat = Heartbeat {
            statuses: now.values().map(|(_, s)| s.clone()).collect(),
            last_gc: None,
        };
        let sent = touch(contact);
        if let Some(release) = change.watched() {
            change.reporting(
                now.iter()
                    .filter(|(_, (r, _))| *r == release)
                    .map(|(id, _)| id.as_str()),
                sent,
            );
        }
        match client.heartbeat(name, &beat).await {
            Ok(()) => {
                fleet
                    .heartbeats
                    .add(clock::now().saturating_duration_since(sent));
                if !joined {
                    joined = true;
                    fleet.joined.fetch_add(1, Ordering::SeqCst);
                }
                for id in now.keys() {
                    if reported.insert(id.clone()) {
                        fleet.reported.fetch_add(1, Ordering::SeqCst);
                    }
                }
            }
            Err(e) => fleet.errors.note("heartbeat", &e),
        }
        tokio::select! {
            _ = running.changed() => {}
            _ = tokio::time::sleep(HEARTBEAT_EVERY) => {}
        }
    }
}
