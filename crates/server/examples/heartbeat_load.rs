//! A quick load harness for the server's node paths (issue 11's heartbeat goal), not kept as a
//! benchmark (`berth bench control-plane` is that): a real server in a child process on
//! loopback, N simulated agents in this one, each long-polling its desired instances and
//! heartbeating their statuses (healthy at once) every second; prints heartbeat latency
//! percentiles and the server's CPU and RSS.
//!
//! `cargo run -p berth-server --example heartbeat_load -- NODES SERVICES REPLICAS SECONDS`

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use berth_api::control::{DesiredInstances, Heartbeat, NodeResources, RegisterRequest};
use berth_api::{InstanceSpec, InstanceState, InstanceStatus};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("serve") {
        serve(&args[2], &args[3]);
        return;
    }
    let arg = |i: usize, d: usize| args.get(i).and_then(|s| s.parse().ok()).unwrap_or(d);
    let (nodes, services, replicas, seconds) = (arg(1, 1000), arg(2, 0), arg(3, 0), arg(4, 20));
    let dir = tempfile::tempdir().expect("tempdir");
    let port_file = dir.path().join("port");
    let child = std::process::Command::new(&args[0])
        .args(["serve", &dir.path().display().to_string()])
        .arg(port_file.display().to_string())
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("spawn the server");
    let child = KillOnDrop(child);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(drive(
        &port_file,
        dir.path(),
        child.0.id(),
        nodes,
        services,
        replicas,
        seconds as u64,
    ));
    drop(child);
}

/// Kills the server process when the driver ends, also by a panic.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The server process: binds 127.0.0.1:0, writes its port, serves until killed.
fn serve(dir: &str, port_file: &str) {
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::INFO)
        .with_writer(std::io::stderr)
        .init();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let store = berth_store::EmbeddedStore::open(std::path::Path::new(dir).join("state.redb"))
            .await
            .expect("store");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let config = berth_server::ServerConfig {
            data_dir: dir.into(),
            store: Arc::new(store),
            clock: berth_server::Clock::system(),
            tls: None,
            secrets_key_file: None,
        };
        let tmp = format!("{port_file}.tmp");
        std::fs::write(&tmp, port.to_string()).expect("port");
        std::fs::rename(&tmp, port_file).expect("port");
        berth_server::serve(listener, config, std::future::pending())
            .await
            .expect("serve");
    });
}

#[allow(clippy::too_many_arguments)]
async fn drive(
    port_file: &std::path::Path,
    dir: &std::path::Path,
    server_pid: u32,
    nodes: usize,
    services: usize,
    replicas: usize,
    seconds: u64,
) {
    let port = loop {
        if let Ok(p) = std::fs::read_to_string(port_file) {
            break p;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let url = format!("http://127.0.0.1:{port}");
    // The tokens are written once the server has started.
    while !(dir.join("admin.token").exists() && dir.join("join.token").exists()) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let read = |n: &str| {
        std::fs::read_to_string(dir.join(n))
            .expect("token")
            .trim()
            .to_string()
    };
    let (admin, join) = (read("admin.token"), read("join.token"));
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(usize::MAX)
        .build()
        .expect("client");
    // Register, 64 at a time.
    let started = now();
    let tokens = Arc::new(Mutex::new(vec![String::new(); nodes]));
    let next = Arc::new(AtomicUsize::new(0));
    let mut joins = Vec::new();
    for _ in 0..64 {
        let (http, url, join, tokens, next) = (
            http.clone(),
            url.clone(),
            join.clone(),
            tokens.clone(),
            next.clone(),
        );
        joins.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= nodes {
                    return;
                }
                let req = RegisterRequest {
                    name: format!("n{i}"),
                    labels: Default::default(),
                    resources: NodeResources {
                        cpu_millis: 1 << 30,
                        memory_bytes: 1 << 50,
                    },
                    drivers: vec![berth_spec::model::DriverKind::Process],
                    address: "127.0.0.1".into(),
                    router: None,
                    keep_labels: false,
                };
                let resp: berth_api::control::RegisterResponse = http
                    .post(format!("{url}/v1/nodes/register"))
                    .bearer_auth(&join)
                    .json(&req)
                    .send()
                    .await
                    .expect("register")
                    .json()
                    .await
                    .expect("register body");
                tokens.lock().expect("lock")[i] = resp.node_token;
            }
        }));
    }
    for j in joins {
        j.await.expect("join");
    }
    println!("registered {nodes} nodes in {:.1?}", started.elapsed());
    let tokens = tokens.lock().expect("lock").clone();
    let latencies: Arc<Mutex<Vec<u32>>> = Arc::default();
    let running = Arc::new(AtomicUsize::new(0));
    let measuring = Arc::new(std::sync::atomic::AtomicBool::new(false));
    for (i, token) in tokens.into_iter().enumerate() {
        let name = format!("n{i}");
        let held: Arc<Mutex<Vec<InstanceSpec>>> = Arc::default();
        // The long-poll.
        {
            let (http, url, token, name, held, running) = (
                http.clone(),
                url.clone(),
                token.clone(),
                name.clone(),
                held.clone(),
                running.clone(),
            );
            // Agents start spread over the first seconds, as a real fleet does (not one
            // connection storm that overflows the accept queue).
            let start = Duration::from_micros((i as u64 * 5_000_000) / nodes as u64);
            tokio::spawn(async move {
                tokio::time::sleep(start).await;
                let mut version = String::new();
                loop {
                    let resp = http
                        .get(format!(
                            "{url}/v1/nodes/{name}/desired?version={version}&wait=25"
                        ))
                        .bearer_auth(&token)
                        .send()
                        .await;
                    let Ok(resp) = resp else {
                        tokio::time::sleep(Duration::from_millis(500)).await;
                        continue;
                    };
                    let Ok(d) = resp.json::<DesiredInstances>().await else {
                        tokio::time::sleep(Duration::from_millis(500)).await;
                        continue;
                    };
                    version = d.version;
                    let mut h = held.lock().expect("lock");
                    let before = h.len();
                    *h = d.instances;
                    if h.len() >= before {
                        running.fetch_add(h.len() - before, Ordering::Relaxed);
                    } else {
                        running.fetch_sub(before - h.len(), Ordering::Relaxed);
                    }
                }
            });
        }
        // The heartbeat, at 1 Hz, spread over the second, on the agent's own keep-alive
        // connection (HTTP/1.1 by hand: one reqwest pool per agent would cost far more).
        let (addr, latencies, measuring) = (
            format!("127.0.0.1:{}", port.trim()),
            latencies.clone(),
            measuring.clone(),
        );
        let offset = Duration::from_micros((i as u64 * 5_000_000) / nodes as u64);
        tokio::spawn(async move {
            use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
            tokio::time::sleep(offset).await;
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            let mut conn: Option<tokio::io::BufReader<tokio::net::TcpStream>> = None;
            loop {
                tick.tick().await;
                let statuses: Vec<InstanceStatus> = held
                    .lock()
                    .expect("lock")
                    .iter()
                    .map(|s| InstanceStatus {
                        id: s.id.clone(),
                        state: InstanceState::Healthy,
                        pid: Some(1),
                        ports: s.spec.ports.keys().map(|k| (k.clone(), 10_000)).collect(),
                        restarts: 0,
                        message: None,
                        since_ms: 1,
                        image_id: None,
                    })
                    .collect();
                let body = serde_json::to_vec(&Heartbeat {
                    statuses,
                    last_gc: None,
                })
                .expect("json");
                let request = format!(
                    "POST /v1/nodes/{name}/heartbeat HTTP/1.1\r\nhost: {addr}\r\nauthorization: Bearer {token}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
                    body.len()
                );
                let t = now();
                let result: std::io::Result<bool> = async {
                    if conn.is_none() {
                        conn = Some(tokio::io::BufReader::new(
                            tokio::net::TcpStream::connect(&addr).await?,
                        ));
                    }
                    let c = conn.as_mut().expect("connected");
                    c.get_mut().write_all(request.as_bytes()).await?;
                    c.get_mut().write_all(&body).await?;
                    let mut line = String::new();
                    c.read_line(&mut line).await?;
                    let ok = line.split_whitespace().nth(1) == Some("200");
                    let mut length = 0usize;
                    loop {
                        line.clear();
                        if c.read_line(&mut line).await? == 0 {
                            return Err(std::io::ErrorKind::UnexpectedEof.into());
                        }
                        let l = line.trim_end();
                        if l.is_empty() {
                            break;
                        }
                        if let Some((k, v)) = l.split_once(':') {
                            if k.eq_ignore_ascii_case("content-length") {
                                length = v.trim().parse().unwrap_or(0);
                            }
                        }
                    }
                    let mut rest = vec![0; length];
                    c.read_exact(&mut rest).await?;
                    Ok(ok)
                }
                .await;
                let ok = match result {
                    Ok(ok) => ok,
                    Err(e) => {
                        eprintln!("heartbeat: {e}");
                        conn = None;
                        false
                    }
                };
                let us = t.elapsed().as_micros().min(u32::MAX as u128) as u32;
                if measuring.load(Ordering::Relaxed) {
                    latencies
                        .lock()
                        .expect("lock")
                        .push(if ok { us } else { u32::MAX });
                }
            }
        });
    }
    if services > 0 {
        let mut text =
            String::from("stack: load\nenvironments:\n  prod:\n    regions: [local]\nservices:\n");
        for s in 0..services {
            text.push_str(&format!(
                "  s{s}:\n    process: {{command: [sleep, \"1000\"]}}\n    replicas: {replicas}\n    resources: {{cpu: 1m, memory: 1Mi}}\n    rollout: {{max_surge: 100%, progress_deadline: 1h}}\n"
            ));
        }
        let t = now();
        let resp = http
            .post(format!("{url}/v1/deploy"))
            .bearer_auth(&admin)
            .json(&berth_api::control::DeployRequest {
                file: "load.yaml".into(),
                source: text,
                env: "prod".into(),
                set: vec![],
                confirm: None,
                plan_id: None,
                dry_run: false,
                force: false,
            })
            .send()
            .await
            .expect("deploy");
        let status = resp.status();
        println!("deploy: {status}");
        if !status.is_success() {
            println!("{}", resp.text().await.unwrap_or_default());
            return;
        }
        let want = services * replicas;
        while running.load(Ordering::Relaxed) < want && t.elapsed() < Duration::from_secs(300) {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        println!(
            "{} of {want} instances placed in {:.1?}",
            running.load(Ordering::Relaxed),
            t.elapsed()
        );
    }
    tokio::time::sleep(Duration::from_secs(8)).await;
    let cpu0 = cpu_seconds(server_pid);
    let own0 = cpu_seconds(std::process::id());
    measuring.store(true, Ordering::Relaxed);
    let t = now();
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    measuring.store(false, Ordering::Relaxed);
    let cpu = cpu_seconds(server_pid) - cpu0;
    let own = cpu_seconds(std::process::id()) - own0;
    let mut l = latencies.lock().expect("lock").clone();
    l.sort_unstable();
    let pct = |p: f64| {
        l.get(((l.len() as f64 * p) as usize).min(l.len().saturating_sub(1)))
            .map(|us| *us as f64 / 1000.0)
            .unwrap_or(0.0)
    };
    let failed = l.iter().filter(|u| **u == u32::MAX).count();
    println!(
        "heartbeats: {} in {:.1?} ({failed} failed), p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms at {nodes} nodes",
        l.len(),
        t.elapsed(),
        pct(0.5),
        pct(0.99),
        l.iter().rev().find(|u| **u != u32::MAX).map(|u| *u as f64 / 1000.0).unwrap_or(0.0)
    );
    println!(
        "server: cpu {cpu:.1} s over {seconds} s, rss {} MiB; simulated agents: cpu {own:.1} s",
        rss_mib(server_pid)
    );
}

fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, r)| r.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) + ticks(12)) / 100.0
}

fn rss_mib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb / 1024)
        .unwrap_or(0)
}

/// Now, on the monotonic clock: this harness measures real time (`clippy.toml` keeps every
/// other read of the clock in a clock module).
#[expect(
    clippy::disallowed_methods,
    reason = "the load harness's clock: it measures wall time"
)]
fn now() -> Instant {
    Instant::now()
}
