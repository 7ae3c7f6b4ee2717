//! The router's HTTPS flags (`--tls-listen ADDR`, `--tls-cert HOST=CERT_PEM:KEY_PEM`) turned into
//! a [`TlsListener`]. Each `--tls-cert` is checked, files read and key matched, while clap parses
//! the command line: bad input is a usage error before berth starts anything (an agent would
//! otherwise register and start instances before its router found the typo).

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use berth_router::tls::{TlsConfig, TlsError, TlsListener};

/// How `--tls-cert` is written; part of every syntax error.
const SYNTAX: &str = "expected HOST=CERT_PEM:KEY_PEM, e.g. \
    --tls-cert 'example.com=/etc/berth/example.com.crt:/etc/berth/example.com.key' \
    (HOST may be a wildcard such as *.example.com)";

/// What CERT_PEM must hold.
const CERT_HINT: &str =
    "CERT_PEM must be a PEM file with the certificate chain, leaf first (-----BEGIN CERTIFICATE-----)";

/// What KEY_PEM must hold.
const KEY_HINT: &str = "KEY_PEM must be a PEM file with the certificate's unencrypted private key \
    (-----BEGIN PRIVATE KEY-----, RSA PRIVATE KEY or EC PRIVATE KEY)";

/// One `--tls-cert`, its files loaded once already.
#[derive(Debug, Clone)]
pub struct TlsCert {
    host: String,
    cert: PathBuf,
    key: PathBuf,
}

impl TlsCert {
    fn entry(&self) -> (String, PathBuf, PathBuf) {
        (self.host.clone(), self.cert.clone(), self.key.clone())
    }

    /// CERT_PEM (`berth server --tls-cert`: its last certificate is the CA clients trust).
    pub(crate) fn cert_path(&self) -> &Path {
        &self.cert
    }

    /// A load error as the user can act on it: which file, what is wrong, what it must hold.
    fn explain(&self, error: TlsError) -> String {
        match error {
            // The chain is read first, then the key (possibly from the same file): pki-types
            // says "no items found" only for the key.
            TlsError::Pem { path, reason } if path != self.cert || reason == "no items found" => {
                let reason = match reason.as_str() {
                    "no items found" => "no private key block".to_string(),
                    _ => reason,
                };
                format!("{}: {reason}: {KEY_HINT}", path.display())
            }
            TlsError::Pem { path, reason } => format!("{}: {reason}: {CERT_HINT}", path.display()),
            TlsError::Key { source, .. } => format!(
                "{} and {}: {source}: KEY_PEM must be the private key of CERT_PEM's first \
                 certificate, in a format rustls supports (RSA, ECDSA P-256/P-384, Ed25519)",
                self.cert.display(),
                self.key.display()
            ),
            other => other.to_string(),
        }
    }
}

/// clap's parser for `--tls-cert HOST=CERT_PEM:KEY_PEM`.
pub fn parse_cert(value: &str) -> Result<TlsCert, String> {
    let (host, files) = value
        .split_once('=')
        .ok_or_else(|| format!("no `=` after the host: {SYNTAX}"))?;
    let host = host.trim().to_ascii_lowercase();
    check_host(&host)?;
    let (cert, key) = files
        .split_once(':')
        .ok_or_else(|| format!("no `:` between the certificate and the key: {SYNTAX}"))?;
    if cert.is_empty() || key.is_empty() || key.contains(':') {
        return Err(format!(
            "two file paths without `:` in them are needed after `=`: {SYNTAX}"
        ));
    }
    let parsed = TlsCert {
        host,
        cert: PathBuf::from(cert),
        key: PathBuf::from(key),
    };
    for (path, what) in [(&parsed.cert, "CERT_PEM"), (&parsed.key, "KEY_PEM")] {
        readable(path, what)?;
    }
    let config = TlsConfig {
        certs: vec![parsed.entry()],
    };
    berth_router::tls::server_config(&config).map_err(|e| parsed.explain(e))?;
    Ok(parsed)
}

/// A name as clients send it in SNI, or `*.` and one: letters, digits, `-` and `.`.
fn check_host(host: &str) -> Result<(), String> {
    let name = host.strip_prefix("*.").unwrap_or(host);
    let valid = !name.is_empty()
        && name
            .split('.')
            .all(|l| !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'));
    if valid {
        Ok(())
    } else {
        Err(format!(
            "`{host}` is not a host name: use the name clients connect to (example.com) or a \
             wildcard one label deep (*.example.com); {SYNTAX}"
        ))
    }
}

/// Whether `path` can be opened; the error says which flag part and what to check.
fn readable(path: &Path, what: &str) -> Result<(), String> {
    std::fs::File::open(path).map(drop).map_err(|e| {
        format!(
            "cannot read {what} {}: {e}: check the path (relative to the current directory) \
             and that berth may read the file",
            path.display()
        )
    })
}

/// The certificates of `certs` as the router's TLS configuration (`berth server --tls-cert`
/// uses it for the API).
pub(crate) fn config_of(certs: &[TlsCert]) -> TlsConfig {
    TlsConfig {
        certs: certs.iter().map(TlsCert::entry).collect(),
    }
}

/// The HTTPS listener on `addr` with the certificates of `certs`, bound by `bind` like the
/// plain one. A host given twice is an error rather than a silent choice.
pub async fn listener(
    addr: SocketAddr,
    certs: &[TlsCert],
    bind: impl std::future::Future<Output = std::io::Result<tokio::net::TcpListener>>,
) -> anyhow::Result<TlsListener> {
    let mut hosts = BTreeSet::new();
    for c in certs {
        anyhow::ensure!(
            hosts.insert(&c.host),
            "--tls-cert: {} is given twice; keep one certificate per host",
            c.host
        );
    }
    let config = TlsConfig {
        certs: certs.iter().map(TlsCert::entry).collect(),
    };
    let listener = bind.await.with_context(|| {
        format!("cannot listen on {addr} for the router's HTTPS: pick another --tls-listen")
    })?;
    let tls = TlsListener::new(listener, &config).context("--tls-cert")?;
    tracing::info!(
        "router: HTTPS on {addr} for {} (default certificate: {})",
        certs
            .iter()
            .map(|c| c.host.as_str())
            .collect::<Vec<_>>()
            .join(", "),
        certs.first().map_or("-", |c| c.host.as_str())
    );
    Ok(tls)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn syntax_errors_say_what_is_expected() {
        for (value, expected) in [
            ("example.com", "no `=`"),
            ("example.com=a.pem", "no `:`"),
            ("example.com=:key.pem", "two file paths"),
            ("example.com=a:b:c", "two file paths"),
            ("=a:b", "is not a host name"),
            ("exa mple.com=a:b", "is not a host name"),
            ("*.=a:b", "is not a host name"),
            ("a.*.com=a:b", "is not a host name"),
        ] {
            let err = parse_cert(value).expect_err(value);
            assert!(err.contains(expected), "{value}: {err}");
            assert!(err.contains("HOST=CERT_PEM:KEY_PEM"), "{value}: {err}");
        }
    }

    #[test]
    fn a_missing_file_is_named() {
        let err = parse_cert("*.example.com=/nonexistent/c.pem:/nonexistent/k.pem").unwrap_err();
        assert!(
            err.contains("cannot read CERT_PEM /nonexistent/c.pem"),
            "{err}"
        );
    }
}
