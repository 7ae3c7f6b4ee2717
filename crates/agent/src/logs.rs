//! Instance log files: where a workload's output goes, how it is rotated, how it is read.
//!
//! # Why files and copy-truncate
//! A workload must outlive its agent (static stability), so its stdout and stderr cannot be pipes
//! read by the agent: when the agent died, the next write would raise `SIGPIPE` and kill it.
//! Instead both streams are redirected straight to one file, `DATA_DIR/instances/<id>/output.log`,
//! opened with `O_APPEND` so both streams interleave without overwriting each other.
//!
//! Rotation is *copy-truncate*, done by the agent while it runs ([`rotate_if_needed`]): past the
//! size limit, `output.log.1` becomes `.2` (and so on), the current file is copied to `.1`, then
//! truncated to zero. The workload keeps its file descriptor; thanks to `O_APPEND` its next write
//! lands at the new end (offset 0) instead of leaving a sparse hole. The price, accepted: lines
//! written between the copy and the truncation are lost, and while no agent runs the file grows
//! unbounded until one does.

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::stream::BoxStream;
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use crate::error::{io_err, Error, Result};

/// The name of the current log file in an instance's directory.
pub const LOG_FILE: &str = "output.log";

/// How often [`tail`] looks for new output when following.
const FOLLOW_POLL: Duration = Duration::from_millis(200);

/// A line longer than this is cut into several, so a workload printing without newlines cannot
/// make a reader hold unbounded memory.
const MAX_LINE: usize = 1 << 20;

/// Size-based rotation settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogConfig {
    /// Rotate once the current file is larger than this many bytes.
    pub max_bytes: u64,
    /// Files kept in all, the current one included: 3 means `output.log`, `.1` and `.2`.
    pub files: u32,
}

impl Default for LogConfig {
    /// 10 MiB × 3 files: at most ~30 MiB per instance, enough for a few hours of chatty output.
    fn default() -> Self {
        LogConfig {
            max_bytes: 10 << 20,
            files: 3,
        }
    }
}

/// The path of rotated file number `n` (`output.log.1` is the newest rotated one).
pub fn rotated_path(path: &Path, n: u32) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(format!(".{n}"));
    PathBuf::from(s)
}

/// Opens (creating it, mode 0640) the log file a workload writes to, in append mode.
pub fn open_for_append(path: &Path) -> Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
        .open(path)
        .map_err(io_err("open log file", path))
}

/// Rotates `path` by copy-truncate when it is larger than `config.max_bytes`; returns whether
/// it rotated. A missing file is not an error (nothing was written yet).
pub fn rotate_if_needed(path: &Path, config: &LogConfig) -> Result<bool> {
    let len = match fs::metadata(path) {
        Ok(m) => m.len(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(io_err("read size of log file", path)(e)),
    };
    if len <= config.max_bytes {
        return Ok(false);
    }
    if config.files >= 2 {
        // Shift .1 → .2 …, dropping the oldest by overwriting it.
        for n in (1..config.files - 1).rev() {
            let from = rotated_path(path, n);
            match fs::rename(&from, rotated_path(path, n + 1)) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err("rotate log file", from)(e)),
            }
        }
        let first = rotated_path(path, 1);
        fs::copy(path, &first).map_err(io_err("copy log file to", first))?;
    }
    OpenOptions::new()
        .write(true)
        .open(path)
        .and_then(|f| f.set_len(0))
        .map_err(io_err("truncate log file", path))?;
    Ok(true)
}

/// Reads the lines of a log file and, with `follow`, keeps yielding new ones as they are written
/// (like `tail -f`): what `berth logs [-f]` streams. Boxed, so callers need not pin it.
///
/// Without `follow` it ends at the end of the file (a last line without a newline is yielded
/// too); a missing file is an error. With `follow` it waits for a missing file to appear, notices
/// copy-truncate rotation (the file shrinks below what was read) and a replaced file (another
/// inode) and starts over from their beginning. Output rotated away between two polls (200 ms) is
/// not shown. Invalid UTF-8 is replaced with U+FFFD; a line over 1 MiB is cut into pieces.
pub fn tail(path: impl Into<PathBuf>, follow: bool) -> BoxStream<'static, Result<String>> {
    let state = Tail {
        path: path.into(),
        follow,
        file: None,
        inode: 0,
        pos: 0,
        buf: Vec::new(),
        lines: VecDeque::new(),
        done: false,
    };
    let stream = futures::stream::unfold(state, |mut st| async move {
        loop {
            if let Some(line) = st.lines.pop_front() {
                return Some((Ok(line), st));
            }
            if st.done {
                return None;
            }
            if let Err(e) = st.step().await {
                st.done = true;
                return Some((Err(e), st));
            }
        }
    });
    Box::pin(stream)
}

struct Tail {
    path: PathBuf,
    follow: bool,
    file: Option<tokio::fs::File>,
    inode: u64,
    pos: u64,
    buf: Vec<u8>,
    lines: VecDeque<String>,
    done: bool,
}

impl Tail {
    /// One read, or one wait: either queues lines, sets `done`, or sleeps.
    async fn step(&mut self) -> Result<()> {
        let Some(file) = self.file.as_mut() else {
            match tokio::fs::File::open(&self.path).await {
                Ok(f) => {
                    self.inode = f.metadata().await.map(|m| m.ino()).unwrap_or(0);
                    self.file = Some(f);
                    self.pos = 0;
                }
                Err(e) if self.follow && e.kind() == std::io::ErrorKind::NotFound => {
                    tokio::time::sleep(FOLLOW_POLL).await;
                }
                Err(e) => return Err(io_err("open log file", &self.path)(e)),
            }
            return Ok(());
        };
        let mut chunk = vec![0u8; 64 * 1024];
        let n = file
            .read(&mut chunk)
            .await
            .map_err(io_err("read log file", &self.path))?;
        if n > 0 {
            self.pos += n as u64;
            self.buf.extend_from_slice(&chunk[..n]);
            self.split_lines();
            return Ok(());
        }
        if !self.follow {
            if !self.buf.is_empty() {
                let rest = std::mem::take(&mut self.buf);
                self.lines
                    .push_back(String::from_utf8_lossy(&rest).into_owned());
            }
            self.done = true;
            return Ok(());
        }
        match tokio::fs::metadata(&self.path).await {
            Ok(m) if m.ino() != self.inode => self.file = None, // replaced: reopen
            Ok(m) if m.len() < self.pos => {
                // Truncated by rotation: what follows starts at offset 0.
                file.seek(std::io::SeekFrom::Start(0))
                    .await
                    .map_err(io_err("seek in log file", &self.path))?;
                self.pos = 0;
            }
            Ok(_) => tokio::time::sleep(FOLLOW_POLL).await,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                self.file = None;
            }
            Err(e) => {
                return Err(Error::Io {
                    action: "read size of log file",
                    path: self.path.clone(),
                    source: e,
                })
            }
        }
        Ok(())
    }

    fn split_lines(&mut self) {
        while let Some(i) = self.buf.iter().position(|&b| b == b'\n') {
            let mut line: Vec<u8> = self.buf.drain(..=i).collect();
            line.pop();
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            self.lines
                .push_back(String::from_utf8_lossy(&line).into_owned());
        }
        while self.buf.len() > MAX_LINE {
            let piece: Vec<u8> = self.buf.drain(..MAX_LINE).collect();
            self.lines
                .push_back(String::from_utf8_lossy(&piece).into_owned());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::{Stream, StreamExt};
    use std::io::Write;

    #[test]
    fn rotation_keeps_the_configured_number_of_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(LOG_FILE);
        let cfg = LogConfig {
            max_bytes: 10,
            files: 3,
        };
        assert!(!rotate_if_needed(&path, &cfg).unwrap(), "missing file");
        for round in 0..4 {
            let mut f = open_for_append(&path).unwrap();
            writeln!(f, "round {round} with enough bytes").unwrap();
            assert!(rotate_if_needed(&path, &cfg).unwrap());
            assert_eq!(fs::metadata(&path).unwrap().len(), 0);
        }
        assert!(fs::read_to_string(rotated_path(&path, 1))
            .unwrap()
            .starts_with("round 3"));
        assert!(fs::read_to_string(rotated_path(&path, 2))
            .unwrap()
            .starts_with("round 2"));
        assert!(!rotated_path(&path, 3).exists());
    }

    async fn next_line<S: Stream<Item = Result<String>> + Unpin>(s: &mut S) -> String {
        let item = tokio::time::timeout(Duration::from_secs(5), s.next())
            .await
            .expect("a line within 5 s");
        item.expect("stream not ended").expect("no error")
    }

    #[tokio::test]
    async fn tail_reads_lines_and_follows_appends_and_truncation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(LOG_FILE);
        fs::write(&path, "one\ntwo\r\nthree").unwrap();
        let all: Vec<String> = tail(&path, false).map(|l| l.unwrap()).collect().await;
        assert_eq!(all, ["one", "two", "three"]);
        assert!(tail(dir.path().join("missing"), false)
            .next()
            .await
            .unwrap()
            .is_err());

        fs::write(&path, "a\n").unwrap();
        let mut follow = tail(&path, true);
        assert_eq!(next_line(&mut follow).await, "a");
        open_for_append(&path).unwrap().write_all(b"b\n").unwrap();
        assert_eq!(next_line(&mut follow).await, "b");
        OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(0)
            .unwrap();
        tokio::time::sleep(FOLLOW_POLL * 2).await;
        open_for_append(&path).unwrap().write_all(b"c\n").unwrap();
        assert_eq!(next_line(&mut follow).await, "c");
    }
}
