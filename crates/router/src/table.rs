//! The routing table as the shell hands it in.
//!
//! These are plain data, serialisable with serde, so the agent (or a standalone edge router) can
//! receive them from the server as JSON and pass them on untouched. The router never mutates a
//! table: [`crate::RouterHandle::update`] compiles it into a lock-free lookup structure and swaps
//! that in atomically.

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
    /// The healthy instances to spread requests over (round-robin). Empty means the route is
    /// known but nothing can serve it: requests get `503`, not `404`.
    pub endpoints: Vec<Endpoint>,
}

/// One healthy instance of a service, as the registry reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    /// Where the instance listens for HTTP/1.1.
    pub addr: SocketAddr,
    /// The instance id; kept for logs and for the weighted/draining routing of later versions.
    pub instance: String,
    /// The release the instance belongs to; canary and blue/green weights will select on it.
    pub release: u64,
}
