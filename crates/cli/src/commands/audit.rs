//! `berth audit [--since T] [--user U] [--stack S] [--output json]` and `berth audit verify`:
//! the server's hash-chained audit log, read and checked.

use crate::context::{client_error, print_json, runtime, Globals};
use crate::exit::Silent;

/// `berth audit …`
#[derive(clap::Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub struct Args {
    #[command(subcommand)]
    pub command: Option<AuditCommand>,
    /// Entries since: a duration ago (`90s`, `30m`, `2h`, `7d`) or a Unix time in ms.
    #[arg(long, value_parser = parse_since)]
    pub since: Option<Since>,
    /// Entries of this user (`admin` for the admin token, `-` for failed logins).
    #[arg(long)]
    pub user: Option<String>,
    /// Entries whose target is this stack.
    #[arg(long)]
    pub stack: Option<String>,
    /// At most this many, the newest (default 1000, at most 10000).
    #[arg(long)]
    pub limit: Option<usize>,
}

/// `berth audit verify`
#[derive(clap::Subcommand, Debug)]
pub enum AuditCommand {
    /// Check the hash chain: exit 0 if every entry is intact, else name each edited or removed
    /// entry and exit 1.
    Verify,
}

/// A `--since` value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Since {
    /// This long ago (ms).
    Ago(u64),
    /// This Unix time (ms).
    At(u64),
}

/// Parses `--since`: `N` + `s|m|h|d`, or a number of ms since the epoch.
pub fn parse_since(s: &str) -> Result<Since, String> {
    let bad =
        || format!("--since `{s}`: use a duration ago (90s, 30m, 2h, 7d) or a Unix time in ms");
    if let Ok(ms) = s.parse::<u64>() {
        return Ok(Since::At(ms));
    }
    let (n, unit) = s.split_at(s.len().saturating_sub(1));
    let n: u64 = n.parse().map_err(|_| bad())?;
    let scale = match unit {
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return Err(bad()),
    };
    n.checked_mul(scale).map(Since::Ago).ok_or_else(bad)
}

/// Runs `berth audit`.
pub fn run(args: Args, globals: &Globals) -> anyhow::Result<()> {
    let client = globals.client()?;
    runtime()?.block_on(async {
        if let Some(AuditCommand::Verify) = args.command {
            let v = client.audit_verify().await.map_err(client_error)?;
            if globals.json() {
                print_json(&v)?;
            } else if v.ok {
                println!(
                    "audit log intact: {} entries checked (#{}–#{}); the chain holds from the first kept entry",
                    v.entries, v.first_seq, v.last_seq
                );
            } else {
                for p in &v.problems {
                    println!("{p}");
                }
                eprintln!(
                    "error: the audit log does not verify: {} problem(s) above; the entries named were edited or removed in the store",
                    v.problems.len()
                );
            }
            return if v.ok { Ok(()) } else { Err(Silent(1).into()) };
        }
        let mut query = Vec::new();
        match args.since {
            Some(Since::At(ms)) => query.push(("since", ms.to_string())),
            Some(Since::Ago(ago)) => query.push((
                "since",
                crate::clock::unix_ms().saturating_sub(ago).to_string(),
            )),
            None => {}
        }
        if let Some(u) = args.user {
            query.push(("user", u));
        }
        if let Some(s) = args.stack {
            query.push(("stack", s));
        }
        if let Some(l) = args.limit {
            query.push(("limit", l.to_string()));
        }
        let entries = client.audit(&query).await.map_err(client_error)?;
        if globals.json() {
            return print_json(&entries);
        }
        if entries.is_empty() {
            println!("no audit entries match");
            return Ok(());
        }
        println!(
            "{:<6} {:<19} {:<12} {:<8} {:<15} {:<40} {:<20} {:<14} RESULT",
            "SEQ", "TIME", "USER", "ROLE", "SOURCE", "ACTION", "TARGET", "PLAN"
        );
        for e in &entries {
            println!(
                "{:<6} {:<19} {:<12} {:<8} {:<15} {:<40} {:<20} {:<14} {}",
                e.seq,
                super::clock_time::format_time(e.time_ms),
                e.user,
                e.role,
                e.source,
                e.action,
                e.target,
                if e.plan_id.is_empty() { "-" } else { &e.plan_id },
                e.result
            );
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_takes_durations_and_unix_ms() {
        assert_eq!(parse_since("90s"), Ok(Since::Ago(90_000)));
        assert_eq!(parse_since("2h"), Ok(Since::Ago(7_200_000)));
        assert_eq!(parse_since("7d"), Ok(Since::Ago(604_800_000)));
        assert_eq!(
            parse_since("1700000000000"),
            Ok(Since::At(1_700_000_000_000))
        );
        for bad in ["", "h", "5w", "-1h", "99999999999999999999d"] {
            assert!(parse_since(bad).is_err(), "{bad}");
        }
    }
}
