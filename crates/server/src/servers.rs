//! The control-plane servers (`berth servers`, `GET /v1/servers`): every replica on a shared
//! store reports itself under [`crate::keys::SERVERS`] every [`REPORT_EVERY`]; the leader is
//! whoever holds [`crate::leadership::LEADER_KEY`]. A server on the embedded store writes no
//! record (nothing shares its store): it answers with itself, the leader since it started.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::Json;
use berth_api::control::ServerView;
use serde::{Deserialize, Serialize};

use crate::error::ApiError;
use crate::http::Caller;
use crate::leadership::{LeaderRecord, LEADER_KEY};
use crate::Shared;

/// How often a replica rewrites its record: "last seen" is at most this old for a live one.
pub const REPORT_EVERY: Duration = Duration::from_secs(5);

/// What a server's record holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServerRecord {
    /// Its id (the API address).
    pub id: String,
    /// Its API URL.
    pub api: String,
    /// The berth version it runs.
    pub version: String,
    /// When it wrote this (ms since the epoch).
    pub last_seen_ms: u64,
}

impl ServerRecord {
    /// This server's record as of `now_ms`.
    pub fn of(id: &str, api: &str, now_ms: u64) -> Self {
        ServerRecord {
            id: id.to_string(),
            api: api.to_string(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            last_seen_ms: now_ms,
        }
    }
}

/// Writes this server's record now and every [`REPORT_EVERY`] until `stop` (several servers
/// on one store; a failed write is retried on the next round).
pub async fn report(shared: Arc<Shared>, mut stop: tokio::sync::watch::Receiver<bool>) {
    loop {
        if *stop.borrow() {
            return;
        }
        if let Some(me) = shared.me.get() {
            let record = ServerRecord {
                last_seen_ms: shared.clock.now_ms(),
                ..me.clone()
            };
            let value = serde_json::to_vec(&record).unwrap_or_default();
            if let Err(e) = shared.store.put(&crate::keys::server(&me.id), value).await {
                tracing::warn!(error = %e, "cannot record this server in the store; retrying");
            }
        }
        tokio::select! {
            _ = stop.changed() => {}
            _ = tokio::time::sleep(REPORT_EVERY) => {}
        }
    }
}

/// The servers, sorted by id, from their records, this server's own (it is alive: seen now)
/// and the leader key.
pub fn views(
    records: Vec<ServerRecord>,
    me: Option<&ServerRecord>,
    leader: Option<&LeaderRecord>,
    me_leads_since: Option<u64>,
    now_ms: u64,
) -> Vec<ServerView> {
    let mut by_id: std::collections::BTreeMap<String, ServerRecord> =
        records.into_iter().map(|r| (r.id.clone(), r)).collect();
    if let Some(me) = me {
        by_id.insert(
            me.id.clone(),
            ServerRecord {
                last_seen_ms: now_ms,
                ..me.clone()
            },
        );
    }
    by_id
        .into_values()
        .map(|r| {
            let since = match leader {
                Some(l) if l.id == r.id => Some(l.since_ms),
                Some(_) => None,
                None if me.is_some_and(|m| m.id == r.id) => me_leads_since,
                None => None,
            };
            ServerView {
                leader: since.is_some(),
                leader_since_ms: since,
                last_seen_ms_ago: now_ms.saturating_sub(r.last_seen_ms),
                id: r.id,
                api: r.api,
                version: r.version,
                last_seen_ms: r.last_seen_ms,
            }
        })
        .collect()
}

/// `GET /v1/servers`: `berth servers`.
pub async fn list(
    State(shared): State<Arc<Shared>>,
    caller: Caller,
) -> Result<Json<Vec<ServerView>>, ApiError> {
    caller.require_admin()?;
    let records = shared
        .store
        .range(crate::keys::SERVERS)
        .await?
        .kvs
        .iter()
        .filter_map(|kv| serde_json::from_slice::<ServerRecord>(&kv.value).ok())
        .collect();
    let leader = shared
        .store
        .get(LEADER_KEY)
        .await?
        .and_then(|kv| serde_json::from_slice::<LeaderRecord>(&kv.value).ok());
    let me_leads_since = shared.leadership.is_leading().then_some(shared.started_ms);
    Ok(Json(views(
        records,
        shared.me.get(),
        leader.as_ref(),
        me_leads_since,
        shared.clock.now_ms(),
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(id: &str, seen: u64) -> ServerRecord {
        ServerRecord {
            id: id.into(),
            api: format!("http://{id}"),
            version: "1".into(),
            last_seen_ms: seen,
        }
    }

    #[test]
    fn the_leader_key_marks_one_server_and_this_one_is_seen_now() {
        let leader = LeaderRecord {
            id: "b".into(),
            api: "http://b".into(),
            since_ms: 500,
        };
        let v = views(
            vec![rec("a", 100), rec("b", 900)],
            Some(&rec("a", 0)),
            Some(&leader),
            Some(1),
            1000,
        );
        assert_eq!(v.len(), 2);
        assert!(!v[0].leader && v[0].last_seen_ms_ago == 0, "{v:?}");
        assert!(v[1].leader && v[1].leader_since_ms == Some(500));
        assert_eq!(v[1].last_seen_ms_ago, 100);
        // The embedded store: no leader key, this server leads since it started.
        let v = views(vec![], Some(&rec("a", 0)), None, Some(7), 1000);
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].leader_since_ms, Some(7));
    }
}
