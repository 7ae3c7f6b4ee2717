//! The router alone, with a fixed table: what `scripts/bench-router` measures against HAProxy.
//!
//! ```text
//! cargo run --release -p berth-router --example static_router -- \
//!     --listen 127.0.0.1:8080 --backend 127.0.0.1:9001 --backend 127.0.0.1:9002 \
//!     [--host 127.0.0.1] [--metrics 127.0.0.1:9100] [--threads 2]
//! ```
//!
//! Every request whose Host is `--host` (default `127.0.0.1`, what wrk sends for a loopback
//! URL) goes to the backends. `--threads N` runs N single-threaded runtimes, one per core, each
//! accepting on its own `SO_REUSEPORT` socket. It runs until killed. No server, no CLI crate: the benchmark
//! measures the proxy and nothing else.

use std::net::SocketAddr;
use std::process::ExitCode;

use berth_router::{
    bind_reuseport, serve_with, Endpoint, RouteEntry, RouteTable, RouterConfig, RouterHandle,
};
use tokio::net::TcpListener;

struct Args {
    listen: SocketAddr,
    backends: Vec<SocketAddr>,
    host: String,
    metrics: Option<SocketAddr>,
    threads: usize,
}

fn parse() -> Result<Args, String> {
    let mut args = std::env::args().skip(1);
    let mut listen = None;
    let mut backends = Vec::new();
    let mut host = "127.0.0.1".to_owned();
    let mut metrics = None;
    let mut threads = 2;
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{flag} needs a value"));
        let addr = |v: String| v.parse::<SocketAddr>().map_err(|e| format!("{v}: {e}"));
        match flag.as_str() {
            "--listen" => listen = Some(addr(value()?)?),
            "--backend" => backends.push(addr(value()?)?),
            "--host" => host = value()?,
            "--metrics" => metrics = Some(addr(value()?)?),
            "--threads" => {
                let v = value()?;
                threads = v.parse().map_err(|e| format!("--threads {v}: {e}"))?;
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(Args {
        listen: listen.ok_or("--listen is required")?,
        backends,
        host,
        metrics,
        threads,
    })
}

fn main() -> ExitCode {
    let args = match parse() {
        Ok(args) => args,
        Err(err) => {
            eprintln!("static_router: {err}");
            return ExitCode::from(2);
        }
    };
    let table = RouteTable {
        routes: vec![RouteEntry {
            host: args.host,
            path_prefix: "/".into(),
            service: "bench".into(),
            endpoints: args
                .backends
                .iter()
                .enumerate()
                .map(|(i, addr)| Endpoint {
                    addr: *addr,
                    instance: format!("backend-{i}"),
                    release: 1,
                    weight: 100,
                })
                .collect(),
            limits: None,
            maintenance: None,
            timeout_ms: None,
            ..RouteEntry::default()
        }],
    };
    let handle = RouterHandle::with_table(table);
    // One single-threaded runtime per core, each with its own SO_REUSEPORT listener: the
    // kernel spreads connections over the cores, and a connection never leaves its thread
    // (nor do the upstream connections it uses; see the router's pool). The routing state is
    // shared.
    let threads: Vec<_> = (0..args.threads.max(1))
        .map(|core| {
            let handle = handle.clone();
            let (listen, metrics) = (args.listen, args.metrics.filter(|_| core == 0));
            std::thread::Builder::new()
                .name(format!("router-{core}"))
                .spawn(move || run_core(listen, metrics, handle))
        })
        .collect();
    let mut code = ExitCode::SUCCESS;
    for thread in threads {
        match thread.map(std::thread::JoinHandle::join) {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(err))) => {
                eprintln!("static_router: {err}");
                code = ExitCode::FAILURE;
            }
            Ok(Err(_)) | Err(_) => code = ExitCode::FAILURE,
        }
    }
    code
}

/// One core's runtime, listener and accept loop; runs until killed.
fn run_core(
    listen: SocketAddr,
    metrics: Option<SocketAddr>,
    handle: RouterHandle,
) -> Result<(), String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|err| format!("cannot start a runtime: {err}"))?;
    runtime.block_on(async move {
        let listener =
            bind_reuseport(listen).map_err(|err| format!("cannot listen on {listen}: {err}"))?;
        let metrics = match metrics {
            None => None,
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .map_err(|err| format!("cannot listen on {addr}: {err}"))?,
            ),
        };
        let config = RouterConfig {
            metrics,
            ..RouterConfig::default()
        };
        serve_with(listener, handle, config, std::future::pending()).await;
        Ok(())
    })
}
