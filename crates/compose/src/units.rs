//! Compose's units and shell words, read into berth's: durations (`1m30s`, `500ms`), memory
//! (`512m`, `1g`, bytes), CPUs (`0.5`), and a `command:` string split as a shell would.

use berth_spec::model::{Cpu, Duration, Memory};

/// A Compose duration (`1m30s`, `10s`, `1.5s`, `250ms`, `1h`) in berth's units, rounded down to
/// the millisecond.
pub fn duration(s: &str) -> Result<Duration, String> {
    let bad = || {
        format!("`{s}` is not a Compose duration: expected numbers with units, like 1m30s, 10s or 500ms")
    };
    let mut rest = s.trim();
    if rest.is_empty() {
        return Err(bad());
    }
    let mut total_us: u128 = 0;
    while !rest.is_empty() {
        let n_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(bad)?;
        let (n, r) = rest.split_at(n_len);
        let u_len = r.find(|c: char| c.is_ascii_digit()).unwrap_or(r.len());
        let (unit, r) = r.split_at(u_len);
        let per_us: f64 = match unit {
            "ns" => 0.001,
            "us" | "µs" => 1.0,
            "ms" => 1_000.0,
            "s" => 1_000_000.0,
            "m" => 60_000_000.0,
            "h" => 3_600_000_000.0,
            _ => return Err(bad()),
        };
        let n: f64 = n.parse().map_err(|_| bad())?;
        let us = n * per_us;
        if !us.is_finite() || us > 1e15 {
            return Err(bad());
        }
        total_us += us as u128;
        rest = r;
    }
    u64::try_from(total_us / 1000)
        .map(Duration::from_millis)
        .map_err(|_| bad())
}

/// A Compose byte size (`512m`, `1g`, `1.5G`, `64k`, `100000`, `512mb`): powers of 1024, as
/// Docker reads them.
pub fn memory(s: &str) -> Result<Memory, String> {
    let bad = || {
        format!(
            "`{s}` is not a Compose memory size: expected a number with b, k, m or g, like 512m"
        )
    };
    let t = s.trim().to_ascii_lowercase();
    let t = t
        .strip_suffix('b')
        .filter(|r| !r.is_empty() && !r.ends_with(|c: char| c.is_ascii_digit()))
        .map(str::to_string)
        .unwrap_or(t);
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (n, unit) = t.split_at(split);
    let factor: f64 = match unit {
        "" | "b" => 1.0,
        "k" => 1024.0,
        "m" => 1024.0 * 1024.0,
        "g" => 1024.0 * 1024.0 * 1024.0,
        "t" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        _ => return Err(bad()),
    };
    let n: f64 = n.parse().map_err(|_| bad())?;
    let bytes = n * factor;
    if !bytes.is_finite() || !(0.0..1.8e19).contains(&bytes) {
        return Err(bad());
    }
    Ok(Memory {
        bytes: bytes as u64,
    })
}

/// `cpus: "0.5"` (or `1.25`, `2`) as berth's millicores.
pub fn cpu(s: &str) -> Result<Cpu, String> {
    let bad = || format!("`{s}` is not a CPU count: expected a number like 0.5 or 2");
    let n: f64 = s.trim().parse().map_err(|_| bad())?;
    if !n.is_finite() || !(0.001..=100_000.0).contains(&n) {
        return Err(bad());
    }
    Ok(Cpu {
        millis: (n * 1000.0).round() as u64,
    })
}

/// Splits a `command: "a 'b c' d"` string into words as a POSIX shell would (quotes and
/// backslashes; no expansion), as Compose does.
pub fn shell_words(s: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => cur.push(c),
                        None => return Err(format!("`{s}` has an unclosed single quote")),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(c @ ('"' | '\\' | '$' | '`')) => cur.push(c),
                            Some(c) => {
                                cur.push('\\');
                                cur.push(c);
                            }
                            None => return Err(format!("`{s}` ends inside a double quote")),
                        },
                        Some(c) => cur.push(c),
                        None => return Err(format!("`{s}` has an unclosed double quote")),
                    }
                }
            }
            '\\' => {
                in_word = true;
                if let Some(c) = chars.next() {
                    cur.push(c);
                }
            }
            c if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            c => {
                in_word = true;
                cur.push(c);
            }
        }
    }
    if in_word {
        words.push(cur);
    }
    Ok(words)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_composes_units() {
        assert_eq!(duration("1m30s").unwrap().to_string(), "90s");
        assert_eq!(duration("1.5s").unwrap().to_string(), "1500ms");
        assert_eq!(duration("500ms").unwrap().to_string(), "500ms");
        assert!(duration("10").is_err());
        assert!(duration("5d").is_err());
        assert_eq!(memory("512m").unwrap().to_string(), "512Mi");
        assert_eq!(memory("1G").unwrap().to_string(), "1Gi");
        assert_eq!(memory("256MB").unwrap().to_string(), "256Mi");
        assert_eq!(memory("1024").unwrap().to_string(), "1Ki");
        assert!(memory("lots").is_err());
        assert_eq!(cpu("0.5").unwrap().to_string(), "500m");
        assert_eq!(cpu("2").unwrap().to_string(), "2");
        assert!(cpu("-1").is_err());
    }

    #[test]
    fn splits_commands_as_a_shell() {
        assert_eq!(
            shell_words(r#"sh -c 'echo "hi there"' a\ b "x\"y""#).unwrap(),
            ["sh", "-c", "echo \"hi there\"", "a b", "x\"y"]
        );
        assert!(shell_words("'open").is_err());
        assert_eq!(shell_words("  ").unwrap(), Vec::<String>::new());
    }
}
