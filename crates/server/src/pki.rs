//! The cluster's certificates: a CA created on the server's first start, a server certificate
//! it signs for the API's names, and the join token that carries the CA's fingerprint.
//!
//! ## Files (all under the data directory)
//! - `tls/` (0700) — `ca.key` and `server.key` (0600, PKCS#8 PEM), `ca.crt` and `server.crt`
//!   (PEM; `server.crt` holds the leaf then the CA, so an agent that pins the CA by fingerprint
//!   finds it in the chain), and `server.json` (the names and expiry the leaf was made for).
//! - `ca.crt` (0644) — a copy of the CA certificate beside `api.url`, where the CLI looks for it.
//! - `join.token` (0600) — `berth1-<CA SHA-256>-<secret>` with TLS, the secret alone without.
//!
//! The CA never leaves the server and is never re-created while `tls/ca.key` exists, so a new
//! server certificate ([`Rotate::Yes`], `berth server --rotate-cert`) needs no agent to re-join:
//! agents trust the CA, not the leaf.

use std::fs;
use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use berth_api::join::JoinToken;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};

use crate::auth::TokenError;

/// The directory, under the data directory, that holds the keys and certificates.
pub const TLS_DIR: &str = "tls";
/// The CA certificate's copy beside `api.url`, for the CLI.
pub const PUBLIC_CA: &str = "ca.crt";
/// How long the CA is valid, in years.
const CA_YEARS: i32 = 20;
/// How long a server certificate is valid, in years; re-issued at start within
/// [`RENEW_BEFORE_DAYS`] of its end.
const LEAF_YEARS: i32 = 2;
/// A server certificate this close to its end is replaced at start.
const RENEW_BEFORE_DAYS: u64 = 60;
/// The CA's subject: always the same, so the issuer is rebuilt from its key alone (see
/// [`Ca::load`]); clusters differ by key, and agents trust a cluster by certificate hash.
const CA_NAME: &str = "berth cluster CA";

/// What went wrong with the cluster's certificates; each names the file and what to do.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// A file could not be read or written.
    #[error("{path}: {source}; check the --data-dir and its permissions")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A file holds something that is not what berth wrote there.
    #[error("{path}: {reason}; restore it, or delete {dir} to create a new CA (every agent must then join again)")]
    Malformed {
        path: PathBuf,
        dir: PathBuf,
        reason: String,
    },
    /// rcgen could not make a certificate (e.g. a name that is not a DNS name or address).
    #[error("cannot create a certificate: {0}; check --api-name")]
    Generate(#[from] rcgen::Error),
    /// rustls refused the certificate and key.
    #[error("the API's certificate cannot be used: {0}")]
    Rustls(#[from] rustls::Error),
    /// The join token file.
    #[error(transparent)]
    Token(#[from] TokenError),
}

/// The cluster CA: its certificate and the key that signs server certificates.
pub struct Ca {
    cert_pem: String,
    cert_der: CertificateDer<'static>,
    key: KeyPair,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Ca({})", self.fingerprint())
    }
}

/// Whether [`server_tls`] makes a new server certificate even if the current one still fits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rotate {
    /// Only when missing, expiring, or made for other names.
    No,
    /// Always (`--rotate-cert`).
    Yes,
}

/// What the API needs to speak TLS, and what to tell clients and agents.
pub struct ApiTls {
    /// The rustls configuration for [`crate::ServerConfig::tls`].
    pub config: Arc<rustls::ServerConfig>,
    /// SHA-256 of the CA certificate, lowercase hex: goes in the join token.
    pub ca_fingerprint: String,
    /// SHA-256 of the server certificate (changes on rotation).
    pub leaf_fingerprint: String,
}

/// SHA-256 of a certificate's DER, lowercase hex: the fingerprint join tokens carry.
pub fn fingerprint(der: &[u8]) -> String {
    hex::encode(Sha256::digest(der))
}

impl Ca {
    /// Loads the CA from `DATA_DIR/tls`, or creates it there on first start.
    pub fn load_or_create(data_dir: &Path) -> Result<Ca, PkiError> {
        let dir = tls_dir(data_dir)?;
        let (key_path, cert_path) = (dir.join("ca.key"), dir.join("ca.crt"));
        if key_path.exists() || cert_path.exists() {
            return Ca::load(&dir, &key_path, &cert_path);
        }
        let key = KeyPair::generate()?;
        let params = ca_params()?;
        let cert = params.self_signed(&key)?;
        write_file(&key_path, key.serialize_pem().as_bytes(), 0o600)?;
        write_file(&cert_path, cert.pem().as_bytes(), 0o644)?;
        tracing::info!(fingerprint = %fingerprint(cert.der()), "created the cluster CA in {}", dir.display());
        Ok(Ca {
            cert_pem: cert.pem(),
            cert_der: cert.der().clone(),
            key,
        })
    }

    /// Reads an existing CA. Its issuer is rebuilt from the fixed subject and the key (what
    /// rcgen needs to sign: name, key identifier, key usages), so no X.509 parser is needed.
    fn load(dir: &Path, key_path: &Path, cert_path: &Path) -> Result<Ca, PkiError> {
        let malformed = |path: &Path, reason: String| PkiError::Malformed {
            path: path.to_path_buf(),
            dir: dir.to_path_buf(),
            reason,
        };
        let key_pem = read(key_path)?;
        let key = KeyPair::from_pem(&key_pem)
            .map_err(|e| malformed(key_path, format!("not a private key: {e}")))?;
        tighten(key_path);
        let cert_pem = read(cert_path)?;
        let cert_der = CertificateDer::from_pem_slice(cert_pem.as_bytes())
            .map_err(|e| malformed(cert_path, format!("not a PEM certificate: {e}")))?;
        Ok(Ca {
            cert_pem,
            cert_der,
            key,
        })
    }

    /// The CA certificate, PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// SHA-256 of the CA certificate's DER, lowercase hex.
    pub fn fingerprint(&self) -> String {
        fingerprint(&self.cert_der)
    }

    /// A new server certificate for `names` (DNS names or IP addresses), signed by this CA.
    fn issue(&self, names: &[String]) -> Result<(rcgen::Certificate, KeyPair), PkiError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(names.to_vec())?;
        let mut dn = DistinguishedName::new();
        dn.push(
            DnType::CommonName,
            names.first().map_or("berth", String::as_str),
        );
        params.distinguished_name = dn;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let (year, _) = today();
        params.not_before = rcgen::date_time_ymd(year - 1, 1, 1);
        params.not_after = rcgen::date_time_ymd(year + LEAF_YEARS, 1, 1);
        let issuer = Issuer::new(ca_params()?, &self.key);
        let cert = params.signed_by(&key, &issuer)?;
        Ok((cert, key))
    }
}

/// The CA's parameters: fixed subject, may sign certificates one level deep.
fn ca_params() -> Result<CertificateParams, PkiError> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, CA_NAME);
    dn.push(DnType::OrganizationName, "berth");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let (year, _) = today();
    params.not_before = rcgen::date_time_ymd(year - 1, 1, 1);
    params.not_after = rcgen::date_time_ymd(year + CA_YEARS, 1, 1);
    Ok(params)
}

/// What `tls/server.json` remembers about the server certificate.
#[derive(serde::Serialize, serde::Deserialize, PartialEq, Eq)]
struct LeafMeta {
    names: Vec<String>,
    /// Days since 1970-01-01 of its `not_after`.
    expires_day: u64,
}

/// The API's TLS with the cluster CA: the server certificate in `DATA_DIR/tls` is reused when
/// it was made for exactly `names` and is not near its end (and `rotate` is [`Rotate::No`]),
/// else a new one is made and saved. Also publishes `DATA_DIR/ca.crt`.
pub fn server_tls(
    data_dir: &Path,
    ca: &Ca,
    names: &[String],
    rotate: Rotate,
) -> Result<ApiTls, PkiError> {
    let dir = tls_dir(data_dir)?;
    let (key_path, cert_path, meta_path) = (
        dir.join("server.key"),
        dir.join("server.crt"),
        dir.join("server.json"),
    );
    let meta: Option<LeafMeta> = fs::read(&meta_path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok());
    let (_, today_day) = today();
    let fits = meta
        .as_ref()
        .is_some_and(|m| m.names == names && m.expires_day > today_day + RENEW_BEFORE_DAYS)
        && key_path.exists()
        && cert_path.exists();
    if rotate == Rotate::Yes || !fits {
        let (cert, key) = ca.issue(names)?;
        write_file(&key_path, key.serialize_pem().as_bytes(), 0o600)?;
        let chain = format!("{}{}", cert.pem(), ca.cert_pem());
        write_file(&cert_path, chain.as_bytes(), 0o644)?;
        let (year, _) = today();
        let meta = LeafMeta {
            names: names.to_vec(),
            expires_day: days_from_civil(year + LEAF_YEARS, 1, 1),
        };
        let json = serde_json::to_vec_pretty(&meta).map_err(|e| PkiError::Io {
            path: meta_path.clone(),
            source: e.into(),
        })?;
        write_file(&meta_path, &json, 0o644)?;
        tracing::info!(
            names = %names.join(","),
            fingerprint = %fingerprint(cert.der()),
            "made a new API certificate signed by the cluster CA"
        );
    }
    publish_ca(data_dir, ca.cert_pem())?;
    let malformed = |path: &Path, reason: String| PkiError::Malformed {
        path: path.to_path_buf(),
        dir: dir.clone(),
        reason,
    };
    let chain = CertificateDer::pem_file_iter(&cert_path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| malformed(&cert_path, e.to_string()))?;
    let key =
        PrivateKeyDer::from_pem_file(&key_path).map_err(|e| malformed(&key_path, e.to_string()))?;
    tighten(&key_path);
    let leaf_fingerprint = chain
        .first()
        .map(|c| fingerprint(c))
        .ok_or_else(|| malformed(&cert_path, "no certificate".to_string()))?;
    Ok(ApiTls {
        config: rustls_config(chain, key)?,
        ca_fingerprint: ca.fingerprint(),
        leaf_fingerprint,
    })
}

/// TLS with an operator's own certificate (`berth server --tls-cert`): the rustls
/// configuration was built by the caller; `chain_pem` is the certificate file. Its last
/// certificate is what clients and agents are told to trust (the operator's CA when the file
/// holds the chain up to it; the certificate itself when it is self-signed), published as
/// `DATA_DIR/ca.crt` and fingerprinted in the join token.
pub fn operator_tls(
    data_dir: &Path,
    config: Arc<rustls::ServerConfig>,
    chain_pem: &Path,
) -> Result<ApiTls, PkiError> {
    let chain = CertificateDer::pem_file_iter(chain_pem)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| PkiError::Malformed {
            path: chain_pem.to_path_buf(),
            dir: chain_pem.to_path_buf(),
            reason: e.to_string(),
        })?;
    let (Some(leaf), Some(root)) = (chain.first(), chain.last()) else {
        return Err(PkiError::Malformed {
            path: chain_pem.to_path_buf(),
            dir: chain_pem.to_path_buf(),
            reason: "no certificate".to_string(),
        });
    };
    let pem = pem_of(root);
    publish_ca(data_dir, &pem)?;
    Ok(ApiTls {
        config,
        ca_fingerprint: fingerprint(root),
        leaf_fingerprint: fingerprint(leaf),
    })
}

/// A certificate as PEM text.
fn pem_of(der: &CertificateDer<'_>) -> String {
    let config = pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF);
    pem::encode_config(&pem::Pem::new("CERTIFICATE", der.to_vec()), config)
}

/// The rustls configuration of the API: TLS 1.2 and 1.3 on ring, ALPN `h2` and `http/1.1`.
fn rustls_config(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<Arc<rustls::ServerConfig>, PkiError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The names a server certificate is made for: the `--api-name`s, then the `--api` address
/// (unless it is a wildcard), then — when the API is reachable on loopback (a loopback or a
/// wildcard address) — `localhost`, `127.0.0.1` and `::1`, and for a wildcard address
/// `hostname` too. In that order, without duplicates.
pub fn api_names(api: SocketAddr, extra: &[String], hostname: Option<&str>) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    let mut add = |n: String| {
        let n = n
            .trim()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_ascii_lowercase();
        if !n.is_empty() && !names.contains(&n) {
            names.push(n);
        }
    };
    for n in extra {
        add(n.clone());
    }
    let ip = api.ip();
    if !ip.is_unspecified() {
        add(ip.to_string());
    }
    if ip.is_loopback() || ip.is_unspecified() {
        if ip.is_unspecified() {
            if let Some(h) = hostname {
                add(h.to_string());
            }
        }
        add("localhost".to_string());
        add(IpAddr::from([127, 0, 0, 1]).to_string());
        add("::1".to_string());
    }
    names
}

/// Writes `DATA_DIR/ca.crt` (0644: a certificate is public) when it differs.
fn publish_ca(data_dir: &Path, pem: &str) -> Result<(), PkiError> {
    let path = data_dir.join(PUBLIC_CA);
    if fs::read_to_string(&path).ok().as_deref() != Some(pem) {
        write_file(&path, pem.as_bytes(), 0o644)?;
    }
    Ok(())
}

/// The join secret from `DATA_DIR/join.token` (either form), created on first start.
pub fn join_secret(data_dir: &Path) -> Result<String, TokenError> {
    let path = data_dir.join("join.token");
    match fs::read_to_string(&path) {
        Ok(s) => {
            let token =
                JoinToken::parse(&s).map_err(|_| TokenError::Malformed { path: path.clone() })?;
            tighten(&path);
            Ok(token.secret)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let secret = crate::auth::generate();
            write_join(&path, &secret)?;
            Ok(secret)
        }
        Err(source) => Err(TokenError::Read { path, source }),
    }
}

/// Rewrites `DATA_DIR/join.token` to carry `ca_fingerprint` (or, without TLS, the secret alone),
/// keeping the secret: what the operator hands to `berth agent`. Returns the token.
pub fn write_join_token(
    data_dir: &Path,
    ca_fingerprint: Option<&str>,
) -> Result<JoinToken, TokenError> {
    let secret = join_secret(data_dir)?;
    let token = JoinToken {
        ca_sha256: ca_fingerprint.map(str::to_string),
        secret,
    };
    let path = data_dir.join("join.token");
    let text = token.to_string();
    if fs::read_to_string(&path).ok().as_deref().map(str::trim) != Some(text.as_str()) {
        write_join(&path, &text)?;
    }
    Ok(token)
}

fn write_join(path: &Path, text: &str) -> Result<(), TokenError> {
    write_file(path, format!("{text}\n").as_bytes(), 0o600).map_err(|e| match e {
        PkiError::Io { path, source } => TokenError::Write { path, source },
        other => TokenError::Write {
            path: path.to_path_buf(),
            source: std::io::Error::other(other.to_string()),
        },
    })
}

/// `DATA_DIR/tls`, created 0700 (and tightened to it if someone loosened it).
fn tls_dir(data_dir: &Path) -> Result<PathBuf, PkiError> {
    let dir = data_dir.join(TLS_DIR);
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .map_err(|source| PkiError::Io {
            path: dir.clone(),
            source,
        })?;
    let _ = fs::set_permissions(&dir, fs::Permissions::from_mode(0o700));
    Ok(dir)
}

fn read(path: &Path) -> Result<String, PkiError> {
    fs::read_to_string(path).map_err(|source| PkiError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Puts a key file back to 0600 if someone loosened it.
fn tighten(path: &Path) {
    let _ = fs::set_permissions(path, fs::Permissions::from_mode(0o600));
}

/// Writes `path` atomically with `mode` from the start (a key is never briefly readable).
fn write_file(path: &Path, content: &[u8], mode: u32) -> Result<(), PkiError> {
    let io = |source| PkiError::Io {
        path: path.to_path_buf(),
        source,
    };
    let tmp = path.with_extension("tmp");
    let _ = fs::remove_file(&tmp);
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(io)?;
    f.write_all(content).map_err(io)?;
    f.sync_all().map_err(io)?;
    // The umask may have narrowed `mode`; a public file must be readable by the CLI's user.
    fs::set_permissions(&tmp, fs::Permissions::from_mode(mode)).map_err(io)?;
    fs::rename(&tmp, path).map_err(io)?;
    Ok(())
}

/// Today as (year, days since 1970-01-01), from the system clock.
fn today() -> (i32, u64) {
    let secs = crate::clock::unix_secs();
    let days = secs / 86_400;
    (civil_year(days), days)
}

/// The year of a day counted from 1970-01-01 (proleptic Gregorian; H. Hinnant's algorithm).
fn civil_year(days: u64) -> i32 {
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(month <= 2)) as i32
}

/// Days from 1970-01-01 to `year-month-day` (the inverse of [`civil_year`]'s algorithm).
fn days_from_civil(year: i32, month: u32, day: u32) -> u64 {
    let y = i64::from(year) - i64::from(month <= 2);
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    (era * 146_097 + doe - 719_468).max(0) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    fn names() -> Vec<String> {
        api_names(
            "127.0.0.1:7070".parse().unwrap(),
            &["berth.internal".into()],
            None,
        )
    }

    #[test]
    fn the_ca_and_the_server_certificate_are_created_once_with_private_keys_0600() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::load_or_create(dir.path()).unwrap();
        let tls = server_tls(dir.path(), &ca, &names(), Rotate::No).unwrap();
        let t = dir.path().join(TLS_DIR);
        assert_eq!(mode(&t), 0o700);
        assert_eq!(mode(&t.join("ca.key")), 0o600);
        assert_eq!(mode(&t.join("server.key")), 0o600);
        assert_eq!(mode(&dir.path().join(PUBLIC_CA)), 0o644);
        assert_eq!(
            fs::read_to_string(dir.path().join(PUBLIC_CA)).unwrap(),
            ca.cert_pem()
        );
        assert_eq!(tls.ca_fingerprint, ca.fingerprint());
        // A second start reuses both.
        let again = Ca::load_or_create(dir.path()).unwrap();
        assert_eq!(again.fingerprint(), ca.fingerprint());
        let same = server_tls(dir.path(), &again, &names(), Rotate::No).unwrap();
        assert_eq!(same.leaf_fingerprint, tls.leaf_fingerprint);
        // Loosened key modes are put back.
        fs::set_permissions(t.join("server.key"), fs::Permissions::from_mode(0o644)).unwrap();
        server_tls(dir.path(), &again, &names(), Rotate::No).unwrap();
        assert_eq!(mode(&t.join("server.key")), 0o600);
    }

    #[test]
    fn rotation_and_new_names_make_a_new_leaf_from_the_same_ca() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::load_or_create(dir.path()).unwrap();
        let first = server_tls(dir.path(), &ca, &names(), Rotate::No).unwrap();
        let rotated = server_tls(dir.path(), &ca, &names(), Rotate::Yes).unwrap();
        assert_ne!(rotated.leaf_fingerprint, first.leaf_fingerprint);
        assert_eq!(rotated.ca_fingerprint, first.ca_fingerprint);
        let other = vec!["other.example".to_string()];
        let renamed = server_tls(dir.path(), &ca, &other, Rotate::No).unwrap();
        assert_ne!(renamed.leaf_fingerprint, rotated.leaf_fingerprint);
        assert_eq!(renamed.ca_fingerprint, first.ca_fingerprint);
        // The chain file holds the leaf, then the CA (agents pinning by fingerprint find it).
        let chain: Vec<_> =
            CertificateDer::pem_file_iter(dir.path().join(TLS_DIR).join("server.crt"))
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap();
        assert_eq!(chain.len(), 2);
        assert_eq!(fingerprint(&chain[0]), renamed.leaf_fingerprint);
        assert_eq!(fingerprint(&chain[1]), ca.fingerprint());
    }

    #[test]
    fn a_garbled_ca_key_is_an_error_that_names_the_file_not_a_new_ca() {
        let dir = tempfile::tempdir().unwrap();
        Ca::load_or_create(dir.path()).unwrap();
        let key = dir.path().join(TLS_DIR).join("ca.key");
        fs::write(&key, "garbage").unwrap();
        let err = Ca::load_or_create(dir.path()).unwrap_err().to_string();
        assert!(err.contains("ca.key"), "{err}");
        assert!(err.contains("join again"), "{err}");
    }

    #[test]
    fn api_names_cover_loopback_and_wildcard_addresses() {
        assert_eq!(names(), ["berth.internal", "127.0.0.1", "localhost", "::1"]);
        let wild = api_names("0.0.0.0:7070".parse().unwrap(), &[], Some("web1"));
        assert_eq!(wild, ["web1", "localhost", "127.0.0.1", "::1"]);
        let lan = api_names(
            "10.0.0.5:7070".parse().unwrap(),
            &["Berth.Example".into()],
            None,
        );
        assert_eq!(lan, ["berth.example", "10.0.0.5"]);
    }

    #[test]
    fn the_join_token_keeps_its_secret_and_gains_the_fingerprint() {
        let dir = tempfile::tempdir().unwrap();
        let secret = join_secret(dir.path()).unwrap();
        let path = dir.path().join("join.token");
        assert_eq!(mode(&path), 0o600);
        let fp = "ab".repeat(32);
        let token = write_join_token(dir.path(), Some(&fp)).unwrap();
        assert_eq!(token.secret, secret);
        let text = fs::read_to_string(&path).unwrap();
        assert_eq!(text.trim(), format!("berth1-{fp}-{secret}"));
        assert_eq!(mode(&path), 0o600);
        assert_eq!(join_secret(dir.path()).unwrap(), secret);
        // Without TLS it goes back to the plain form, same secret.
        write_join_token(dir.path(), None).unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap().trim(), secret);
    }

    #[test]
    fn pem_round_trips_and_dates_are_right() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::load_or_create(dir.path()).unwrap();
        let der = CertificateDer::from_pem_slice(ca.cert_pem().as_bytes()).unwrap();
        let again = CertificateDer::from_pem_slice(pem_of(&der).as_bytes()).unwrap();
        assert_eq!(der, again);
        assert_eq!(civil_year(0), 1970);
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        assert_eq!(civil_year(11_017), 2000);
        assert_eq!(civil_year(days_from_civil(2026, 12, 31)), 2026);
        assert_eq!(civil_year(days_from_civil(2027, 1, 1)), 2027);
    }
}
