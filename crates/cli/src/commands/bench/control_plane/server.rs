//! The real `berth server`, as a child process of this very binary on a loopback port chosen at
//! run time, with the embedded store in a temporary data directory. A child process so that its
//! CPU time and peak RSS are its own (read from `/proc`), and killed on every path: dropping
//! [`ServerChild`] kills it (`kill_on_drop`) and removes its directory, and should the benchmark
//! itself die without unwinding (SIGKILL), the kernel kills the server too (`PR_SET_PDEATHSIG`).

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context;
use berth_client::{Client, ServerTrust};
use tokio::io::{AsyncBufReadExt, BufReader};

use super::clock;

/// A running server child.
pub struct ServerChild {
    // Declared first, so it is killed before the directory goes.
    child: tokio::process::Child,
    pub pid: u32,
    /// `http://127.0.0.1:PORT` or `https://…`.
    pub url: String,
    pub admin_token: String,
    /// As `berth agent --join-token-file` reads it (with the CA's fingerprint under TLS).
    pub join_token: String,
    /// `DATA_DIR/ca.crt` under TLS, what the CLI trusts.
    pub ca_file: Option<PathBuf>,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl ServerChild {
    /// Starts `berth server` (TLS on or off) and waits, within `within`, until it answers.
    pub async fn start(tls: bool, within: Duration) -> anyhow::Result<ServerChild> {
        let dir = tempfile::Builder::new()
            .prefix("berth-bench-")
            .tempdir()
            .context("cannot create a temporary directory for the server")?;
        let data = dir.path().join("data");
        let log = dir.path().join("server.log");
        let exe = std::env::current_exe()
            .context("cannot find this berth binary to start `berth server` from")?;
        let stderr = std::fs::File::create(&log)
            .with_context(|| format!("cannot create {}", log.display()))?;
        let mut command = tokio::process::Command::new(&exe);
        die_with_parent(&mut command);
        let mut child = command
            .arg("server")
            .args([
                "--api",
                "127.0.0.1:0",
                "--api-tls",
                if tls { "on" } else { "off" },
            ])
            .arg("--data-dir")
            .arg(&data)
            .env("BERTH_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(stderr))
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start {} server", exe.display()))?;
        let pid = child.id().context("the server exited at once")?;
        let stdout = child.stdout.take().context("no stdout from the server")?;
        let mut lines = BufReader::new(stdout).lines();
        let first = tokio::time::timeout(within, lines.next_line()).await;
        // Keep reading, so the server never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let url = match first {
            Ok(Ok(Some(line))) => line
                .strip_prefix("berth server on ")
                .and_then(|rest| rest.split_whitespace().next())
                .map(str::to_string)
                .with_context(|| {
                    format!("the server's first line is not `berth server on URL`: {line}")
                })?,
            _ => anyhow::bail!(
                "`berth server` did not start within {} s; its log:\n{}",
                within.as_secs(),
                tail(&log)
            ),
        };
        let read = |name: &str| -> anyhow::Result<String> {
            let path = data.join(name);
            std::fs::read_to_string(&path)
                .map(|s| s.trim().to_string())
                .with_context(|| format!("cannot read {}", path.display()))
        };
        let server = ServerChild {
            admin_token: read("admin.token")?,
            join_token: read("join.token")?,
            ca_file: tls.then(|| data.join(berth_server::pki::PUBLIC_CA)),
            child,
            pid,
            url,
            log,
            _dir: dir,
        };
        let admin = server.admin()?;
        let deadline = clock::now() + within;
        while let Err(e) = admin.health().await {
            if clock::now() >= deadline {
                anyhow::bail!(
                    "the server at {} does not answer: {e}; its log:\n{}",
                    server.url,
                    server.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(server)
    }

    /// A client with the admin token, trusting the cluster CA as the CLI does.
    pub fn admin(&self) -> anyhow::Result<Client> {
        let trust = match &self.ca_file {
            Some(ca) => Some(ServerTrust::from_pem_file(ca).context("the server's CA")?),
            None => None,
        };
        Client::with_trust(&self.url, Some(self.admin_token.clone()), trust)
            .context("cannot make a client for the server")
    }

    /// Its CPU seconds and peak RSS in bytes so far.
    pub fn usage(&self) -> anyhow::Result<(f64, u64)> {
        super::proc::usage(self.pid).with_context(|| {
            format!(
                "cannot read /proc/{} (is the server still running?)",
                self.pid
            )
        })
    }

    /// Whether it has exited, and how.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// The end of its log, for an error message.
    pub fn log_tail(&self) -> String {
        tail(&self.log)
    }

    /// Kills it and waits for it to go.
    pub async fn stop(mut self) {
        let _ = self.child.start_kill();
        let _ = tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await;
    }
}

/// Makes the child get SIGKILL when the thread that started it ends: when the benchmark dies
/// without running its guards, its server must not live on holding thousands of sockets.
#[allow(unsafe_code, reason = "pre_exec is unsafe; see SAFETY below")]
fn die_with_parent(command: &mut tokio::process::Command) {
    // SAFETY: the closure runs in the forked child before exec, where only async-signal-safe
    // calls are allowed: it makes one prctl(2) system call, allocates nothing and takes no lock.
    unsafe {
        command.pre_exec(|| {
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
                .map_err(std::io::Error::from)
        });
    }
}

/// The last 20 lines of a log file.
fn tail(path: &std::path::Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let from = lines.len().saturating_sub(20);
    if lines.is_empty() {
        "(empty)".to_string()
    } else {
        lines[from..].join("\n")
    }
}
