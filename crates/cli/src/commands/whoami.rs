//! `berth whoami`: a tiny HTTP workload that says which instance answered.
//!
//! Enough to test routing, draining, canaries and analysis: `GET /` answers JSON
//! `{"service","instance","release","node","version"}`, `/healthz` 200, `/sleep?ms=N` after N ms,
//! `/status/CODE` with that status. On SIGTERM it stops accepting and finishes in-flight requests,
//! as a well-behaved service should during a deploy.
//!
//! A bad release for canary tests is the same demo with `FAIL_PERCENT` (that share of `GET /`
//! answers 500, spread evenly: exactly ⌊n × share⌋ of the first n, not a coin toss, so a test's
//! numbers are the same every run; `0.5` and `30%` are accepted) and `DELAY_MS` (`GET /` waits
//! that long first). A value that is not a number refuses to start, naming the variable.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use anyhow::Context;
use axum::extract::{Path, Query};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;

/// Longest `/sleep` (and `DELAY_MS`) accepted, so a typo cannot pin a connection for hours.
const MAX_SLEEP_MS: u64 = 600_000;

/// How a release misbehaves on `GET /`: `FAIL_PERCENT` (in basis points) and `DELAY_MS`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Misbehaviour {
    fail_basis_points: u32,
    delay_ms: u64,
}

impl Misbehaviour {
    /// From the two variables; an unset or empty one is 0.
    fn from_env() -> anyhow::Result<Self> {
        let var = |k: &str| std::env::var(k).unwrap_or_default();
        Self::parse(&var("FAIL_PERCENT"), &var("DELAY_MS"))
    }

    fn parse(fail: &str, delay: &str) -> anyhow::Result<Self> {
        let fail = fail.trim();
        let fail_basis_points = if fail.is_empty() {
            0
        } else {
            let with_sign = if fail.ends_with('%') {
                fail.to_string()
            } else {
                format!("{fail}%")
            };
            with_sign
                .parse::<berth_spec::model::BasisPoints>()
                .map_err(|e| anyhow::anyhow!("FAIL_PERCENT: {e}; like FAIL_PERCENT=30"))?
                .0
        };
        let delay = delay.trim();
        let delay_ms = if delay.is_empty() {
            0
        } else {
            delay
                .parse::<u64>()
                .map_err(|_| {
                    anyhow::anyhow!("DELAY_MS: `{delay}` is not a whole number of milliseconds; like DELAY_MS=200")
                })?
                .min(MAX_SLEEP_MS)
        };
        Ok(Misbehaviour {
            fail_basis_points,
            delay_ms,
        })
    }
}

/// Whether request number `n` (from 0) fails when `basis_points` of all requests should:
/// those where ⌊(n + 1) × share⌋ passes an integer, so the first n requests hold exactly
/// ⌊n × share⌋ failures.
fn fails(n: u64, basis_points: u32) -> bool {
    let bp = u128::from(basis_points.min(10_000));
    let (n, all) = (u128::from(n), 10_000u128);
    (n + 1) * bp / all > n * bp / all
}

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
    let misbehaviour = Misbehaviour::from_env()?;
    let served = Arc::new(AtomicU64::new(0));
    let root = move || {
        let identity = identity.clone();
        let served = served.clone();
        async move {
            if misbehaviour.delay_ms > 0 {
                tokio::time::sleep(std::time::Duration::from_millis(misbehaviour.delay_ms)).await;
            }
            let n = served.fetch_add(1, Ordering::Relaxed);
            if fails(n, misbehaviour.fail_basis_points) {
                return Err((
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "failing on purpose (FAIL_PERCENT)\n".to_string(),
                ));
            }
            Ok(Json(identity))
        }
    };
    let app = Router::new()
        .route("/", get(root))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fail_percent_fails_exactly_that_share_spread_out() {
        let failed = |bp: u32, n: u64| (0..n).filter(|i| fails(*i, bp)).count();
        assert_eq!(failed(3_000, 1_000), 300);
        assert_eq!(failed(3_000, 10), 3);
        assert_eq!(failed(50, 1_000), 5, "0.5 %");
        assert_eq!(failed(0, 1_000), 0);
        assert_eq!(failed(10_000, 7), 7);
        // Spread: no run of more than one failure at 30 %.
        assert!(!(0..999).any(|i| fails(i, 3_000) && fails(i + 1, 3_000)));
    }

    #[test]
    fn the_variables_parse_or_say_which_is_wrong() -> anyhow::Result<()> {
        assert_eq!(Misbehaviour::parse("", "")?, Misbehaviour::default());
        let m = Misbehaviour::parse("30", "200")?;
        assert_eq!((m.fail_basis_points, m.delay_ms), (3_000, 200));
        assert_eq!(Misbehaviour::parse("0.5%", "")?.fail_basis_points, 50);
        let e = Misbehaviour::parse("lots", "").unwrap_err().to_string();
        assert!(e.starts_with("FAIL_PERCENT:"), "{e}");
        assert!(Misbehaviour::parse("101", "").is_err());
        let e = Misbehaviour::parse("", "-5").unwrap_err().to_string();
        assert!(e.starts_with("DELAY_MS:"), "{e}");
        Ok(())
    }
}
