//! The store's key layout, in one place so that every reader and writer agrees.
//!
//! ```text
//! /nodes/NAME                      NodeRecord (registration; liveness is kept in memory)
//! /node-tokens/NAME                hex SHA-256 of the node's credential
//! /node-seen/NAME                  u64 ms: when a node that is down was last seen (written when
//!                                  it goes down, deleted when it calls in again)
//! /releases/STACK/ENV/NNNNNNNNNN   Release (immutable but for its status; written by a deploy
//!                                  or rollback, then only its status changes)
//! /pins/STACK/ENV/NNNNNNNNNN/SERVICE
//!                                  JSON string: the image id the release runs for SERVICE, as
//!                                  first reported by an agent (created once, never rewritten;
//!                                  deleted with its release). Readers merge these into
//!                                  `Release.images`; older versions kept them in the release
//!                                  record itself, which still reads the same
//! /rollouts/STACK/ENV              RolloutRecord: the current or last rollout
//! /instances/ID                    InstanceRecord: spec, what the server wants, what the agent saw
//! /maintenance/STACK/SERVICE       MaintenanceView, while the service is in maintenance mode
//! /gc/generation                   u64: bumped by every `berth gc`, sent to agents
//! /secrets/STACK/NAME              SecretRecord: a secret's value, sealed, and version (see
//!                                  `state`, `seal`)
//! /secret-versions/STACK/NAME      u64: the secret's last version, kept when it is deleted so a
//!                                  version number never names two different values
//! /users/NAME                      UserRecord: role, scopes, the token's SHA-256 (never the token)
//! /audit/NNNNNNNNNNNNNNNNNNNN      AuditEntry, hash-chained (see `audit`); never rewritten,
//!                                  deleted only by retention, oldest first
//! /audit-head                      AuditHead: the first kept and the last entry's numbers and
//!                                  hashes, written in the same transaction as every entry
//! /approvals/STACK/ENV/PLAN_ID    PendingApproval: a deploy or rollback waiting for `approval: N`
//!                                  approvers (see `approvals`); deleted when it runs
//! /secret-keys/NNNNNNNNNN          DataKeyRecord: a data key, wrapped by the key-encryption key
//!                                  in DATA_DIR/secrets.key (see `seal`); the highest is active
//! ```
//! Secret values are also copied, sealed, into the instance records of the services that
//! declare them (`InstanceRecord::sealed_env`); only the instance's own node gets them opened.
//! The store holds no plaintext value, but the key file opens them all: keep it apart from
//! copies of the store (backups hold ciphertext only).
//! Release numbers are zero-padded so that a prefix range returns them in order.

/// Prefix of every node record.
pub const NODES: &str = "/nodes/";
/// Prefix of every instance record.
pub const INSTANCES: &str = "/instances/";
/// Prefix of every rollout record.
pub const ROLLOUTS: &str = "/rollouts/";
/// Prefix of every release.
pub const RELEASES: &str = "/releases/";
/// Prefix of the services in maintenance mode.
pub const MAINTENANCE: &str = "/maintenance/";

/// Prefix of every secret.
pub const SECRETS: &str = "/secrets/";

/// Every secret of a stack.
pub fn secrets(stack: &str) -> String {
    format!("{SECRETS}{stack}/")
}

/// Prefix of every secret's last version.
pub const SECRET_VERSIONS: &str = "/secret-versions/";

/// The last version a secret had (survives its deletion).
pub fn secret_version(stack: &str, name: &str) -> String {
    format!("{SECRET_VERSIONS}{stack}/{name}")
}

/// One secret of a stack.
pub fn secret(stack: &str, name: &str) -> String {
    format!("{SECRETS}{stack}/{name}")
}

/// The garbage-collection generation (a JSON number), bumped by `berth gc`. In the store, not
/// in memory, so a `berth gc` issued while an agent is away still reaches it when it returns,
/// and a restarted server does not make every agent collect again.
pub const GC_GENERATION: &str = "/gc/generation";

/// A service's maintenance mode (present while it is on).
pub fn maintenance(stack: &str, service: &str) -> String {
    format!("{MAINTENANCE}{stack}/{service}")
}

/// A node's record.
pub fn node(name: &str) -> String {
    format!("{NODES}{name}")
}

/// Prefix of the marks of nodes that are down.
pub const NODE_SEEN: &str = "/node-seen/";

/// The mark of a node that is down: when it was last seen (a JSON number of ms).
pub fn node_seen(name: &str) -> String {
    format!("{NODE_SEEN}{name}")
}

/// Prefix of the cluster's admin and join token hashes (`/cluster-tokens/admin`,
/// `/cluster-tokens/join`): written by the first server, so every replica on the same store
/// accepts the tokens in that server's data directory.
pub const CLUSTER_TOKENS: &str = "/cluster-tokens/";

/// The hash of the cluster's token `name` (`admin` or `join`).
pub fn cluster_token(name: &str) -> String {
    format!("{CLUSTER_TOKENS}{name}")
}

/// Prefix of the control-plane servers' records (`berth servers`).
pub const SERVERS: &str = "/servers/";

/// Server `id`'s record.
pub fn server(id: &str) -> String {
    format!("{SERVERS}{id}")
}

/// Prefix of every node credential's hash.
pub const NODE_TOKENS: &str = "/node-tokens/";

/// A node credential's hash.
pub fn node_token(name: &str) -> String {
    format!("{NODE_TOKENS}{name}")
}

/// One instance.
pub fn instance(id: &str) -> String {
    format!("{INSTANCES}{id}")
}

/// The rollout of a stack in one environment.
pub fn rollout(stack: &str, env: &str) -> String {
    format!("{ROLLOUTS}{stack}/{env}")
}

/// Every release of a stack in one environment.
pub fn releases(stack: &str, env: &str) -> String {
    format!("{RELEASES}{stack}/{env}/")
}

/// One release.
pub fn release(stack: &str, env: &str, number: u64) -> String {
    format!("{RELEASES}{stack}/{env}/{number:010}")
}

/// Prefix of every image pin.
pub const PINS: &str = "/pins/";

/// Every image pin of a stack's releases in one environment.
pub fn pins(stack: &str, env: &str) -> String {
    format!("{PINS}{stack}/{env}/")
}

/// Every image pin of one release (a prefix: retention deletes it with the release).
pub fn release_pins(stack: &str, env: &str, number: u64) -> String {
    format!("{PINS}{stack}/{env}/{number:010}/")
}

/// The image id pinned for one service of one release.
pub fn pin(stack: &str, env: &str, number: u64, service: &str) -> String {
    format!("{PINS}{stack}/{env}/{number:010}/{service}")
}

/// The parts of a pin key: (stack, env, release number, service); `None` for any other key.
pub fn parse_pin(key: &str) -> Option<(&str, &str, u64, &str)> {
    let mut parts = key.strip_prefix(PINS)?.splitn(4, '/');
    let (stack, env, number, service) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if service.is_empty() || service.contains('/') {
        return None;
    }
    Some((stack, env, number.parse().ok()?, service))
}

/// The stack (and environment, when the key has one) a key belongs to, from its path alone:
/// releases, rollouts and pins are `PREFIX/STACK/ENV/…`, secrets and maintenance
/// `PREFIX/STACK/NAME`. Instances carry theirs in the value, nodes have none.
pub fn stack_of(key: &str) -> Option<(&str, Option<&str>)> {
    for prefix in [RELEASES, ROLLOUTS, PINS, APPROVALS] {
        if let Some(rest) = key.strip_prefix(prefix) {
            let mut parts = rest.split('/');
            let stack = parts.next().filter(|s| !s.is_empty())?;
            return Some((stack, parts.next().filter(|e| !e.is_empty())));
        }
    }
    for prefix in [SECRETS, SECRET_VERSIONS, MAINTENANCE] {
        if let Some(rest) = key.strip_prefix(prefix) {
            let stack = rest.split('/').next().filter(|s| !s.is_empty())?;
            return Some((stack, None));
        }
    }
    None
}

/// Prefix of every pending approval.
pub const APPROVALS: &str = "/approvals/";

/// Every pending approval of a stack in one environment.
pub fn approvals(stack: &str, env: &str) -> String {
    format!("{APPROVALS}{stack}/{env}/")
}

/// One pending approval, by its plan id.
pub fn approval(stack: &str, env: &str, plan_id: &str) -> String {
    format!("{APPROVALS}{stack}/{env}/{plan_id}")
}

/// Prefix of every user record.
pub const USERS: &str = "/users/";

/// One user's record.
pub fn user(name: &str) -> String {
    format!("{USERS}{name}")
}

/// Prefix of every audit entry.
pub const AUDIT: &str = "/audit/";

/// One audit entry (zero-padded, so a prefix range returns them in order).
pub fn audit_entry(seq: u64) -> String {
    format!("{AUDIT}{seq:020}")
}

/// The audit log's head: where the kept chain starts and ends.
pub const AUDIT_HEAD: &str = "/audit-head";

/// What kind of thing a key names, for the event stream; `other` is the server's own
/// bookkeeping (credential hashes, …) and `audit` the audit log, which the stream does not
/// show.
pub fn subject(key: &str) -> &'static str {
    if key.starts_with(NODES) || key.starts_with(NODE_SEEN) {
        "node"
    } else if key.starts_with(INSTANCES) {
        "instance"
    } else if key.starts_with(ROLLOUTS) {
        "rollout"
    } else if key.starts_with(RELEASES) {
        "release"
    } else if key.starts_with(PINS) {
        "pin"
    } else if key.starts_with(APPROVALS) {
        "approval"
    } else if key.starts_with(MAINTENANCE) {
        "maintenance"
    } else if key.starts_with(SECRETS) || key.starts_with(SECRET_VERSIONS) {
        "secret"
    } else if key.starts_with(crate::seal::SECRET_KEYS) {
        "secret-key"
    } else if key == GC_GENERATION {
        "gc"
    } else if key.starts_with(USERS) {
        "user"
    } else if key.starts_with(AUDIT) || key == AUDIT_HEAD {
        "audit"
    } else {
        "other"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pin_key_names_its_release_and_service() {
        let key = pin("shop", "staging", 7, "web");
        assert_eq!(key, "/pins/shop/staging/0000000007/web");
        assert!(key.starts_with(&release_pins("shop", "staging", 7)));
        assert!(key.starts_with(&pins("shop", "staging")));
        assert_eq!(parse_pin(&key), Some(("shop", "staging", 7, "web")));
        assert_eq!(parse_pin("/pins/shop/staging/x/web"), None);
        assert_eq!(parse_pin("/pins/shop/staging/0000000007/"), None);
        assert_eq!(parse_pin(&release("shop", "staging", 7)), None);
        assert_eq!(subject(&key), "pin");
        assert_eq!(stack_of(&key), Some(("shop", Some("staging"))));
    }

    #[test]
    fn the_stack_of_a_key_comes_from_its_path() {
        assert_eq!(
            stack_of(&release("shop", "prod", 3)),
            Some(("shop", Some("prod")))
        );
        assert_eq!(
            stack_of(&rollout("shop", "prod")),
            Some(("shop", Some("prod")))
        );
        assert_eq!(stack_of(&maintenance("shop", "web")), Some(("shop", None)));
        assert_eq!(stack_of("/secrets/shop/DB_PASSWORD"), Some(("shop", None)));
        assert_eq!(stack_of(&node("n1")), None);
        assert_eq!(stack_of(&node_token("n1")), None);
        assert_eq!(stack_of("/releases/"), None);
        assert_eq!(subject(&node_seen("n1")), "node");
        assert_eq!(subject(&node_token("n1")), "other");
    }
}
