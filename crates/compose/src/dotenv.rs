//! `.env` and `env_file` files: `KEY=VALUE` lines as Compose reads them (`#` comments, an
//! optional `export `, single quotes literal, double quotes with `\n` escapes, unquoted values
//! trimmed and cut at ` #`).

use berth_spec::Pos;

/// One `KEY=VALUE` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    pub pos: Pos,
    pub key: String,
    pub value: String,
}

/// Parses an env file. A line that is not `KEY=VALUE` (or a bare `KEY`, which Compose skips when
/// the variable is unset) is an error at its position.
pub fn parse(text: &str) -> Result<Vec<Line>, (Pos, String)> {
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let pos = Pos {
            line: i + 1,
            col: 1,
        };
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line).trim_start();
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        let key = key.trim();
        if key.is_empty()
            || !key
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
        {
            return Err((
                pos,
                format!("`{raw}` is not KEY=VALUE: `{key}` is not a variable name"),
            ));
        }
        out.push(Line {
            pos,
            key: key.to_string(),
            value: unquote(value.trim()),
        });
    }
    Ok(out)
}

fn unquote(v: &str) -> String {
    if let Some(inner) = v.strip_prefix('\'').and_then(|r| r.split_once('\'')) {
        return inner.0.to_string();
    }
    if let Some(r) = v.strip_prefix('"') {
        let mut out = String::new();
        let mut chars = r.chars();
        while let Some(c) = chars.next() {
            match c {
                '"' => break,
                '\\' => match chars.next() {
                    Some('n') => out.push('\n'),
                    Some('t') => out.push('\t'),
                    Some(other) => out.push(other),
                    None => {}
                },
                c => out.push(c),
            }
        }
        return out;
    }
    match v.find(" #") {
        Some(i) => v[..i].trim_end().to_string(),
        None => v.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_composes_env_file_syntax() {
        let lines =
            parse("# c\nA=1\nexport B = two words # note\nC='lit $X'\nD=\"x\\ny\"\nBARE\n\nE=\n")
                .unwrap();
        let kv: Vec<(&str, &str)> = lines
            .iter()
            .map(|l| (l.key.as_str(), l.value.as_str()))
            .collect();
        assert_eq!(
            kv,
            [
                ("A", "1"),
                ("B", "two words"),
                ("C", "lit $X"),
                ("D", "x\ny"),
                ("E", "")
            ]
        );
        assert_eq!(lines[1].pos.line, 3);
        assert!(parse("bad key=1").is_err());
    }
}
