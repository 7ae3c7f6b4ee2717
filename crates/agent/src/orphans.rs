//! Workloads no record accounts for: a process the agent spawned just before it was killed,
//! before it could write the instance's record (spawn and record are two steps; a `kill -9`
//! can fall between them). Left alone, such a process would hold the instance's port while
//! the next agent starts the instance again.
//!
//! A process is such an orphan when its working directory is exactly an instance's
//! directory, its environment says it is that instance (`BERTH_INSTANCE=<id>`, set by the
//! agent), and its process group is not the group of an instance the agent adopted. Both
//! marks are needed: a user's shell that `cd`s into an instance directory has no
//! `BERTH_INSTANCE`, and an adopted instance's own children share its group.

use std::collections::HashSet;
use std::fs;
use std::path::Path;

use nix::errno::Errno;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;

/// One orphan found, for the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Orphan {
    /// The orphan's process id.
    pub pid: u32,
    /// Its process group (the instance's session leader, for a workload the agent started).
    pub pgid: u32,
    /// The instance it says it is.
    pub instance: String,
}

/// Every orphan under `data_dir/instances`, given the process groups of the instances the
/// agent adopted (`keep`).
pub fn find(data_dir: &Path, keep: &HashSet<u32>) -> Vec<Orphan> {
    let root =
        fs::canonicalize(data_dir.join("instances")).unwrap_or_else(|_| data_dir.join("instances"));
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    let own = std::process::id();
    let mut found = Vec::new();
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == own {
            continue;
        }
        // Unreadable (another user's, or gone): not ours.
        let Ok(cwd) = fs::read_link(entry.path().join("cwd")) else {
            continue;
        };
        if cwd.parent() != Some(root.as_path()) {
            continue;
        }
        let Some(instance) = cwd.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        if !says_it_is(&entry.path(), instance) {
            continue;
        }
        let Some(pgid) = crate::record::proc_stat(pid).map(|stat| stat.pgrp) else {
            continue;
        };
        if keep.contains(&pgid) {
            continue;
        }
        found.push(Orphan {
            pid,
            pgid,
            instance: instance.to_owned(),
        });
    }
    found.sort_by_key(|o| o.pid);
    found
}

/// `SIGKILL`s each orphan's whole process group (a workload and what it started).
pub fn kill(orphans: &[Orphan]) {
    let groups: HashSet<u32> = orphans.iter().map(|o| o.pgid).collect();
    for pgid in groups {
        let Ok(raw) = i32::try_from(pgid) else {
            continue;
        };
        if raw <= 1 {
            continue;
        }
        match killpg(Pid::from_raw(raw), Signal::SIGKILL) {
            Ok(()) | Err(Errno::ESRCH) => {}
            Err(err) => tracing::warn!(pgid, %err, "cannot kill an orphaned workload"),
        }
    }
}

/// Whether `/proc/PID/environ` holds `BERTH_INSTANCE=<instance>`.
fn says_it_is(proc_dir: &Path, instance: &str) -> bool {
    let Ok(environ) = fs::read(proc_dir.join("environ")) else {
        return false;
    };
    let wanted = format!("BERTH_INSTANCE={instance}");
    environ
        .split(|&b| b == 0)
        .any(|var| var == wanted.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::CommandExt;
    use std::process::Command;

    fn spawn_in(dir: &Path, instance: Option<&str>) -> std::process::Child {
        let mut cmd = Command::new("sleep");
        cmd.arg("60").current_dir(dir).env_clear().process_group(0);
        if let Some(id) = instance {
            cmd.env("BERTH_INSTANCE", id);
        }
        cmd.spawn().expect("spawn sleep")
    }

    #[test]
    fn finds_only_unkept_workloads_that_say_they_are_their_instance() {
        let data = tempfile::tempdir().expect("tempdir");
        let dir_a = data.path().join("instances").join("web-a");
        let dir_b = data.path().join("instances").join("web-b");
        fs::create_dir_all(&dir_a).expect("mkdir");
        fs::create_dir_all(&dir_b).expect("mkdir");
        let mut orphan = spawn_in(&dir_a, Some("web-a"));
        let mut kept = spawn_in(&dir_b, Some("web-b"));
        let mut shell = spawn_in(&dir_a, None);
        let keep: HashSet<u32> = [kept.id()].into();

        let found = find(data.path(), &keep);
        assert_eq!(
            found,
            [Orphan {
                pid: orphan.id(),
                pgid: orphan.id(),
                instance: "web-a".into()
            }]
        );
        kill(&found);
        let status = orphan.wait().expect("wait");
        assert!(!status.success(), "the orphan was killed");
        assert!(
            kept.try_wait().expect("try_wait").is_none(),
            "the kept one runs"
        );
        assert!(
            shell.try_wait().expect("try_wait").is_none(),
            "the shell runs"
        );
        for child in [&mut kept, &mut shell] {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
