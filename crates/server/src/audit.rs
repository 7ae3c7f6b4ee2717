//! The audit log: every mutating call, every refusal by the policy table and every failed
//! authentication, appended to the store (`/audit/SEQ`, so the etcd backend replicates it).
//!
//! Each entry carries the previous entry's hash and its own: the SHA-256 of the entry's JSON
//! with `hash` empty (the struct's field order is fixed, so the bytes are too). `/audit-head`
//! holds the first kept and the last entry's numbers and hashes and is written in the same
//! transaction as each entry, compared by revision, so two servers never write the same
//! number, and removing the newest entries shows as well as editing one. [`verify`] names the
//! first entry whose content, link or presence is wrong.
//!
//! Retention ([`Retention`]) trims the oldest entries by count or age, in the append's own
//! transaction, and moves the head's `first_seq` / `first_prev_hash` past them: the kept chain
//! still verifies from the trimmed prefix's last hash.
//!
//! Entries hold no secret values: the result is a status class, never a server message (a
//! render error may quote a `--set` value), and the target is names from the route.
//! Failed authentications are bounded twice: the per-source [`crate::auth::FailureLimiter`]
//! (a throttled source's failures are not appended), and a global budget
//! ([`FAILED_AUTH_PER_WINDOW`] per [`FAILED_AUTH_WINDOW_MS`]) whose overflow is counted and
//! written into the next entry, so a flood from many addresses cannot fill the store.

use berth_api::identity::{AuditEntry, AuditVerify};
use berth_store::{Compare, Op, Txn};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::state::StateError;
use crate::{keys, Shared};

/// The hash the first entry links to.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";
/// Failed authentications appended per window, whatever their sources.
pub const FAILED_AUTH_PER_WINDOW: u32 = 20;
/// The window of [`FAILED_AUTH_PER_WINDOW`].
pub const FAILED_AUTH_WINDOW_MS: u64 = 10_000;
/// Most entries one append trims (the rest go with the following appends).
const TRIM_BATCH: u64 = 256;
/// Most problems [`verify`] lists.
const MAX_PROBLEMS: usize = 100;
/// How many times an append retries when another server appended first.
const APPEND_ATTEMPTS: usize = 8;

/// How much of the log is kept: at most `keep` entries, none older than `max_age_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Most entries kept.
    pub keep: u64,
    /// Oldest entry kept (ms); checked every [`AGE_CHECK_EVERY`] appends.
    pub max_age_ms: u64,
}

/// Appends between two age checks (an age check reads the oldest entries).
pub const AGE_CHECK_EVERY: u64 = 64;

impl Default for Retention {
    /// 100,000 entries or 400 days, whichever is reached first.
    fn default() -> Self {
        Retention {
            keep: 100_000,
            max_age_ms: 400 * 24 * 3600 * 1000,
        }
    }
}

/// Where the kept chain starts and ends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditHead {
    /// The first kept entry's number (1 until retention trims).
    pub first_seq: u64,
    /// The hash the first kept entry links to: the trimmed prefix's last hash.
    pub first_prev_hash: String,
    /// The last entry's number (0: none yet).
    pub last_seq: u64,
    /// The last entry's hash.
    pub last_hash: String,
}

impl Default for AuditHead {
    fn default() -> Self {
        AuditHead {
            first_seq: 1,
            first_prev_hash: GENESIS.to_string(),
            last_seq: 0,
            last_hash: GENESIS.to_string(),
        }
    }
}

/// What a caller records; [`append`] numbers, times and chains it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Record {
    /// Who (see [`AuditEntry::user`]).
    pub user: String,
    /// Their role, or `-`.
    pub role: String,
    /// Their address, or `-`.
    pub source: String,
    /// `METHOD /v1/route/{pattern}`.
    pub action: String,
    /// `STACK/ENV`, a name, or `-`.
    pub target: String,
    /// The plan id, if any.
    pub plan_id: String,
    /// `ok`, `denied: …`, `refused`, `unauthorized`, `failed STATUS`.
    pub result: String,
}

/// The hash of an entry: SHA-256 of its JSON with `hash` empty, hex.
pub fn hash_of(entry: &AuditEntry) -> String {
    let mut unhashed = entry.clone();
    unhashed.hash = String::new();
    hex::encode(Sha256::digest(crate::state::encode(&unhashed)))
}

/// Entry number `seq` of `record` at `time_ms`, linked to `prev_hash`.
pub fn chain(record: &Record, seq: u64, time_ms: u64, prev_hash: &str) -> AuditEntry {
    let or_dash = |s: &str| {
        if s.is_empty() {
            "-".to_string()
        } else {
            s.to_string()
        }
    };
    let mut entry = AuditEntry {
        seq,
        time_ms,
        user: or_dash(&record.user),
        role: or_dash(&record.role),
        source: or_dash(&record.source),
        action: or_dash(&record.action),
        target: or_dash(&record.target),
        plan_id: record.plan_id.clone(),
        result: or_dash(&record.result),
        prev_hash: prev_hash.to_string(),
        hash: String::new(),
    };
    entry.hash = hash_of(&entry);
    entry
}

/// The audit log's in-memory part: the retention, and the failed-authentication budget.
#[derive(Debug, Default)]
pub struct AuditLog {
    /// Orders this server's appends (each is also a compare-and-swap on the head).
    lock: tokio::sync::Mutex<()>,
    /// How much is kept.
    pub retention: std::sync::Mutex<Retention>,
    failures: std::sync::Mutex<FailureBudget>,
}

/// The global budget of appended failed authentications (a pure core: time is passed in).
#[derive(Debug, Default, Clone, Copy)]
pub struct FailureBudget {
    window_start_ms: u64,
    used: u32,
    /// Failures not appended since the last one that was.
    suppressed: u64,
}

impl FailureBudget {
    /// Whether a failure at `now_ms` is appended: `Some(n)` with the failures left out before
    /// it (to be written into it), or `None` (counted, left out).
    pub fn admit(&mut self, now_ms: u64) -> Option<u64> {
        if now_ms.saturating_sub(self.window_start_ms) >= FAILED_AUTH_WINDOW_MS {
            self.window_start_ms = now_ms;
            self.used = 0;
        }
        if self.used >= FAILED_AUTH_PER_WINDOW {
            self.suppressed += 1;
            return None;
        }
        self.used += 1;
        Some(std::mem::take(&mut self.suppressed))
    }
}

impl AuditLog {
    /// Whether a failed authentication now is appended (see [`FailureBudget::admit`]).
    pub fn admit_failure(&self, now_ms: u64) -> Option<u64> {
        self.failures.lock().ok()?.admit(now_ms)
    }
}

async fn read_head(shared: &Shared) -> Result<(AuditHead, i64), StateError> {
    match shared.store.get(keys::AUDIT_HEAD).await? {
        Some(kv) => Ok((
            crate::state::decode(keys::AUDIT_HEAD, &kv.value)?,
            kv.mod_revision,
        )),
        None => Ok((AuditHead::default(), 0)),
    }
}

async fn read_entry(shared: &Shared, seq: u64) -> Result<Option<AuditEntry>, StateError> {
    let key = keys::audit_entry(seq);
    match shared.store.get(&key).await? {
        Some(kv) => Ok(Some(crate::state::decode(&key, &kv.value)?)),
        None => Ok(None),
    }
}

/// Why an append failed.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error(transparent)]
    State(#[from] StateError),
    #[error("the audit log kept changing under this server's append (another server appending fast); the entry was not written")]
    KeptChanging,
}

impl From<berth_store::StoreError> for AuditError {
    fn from(e: berth_store::StoreError) -> Self {
        AuditError::State(e.into())
    }
}

/// Appends `record` (one store transaction, plus reads when retention trims).
pub async fn append(shared: &Shared, record: &Record) -> Result<AuditEntry, AuditError> {
    let _order = shared.audit.lock.lock().await;
    let retention = shared
        .audit
        .retention
        .lock()
        .map(|r| *r)
        .unwrap_or_default();
    for _ in 0..APPEND_ATTEMPTS {
        let (head, revision) = read_head(shared).await?;
        let now = shared.clock.now_ms();
        let seq = head.last_seq + 1;
        let entry = chain(record, seq, now, &head.last_hash);
        let mut next = AuditHead {
            last_seq: seq,
            last_hash: entry.hash.clone(),
            ..head.clone()
        };
        let mut ops = vec![Op::Put {
            key: keys::audit_entry(seq),
            value: crate::state::encode(&entry),
        }];
        // Count: keep at most `keep` (never fewer than the new entry).
        let kept = seq + 1 - next.first_seq;
        let mut new_first = next.first_seq;
        if kept > retention.keep.max(1) {
            new_first += (kept - retention.keep.max(1)).min(TRIM_BATCH);
        }
        // Age: every AGE_CHECK_EVERY appends, walk the oldest entries.
        if seq % AGE_CHECK_EVERY == 0 {
            while new_first < seq && new_first < next.first_seq + TRIM_BATCH {
                match read_entry(shared, new_first).await? {
                    Some(e) if now.saturating_sub(e.time_ms) > retention.max_age_ms => {
                        new_first += 1
                    }
                    Some(_) => break,
                    // Already gone: move past it.
                    None => new_first += 1,
                }
            }
        }
        if new_first > next.first_seq {
            let prev = if new_first == seq {
                head.last_hash.clone()
            } else {
                match read_entry(shared, new_first).await? {
                    Some(e) => e.prev_hash,
                    None => GENESIS.to_string(),
                }
            };
            for s in next.first_seq..new_first {
                ops.push(Op::Delete {
                    key: keys::audit_entry(s),
                });
            }
            next.first_seq = new_first;
            next.first_prev_hash = prev;
        }
        ops.push(Op::Put {
            key: keys::AUDIT_HEAD.to_string(),
            value: crate::state::encode(&next),
        });
        let resp = shared
            .store
            .txn(Txn {
                compares: vec![Compare::mod_revision(keys::AUDIT_HEAD, revision)],
                success: ops,
                failure: vec![],
            })
            .await?;
        if resp.succeeded {
            return Ok(entry);
        }
    }
    Err(AuditError::KeptChanging)
}

/// Appends, logging (not failing) when the store refuses: the call it records already
/// happened, and its answer should not change because the log could not be written.
pub async fn record(shared: &Shared, record: &Record) {
    if let Err(e) = append(shared, record).await {
        tracing::error!(error = %e, action = %record.action, user = %record.user, "cannot append to the audit log");
    }
}

/// Every kept entry and the head.
pub async fn read_all(
    shared: &Shared,
) -> Result<(Option<AuditHead>, Vec<(String, Vec<u8>)>), StateError> {
    // One range over both keys would include unrelated keys; two reads at most a revision
    // apart. A write between them shows as an entry past the head, which `verify` ignores.
    let head = match shared.store.get(keys::AUDIT_HEAD).await? {
        Some(kv) => Some(crate::state::decode(keys::AUDIT_HEAD, &kv.value)?),
        None => None,
    };
    let resp = shared.store.range(keys::AUDIT).await?;
    Ok((
        head,
        resp.kvs.into_iter().map(|kv| (kv.key, kv.value)).collect(),
    ))
}

/// Checks the chain: every entry from the head's `first_seq` to its `last_seq` present,
/// readable, hashing to its `hash`, and linking to the one before. Pure.
pub fn verify(head: Option<&AuditHead>, entries: &[(String, Vec<u8>)]) -> AuditVerify {
    let mut problems = Vec::new();
    let fallback = AuditHead::default();
    let head = match head {
        Some(h) => h,
        None => {
            if !entries.is_empty() {
                problems.push(format!(
                    "the audit head ({}) is missing while {} entries exist: it was removed",
                    keys::AUDIT_HEAD,
                    entries.len()
                ));
            }
            &fallback
        }
    };
    let mut by_seq = std::collections::BTreeMap::new();
    for (key, value) in entries {
        let seq = key
            .strip_prefix(keys::AUDIT)
            .and_then(|s| s.parse::<u64>().ok());
        match seq {
            Some(seq) => {
                by_seq.insert(seq, value);
            }
            None => problems.push(format!("{key}: not an audit entry's key")),
        }
    }
    let mut prev = head.first_prev_hash.clone();
    let mut checked = 0u64;
    let last = head
        .last_seq
        .max(by_seq.keys().next_back().copied().unwrap_or(0));
    for seq in head.first_seq..=last {
        if problems.len() >= MAX_PROBLEMS {
            problems.push("… (more problems not listed)".to_string());
            break;
        }
        checked += 1;
        let Some(bytes) = by_seq.get(&seq) else {
            if seq <= head.last_seq {
                problems.push(format!("entry {seq}: missing (removed from the store)"));
            }
            // Its hash is unknown: the next entry is checked against what it says.
            prev = String::new();
            continue;
        };
        if seq > head.last_seq {
            // Appended after the head was read (a concurrent write), or planted.
            problems.push(format!(
                "entry {seq}: past the head's last entry {} (written without the head: planted, or appended while verifying — run verify again)",
                head.last_seq
            ));
            continue;
        }
        let entry: AuditEntry = match serde_json::from_slice(bytes) {
            Ok(e) => e,
            Err(_) => {
                problems.push(format!("entry {seq}: unreadable (edited in the store)"));
                prev = String::new();
                continue;
            }
        };
        if entry.seq != seq {
            problems.push(format!(
                "entry {seq}: says it is entry {} (moved or edited)",
                entry.seq
            ));
        }
        if hash_of(&entry) != entry.hash {
            problems.push(format!(
                "entry {seq}: its content does not match its hash (edited in the store)"
            ));
        }
        if !prev.is_empty() && entry.prev_hash != prev {
            problems.push(format!(
                "entry {seq}: does not link to entry {} (the entry before it was edited, removed or replaced)",
                seq.saturating_sub(1)
            ));
        }
        if seq == head.last_seq && entry.hash != head.last_hash {
            problems.push(format!(
                "entry {seq}: is not the entry the head recorded last (replaced)"
            ));
        }
        prev = entry.hash.clone();
    }
    for seq in by_seq.keys().filter(|s| **s < head.first_seq) {
        problems.push(format!(
            "entry {seq}: before the first kept entry {} (retention trimmed it, yet it is there: planted)",
            head.first_seq
        ));
    }
    AuditVerify {
        ok: problems.is_empty(),
        entries: checked,
        first_seq: head.first_seq,
        last_seq: head.last_seq,
        problems,
    }
}

/// Which entries `berth audit` shows.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Filter {
    /// Entries at or after this time (ms).
    #[serde(default)]
    pub since: Option<u64>,
    /// Entries of this user.
    #[serde(default)]
    pub user: Option<String>,
    /// Entries whose target is this stack (`STACK` or `STACK/…`).
    #[serde(default)]
    pub stack: Option<String>,
    /// At most this many (the newest); default [`DEFAULT_LIMIT`], at most [`MAX_LIMIT`].
    #[serde(default)]
    pub limit: Option<usize>,
}

/// Entries shown without `limit`.
pub const DEFAULT_LIMIT: usize = 1000;
/// Most entries one answer holds.
pub const MAX_LIMIT: usize = 10_000;

impl Filter {
    /// Whether `e` passes.
    pub fn passes(&self, e: &AuditEntry) -> bool {
        self.since.is_none_or(|t| e.time_ms >= t)
            && self.user.as_ref().is_none_or(|u| &e.user == u)
            && self.stack.as_ref().is_none_or(|s| {
                e.target == *s
                    || e.target
                        .strip_prefix(s.as_str())
                        .is_some_and(|rest| rest.starts_with('/'))
            })
    }
}

/// The newest entries passing `filter`, oldest first; unreadable entries are skipped (verify
/// names them).
pub fn select(entries: &[(String, Vec<u8>)], filter: &Filter) -> Vec<AuditEntry> {
    let limit = filter.limit.unwrap_or(DEFAULT_LIMIT).min(MAX_LIMIT);
    let mut out: Vec<AuditEntry> = entries
        .iter()
        .rev()
        .filter_map(|(_, v)| serde_json::from_slice::<AuditEntry>(v).ok())
        .filter(|e| filter.passes(e))
        .take(limit)
        .collect();
    out.reverse();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(user: &str) -> Record {
        Record {
            user: user.into(),
            role: "admin".into(),
            source: "127.0.0.1".into(),
            action: "POST /v1/deploy".into(),
            target: "shop/staging".into(),
            plan_id: "p1".into(),
            result: "ok".into(),
        }
    }

    fn build(n: u64) -> (AuditHead, Vec<(String, Vec<u8>)>) {
        let mut head = AuditHead::default();
        let mut entries = vec![];
        for seq in 1..=n {
            let e = chain(&rec("alice"), seq, seq * 10, &head.last_hash);
            head.last_seq = seq;
            head.last_hash = e.hash.clone();
            entries.push((keys::audit_entry(seq), crate::state::encode(&e)));
        }
        (head, entries)
    }

    #[test]
    fn an_intact_chain_verifies() {
        let (head, entries) = build(5);
        let v = verify(Some(&head), &entries);
        assert!(v.ok, "{:?}", v.problems);
        assert_eq!(v.entries, 5);
    }

    #[test]
    fn an_edited_byte_names_its_entry() {
        let (head, mut entries) = build(5);
        let bytes = &mut entries[2].1;
        let at = bytes
            .windows(5)
            .position(|w| w == b"alice")
            .expect("user in the entry");
        bytes[at] = b'b';
        let v = verify(Some(&head), &entries);
        assert!(!v.ok);
        assert!(
            v.problems[0].starts_with("entry 3: its content does not match"),
            "{:?}",
            v.problems
        );
        // A byte that breaks the JSON is named too.
        let (head, mut entries) = build(5);
        entries[1].1[0] = b'x';
        let v = verify(Some(&head), &entries);
        assert!(
            v.problems[0].starts_with("entry 2: unreadable"),
            "{:?}",
            v.problems
        );
    }

    #[test]
    fn a_removed_entry_is_named_even_the_last() {
        let (head, mut entries) = build(5);
        entries.remove(1);
        let v = verify(Some(&head), &entries);
        assert!(
            v.problems.iter().any(|p| p.starts_with("entry 2: missing")),
            "{:?}",
            v.problems
        );
        let (head, mut entries) = build(5);
        entries.pop();
        let v = verify(Some(&head), &entries);
        assert!(
            v.problems.iter().any(|p| p.starts_with("entry 5: missing")),
            "{:?}",
            v.problems
        );
    }

    #[test]
    fn a_trimmed_prefix_still_verifies_from_its_last_hash() {
        let (mut head, mut entries) = build(6);
        let first_kept: AuditEntry = serde_json::from_slice(&entries[3].1).expect("entry");
        entries.drain(0..3);
        head.first_seq = 4;
        head.first_prev_hash = first_kept.prev_hash;
        let v = verify(Some(&head), &entries);
        assert!(v.ok, "{:?}", v.problems);
        assert_eq!(v.entries, 3);
        // Without the kept hash, the trim would look like an edit.
        head.first_prev_hash = GENESIS.to_string();
        assert!(!verify(Some(&head), &entries).ok);
    }

    #[test]
    fn the_failure_budget_bounds_appends_and_counts_the_rest() {
        let mut b = FailureBudget::default();
        let t = 1_000_000;
        for _ in 0..FAILED_AUTH_PER_WINDOW {
            assert_eq!(b.admit(t), Some(0));
        }
        for _ in 0..500 {
            assert_eq!(b.admit(t + 1), None);
        }
        assert_eq!(b.admit(t + FAILED_AUTH_WINDOW_MS), Some(500));
    }

    #[test]
    fn the_stack_filter_matches_whole_names() {
        let f = Filter {
            stack: Some("shop".into()),
            ..Filter::default()
        };
        let mut e = chain(&rec("a"), 1, 1, GENESIS);
        assert!(f.passes(&e));
        e.target = "shopping/staging".into();
        assert!(!f.passes(&e));
    }
}

#[cfg(test)]
mod store_tests {
    use std::sync::Arc;

    use super::*;

    /// Retention by count through real appends: the oldest go, the head keeps the trimmed
    /// prefix's last hash, and the kept chain verifies.
    #[tokio::test]
    async fn retention_trims_the_oldest_and_the_chain_still_verifies() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = berth_store::EmbeddedStore::open(dir.path().join("state.redb"))
            .await
            .expect("store");
        let shared = crate::Shared::new(crate::ServerConfig {
            data_dir: dir.path().to_path_buf(),
            store: Arc::new(store),
            clock: crate::Clock::system(),
            tls: None,
            secrets_key_file: None,
        })
        .await
        .expect("shared");
        *shared.audit.retention.lock().expect("lock") = Retention {
            keep: 3,
            max_age_ms: u64::MAX,
        };
        for i in 0..10 {
            let r = Record {
                user: format!("u{i}"),
                ..Record::default()
            };
            append(&shared, &r).await.expect("append");
        }
        let (head, entries) = read_all(&shared).await.expect("read");
        let head = head.expect("head");
        assert_eq!((head.first_seq, head.last_seq), (8, 10));
        assert_eq!(entries.len(), 3);
        let v = verify(Some(&head), &entries);
        assert!(v.ok, "{:?}", v.problems);
        assert_eq!(v.entries, 3);
    }
}
