//! Compose's variable interpolation: `$VAR`, `${VAR}`, `${VAR:-default}`, `${VAR-default}`,
//! `${VAR:?error}`, `${VAR?error}`, `${VAR:+alt}`, `${VAR+alt}` and `$$` for a literal `$`, with
//! defaults that may interpolate in turn (`${A:-${B}}`), as `docker compose` does.

use std::collections::BTreeMap;

/// The variables a Compose project sees: its `.env` file, overridden by the shell's environment.
pub type Vars = BTreeMap<String, String>;

/// Deepest nesting of `${…}` inside defaults; more is refused rather than recursed into.
const MAX_NESTING: usize = 16;

/// The result of interpolating one string.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Interpolated {
    pub text: String,
    /// Every variable named, in order (set or not): a value that names `${DB_PASSWORD}` is a
    /// secret even when the variable is unset here.
    pub vars: Vec<String>,
    /// Variables used without a default and not set: Compose substitutes `""` and warns.
    pub unset: Vec<String>,
}

/// Interpolates `s`. An error is the message of a `${VAR:?message}` that fired or a malformed
/// `${…}`.
pub fn interpolate(s: &str, vars: &Vars) -> Result<Interpolated, String> {
    let mut out = Interpolated::default();
    run(s, vars, &mut out, 0)?;
    Ok(out)
}

fn is_name_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_'
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

fn run(s: &str, vars: &Vars, out: &mut Interpolated, depth: usize) -> Result<(), String> {
    if depth > MAX_NESTING {
        return Err(format!(
            "interpolation nested deeper than {MAX_NESTING} levels"
        ));
    }
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.text.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(r) = after.strip_prefix('$') {
            out.text.push('$');
            rest = r;
        } else if let Some(body) = after.strip_prefix('{') {
            let end = closing_brace(body).ok_or_else(|| {
                format!("invalid interpolation `{}`: no closing `}}`", &rest[i..])
            })?;
            braced(&body[..end], vars, out, depth)?;
            rest = &body[end + 1..];
        } else if after.starts_with(is_name_start) {
            let len = after.find(|c| !is_name_char(c)).unwrap_or(after.len());
            let name = &after[..len];
            substitute_plain(name, vars, out);
            rest = &after[len..];
        } else {
            out.text.push('$');
            rest = after;
        }
    }
    out.text.push_str(rest);
    Ok(())
}

/// The index of the `}` that closes a `${`, counting nested `${…}`.
fn closing_brace(body: &str) -> Option<usize> {
    let mut depth = 0usize;
    let bytes = body.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'$' if bytes.get(i + 1) == Some(&b'{') => {
                depth += 1;
                i += 1;
            }
            b'}' if depth == 0 => return Some(i),
            b'}' => depth -= 1,
            _ => {}
        }
        i += 1;
    }
    None
}

fn substitute_plain(name: &str, vars: &Vars, out: &mut Interpolated) {
    out.vars.push(name.to_string());
    match vars.get(name) {
        Some(v) => out.text.push_str(v),
        None => out.unset.push(name.to_string()),
    }
}

/// `NAME`, `NAME:-x`, `NAME-x`, `NAME:?x`, `NAME?x`, `NAME:+x`, `NAME+x`.
fn braced(body: &str, vars: &Vars, out: &mut Interpolated, depth: usize) -> Result<(), String> {
    let len = body.find(|c| !is_name_char(c)).unwrap_or(body.len());
    let name = &body[..len];
    if !name.starts_with(is_name_start) {
        return Err(format!(
            "invalid interpolation `${{{body}}}`: expected a variable name after `${{`"
        ));
    }
    let op = &body[len..];
    if op.is_empty() {
        substitute_plain(name, vars, out);
        return Ok(());
    }
    out.vars.push(name.to_string());
    let value = vars.get(name);
    let (colon, op) = match op.strip_prefix(':') {
        Some(o) => (true, o),
        None => (false, op),
    };
    let Some(kind) = op.chars().next() else {
        return Err(format!("invalid interpolation `${{{body}}}`"));
    };
    let arg = &op[kind.len_utf8()..];
    // "set" for the colon forms means set and not empty.
    let set = value.is_some_and(|v| !colon || !v.is_empty());
    match kind {
        '-' => match value {
            Some(v) if set => out.text.push_str(v),
            _ => run(arg, vars, out, depth + 1)?,
        },
        '?' => match value {
            Some(v) if set => out.text.push_str(v),
            _ => {
                let mut msg = Interpolated::default();
                run(arg, vars, &mut msg, depth + 1)?;
                let why = if msg.text.is_empty() {
                    "is required".to_string()
                } else {
                    msg.text
                };
                return Err(format!(
                    "required variable {name} is not set: {why} (set it in the environment or in .env)"
                ));
            }
        },
        '+' => {
            if set {
                run(arg, vars, out, depth + 1)?;
            }
        }
        _ => {
            return Err(format!(
                "invalid interpolation `${{{body}}}`: expected `:-`, `-`, `:?`, `?`, `:+` or `+` after the name"
            ))
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars() -> Vars {
        Vars::from([
            ("A".to_string(), "a".to_string()),
            ("EMPTY".to_string(), String::new()),
        ])
    }

    fn text(s: &str) -> String {
        interpolate(s, &vars()).unwrap().text
    }

    #[test]
    fn follows_composes_rules() {
        assert_eq!(text("x${A}y$A"), "xaya");
        assert_eq!(text("${B:-dflt}"), "dflt");
        assert_eq!(text("${EMPTY:-dflt}"), "dflt");
        assert_eq!(text("${EMPTY-dflt}"), "");
        assert_eq!(text("${B-dflt}"), "dflt");
        assert_eq!(text("${A:+alt}${B:+alt}"), "alt");
        assert_eq!(text("$$A costs $5"), "$A costs $5");
        assert_eq!(text("${B:-${A}x}"), "ax");
        assert!(interpolate("${B:?set B please}", &vars())
            .unwrap_err()
            .contains("set B please"));
        assert!(interpolate("${EMPTY:?}", &vars()).is_err());
        assert!(interpolate("${EMPTY?}", &vars()).is_ok());
        assert!(interpolate("${A", &vars()).is_err());
        assert!(interpolate("${1A}", &vars()).is_err());
    }

    #[test]
    fn remembers_every_variable_named_and_the_unset_ones() {
        let i = interpolate("postgres://u:${DB_PASSWORD}@db/${A:-x}", &vars()).unwrap();
        assert_eq!(i.vars, ["DB_PASSWORD", "A"]);
        assert_eq!(i.unset, ["DB_PASSWORD"]);
    }
}
