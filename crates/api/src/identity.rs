//! Users, roles and the audit log on the wire (issue 13): what `berth user`, `berth token
//! rotate` and `berth audit` send and receive.
//!
//! A user token is `berth_u_NAME.SECRET` (SECRET: 64 lower-case hex digits). The fixed prefix
//! lets secret scanners (GitHub's, gitleaks) recognise a leaked berth token; the name inside
//! lets the server find the user's record with one store read. The server keeps only the
//! token's SHA-256.

use serde::{Deserialize, Serialize};

/// The prefix of every user token.
pub const USER_TOKEN_PREFIX: &str = "berth_u_";

/// What a user may do, as a set of capabilities (the server's policy table maps each route
/// to one capability; a role is the set it grants).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Reads status, history, events, plans and logs; never secret values.
    Viewer,
    /// A viewer that also deploys, rolls back, steers rollouts, scales and sets maintenance,
    /// within its stacks and environments.
    Deployer,
    /// A viewer that also approves pending plans.
    Approver,
    /// Everything: users, secrets, nodes and hooks included.
    Admin,
}

impl Role {
    /// Every role, in the order the CLI lists them.
    pub const ALL: [Role; 4] = [Role::Viewer, Role::Deployer, Role::Approver, Role::Admin];

    /// The role's name as the CLI and the API spell it.
    pub fn name(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Deployer => "deployer",
            Role::Approver => "approver",
            Role::Admin => "admin",
        }
    }

    /// Parses a role name (`viewer|deployer|approver|admin`).
    pub fn parse(s: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.name() == s)
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// `POST /v1/users`: a new user. Empty `stacks` / `envs` mean every stack / environment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserAdd {
    /// `[a-z][a-z0-9-]*`, at most 63 characters; `admin` is the bootstrap admin's.
    pub name: String,
    /// What the user may do.
    pub role: Role,
    /// The stacks the user may act on (empty: all).
    #[serde(default)]
    pub stacks: Vec<String>,
    /// The environments the user may act in (empty: all).
    #[serde(default)]
    pub envs: Vec<String>,
}

/// A user as the API shows it: never the token, nor its hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserView {
    /// The user's name: `who` in releases, events and the audit log.
    pub name: String,
    /// What the user may do.
    pub role: Role,
    /// The stacks the user may act on (empty: all).
    #[serde(default)]
    pub stacks: Vec<String>,
    /// The environments the user may act in (empty: all).
    #[serde(default)]
    pub envs: Vec<String>,
    /// When the user was added (ms since the epoch).
    pub created_ms: u64,
    /// When the token was last issued (added or rotated), ms since the epoch.
    pub token_issued_ms: u64,
}

/// The answer to `berth user add` and `berth token rotate`: the token, shown this once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserToken {
    /// The user the token belongs to.
    pub user: UserView,
    /// `berth_u_NAME.SECRET`; the server keeps only its SHA-256.
    pub token: String,
}

/// One entry of the audit log. `hash` is the SHA-256 (hex) of `prev_hash` and every other
/// field (see the server's `audit` module), so editing or removing an entry breaks the chain
/// at that entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// Position in the log, from 1, never reused (trimming keeps the numbers).
    pub seq: u64,
    /// When (ms since the epoch).
    pub time_ms: u64,
    /// Who: a user's name, `admin` for the admin token, `node:NAME` for an agent, `-` when
    /// authentication failed.
    pub user: String,
    /// The user's role (`-` when there is none).
    pub role: String,
    /// The caller's address (`-` when unknown).
    pub source: String,
    /// What was asked: `METHOD /v1/route/{pattern}`.
    pub action: String,
    /// What it was asked of: `STACK/ENV`, `STACK/NAME`, a node or user name (`-` if none).
    pub target: String,
    /// The plan id the call produced or named, if any.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub plan_id: String,
    /// `ok` (2xx), `denied: missing capability C` (403), `refused` (428), `unauthorized`
    /// (401) or `failed STATUS`. Never a message that could carry a value.
    pub result: String,
    /// The previous entry's hash (the trimmed prefix's last hash for the first kept entry;
    /// 64 zeros for the very first).
    pub prev_hash: String,
    /// This entry's hash.
    pub hash: String,
}

/// `GET /v1/audit/verify`: whether the chain holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditVerify {
    /// Whether every entry's hash and link hold.
    pub ok: bool,
    /// How many entries were checked.
    pub entries: u64,
    /// The first kept entry's number (entries before it were trimmed by retention).
    pub first_seq: u64,
    /// The last entry's number (0: empty log).
    pub last_seq: u64,
    /// One line per problem, naming the entry (`entry 7: …`).
    #[serde(default)]
    pub problems: Vec<String>,
}
