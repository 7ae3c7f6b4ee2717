//! Real etcd members for tests: Debian's `etcd-server` (`/usr/bin/etcd`, installed by
//! `scripts/install-test-deps`) on loopback ports chosen at run time, data in a temporary
//! directory, killed (and reaped) when the handle is dropped.

#![allow(dead_code)]

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use berth_store::{EtcdStore, Store};

/// How long a member may take to answer after it was started.
const READY: Duration = Duration::from_secs(30);

/// A free loopback port (bound then released: etcd binds it a moment later).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// An etcd cluster of one or more members, each its own process.
pub struct Etcd {
    members: Vec<Child>,
    /// Client URLs, `http://127.0.0.1:PORT`, one per member.
    pub endpoints: Vec<String>,
    _dir: tempfile::TempDir,
}

impl Etcd {
    /// One member: enough for the store's conformance suite.
    pub async fn start() -> Etcd {
        Etcd::cluster(1).await
    }

    /// `n` members forming one cluster (`--initial-cluster`, state `new`).
    pub async fn cluster(n: usize) -> Etcd {
        let bin = std::env::var("BERTH_ETCD").unwrap_or_else(|_| "/usr/bin/etcd".to_string());
        assert!(
            std::path::Path::new(&bin).exists(),
            "{bin} is missing: run scripts/install-test-deps (Debian's etcd-server)"
        );
        let dir = tempfile::tempdir().expect("temp dir");
        let peers: Vec<(String, u16, u16)> = (0..n)
            .map(|i| (format!("e{i}"), free_port(), free_port()))
            .collect();
        let initial = peers
            .iter()
            .map(|(name, peer, _)| format!("{name}=http://127.0.0.1:{peer}"))
            .collect::<Vec<_>>()
            .join(",");
        let mut members = Vec::new();
        let mut endpoints = Vec::new();
        for (name, peer, client) in &peers {
            let client_url = format!("http://127.0.0.1:{client}");
            let peer_url = format!("http://127.0.0.1:{peer}");
            let child = Command::new(&bin)
                .arg("--name")
                .arg(name)
                .arg("--data-dir")
                .arg(dir.path().join(name))
                .arg("--listen-client-urls")
                .arg(&client_url)
                .arg("--advertise-client-urls")
                .arg(&client_url)
                .arg("--listen-peer-urls")
                .arg(&peer_url)
                .arg("--initial-advertise-peer-urls")
                .arg(&peer_url)
                .arg("--initial-cluster")
                .arg(&initial)
                .arg("--initial-cluster-state")
                .arg("new")
                // Large values: one transaction may carry several MiB (etcd's default: 1.5).
                .arg("--max-request-bytes")
                .arg("10485760")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start {bin}: {e}"));
            members.push(child);
            endpoints.push(client_url);
        }
        let etcd = Etcd {
            members,
            endpoints,
            _dir: dir,
        };
        etcd.wait_ready().await;
        etcd
    }

    /// Waits until a store on every member answers a read, within [`READY`].
    async fn wait_ready(&self) {
        for endpoint in &self.endpoints {
            let answers = async {
                loop {
                    let answered = match tokio::time::timeout(
                        Duration::from_secs(2),
                        EtcdStore::connect(std::slice::from_ref(endpoint), "/ready"),
                    )
                    .await
                    {
                        Ok(Ok(s)) => s.range("").await.is_ok(),
                        _ => false,
                    };
                    if answered {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            };
            tokio::time::timeout(READY, answers)
                .await
                .unwrap_or_else(|_| panic!("etcd at {endpoint} did not answer within {READY:?}"));
        }
    }

    /// SIGKILLs member `i` (and reaps it): a crashed etcd member.
    pub fn kill_member(&mut self, i: usize) {
        if let Some(m) = self.members.get_mut(i) {
            let _ = m.kill();
            let _ = m.wait();
        }
    }

    /// A store on this cluster with berth's keys under `prefix`.
    pub async fn store(&self, prefix: &str) -> EtcdStore {
        EtcdStore::connect(&self.endpoints, prefix)
            .await
            .expect("connect to the test etcd")
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        for m in &mut self.members {
            let _ = m.kill();
            let _ = m.wait();
        }
    }
}
