//! Name rules and "did you mean" suggestions.
//!
//! Names end up in places with their own syntax — DNS-ish service names, environment variables,
//! `--set` paths split on `.`, constraint words — so each kind of name is checked once, here, with
//! a rule that is safe everywhere it travels.

/// A kind of name and the rule it follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameKind {
    /// Stacks, environments and services: `[a-z][a-z0-9-]*`, at most 63 characters (a DNS label).
    Dns,
    /// `values` entries: `[A-Za-z_][A-Za-z0-9_]*`.
    Value,
    /// `env` keys: `[A-Za-z_][A-Za-z0-9_]*`, as a POSIX shell accepts.
    EnvVar,
    /// `secrets`: `[A-Z_][A-Z0-9_]*`.
    Secret,
    /// `ports` keys: `[a-z][a-z0-9_]*`, so `PORT_<NAME>` is a valid variable name.
    Port,
    /// Regions: `[a-z0-9][a-z0-9._-]*`, so they are valid constraint words.
    Region,
    /// Node label keys in `spread`: `[a-z0-9][a-z0-9._/-]*`.
    Label,
    /// `process.user`: a login name or a numeric uid, `[A-Za-z0-9_][A-Za-z0-9._-]*`, at most
    /// 32 characters (what `useradd` accepts, without the trailing `$` of machine accounts).
    User,
}

impl NameKind {
    /// The rule as shown in an error message.
    pub fn rule(self) -> &'static str {
        match self {
            NameKind::Dns => "[a-z][a-z0-9-]*, at most 63 characters",
            NameKind::Value | NameKind::EnvVar => "[A-Za-z_][A-Za-z0-9_]*",
            NameKind::Secret => "[A-Z_][A-Z0-9_]*",
            NameKind::Port => "[a-z][a-z0-9_]*",
            NameKind::Region => "[a-z0-9][a-z0-9._-]*",
            NameKind::Label => "[a-z0-9][a-z0-9._/-]*",
            NameKind::User => "[A-Za-z0-9_][A-Za-z0-9._-]*, at most 32 characters",
        }
    }

    /// Whether `s` follows the rule.
    pub fn accepts(self, s: &str) -> bool {
        let mut chars = s.chars();
        let Some(first) = chars.next() else {
            return false;
        };
        let rest = chars.as_str();
        let all = |f: fn(char) -> bool| rest.chars().all(f);
        match self {
            NameKind::Dns => {
                s.len() <= 63
                    && first.is_ascii_lowercase()
                    && all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            }
            NameKind::Value | NameKind::EnvVar => {
                (first.is_ascii_alphabetic() || first == '_')
                    && all(|c| c.is_ascii_alphanumeric() || c == '_')
            }
            NameKind::Secret => {
                (first.is_ascii_uppercase() || first == '_')
                    && all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
            }
            NameKind::Port => {
                first.is_ascii_lowercase()
                    && all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
            }
            NameKind::Region => {
                (first.is_ascii_lowercase() || first.is_ascii_digit())
                    && all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-".contains(c))
            }
            NameKind::Label => {
                (first.is_ascii_lowercase() || first.is_ascii_digit())
                    && all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._/-".contains(c))
            }
            NameKind::User => {
                s.len() <= 32
                    && (first.is_ascii_alphanumeric() || first == '_')
                    && all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
            }
        }
    }
}

/// Edit distance (insertions, deletions, substitutions), counted in characters.
pub fn levenshtein(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut cur = vec![0; b.len() + 1];
    for (i, ca) in a.chars().enumerate() {
        cur[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur[j + 1] = sub.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

/// The closest candidate within an edit distance of 2 (ties go to the earliest candidate). The
/// distance must also be smaller than the word's length, so `db` does not suggest `web`.
pub fn closest<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    // Long inputs cannot be within distance 2 of a short name; skip the quadratic work.
    let mut best: Option<(usize, &str)> = None;
    for c in candidates {
        if c.len().abs_diff(word.len()) > 2 {
            continue;
        }
        let d = levenshtein(word, c);
        if d <= 2 && d < word.chars().count() && best.is_none_or(|(bd, _)| d < bd) {
            best = Some((d, c));
        }
    }
    best.map(|(_, c)| c)
}

/// `, did you mean `x`?` or nothing, ready to append to a message.
pub fn did_you_mean<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> String {
    match closest(word, candidates) {
        Some(c) => format!(", did you mean `{c}`?"),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levenshtein_counts_edits() {
        assert_eq!(levenshtein("", "abc"), 3);
        assert_eq!(levenshtein("replica", "replicas"), 1);
        assert_eq!(levenshtein("kitten", "sitting"), 3);
        assert_eq!(levenshtein("same", "same"), 0);
        assert_eq!(levenshtein("héllo", "hello"), 1);
    }

    #[test]
    fn suggestions_stay_within_two_edits() {
        let fields = ["replicas", "restart", "route"];
        assert_eq!(closest("replica", fields), Some("replicas"));
        assert_eq!(closest("rout", fields), Some("route"));
        assert_eq!(closest("banana", fields), None);
        assert_eq!(closest("db", ["web", "api"]), None);
        assert_eq!(closest("ap", ["api"]), Some("api"));
        assert_eq!(did_you_mean("restrat", fields), ", did you mean `restart`?");
    }

    #[test]
    fn name_rules() {
        assert!(NameKind::Dns.accepts("shop-api2"));
        assert!(!NameKind::Dns.accepts("Shop"));
        assert!(!NameKind::Dns.accepts("2shop"));
        assert!(!NameKind::Dns.accepts(&"a".repeat(64)));
        assert!(NameKind::Secret.accepts("DB_PASSWORD"));
        assert!(!NameKind::Secret.accepts("db_password"));
        assert!(NameKind::EnvVar.accepts("log_level"));
        assert!(!NameKind::EnvVar.accepts("LOG-LEVEL"));
        assert!(NameKind::Port.accepts("http_admin"));
        assert!(!NameKind::Port.accepts("http-admin"));
        assert!(NameKind::Region.accepts("eu-west-1"));
        assert!(NameKind::Label.accepts("topology.kubernetes.io/zone"));
        assert!(!NameKind::Value.accepts(""));
    }
}
