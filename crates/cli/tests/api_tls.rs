//! TLS for the control plane (issue 10, item 2), through the real binary:
//! - `berth up --api-tls on` on loopback: `api.url` is https, the CLI finds the CA beside it,
//!   a client without the CA (or with another one) is refused with a message that says why;
//! - a man in the middle between an agent and the server, terminating TLS with its own
//!   certificate: the agent refuses to talk, says why, and never sends the join token (the
//!   proxy sees no HTTP request); the same proxy passing TCP through works, and a client that
//!   trusts the proxy's CA is indeed read by it (so the test can fail for the right reason);
//! - a non-loopback `--api` without TLS needs `--insecure-http` (exit 2 without, a warning
//!   with); on such an address TLS is the default;
//! - `--rotate-cert`: a new leaf from the same CA, and an agent that joined before keeps
//!   working with the restarted server.
//!
//! On main before this change none of this could even be set up: the client refused every
//! `https://` URL ("https is not supported yet").

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::process::Proc;
use common::up::BerthUp;
use common::{assert_exit, command, free_port, run_command, stderr, stdout, temp_dir};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How long a server or an agent may take to be ready.
const READY: Duration = Duration::from_secs(60);
/// How long a one-shot command may take.
const CMD: Duration = Duration::from_secs(60);

/// `berth ARGS` with `BERTH_DATA_DIR=data_dir` (so the CLI finds a local `berth up` there) and
/// no `BERTH_CA` from the developer's shell.
fn berth_at(data_dir: &Path, args: &[&str]) -> std::process::Output {
    let mut cmd = command(args);
    cmd.env("BERTH_DATA_DIR", data_dir).env_remove("BERTH_CA");
    run_command(cmd, CMD)
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
        .trim()
        .to_string()
}

/// SHA-256 hex of the first certificate in a PEM file.
fn first_cert_sha256(path: &Path) -> String {
    let cert = CertificateDer::from_pem_file(path).expect("a PEM certificate");
    berth_client::fingerprint(&cert)
}

/// A fresh cluster CA of someone else and a leaf for 127.0.0.1 it signed, as a rustls server
/// configuration (chain: leaf, CA); the CA's PEM is written to `ca_file`.
fn impostor(ca_file: &Path) -> Arc<rustls::ServerConfig> {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "berth cluster CA");
    let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().expect("CA key"))
        .expect("CA certificate");
    std::fs::write(ca_file, ca.pem()).expect("write the impostor CA");
    let key = KeyPair::generate().expect("leaf key");
    let leaf = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
        .expect("leaf params")
        .signed_by(&key, &ca)
        .expect("leaf certificate");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(
            vec![leaf.der().clone(), ca.der().clone()],
            PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
        .expect("server config");
    Arc::new(config)
}

/// A TLS client that accepts any certificate: how the proxy re-originates to the real server.
#[derive(Debug)]
struct AcceptAnything(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AcceptAnything {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// What the proxy does with a connection.
#[derive(Clone)]
enum Mode {
    /// Terminate TLS with the impostor's certificate, read the request, re-originate TLS to the
    /// server and relay: a man in the middle.
    Terminate(Arc<rustls::ServerConfig>),
    /// Copy bytes both ways, untouched.
    Passthrough,
}

/// A proxy on loopback in front of `upstream`, counting what it saw. Stops when dropped (its
/// runtime and every task on it go with it).
struct Proxy {
    addr: SocketAddr,
    /// Connections accepted.
    connections: Arc<AtomicUsize>,
    /// The first bytes of every request read in clear text (terminate mode), and, as
    /// `(error: …)`, how connections ended in errors.
    requests: Arc<Mutex<Vec<String>>>,
    _runtime: tokio::runtime::Runtime,
}

impl Proxy {
    fn start(upstream: SocketAddr, mode: Mode) -> Proxy {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("proxy runtime");
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("bind the proxy");
        let addr = listener.local_addr().expect("proxy address");
        let connections = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let (c, r) = (connections.clone(), requests.clone());
        runtime.spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                c.fetch_add(1, Ordering::SeqCst);
                let (mode, r) = (mode.clone(), r.clone());
                tokio::spawn(async move {
                    if let Err(e) = relay(client, upstream, mode, r.clone()).await {
                        r.lock().expect("requests").push(format!("(error: {e})"));
                    }
                });
            }
        });
        Proxy {
            addr,
            connections,
            requests,
            _runtime: runtime,
        }
    }

    fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// What the proxy read in clear text.
    fn requests(&self) -> Vec<String> {
        let all = self.requests.lock().expect("requests").clone();
        all.into_iter()
            .filter(|r| !r.starts_with("(error"))
            .collect()
    }

    /// How connections ended in errors (for failure messages).
    fn errors(&self) -> Vec<String> {
        let all = self.requests.lock().expect("requests").clone();
        all.into_iter()
            .filter(|r| r.starts_with("(error"))
            .collect()
    }
}

async fn relay(
    mut client: tokio::net::TcpStream,
    upstream: SocketAddr,
    mode: Mode,
    requests: Arc<Mutex<Vec<String>>>,
) -> std::io::Result<()> {
    let mut server = tokio::net::TcpStream::connect(upstream).await?;
    match mode {
        Mode::Passthrough => {
            tokio::io::copy_bidirectional(&mut client, &mut server).await?;
        }
        Mode::Terminate(config) => {
            let mut client = tokio_rustls::TlsAcceptor::from(config)
                .accept(client)
                .await?;
            let mut first = vec![0u8; 4096];
            let n = client.read(&mut first).await?;
            if n == 0 {
                return Ok(());
            }
            let head = String::from_utf8_lossy(&first[..n]).into_owned();
            requests.lock().expect("requests").push(head);
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let mut tls = rustls::ClientConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions()
                .expect("versions")
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AcceptAnything(provider)))
                .with_no_client_auth();
            tls.alpn_protocols = vec![b"http/1.1".to_vec()];
            let name = ServerName::try_from("127.0.0.1").expect("name");
            let mut server = tokio_rustls::TlsConnector::from(Arc::new(tls))
                .connect(name, server)
                .await?;
            server.write_all(&first[..n]).await?;
            tokio::io::copy_bidirectional(&mut client, &mut server).await?;
        }
    }
    Ok(())
}

/// A `berth server` process and where it is.
struct Server {
    proc: Proc,
    data: PathBuf,
    url: String,
}

impl Server {
    /// Starts `berth server --data-dir DIR/data ARGS` and waits for its "berth server on URL".
    fn start(dir: &Path, name: &str, args: &[&str]) -> Server {
        let data = dir.join("data");
        let mut cmd = command(["server", "--data-dir"]);
        cmd.arg(&data).args(args).env("RUST_BACKTRACE", "1");
        let proc = Proc::spawn(cmd, name, dir);
        proc.wait_until(READY, "berth server to say where it listens", || {
            proc.stdout_text().contains("berth server on ")
        });
        let text = proc.stdout_text();
        let url = text
            .lines()
            .rev()
            .find_map(|l| l.strip_prefix("berth server on "))
            .and_then(|rest| rest.split_whitespace().next())
            .expect("a URL after `berth server on`")
            .to_string();
        Server { proc, data, url }
    }

    fn addr(&self) -> SocketAddr {
        self.url
            .rsplit('/')
            .next()
            .and_then(|a| a.parse().ok())
            .expect("the URL ends with the address")
    }

    fn ca(&self) -> PathBuf {
        self.data.join("ca.crt")
    }

    fn join_token(&self) -> String {
        read(&self.data.join("join.token"))
    }

    /// `berth ARGS` as the admin, trusting the server's CA.
    fn admin(&self, args: &[&str]) -> std::process::Output {
        let mut cmd = command(args);
        cmd.env("BERTH_SERVER", &self.url)
            .env("BERTH_TOKEN", read(&self.data.join("admin.token")))
            .env("BERTH_CA", self.ca())
            .env("BERTH_DATA_DIR", self.data.join("nowhere"));
        run_command(cmd, CMD)
    }

    /// The nodes, as `berth nodes --output json` shows them.
    fn nodes(&self) -> Vec<serde_json::Value> {
        let out = self.admin(&["nodes", "--output", "json"]);
        assert_exit(&out, 0);
        serde_json::from_str(&stdout(&out)).expect("nodes JSON")
    }

    fn node(&self, name: &str) -> Option<serde_json::Value> {
        self.nodes().into_iter().find(|n| n["name"] == name)
    }
}

/// `berth agent --server URL --join-token TOKEN --name NAME --data-dir DIR/NAME`.
fn agent(dir: &Path, name: &str, server: &str, token: &str) -> Proc {
    let data = dir.join(name);
    let cmd = command([
        "agent",
        "--server",
        server,
        "--join-token",
        token,
        "--name",
        name,
        "--data-dir",
        data.to_str().expect("utf-8 path"),
    ]);
    Proc::spawn(cmd, name, dir)
}

#[test]
fn up_with_api_tls_on_serves_https_and_the_cli_finds_the_ca_beside_api_url() {
    let up = BerthUp::spawn_with(&["--api-tls", "on"]);
    let data = up.data_dir().to_path_buf();
    up.wait_until(READY, "api.url", || data.join("api.url").exists());
    let url = read(&data.join("api.url"));
    assert_eq!(url, format!("https://{}", up.api()), "api.url says https");
    assert!(data.join("ca.crt").exists(), "ca.crt beside api.url");
    let join = read(&data.join("join.token"));
    assert!(
        join.starts_with("berth1-"),
        "the join token pins the CA: {join}"
    );
    assert!(
        join.contains(&first_cert_sha256(&data.join("ca.crt"))),
        "the join token's fingerprint is the CA's"
    );

    // `berth status` with nothing but the data dir: URL, token and CA all found there.
    up.wait_until(READY, "berth status through https", || {
        berth_at(&data, &["status"]).status.success()
    });
    // The in-process agent joined over TLS too (pinned by the join token's fingerprint).
    up.wait_until(READY, "the local node to be ready", || {
        let out = berth_at(&data, &["nodes"]);
        out.status.success() && stdout(&out).contains("ready")
    });
    assert!(data.join("agent").join("server-ca.crt").exists());

    // An edge router follows the https server too (it fetches the table before it listens).
    let listen = format!("127.0.0.1:{}", free_port());
    let mut cmd = command(["router", "--listen", &listen]);
    cmd.env("BERTH_DATA_DIR", &data).env_remove("BERTH_CA");
    let edge = Proc::spawn(cmd, "edge", up.dir());
    edge.wait_until(
        READY,
        "the edge router to fetch the table over https",
        || edge.stdout_text().contains("berth router on http://"),
    );
    drop(edge);

    // A client without the CA is refused before it sends anything, and told what to pass.
    let tmp = temp_dir();
    let token = up.token();
    let out = berth_at(tmp.path(), &["status", "--server", &url, "--token", &token]);
    assert_exit(&out, 1);
    assert!(
        stderr(&out).contains("pass --ca FILE or set BERTH_CA"),
        "{}",
        stderr(&out)
    );
    // A client with another CA is refused, and told why.
    let other = tmp.path().join("other-ca.crt");
    impostor(&other);
    let out = berth_at(
        tmp.path(),
        &[
            "status",
            "--server",
            &url,
            "--token",
            &token,
            "--ca",
            other.to_str().unwrap(),
        ],
    );
    assert_exit(&out, 1);
    assert!(
        stderr(&out).contains("not signed by the cluster CA"),
        "{}",
        stderr(&out)
    );
    // Plain HTTP to it gets nothing.
    let plain = format!("http://{}", up.api());
    let out = berth_at(
        tmp.path(),
        &["status", "--server", &plain, "--token", &token],
    );
    assert_exit(&out, 1);
    assert!(stderr(&out).contains("use https://"), "{}", stderr(&out));
}

#[test]
fn a_man_in_the_middle_gets_no_request_from_an_agent_and_the_agent_says_why() {
    let tmp = temp_dir();
    let server = Server::start(
        tmp.path(),
        "server",
        &["--api", "127.0.0.1:0", "--api-tls", "on"],
    );
    assert!(server.url.starts_with("https://"), "{}", server.url);
    let token = server.join_token();
    assert!(token.starts_with("berth1-"), "{token}");
    let impostor_ca = tmp.path().join("impostor-ca.crt");
    let mitm = Proxy::start(server.addr(), Mode::Terminate(impostor(&impostor_ca)));

    // First contact through the man in the middle: the join token's fingerprint is not in
    // the chain presented.
    let victim = agent(tmp.path(), "victim", &mitm.url(), &token);
    // Either outcome ends the wait; a proxy that read a request fails the test at once.
    victim.wait_until(READY, "the agent to refuse the proxy", || {
        victim
            .stderr_text()
            .contains("refused to talk to the berth server")
            || !mitm.requests().is_empty()
    });
    assert!(
        mitm.requests().is_empty(),
        "the proxy read the agent's requests: {:?}",
        mitm.requests()
    );
    let err = victim.stderr_text();
    assert!(
        err.contains("is the cluster CA of the join token") && err.contains("intercepts"),
        "{err}"
    );
    assert!(
        mitm.connections.load(Ordering::SeqCst) >= 1,
        "it went through the proxy"
    );
    assert!(
        mitm.requests().is_empty(),
        "the proxy read requests: {:?}",
        mitm.requests()
    );
    assert!(!tmp.path().join("victim").join("node.token").exists());
    assert!(!tmp.path().join("victim").join("server-ca.crt").exists());
    assert!(
        server.node("victim").is_none(),
        "the victim never registered"
    );
    drop(victim);

    // An agent that joined the real server, restarted behind the proxy: it trusts the CA it
    // stored, and the proxy's certificate is not signed by it.
    let direct = agent(tmp.path(), "joined", &server.url, &token);
    direct.wait_until(READY, "the agent to join directly", || {
        tmp.path().join("joined").join("node.token").exists()
    });
    assert!(tmp.path().join("joined").join("server-ca.crt").exists());
    direct.signal(nix::sys::signal::Signal::SIGTERM);
    direct.wait_exit(READY);
    drop(direct);
    let moved = agent(tmp.path(), "joined", &mitm.url(), &token);
    let what = "the joined agent to refuse the proxy";
    if !common::poll_until(READY, || {
        moved.stderr_text().contains("not signed by the cluster CA") || !mitm.requests().is_empty()
    }) {
        let port = server.addr().port().to_string();
        let ss = std::process::Command::new("ss").args(["-tanp"]).output();
        let ss = ss
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        let lines: Vec<&str> = ss.lines().filter(|l| l.contains(&port)).collect();
        panic!(
            "{what}: upstream {} (server exit: {:?}); the proxy's errors: {:?}\nss:\n{}\n{}",
            server.addr(),
            server.proc.try_exit(),
            mitm.errors(),
            lines.join("\n"),
            moved.log_tail()
        );
    }
    moved.wait_until(READY, what, || {
        moved.stderr_text().contains("not signed by the cluster CA") || !mitm.requests().is_empty()
    });
    assert!(mitm.requests().is_empty(), "{:?}", mitm.requests());
    drop(moved);

    // The proxy works as a man in the middle for a client that trusts its CA: it reads the
    // request (and the token). What keeps agents safe is their check, not a broken proxy.
    let mut cmd = command(["nodes", "--server", &mitm.url(), "--ca"]);
    cmd.arg(&impostor_ca)
        .env("BERTH_TOKEN", read(&server.data.join("admin.token")))
        .env("BERTH_DATA_DIR", tmp.path().join("nowhere"));
    let out = run_command(cmd, CMD);
    assert_exit(&out, 0);
    let seen = mitm.requests();
    assert!(
        seen.iter()
            .any(|r| r.contains("GET /v1/nodes") && r.contains("Bearer")),
        "{seen:?}"
    );

    // The same proxy passing TCP through: the agent verifies the real server and joins.
    let pass = Proxy::start(server.addr(), Mode::Passthrough);
    let through = agent(tmp.path(), "through", &pass.url(), &token);
    through.wait_until(READY, "the agent to join through the TCP proxy", || {
        server
            .node("through")
            .is_some_and(|n| n["state"] == "ready")
    });
    assert!(pass.connections.load(Ordering::SeqCst) >= 1);
}

#[test]
fn plain_http_on_a_non_loopback_address_needs_insecure_http_and_warns() {
    let tmp = temp_dir();
    let data = tmp.path().join("refused");
    let mut cmd = command([
        "server",
        "--api",
        "0.0.0.0:0",
        "--api-tls",
        "off",
        "--data-dir",
    ]);
    cmd.arg(&data);
    let out = run_command(cmd, CMD);
    assert_exit(&out, 2);
    let err = stderr(&out);
    assert!(
        err.contains("--insecure-http") && err.contains("clear text"),
        "{err}"
    );
    assert!(
        !data.join("join.token").exists(),
        "refused before creating anything"
    );

    let insecure = tmp.path().join("insecure");
    std::fs::create_dir_all(&insecure).unwrap();
    let server = Server::start(
        &insecure,
        "insecure",
        &["--api", "0.0.0.0:0", "--api-tls", "off", "--insecure-http"],
    );
    assert!(
        server.url.starts_with("http://127.0.0.1:"),
        "{}",
        server.url
    );
    assert!(
        server
            .proc
            .stderr_text()
            .contains("warning: the API on 0.0.0.0:"),
        "{}",
        server.proc.log_tail()
    );
    server.proc.wait_until(READY, "health over plain HTTP", || {
        common::http::is_ok(server.addr(), "/v1/health")
    });
    let join = server.join_token();
    assert!(
        !join.starts_with("berth1-"),
        "no CA to pin without TLS: {join}"
    );

    // The default on such an address is TLS, with 127.0.0.1 in the certificate.
    let default = tmp.path().join("default");
    std::fs::create_dir_all(&default).unwrap();
    let tls = Server::start(&default, "default", &["--api", "0.0.0.0:0"]);
    assert!(tls.url.starts_with("https://127.0.0.1:"), "{}", tls.url);
    assert!(!tls.proc.stderr_text().contains("warning"));
    let out = tls.admin(&["nodes"]);
    assert_exit(&out, 0);
}

#[test]
fn rotate_cert_makes_a_new_leaf_from_the_same_ca_and_joined_agents_keep_working() {
    let tmp = temp_dir();
    let api = format!("127.0.0.1:{}", free_port());
    let server = Server::start(tmp.path(), "server", &["--api", &api, "--api-tls", "on"]);
    let token = server.join_token();
    let node = agent(tmp.path(), "steady", &server.url, &token);
    node.wait_until(READY, "the agent to be ready", || {
        server.node("steady").is_some_and(|n| n["state"] == "ready")
    });
    let leaf = server.data.join("tls").join("server.crt");
    let (leaf_before, ca_before) = (first_cert_sha256(&leaf), read(&server.ca()));
    let Server { proc, data, .. } = server;
    proc.signal(nix::sys::signal::Signal::SIGTERM);
    proc.wait_exit(READY);
    drop(proc);

    let server = Server::start(
        tmp.path(),
        "rotated",
        &["--api", &api, "--api-tls", "on", "--rotate-cert"],
    );
    assert_eq!(server.data, data);
    assert!(
        server.proc.stdout_text().contains("new API certificate"),
        "{}",
        server.proc.log_tail()
    );
    assert_ne!(first_cert_sha256(&leaf), leaf_before, "a new leaf");
    assert_eq!(read(&server.ca()), ca_before, "the same CA");
    assert_eq!(server.join_token(), token, "the join token is unchanged");
    // The agent, never restarted, heartbeats to the restarted server over the new leaf.
    node.wait_until(READY, "a heartbeat after the rotation", || {
        server
            .node("steady")
            .is_some_and(|n| n.get("last_seen_ms_ago").is_some())
    });
    assert!(
        !node.stderr_text().contains("refused to talk"),
        "{}",
        node.log_tail()
    );
}

#[test]
fn an_operators_certificate_is_used_for_the_api_and_its_ca_is_the_one_agents_pin() {
    let tmp = temp_dir();
    // The operator's CA and a certificate for 127.0.0.1 it signed; the chain file ends with
    // the CA, which clients are to trust.
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "operator CA");
    let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().expect("CA key"))
        .expect("CA certificate");
    let key = KeyPair::generate().expect("leaf key");
    let leaf = CertificateParams::new(vec!["127.0.0.1".to_string()])
        .expect("leaf params")
        .signed_by(&key, &ca)
        .expect("leaf certificate");
    let chain = tmp.path().join("api.crt");
    let key_file = tmp.path().join("api.key");
    std::fs::write(&chain, format!("{}{}", leaf.pem(), ca.pem())).unwrap();
    std::fs::write(&key_file, key.serialize_pem()).unwrap();
    let cert = format!("127.0.0.1={}:{}", chain.display(), key_file.display());

    let server = Server::start(
        tmp.path(),
        "server",
        &["--api", "127.0.0.1:0", "--tls-cert", &cert],
    );
    assert!(server.url.starts_with("https://"), "{}", server.url);
    assert!(
        !server.data.join("tls").join("ca.key").exists(),
        "no cluster CA is made when the operator brings a certificate"
    );
    let ca_fp = berth_client::fingerprint(ca.der());
    assert_eq!(
        first_cert_sha256(&server.ca()),
        ca_fp,
        "DATA_DIR/ca.crt is the operator's CA"
    );
    let token = server.join_token();
    assert!(token.starts_with(&format!("berth1-{ca_fp}-")), "{token}");
    assert_exit(&server.admin(&["nodes"]), 0);

    // An agent pinning it by the token joins; one with the old token form and --ca too.
    let pinned = agent(tmp.path(), "pinned", &server.url, &token);
    let secret = token.rsplit('-').next().expect("the secret").to_string();
    let mut cmd = command(["agent", "--server", &server.url, "--join-token", &secret]);
    cmd.args(["--name", "legacy", "--data-dir"])
        .arg(tmp.path().join("legacy"))
        .arg("--ca")
        .arg(server.ca());
    let legacy = Proc::spawn(cmd, "legacy", tmp.path());
    for (proc, name) in [(&pinned, "pinned"), (&legacy, "legacy")] {
        proc.wait_until(READY, "the agent to be ready", || {
            server.node(name).is_some_and(|n| n["state"] == "ready")
        });
    }
    // Without --ca the old form cannot trust an https server: refused at start, with the fix.
    let mut cmd = command(["agent", "--server", &server.url, "--join-token", &secret]);
    cmd.args(["--name", "lost", "--data-dir"])
        .arg(tmp.path().join("lost"))
        .env_remove("BERTH_CA");
    let out = run_command(cmd, CMD);
    assert_exit(&out, 1);
    assert!(stderr(&out).contains("--ca"), "{}", stderr(&out));
}

/// Whether `pid` ignores SIGPIPE, from the `SigIgn` mask in `/proc/PID/status`.
fn ignores_sigpipe(pid: i32) -> bool {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    let mask = status
        .lines()
        .find_map(|l| l.strip_prefix("SigIgn:"))
        .and_then(|m| u64::from_str_radix(m.trim(), 16).ok())
        .expect("a SigIgn line");
    mask & (1 << (13 - 1)) != 0
}

/// A daemon must ignore SIGPIPE: `main` restores its default for `berth status | head`, and a
/// TLS write (a vectored write, without MSG_NOSIGNAL) to a connection whose peer went away then
/// killed the whole server. Seen as "server exit: signal 13" in the man-in-the-middle test,
/// about one run in five: the server died while a restarted agent was dialling it.
#[test]
fn daemons_ignore_sigpipe_so_a_peer_that_went_away_cannot_kill_them() {
    let tmp = temp_dir();
    let server = Server::start(
        tmp.path(),
        "server",
        &["--api", "127.0.0.1:0", "--api-tls", "on"],
    );
    assert!(ignores_sigpipe(server.proc.pid().as_raw()), "berth server");
    let node = agent(tmp.path(), "n1", &server.url, &server.join_token());
    node.wait_until(READY, "the agent to join", || {
        tmp.path().join("n1").join("node.token").exists()
    });
    assert!(ignores_sigpipe(node.pid().as_raw()), "berth agent");
    let up = BerthUp::spawn();
    up.wait_healthy();
    assert!(ignores_sigpipe(up.pid()), "berth up");
}
