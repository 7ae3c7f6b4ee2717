//! Commands that talk to a running server: deploy, status, history, rollback, events, nodes, logs.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context;
use berth_api::control::{DeployRequest, DeployResponse, ReleaseStatus, RollbackRequest};
use futures::StreamExt;

use super::source;
use crate::context::{client_error, print_json, runtime, Globals};
use crate::exit::{Silent, FAILURE};

/// Arguments of `berth deploy`.
#[derive(clap::Args, Debug)]
pub struct DeployArgs {
    #[arg(short = 'f', long = "file")]
    file: String,
    #[arg(long)]
    env: String,
    #[arg(long = "set", value_name = "SVC.PATH=VALUE")]
    set: Vec<String>,
    /// Wait for the rollout, showing progress; exit 1 if it fails.
    #[arg(long)]
    wait: bool,
    /// Type the stack's name back to allow a destructive plan.
    #[arg(long)]
    confirm: Option<String>,
    /// Apply only if the plan still has this id.
    #[arg(long = "plan")]
    plan_id: Option<String>,
    /// How long --wait waits, in seconds.
    #[arg(long, default_value_t = 300)]
    timeout: u64,
    /// Deploy even though the plan says some instances cannot be placed (else refused, exit 3).
    #[arg(long)]
    force: bool,
}

fn request(
    file: &str,
    env: &str,
    set: &[String],
    confirm: Option<String>,
    plan_id: Option<String>,
) -> anyhow::Result<DeployRequest> {
    let bytes = source::read(file)?;
    let source = String::from_utf8(bytes).map_err(|e| {
        anyhow::anyhow!(
            "{file}: the file is not UTF-8 (invalid byte at offset {})",
            e.utf8_error().valid_up_to()
        )
    })?;
    Ok(DeployRequest {
        file: file.to_string(),
        source,
        env: env.to_string(),
        set: set.to_vec(),
        confirm,
        plan_id,
        dry_run: false,
        force: false,
    })
}

/// `berth plan` against the live release.
pub fn plan_live(args: &super::plan::Args, globals: &Globals) -> anyhow::Result<()> {
    let client = globals.client()?;
    let req = request(&args.file, &args.env, &args.set, None, None)?;
    runtime()?.block_on(async {
        let resp = client.plan(&req).await.map_err(client_error)?;
        if globals.json() {
            print_json(&resp)
        } else {
            print!("{}", resp.plan.text);
            Ok(())
        }
    })
}

fn print_deploy(resp: &DeployResponse, globals: &Globals) -> anyhow::Result<()> {
    if globals.json() {
        return print_json(resp);
    }
    print!("{}", resp.plan.text);
    match resp.release {
        Some(n) => println!(
            "release {n} of {} in {} created; rolling out",
            resp.stack, resp.env
        ),
        None => match &resp.unchanged {
            Some(why) => println!("{why}"),
            None => println!(
                "nothing to change: {} in {} already runs this",
                resp.stack, resp.env
            ),
        },
    }
    Ok(())
}

/// `berth deploy`.
pub fn deploy(args: DeployArgs, globals: &Globals) -> anyhow::Result<()> {
    let client = globals.client()?;
    let req = DeployRequest {
        force: args.force,
        ..request(
            &args.file,
            &args.env,
            &args.set,
            args.confirm.clone(),
            args.plan_id.clone(),
        )?
    };
    runtime()?.block_on(async {
        let resp = client.deploy(&req).await.map_err(client_error)?;
        print_deploy(&resp, globals)?;
        match (args.wait, resp.release) {
            (true, Some(n)) => {
                wait_for(
                    &client,
                    &resp.stack,
                    &resp.env,
                    n,
                    Duration::from_secs(args.timeout),
                    globals,
                )
                .await
            }
            _ => Ok(()),
        }
    })
}

/// Follows a release until it is live (exit 0) or failed (exit 1), printing healthy/desired.
async fn wait_for(
    client: &berth_client::Client,
    stack: &str,
    env: &str,
    number: u64,
    timeout: Duration,
    globals: &Globals,
) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut last = String::new();
    loop {
        let releases = client.releases(stack, env).await.map_err(client_error)?;
        let release = releases.iter().find(|r| r.number == number);
        let status = client.status(Some(stack)).await.map_err(client_error)?;
        if !globals.json() {
            let progress: Vec<String> = status
                .stacks
                .iter()
                .filter(|s| s.env == env)
                .flat_map(|s| {
                    s.services
                        .iter()
                        .map(|svc| format!("{} {}/{}", svc.name, svc.healthy, svc.desired))
                })
                .collect();
            let line = format!(
                "{} — {}",
                status
                    .stacks
                    .iter()
                    .find(|s| s.env == env)
                    .map(|s| s.rollout.clone())
                    .unwrap_or_default(),
                progress.join(", ")
            );
            if line != last {
                println!("{line}");
                last = line;
            }
        }
        match release.map(|r| (r.status, r.reason.clone())) {
            Some((ReleaseStatus::Live, _)) => {
                if !globals.json() {
                    println!("release {number} is live");
                }
                return Ok(());
            }
            Some((ReleaseStatus::Failed, reason)) => {
                eprintln!(
                    "release {number} failed: {}; the previous release was restored",
                    reason.unwrap_or_default()
                );
                return Err(Silent(FAILURE).into());
            }
            Some((ReleaseStatus::Superseded, _)) => {
                eprintln!("release {number} was replaced by a later deploy before it finished");
                return Err(Silent(FAILURE).into());
            }
            None => {
                eprintln!("release {number} is no longer retained");
                return Err(Silent(FAILURE).into());
            }
            Some((ReleaseStatus::RollingOut, _)) => {}
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "release {number} did not finish within {} s; see `berth status {stack}`",
            timeout.as_secs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Arguments of `berth status`.
#[derive(clap::Args, Debug)]
pub struct StatusArgs {
    /// Only this stack.
    stack: Option<String>,
}

/// `berth status`.
pub fn status(args: StatusArgs, globals: &Globals) -> anyhow::Result<()> {
    let client = globals.client()?;
    runtime()?.block_on(async {
        let view = client
            .status(args.stack.as_deref())
            .await
            .map_err(client_error)?;
        if globals.json() {
            return print_json(&view);
        }
        if view.stacks.is_empty() {
            println!(
                "no stack deployed: try `berth deploy -f examples/demo/stack.yaml --env local`"
            );
        }
        for s in &view.stacks {
            println!(
                "{} ({}) release {} — {}",
                s.stack,
                s.env,
                s.live_release.map(|n| n.to_string()).unwrap_or("-".into()),
                s.rollout
            );
            for svc in &s.services {
                println!("  {}  {}/{} healthy", svc.name, svc.healthy, svc.desired);
                if let Some(why) = &svc.pending {
                    println!("    pending: {why}");
                }
                for i in &svc.instances {
                    println!(
                        "    {:<32} {:<10} release {:<4} node {:<12} {:<22} wanted: {}{}",
                        i.id,
                        format!("{:?}", i.state).to_lowercase(),
                        i.release,
                        i.node,
                        i.addr.clone().unwrap_or_default(),
                        i.desired,
                        i.message
                            .as_ref()
                            .map(|m| format!("  ({m})"))
                            .unwrap_or_default()
                    );
                }
            }
        }
        Ok(())
    })
}

/// Arguments of `berth history`.
#[derive(clap::Args, Debug)]
pub struct HistoryArgs {
    stack: String,
    #[arg(long)]
    env: String,
}

/// `berth history`.
pub fn history(args: HistoryArgs, globals: &Globals) -> anyhow::Result<()> {
    let client = globals.client()?;
    runtime()?.block_on(async {
        let releases = client.releases(&args.stack, &args.env).await.map_err(client_error)?;
        if globals.json() {
            let light: Vec<serde_json::Value> = releases
                .iter()
                .map(|r| serde_json::json!({"number": r.number, "created_ms": r.created_ms, "who": r.who, "status": r.status, "summary": r.summary, "plan_id": r.plan_id, "rollback_of": r.rollback_of, "reason": r.reason}))
                .collect();
            return print_json(&light);
        }
        println!("{:<8} {:<20} {:<8} {:<12} SUMMARY", "RELEASE", "CREATED (UTC)", "WHO", "STATUS");
        for r in &releases {
            let status = format!("{:?}", r.status).to_lowercase();
            let mut summary = r.summary.clone();
            if let Some(reason) = &r.reason {
                summary.push_str(&format!(" [{reason}]"));
            }
            println!("{:<8} {:<20} {:<8} {:<12} {}", r.number, format_time(r.created_ms), r.who, status, summary);
        }
        Ok(())
    })
}

/// `YYYY-MM-DD HH:MM:SS` in UTC, without a date crate (civil-from-days, Howard Hinnant).
fn format_time(ms: u64) -> String {
    let secs = ms / 1000;
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Arguments of `berth rollback`.
#[derive(clap::Args, Debug)]
pub struct RollbackArgs {
    stack: String,
    #[arg(long)]
    env: String,
    /// The release to return to (default: the previous successful one).
    release: Option<u64>,
    /// Wait for the rollout; exit 1 if it fails.
    #[arg(long)]
    wait: bool,
}

/// `berth rollback`.
pub fn rollback(args: RollbackArgs, globals: &Globals) -> anyhow::Result<()> {
    let client = globals.client()?;
    runtime()?.block_on(async {
        let resp = client
            .rollback(
                &args.stack,
                &args.env,
                &RollbackRequest {
                    release: args.release,
                },
            )
            .await
            .map_err(client_error)?;
        print_deploy(&resp, globals)?;
        match (args.wait, resp.release) {
            (true, Some(n)) => {
                wait_for(
                    &client,
                    &resp.stack,
                    &resp.env,
                    n,
                    Duration::from_secs(300),
                    globals,
                )
                .await
            }
            _ => Ok(()),
        }
    })
}

/// Arguments of `berth events`.
#[derive(clap::Args, Debug)]
pub struct EventsArgs {
    /// Keep streaming new changes.
    #[arg(short = 'f', long)]
    follow: bool,
    /// Start after this store revision.
    #[arg(long)]
    since: Option<i64>,
}

/// `berth events`.
pub fn events(args: EventsArgs, globals: &Globals) -> anyhow::Result<()> {
    let client = globals.client()?;
    runtime()?.block_on(async {
        let mut stream = Box::pin(client.events(args.follow, args.since));
        while let Some(item) = stream.next().await {
            let event = item.map_err(client_error)?;
            if globals.json() {
                println!(
                    "{}",
                    serde_json::to_string(&event).context("cannot print JSON")?
                );
            } else {
                println!(
                    "{:>8}  {:<9} {}",
                    event.revision, event.subject, event.summary
                );
            }
        }
        Ok(())
    })
}

/// `berth nodes`.
pub fn nodes(globals: &Globals) -> anyhow::Result<()> {
    let client = globals.client()?;
    runtime()?.block_on(async {
        let nodes = client.nodes().await.map_err(client_error)?;
        if globals.json() {
            return print_json(&nodes);
        }
        println!(
            "{:<20} {:<14} {:<10} {:<22} {:<10} LABELS",
            "NODE", "STATE", "INSTANCES", "ALLOCATED CPU/MEMORY", "LAST SEEN"
        );
        for n in &nodes {
            let labels: Vec<String> = n.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
            let seen = n
                .last_seen_ms_ago
                .map(|ms| format!("{:.1}s ago", ms as f64 / 1000.0))
                .unwrap_or_else(|| "never".into());
            let cpu = berth_spec::model::Cpu {
                millis: n.allocated.cpu_millis,
            };
            let mem = human_bytes(n.allocated.memory_bytes);
            let cap_cpu = berth_spec::model::Cpu {
                millis: n.resources.cpu_millis,
            };
            let cap_mem = human_bytes(n.resources.memory_bytes);
            // Liveness first, then drain: `down,draining` for a drained node that died.
            let mut state = format!("{:?}", n.state).to_lowercase();
            if n.draining && n.state != berth_api::control::NodeState::Draining {
                state.push_str(",draining");
            }
            println!(
                "{:<20} {:<14} {:<10} {:<22} {:<10} {}",
                n.name,
                state,
                n.instances,
                format!("{cpu}/{cap_cpu} {mem}/{cap_mem}"),
                seen,
                labels.join(",")
            );
        }
        Ok(())
    })
}

/// Arguments of `berth logs`.
#[derive(clap::Args, Debug)]
pub struct LogsArgs {
    /// The service (`SERVICE` or `STACK/SERVICE`).
    service: String,
    /// Keep streaming new lines.
    #[arg(short = 'f', long)]
    follow: bool,
    /// The agent data directory holding the instances (default: the local `berth up`'s).
    #[arg(long)]
    agent_dir: Option<std::path::PathBuf>,
}

/// `berth logs`: the service's instances' output, read from this machine's agent (the logs of
/// instances on other nodes are not reachable yet: agents never accept connections).
pub fn logs(args: LogsArgs, globals: &Globals) -> anyhow::Result<()> {
    let client = globals.client()?;
    let (stack_filter, service) = match args.service.split_once('/') {
        Some((s, v)) => (Some(s.to_string()), v.to_string()),
        None => (None, args.service.clone()),
    };
    let agent_dir = args
        .agent_dir
        .clone()
        .unwrap_or_else(|| crate::context::default_data_dir().join("agent"));
    runtime()?.block_on(async {
        let view = client.status(stack_filter.as_deref()).await.map_err(client_error)?;
        let ids: Vec<String> = view.stacks.iter().flat_map(|s| s.services.iter()).filter(|s| s.name == service).flat_map(|s| s.instances.iter().map(|i| i.id.clone())).collect();
        anyhow::ensure!(!ids.is_empty(), "no instance of service {service} found: see `berth status`");
        let mut streams = futures::stream::SelectAll::new();
        let mut found = 0;
        for id in &ids {
            let path = agent_dir.join("instances").join(id).join(berth_agent::logs::LOG_FILE);
            if path.exists() {
                found += 1;
                let id = id.clone();
                streams.push(Box::pin(berth_agent::logs::tail(path, args.follow).map(move |l| (id.clone(), l))));
            }
        }
        anyhow::ensure!(found > 0, "the logs of {service}'s instances are not on this machine ({}): run `berth logs` where the agent runs, or pass --agent-dir", agent_dir.display());
        let mut prefixes: BTreeMap<String, String> = BTreeMap::new();
        for id in &ids {
            prefixes.insert(id.clone(), id.rsplit('-').next().unwrap_or(id).to_string());
        }
        while let Some((id, line)) = streams.next().await {
            match line {
                Ok(l) => println!("{} | {l}", prefixes.get(&id).cloned().unwrap_or_default()),
                Err(e) => eprintln!("{id}: {e}"),
            }
        }
        Ok(())
    })
}

/// Arguments of `berth drain` and `berth undrain`.
#[derive(clap::Args, Debug)]
pub struct DrainArgs {
    /// The node.
    node: String,
}

/// `berth drain NODE` / `berth undrain NODE`.
pub fn drain(args: DrainArgs, draining: bool, globals: &Globals) -> anyhow::Result<()> {
    let client = globals.client()?;
    runtime()?.block_on(async {
        let node = client.set_draining(&args.node, draining).await.map_err(client_error)?;
        if globals.json() {
            return print_json(&node);
        }
        if draining && node.state == berth_api::control::NodeState::Down {
            println!("node {} is down and draining: it takes no new instances, and its {} instance(s) are replaced elsewhere (a down node's instances are replaced without waiting for it)", node.name, node.instances);
        } else if draining {
            println!("node {} is draining: it takes no new instances, and its {} instance(s) move elsewhere, each stopped once its replacement is healthy", node.name, node.instances);
        } else {
            println!("node {} takes new instances again", node.name);
        }
        Ok(())
    })
}

/// `on` or `off`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnOff {
    On,
    Off,
}

/// Arguments of `berth maintenance`.
#[derive(clap::Args, Debug)]
pub struct MaintenanceArgs {
    /// `on` or `off`.
    #[arg(value_enum)]
    mode: OnOff,
    /// The service: `SERVICE` when one deployed stack has it, else `STACK/SERVICE`.
    service: String,
    /// An HTML file to answer with instead of the router's own maintenance page.
    #[arg(long)]
    page: Option<std::path::PathBuf>,
}

/// `berth maintenance on|off SERVICE`: the routers answer 503 with a maintenance page; the
/// instances are left alone.
pub fn maintenance(args: MaintenanceArgs, globals: &Globals) -> anyhow::Result<()> {
    let client = globals.client()?;
    let page_html = match &args.page {
        Some(p) => Some(
            std::fs::read_to_string(p)
                .with_context(|| format!("cannot read the maintenance page {}", p.display()))?,
        ),
        None => None,
    };
    runtime()?.block_on(async {
        let (stack, service) = match args.service.split_once('/') {
            Some((s, v)) => (s.to_string(), v.to_string()),
            None => {
                let status = client.status(None).await.map_err(client_error)?;
                let stacks: std::collections::BTreeSet<String> =
                    status.stacks.iter().filter(|s| s.services.iter().any(|v| v.name == args.service)).map(|s| s.stack.clone()).collect();
                match stacks.len() {
                    1 => (stacks.into_iter().next().unwrap_or_default(), args.service.clone()),
                    0 => anyhow::bail!("no deployed stack has a service {}: see `berth status`", args.service),
                    _ => anyhow::bail!("several stacks have a service {}: name it as STACK/{}", args.service, args.service),
                }
            }
        };
        let on = args.mode == OnOff::On;
        let answer = client
            .maintenance(&stack, &service, &berth_api::control::MaintenanceRequest { on, page_html })
            .await
            .map_err(client_error)?;
        if globals.json() {
            return print_json(&answer);
        }
        if on {
            println!("{stack}/{service} is in maintenance: the routers answer 503 with the maintenance page; its instances keep running");
        } else {
            println!("{stack}/{service} serves traffic again");
        }
        Ok(())
    })
}

/// Memory for people: `512Mi`, `23.5Gi` (rounded to one decimal above a GiB).
fn human_bytes(bytes: u64) -> String {
    const MI: u64 = 1 << 20;
    const GI: u64 = 1 << 30;
    if bytes >= GI {
        format!("{:.1}Gi", bytes as f64 / GI as f64)
    } else {
        format!("{}Mi", bytes.div_ceil(MI))
    }
}
