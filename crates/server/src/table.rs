//! The old home of the routing table, node liveness, router acknowledgements and the store
//! watcher, now split into modules with one job each. These re-exports keep the old
//! `table::` paths compiling for one release; use the new modules:
//! [`crate::routing`] (the table from the view, its cache, recent versions),
//! [`crate::liveness`] (in-memory heartbeats, `node_is_up`, down marks),
//! [`crate::routers`] (acknowledgements, `released_by_routers`),
//! [`crate::version`] (content versions) and [`crate::controllers::liveness`] (marking nodes
//! down).

pub use crate::controllers::liveness::run as follow_liveness;
pub use crate::liveness::{mark_alive, node_is_up, Known, NODE_TTL_MS};
pub use crate::routers::{
    check_router_id, record_ack, released_by_routers, RouterAck, RouterAcks, MAX_ADMIN_ROUTERS,
    MAX_ROUTER_ID, ROUTER_LIVENESS_MS,
};
pub use crate::routing::RecentTables;
pub use crate::version::content_version;
