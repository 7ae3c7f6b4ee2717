//! Which host paths an instance may bind-mount (`volumes: ["/host:/container"]`).
//!
//! A volume is a hole in the container: `/:/host` or the Docker socket hands the workload the
//! node (the admin token, `/etc/shadow`, root through the Engine). So the agent refuses, by
//! default, every host path that
//! - is, or is inside, a *protected* path: `/etc`, `/root`, berth's data directories, the
//!   Docker socket (`/var/run/docker.sock`, `/run/docker.sock`, the Engine's own);
//! - or holds one (a strict ancestor: `/`, `/var`, `/run`, the parent of the data directory).
//!
//! Paths are compared after canonicalization (symlinks and `..` resolved, the longest existing
//! prefix for a path not created yet), so `/var/run/../../etc` or a symlink to `/` is seen for
//! what it is. (A symlink changed between this check and the Engine's mount is not caught: the
//! check guards against mistakes and hostile stack files, not against root on the node.)
//!
//! `berth agent --allow-host-path PREFIX` (repeatable; `berth up` too) turns the rule into an
//! allow-list: a host path must then be under one of the prefixes. A protected path stays
//! refused unless a prefix names it (or something inside it: `--allow-host-path
//! /var/run/docker.sock`, `--allow-host-path /etc/ssl/certs`), and a path holding a protected
//! one only if a prefix names exactly that path (`--allow-host-path /` mounts all of `/`).

use std::path::{Component, Path, PathBuf};

/// The Docker sockets every agent protects, whatever `DOCKER_HOST` says.
pub const DOCKER_SOCKETS: &[&str] = &["/var/run/docker.sock", "/run/docker.sock"];

/// The system directories every agent protects.
pub const SYSTEM_DIRS: &[&str] = &["/etc", "/root"];

/// The host paths this agent mounts (see the module docs). Build with
/// [`HostPathPolicy::new`], then [`protect`](Self::protect) and [`allow`](Self::allow).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPathPolicy {
    /// Refused, with what is inside them, and whatever holds them (canonical).
    protected: Vec<PathBuf>,
    /// `--allow-host-path` prefixes (canonical); empty: anything not protected.
    allowed: Vec<PathBuf>,
}

/// Why a host path is refused: one line for `berth status`, naming the flag that allows it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", .0)]
pub struct Refusal(String);

impl HostPathPolicy {
    /// The default policy: [`SYSTEM_DIRS`] and [`DOCKER_SOCKETS`] protected, no allow-list.
    pub fn new() -> HostPathPolicy {
        let mut p = HostPathPolicy {
            protected: Vec::new(),
            allowed: Vec::new(),
        };
        for path in SYSTEM_DIRS.iter().chain(DOCKER_SOCKETS) {
            p = p.protect(path);
        }
        p
    }

    /// Also protects `path` (a data directory, the Engine's socket).
    pub fn protect(mut self, path: impl AsRef<Path>) -> HostPathPolicy {
        let canonical = canonical(path.as_ref());
        if !self.protected.contains(&canonical) {
            self.protected.push(canonical);
        }
        self
    }

    /// Adds an `--allow-host-path` prefix: from now on a host path must be under one.
    pub fn allow(mut self, prefix: impl AsRef<Path>) -> HostPathPolicy {
        let canonical = canonical(prefix.as_ref());
        if !self.allowed.contains(&canonical) {
            self.allowed.push(canonical);
        }
        self
    }

    /// Whether `host` may be mounted; `Err` says why not and which flag would allow it.
    pub fn check(&self, host: &str) -> Result<(), Refusal> {
        let path = canonical(Path::new(host));
        let shown = if path == Path::new(host) {
            format!("`{host}`")
        } else {
            format!("`{host}` (resolved to `{}`)", path.display())
        };
        let allowing: Vec<&PathBuf> = self
            .allowed
            .iter()
            .filter(|a| path.starts_with(a))
            .collect();
        if !self.allowed.is_empty() && allowing.is_empty() {
            let list: Vec<String> = self
                .allowed
                .iter()
                .map(|a| a.display().to_string())
                .collect();
            return Err(Refusal(format!(
                "host path {shown} is outside this agent's --allow-host-path ({}); start the agent with --allow-host-path {} to allow it",
                list.join(", "),
                path.display()
            )));
        }
        for z in &self.protected {
            if path.starts_with(z) {
                if allowing.iter().any(|a| a.starts_with(z)) {
                    continue;
                }
                return Err(Refusal(format!(
                    "host path {shown} is{} `{}`, which agents never mount by default; start the agent with --allow-host-path {} if this workload must have it",
                    if &path == z { "" } else { " inside" },
                    z.display(),
                    path.display()
                )));
            }
            if z.starts_with(&path) {
                if allowing.iter().any(|a| **a == path) {
                    continue;
                }
                return Err(Refusal(format!(
                    "host path {shown} holds `{}`, which agents never mount by default; mount a narrower path, or start the agent with --allow-host-path {} if this workload must have all of it",
                    z.display(),
                    path.display()
                )));
            }
        }
        Ok(())
    }
}

impl Default for HostPathPolicy {
    fn default() -> Self {
        HostPathPolicy::new()
    }
}

/// `path` with symlinks and `..` resolved as far as it exists, the rest appended as written
/// (with `.` dropped and `..` applied lexically: nothing there is a symlink yet). A relative
/// path is taken from `/`, as the Engine does not take relative binds anyway.
pub fn canonical(path: &Path) -> PathBuf {
    let absolute = Path::new("/").join(path);
    let mut existing = absolute.as_path();
    let mut rest: Vec<Component> = Vec::new();
    let mut base = loop {
        if let Ok(c) = std::fs::canonicalize(existing) {
            break c;
        }
        match (existing.parent(), existing.components().next_back()) {
            (Some(parent), Some(last)) => {
                rest.push(last);
                existing = parent;
            }
            _ => break PathBuf::from("/"),
        }
    };
    for c in rest.into_iter().rev() {
        match c {
            Component::ParentDir => {
                base.pop();
            }
            Component::Normal(n) => base.push(n),
            Component::CurDir | Component::RootDir | Component::Prefix(_) => {}
        }
    }
    base
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(p: &HostPathPolicy, host: &str) -> String {
        p.check(host)
            .expect_err(&format!("{host} must be refused"))
            .to_string()
    }

    #[test]
    fn by_default_system_dirs_the_socket_the_data_dir_and_what_holds_them_are_refused() {
        let data = tempfile::tempdir().expect("tempdir");
        let agent = data.path().join("agent");
        let p = HostPathPolicy::new().protect(data.path());
        for host in [
            "/",
            "/etc",
            "/etc/shadow",
            "/root/.ssh",
            "/var/run/docker.sock",
        ] {
            let why = refused(&p, host);
            assert!(why.contains("--allow-host-path"), "{why}");
        }
        assert!(refused(&p, "/var/run").contains("holds `"));
        assert!(refused(&p, agent.to_str().expect("utf-8")).contains("inside"));
        // The parent of the data directory holds it.
        let parent = data.path().parent().expect("a parent");
        refused(&p, parent.to_str().expect("utf-8"));
        // `..` and symlinks are resolved before comparing.
        let why = refused(&p, "/var/run/../../etc/passwd");
        assert!(why.contains("resolved to `/etc/passwd`"), "{why}");
        let outside = tempfile::tempdir_in("/var/tmp").expect("tempdir");
        let link2 = outside.path().join("root-link");
        std::os::unix::fs::symlink("/", &link2).expect("symlink");
        assert!(refused(&p, link2.to_str().expect("utf-8")).contains("resolved to `/`"));
        // Ordinary paths, existing or not, are fine.
        p.check("/srv/app/data").expect("/srv/app/data");
        p.check(outside.path().to_str().expect("utf-8"))
            .expect("a fresh directory");
    }

    #[test]
    fn an_allow_list_confines_mounts_and_names_protected_paths_explicitly() {
        let p = HostPathPolicy::new().allow("/srv");
        p.check("/srv/app").expect("under the prefix");
        assert!(refused(&p, "/opt/app").contains("outside this agent's --allow-host-path (/srv)"));
        // Naming the socket (or a directory inside /etc) allows exactly that.
        let p = HostPathPolicy::new()
            .allow("/var/run/docker.sock")
            .allow("/etc/ssl");
        p.check("/var/run/docker.sock").expect("the socket, named");
        p.check("/etc/ssl/certs").expect("inside /etc/ssl, named");
        refused(&p, "/etc/passwd");
        // `/` allows mounting `/` itself, still not /etc or the socket through it.
        let p = HostPathPolicy::new().allow("/");
        p.check("/").expect("/ named exactly");
        refused(&p, "/etc");
        refused(&p, "/run/docker.sock");
        refused(&p, "/run");
    }
}
