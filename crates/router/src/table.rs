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
///
/// The progressive-delivery fields ([`RouteEntry::shares`] … [`RouteEntry::split`]) default to
/// nothing: traffic split by summed endpoint weights, no cookie, no matched header, no split.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
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
    /// When non-empty, the route's traffic is split between these release groups by basis
    /// points (of [`BASIS_POINTS`]) instead of by endpoint weights, and a client is placed by
    /// its sticky key ([`RouteEntry::sticky`]): the key is hashed with [`RouteEntry::salt`]
    /// into [`BASIS_POINTS`] buckets, the *last* share listed (the new release) owns buckets
    /// `[0, basis_points)` and the others follow in the order listed. So raising the new
    /// release's share only adds clients to it, and none leaves it (Flagger's cookies drift
    /// everyone to the canary, flagger#1532). Buckets past the shares' sum (a table that does
    /// not add up to 10,000) go to the first share listed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub shares: Vec<Share>,
    /// Salt of the sticky hash: a new salt per rollout reshuffles who goes first.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub salt: String,
    /// Where a client's sticky key comes from (used only with `shares` or `split`).
    #[serde(default, skip_serializing_if = "Sticky::is_cookie")]
    pub sticky: Sticky,
    /// Requests whose header matches go to that release at any share, counted as *matched*
    /// (apart from the per-arm requests the canary analysis reads).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub matched: Option<MatchRule>,
    /// An A/B split: a sticky share of the route's clients goes to another service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub split: Option<Split>,
}

/// All of a route: shares and splits are in basis points of this (0.5 % = 50).
pub const BASIS_POINTS: u32 = 10_000;

/// A release group's share of a route; see [`RouteEntry::shares`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Share {
    /// The release whose endpoints get this share.
    pub release: u64,
    /// Its share, in basis points of [`BASIS_POINTS`].
    pub basis_points: u32,
}

/// Where a client's sticky key comes from.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Sticky {
    /// A cookie named `berth_arm_<hash of host and prefix>`: read when the client sends it;
    /// otherwise the router mints a random key and sets the cookie on the answer.
    #[default]
    Cookie,
    /// The value of this request header (a user id, …); requests without it are placed at
    /// random.
    Header {
        /// The header's name.
        name: String,
    },
    /// Every request is placed at random.
    None,
}

impl Sticky {
    fn is_cookie(&self) -> bool {
        *self == Sticky::Cookie
    }
}

/// A header that sends requests to a release whatever the shares; see [`RouteEntry::matched`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MatchRule {
    /// The header's name (case-insensitive).
    pub header: String,
    /// The value it must have, exactly.
    pub value: String,
    /// Where matching requests go (when that release has endpoints; else as any request).
    pub release: u64,
}

/// An A/B split to another service; see [`RouteEntry::split`].
///
/// The split is decided first, with a salt of its own (the route's service and the split
/// service's names, not [`RouteEntry::salt`]), so it is independent of a canary's shares on
/// the same route and a client stays on its side of an experiment across deploys. Requests
/// sent to the split count in the split service's status counters and in an arm named after
/// it; the in-flight gauge and the duration histogram stay the route's service's. Its endpoints form a
/// pool apart: the route's own answers never go there, nor the split's to the route's own,
/// unless one side has no endpoint at all (an answer from the other service beats a 503).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Split {
    /// The other service, as counters name it (`STACK/SERVICE` from the server).
    pub service: String,
    /// The split's share of the route's clients, in basis points.
    pub basis_points: u32,
    /// Where a client's key for the split comes from.
    #[serde(default, skip_serializing_if = "Sticky::is_cookie")]
    pub sticky: Sticky,
    /// The other service's healthy instances.
    pub endpoints: Vec<Endpoint>,
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
