//! [`EtcdStore`]: the [`Store`] trait on an etcd cluster (`etcd-client`, etcd's v3 gRPC API), for
//! several `berth server` replicas (`berth server --store etcd://h1:2379,h2:2379,h3:2379`).
//!
//! etcd's data model *is* the trait's (the trait was written after it), so the mapping is
//! direct: revisions, `mod_revision` compares, one transaction per [`Txn`], prefix watches from
//! a revision with the previous value. What this module adds:
//!
//! - **A key prefix** (`--etcd-prefix`, default `/berth`): berth key `/nodes/n1` is etcd key
//!   `/berth/nodes/n1`, so several clusters (or other users) share one etcd without seeing each
//!   other. berth keys (and prefixes) must start with `/` here, so a prefix `/berth` can never
//!   reach into `/berth2/…`.
//! - **Compaction surfaces as [`StoreError::Compacted`]** on the watch stream (etcd cancels a
//!   watch whose start revision was compacted away), so the cluster view lists again.
//! - **Revisions are etcd's**: one counter for the whole etcd cluster. They start at 1, not 0,
//!   and writes outside the prefix move them too: they grow, but not always by exactly 1 per
//!   berth transaction. Nothing in berth relies on the step.
//! - [`Store::forget`] does nothing: etcd keeps old values until it is compacted (berth's
//!   secret values are sealed, see the server's `seal` module; compact etcd as its own
//!   documentation says, e.g. `--auto-compaction-retention`).

use async_trait::async_trait;
use etcd_client::{
    Client, Compare as EtcdCompare, CompareOp, ConnectOptions, DeleteOptions, EventType,
    GetOptions, KvClient, LeaseClient, MaintenanceClient, PutOptions, TxnOp, TxnOpResponse,
    WatchClient, WatchOptions,
};
use tokio::sync::mpsc;

use crate::{
    Compare, CompareTarget, EventKind, KeyValue, Op, OpResponse, RangeResponse, Store, StoreError,
    Txn, TxnResponse, WatchEvent, WatchStream,
};

/// The etcd key prefix when `--etcd-prefix` is not given.
pub const DEFAULT_PREFIX: &str = "/berth";

/// The largest message read from etcd (a range of a big store); etcd's own request limit
/// (`--max-request-bytes`, 1.5 MiB by default) bounds a single write.
const MAX_DECODING_BYTES: usize = 256 * 1024 * 1024;

/// Events buffered per watch for its reader; a slower reader makes the forwarding task wait
/// (etcd then holds the events), nothing is dropped.
const WATCH_BUFFER: usize = 1024;

/// A [`Store`] on an etcd cluster.
#[derive(Clone)]
pub struct EtcdStore {
    kv: KvClient,
    watch: WatchClient,
    maintenance: MaintenanceClient,
    /// Leases, for leader election (see [`EtcdStore::campaign`]).
    lease: LeaseClient,
    /// The etcd key prefix, without a trailing `/`.
    prefix: String,
    /// The endpoints, for messages.
    endpoints: String,
}

impl std::fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdStore")
            .field("endpoints", &self.endpoints)
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

/// The endpoints of an `etcd://h1:2379,h2:2379` store URL, as `http://h1:2379`, …
///
/// `Err` says what is wrong with it.
pub fn parse_url(url: &str) -> Result<Vec<String>, String> {
    let rest = url.strip_prefix("etcd://").ok_or_else(|| {
        format!("{url:?} is not an etcd URL: write etcd://HOST:PORT[,HOST:PORT…]")
    })?;
    let mut endpoints = Vec::new();
    for part in rest.split(',') {
        let part = part.trim().trim_end_matches('/');
        let (host, port) = part
            .rsplit_once(':')
            .ok_or_else(|| format!("{part:?} in {url:?} has no port: write HOST:PORT (etcd's client port is usually 2379)"))?;
        if host.is_empty() || port.parse::<u16>().is_err() {
            return Err(format!(
                "{part:?} in {url:?} is not HOST:PORT (a port is a number up to 65535)"
            ));
        }
        endpoints.push(format!("http://{part}"));
    }
    Ok(endpoints)
}

/// An etcd key prefix as `--etcd-prefix` takes it: `/name[/name…]`, kept without a trailing
/// `/`. `Err` says what is wrong.
pub fn normalize_prefix(prefix: &str) -> Result<String, String> {
    let trimmed = prefix.trim_end_matches('/');
    if !trimmed.starts_with('/') || trimmed.len() < 2 || trimmed.contains("//") {
        return Err(format!(
            "--etcd-prefix {prefix:?} must be a path such as /berth (it starts with `/`, and names one place in etcd)"
        ));
    }
    Ok(trimmed.to_string())
}

/// How long one lease or campaign request may take: past it etcd counts as unreachable, so a
/// leader with a cut-off etcd notices within its lease instead of hanging.
const LEASE_REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// `f`, failed with a timeout after [`LEASE_REQUEST_TIMEOUT`].
async fn bounded<T>(
    f: impl std::future::Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, etcd_client::Error> {
    match tokio::time::timeout(LEASE_REQUEST_TIMEOUT, f).await {
        Ok(r) => r,
        Err(_) => Err(etcd_client::Error::IoError(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "no answer within 2 s",
        ))),
    }
}

fn unavailable(endpoints: &str, what: &str, e: etcd_client::Error) -> StoreError {
    StoreError::Unavailable(format!(
        "etcd at {endpoints}: {what} failed: {e}; check that etcd runs there and --store names its client URLs"
    ))
}

impl EtcdStore {
    /// Connects to `endpoints` (`http://host:port`, see [`parse_url`]) with berth's keys under
    /// `prefix` (see [`normalize_prefix`]), and checks that etcd answers, so a wrong address
    /// fails at start rather than at the first request.
    pub async fn connect(endpoints: &[String], prefix: &str) -> Result<Self, StoreError> {
        let prefix = normalize_prefix(prefix).map_err(StoreError::InvalidTxn)?;
        let names = endpoints.join(",");
        let options = ConnectOptions::default()
            .with_connect_timeout(std::time::Duration::from_secs(5))
            .with_keep_alive(
                std::time::Duration::from_secs(2),
                std::time::Duration::from_secs(5),
            );
        let client = Client::connect(endpoints, Some(options))
            .await
            .map_err(|e| unavailable(&names, "connecting", e))?;
        let store = EtcdStore {
            kv: client
                .kv_client()
                .max_decoding_message_size(MAX_DECODING_BYTES),
            watch: client
                .watch_client()
                .max_decoding_message_size(MAX_DECODING_BYTES),
            maintenance: client.maintenance_client(),
            lease: client.lease_client(),
            prefix,
            endpoints: names,
        };
        store.revision().await?;
        Ok(store)
    }

    /// The etcd key prefix berth's keys live under.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The etcd key of berth key `key` (which must start with `/`).
    fn full_key(&self, key: &str) -> Result<String, StoreError> {
        if !key.starts_with('/') {
            return Err(StoreError::InvalidTxn(format!(
                "key {key:?} does not start with `/`, which the etcd store needs (its keys live under {}/)",
                self.prefix
            )));
        }
        Ok(format!("{}{key}", self.prefix))
    }

    /// The etcd prefix of berth prefix `prefix` (empty: every berth key).
    fn full_prefix(&self, prefix: &str) -> Result<String, StoreError> {
        if prefix.is_empty() {
            return Ok(format!("{}/", self.prefix));
        }
        self.full_key(prefix)
    }

    /// A berth [`KeyValue`] from etcd's (the prefix taken off).
    fn kv_of(&self, kv: &etcd_client::KeyValue) -> KeyValue {
        let key = String::from_utf8_lossy(kv.key());
        KeyValue {
            key: key
                .strip_prefix(self.prefix.as_str())
                .unwrap_or(&key)
                .to_string(),
            value: kv.value().to_vec(),
            create_revision: kv.create_revision(),
            mod_revision: kv.mod_revision(),
            version: kv.version(),
        }
    }

    fn compare_of(&self, c: &Compare) -> Result<EtcdCompare, StoreError> {
        let key = self.full_key(&c.key)?;
        Ok(match &c.target {
            CompareTarget::ModRevision(r) => EtcdCompare::mod_revision(key, CompareOp::Equal, *r),
            CompareTarget::Value(v) => EtcdCompare::value(key, CompareOp::Equal, v.clone()),
        })
    }

    fn op_of(&self, op: &Op) -> Result<TxnOp, StoreError> {
        Ok(match op {
            Op::Put { key, value } => TxnOp::put(self.full_key(key)?, value.clone(), None),
            Op::Delete { key } => TxnOp::delete(self.full_key(key)?, None),
            Op::DeletePrefix { prefix } => TxnOp::delete(
                self.full_prefix(prefix)?,
                Some(DeleteOptions::new().with_prefix()),
            ),
        })
    }

    /// Grants a lease of `ttl_secs` seconds: keys put under it vanish when it is neither kept
    /// alive nor revoked for that long (a crashed or paused server's leader key).
    pub async fn grant_lease(&self, ttl_secs: i64) -> Result<i64, StoreError> {
        let mut lease = self.lease.clone();
        let resp = bounded(lease.grant(ttl_secs, None))
            .await
            .map_err(|e| unavailable(&self.endpoints, "granting a lease", e))?;
        Ok(resp.id())
    }

    /// Renews lease `id` once; `false` when it is gone (expired or revoked: whatever was put
    /// under it was deleted).
    pub async fn keep_alive_once(&self, id: i64) -> Result<bool, StoreError> {
        let mut lease = self.lease.clone();
        // etcd-client's keep_alive sends one renewal and reads its answer; a TTL of 0 in it
        // (the lease is gone) comes back as this error.
        match bounded(lease.keep_alive(id)).await {
            Ok(_) => Ok(true),
            Err(etcd_client::Error::LeaseKeepAliveError(e)) if e == "lease not found" => Ok(false),
            Err(e) => Err(unavailable(&self.endpoints, "renewing a lease", e)),
        }
    }

    /// Revokes lease `id` at once, deleting its keys (a graceful stop resigns this way).
    pub async fn revoke_lease(&self, id: i64) -> Result<(), StoreError> {
        let mut lease = self.lease.clone();
        bounded(lease.revoke(id))
            .await
            .map_err(|e| unavailable(&self.endpoints, "revoking a lease", e))?;
        Ok(())
    }

    /// Campaigns for berth key `key`: puts `value` under lease `lease` only if `key` does not
    /// exist. Returns `Some(mod_revision)` of the new key when this call won (the revision a
    /// leader's writes compare as their fence), `None` when someone else holds it.
    pub async fn campaign(
        &self,
        key: &str,
        value: Vec<u8>,
        lease: i64,
    ) -> Result<Option<i64>, StoreError> {
        let full = self.full_key(key)?;
        let request = etcd_client::Txn::new()
            .when([EtcdCompare::create_revision(
                full.clone(),
                CompareOp::Equal,
                0,
            )])
            .and_then([TxnOp::put(
                full,
                value,
                Some(PutOptions::new().with_lease(lease)),
            )]);
        let mut kv = self.kv.clone();
        let resp = bounded(kv.txn(request))
            .await
            .map_err(|e| unavailable(&self.endpoints, "a leader campaign", e))?;
        Ok(resp
            .succeeded()
            .then(|| resp.header().map(|h| h.revision()).unwrap_or(0)))
    }

    /// Compacts etcd's history up to `revision` (physically), as an operator's
    /// `etcdctl compact` would: watches from before it then fail with
    /// [`StoreError::Compacted`]. For tests and tools; berth itself never compacts.
    pub async fn compact(&self, revision: i64) -> Result<(), StoreError> {
        let mut kv = self.kv.clone();
        kv.compact(
            revision,
            Some(etcd_client::CompactionOptions::new().with_physical()),
        )
        .await
        .map_err(|e| unavailable(&self.endpoints, "compacting", e))?;
        Ok(())
    }
}

#[async_trait]
impl Store for EtcdStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        let mut kv = self.kv.clone();
        let resp = kv
            .get(self.full_key(key)?, None)
            .await
            .map_err(|e| unavailable(&self.endpoints, "a read", e))?;
        Ok(resp.kvs().first().map(|k| self.kv_of(k)))
    }

    async fn range(&self, prefix: &str) -> Result<RangeResponse, StoreError> {
        let mut kv = self.kv.clone();
        let resp = kv
            .get(
                self.full_prefix(prefix)?,
                Some(GetOptions::new().with_prefix()),
            )
            .await
            .map_err(|e| unavailable(&self.endpoints, "a range read", e))?;
        let revision = resp.header().map(|h| h.revision()).unwrap_or(0);
        // etcd sorts a range by key (bytes) unless asked otherwise, as the trait wants.
        let kvs = resp.kvs().iter().map(|k| self.kv_of(k)).collect();
        Ok(RangeResponse { kvs, revision })
    }

    async fn txn(&self, txn: Txn) -> Result<TxnResponse, StoreError> {
        crate::embedded::validate_branch(&txn.success, "success")?;
        crate::embedded::validate_branch(&txn.failure, "failure")?;
        let compares = txn
            .compares
            .iter()
            .map(|c| self.compare_of(c))
            .collect::<Result<Vec<_>, _>>()?;
        let success = txn
            .success
            .iter()
            .map(|o| self.op_of(o))
            .collect::<Result<Vec<_>, _>>()?;
        let failure = txn
            .failure
            .iter()
            .map(|o| self.op_of(o))
            .collect::<Result<Vec<_>, _>>()?;
        let request = etcd_client::Txn::new()
            .when(compares)
            .and_then(success)
            .or_else(failure);
        let mut kv = self.kv.clone();
        let resp = kv
            .txn(request)
            .await
            .map_err(|e| unavailable(&self.endpoints, "a transaction", e))?;
        let responses = resp
            .op_responses()
            .into_iter()
            .map(|r| match r {
                TxnOpResponse::Delete(d) => OpResponse::Delete {
                    deleted: d.deleted(),
                },
                _ => OpResponse::Put,
            })
            .collect();
        Ok(TxnResponse {
            succeeded: resp.succeeded(),
            revision: resp.header().map(|h| h.revision()).unwrap_or(0),
            responses,
        })
    }

    async fn watch(&self, prefix: &str, from_revision: i64) -> Result<WatchStream, StoreError> {
        let full = self.full_prefix(prefix)?;
        let mut options = WatchOptions::new().with_prefix().with_prev_key();
        if from_revision > 0 {
            options = options.with_start_revision(from_revision);
        }
        let mut client = self.watch.clone();
        let mut stream = client
            .watch(full, Some(options))
            .await
            .map_err(|e| unavailable(&self.endpoints, "starting a watch", e))?;
        let (tx, rx) = mpsc::channel(WATCH_BUFFER);
        let store = self.clone();
        tokio::spawn(async move {
            let mut next = from_revision;
            loop {
                let message = tokio::select! {
                    _ = tx.closed() => break,
                    m = stream.message() => m,
                };
                let resp = match message {
                    Ok(Some(resp)) => resp,
                    // The stream ended (etcd closed it): the reader lists and watches again.
                    Ok(None) => break,
                    Err(e) => {
                        let _ = tx
                            .send(Err(unavailable(&store.endpoints, "a watch", e)))
                            .await;
                        break;
                    }
                };
                if resp.compact_revision() > 0 {
                    let _ = tx
                        .send(Err(StoreError::Compacted {
                            requested: next,
                            compact_revision: resp.compact_revision(),
                        }))
                        .await;
                    break;
                }
                if resp.canceled() {
                    let _ = tx
                        .send(Err(StoreError::Unavailable(format!(
                            "etcd at {} cancelled a watch: {}; the reader lists again",
                            store.endpoints,
                            resp.cancel_reason()
                        ))))
                        .await;
                    break;
                }
                for event in resp.events() {
                    let Some(kv) = event.kv() else { continue };
                    let kind = match event.event_type() {
                        EventType::Put => EventKind::Put,
                        EventType::Delete => EventKind::Delete,
                    };
                    let kv = store.kv_of(kv);
                    next = kv.mod_revision + 1;
                    let out = WatchEvent {
                        revision: kv.mod_revision,
                        kind,
                        kv,
                        prev: event.prev_kv().map(|p| store.kv_of(p)),
                    };
                    if tx.send(Ok(out)).await.is_err() {
                        return;
                    }
                }
            }
        });
        Ok(WatchStream::from_receiver(rx))
    }

    async fn revision(&self) -> Result<i64, StoreError> {
        let mut kv = self.kv.clone();
        // A read of one key: its header carries the store's revision.
        let resp = kv
            .get(
                format!("{}/", self.prefix),
                Some(GetOptions::new().with_count_only()),
            )
            .await
            .map_err(|e| unavailable(&self.endpoints, "reading the revision", e))?;
        Ok(resp.header().map(|h| h.revision()).unwrap_or(0))
    }

    async fn health(&self) -> Result<(), StoreError> {
        let mut m = self.maintenance.clone();
        m.status()
            .await
            .map_err(|e| unavailable(&self.endpoints, "a status check", e))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_urls_and_prefixes_are_checked() {
        assert_eq!(
            parse_url("etcd://h1:2379,h2:2380").expect("ok"),
            vec!["http://h1:2379", "http://h2:2380"]
        );
        assert!(parse_url("http://h1:2379").is_err());
        assert!(parse_url("etcd://h1")
            .expect_err("no port")
            .contains("HOST:PORT"));
        assert!(parse_url("etcd://h1:99999").is_err());
        assert_eq!(normalize_prefix("/berth/").expect("ok"), "/berth");
        assert_eq!(normalize_prefix("/a/b").expect("ok"), "/a/b");
        assert!(normalize_prefix("berth").is_err());
        assert!(normalize_prefix("/").is_err());
    }
}
