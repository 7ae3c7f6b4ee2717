//! A simulated router: it long-polls the routing table with its router id and the version it
//! has applied (the admin token, as an edge `berth router`), and "applies" each table the
//! moment it arrives, so its next poll acknowledges it.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use berth_client::Client;

use super::change::Change;
use super::clock;
use super::tally::Errors;

/// How long one routing-table long-poll waits (as `berth router`).
const POLL_WAIT: Duration = Duration::from_secs(20);

/// A running simulated router, stopped when dropped.
pub struct Router(tokio::task::JoinHandle<()>);

impl Drop for Router {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Starts router number `index` (id `bench-router-INDEX`).
pub fn spawn(index: usize, client: Client, change: Arc<Change>, errors: Arc<Errors>) -> Router {
    Router(tokio::spawn(async move {
        let id = format!("bench-router-{index}");
        let mut version: Option<String> = None;
        let mut held = HashSet::new();
        let mut backoff = Duration::from_millis(100);
        loop {
            match client
                .routes(Some(&id), version.as_deref(), POLL_WAIT)
                .await
            {
                Ok(table) => {
                    let at = clock::now();
                    backoff = Duration::from_millis(100);
                    if version.as_deref() != Some(table.version.as_str()) {
                        change.applied(index, &table, at, &mut held);
                        version = Some(table.version);
                    }
                }
                Err(e) => {
                    errors.note("routes", &e);
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }))
}
