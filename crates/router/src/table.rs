//! The routing table as the shell hands it in.
//!
//! These are plain data, serialisable with serde, so the agent (or a standalone edge router) can
//! receive them from the server as JSON and pass them on untouched. The router never mutates a
//! table: [`crate::RouterHandle::update`] compiles it into a lock-free lookup structure and swaps
//! that in atomically.
//!
//! Every field added after the first version has a serde default, so a table written by an older
//! server (or by hand) still deserialises and means what it meant: no limits, no maintenance,
//! equal weights.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

/// Every route the router knows at one moment.
///
/// A table is always replaced whole, never patched: a router that loses contact with the
/// control plane keeps serving its last complete table (static stability), and there is no
/// half-applied state to reason about.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteTable {
    /// The routes, in any order. Lookup order is decided by the router (longest prefix first
    /// within a host); when two entries share a host and prefix, the first one listed wins.
    pub routes: Vec<RouteEntry>,
}

/// One service exposed under a host and a path prefix.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteEntry {
    /// The `Host` a request must carry, matched case-insensitively and without its port
    /// (`Shop.Local:8080` matches `shop.local`).
    pub host: String,
    /// The path prefix, matched on segment boundaries: `/api` matches `/api` and `/api/x` but
    /// not `/apix`; `/` (or an empty string) matches every path. A trailing `/` is ignored.
    pub path_prefix: String,
    /// The service's name, used in error bodies and as the key of the request counters.
    pub service: String,
    /// The healthy instances to spread requests over. Empty means the route is known but
    /// nothing can serve it: requests get `503`, not `404`.
    pub endpoints: Vec<Endpoint>,
    /// Overload protection for the service (Twitter's TFE): at most `concurrency` requests
    /// forwarded at once, at most `queue` more waiting, each for at most `queue_timeout_ms`.
    /// `None`: no limit. Limits belong to the *service*: when several routes name the same
    /// service, the first route with limits sets them and all its routes share one budget.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<Limits>,
    /// When set, the router answers every request of this route with `503` and a maintenance
    /// page, and never contacts the instances (they keep running, untouched).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maintenance: Option<Maintenance>,
    /// How long an instance may take to send the response head (after the request was sent)
    /// before the router gives up with `504` (a hung backend must not hold a client forever).
    /// `None`: the router's default ([`crate::RouterConfig::response_timeout`]). The body that
    /// follows the head is not limited: a streamed answer may take as long as it takes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
}

/// A service's concurrency limit and bounded queue; see [`RouteEntry::limits`].
///
/// Beyond `concurrency + queue` requests, or after `queue_timeout_ms` in the queue, a request
/// gets `503` with `Retry-After` at once: a quick "no" that a client can act on is better than
/// a slow one that piles up sockets in front of an app that is already saturated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// Requests forwarded to the service's instances at the same time (per router). `0` admits
    /// nothing: every request is queued, then rejected.
    pub concurrency: u32,
    /// Requests allowed to wait for a free slot; `0` means no queue (reject at once).
    #[serde(default)]
    pub queue: u32,
    /// How long a request may wait in the queue before it is rejected.
    #[serde(default = "default_queue_timeout_ms")]
    pub queue_timeout_ms: u64,
}

fn default_queue_timeout_ms() -> u64 {
    1_000
}

/// Maintenance mode for a route; see [`RouteEntry::maintenance`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Maintenance {
    /// The HTML page to answer with (the contents, not a path: the control plane reads the
    /// operator's file once and ships the text in the table, so every router serves the same
    /// page without access to the operator's disk). `None`: a short built-in page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub page_html: Option<String>,
}

/// One healthy instance of a service, as the registry reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    /// Where the instance listens for HTTP/1.1.
    pub addr: SocketAddr,
    /// The instance id, for logs.
    pub instance: String,
    /// The release the instance belongs to. Endpoints of one release form a **release group**;
    /// weights split traffic between groups.
    pub release: u64,
    /// This endpoint's share of the route's traffic, in any unit (percent is natural).
    ///
    /// The router honours weights *per release group*: a group receives
    /// `sum(weights of its endpoints) / sum(all weights)` of the requests, chosen at random in
    /// that proportion, so a canary at 10% gets 10% whatever its instance count. Within a group
    /// instances are interchangeable, and each request goes to the one with the fewest
    /// outstanding requests (so a slow instance gets less). A canary controller that wants
    /// 90/10 over 3 stable and 1 canary instance sets 30, 30, 30 and 10. A group whose weights
    /// are all `0` gets traffic only when every other group's endpoints are ejected. Default
    /// `100`.
    #[serde(default = "default_weight")]
    pub weight: u32,
}

/// The weight an endpoint has when the table does not say.
pub const DEFAULT_WEIGHT: u32 = 100;

fn default_weight() -> u32 {
    DEFAULT_WEIGHT
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn old_tables_deserialise_with_defaults() {
        let json = r#"{"routes":[{"host":"a","path_prefix":"/","service":"s",
            "endpoints":[{"addr":"127.0.0.1:1","instance":"i","release":1}]}]}"#;
        let table: RouteTable = serde_json::from_str(json).expect("old table");
        let route = &table.routes[0];
        assert_eq!(route.limits, None);
        assert_eq!(route.maintenance, None);
        assert_eq!(route.timeout_ms, None);
        assert_eq!(route.endpoints[0].weight, DEFAULT_WEIGHT);
        let back: RouteTable =
            serde_json::from_str(&serde_json::to_string(&table).expect("ser")).expect("de");
        assert_eq!(back, table);
    }

    #[test]
    fn limits_default_their_queue() {
        let limits: Limits = serde_json::from_str(r#"{"concurrency":4}"#).expect("limits");
        assert_eq!(
            limits,
            Limits {
                concurrency: 4,
                queue: 0,
                queue_timeout_ms: 1_000
            }
        );
    }
}
