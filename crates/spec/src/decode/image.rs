//! Image references: `[registry[:port]/]path[:tag][@sha256:digest]`.
//!
//! A release must name exactly what runs, so a reference needs a tag or a digest, and the tag
//! `latest` (which names a different image tomorrow) is refused, as the teams in `seeds/` learned.

/// Checks an image reference; the error says what is wrong and what was expected.
pub fn check(reference: &str) -> Result<(), String> {
    let (name, digest) = match reference.split_once('@') {
        Some((n, d)) => (n, Some(d)),
        None => (reference, None),
    };
    if let Some(d) = digest {
        let hex = d.strip_prefix("sha256:").ok_or_else(|| {
            format!("digest `{d}` must be `sha256:` followed by 64 lower-case hex digits")
        })?;
        if hex.len() != 64
            || !hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(format!(
                "digest `{d}` must be `sha256:` followed by 64 lower-case hex digits"
            ));
        }
    }
    // A colon after the last slash starts the tag; one before it is a registry port.
    let last_slash = name.rfind('/').map_or(0, |i| i + 1);
    let (repo, tag) = match name[last_slash..].find(':') {
        Some(i) => (&name[..last_slash + i], Some(&name[last_slash + i + 1..])),
        None => (name, None),
    };
    check_repository(repo)?;
    match tag {
        Some("latest") => Err(
            "the tag `latest` is refused: it names a different image tomorrow; pin a version tag or a digest"
                .to_string(),
        ),
        Some(t) if !valid_tag(t) => Err(format!(
            "tag `{t}` is not valid: expected [A-Za-z0-9_][A-Za-z0-9_.-]*, at most 128 characters"
        )),
        Some(_) => Ok(()),
        None if digest.is_some() => Ok(()),
        None => Err(format!(
            "`{reference}` has no tag: expected NAME:TAG or NAME@sha256:DIGEST, like `{repo}:v1.2.3`"
        )),
    }
}

fn valid_tag(t: &str) -> bool {
    let mut chars = t.chars();
    t.len() <= 128
        && chars
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
}

/// `[host[:port]/]component(/component)*`; components are lower-case `[a-z0-9]+([._-][a-z0-9]+)*`.
fn check_repository(repo: &str) -> Result<(), String> {
    let bad = |why: String| Err(format!("image name `{repo}` {why}"));
    if repo.is_empty() {
        return bad("is empty".to_string());
    }
    let mut parts: Vec<&str> = repo.split('/').collect();
    // The first part is a registry host when it has a dot, a port, or is `localhost`.
    if parts.len() > 1 {
        let first = parts[0];
        if first.contains(['.', ':']) || first == "localhost" {
            let (host, port) = match first.split_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (first, None),
            };
            let host_ok = !host.is_empty()
                && host.split('.').all(|l| {
                    !l.is_empty() && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                });
            if !host_ok {
                return bad(format!("has an invalid registry host `{first}`"));
            }
            if let Some(p) = port {
                if p.parse::<u16>().map_or(true, |p| p == 0) {
                    return bad(format!("has an invalid registry port `{p}`"));
                }
            }
            parts.remove(0);
        }
    }
    for c in parts {
        let ok = !c.is_empty()
            && c.split(['.', '_', '-']).all(|s| {
                !s.is_empty()
                    && s.bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
            });
        if !ok {
            return bad(format!(
                "has an invalid path component `{c}`: expected lower-case letters and digits, separated by `.`, `_` or `-`"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::check;

    #[test]
    fn tags_and_digests_are_required_and_latest_refused() {
        assert!(check("registry.example/shop-api:git-30610c5").is_ok());
        assert!(check("reg:5000/x:tag").is_ok());
        assert!(check("localhost/x:1").is_ok());
        assert!(check("redis:7.2").is_ok());
        assert!(check(&format!("redis@sha256:{}", "a".repeat(64))).is_ok());
        assert!(check(&format!("redis:7@sha256:{}", "0".repeat(64))).is_ok());
        assert!(check("reg:5000/x").unwrap_err().contains("no tag"));
        assert!(check("redis").unwrap_err().contains("no tag"));
        assert!(check("redis:latest").unwrap_err().contains("latest"));
        assert!(check("reg:5000/x:latest").unwrap_err().contains("latest"));
        assert!(check("redis@sha256:abc").unwrap_err().contains("64"));
        assert!(check("Redis:1").is_err());
        assert!(check("redis:").is_err());
        assert!(check("reg:99999/x:1").is_err());
        assert!(check("a//b:1").is_err());
    }
}
