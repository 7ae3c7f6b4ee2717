//! Bearer tokens: created on first start, kept on disk as files only the owner can read, and
//! compared in constant time through their SHA-256 so a timing side channel reveals nothing.
//!
//! Three kinds of credential exist:
//! - the **admin token** (`DATA_DIR/admin.token`) for people and CI;
//! - the **join token** (`DATA_DIR/join.token`), which lets an agent register once;
//! - a **node token**, issued at registration, which the agent then uses for everything else.
//!
//! The join token is *name-bound*: it registers a name nobody holds yet, and that first
//! registration binds the name to the node token it issues. Re-registering a bound name takes
//! that node's current token (or the admin token), so the join token cannot take a node over.
//! `berth node rm NAME` unbinds the name.
//!
//! Node tokens are `NAME.SECRET`, the secret 64 lower-case hex digits: they are split at the
//! *last* dot, so a dotted node name (`web1.example.com`) authenticates like any other.
//!
//! Failed authentication is logged with its source address (never the token) and limited per
//! source by [`FailureLimiter`].

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// What went wrong with a token file; each names the file and what to do.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("cannot read token file {path}: {source}; check the --data-dir and its permissions")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write token file {path}: {source}; check the --data-dir is writable")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("token file {path} is empty or malformed; delete it to have a new token created")]
    Malformed { path: PathBuf },
}

/// A secret's SHA-256: what the server keeps in memory and in the store instead of the secret.
#[derive(Clone, PartialEq, Eq)]
pub struct TokenHash([u8; 32]);

impl std::fmt::Debug for TokenHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TokenHash({}…)", &hex::encode(self.0)[..8])
    }
}

impl TokenHash {
    /// Hashes a presented token.
    pub fn of(token: &str) -> Self {
        TokenHash(Sha256::digest(token.trim().as_bytes()).into())
    }

    /// Constant-time comparison with a presented token.
    pub fn matches(&self, token: &str) -> bool {
        bool::from(self.0.ct_eq(&Self::of(token).0))
    }

    /// Hex form, for storing a node token's hash in the store.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Parses the hex form written by [`TokenHash::to_hex`].
    pub fn from_hex(s: &str) -> Option<Self> {
        let bytes = hex::decode(s).ok()?;
        Some(TokenHash(bytes.try_into().ok()?))
    }
}

/// A new random token: 32 bytes from the OS generator, hex encoded.
pub fn generate() -> String {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    hex::encode(bytes)
}

/// Length of a node token's secret part: 32 random bytes, hex encoded.
pub const NODE_SECRET_LEN: usize = 64;
/// Longest node name: a DNS name (RFC 1123).
pub const MAX_NODE_NAME: usize = 253;
/// Longest label of a node name.
const MAX_LABEL: usize = 63;

/// Checks that `name` is a node name: a DNS name (RFC 1123) of lower-case labels, each 1–63 of
/// `[a-z0-9-]` not starting or ending with `-`, separated by single dots, 253 characters at
/// most. Node names appear in store keys, URLs, node tokens and router ids, so nothing else is
/// accepted. The error says what is wrong, for a 400 that names the field.
pub fn validate_node_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("a node name cannot be empty".to_string());
    }
    if name.len() > MAX_NODE_NAME {
        return Err(format!(
            "a node name has at most {MAX_NODE_NAME} characters; this one has {}",
            name.len()
        ));
    }
    for label in name.split('.') {
        if label.is_empty() {
            return Err(
                "a node name has no empty part: no leading, trailing or double `.`".to_string(),
            );
        }
        if label.len() > MAX_LABEL {
            return Err(format!(
                "each dot-separated part of a node name has at most {MAX_LABEL} characters"
            ));
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return Err(
                "use lower-case letters, digits, `-` and `.` (a DNS name, RFC 1123)".to_string(),
            );
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err("no part of a node name starts or ends with `-`".to_string());
        }
    }
    Ok(())
}

/// A new node token for `name`: `NAME.SECRET`.
pub fn new_node_token(name: &str) -> String {
    format!("{name}.{}", generate())
}

/// The node name a presented node token claims, if it has the node token's form: split at the
/// last `.` (names may contain dots, the secret never does), a valid name and a 64-hex secret.
pub fn node_token_name(token: &str) -> Option<&str> {
    let (name, secret) = token.rsplit_once('.')?;
    let hex = secret.len() == NODE_SECRET_LEN
        && secret
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    (hex && validate_node_name(name).is_ok()).then_some(name)
}

/// Reads the token in `dir/name`, creating it (mode 0600) on first start.
pub fn load_or_create(dir: &Path, name: &str) -> Result<String, TokenError> {
    let path = dir.join(name);
    match fs::read_to_string(&path) {
        Ok(s) => {
            let token = s.trim().to_string();
            if token.len() < 16 || !token.bytes().all(|b| b.is_ascii_alphanumeric()) {
                return Err(TokenError::Malformed { path });
            }
            // Tighten permissions if someone loosened them.
            let _ = fs::set_permissions(&path, fs::Permissions::from_mode(0o600));
            Ok(token)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let token = generate();
            write_secret(&path, &token).map_err(|source| TokenError::Write {
                path: path.clone(),
                source,
            })?;
            Ok(token)
        }
        Err(source) => Err(TokenError::Read { path, source }),
    }
}

/// The cluster's hash of its `name` token (`admin`, `join`), so tokens belong to the cluster,
/// not to one server: the first server on a store records its own token's hash (`local`);
/// every later one reads it. Returns the cluster's hash when it differs from `local` (a
/// replica with its own token file accepts both), `None` when they are the same.
pub async fn cluster_token(
    store: &dyn berth_store::Store,
    name: &str,
    local: &TokenHash,
) -> Result<Option<TokenHash>, berth_store::StoreError> {
    use berth_store::{Compare, Op, Txn};
    let key = crate::keys::cluster_token(name);
    // Create only if absent: two replicas starting at once agree on the first one's.
    store
        .txn(Txn {
            compares: vec![Compare::absent(key.as_str())],
            success: vec![Op::put(key.as_str(), local.to_hex().into_bytes())],
            failure: vec![],
        })
        .await?;
    let stored = store.get(&key).await?;
    let Some(cluster) = stored
        .as_ref()
        .and_then(|kv| std::str::from_utf8(&kv.value).ok())
        .and_then(TokenHash::from_hex)
    else {
        tracing::warn!(
            %key,
            "the store's cluster token hash is unreadable; only this server's {name}.token works here"
        );
        return Ok(None);
    };
    if cluster.0 == local.0 {
        return Ok(None);
    }
    tracing::info!(
        "this server's {name}.token is not the cluster's: both work here, and the cluster's (from the first server's data directory) works on every server"
    );
    Ok(Some(cluster))
}

/// Writes a secret file atomically with mode 0600 from the start (never briefly world-readable).
pub(crate) fn write_secret(path: &Path, content: &str) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(content.as_bytes())?;
    f.write_all(b"\n")?;
    f.sync_all()?;
    fs::rename(&tmp, path)?;
    if let Some(parent) = path.parent() {
        fs::File::open(parent)?.sync_all()?;
    }
    Ok(())
}

/// Failed authentications a source may make within [`FAILURE_WINDOW_MS`] before it is throttled.
/// High enough that a person mistyping, or a test that sends wrong tokens on purpose, never
/// meets it; low enough that a flood (a thousand guesses in a fraction of a second) is stopped
/// and cannot fill the log.
pub const FAILURES_ALLOWED: u32 = 100;
/// The window in which failures are counted.
pub const FAILURE_WINDOW_MS: u64 = 10_000;
/// The first throttle; every further one doubles, up to [`MAX_PENALTY_MS`].
pub const FIRST_PENALTY_MS: u64 = 1_000;
/// The longest throttle.
pub const MAX_PENALTY_MS: u64 = 300_000;
/// How many sources the limiter remembers: its memory is bounded whoever calls.
pub const MAX_SOURCES: usize = 4096;

/// What [`FailureLimiter::record_failure`] decided about one failed authentication.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// Under the limit: log it.
    Counted,
    /// This failure crossed the limit: the source is throttled for `penalty_ms` (log that once).
    Throttled { penalty_ms: u64 },
    /// The source is already throttled: not logged again.
    Suppressed,
}

#[derive(Debug, Clone, Copy)]
struct Source {
    window_start_ms: u64,
    failures: u32,
    blocked_until_ms: u64,
    /// The last throttle's length (0: never throttled, or forgiven after a quiet spell).
    penalty_ms: u64,
    last_failure_ms: u64,
}

/// Counts failed authentications per source address and throttles a source that fails too
/// often, with a back-off that doubles while it keeps failing. A pure core: time is passed in.
///
/// IPv6 sources are counted per /64 (one host can hold a whole /64), IPv4 per address. At most
/// [`MAX_SOURCES`] sources are remembered; when full, sources whose window has passed and that
/// are not throttled are forgotten first, then the one that failed longest ago.
#[derive(Debug, Default)]
pub struct FailureLimiter {
    sources: std::collections::HashMap<std::net::IpAddr, Source>,
}

/// The address a source is counted under.
fn source_key(ip: std::net::IpAddr) -> std::net::IpAddr {
    use std::net::{IpAddr, Ipv6Addr};
    match ip {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

impl FailureLimiter {
    /// How long `ip` is still throttled (ms), if it is.
    pub fn throttled(&self, ip: std::net::IpAddr, now_ms: u64) -> Option<u64> {
        let source = self.sources.get(&source_key(ip))?;
        (source.blocked_until_ms > now_ms).then(|| source.blocked_until_ms - now_ms)
    }

    /// How many sources are remembered.
    pub fn len(&self) -> usize {
        self.sources.len()
    }

    /// Whether no source is remembered.
    pub fn is_empty(&self) -> bool {
        self.sources.is_empty()
    }

    /// Counts one failed authentication from `ip`.
    pub fn record_failure(&mut self, ip: std::net::IpAddr, now_ms: u64) -> Failure {
        let key = source_key(ip);
        if !self.sources.contains_key(&key) && self.sources.len() >= MAX_SOURCES {
            self.make_room(now_ms);
        }
        let source = self.sources.entry(key).or_insert(Source {
            window_start_ms: now_ms,
            failures: 0,
            blocked_until_ms: 0,
            penalty_ms: 0,
            last_failure_ms: now_ms,
        });
        // A source quiet for a whole maximal throttle after its last one is forgiven.
        if source.penalty_ms > 0
            && now_ms.saturating_sub(source.blocked_until_ms.max(source.last_failure_ms))
                > MAX_PENALTY_MS
        {
            source.penalty_ms = 0;
        }
        source.last_failure_ms = now_ms;
        if source.blocked_until_ms > now_ms {
            return Failure::Suppressed;
        }
        if now_ms.saturating_sub(source.window_start_ms) > FAILURE_WINDOW_MS {
            source.window_start_ms = now_ms;
            source.failures = 0;
        }
        source.failures += 1;
        if source.failures <= FAILURES_ALLOWED {
            return Failure::Counted;
        }
        source.penalty_ms = if source.penalty_ms == 0 {
            FIRST_PENALTY_MS
        } else {
            (source.penalty_ms * 2).min(MAX_PENALTY_MS)
        };
        source.blocked_until_ms = now_ms + source.penalty_ms;
        source.window_start_ms = source.blocked_until_ms;
        source.failures = 0;
        Failure::Throttled {
            penalty_ms: source.penalty_ms,
        }
    }

    /// Forgets sources that no longer matter, or else the one that failed longest ago.
    fn make_room(&mut self, now_ms: u64) {
        self.sources.retain(|_, s| {
            s.blocked_until_ms > now_ms
                || now_ms.saturating_sub(s.window_start_ms) <= FAILURE_WINDOW_MS
                || (s.penalty_ms > 0 && now_ms.saturating_sub(s.blocked_until_ms) <= MAX_PENALTY_MS)
        });
        if self.sources.len() >= MAX_SOURCES {
            if let Some(oldest) = self
                .sources
                .iter()
                .min_by_key(|(_, s)| s.last_failure_ms)
                .map(|(k, _)| *k)
            {
                self.sources.remove(&oldest);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_created_once_with_mode_0600_and_reread() {
        let dir = tempfile::tempdir().unwrap();
        let a = load_or_create(dir.path(), "admin.token").unwrap();
        let b = load_or_create(dir.path(), "admin.token").unwrap();
        assert_eq!(a, b);
        let mode = fs::metadata(dir.path().join("admin.token"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(TokenHash::of(&a).matches(&a));
        assert!(!TokenHash::of(&a).matches("nope"));
    }

    #[test]
    fn a_malformed_token_file_is_an_error_not_a_silent_new_token() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("join.token"), "x\n").unwrap();
        assert!(matches!(
            load_or_create(dir.path(), "join.token"),
            Err(TokenError::Malformed { .. })
        ));
    }

    #[test]
    fn node_names_are_dns_names() {
        for ok in ["n1", "web1.example.com", "a", "a-b.c-d", &"a".repeat(63)] {
            assert!(validate_node_name(ok).is_ok(), "{ok}");
        }
        let long = vec!["a".repeat(63); 5].join(".");
        for bad in [
            "",
            ".",
            "..",
            "a..b",
            ".a",
            "a.",
            "-a",
            "a-",
            "A",
            "a_b",
            "a b",
            "a/b",
            "é",
            &"a".repeat(64),
            &"a".repeat(3000),
            &long,
        ] {
            assert!(validate_node_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn node_tokens_split_at_the_last_dot() {
        let token = new_node_token("web1.example.com");
        assert_eq!(node_token_name(&token), Some("web1.example.com"));
        assert_eq!(node_token_name(&new_node_token("n1")), Some("n1"));
        assert_eq!(node_token_name("n1.0123456789abcdef"), None, "short secret");
        assert_eq!(node_token_name(&format!("N1.{}", generate())), None);
        assert_eq!(node_token_name(&generate()), None, "no name");
    }

    #[test]
    fn the_limiter_throttles_with_a_doubling_back_off_and_forgives() {
        let ip: std::net::IpAddr = "192.0.2.1".parse().unwrap();
        let other: std::net::IpAddr = "192.0.2.2".parse().unwrap();
        let mut l = FailureLimiter::default();
        let mut now = 1_000_000;
        for _ in 0..FAILURES_ALLOWED {
            assert_eq!(l.record_failure(ip, now), Failure::Counted);
        }
        assert_eq!(
            l.record_failure(ip, now),
            Failure::Throttled {
                penalty_ms: FIRST_PENALTY_MS
            }
        );
        assert_eq!(l.throttled(ip, now), Some(FIRST_PENALTY_MS));
        assert_eq!(l.throttled(other, now), None, "per source");
        assert_eq!(l.record_failure(ip, now + 1), Failure::Suppressed);
        now += FIRST_PENALTY_MS;
        assert_eq!(l.throttled(ip, now), None);
        for _ in 0..FAILURES_ALLOWED {
            assert_eq!(l.record_failure(ip, now), Failure::Counted);
        }
        assert_eq!(
            l.record_failure(ip, now),
            Failure::Throttled {
                penalty_ms: 2 * FIRST_PENALTY_MS
            }
        );
        // Failures spread out under the limit never throttle.
        let mut t = now;
        for _ in 0..10 * FAILURES_ALLOWED {
            t += FAILURE_WINDOW_MS / u64::from(FAILURES_ALLOWED) * 2;
            assert_ne!(l.record_failure(other, t), Failure::Suppressed);
            assert_eq!(l.throttled(other, t), None);
        }
        // After a long quiet spell the back-off starts over.
        now += 3 * MAX_PENALTY_MS;
        for _ in 0..FAILURES_ALLOWED {
            l.record_failure(ip, now);
        }
        assert_eq!(
            l.record_failure(ip, now),
            Failure::Throttled {
                penalty_ms: FIRST_PENALTY_MS
            }
        );
    }

    #[test]
    fn the_limiter_is_bounded_and_counts_ipv6_per_64() {
        let mut l = FailureLimiter::default();
        for i in 0..(3 * MAX_SOURCES as u32) {
            let ip = std::net::IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            l.record_failure(ip, 5_000 + u64::from(i));
            assert!(l.len() <= MAX_SOURCES);
        }
        let mut l = FailureLimiter::default();
        for i in 0..(FAILURES_ALLOWED as u16 + 1) {
            let ip = std::net::IpAddr::V6(std::net::Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, i));
            l.record_failure(ip, 1);
        }
        assert_eq!(l.len(), 1);
        assert!(l.throttled("2001:db8::ffff".parse().unwrap(), 2).is_some());
    }
}
