//! What the agent keeps on disk about each instance, and how it recognises a process as still
//! being that instance after the agent restarts.
//!
//! A pid alone is not an identity: pids are recycled. A process is the same one if its pid is
//! alive (and not a zombie) *and* its start time — field 22 of `/proc/<pid>/stat`, in clock ticks
//! since boot — equals the one recorded when the agent started it. Both come from the kernel, so
//! a recycled pid can only match if a new process started in the same clock tick (10 ms) with the
//! same pid, which the kernel's pid allocation makes practically impossible.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::Path;

use berth_api::InstanceSpec;
use serde::{Deserialize, Serialize};

use crate::error::{io_err, Error, Result};

/// `DATA_DIR/instances/<id>/instance.json`: enough to adopt, supervise and restart an instance
/// without the control plane.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceRecord {
    /// The spec the instance was started from; a restarted agent needs it to restart the
    /// instance and run its health check while the server is unreachable. Written *without*
    /// [`InstanceSpec::secret_env`] (see [`write`](Self::write)): secret values never touch
    /// the agent's disk, so a restarted agent waits for the server to send them again before
    /// it (re)starts an instance that declares secrets.
    pub spec: InstanceSpec,
    /// The process (and process group, and session) id of the last start.
    pub pid: u32,
    /// `/proc/<pid>/stat` field 22 of that process: what tells it from a recycled pid.
    pub start_time: u64,
    /// Resolved ports, reused on every restart so the instance's endpoints stay the same.
    pub ports: BTreeMap<String, u16>,
    /// Restarts so far, so the count survives an agent restart.
    pub restarts: u32,
    /// Wall-clock milliseconds since the Unix epoch when the process was started.
    pub started_at_ms: u64,
    /// Set once the instance exited and its restart policy said not to restart it, so a
    /// restarted agent does not start it again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished: Option<Finished>,
    /// For an `image:` instance, the Engine's id of its current container: what a restarted
    /// agent inspects to adopt it (`pid` and `start_time` are 0 then).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
    /// For an `image:` instance, the id (`sha256:…`) of the image its container runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_id: Option<String>,
}

/// How an instance that is not restarted ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finished {
    /// `true` for `failed`, `false` for `stopped` (exit status 0).
    pub failed: bool,
    /// What happened, e.g. `exited with status 3`.
    pub message: String,
}

impl InstanceRecord {
    /// Reads and decodes a record file.
    pub fn read(path: &Path) -> Result<InstanceRecord> {
        let bytes = fs::read(path).map_err(io_err("read instance record", path))?;
        serde_json::from_slice(&bytes).map_err(|source| Error::Record {
            path: path.to_path_buf(),
            source,
        })
    }

    /// Writes the record atomically (see [`write_atomic`]): a crash leaves the old record or the
    /// new one, never a torn file that would make the instance unadoptable.
    /// The spec is written without its secrets' values.
    pub fn write(&self, path: &Path) -> Result<()> {
        let stored = InstanceRecord {
            spec: self.spec.without_secret_values(),
            ..self.clone()
        };
        let bytes = serde_json::to_vec_pretty(&stored).map_err(|source| Error::Record {
            path: path.to_path_buf(),
            source,
        })?;
        write_atomic(path, &bytes)
    }

    /// Whether the recorded process is still alive and is the very process recorded.
    pub fn is_live(&self) -> bool {
        is_same_process(self.pid, self.start_time)
    }
}

/// Writes `bytes` to `path` so that readers see either the old or the new content: a temporary
/// file in the same directory, `fsync`, `rename` over the target, then `fsync` of the directory
/// so the rename itself survives a power loss.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp.{}", std::process::id()));
    let mut f = fs::File::create(&tmp).map_err(io_err("create temporary file", &tmp))?;
    f.write_all(bytes).map_err(io_err("write", &tmp))?;
    f.sync_all().map_err(io_err("fsync", &tmp))?;
    drop(f);
    fs::rename(&tmp, path).map_err(io_err("rename into place", path))?;
    if let Ok(d) = fs::File::open(dir) {
        // Best effort: some file systems refuse fsync on directories; the data itself is synced.
        let _ = d.sync_all();
    }
    Ok(())
}

/// The fields of `/proc/<pid>/stat` the agent needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcStat {
    /// Field 3: `R`, `S`, `D`, `Z` (zombie), `X` (dead), …
    pub state: char,
    /// Field 5: the process group (an instance's, for a workload the agent started).
    pub pgrp: u32,
    /// Field 22: start time in clock ticks after boot.
    pub start_time: u64,
}

impl ProcStat {
    /// A zombie or dead process has exited; only its parent's `wait` is missing.
    pub fn has_exited(&self) -> bool {
        matches!(self.state, 'Z' | 'X' | 'x')
    }
}

/// Parses the content of `/proc/<pid>/stat`. The command name (field 2) is in parentheses and
/// may itself hold spaces and parentheses, so fields are counted after the *last* `)`.
pub fn parse_stat(content: &str) -> Option<ProcStat> {
    let rest = &content[content.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3, so field N is at index N - 3.
    let state = fields.first()?.chars().next()?;
    let pgrp = fields.get(5 - 3)?.parse().ok()?;
    let start_time = fields.get(22 - 3)?.parse().ok()?;
    Some(ProcStat {
        state,
        pgrp,
        start_time,
    })
}

/// Reads `/proc/<pid>/stat`; `None` when the process does not exist (or cannot be read).
pub fn proc_stat(pid: u32) -> Option<ProcStat> {
    let content = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&content)
}

/// Whether `pid` is a live (non-zombie) process that started at `start_time`.
pub fn is_same_process(pid: u32, start_time: u64) -> bool {
    pid != 0 && proc_stat(pid).is_some_and(|s| !s.has_exited() && s.start_time == start_time)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_after_the_last_parenthesis() {
        let line = "4242 (we(ird) name) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 10";
        assert_eq!(
            parse_stat(line),
            Some(ProcStat {
                state: 'S',
                pgrp: 4242,
                start_time: 987654
            })
        );
        assert_eq!(parse_stat("12 (x) Z 1 2"), None);
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn this_process_is_itself_and_not_a_recycled_pid() {
        let me = std::process::id();
        let stat = proc_stat(me).expect("own stat");
        assert!(is_same_process(me, stat.start_time));
        assert!(!is_same_process(me, stat.start_time + 1));
        assert!(!is_same_process(0, 0));
    }
}
