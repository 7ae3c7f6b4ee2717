//! Where a `process:` instance runs: which user, group and supplementary groups.
//!
//! `process.user` names the user; without it the agent's `--process-user` does; without both
//! the workload runs as the agent itself (as before the field existed). `root` (uid 0) is
//! refused unless the agent was started with `--allow-root-processes`: a stack file should not
//! be able to run a command as root on every node by saying so.
//!
//! # How the switch happens
//! In the forked child, before `exec`: `chdir` to the instance directory (still as the agent),
//! then `setgroups` (the user's supplementary groups, as `initgroups` would set them), `setgid`
//! (its primary group) and `setuid`, in that order — the groups cannot be changed once the uid
//! dropped. The user and its groups are looked up in the parent, before the fork
//! ([`nix::unistd::User`], [`nix::unistd::getgrouplist`]): the child only makes system calls.
//! (std's `CommandExt::uid`/`gid` would switch before std's own `chdir`, so a user that may not
//! traverse the agent's 0700 data directory could not even enter its working directory, and
//! std has no stable way to set supplementary groups.)
//!
//! # Ownership of the instance directory
//! `DATA_DIR/instances/<id>/` and what is in it (`instance.json`, the log files) stay owned by
//! the agent, and the data directory stays 0700. The workload's working directory is entered
//! before the switch, so it needs no access to the data directory's path; its stdout and
//! stderr are file descriptors the agent opened, so it writes its log without being able to
//! rename, truncate or delete it. It cannot write in its working directory either: the agent
//! trusts `instance.json` (the pid it signals on a restart), so a workload running as another
//! user must not be able to replace it. A workload that needs to write files writes where its
//! user may (its home directory, `/tmp`). `HOME`, `USER` and `LOGNAME` are the user's.

use std::ffi::CString;
use std::path::PathBuf;

use nix::unistd::{Gid, Uid, User};

/// What the agent was told about process users: `--process-user` and `--allow-root-processes`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProcessUsers {
    /// `--process-user USER`: who a `process:` service without `process.user` runs as.
    /// `None`: as the agent itself.
    pub default: Option<String>,
    /// `--allow-root-processes`: `process.user: root` (or uid 0, or a `--process-user` that is
    /// root) may run.
    pub allow_root: bool,
}

/// A user resolved on this node: what the child switches to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunAs {
    /// The name as written (`nobody`, or `65534` for a uid without a passwd entry).
    pub name: String,
    /// The user id.
    pub uid: u32,
    /// Its primary group.
    pub gid: u32,
    /// Its supplementary groups (the primary one included, as `initgroups` does).
    pub groups: Vec<u32>,
    /// Its home directory, for `HOME` (`/` when it has none).
    pub home: PathBuf,
    /// Whether the child must switch at all: false when the agent already runs as this user
    /// (then changing groups would need privileges the agent does not have, and is not needed).
    pub switch: bool,
}

/// Why an instance cannot run as the user it asks for; each says what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RunAsError {
    /// `root` without `--allow-root-processes`.
    #[error("runs as {user} (uid 0), which this agent refuses: set `process.user` to an unprivileged user, or start the agent with --allow-root-processes")]
    Root {
        /// The user as written.
        user: String,
    },
    /// No such user on this node.
    #[error("runs as {user}, but this node has no such user: create it, or set `process.user` (or the agent's --process-user) to a user that exists")]
    NoSuchUser {
        /// The user as written.
        user: String,
    },
    /// The agent is not root, so it cannot become another user.
    #[error("runs as {user} (uid {uid}), but the agent runs as uid {agent} and cannot switch users: start the agent as root, or drop `process.user`")]
    CannotSwitch {
        /// The user as written.
        user: String,
        /// Its uid.
        uid: u32,
        /// The agent's effective uid.
        agent: u32,
    },
    /// The user database could not be read.
    #[error("cannot look up user {user}: {message}")]
    Lookup {
        /// The user as written.
        user: String,
        /// The system's reason.
        message: String,
    },
}

impl ProcessUsers {
    /// The user a service asking for `wanted` (its `process.user`) runs as, or `None` to run as
    /// the agent. Refuses root without `allow_root`, unknown users, and any switch the agent
    /// cannot make.
    pub fn resolve(&self, wanted: Option<&str>) -> Result<Option<RunAs>, RunAsError> {
        let Some(user) = wanted.or(self.default.as_deref()) else {
            return Ok(None);
        };
        let found = lookup(user)?;
        if found.uid == 0 && !self.allow_root {
            return Err(RunAsError::Root {
                user: user.to_string(),
            });
        }
        let agent = Uid::effective().as_raw();
        let mut run = found;
        run.switch = run.uid != agent;
        if run.switch && agent != 0 {
            return Err(RunAsError::CannotSwitch {
                user: user.to_string(),
                uid: run.uid,
                agent,
            });
        }
        Ok(Some(run))
    }
}

/// `user` in the passwd database (by name, or by uid when it is all digits), with its groups.
/// A uid with no passwd entry runs with its own number as its group and no other groups.
fn lookup(user: &str) -> Result<RunAs, RunAsError> {
    let err = |e: nix::Error| RunAsError::Lookup {
        user: user.to_string(),
        message: e.desc().to_string(),
    };
    let numeric = user.parse::<u32>().ok();
    let entry = match numeric {
        Some(uid) => User::from_uid(Uid::from_raw(uid)).map_err(err)?,
        None => User::from_name(user).map_err(err)?,
    };
    let Some(entry) = entry else {
        return match numeric {
            Some(uid) => Ok(RunAs {
                name: user.to_string(),
                uid,
                gid: uid,
                groups: vec![uid],
                home: PathBuf::from("/"),
                switch: true,
            }),
            None => Err(RunAsError::NoSuchUser {
                user: user.to_string(),
            }),
        };
    };
    let groups = CString::new(entry.name.as_str())
        .ok()
        .and_then(|name| nix::unistd::getgrouplist(&name, entry.gid).ok())
        .unwrap_or_else(|| vec![entry.gid]);
    Ok(RunAs {
        name: entry.name.clone(),
        uid: entry.uid.as_raw(),
        gid: entry.gid.as_raw(),
        groups: groups.into_iter().map(Gid::as_raw).collect(),
        home: entry.dir.clone(),
        switch: true,
    })
}

/// Makes `cmd`'s child become `run` just before `exec` (after std's own `chdir`, so the
/// working directory is entered as the agent): supplementary groups, then the primary group,
/// then the user. Nothing happens when `run.switch` is false. Register it after any other
/// `pre_exec` step that needs the agent's privileges (they run in registration order).
pub fn switch_in_child(cmd: &mut tokio::process::Command, run: &RunAs) {
    if !run.switch {
        return;
    }
    let groups: Vec<Gid> = run.groups.iter().copied().map(Gid::from_raw).collect();
    let (uid, gid) = (Uid::from_raw(run.uid), Gid::from_raw(run.gid));
    // SAFETY: the closure runs in the forked child before `exec`, where only
    // async-signal-safe functions may be called. It makes three system calls and nothing else:
    // `setgroups(2)` (not in POSIX's list only because it is not POSIX; on Linux it is a plain
    // system call, and nix passes the slice's pointer and length without allocating — the
    // `Vec` was built in the parent), `setgid(2)` and `setuid(2)` (both async-signal-safe per
    // signal-safety(7)). Errors become `io::Error::from_raw_os_error`, which does not allocate.
    // The closure owns its data (moved in) and shares no memory with the parent's threads.
    #[allow(
        unsafe_code,
        reason = "dropping to another user with its supplementary groups needs pre_exec; see SAFETY"
    )]
    unsafe {
        cmd.pre_exec(move || {
            let os = |e: nix::Error| std::io::Error::from_raw_os_error(e as i32);
            nix::unistd::setgroups(&groups).map_err(os)?;
            nix::unistd::setgid(gid).map_err(os)?;
            nix::unistd::setuid(uid).map_err(os)?;
            Ok(())
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_user_anywhere_runs_as_the_agent() {
        assert_eq!(ProcessUsers::default().resolve(None), Ok(None));
    }

    #[test]
    fn root_is_refused_unless_allowed_by_name_or_by_uid() {
        let users = ProcessUsers::default();
        for root in ["root", "0"] {
            assert_eq!(
                users.resolve(Some(root)),
                Err(RunAsError::Root { user: root.into() }),
                "{root}"
            );
        }
        let default_root = ProcessUsers {
            default: Some("root".into()),
            allow_root: false,
        };
        assert!(matches!(
            default_root.resolve(None),
            Err(RunAsError::Root { .. })
        ));
        let allowed = ProcessUsers {
            default: None,
            allow_root: true,
        };
        if Uid::effective().is_root() {
            let run = allowed.resolve(Some("root")).unwrap().unwrap();
            assert_eq!((run.uid, run.gid, run.switch), (0, 0, false));
        }
    }

    #[test]
    fn an_unknown_user_is_named() {
        let err = ProcessUsers::default()
            .resolve(Some("no-such-user-berth"))
            .unwrap_err();
        assert_eq!(
            err,
            RunAsError::NoSuchUser {
                user: "no-such-user-berth".into()
            }
        );
        assert!(err.to_string().contains("this node has no such user"));
    }

    #[test]
    fn nobody_resolves_with_its_groups_and_the_default_applies() {
        let users = ProcessUsers {
            default: Some("nobody".into()),
            allow_root: false,
        };
        match users.resolve(None) {
            Ok(Some(run)) => {
                assert_eq!(run.name, "nobody");
                assert_ne!(run.uid, 0);
                assert!(run.groups.contains(&run.gid), "{run:?}");
                assert!(run.switch || Uid::effective().as_raw() == run.uid);
            }
            // Not root: the switch is refused, saying how to fix it.
            Err(RunAsError::CannotSwitch { agent, .. }) => assert_ne!(agent, 0),
            other => panic!("{other:?}"),
        }
        // The service's own user wins over the default.
        if let Ok(Some(run)) = users.resolve(Some(&Uid::effective().to_string())) {
            assert!(!run.switch);
        }
    }
}
