//! `berth bench control-plane`: the control plane at scale (issue 11). A real `berth server`
//! (a child process, embedded store, loopback, TLS by default), N simulated agents and R
//! simulated routers speaking its real HTTP(S) API, and one line per figure.
//!
//! The run, each step bounded by `--timeout` in all:
//! 1. the server starts; the routers start polling; the N agents join (register, heartbeat);
//! 2. a stack of M instances is deployed; timed until the agents' heartbeats reported all M
//!    healthy (then checked in `GET /v1/status`, and its release must go live);
//! 3. `web`'s release changes; timed per router and new instance until its table holds it;
//! 4. one agent stops dead; timed until `GET /v1/nodes` says `down` (the TTL is 3 s);
//! 5. the heartbeat round trips seen since step 2, and the server's CPU seconds and peak RSS.
//!
//! ## Layout
//! - `server.rs` — the `berth server` child, its tokens, its kill-on-drop guard.
//! - `agent.rs`  — a simulated agent; `router.rs` — a simulated router.
//! - `change.rs` — what the measured change is and when each router saw it.
//! - `figures.rs`— percentiles and the output lines; `proc.rs` — CPU and RSS from `/proc`.
//! - `stack.rs`  — the stack file; `limits.rs` — the open-files limit it needs.
//! - `tally.rs`  — shared counters; `clock.rs` — the one clock reading.

mod agent;
mod change;
mod clock;
mod figures;
mod limits;
mod proc;
mod router;
mod server;
mod stack;
mod tally;

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use berth_api::control::{DeployRequest, NodeState, ReleaseStatus};
use berth_api::join::JoinToken;
use berth_client::{Client, ServerTrust};
use tokio::sync::Semaphore;

use change::Change;
use figures::Spread;
use server::ServerChild;
use tally::Errors;

/// The server's node liveness TTL (3 s, the figure the node-loss line is held against; written
/// here rather than read from the server's internals, which are being reorganised).
const NODE_TTL: Duration = Duration::from_secs(3);
/// How many agents register at once.
const JOINING_AT_ONCE: usize = 64;
/// How often a condition is looked at again.
const POLL: Duration = Duration::from_millis(20);
/// How often the API is asked again while waiting on it (each call is work for the server).
const API_POLL: Duration = Duration::from_millis(200);
/// The most simulated nodes: each holds two connections, and the server holds at most
/// `berth_net::conn_limit::MAX_CONNECTIONS` (32,768).
const MAX_NODES: usize = 16_000;
/// The most simulated routers: the server remembers the acknowledgements of at most 256 admin
/// routers (its `MAX_ADMIN_ROUTERS`), and forgets the oldest beyond.
const MAX_ROUTERS: usize = 256;

/// TLS for the benchmark's server.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApiTls {
    /// What a cluster with remote agents runs: agents trust the CA by the join token's
    /// fingerprint, as `berth agent` does.
    On,
    /// Plain HTTP (the default of a server on loopback).
    Off,
}

/// `berth bench control-plane`'s arguments.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Simulated nodes (agents).
    #[arg(long, default_value_t = 10_000)]
    nodes: usize,
    /// Instances in all, over the stack's services.
    #[arg(long, default_value_t = 100_000)]
    instances: usize,
    /// Simulated routers.
    #[arg(long, default_value_t = 100)]
    routers: usize,
    /// Give up (exit 1, saying where it stood) when the run has not converged after this many
    /// seconds in all.
    #[arg(long, default_value_t = 1_800)]
    timeout: u64,
    /// TLS for the server's API.
    #[arg(long, value_enum, default_value_t = ApiTls::On)]
    api_tls: ApiTls,
}

impl Args {
    fn check(&self) -> anyhow::Result<()> {
        if !(1..=MAX_NODES).contains(&self.nodes) {
            anyhow::bail!("--nodes {}: between 1 and {MAX_NODES} (each simulated node holds two of the server's at most 32,768 connections)", self.nodes);
        }
        if !(1..=MAX_ROUTERS).contains(&self.routers) {
            anyhow::bail!("--routers {}: between 1 and {MAX_ROUTERS} (the server remembers that many admin routers' acknowledgements)", self.routers);
        }
        if !(1..=1_000_000).contains(&self.instances) {
            anyhow::bail!("--instances {}: between 1 and 1000000", self.instances);
        }
        if self.timeout == 0 {
            anyhow::bail!("--timeout 0: give the run at least a second");
        }
        Ok(())
    }
}

/// What the run is doing, for the message when it does not converge.
#[derive(Debug, Default)]
struct Progress(Mutex<String>);

impl Progress {
    fn set(&self, what: impl Into<String>) {
        let what = what.into();
        eprintln!("bench: {what}");
        if let Ok(mut p) = self.0.lock() {
            *p = what;
        }
    }

    fn get(&self) -> String {
        self.0.lock().map(|p| p.clone()).unwrap_or_default()
    }
}

/// Runs the benchmark and prints its lines.
pub fn run(args: Args) -> anyhow::Result<()> {
    args.check()?;
    // Thousands of sockets: a write to one whose peer closed must be an EPIPE for that call,
    // not a SIGPIPE that ends the run (as for the daemons).
    crate::commands::daemons::ignore_sigpipe();
    let needed = limits::files_needed(args.nodes, args.routers);
    let limit = limits::ensure(needed)?;
    eprintln!(
        "bench: open-files limit {} (needs {needed}; the server inherits it)",
        limit.soft
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let progress = Progress::default();
    let fleet = Arc::new(agent::Fleet::default());
    let timeout = Duration::from_secs(args.timeout);
    let result = runtime.block_on(async {
        tokio::select! {
            r = tokio::time::timeout(timeout, bench(&args, &progress, fleet.clone())) => match r {
                Ok(r) => r,
                Err(_) => Err(anyhow::anyhow!(
                    "the control plane did not converge within --timeout {} s: it was {}{}; give it longer (--timeout) or fewer --nodes/--instances",
                    args.timeout,
                    progress.get(),
                    heartbeats_so_far(&fleet, args.nodes),
                )),
            },
            _ = crate::commands::daemons::terminated() => Err(anyhow::anyhow!("interrupted while {}", progress.get())),
        }
    });
    // Everything the run started (the server child included) was dropped with its future.
    runtime.shutdown_timeout(Duration::from_secs(2));
    for line in result? {
        println!("{line}");
    }
    Ok(())
}

/// The run; its lines in order.
async fn bench(
    args: &Args,
    progress: &Progress,
    fleet: Arc<agent::Fleet>,
) -> anyhow::Result<Vec<String>> {
    let (n, m, r) = (args.nodes, args.instances, args.routers);
    progress.set("starting berth server");
    let mut server =
        ServerChild::start(args.api_tls == ApiTls::On, Duration::from_secs(30)).await?;
    eprintln!("bench: berth server on {} (pid {})", server.url, server.pid);
    let admin = server.admin()?;
    let trust = JoinToken::parse(&server.join_token)
        .context("the server's join token")?
        .ca_sha256
        .map(ServerTrust::Fingerprint);
    let change = Arc::new(Change::new(r));
    let router_errors = Arc::new(Errors::default());

    let routers: Vec<router::Router> = (0..r)
        .map(|i| {
            Ok(router::spawn(
                i,
                server.admin()?,
                change.clone(),
                router_errors.clone(),
            ))
        })
        .collect::<anyhow::Result<_>>()?;

    let _ticker = Ticker::start(fleet.clone(), change.clone(), args);

    progress.set(format!("joining {n} simulated nodes"));
    let started = clock::now();
    let joining = Arc::new(Semaphore::new(JOINING_AT_ONCE));
    let agents: Vec<agent::Agent> = (0..n)
        .map(|i| {
            let config = agent::AgentConfig {
                name: format!("sim-{i:05}"),
                server: server.url.clone(),
                join_token: server.join_token.clone(),
                trust: trust.clone(),
            };
            agent::spawn(config, fleet.clone(), change.clone(), joining.clone())
        })
        .collect();
    wait(&mut server, progress, || {
        fleet.joined.load(Ordering::SeqCst) >= n
    })
    .await?;
    poll_api(&mut server, progress, || async {
        let nodes = admin.nodes().await?;
        Ok(nodes.iter().filter(|v| v.state == NodeState::Ready).count() >= n)
    })
    .await?;
    eprintln!(
        "bench: {n} nodes joined and ready in {:.1} s",
        secs(started)
    );

    // 2. Deploy M instances.
    fleet.heartbeats.record(true);
    let services = stack::services(m);
    progress.set(format!(
        "deploying {m} instances ({} services) and waiting for all to be reported running",
        services.len()
    ));
    let t0 = clock::now();
    let first = deploy(&admin, &services, 1).await?;
    wait(&mut server, progress, || {
        fleet.reported.load(Ordering::SeqCst) >= m
    })
    .await?;
    let running = t0.elapsed_since_now();
    progress.set(format!(
        "all {m} reported running after {:.1} s; checking `berth status` and waiting for release {first} to go live",
        running.as_secs_f64()
    ));
    poll_api(&mut server, progress, || async {
        let status = admin.status(Some(stack::STACK)).await?;
        let healthy: u32 = status
            .stacks
            .iter()
            .filter(|s| s.env == stack::ENV)
            .flat_map(|s| &s.services)
            .map(|s| s.healthy)
            .sum();
        Ok(healthy as usize == m)
    })
    .await?;
    wait_live(&mut server, progress, &admin, first).await?;

    // 3. Change web's release; time it to every router.
    let web = services[0].1 as usize;
    progress.set(format!(
        "changing {}'s release ({web} instances) and waiting for all {r} routers to route to them",
        stack::CHANGED
    ));
    change.watch(first + 1);
    let second = deploy(&admin, &services, 2).await?;
    if second != first + 1 {
        anyhow::bail!(
            "the change made release {second}, where release {} was expected",
            first + 1
        );
    }
    wait(&mut server, progress, || change.routers_holding(web) >= r).await?;
    let routed =
        Spread::of(change.latencies()).context("no router reported the change (no sample)")?;
    wait_live(&mut server, progress, &admin, second).await?;

    // 4. Lose a node.
    let victim = agents.last().context("no agent")?;
    progress.set(format!(
        "stopped {}'s heartbeats; waiting for the server to say it is down",
        victim.name
    ));
    victim.kill();
    let seen_down = loop {
        let nodes = admin.nodes().await.context("GET /v1/nodes")?;
        if nodes
            .iter()
            .any(|v| v.name == victim.name && v.state == NodeState::Down)
        {
            break clock::now();
        }
        if let Some(status) = server.exited() {
            anyhow::bail!(
                "the server exited ({status}); its log:\n{}",
                server.log_tail()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let last_contact = victim
        .last_contact
        .lock()
        .ok()
        .and_then(|c| *c)
        .context("the stopped agent never called the server")?;
    let detected = seen_down.saturating_duration_since(last_contact);

    // 5. Heartbeats, and what the server cost.
    fleet.heartbeats.record(false);
    let beats = Spread::of(fleet.heartbeats.take()).context("no heartbeat was measured")?;
    let (cpu, rss) = server.usage()?;
    for (who, errors) in [
        ("agents", &fleet.errors),
        ("routers", router_errors.as_ref()),
    ] {
        if let (count @ 1.., Some(last)) = errors.summary() {
            eprintln!("bench: {count} failed calls by the simulated {who} (the last: {last})");
        }
    }
    drop(agents);
    drop(routers);
    server.stop().await;
    Ok(vec![
        figures::running_line(m, running, n),
        figures::heartbeat_line(&beats, n),
        figures::routers_line(&routed, r),
        figures::node_loss_line(detected, NODE_TTL),
        figures::server_line(cpu, rss),
    ])
}

/// Counts on stderr every [`TICK`] while the run lasts, so a slow run shows where it is.
struct Ticker(tokio::task::JoinHandle<()>);

/// How often [`Ticker`] prints.
const TICK: Duration = Duration::from_secs(10);

impl Ticker {
    fn start(fleet: Arc<agent::Fleet>, change: Arc<Change>, args: &Args) -> Ticker {
        let (n, m, r) = (args.nodes, args.instances, args.routers);
        let web = stack::services(m)[0].1 as usize;
        let started = clock::now();
        Ticker(tokio::spawn(async move {
            loop {
                tokio::time::sleep(TICK).await;
                let (failed, last) = fleet.errors.summary();
                let watched = change
                    .watched()
                    .map(|_| {
                        format!(
                            ", routers routing to all new instances {}/{r}",
                            change.routers_holding(web)
                        )
                    })
                    .unwrap_or_default();
                eprintln!(
                    "bench: {:.0} s: nodes joined {}/{n}, instances reported {}/{m}{watched}, failed agent calls {failed}{}",
                    secs(started),
                    fleet.joined.load(Ordering::SeqCst),
                    fleet.reported.load(Ordering::SeqCst),
                    last.map(|l| format!(" (last: {l})")).unwrap_or_default()
                );
            }
        }))
    }
}

impl Drop for Ticker {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The heartbeats measured so far, for the message of a run that did not converge.
fn heartbeats_so_far(fleet: &agent::Fleet, nodes: usize) -> String {
    match Spread::of(fleet.heartbeats.snapshot()) {
        Some(s) => format!(
            "; heartbeats so far (from all {nodes} joined): p50 {:.1} ms, p99 {:.1} ms over {}",
            s.p50.as_secs_f64() * 1000.0,
            s.p99.as_secs_f64() * 1000.0,
            s.count
        ),
        None => String::new(),
    }
}

/// Time since `start`, in seconds.
fn secs(start: Instant) -> f64 {
    clock::now().saturating_duration_since(start).as_secs_f64()
}

/// How long ago an instant was, on the benchmark's clock.
trait SinceNow {
    fn elapsed_since_now(&self) -> Duration;
}

impl SinceNow for Instant {
    fn elapsed_since_now(&self) -> Duration {
        clock::now().saturating_duration_since(*self)
    }
}

/// `POST /v1/deploy` of the benchmark's stack with `web` at `version`; the new release.
async fn deploy(admin: &Client, services: &[(String, u32)], version: u32) -> anyhow::Result<u64> {
    let req = DeployRequest {
        file: stack::FILE.to_string(),
        source: stack::yaml(services, version),
        env: stack::ENV.to_string(),
        set: vec![],
        confirm: Some(stack::STACK.to_string()),
        plan_id: None,
        dry_run: false,
        force: false,
    };
    let resp = admin
        .deploy(&req)
        .await
        .with_context(|| format!("deploying the benchmark's stack (web version {version})"))?;
    resp.release.with_context(|| {
        format!(
            "the deploy created no release: {}\n{}",
            resp.unchanged.as_deref().unwrap_or("(no reason given)"),
            resp.plan.text
        )
    })
}

/// Waits until `ready()`, failing if the server exits meanwhile (`--timeout` bounds the wait).
async fn wait(
    server: &mut ServerChild,
    progress: &Progress,
    ready: impl Fn() -> bool,
) -> anyhow::Result<()> {
    while !ready() {
        if let Some(status) = server.exited() {
            anyhow::bail!(
                "the server exited ({status}) while {}; its log:\n{}",
                progress.get(),
                server.log_tail()
            );
        }
        tokio::time::sleep(POLL).await;
    }
    Ok(())
}

/// Asks the API every [`API_POLL`] until `ready` says yes. A failed call is retried (the
/// server may be busy); the last error shows in a timeout's message through `progress`.
async fn poll_api<F, Fut>(
    server: &mut ServerChild,
    progress: &Progress,
    ready: F,
) -> anyhow::Result<()>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<bool, berth_client::ClientError>>,
{
    let what = progress.get();
    loop {
        match ready().await {
            Ok(true) => return Ok(()),
            Ok(false) => {}
            Err(e) => {
                if let Ok(mut p) = progress.0.lock() {
                    *p = format!("{what} (last API error: {e})");
                }
            }
        }
        if let Some(status) = server.exited() {
            anyhow::bail!(
                "the server exited ({status}) while {what}; its log:\n{}",
                server.log_tail()
            );
        }
        tokio::time::sleep(API_POLL).await;
    }
}

/// Waits until release `number` of the benchmark's stack is live (a failed one is an error).
async fn wait_live(
    server: &mut ServerChild,
    progress: &Progress,
    admin: &Client,
    number: u64,
) -> anyhow::Result<()> {
    progress.set(format!("waiting for release {number} to go live"));
    let failed: Mutex<Option<String>> = Mutex::new(None);
    poll_api(server, progress, || async {
        let releases = admin.releases(stack::STACK, stack::ENV).await?;
        let Some(release) = releases.iter().find(|r| r.number == number) else {
            return Ok(false);
        };
        if release.status == ReleaseStatus::Failed {
            if let Ok(mut f) = failed.lock() {
                *f = Some(release.reason.clone().unwrap_or_default());
            }
            return Ok(true);
        }
        Ok(release.status == ReleaseStatus::Live || release.status == ReleaseStatus::Superseded)
    })
    .await?;
    if let Some(reason) = failed.lock().ok().and_then(|f| f.clone()) {
        anyhow::bail!("release {number} of the benchmark's stack failed: {reason}");
    }
    Ok(())
}
