//! TLS termination against real sockets: certificates chosen by SNI from PEM files, ALPN
//! `http/1.1` and `h2`, and `X-Forwarded-Proto: https` for the instance. Certificates are
//! made with rcgen in a temporary directory; the client is tokio-rustls with those
//! certificates as its only roots, so a wrong certificate fails the handshake.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use berth_router::{
    serve_with, Endpoint, RouteEntry, RouteTable, RouterConfig, RouterHandle, TlsConfig,
    TlsListener,
};
use bytes::Bytes;
use http::{Request, Response, StatusCode, Version};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

const DEADLINE: Duration = Duration::from_secs(20);
const HOSTS: [&str; 2] = ["a.test", "b.test"];

async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(DEADLINE, fut).await {
        Ok(value) => value,
        Err(_) => panic!("timed out waiting for {what}"),
    }
}

/// A backend that answers `HOST PROTO` (the Host and X-Forwarded-Proto it received).
async fn backend() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let service = service_fn(|req: Request<Incoming>| async move {
                let header = |name: &str| {
                    req.headers()
                        .get(name)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("-")
                        .to_owned()
                };
                let body = format!("{} {}", header("host"), header("x-forwarded-proto"));
                Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(body))))
            });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service),
            );
        }
    });
    addr
}

/// A self-signed certificate per host, written as PEM files into `dir`; returns the config
/// and each host's certificate (DER) for the client's roots and the checks.
fn certificates(dir: &Path) -> (TlsConfig, Vec<CertificateDer<'static>>) {
    let mut config = TlsConfig::default();
    let mut ders = Vec::new();
    for host in HOSTS {
        let generated = rcgen::generate_simple_self_signed(vec![host.to_owned()]).expect("rcgen");
        let cert_path = dir.join(format!("{host}.crt"));
        let key_path = dir.join(format!("{host}.key"));
        std::fs::write(&cert_path, generated.cert.pem()).expect("write cert");
        std::fs::write(&key_path, generated.signing_key.serialize_pem()).expect("write key");
        config.certs.push((host.to_owned(), cert_path, key_path));
        ders.push(generated.cert.der().clone());
    }
    (config, ders)
}

/// A router with a plain and a TLS listener, both hosts routed to `backend`; returns the TLS
/// address.
async fn router(backend: SocketAddr, tls: &TlsConfig) -> SocketAddr {
    let table = RouteTable {
        routes: HOSTS
            .iter()
            .map(|host| RouteEntry {
                host: (*host).to_owned(),
                path_prefix: "/".into(),
                service: format!("svc-{host}"),
                endpoints: vec![Endpoint {
                    addr: backend,
                    instance: "i-1".into(),
                    release: 1,
                    weight: 100,
                }],
                limits: None,
                maintenance: None,
                timeout_ms: None,
                ..RouteEntry::default()
            })
            .collect(),
    };
    let plain = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let secure = TcpListener::bind("127.0.0.1:0").await.expect("bind tls");
    let addr = secure.local_addr().expect("addr");
    let config = RouterConfig {
        tls: Some(TlsListener::new(secure, tls).expect("certificates load")),
        ..RouterConfig::default()
    };
    tokio::spawn(serve_with(
        plain,
        RouterHandle::with_table(table),
        config,
        std::future::pending(),
    ));
    addr
}

/// A TLS connection to `addr` for `sni`, offering only `alpn`, trusting only `roots`.
async fn tls_connect(
    addr: SocketAddr,
    sni: &str,
    alpn: &[u8],
    roots: &[CertificateDer<'static>],
) -> TlsStream<TcpStream> {
    let mut store = rustls::RootCertStore::empty();
    for root in roots {
        store.add(root.clone()).expect("root");
    }
    let mut client = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(store)
    .with_no_client_auth();
    client.alpn_protocols = vec![alpn.to_vec()];
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let name = ServerName::try_from(sni.to_owned()).expect("server name");
    within(
        "TLS handshake",
        TlsConnector::from(Arc::new(client)).connect(name, tcp),
    )
    .await
    .expect("TLS handshake")
}

fn presented(stream: &TlsStream<TcpStream>) -> (CertificateDer<'static>, Option<Vec<u8>>) {
    let (_, session) = stream.get_ref();
    let cert = session
        .peer_certificates()
        .and_then(|chain| chain.first())
        .expect("a certificate")
        .clone()
        .into_owned();
    (cert, session.alpn_protocol().map(<[u8]>::to_vec))
}

async fn body_of(response: Response<Incoming>) -> String {
    let body = within("body", response.into_body().collect())
        .await
        .expect("body")
        .to_bytes();
    String::from_utf8_lossy(&body).into_owned()
}

#[tokio::test]
async fn http1_over_tls_gets_the_certificate_of_its_sni() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (tls, ders) = certificates(dir.path());
    let addr = router(backend().await, &tls).await;
    for (host, der) in HOSTS.iter().zip(&ders) {
        // Only this host's certificate is trusted: the handshake itself proves SNI selection.
        let stream = tls_connect(addr, host, b"http/1.1", std::slice::from_ref(der)).await;
        let (cert, alpn) = presented(&stream);
        assert_eq!(&cert, der, "{host} got another host's certificate");
        assert_eq!(alpn.as_deref(), Some(&b"http/1.1"[..]));
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .expect("http1 handshake");
        tokio::spawn(conn);
        for _ in 0..2 {
            let request = Request::builder()
                .uri("/")
                .header("host", *host)
                .body(Full::new(Bytes::new()))
                .expect("request");
            let response = within("response", sender.send_request(request))
                .await
                .expect("response");
            assert_eq!(response.status(), StatusCode::OK);
            assert_eq!(response.version(), Version::HTTP_11);
            assert_eq!(body_of(response).await, format!("{host} https"));
        }
    }
}

#[tokio::test]
async fn h2_over_tls_is_negotiated_by_alpn() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (tls, ders) = certificates(dir.path());
    let addr = router(backend().await, &tls).await;
    let stream = tls_connect(addr, "b.test", b"h2", &ders[1..]).await;
    let (cert, alpn) = presented(&stream);
    assert_eq!(cert, ders[1]);
    assert_eq!(alpn.as_deref(), Some(&b"h2"[..]));
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .expect("h2 handshake");
    tokio::spawn(conn);
    let request = Request::builder()
        .uri("https://b.test/")
        .body(Full::new(Bytes::new()))
        .expect("request");
    let response = within("h2 response", sender.send_request(request))
        .await
        .expect("h2 response");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.version(), Version::HTTP_2);
    assert_eq!(body_of(response).await, "b.test https");
}

#[test]
fn missing_or_mismatched_files_are_reported_at_load() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (tls, _) = certificates(dir.path());
    assert!(matches!(
        berth_router::tls::server_config(&TlsConfig::default()),
        Err(berth_router::TlsError::NoCertificates)
    ));
    let missing = TlsConfig {
        certs: vec![(
            "a.test".into(),
            dir.path().join("nope.crt"),
            tls.certs[0].2.clone(),
        )],
    };
    assert!(matches!(
        berth_router::tls::server_config(&missing),
        Err(berth_router::TlsError::Pem { .. })
    ));
    // a.test's certificate with b.test's key.
    let mismatched = TlsConfig {
        certs: vec![(
            "a.test".into(),
            tls.certs[0].1.clone(),
            tls.certs[1].2.clone(),
        )],
    };
    assert!(matches!(
        berth_router::tls::server_config(&mismatched),
        Err(berth_router::TlsError::Key { .. })
    ));
}
