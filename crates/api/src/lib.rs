//! Wire types shared by the server, the agent, the router and the CLI.
//!
//! Pure: serde and `berth-spec` only, so every shell can depend on it without pulling in another
//! shell. Agents dial the server, so every type here travels over HTTP as JSON.
//!
//! # Map
//! - [`InstanceSpec`] — what the server hands an agent: one instance to run, fully rendered.
//! - [`InstanceStatus`] / [`InstanceState`] — what the agent observes and reports back.
//!
//! # Vocabulary
//! - **instance** — one running copy of a service on a node. Its `id` is unique in the cluster
//!   and never reused: a new release means new instance ids, so an instance's spec never changes.
//! - **resolved port** — a named port after the agent picked a free one for a declared `0`.

#![forbid(unsafe_code)]

pub mod control;
pub mod identity;
pub mod join;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// One instance the server wants an agent to run.
///
/// The server renders the service for the node's region before sending it (`${region}`
/// substituted), so the agent never needs to know about stacks, environments or overlays.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstanceSpec {
    /// Unique, never reused; also a directory name on the agent, so `[A-Za-z0-9._-]+`.
    pub id: String,
    /// The stack the service belongs to.
    pub stack: String,
    /// The service's name in its stack (`BERTH_SERVICE`).
    pub service: String,
    /// The release number this instance belongs to (`BERTH_RELEASE`).
    pub release: u64,
    /// The node that runs it (`BERTH_NODE`).
    pub node: String,
    /// The service, rendered and region-substituted.
    pub spec: berth_spec::model::Service,
    /// For an `image:` service whose release pinned it: the image id (`sha256:…`) the agent
    /// must create the container from, so that a rollback runs exactly the bytes the release
    /// ran, even if the tag has moved since, and without a registry when the image is on the
    /// node. Kept out of [`spec`](Self::spec) on purpose: the rollout controller compares
    /// `spec` with the target service to tell which instances belong to the target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_id: Option<String>,
    /// The values of the service's `secrets`, by name, as the secret store held them when the
    /// server created the instance: the agent adds them to the workload's environment (after
    /// the service's `env`, before `PORT*` and `BERTH_*`). Only ever sent to the instance's own
    /// node over its authenticated desired-instances long-poll; never part of a status, an
    /// event, a plan or a release, and the agent keeps them in memory only (its `instance.json`
    /// holds the spec without them). Kept out of [`spec`](Self::spec) for the same reason as
    /// `image_id`, and because the spec is what plans and releases show.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub secret_env: BTreeMap<String, String>,
}

impl InstanceSpec {
    /// A copy without the secrets' values: what may be written to disk or shown.
    pub fn without_secret_values(&self) -> InstanceSpec {
        InstanceSpec {
            secret_env: BTreeMap::new(),
            ..self.clone()
        }
    }
}

/// An instance's lifecycle state, as the design's vocabulary names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InstanceState {
    /// Desired but not started yet (waiting for a dependency, or a restart back-off).
    Pending,
    /// The process runs; its health check has not passed yet.
    Starting,
    /// Running, and its health check passes (or it has none): it may take traffic.
    Healthy,
    /// Running, but its health check fails: routers stop sending it traffic.
    Unhealthy,
    /// Being stopped: signalled, within its stop grace.
    Draining,
    /// Exited cleanly or was stopped on purpose, and is not restarted.
    Stopped,
    /// Exited with a failure and its restart policy says not to restart it (or it cannot start).
    Failed,
}

impl InstanceState {
    /// Whether a router may send this instance traffic.
    pub fn serves_traffic(self) -> bool {
        self == InstanceState::Healthy
    }

    /// Whether this state is final: nothing runs, and nothing will until the desired set changes.
    pub fn is_terminal(self) -> bool {
        matches!(self, InstanceState::Stopped | InstanceState::Failed)
    }
}

/// What an agent observed about one instance.
///
/// Agents publish the whole set on each heartbeat; a repeated status is harmless.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstanceStatus {
    /// The [`InstanceSpec::id`] this is about.
    pub id: String,
    /// The lifecycle state.
    pub state: InstanceState,
    /// The workload's process id on its node, while one runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    /// Named ports with every `0` resolved to the port the agent picked; what the registry
    /// publishes as the instance's endpoints.
    pub ports: BTreeMap<String, u16>,
    /// How many times the agent restarted this instance after it exited.
    pub restarts: u32,
    /// Why the instance is in this state, for people: an exit code, a failing probe, an error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// When the instance entered `state`, in milliseconds since the Unix epoch (agent's clock).
    pub since_ms: u64,
    /// For an `image:` instance, the id (`sha256:…`) of the image its container was created
    /// from: what the server pins in the instance's release (see `Release::images`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_id: Option<String>,
}

/// An instance's main port, the one exported as `PORT` and shown by `berth status`: the port
/// named `http` if there is one, else the first by name. One rule, so the address people see is
/// the one the instance serves on.
pub fn primary_port(ports: &BTreeMap<String, u16>) -> Option<(&str, u16)> {
    ports
        .get_key_value("http")
        .or_else(|| ports.iter().next())
        .map(|(n, p)| (n.as_str(), *p))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_serialise_as_the_design_names_them() {
        let names: Vec<String> = [
            InstanceState::Pending,
            InstanceState::Starting,
            InstanceState::Healthy,
            InstanceState::Unhealthy,
            InstanceState::Draining,
            InstanceState::Stopped,
            InstanceState::Failed,
        ]
        .iter()
        .map(|s| serde_json::to_string(s).unwrap())
        .collect();
        assert_eq!(
            names,
            [
                "\"pending\"",
                "\"starting\"",
                "\"healthy\"",
                "\"unhealthy\"",
                "\"draining\"",
                "\"stopped\"",
                "\"failed\""
            ]
        );
    }

    #[test]
    fn status_round_trips_and_omits_empty_options() {
        let s = InstanceStatus {
            id: "web-1".into(),
            state: InstanceState::Healthy,
            pid: None,
            ports: BTreeMap::from([("http".into(), 4242)]),
            restarts: 0,
            message: None,
            since_ms: 1,
            image_id: None,
        };
        let json = serde_json::to_string(&s).unwrap();
        assert!(
            !json.contains("pid") && !json.contains("message") && !json.contains("image_id"),
            "{json}"
        );
        assert_eq!(serde_json::from_str::<InstanceStatus>(&json).unwrap(), s);
    }
}
