//! TLS termination: certificates per host, chosen by SNI, on a listener of its own.
//!
//! The router terminates TLS itself (rustls on the `ring` provider) so that an edge node needs
//! no separate terminator in front of it. Certificates are read from PEM files once, when a
//! [`TlsListener`] is made: a missing or mismatched file is an error for the caller at start-up,
//! not a handshake failure discovered by the first client. ALPN offers `h2` then `http/1.1`;
//! after the handshake a connection is served exactly like a plain one (HTTP/1.1 or HTTP/2,
//! same routes), except that instances see `X-Forwarded-Proto: https`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Once};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::compiled::normalize_host;

/// Which certificate to present for which host.
#[derive(Debug, Clone, Default)]
pub struct TlsConfig {
    /// `(host, certificate chain PEM file, private key PEM file)`. A host may be a wildcard
    /// (`*.example.com`, one label deep, as in certificates). The first entry is also
    /// presented to clients that send no SNI or an unknown name (as a web server's default
    /// site), so that `curl https://IP/` still gets an answer it can choose to trust.
    pub certs: Vec<(String, PathBuf, PathBuf)>,
}

/// Why a [`TlsConfig`] could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// No `(host, cert, key)` entry at all: a TLS listener would fail every handshake.
    #[error("no certificates configured")]
    NoCertificates,
    /// A PEM file could not be read or holds nothing usable.
    #[error("{path}: {reason}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// What was wrong with it.
        reason: String,
    },
    /// The key cannot sign with the `ring` provider, or does not match the certificate.
    #[error("certificate for {host}: {source}")]
    Key {
        /// The entry's host.
        host: String,
        /// rustls' reason.
        source: rustls::Error,
    },
}

/// A listener whose connections speak TLS, with its certificates loaded; goes in
/// [`crate::RouterConfig::tls`].
pub struct TlsListener {
    pub(crate) listener: TcpListener,
    pub(crate) acceptor: TlsAcceptor,
}

impl std::fmt::Debug for TlsListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsListener")
            .field("addr", &self.listener.local_addr().ok())
            .finish()
    }
}

impl TlsListener {
    /// Loads every certificate of `config` and pairs them with `listener`.
    pub fn new(listener: TcpListener, config: &TlsConfig) -> Result<Self, TlsError> {
        Ok(TlsListener {
            listener,
            acceptor: TlsAcceptor::from(server_config(config)?),
        })
    }
}

/// Installs `ring` as the process-wide rustls provider, once. Other TLS users in the same
/// process (reqwest with `rustls-no-provider`) then find it; if something else installed a
/// provider first, that one stays, and the router still uses `ring` explicitly.
pub fn install_ring_provider() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// The rustls server configuration for `config`: TLS 1.2 and 1.3, SNI → certificate, ALPN
/// `h2` and `http/1.1`.
pub fn server_config(config: &TlsConfig) -> Result<Arc<ServerConfig>, TlsError> {
    install_ring_provider();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut resolver = SniResolver::default();
    for (host, cert_path, key_path) in &config.certs {
        let key = load_key(&provider, host, cert_path, key_path)?;
        resolver.default.get_or_insert_with(|| key.clone());
        let host = normalize_host(host);
        match host.strip_prefix("*.") {
            Some(suffix) => resolver.wildcards.insert(suffix.to_owned(), key),
            None => resolver.exact.insert(host.into_owned(), key),
        };
    }
    if resolver.default.is_none() {
        return Err(TlsError::NoCertificates);
    }
    let mut server = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|source| TlsError::Key {
            host: String::new(),
            source,
        })?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(resolver));
    server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(server))
}

fn pem_error(path: &Path, reason: impl std::fmt::Display) -> TlsError {
    TlsError::Pem {
        path: path.to_owned(),
        reason: reason.to_string(),
    }
}

fn load_key(
    provider: &CryptoProvider,
    host: &str,
    cert_path: &Path,
    key_path: &Path,
) -> Result<Arc<CertifiedKey>, TlsError> {
    let chain = CertificateDer::pem_file_iter(cert_path)
        .map_err(|e| pem_error(cert_path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(cert_path, e))?;
    if chain.is_empty() {
        return Err(pem_error(cert_path, "no CERTIFICATE block"));
    }
    let key = PrivateKeyDer::from_pem_file(key_path).map_err(|e| pem_error(key_path, e))?;
    let signing = provider
        .key_provider
        .load_private_key(key)
        .map_err(|source| TlsError::Key {
            host: host.to_owned(),
            source,
        })?;
    let certified = CertifiedKey::new(chain, signing);
    // A key that does not belong to the certificate would fail every handshake; say so now.
    certified.keys_match().map_err(|source| TlsError::Key {
        host: host.to_owned(),
        source,
    })?;
    Ok(Arc::new(certified))
}

/// SNI → certificate: the exact name, else a `*.` wildcard one label up, else the default.
#[derive(Debug, Default)]
struct SniResolver {
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// By the suffix after `*.`.
    wildcards: HashMap<String, Arc<CertifiedKey>>,
    default: Option<Arc<CertifiedKey>>,
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let Some(name) = hello.server_name() else {
            return self.default.clone();
        };
        let name = normalize_host(name);
        self.exact
            .get(name.as_ref())
            .or_else(|| {
                let (_, parent) = name.split_once('.')?;
                self.wildcards.get(parent)
            })
            .or(self.default.as_ref())
            .cloned()
    }
}
