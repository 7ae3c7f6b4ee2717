//! One agent per data directory: an exclusive `flock` on `DATA_DIR/agent.lock`, holding the
//! owner's pid.
//!
//! Two agents on one data directory would both adopt and restart the same instances. The lock
//! makes the second one fail loudly, or — when asked to take over (`berth agent --replace`) —
//! tells it which process to stop and lets it wait until that process has let go. The kernel
//! releases a `flock` when its holder dies, so a `kill -9` never leaves a stale lock behind.
//!
//! Every process that supervises instances takes it: `berth agent` on its data directory and
//! `berth up` on `DATA_DIR/agent` (the directory a `berth agent` defaults to). The file says
//! which kind of process holds it (`PID\nberth up\n`; a `berth agent` writes its pid alone), so a second agent is told that it met a
//! `berth up`, which `--replace` cannot take over from (stopping it would stop the server too).

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The lock file's name inside the data directory.
pub const LOCK_FILE: &str = "agent.lock";

/// The holder kind a `berth up` writes into the lock file (see [`DataDirLock::acquire_as`]).
pub const HOLDER_UP: &str = "berth up";

/// How often [`DataDirLock::wait`] tries again.
const RETRY: Duration = Duration::from_millis(20);

/// Why the data directory could not be locked.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another process holds the lock.
    #[error("{}", held_text(.dir, *.pid, .holder.as_deref()))]
    Held {
        /// The data directory.
        dir: PathBuf,
        /// The holder's pid, as it wrote it (`None` if it could not be read).
        pid: Option<u32>,
        /// What kind of process holds it ([`HOLDER_UP`]; `None`: a `berth agent`), as written.
        holder: Option<String>,
    },
    /// The holder did not let go in time.
    #[error("the berth agent{} on {} did not stop within {:?}; it still holds {LOCK_FILE}", pid_text(*.pid), .dir.display(), .waited)]
    StillHeld {
        /// The data directory.
        dir: PathBuf,
        /// The holder's pid.
        pid: Option<u32>,
        /// How long this agent waited.
        waited: Duration,
    },
    /// The lock file could not be opened, locked or written.
    #[error("cannot lock {}: {source}", .path.display())]
    Io {
        /// The lock file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
}

fn pid_text(pid: Option<u32>) -> String {
    pid.map(|p| format!(" (pid {p})")).unwrap_or_default()
}

fn held_text(dir: &Path, pid: Option<u32>, holder: Option<&str>) -> String {
    if holder == Some(HOLDER_UP) {
        format!(
            "berth up{} supervises the instances in {}: a second agent there would take them over and restart them; stop berth up first, or give this agent its own --data-dir (--replace takes over only from a berth agent)",
            pid_text(pid),
            dir.display()
        )
    } else {
        format!(
            "another berth agent{} runs on {}: stop it first, or start this one with --replace to take over from it without dropping a request",
            pid_text(pid),
            dir.display()
        )
    }
}

/// The held lock; dropping it (or the process ending) releases it.
#[derive(Debug)]
pub struct DataDirLock {
    _file: File,
}

impl DataDirLock {
    /// Takes the lock of `dir` (created if missing) for a `berth agent` and records this
    /// process's pid in it, or says who holds it.
    pub fn acquire(dir: &Path) -> Result<DataDirLock, LockError> {
        DataDirLock::lock(dir, None)
    }

    /// Like [`acquire`](Self::acquire), recording `holder` (e.g. [`HOLDER_UP`]) on the line
    /// after the pid so that a process refused the lock can say what it met.
    pub fn acquire_as(dir: &Path, holder: &str) -> Result<DataDirLock, LockError> {
        DataDirLock::lock(dir, Some(holder))
    }

    fn lock(dir: &Path, holder: Option<&str>) -> Result<DataDirLock, LockError> {
        let path = dir.join(LOCK_FILE);
        let io = |source| LockError::Io {
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(io)?;
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let (pid, holder) = read_holder(&mut file);
                return Err(LockError::Held {
                    dir: dir.to_path_buf(),
                    pid,
                    holder,
                });
            }
            Err(TryLockError::Error(source)) => return Err(io(source)),
        }
        file.set_len(0).map_err(io)?;
        file.seek(SeekFrom::Start(0)).map_err(io)?;
        writeln!(file, "{}", std::process::id()).map_err(io)?;
        if let Some(holder) = holder {
            writeln!(file, "{holder}").map_err(io)?;
        }
        file.flush().map_err(io)?;
        Ok(DataDirLock { _file: file })
    }

    /// Waits up to `deadline` for the holder of `dir`'s lock to let go, then takes it.
    pub async fn wait(dir: &Path, deadline: Duration) -> Result<DataDirLock, LockError> {
        let started = crate::clock::now();
        loop {
            match DataDirLock::acquire(dir) {
                Err(LockError::Held { dir, pid, .. }) => {
                    if started.elapsed() >= deadline {
                        return Err(LockError::StillHeld {
                            dir,
                            pid,
                            waited: deadline,
                        });
                    }
                    tokio::time::sleep(RETRY).await;
                }
                other => return other,
            }
        }
    }
}

/// The pid (first line) and kind (second line) the holder wrote, as far as the file holds
/// them. An older agent wrote the pid alone.
fn read_holder(file: &mut File) -> (Option<u32>, Option<String>) {
    let mut text = String::new();
    if file.seek(SeekFrom::Start(0)).is_err() || file.take(128).read_to_string(&mut text).is_err() {
        return (None, None);
    }
    let mut lines = text.lines();
    let pid = lines.next().and_then(|l| l.trim().parse().ok());
    let holder = lines
        .next()
        .map(str::trim)
        .filter(|h| !h.is_empty())
        .map(str::to_string);
    (pid, holder)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_is_refused_with_the_holders_pid_and_released_on_drop() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = DataDirLock::acquire(dir.path()).expect("first lock");
        match DataDirLock::acquire(dir.path()) {
            Err(LockError::Held { pid, holder, .. }) => {
                assert_eq!(pid, Some(std::process::id()));
                assert_eq!(holder, None, "a berth agent writes its pid alone");
            }
            other => panic!("expected Held, got {other:?}"),
        }
        drop(first);
        DataDirLock::acquire(dir.path()).expect("lock after the holder let go");
    }

    #[test]
    fn a_lock_held_by_berth_up_says_so_and_that_replace_cannot_take_over() {
        let dir = tempfile::tempdir().expect("tempdir");
        let _up = DataDirLock::acquire_as(dir.path(), HOLDER_UP).expect("first lock");
        let err = DataDirLock::acquire(dir.path()).expect_err("a second lock");
        assert!(
            matches!(&err, LockError::Held { holder: Some(h), .. } if h == HOLDER_UP),
            "{err:?}"
        );
        let text = err.to_string();
        assert!(text.starts_with("berth up (pid "), "{text}");
        assert!(
            text.contains("--replace takes over only from a berth agent"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn wait_takes_the_lock_once_the_holder_lets_go_and_gives_up_at_the_deadline() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = DataDirLock::acquire(dir.path()).expect("first lock");
        match DataDirLock::wait(dir.path(), Duration::from_millis(100)).await {
            Err(LockError::StillHeld { .. }) => {}
            other => panic!("expected StillHeld, got {other:?}"),
        }
        let release = tokio::spawn(async move {
            tokio::task::yield_now().await;
            drop(first);
        });
        DataDirLock::wait(dir.path(), Duration::from_secs(30))
            .await
            .expect("lock after release");
        release.await.expect("release task");
    }
}
