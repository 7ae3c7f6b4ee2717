//! Long-running `berth` processes owned by a test: [`Proc`], plus `/proc` helpers for telling a
//! live process from a recycled pid.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;

use super::{describe_status, poll_until};

/// How many lines of each log [`Proc::log_tail`] shows.
pub const TAIL_LINES: usize = 40;

/// A spawned process in its **own process group**, stdout and stderr appended to
/// `LOG_DIR/NAME.stdout.log` and `LOG_DIR/NAME.stderr.log`.
///
/// Drop SIGKILLs the whole group (the process and anything it started without a new group of
/// its own) and reaps it; when the test is panicking it first prints the log tail. Methods take
/// `&self` so a closure given to [`Proc::wait_until`] can borrow the same value.
#[derive(Debug)]
pub struct Proc {
    name: String,
    pid: Pid,
    child: Mutex<Child>,
    status: Mutex<Option<ExitStatus>>,
    stdout_log: PathBuf,
    stderr_log: PathBuf,
}

impl Proc {
    /// Spawns `cmd` (typically [`super::command`]) as `name`, logging into `log_dir`. Appends to
    /// existing logs, so a restarted process keeps its predecessor's output above its own.
    pub fn spawn(mut cmd: Command, name: &str, log_dir: &Path) -> Proc {
        use std::os::unix::process::CommandExt;
        let stdout_log = log_dir.join(format!("{name}.stdout.log"));
        let stderr_log = log_dir.join(format!("{name}.stderr.log"));
        let open = |path: &Path| -> File {
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .unwrap_or_else(|e| panic!("cannot open log {}: {e}", path.display()))
        };
        cmd.stdin(Stdio::null())
            .stdout(open(&stdout_log))
            .stderr(open(&stderr_log))
            .process_group(0);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name} ({cmd:?}): {e}"));
        let pid = Pid::from_raw(i32::try_from(child.id()).expect("pids fit in i32"));
        Proc {
            name: name.to_string(),
            pid,
            child: Mutex::new(child),
            status: Mutex::new(None),
            stdout_log,
            stderr_log,
        }
    }

    /// The process id (also its process group id).
    pub fn pid(&self) -> Pid {
        self.pid
    }

    /// The exit status if the process has exited (reaping it), `None` while it runs.
    pub fn try_exit(&self) -> Option<ExitStatus> {
        let mut status = self.status.lock().unwrap_or_else(|e| e.into_inner());
        if status.is_none() {
            let mut child = self.child.lock().unwrap_or_else(|e| e.into_inner());
            *status = child.try_wait().ok().flatten();
        }
        *status
    }

    /// Sends `sig` to the process only (not its group). A no-op once it has been reaped, so a
    /// recycled pid is never signalled.
    pub fn signal(&self, sig: Signal) {
        if self.try_exit().is_none() {
            let _ = signal::kill(self.pid, sig);
        }
    }

    /// SIGKILLs the process only — not its group, so whatever it started keeps running, as
    /// after a crash — and reaps it.
    pub fn kill9(&self) -> ExitStatus {
        self.signal(Signal::SIGKILL);
        self.wait_exit(Duration::from_secs(10))
    }

    /// Waits for the process to exit; panics with the log tail if it has not within `timeout`.
    #[track_caller]
    pub fn wait_exit(&self, timeout: Duration) -> ExitStatus {
        if poll_until(timeout, || self.try_exit().is_some()) {
            return self.try_exit().expect("exited");
        }
        panic!(
            "{} (pid {}) still running after {timeout:?}\n{}",
            self.name,
            self.pid,
            self.log_tail()
        );
    }

    /// Waits until `condition` holds, polling every [`super::POLL`]. Panics with the log tail if
    /// `timeout` passes, or at once if the process exits meanwhile.
    #[track_caller]
    pub fn wait_until(&self, timeout: Duration, what: &str, mut condition: impl FnMut() -> bool) {
        let mut died = None;
        let held = poll_until(timeout, || {
            if condition() {
                return true;
            }
            died = self.try_exit();
            died.is_some()
        });
        if let Some(status) = died {
            panic!(
                "{} exited ({}) while waiting for {what}\n{}",
                self.name,
                describe_status(status),
                self.log_tail()
            );
        }
        if !held {
            panic!(
                "timed out after {timeout:?} waiting for {what}\n{}",
                self.log_tail()
            );
        }
    }

    /// The last [`TAIL_LINES`] lines of stdout and of stderr, with the log paths.
    pub fn log_tail(&self) -> String {
        let mut out = String::new();
        for (stream, path) in [("stdout", &self.stdout_log), ("stderr", &self.stderr_log)] {
            let text = std::fs::read(path)
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .unwrap_or_else(|e| format!("(cannot read: {e})"));
            let lines: Vec<&str> = text.lines().collect();
            let from = lines.len().saturating_sub(TAIL_LINES);
            out.push_str(&format!(
                "--- {} {stream}, last {} lines ({}) ---\n",
                self.name,
                lines.len() - from,
                path.display()
            ));
            for line in &lines[from..] {
                out.push_str(line);
                out.push('\n');
            }
        }
        out
    }

    /// Everything the process wrote to stdout so far.
    pub fn stdout_text(&self) -> String {
        std::fs::read(&self.stdout_log)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// Everything the process wrote to stderr so far.
    pub fn stderr_text(&self) -> String {
        std::fs::read(&self.stderr_log)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.log_tail());
        }
        if self.try_exit().is_none() {
            // The group id is our child's pid, which cannot be recycled before we reap it.
            let _ = signal::killpg(self.pid, Signal::SIGKILL);
            let mut child = self.child.lock().unwrap_or_else(|e| e.into_inner());
            let _ = child.wait();
        }
    }
}

/// What `/proc/PID/stat` says about a live process: its process group and its start time
/// (field 22, clock ticks since boot). `None` if there is no such process or it is a zombie.
pub fn stat(pid: i32) -> Option<(i32, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // `comm` (field 2) is in parentheses and may itself contain spaces or parentheses.
    let after_comm = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = after_comm.split_whitespace().collect();
    // fields[0] is field 3 (state), so field N is fields[N - 3].
    if fields.first() == Some(&"Z") {
        return None;
    }
    let pgrp = fields.get(5 - 3)?.parse().ok()?;
    let start_time = fields.get(22 - 3)?.parse().ok()?;
    Some((pgrp, start_time))
}

/// SIGKILLs a process a test did not start itself (e.g. a workload `berth up` started), but only
/// if it is still the process meant: alive, and with the recorded start time when one is known.
/// A process-group leader is killed with its whole group. Returns whether a signal was sent.
pub fn kill_recorded(pid: i32, start_time: Option<u64>) -> bool {
    let Some((pgrp, started)) = stat(pid) else {
        return false;
    };
    if start_time.is_some_and(|t| t != started) {
        return false; // the pid was recycled: not ours
    }
    let pid = Pid::from_raw(pid);
    if pgrp == pid.as_raw() {
        signal::killpg(pid, Signal::SIGKILL).is_ok()
    } else {
        signal::kill(pid, Signal::SIGKILL).is_ok()
    }
}
