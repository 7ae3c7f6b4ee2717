//! Which certificate `berth up`'s HTTPS listener presents (README, "TLS and HTTP/2"): "chosen by
//! the name the client sends (SNI): the exact host first, then a one-label wildcard
//! (`*.example.com` covers `a.example.com`, not `example.com`). The first `--tls-cert` is also
//! the default, for clients that send no name or an unknown one."
//!
//! `router_tls.rs` proves requests reach a route over HTTPS through a wildcard entry; this file
//! checks the choice itself for every case the README names. The client accepts whatever it is
//! shown and compares the leaf with each file's certificate, so a wrong choice is visible as
//! such rather than as a failed handshake.

mod common;

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use common::up::BerthUp;
use common::{free_port, temp_dir};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use tokio_rustls::TlsConnector;

/// How long one handshake may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(20);

/// A verifier that accepts any certificate: the test looks at which one it got.
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

/// The leaf certificate `addr` presents to a client sending `name` (an IP address: no SNI).
fn presented(rt: &tokio::runtime::Runtime, addr: SocketAddr, name: ServerName<'static>) -> Vec<u8> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnything(provider)))
        .with_no_client_auth();
    let shown = format!("{name:?}");
    rt.block_on(async move {
        let attempt = async {
            let tcp = tokio::net::TcpStream::connect(addr).await?;
            let tls = TlsConnector::from(Arc::new(config))
                .connect(name, tcp)
                .await?;
            let leaf = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .map(|c| c.as_ref().to_vec())
                .unwrap_or_default();
            Ok::<_, std::io::Error>(leaf)
        };
        tokio::time::timeout(HANDSHAKE_TIMEOUT, attempt)
            .await
            .unwrap_or_else(|_| panic!("no handshake with {addr} for {shown}"))
            .unwrap_or_else(|e| panic!("TLS handshake with {addr} for {shown}: {e}"))
    })
}

#[test]
fn the_exact_host_wins_then_a_one_label_wildcard_then_the_first_certificate() {
    let dir = temp_dir();
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().expect("CA key"))
        .expect("CA certificate");
    // One leaf per entry, named after the host it is given for; the wildcard entry comes
    // before the exact one, so "exact first" is not just "first listed".
    let hosts = ["default.test", "*.example.test", "a.example.test"];
    let mut ders = BTreeMap::new();
    let mut flags = Vec::new();
    for (n, host) in hosts.iter().enumerate() {
        let key = KeyPair::generate().expect("leaf key");
        let cert = CertificateParams::new(vec![host.to_string()])
            .expect("leaf params")
            .signed_by(&key, &ca)
            .expect("leaf certificate");
        let crt = dir.path().join(format!("leaf{n}.crt"));
        let pem = dir.path().join(format!("leaf{n}.key"));
        std::fs::write(&crt, cert.pem()).expect("write certificate");
        std::fs::write(&pem, key.serialize_pem()).expect("write key");
        ders.insert(cert.der().as_ref().to_vec(), *host);
        flags.push("--tls-cert".to_string());
        flags.push(format!("{host}={}:{}", crt.display(), pem.display()));
    }
    let tls = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let mut args = vec!["--tls-listen".to_string(), tls.to_string()];
    args.extend(flags);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let up = BerthUp::start_with(&args);
    up.wait_until(Duration::from_secs(30), "the HTTPS listener", || {
        std::net::TcpStream::connect_timeout(&tls, Duration::from_millis(200)).is_ok()
    });

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let dns = |name: &str| ServerName::try_from(name.to_string()).expect("a DNS name");
    let cases = [
        (
            dns("a.example.test"),
            "a.example.test",
            "the exact host, over the wildcard",
        ),
        (
            dns("b.example.test"),
            "*.example.test",
            "a name one label under the wildcard",
        ),
        (
            dns("example.test"),
            "default.test",
            "the wildcard's own parent",
        ),
        (
            dns("x.b.example.test"),
            "default.test",
            "two labels under the wildcard",
        ),
        (dns("unknown.test"), "default.test", "an unknown name"),
        (
            dns("default.test"),
            "default.test",
            "the default's own name",
        ),
        (
            ServerName::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST).into()),
            "default.test",
            "no name at all (an IP address sends no SNI)",
        ),
    ];
    for (name, want, why) in cases {
        let shown = format!("{name:?}");
        let leaf = presented(&rt, tls, name);
        let got = ders
            .get(&leaf)
            .copied()
            .unwrap_or("(a certificate of no entry)");
        assert_eq!(got, want, "{shown}: {why}\n{}", up.log_tail());
    }
}
