//! The router alone, with a fixed table: what `scripts/bench-router` measures against HAProxy.
//!
//! ```text
//! cargo run --release -p berth-router --example static_router -- \
//!     --listen 127.0.0.1:8080 --backend 127.0.0.1:9001 --backend 127.0.0.1:9002 \
//!     [--host 127.0.0.1] [--metrics 127.0.0.1:9100] [--threads 2]
//! ```
//!
//! Every request whose Host is `--host` (default `127.0.0.1`, what wrk sends for a loopback
//! URL) goes to the backends. It runs until killed. No server, no CLI crate: the benchmark
//! measures the proxy and nothing else.

use std::net::SocketAddr;
use std::process::ExitCode;

use berth_router::{serve_with, Endpoint, RouteEntry, RouteTable, RouterConfig, RouterHandle};
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
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads.max(1))
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("static_router: cannot start the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
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
            }],
        };
        let listener = match TcpListener::bind(args.listen).await {
            Ok(listener) => listener,
            Err(err) => {
                eprintln!("static_router: cannot listen on {}: {err}", args.listen);
                return ExitCode::FAILURE;
            }
        };
        let metrics = match args.metrics {
            None => None,
            Some(addr) => match TcpListener::bind(addr).await {
                Ok(listener) => Some(listener),
                Err(err) => {
                    eprintln!("static_router: cannot listen on {addr}: {err}");
                    return ExitCode::FAILURE;
                }
            },
        };
        let config = RouterConfig {
            metrics,
            ..RouterConfig::default()
        };
        serve_with(
            listener,
            RouterHandle::with_table(table),
            config,
            std::future::pending(),
        )
        .await;
        ExitCode::SUCCESS
    })
}
