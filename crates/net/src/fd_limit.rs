//! The open-files limit (`RLIMIT_NOFILE`): every connection is a file descriptor, and the soft
//! limit many systems start processes with (1,024) is what 1,100 idle connections exhausted.
//! berth raises the soft limit to the hard one at start (what nginx's
//! `worker_rlimit_nofile` and Go's runtime do), and its listeners size their connection caps
//! from the result ([`crate::ConnLimits::for_fd_limit`]).

use nix::sys::resource::{getrlimit, setrlimit, Resource, RLIM_INFINITY};

/// What a soft limit is raised to when the hard limit is "unlimited": Linux refuses more than
/// `fs.nr_open` (1,048,576 by default) for `RLIMIT_NOFILE`.
const UNLIMITED_TARGET: u64 = 1 << 20;

/// A process's open-files limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FdLimit {
    /// The limit that applies now.
    pub soft: u64,
    /// The most the soft limit may be raised to without privileges.
    pub hard: u64,
}

/// The current limits.
pub fn fd_limit() -> std::io::Result<FdLimit> {
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).map_err(std::io::Error::from)?;
    Ok(FdLimit { soft, hard })
}

/// Raises the soft open-files limit to the hard one (never lowers it) and returns the limits
/// now in force. Called by `berth server`, `berth up`, `berth agent` and `berth router` first
/// thing, before any listener sizes itself.
pub fn raise_fd_limit() -> std::io::Result<FdLimit> {
    let FdLimit { soft, hard } = fd_limit()?;
    let target = if hard == RLIM_INFINITY {
        UNLIMITED_TARGET
    } else {
        hard
    };
    if target > soft && soft != RLIM_INFINITY {
        setrlimit(Resource::RLIMIT_NOFILE, target, hard).map_err(std::io::Error::from)?;
    }
    fd_limit()
}

/// [`raise_fd_limit`], logging the outcome (a failure is a warning, not a reason to stop: the
/// process runs with the limit it has, and its connection caps follow that limit).
pub fn raise_fd_limit_or_warn() -> Option<FdLimit> {
    match raise_fd_limit() {
        Ok(limit) => {
            tracing::debug!(soft = limit.soft, hard = limit.hard, "open-files limit");
            Some(limit)
        }
        Err(err) => {
            tracing::warn!(%err, "cannot raise the open-files limit (RLIMIT_NOFILE); connection caps follow the current one");
            fd_limit().ok()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Lowers this test process's soft limit, raises it back, restores it (nothing else in
    /// this crate's tests holds many files).
    #[test]
    fn raise_sets_soft_to_hard() {
        let before = fd_limit().expect("getrlimit");
        if before.hard == RLIM_INFINITY || before.hard < 64 {
            return; // nothing meaningful to check on such a system
        }
        setrlimit(Resource::RLIMIT_NOFILE, 64, before.hard).expect("lower the soft limit");
        let after = raise_fd_limit().expect("raise");
        assert_eq!(after.soft, before.hard);
        assert_eq!(after.hard, before.hard);
        setrlimit(Resource::RLIMIT_NOFILE, before.soft, before.hard).expect("restore");
    }
}
