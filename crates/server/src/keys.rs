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

/// What kind of thing a key names, for the event stream.
pub fn subject(key: &str) -> &'static str {
    if key.starts_with(NODES) {
        "node"
    } else if key.starts_with(INSTANCES) {
        "instance"
    } else if key.starts_with(ROLLOUTS) {
        "rollout"
    } else if key.starts_with(RELEASES) {
        "release"
    } else if key.starts_with(PINS) {
        "pin"
    } else if key.starts_with(MAINTENANCE) {
        "maintenance"
    } else if key.starts_with(SECRETS) || key.starts_with(SECRET_VERSIONS) {
        "secret"
    } else if key.starts_with(crate::seal::SECRET_KEYS) {
        "secret-key"
    } else if key == GC_GENERATION {
        "gc"
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
    }
}
