//! The join token's format, shared by the server (which writes `DATA_DIR/join.token`) and the
//! agent (which reads it from the operator).
//!
//! Two forms are accepted:
//! - `berth1-<CA>-<SECRET>`: `<CA>` is the SHA-256 of the cluster CA certificate's DER, 64
//!   lowercase hex digits (as kubeadm's `--discovery-token-ca-cert-hash` or k3s's `K10<hash>::`
//!   tokens). An agent holding it trusts, on its first connection, only a server whose chain
//!   contains that very CA certificate, and sends the secret only once it has checked that.
//! - `<SECRET>` alone: the form of a server without TLS (and of berth before TLS). It carries
//!   nothing to verify a server with, so it only works over plain HTTP or with `--ca`.
//!
//! `<SECRET>` is what the server checks; the fingerprint is not secret (it is a public
//! certificate's hash) and is never sent to the server.

use std::fmt;

/// The version prefix of a token that carries the CA's fingerprint.
pub const PREFIX: &str = "berth1-";

/// The shortest secret accepted: what `berth server` generates is 64 hex digits.
pub const MIN_SECRET_LEN: usize = 16;

/// A join token, parsed.
#[derive(Clone, PartialEq, Eq)]
pub struct JoinToken {
    /// SHA-256 of the cluster CA certificate (DER), lowercase hex; `None` for the plain form.
    pub ca_sha256: Option<String>,
    /// What the server checks.
    pub secret: String,
}

/// Why a join token does not parse; the message says what the token must look like.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinTokenError(String);

impl fmt::Display for JoinTokenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the join token is malformed: {}; use the content of the server's DATA_DIR/join.token \
             (berth1-<64 hex digits>-<secret>, or the secret alone for a server without TLS)",
            self.0
        )
    }
}

// By hand rather than with thiserror: berth-api stays pure (serde only).
impl std::error::Error for JoinTokenError {}

impl fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the secret: a token in a debug log would be a credential in a log.
        f.debug_struct("JoinToken")
            .field("ca_sha256", &self.ca_sha256)
            .field("secret", &"…")
            .finish()
    }
}

impl fmt::Display for JoinToken {
    /// The token as the operator passes it: `berth1-CA-SECRET`, or `SECRET`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.ca_sha256 {
            Some(ca) => write!(f, "{PREFIX}{ca}-{}", self.secret),
            None => f.write_str(&self.secret),
        }
    }
}

impl JoinToken {
    /// Parses either form (surrounding whitespace ignored: token files end with a newline).
    pub fn parse(token: &str) -> Result<JoinToken, JoinTokenError> {
        let token = token.trim();
        let bad = |why: &str| JoinTokenError(why.to_string());
        let (ca_sha256, secret) = match token.strip_prefix(PREFIX) {
            Some(rest) => {
                let (ca, secret) = rest
                    .split_once('-')
                    .ok_or_else(|| bad("no `-` between the CA fingerprint and the secret"))?;
                if ca.len() != 64 || !ca.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(bad(
                        "the CA fingerprint after `berth1-` must be 64 hex digits (SHA-256)",
                    ));
                }
                (Some(ca.to_ascii_lowercase()), secret)
            }
            None => (None, token),
        };
        if secret.len() < MIN_SECRET_LEN || !secret.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(bad(&format!(
                "the secret must be at least {MIN_SECRET_LEN} letters and digits"
            )));
        }
        Ok(JoinToken {
            ca_sha256,
            secret: secret.to_string(),
        })
    }

    /// The secret part of `token` if it parses, else `token` itself: what the server compares
    /// with its join secret, so an agent may present either form.
    pub fn secret_of(token: &str) -> &str {
        let token = token.trim();
        match token.strip_prefix(PREFIX).and_then(|r| r.split_once('-')) {
            Some((ca, secret)) if ca.len() == 64 => secret,
            _ => token,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CA: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    #[test]
    fn both_forms_parse_and_print_back() {
        let pinned = JoinToken::parse(&format!("berth1-{CA}-{SECRET}\n")).unwrap();
        assert_eq!(pinned.ca_sha256.as_deref(), Some(CA));
        assert_eq!(pinned.secret, SECRET);
        assert_eq!(pinned.to_string(), format!("berth1-{CA}-{SECRET}"));
        let plain = JoinToken::parse(SECRET).unwrap();
        assert_eq!(plain.ca_sha256, None);
        assert_eq!(plain.to_string(), SECRET);
        // Upper-case hex is accepted and normalised.
        let upper = JoinToken::parse(&format!("berth1-{}-{SECRET}", CA.to_uppercase())).unwrap();
        assert_eq!(upper.ca_sha256.as_deref(), Some(CA));
    }

    #[test]
    fn malformed_tokens_say_what_is_expected() {
        for (token, why) in [
            ("berth1-abc-0123456789abcdef0123", "64 hex digits"),
            (&format!("berth1-{CA}"), "no `-`"),
            (
                &format!("berth1-{}-{SECRET}", "g".repeat(64)),
                "64 hex digits",
            ),
            (&format!("berth1-{CA}-short"), "at least 16"),
            ("short", "at least 16"),
            ("0123456789abcdef-0123", "letters and digits"),
            ("", "at least 16"),
        ] {
            let err = JoinToken::parse(token).expect_err(token).to_string();
            assert!(err.contains(why), "{token}: {err}");
            assert!(err.contains("DATA_DIR/join.token"), "{err}");
        }
    }

    #[test]
    fn the_server_compares_the_secret_of_either_form() {
        assert_eq!(
            JoinToken::secret_of(&format!("berth1-{CA}-{SECRET}")),
            SECRET
        );
        assert_eq!(JoinToken::secret_of(SECRET), SECRET);
        assert_eq!(JoinToken::secret_of("node-1.abc"), "node-1.abc");
    }

    #[test]
    fn debug_never_shows_the_secret() {
        let t = JoinToken::parse(SECRET).unwrap();
        assert!(!format!("{t:?}").contains(SECRET));
    }
}
