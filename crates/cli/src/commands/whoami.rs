//! `berth whoami`: a tiny HTTP workload that says which instance answered.
//!
//! Enough to test routing, draining, canaries and analysis: `GET /` answers JSON
//! `{"service","instance","release","node","version"}`, `/healthz` 200, `/sleep?ms=N` after N ms,
//! `/status/CODE` with that status. On SIGTERM it stops accepting and finishes in-flight requests,
//! as a well-behaved service should during a deploy.

use std::collections::HashMap;
use std::net::SocketAddr;

use anyhow::Context;
use axum::extract::{Path, Query};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;

/// Longest `/sleep` accepted, so a typo cannot pin a connection for hours.
const MAX_SLEEP_MS: u64 = 600_000;

/// Arguments of `berth whoami`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Address to listen on; defaults to 127.0.0.1:$PORT (as berth passes it to instances).
    #[arg(long)]
    listen: Option<SocketAddr>,
}

/// What `GET /` answers: who this instance is, from the environment berth gives every instance.
#[derive(Serialize, Clone, Debug)]
struct Identity {
    service: String,
    instance: String,
    release: String,
    node: String,
    version: String,
}

impl Identity {
    fn from_env() -> Self {
        let var = |k: &str| std::env::var(k).unwrap_or_default();
        Identity {
            service: var("BERTH_SERVICE"),
            instance: var("BERTH_INSTANCE"),
            release: var("BERTH_RELEASE"),
            node: var("BERTH_NODE"),
            version: var("VERSION"),
        }
    }
}

/// Serves until SIGTERM or SIGINT, then drains in-flight requests.
pub fn run(args: Args) -> anyhow::Result<()> {
    let addr = match args.listen {
        Some(a) => a,
        None => {
            let port = std::env::var("PORT")
                .context("no --listen given and $PORT is not set: pass --listen 127.0.0.1:8080")?;
            let port: u16 = port
                .parse()
                .with_context(|| format!("$PORT `{port}` is not a port number"))?;
            SocketAddr::from(([127, 0, 0, 1], port))
        }
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(serve(addr))
}

async fn serve(addr: SocketAddr) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    let identity = Identity::from_env();
    let app = Router::new()
        .route("/", get(move || std::future::ready(Json(identity.clone()))))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/sleep", get(sleep))
        .route("/status/{code}", get(status));
    axum::serve(listener, app)
        .with_graceful_shutdown(terminated())
        .await
        .context("the whoami server failed")
}

async fn sleep(Query(q): Query<HashMap<String, String>>) -> Result<String, (StatusCode, String)> {
    let ms: u64 = q
        .get("ms")
        .ok_or((StatusCode::BAD_REQUEST, "missing ?ms=N\n".to_string()))?
        .parse()
        .map_err(|_| {
            (
                StatusCode::BAD_REQUEST,
                "ms must be a whole number of milliseconds\n".to_string(),
            )
        })?;
    let ms = ms.min(MAX_SLEEP_MS);
    tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
    Ok(format!("slept {ms} ms\n"))
}

async fn status(Path(code): Path<u16>) -> (StatusCode, String) {
    match StatusCode::from_u16(code) {
        Ok(s) => (s, format!("{code}\n")),
        Err(_) => (
            StatusCode::BAD_REQUEST,
            format!("{code} is not an HTTP status\n"),
        ),
    }
}

/// Resolves on SIGTERM or SIGINT.
async fn terminated() {
    use tokio::signal::unix::{signal, SignalKind};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        // Without signal handlers we can still serve; the process then dies on the signal itself.
        _ => std::future::pending::<()>().await,
    }
}
