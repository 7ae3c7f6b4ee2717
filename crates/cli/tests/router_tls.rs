//! The router's HTTPS and HTTP/2 through the real binary: `berth up --demo --tls-listen ADDR
//! --tls-cert HOST=CERT:KEY` (and `berth router` with the same flags) answers HTTPS for the
//! demo's host over HTTP/2 and HTTP/1.1, h2c on the plain port, and refuses bad flags before it
//! starts anything.
//!
//! Certificates come from rcgen: a test CA and leaves it signed, as PEM files in the test's
//! directory. The client is hyper over tokio-rustls with that CA as its only root, so the
//! handshake itself proves which certificate the router chose for the SNI.

mod common;

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use common::cluster::wait_settled;
use common::process::Proc;
use common::up::BerthUp;
use common::{assert_no_panic, command, command_of, free_port, run_command, stderr, temp_dir};
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper::{Request, Version};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::TlsConnector;

/// The demo's routed host.
const HOST: &str = "demo.localhost";

/// How long one request (connect, handshake, answer) may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(20);

/// How long a command refused for bad flags may run before the test calls it a hang.
const REFUSAL_TIMEOUT: Duration = Duration::from_secs(30);

/// A test CA, and PEM files of leaves it signed.
struct Pki {
    ca: CertificateDer<'static>,
    dir: PathBuf,
}

impl Pki {
    fn new(dir: &Path) -> Pki {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "berth test CA");
        let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().expect("CA key"))
            .expect("CA certificate");
        let pki = Pki {
            ca: ca.der().clone(),
            dir: dir.to_path_buf(),
        };
        for name in [HOST, "other.test"] {
            let key = KeyPair::generate().expect("leaf key");
            let cert = CertificateParams::new(vec![name.to_string()])
                .expect("leaf params")
                .signed_by(&key, &ca)
                .expect("leaf certificate");
            std::fs::write(pki.cert(name), cert.pem()).expect("write certificate");
            std::fs::write(pki.key(name), key.serialize_pem()).expect("write key");
        }
        pki
    }

    fn cert(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.crt"))
    }

    fn key(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.key"))
    }

    /// `--tls-cert` for `host` with the files of leaf `name`.
    fn flag(&self, host: &str, name: &str) -> String {
        format!(
            "{host}={}:{}",
            self.cert(name).display(),
            self.key(name).display()
        )
    }
}

/// An answer: the HTTP version it came over and its status and body.
#[derive(Debug)]
struct Answer {
    version: Version,
    status: u16,
    body: String,
}

impl Answer {
    /// Asserts a 200 from a `berth whoami` instance of the demo; returns the instance.
    #[track_caller]
    fn assert_whoami(&self, version: Version) -> String {
        assert_eq!(
            (self.status, self.version),
            (200, version),
            "expected 200 over {version:?}: {self:?}"
        );
        let json: serde_json::Value = serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not whoami's JSON ({e}): {self:?}"));
        let instance = json["instance"].as_str().unwrap_or_default();
        assert!(
            !instance.is_empty() && json["release"] == "1",
            "not an instance of the demo's release 1: {self:?}"
        );
        instance.to_string()
    }
}

/// `GET /` for `HOST` on `stream`, over HTTP/2 (prior knowledge) or HTTP/1.1.
async fn get<S>(stream: S, h2: bool, scheme: &str) -> Result<Answer, String>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let io = TokioIo::new(stream);
    let request = if h2 {
        Request::get(format!("{scheme}://{HOST}/"))
    } else {
        Request::get("/").header("host", HOST)
    }
    .body(Empty::<Bytes>::new())
    .expect("request");
    let response = if h2 {
        let (mut sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
            .await
            .map_err(|e| format!("h2 handshake: {e}"))?;
        tokio::spawn(conn);
        sender.send_request(request).await
    } else {
        let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
            .await
            .map_err(|e| format!("http/1.1 handshake: {e}"))?;
        tokio::spawn(conn);
        sender.send_request(request).await
    }
    .map_err(|e| format!("request: {e}"))?;
    let (version, status) = (response.version(), response.status().as_u16());
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("body: {e}"))?
        .to_bytes();
    Ok(Answer {
        version,
        status,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

/// `GET https://HOST/` on `addr`: SNI `HOST`, `root` the only trusted CA, offering `alpn`.
/// Returns the negotiated ALPN protocol and the answer, spoken over what was negotiated.
async fn https_get(
    addr: SocketAddr,
    root: &CertificateDer<'static>,
    alpn: &[&[u8]],
) -> Result<(Option<Vec<u8>>, Answer), String> {
    let attempt = async {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(root.clone()).map_err(|e| format!("root: {e}"))?;
        let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect {addr}: {e}"))?;
        let name = ServerName::try_from(HOST).expect("server name");
        let tls = TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS handshake with {addr}: {e}"))?;
        let negotiated = tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
        let h2 = negotiated.as_deref() == Some(b"h2");
        Ok((negotiated, get(tls, h2, "https").await?))
    };
    tokio::time::timeout(REQUEST_TIMEOUT, attempt)
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {REQUEST_TIMEOUT:?}")))
}

/// `GET http://HOST/` on the plain `addr` with HTTP/2 prior knowledge (h2c).
async fn h2c_get(addr: SocketAddr) -> Result<Answer, String> {
    let attempt = async {
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect {addr}: {e}"))?;
        get(tcp, true, "http").await
    };
    tokio::time::timeout(REQUEST_TIMEOUT, attempt)
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {REQUEST_TIMEOUT:?}")))
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

#[test]
fn https_over_h2_and_http1_and_h2c_reach_the_demo() {
    let certs = temp_dir();
    let pki = Pki::new(certs.path());
    let tls = loopback(free_port());
    // Two certificates: the first (other.test) is the default for unknown names, so the demo's
    // host only gets its own through the `*.localhost` wildcard entry: the router picks by the
    // flag's HOST, and the client, trusting the CA and checking the name, proves which it got.
    let up = BerthUp::start_with(&[
        "--demo",
        "--tls-listen",
        &tls.to_string(),
        "--tls-cert",
        &pki.flag("other.test", "other.test"),
        "--tls-cert",
        &pki.flag("*.localhost", HOST),
    ]);
    wait_settled(&up, "demo", "web", 3, Some(1));
    let rt = runtime();

    // ALPN h2 and http/1.1 offered: the router picks h2.
    let (alpn, answer) = rt
        .block_on(https_get(tls, &pki.ca, &[b"h2", b"http/1.1"]))
        .unwrap_or_else(|e| panic!("HTTPS over h2: {e}\n{}", up.log_tail()));
    assert_eq!(alpn.as_deref(), Some(&b"h2"[..]), "ALPN should pick h2");
    answer.assert_whoami(Version::HTTP_2);

    // A client that speaks only HTTP/1.1 gets it.
    let (alpn, answer) = rt
        .block_on(https_get(tls, &pki.ca, &[b"http/1.1"]))
        .unwrap_or_else(|e| panic!("HTTPS over http/1.1: {e}\n{}", up.log_tail()));
    assert_eq!(alpn.as_deref(), Some(&b"http/1.1"[..]));
    answer.assert_whoami(Version::HTTP_11);

    // h2c (HTTP/2 with prior knowledge) on the plain port.
    rt.block_on(h2c_get(up.router()))
        .unwrap_or_else(|e| panic!("h2c on {}: {e}\n{}", up.router(), up.log_tail()))
        .assert_whoami(Version::HTTP_2);

    // `berth router` takes the same flags and binds its HTTPS listener with SO_REUSEPORT.
    let edge_tls = loopback(free_port());
    let mut cmd = command_of(
        &up.dir().join("berth"),
        [
            "router",
            "--listen",
            &loopback(free_port()).to_string(),
            "--tls-listen",
            &edge_tls.to_string(),
            "--tls-cert",
            &pki.flag(HOST, HOST),
        ],
    );
    cmd.env("BERTH_SERVER", up.api_url())
        .env("BERTH_TOKEN", up.token());
    let edge = Proc::spawn(cmd, "berth-router", up.dir());
    let mut last = String::new();
    let answered = common::poll_until(Duration::from_secs(30), || {
        match rt.block_on(https_get(edge_tls, &pki.ca, &[b"h2"])) {
            Ok((_, answer)) if answer.status == 200 => {
                answer.assert_whoami(Version::HTTP_2);
                true
            }
            Ok((_, answer)) => {
                last = format!("{answer:?}");
                false
            }
            Err(e) => {
                last = e;
                edge.try_exit().is_some()
            }
        }
    });
    assert!(
        answered && edge.try_exit().is_none(),
        "berth router --tls-listen {edge_tls} did not answer HTTPS (last: {last})\n{}",
        edge.log_tail()
    );
}

/// Whether something accepts connections on `addr`.
fn listening(addr: SocketAddr) -> bool {
    TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok()
}

#[test]
fn bad_tls_flags_are_refused_before_anything_starts() {
    let certs = temp_dir();
    let pki = Pki::new(certs.path());
    let garbage = certs.path().join("garbage.pem");
    std::fs::write(&garbage, "this is not PEM\n").expect("write garbage");
    let missing = certs.path().join("missing.crt");
    let (cert, key) = (pki.cert(HOST), pki.key(HOST));
    let with = |c: &Path, k: &Path| format!("{HOST}={}:{}", c.display(), k.display());

    let tls = loopback(free_port()).to_string();
    // (flags, what stderr must say)
    let cases: Vec<(Vec<String>, Vec<String>)> = vec![
        (
            vec!["--tls-cert".into(), pki.flag(HOST, HOST)],
            vec!["--tls-listen".into()],
        ),
        (
            vec!["--tls-listen".into(), tls.clone()],
            vec!["--tls-cert".into()],
        ),
        (
            vec![
                "--tls-listen".into(),
                tls.clone(),
                "--tls-cert".into(),
                with(&missing, &key),
            ],
            vec![
                "--tls-cert".into(),
                format!("cannot read CERT_PEM {}", missing.display()),
                "No such file".into(),
            ],
        ),
        (
            vec![
                "--tls-listen".into(),
                tls.clone(),
                "--tls-cert".into(),
                with(&garbage, &key),
            ],
            vec![
                "--tls-cert".into(),
                format!("{}: no CERTIFICATE block", garbage.display()),
                "CERT_PEM must be a PEM file".into(),
            ],
        ),
        (
            vec![
                "--tls-listen".into(),
                tls.clone(),
                "--tls-cert".into(),
                with(&cert, &garbage),
            ],
            vec![
                "--tls-cert".into(),
                garbage.display().to_string(),
                "KEY_PEM must be a PEM file".into(),
            ],
        ),
        (
            vec![
                "--tls-listen".into(),
                tls.clone(),
                "--tls-cert".into(),
                with(&cert, &pki.key("other.test")),
            ],
            vec!["KEY_PEM must be the private key of CERT_PEM".into()],
        ),
        (
            vec![
                "--tls-listen".into(),
                tls.clone(),
                "--tls-cert".into(),
                format!("{}:{}", cert.display(), key.display()),
            ],
            vec!["--tls-cert".into(), "HOST=CERT_PEM:KEY_PEM".into()],
        ),
    ];
    for (flags, expected) in cases {
        let dir = temp_dir();
        let data_dir = dir.path().join("data");
        let (api, router) = (loopback(free_port()), loopback(free_port()));
        let mut cmd = command(["up", "--api", &api.to_string(), "--router"]);
        cmd.arg(router.to_string())
            .arg("--data-dir")
            .arg(&data_dir)
            .args(&flags);
        let out = run_command(cmd, REFUSAL_TIMEOUT);
        let err = stderr(&out);
        assert_no_panic(&out);
        assert_eq!(
            out.status.code(),
            Some(2),
            "berth up {flags:?} should be a usage error (exit 2):\n{err}"
        );
        for needle in &expected {
            assert!(
                err.contains(needle.as_str()),
                "berth up {flags:?}: stderr should say {needle:?}:\n{err}"
            );
        }
        // Refused while parsing: no data directory, no listener.
        assert!(
            !data_dir.exists(),
            "berth up {flags:?} created {} before refusing",
            data_dir.display()
        );
        for addr in [api, router, tls.parse().expect("address")] {
            assert!(
                !listening(addr),
                "something listens on {addr} after berth up {flags:?}"
            );
        }
    }
}

#[test]
fn a_host_given_twice_or_a_taken_https_port_stops_berth_up() {
    let certs = temp_dir();
    let pki = Pki::new(certs.path());
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let taken_addr = taken.local_addr().expect("addr");
    let cases = [
        (
            loopback(free_port()),
            vec![pki.flag(HOST, HOST), pki.flag(HOST, "other.test")],
            format!("--tls-cert: {HOST} is given twice"),
        ),
        (
            taken_addr,
            vec![pki.flag(HOST, HOST)],
            format!(
                "cannot listen on {taken_addr} for the router's HTTPS: pick another --tls-listen"
            ),
        ),
    ];
    for (tls, certs, expected) in cases {
        let dir = temp_dir();
        let (api, router) = (loopback(free_port()), loopback(free_port()));
        let mut cmd = command(["up", "--api", &api.to_string(), "--router"]);
        cmd.arg(router.to_string())
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .arg("--tls-listen")
            .arg(tls.to_string());
        for c in &certs {
            cmd.arg("--tls-cert").arg(c);
        }
        let out = run_command(cmd, REFUSAL_TIMEOUT);
        let err = stderr(&out);
        assert_no_panic(&out);
        assert_eq!(
            out.status.code(),
            Some(1),
            "berth up with {certs:?} on {tls} should fail:\n{err}"
        );
        assert!(
            err.contains(&expected),
            "stderr should say {expected:?}:\n{err}"
        );
        for addr in [api, router] {
            assert!(
                !listening(addr),
                "something listens on {addr} after berth up exited"
            );
        }
    }
    drop(taken);
}
