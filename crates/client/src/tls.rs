//! Whom an `https://` client trusts: the cluster's CA and nothing else.
//!
//! berth never trusts the system's CAs for its control plane: a server is the cluster's server
//! when its certificate chains to the cluster CA, given either as a PEM file (`--ca`,
//! `DATA_DIR/ca.crt`) or, on an agent's first connection, as the CA certificate's SHA-256 from
//! the join token. In the second case the CA must be in the chain the server presents; the
//! client checks its hash, then checks the server's certificate against it exactly as against
//! a CA file (signature, validity, the name in the URL), and remembers it (see
//! [`crate::Client::learned_ca`]) so the agent can store it and trust only it from then on.
//!
//! Refusals carry a message that says why, so `cannot reach the berth server …` is followed by
//! `the server's certificate is not signed by the cluster CA …` rather than `UnknownIssuer`.

use std::sync::{Arc, Mutex, Once};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};
use sha2::{Digest, Sha256};

use crate::ClientError;

/// Whom a client trusts for an `https://` server.
#[derive(Clone)]
pub enum ServerTrust {
    /// Only servers whose certificate chains to one of these CA certificates (`--ca FILE`).
    Ca {
        /// The certificates, DER.
        certs: Vec<CertificateDer<'static>>,
        /// Where they came from, for messages (`/home/me/.berth/ca.crt`).
        source: String,
    },
    /// Only servers that present, in their chain, the CA certificate with this SHA-256 (of its
    /// DER, 64 hex digits, from a `berth1-…` join token), and whose certificate it signed.
    Fingerprint(String),
}

impl std::fmt::Debug for ServerTrust {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ServerTrust::Ca { source, .. } => write!(f, "Ca({source})"),
            ServerTrust::Fingerprint(fp) => write!(f, "Fingerprint({fp})"),
        }
    }
}

impl ServerTrust {
    /// The CA certificates in a PEM file's bytes; `source` names the file in messages.
    pub fn from_pem(pem: &[u8], source: &str) -> Result<ServerTrust, ClientError> {
        let certs = CertificateDer::pem_slice_iter(pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| ClientError::Config {
                message: format!(
                    "{source}: not a PEM certificate file ({e}); --ca / BERTH_CA must name the cluster's CA certificate (the server's DATA_DIR/ca.crt)"
                ),
            })?;
        if certs.is_empty() {
            return Err(ClientError::Config {
                message: format!(
                    "{source}: no certificate in it; --ca / BERTH_CA must name the cluster's CA certificate (the server's DATA_DIR/ca.crt)"
                ),
            });
        }
        Ok(ServerTrust::Ca {
            certs,
            source: source.to_string(),
        })
    }

    /// Reads a PEM file (`--ca FILE`).
    pub fn from_pem_file(path: &std::path::Path) -> Result<ServerTrust, ClientError> {
        let bytes = std::fs::read(path).map_err(|e| ClientError::Config {
            message: format!(
                "cannot read the CA file {}: {e}; check --ca / BERTH_CA",
                path.display()
            ),
        })?;
        ServerTrust::from_pem(&bytes, &path.display().to_string())
    }
}

/// SHA-256 of a certificate's DER, lowercase hex.
pub fn fingerprint(der: &[u8]) -> String {
    hex::encode(Sha256::digest(der))
}

/// A certificate as PEM text (for an agent storing the CA it learned).
pub fn to_pem(der: &CertificateDer<'_>) -> String {
    let config = pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF);
    pem::encode_config(&pem::Pem::new("CERTIFICATE", der.to_vec()), config)
}

/// Installs `ring` as the process's rustls provider once (reqwest with `rustls-no-provider`
/// needs one even for plain-HTTP clients); one already installed (the router's) stays.
pub(crate) fn install_ring_provider() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// The CA a [`ServerTrust::Fingerprint`] client found in a server's chain.
pub(crate) type Learned = Arc<Mutex<Option<CertificateDer<'static>>>>;

/// The rustls configuration for `trust`, and where a pinned CA will be recorded.
///
/// Every client gets one, plain-HTTP ones too (`None`: no certificate is trusted): otherwise
/// reqwest would build its own from the system's CAs, and fail where there are none (a
/// container with nothing but berth in it).
pub(crate) fn client_config(
    trust: Option<&ServerTrust>,
) -> Result<(rustls::ClientConfig, Learned), ClientError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let learned: Learned = Arc::new(Mutex::new(None));
    let mode = match trust {
        None => Mode::None,
        Some(ServerTrust::Ca { certs, source }) => {
            let verifier = webpki_verifier(certs, &provider).map_err(|e| ClientError::Config {
                message: format!("{source}: cannot trust it as a CA: {e}; check --ca / BERTH_CA"),
            })?;
            Mode::Ca {
                verifier,
                source: source.clone(),
            }
        }
        Some(ServerTrust::Fingerprint(fp)) => Mode::Pin {
            sha256: fp.to_ascii_lowercase(),
            learned: learned.clone(),
        },
    };
    let verifier = Arc::new(BerthVerifier {
        mode,
        provider: provider.clone(),
    });
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ClientError::Config {
            message: format!("cannot set up TLS: {e}"),
        })?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    // reqwest is built without HTTP/2 here: offer only what it speaks.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok((config, learned))
}

fn webpki_verifier(
    certs: &[CertificateDer<'static>],
    provider: &Arc<CryptoProvider>,
) -> Result<Arc<WebPkiServerVerifier>, String> {
    let mut roots = RootCertStore::empty();
    for cert in certs {
        roots.add(cert.clone()).map_err(|e| e.to_string())?;
    }
    WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| e.to_string())
}

#[derive(Debug)]
enum Mode {
    /// A plain-HTTP client's: it trusts no certificate at all.
    None,
    Ca {
        verifier: Arc<WebPkiServerVerifier>,
        source: String,
    },
    Pin {
        sha256: String,
        learned: Learned,
    },
}

/// Checks a server's certificate against the cluster CA (given, or found by fingerprint).
#[derive(Debug)]
struct BerthVerifier {
    mode: Mode,
    provider: Arc<CryptoProvider>,
}

/// A refusal rustls carries to the caller as the handshake's error.
fn refusal(message: String) -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::Other(rustls::OtherError(Arc::new(
        Refusal(message),
    ))))
}

/// The reason of a refusal, as text.
#[derive(Debug)]
struct Refusal(String);

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Refusal {}

/// What a webpki error means for a berth server, in words.
fn explain(error: rustls::Error, trusted: &str) -> rustls::Error {
    let why = match &error {
        rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer)
        | rustls::Error::InvalidCertificate(CertificateError::BadSignature) => format!(
            "the server's certificate is not signed by the cluster CA ({trusted}): this is not \
             the cluster's server, or something between intercepts the connection"
        ),
        rustls::Error::InvalidCertificate(CertificateError::NotValidForName)
        | rustls::Error::InvalidCertificate(CertificateError::NotValidForNameContext { .. }) => {
            format!(
                "the server's certificate (signed by the cluster CA, {trusted}) is not valid for \
                 the name in the server URL: use a name or address it was made for \
                 (berth server --api-name NAME adds one)"
            )
        }
        rustls::Error::InvalidCertificate(CertificateError::Expired)
        | rustls::Error::InvalidCertificate(CertificateError::ExpiredContext { .. }) => format!(
            "the server's certificate has expired (cluster CA {trusted}): run berth server --rotate-cert"
        ),
        _ => return error,
    };
    refusal(why)
}

impl ServerCertVerifier for BerthVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match &self.mode {
            Mode::None => Err(refusal(
                "this client was set up for a plain-HTTP server and trusts no certificate; use an https:// server URL with --ca".to_string(),
            )),
            Mode::Ca { verifier, source } => verifier
                .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
                .map_err(|e| explain(e, source)),
            Mode::Pin { sha256, learned } => {
                let short = &sha256[..sha256.len().min(16)];
                let ca = intermediates
                    .iter()
                    .chain(std::iter::once(end_entity))
                    .find(|c| fingerprint(c) == *sha256)
                    .ok_or_else(|| {
                        refusal(format!(
                            "no certificate the server presented is the cluster CA of the join \
                             token (fingerprint {short}…): this is not the cluster's server, or \
                             something between intercepts the connection; the join token was not sent"
                        ))
                    })?;
                let ca = ca.clone().into_owned();
                let verifier = webpki_verifier(std::slice::from_ref(&ca), &self.provider)
                    .map_err(|e| refusal(format!("the cluster CA cannot be used: {e}")))?;
                let trusted = format!("fingerprint {short}… from the join token");
                verifier
                    .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
                    .map_err(|e| explain(e, &trusted))?;
                if let Ok(mut slot) = learned.lock() {
                    *slot = Some(ca);
                }
                Ok(ServerCertVerified::assertion())
            }
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Whether a transport error was a TLS refusal, and its message if so: the first rustls error
/// in `error`'s chain. `std::io::Error` hides its inner error from `source()` (and the TLS
/// stack nests them), so each `io::Error`'s inner error is walked too.
pub(crate) fn tls_refusal(error: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut pending: Vec<&(dyn std::error::Error + 'static)> = vec![error];
    // Bounded: a chain is a few levels deep; a cycle cannot hang this.
    for _ in 0..32 {
        let e = pending.pop()?;
        if let Some(r) = e.downcast_ref::<rustls::Error>() {
            return Some(describe(r));
        }
        if let Some(next) = e.source() {
            pending.push(next);
        }
        if let Some(inner) = e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            pending.push(inner);
        }
    }
    None
}

fn describe(error: &rustls::Error) -> String {
    match error {
        rustls::Error::InvalidCertificate(CertificateError::Other(other)) => other.0.to_string(),
        rustls::Error::InvalidMessage(_) => {
            "the server did not answer TLS (is it a plain-HTTP server? then use http://)"
                .to_string()
        }
        other => format!("TLS failed: {other}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pem_file_without_certificates_is_refused_with_the_flag_to_fix() {
        let e = ServerTrust::from_pem(b"hello", "x.pem")
            .unwrap_err()
            .to_string();
        assert!(e.contains("x.pem") && e.contains("--ca"), "{e}");
    }
}
