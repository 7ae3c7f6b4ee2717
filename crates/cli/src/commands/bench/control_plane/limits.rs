//! The open-files limit the benchmark needs: every simulated agent holds two connections (its
//! desired-instances long-poll and its heartbeats) and every router one, on both ends, in this
//! process and in the server child (which inherits the limit).

use anyhow::Context;
use berth_net::FdLimit;
use nix::sys::resource::{setrlimit, Resource};

/// Open files needed for `nodes` agents and `routers` routers: the server caps its connections
/// at three quarters of its limit (`berth_net::ConnLimits::for_fd_limit`), so a third more than
/// the connections, and room for the store, logs and admin calls.
pub fn files_needed(nodes: usize, routers: usize) -> u64 {
    let connections = 2 * nodes as u64 + routers as u64 + 64;
    connections * 4 / 3 + 1024
}

/// Raises the soft limit to the hard one, and past the hard one to `needed` when that is
/// short (which only a privileged process may do); fails, saying what to do, if the limit
/// stays below `needed`.
pub fn ensure(needed: u64) -> anyhow::Result<FdLimit> {
    let limit = berth_net::raise_fd_limit()
        .context("cannot read or raise the open-files limit (RLIMIT_NOFILE)")?;
    if limit.soft >= needed {
        return Ok(limit);
    }
    let hard = limit.hard.max(needed);
    if let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, needed, hard) {
        anyhow::bail!(
            "the benchmark needs {needed} open files for its connections and the hard limit is {} ({e}): raise it (`ulimit -Hn {needed}` as root, or LimitNOFILE= in a unit) or pass fewer --nodes",
            limit.hard
        );
    }
    berth_net::fd_limit().context("cannot read the open-files limit (RLIMIT_NOFILE)")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_for_two_connections_per_node_on_a_capped_server() {
        let n = files_needed(10_000, 100);
        assert!(n * 3 / 4 >= 2 * 10_000 + 100, "{n}");
        assert!(files_needed(1, 1) >= 1024);
    }

    #[test]
    fn a_limit_already_high_enough_is_kept() {
        let now = berth_net::fd_limit().unwrap();
        let after = ensure(now.soft.min(64)).unwrap();
        assert!(after.soft >= now.soft);
    }
}
