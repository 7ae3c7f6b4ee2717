//! `berth secret set|list|rm|rotate-key`: the values behind the secret names a stack file
//! declares, and the data key they are sealed under in the store.
//!
//! `set` reads the value from stdin (or `--from-file`), never from an argument, so it does not
//! land in the shell's history or in `ps`. Nothing here ever prints a value.

use std::io::{IsTerminal, Read};

use crate::context::{client_error, print_json, runtime, Globals};

/// `berth secret …`
#[derive(clap::Subcommand, Debug)]
pub enum Secret {
    /// Set a secret's value, read from stdin (one trailing newline removed) or --from-file
    /// (taken as is). Each set makes a new version; deploy the stack to roll it out.
    Set {
        /// The stack the secret belongs to.
        stack: String,
        /// The secret's name, as the stack file's `secrets:` lists it.
        name: String,
        /// Read the value from this file instead of stdin.
        #[arg(long = "from-file", value_name = "FILE")]
        from_file: Option<String>,
    },
    /// A stack's secrets: names, versions and when they were set (never values).
    List {
        /// The stack.
        stack: String,
    },
    /// Forget a secret's value (running instances keep theirs).
    Rm {
        /// The stack the secret belongs to.
        stack: String,
        /// The secret's name.
        name: String,
    },
    /// Seal every secret value in the store under a new data key, while the server keeps
    /// serving (the key file, DATA_DIR/secrets.key, stays: it wraps the new data key too).
    RotateKey,
}

/// Runs one `berth secret` command.
pub fn run(which: Secret, globals: &Globals) -> anyhow::Result<()> {
    let client = globals.client()?;
    match which {
        Secret::Set {
            stack,
            name,
            from_file,
        } => {
            let value = read_value(&name, from_file.as_deref())?;
            runtime()?.block_on(async {
                let view = client
                    .set_secret(&stack, &name, &value)
                    .await
                    .map_err(client_error)?;
                if globals.json() {
                    print_json(&view)
                } else {
                    println!(
                        "secret {name} of {stack} set (version {}); deploy {stack} to roll it out",
                        view.version
                    );
                    Ok(())
                }
            })
        }
        Secret::List { stack } => runtime()?.block_on(async {
            let list = client.secrets(&stack).await.map_err(client_error)?;
            if globals.json() {
                return print_json(&list);
            }
            if list.is_empty() {
                println!(
                    "stack {stack} has no secrets: set one with `berth secret set {stack} NAME`"
                );
                return Ok(());
            }
            let width = list.iter().map(|s| s.name.len()).max().unwrap_or(4).max(4);
            println!("{:width$}  VERSION  UPDATED", "NAME");
            for s in &list {
                println!(
                    "{:width$}  {:<7}  {}",
                    s.name,
                    s.version,
                    age(s.updated_ms, crate::clock::unix_ms())
                );
            }
            Ok(())
        }),
        Secret::Rm { stack, name } => runtime()?.block_on(async {
            client
                .delete_secret(&stack, &name)
                .await
                .map_err(client_error)?;
            if globals.json() {
                print_json(&serde_json::json!({ "stack": stack, "name": name, "deleted": true }))
            } else {
                println!("secret {name} of {stack} removed");
                Ok(())
            }
        }),
        Secret::RotateKey => runtime()?.block_on(async {
            let done = client.rotate_secret_key().await.map_err(client_error)?;
            if globals.json() {
                return print_json(&done);
            }
            println!(
                "secrets sealed under data key {}: {} records re-sealed",
                done.key, done.resealed
            );
            if !done.retired.is_empty() {
                let ids: Vec<String> = done.retired.iter().map(u64::to_string).collect();
                println!("retired data keys {}", ids.join(", "));
            }
            Ok(())
        }),
    }
}

/// The value to set: the file's bytes, or stdin without one trailing newline (so `echo` and
/// here-documents work). Refuses an empty value and text that is not UTF-8.
fn read_value(name: &str, from_file: Option<&str>) -> anyhow::Result<String> {
    let bytes = match from_file {
        Some(path) => std::fs::read(path)
            .map_err(|e| anyhow::anyhow!("cannot read the value of {name} from {path}: {e}"))?,
        None => {
            let mut stdin = std::io::stdin();
            if stdin.is_terminal() {
                eprintln!("value of {name} (not echoed back later; end with Ctrl-D):");
            }
            let mut buf = Vec::new();
            stdin
                .read_to_end(&mut buf)
                .map_err(|e| anyhow::anyhow!("cannot read the value of {name} from stdin: {e}"))?;
            if buf.ends_with(b"\n") {
                buf.pop();
                if buf.ends_with(b"\r") {
                    buf.pop();
                }
            }
            buf
        }
    };
    if bytes.is_empty() {
        anyhow::bail!("the value of {name} is empty: pipe it on stdin (`berth secret set STACK {name} < file`) or use --from-file");
    }
    String::from_utf8(bytes).map_err(|e| {
        anyhow::anyhow!(
            "the value of {name} is not UTF-8 (invalid byte at offset {}): environment variables hold text",
            e.utf8_error().valid_up_to()
        )
    })
}

/// `12s ago`, `5m ago`, `3h ago`, `2d ago`: how long before `now_ms` a time in ms since the
/// epoch was (`0s ago` for one in the future, from a clock that differs from the server's).
fn age(at_ms: u64, now_ms: u64) -> String {
    let secs = now_ms.saturating_sub(at_ms) / 1000;
    match secs {
        0..=59 => format!("{secs}s ago"),
        60..=3599 => format!("{}m ago", secs / 60),
        3600..=86399 => format!("{}h ago", secs / 3600),
        _ => format!("{}d ago", secs / 86400),
    }
}

#[cfg(test)]
mod tests {
    use super::age;

    #[test]
    fn ages_are_counted_back_from_the_given_now() {
        let now = 1_000_000_000;
        assert_eq!(age(now - 12_000, now), "12s ago");
        assert_eq!(age(now - 5 * 60_000, now), "5m ago");
        assert_eq!(age(now - 3 * 3_600_000, now), "3h ago");
        assert_eq!(age(now - 2 * 86_400_000, now), "2d ago");
        // A time ahead of this machine's clock.
        assert_eq!(age(now + 5_000, now), "0s ago");
    }
}
