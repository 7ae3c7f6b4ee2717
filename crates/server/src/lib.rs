//! # berth-server — the control plane
//!
//! A shell around the pure cores: it keeps state in a [`berth_store::Store`], answers the `/v1`
//! JSON API, and runs the controllers that turn releases into instances on nodes.
//!
//! ## Layout
//! - [`auth`]      — admin, join and node tokens (files on disk, hashes in memory).
//! - [`users`]     — users, roles and their tokens (hashes in the store).
//! - [`policy`]    — the one table of route → capability and scope, enforced before handlers.
//! - [`audit`]     — the hash-chained audit log in the store.
//! - [`pki`]       — the cluster CA, the API's certificate, the join token's CA fingerprint.
//! - [`keys`]      — the store's key layout.
//! - [`state`]     — the records kept in the store and a snapshot of them.
//! - [`view`]      — the cluster view: every record at one revision, built by list-then-watch.
//! - [`live`]      — the view kept current from the store's watch, shared by every reader.
//! - [`http`]      — the API handlers, one module per area: parse, call, answer.
//! - [`releases`]  — deploy, plan, retention, history and rollback rules (service functions).
//! - [`secrets`]   — secret names, values and versions (service functions).
//! - [`seal`]      — secret values sealed at rest: the key file, the data keys, the AEAD.
//! - [`pins`]      — image ids agents report, pinned in their own keys (first report wins).
//! - [`placement`] — the scheduler's snapshot from the store; placement checks for plans.
//! - [`controllers`] — one controller per concern (rollout, replicas, drain, liveness), each a
//!   pure function of the view returning effects, and the shell that applies them. A new
//!   controller goes there.
//! - [`leadership`] — whether this server runs the controllers, and the fence their writes carry.
//! - [`rollouts`]  — old paths of the rollout controller's items, re-exported.
//! - [`routing`]   — the routing table, built from the view once per change and cached.
//! - [`routers`]   — what each router has applied; when an instance is released by all.
//! - [`traffic`]   — the routers' per-arm traffic reports in memory, and the window sums a
//!   canary analysis reads (`shared.traffic.window(stack, service, release, since, now)`).
//! - [`liveness`]  — node liveness in memory: last calls, `node_is_up`, down marks.
//! - [`version`]   — content versions (a short hash of a value's JSON).
//! - [`table`]     — old paths of the routing, routers and liveness items, re-exported.
//! - [`clock`]     — time as an injected value, so controllers can be driven in tests.
//!
//! ## Flow
//! `deploy` stores release N and a rollout record. The controllers, woken by a kick and by a
//! tick while this server leads, read the cluster view, ask `berth-rollout` (strategy, waves)
//! and `berth-scheduler` (one call per rollout and region) what to do, and their shell writes
//! the resulting effects — instance records, rollout and release status — in one transaction. Agents long-poll their node's instances and report statuses in
//! heartbeats; routers long-poll the routing table, which tells the server what they have applied.

#![forbid(unsafe_code)]

pub mod approvals;
pub mod audit;
pub mod auth;
pub mod clock;
pub mod controllers;
mod error;
/// Test support for the fuzz crate and `tests/fuzz_corpus.rs`, outside the normal build.
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
pub mod http;
pub mod keys;
pub mod leadership;
pub mod listen;
pub mod live;
pub mod liveness;
pub mod pins;
pub mod pki;
pub mod placement;
pub mod policy;
pub mod releases;
pub mod rollouts;
pub mod routers;
pub mod routing;
pub mod seal;
pub mod secrets;
pub mod servers;
pub mod state;
pub mod table;
pub mod traffic;
pub mod users;
pub mod version;
pub mod view;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use berth_store::Store;
use tokio::sync::{watch, Notify};

pub use clock::Clock;
pub use error::ApiError;

/// How a server is started: where its files are and which store it uses.
pub struct ServerConfig {
    /// Holds `admin.token`, `join.token` and (for the embedded store) `state.redb`.
    pub data_dir: PathBuf,
    pub store: Arc<dyn Store>,
    pub clock: Clock,
    /// When set, the API speaks only TLS with this configuration (see [`listen::serve_api`]);
    /// [`pki::server_tls`] makes it from the cluster CA.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// The key-encryption key of the secrets sealed in the store (`--secrets-key-file`);
    /// `None`: `DATA_DIR/secrets.key`, created on the first start (see [`seal`]).
    pub secrets_key_file: Option<PathBuf>,
}

/// What every handler and controller shares.
pub struct Shared {
    pub store: Arc<dyn Store>,
    /// Whether this server runs the controllers, and the fence their writes carry (see
    /// [`leadership`]; the embedded store always leads).
    pub leadership: Arc<dyn leadership::Leadership>,
    /// The cluster view, kept current from the store by [`live::LiveView::follow`]: what
    /// handlers, long-polls and controllers read instead of scanning the store.
    pub view: live::LiveView,
    pub admin: auth::TokenHash,
    pub join: auth::TokenHash,
    /// The cluster's admin and join token hashes when they differ from this server's own
    /// (a replica that is not the first on its store; see [`auth::cluster_token`]).
    pub cluster_admin: Option<auth::TokenHash>,
    pub cluster_join: Option<auth::TokenHash>,
    /// This server as `berth servers` shows it, set once its API address is known.
    pub me: std::sync::OnceLock<servers::ServerRecord>,
    /// Seals and opens secret values (see [`seal`]).
    pub keyring: seal::Keyring,
    pub clock: Clock,
    /// Wakes the controller early (a deploy, a heartbeat with news).
    pub kick: Notify,
    /// Node name → last heartbeat (ms). In memory: liveness is not worth an fsync per second.
    pub heartbeats: Mutex<HashMap<String, u64>>,
    /// When this server started (ms): a node not heard from since gets one TTL to call in
    /// before it counts as down (see [`liveness::node_is_up`]).
    pub started_ms: u64,
    /// What each router has applied: router id → (table version, when, instances in it),
    /// bounded and expiring (see [`routers::RouterAcks`]).
    pub router_acks: Mutex<routers::RouterAcks>,
    /// Node tokens known to be valid: token hash hex → node name (loaded at start, then
    /// filled as tokens are checked against the store).
    pub node_tokens: Mutex<HashMap<String, String>>,
    /// Failed authentications per source, for logging and throttling (see [`auth`]).
    pub auth_failures: Mutex<auth::FailureLimiter>,
    /// Nodes whose "down since" mark is in the store (`/node-seen/NAME`, see
    /// [`controllers::liveness`]), so a restarted server does not take them for up.
    pub marked_down: Mutex<std::collections::HashSet<String>>,
    /// Orders writes and deletes of those marks against node removals.
    pub liveness_marks: tokio::sync::Mutex<()>,
    /// Wakes the liveness controller early (a node marked down called in).
    pub liveness_kick: Notify,
    /// The instances in each recently served routing table, by version, so an acknowledgement
    /// of version V says which instances that router still routes to.
    pub tables: Mutex<routing::RecentTables>,
    /// The routing table built at the view's last routing change, served to every router.
    pub routing: routing::TableCache,
    /// Each node's last garbage-collection report, from its heartbeats (in memory, like
    /// liveness: it is for people and for `berth gc` to wait on).
    pub gc_reports: Mutex<HashMap<String, berth_api::control::GcReport>>,
    /// What the routers reported of their traffic, per arm (in memory, bounded; see
    /// [`traffic`]): what canary analyses sum with `traffic.window(…)`.
    pub traffic: traffic::Traffic,
    /// The audit log's retention and failed-authentication budget (see [`audit`]).
    pub audit: audit::AuditLog,
}

/// Errors that stop the server from starting.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Token(#[from] auth::TokenError),
    #[error("cannot create the data directory {path}: {source}")]
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] berth_store::StoreError),
    #[error("cannot read the cluster state: {0}")]
    State(state::StateError),
    #[error(transparent)]
    Secrets(#[from] seal::SealError),
    #[error("cannot seal the secrets an older berth stored in the clear: {0}")]
    Migrate(secrets::SecretError),
    #[error("the API server failed: {0}")]
    Serve(std::io::Error),
}

impl Shared {
    /// Loads (or creates) the tokens and prepares the shared state, always leading (the
    /// embedded store: one server).
    pub async fn new(config: ServerConfig) -> Result<Arc<Shared>, StartError> {
        Shared::with_leadership(config, Arc::new(leadership::SoleLeader::new())).await
    }

    /// [`Shared::new`] with the controllers run only while `leadership` leads (several
    /// servers on etcd: [`leadership::EtcdLeadership`]).
    pub async fn with_leadership(
        config: ServerConfig,
        leadership: Arc<dyn leadership::Leadership>,
    ) -> Result<Arc<Shared>, StartError> {
        std::fs::create_dir_all(&config.data_dir).map_err(|source| StartError::DataDir {
            path: config.data_dir.clone(),
            source,
        })?;
        let admin = auth::load_or_create(&config.data_dir, "admin.token")?;
        // Either form (`berth1-CA-SECRET` or `SECRET`): only the secret is checked.
        let join = pki::join_secret(&config.data_dir)?;
        // Before anything reads a value: a wrong key stops the start here, and what an older
        // berth stored in the clear (or a rotation a crash interrupted) is sealed first.
        let keyring = seal::Keyring::open(
            config.store.as_ref(),
            &config.data_dir,
            config.secrets_key_file.as_deref(),
            config.clock.now_ms(),
        )
        .await?;
        let sealed = secrets::seal_plaintext(config.store.as_ref(), &keyring)
            .await
            .map_err(StartError::Migrate)?;
        if sealed > 0 {
            tracing::info!(
                records = sealed,
                "sealed secret values under the current data key"
            );
        }
        let view = view::View::load(config.store.as_ref())
            .await
            .map_err(StartError::State)?;
        let (admin_hash, join_hash) = (auth::TokenHash::of(&admin), auth::TokenHash::of(&join));
        // Not fatal: a store that refuses writes now (a full disk) must not keep the server
        // from starting; this server's own tokens work, and the next start records them.
        let mut cluster = Vec::new();
        for (name, local) in [("admin", &admin_hash), ("join", &join_hash)] {
            cluster.push(
                match auth::cluster_token(config.store.as_ref(), name, local).await {
                    Ok(h) => h,
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot record or read the cluster's {name} token; only this server's own works here");
                        None
                    }
                },
            );
        }
        let cluster_join = cluster.pop().flatten();
        let cluster_admin = cluster.pop().flatten();
        let started_ms = config.clock.now_ms();
        let known = liveness::Known::load(config.store.as_ref()).await?;
        Ok(Arc::new(Shared {
            store: config.store,
            leadership,
            view: live::LiveView::new(view),
            admin: admin_hash,
            join: join_hash,
            cluster_admin,
            cluster_join,
            me: std::sync::OnceLock::new(),
            keyring,
            clock: config.clock,
            kick: Notify::new(),
            heartbeats: Mutex::new(known.last_seen),
            started_ms,
            router_acks: Mutex::new(routers::RouterAcks::default()),
            node_tokens: Mutex::new(known.node_tokens),
            auth_failures: Mutex::new(auth::FailureLimiter::default()),
            marked_down: Mutex::new(known.marked_down),
            liveness_marks: tokio::sync::Mutex::new(()),
            liveness_kick: Notify::new(),
            tables: Mutex::new(routing::RecentTables::default()),
            routing: routing::TableCache::default(),
            gc_reports: Mutex::new(HashMap::new()),
            traffic: traffic::Traffic::new(started_ms),
            audit: audit::AuditLog::default(),
        }))
    }
}

/// Runs the API on `listener` and the controllers until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    config: ServerConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), StartError> {
    let tls = config.tls.clone();
    let shared = Shared::new(config).await?;
    serve_shared(listener, shared, tls, shutdown).await
}

/// [`serve`] for a [`Shared`] made beforehand with [`Shared::new`]: so a command line can
/// report a start-up error (a wrong secrets key) before it says the server is up.
pub async fn serve_shared(
    listener: tokio::net::TcpListener,
    shared: Arc<Shared>,
    tls: Option<Arc<rustls::ServerConfig>>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), StartError> {
    let (stop_tx, stop_rx) = watch::channel(false);
    let follower = {
        let (shared, stop) = (shared.clone(), stop_rx.clone());
        tokio::spawn(async move { shared.view.follow(shared.store.as_ref(), stop).await })
    };
    let controller = tokio::spawn(controllers::run_controller(shared.clone(), stop_rx.clone()));
    let liveness = tokio::spawn(controllers::liveness::run(shared.clone(), stop_rx.clone()));
    let app = http::router(shared.clone());
    let result = listen::serve_api(listener, app, tls, async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    })
    .await
    .map_err(StartError::Serve);
    let _ = follower.await;
    let _ = controller.await;
    let _ = liveness.await;
    result
}
