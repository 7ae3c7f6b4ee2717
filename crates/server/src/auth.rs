//! Bearer tokens: created on first start, kept on disk as files only the owner can read, and
//! compared in constant time through their SHA-256 so a timing side channel reveals nothing.
//!
//! Three kinds of credential exist:
//! - the **admin token** (`DATA_DIR/admin.token`) for people and CI;
//! - the **join token** (`DATA_DIR/join.token`), which lets an agent register once;
//! - a **node token**, issued at registration, which the agent then uses for everything else.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// What went wrong with a token file; each names the file and what to do.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("cannot read token file {path}: {source}; check the --data-dir and its permissions")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write token file {path}: {source}; check the --data-dir is writable")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("token file {path} is empty or malformed; delete it to have a new token created")]
    Malformed { path: PathBuf },
}

/// A secret's SHA-256: what the server keeps in memory and in the store instead of the secret.
#[derive(Clone, PartialEq, Eq)]
pub struct TokenHash([u8; 32]);

impl std::fmt::Debug for TokenHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TokenHash({}…)", &hex::encode(self.0)[..8])
    }
}

impl TokenHash {
    /// Hashes a presented token.
    pub fn of(token: &str) -> Self {
        TokenHash(Sha256::digest(token.trim().as_bytes()).into())
    }

    /// Constant-time comparison with a presented token.
    pub fn matches(&self, token: &str) -> bool {
        bool::from(self.0.ct_eq(&Self::of(token).0))
    }

    /// Hex form, for storing a node token's hash in the store.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Parses the hex form written by [`TokenHash::to_hex`].
    pub fn from_hex(s: &str) -> Option<Self> {
        let bytes = hex::decode(s).ok()?;
        Some(TokenHash(bytes.try_into().ok()?))
    }
}

/// A new random token: 32 bytes from the OS generator, hex encoded.
pub fn generate() -> String {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    hex::encode(bytes)
}

/// Reads the token in `dir/name`, creating it (mode 0600) on first start.
pub fn load_or_create(dir: &Path, name: &str) -> Result<String, TokenError> {
    let path = dir.join(name);
    match fs::read_to_string(&path) {
        Ok(s) => {
            let token = s.trim().to_string();
            if token.len() < 16 || !token.bytes().all(|b| b.is_ascii_alphanumeric()) {
                return Err(TokenError::Malformed { path });
            }
            // Tighten permissions if someone loosened them.
            let _ = fs::set_permissions(&path, fs::Permissions::from_mode(0o600));
            Ok(token)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let token = generate();
            write_secret(&path, &token).map_err(|source| TokenError::Write {
                path: path.clone(),
                source,
            })?;
            Ok(token)
        }
        Err(source) => Err(TokenError::Read { path, source }),
    }
}

/// Writes a secret file atomically with mode 0600 from the start (never briefly world-readable).
fn write_secret(path: &Path, content: &str) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(content.as_bytes())?;
    f.write_all(b"\n")?;
    f.sync_all()?;
    fs::rename(&tmp, path)?;
    if let Some(parent) = path.parent() {
        fs::File::open(parent)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_created_once_with_mode_0600_and_reread() {
        let dir = tempfile::tempdir().unwrap();
        let a = load_or_create(dir.path(), "admin.token").unwrap();
        let b = load_or_create(dir.path(), "admin.token").unwrap();
        assert_eq!(a, b);
        let mode = fs::metadata(dir.path().join("admin.token"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(TokenHash::of(&a).matches(&a));
        assert!(!TokenHash::of(&a).matches("nope"));
    }

    #[test]
    fn a_malformed_token_file_is_an_error_not_a_silent_new_token() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("join.token"), "x\n").unwrap();
        assert!(matches!(
            load_or_create(dir.path(), "join.token"),
            Err(TokenError::Malformed { .. })
        ));
    }
}
