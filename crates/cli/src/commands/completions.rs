//! `berth completions SHELL` and `berth man [--out DIR]`: shell completions and man pages,
//! generated from the same clap definitions the parser uses, so they never drift from it.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;

/// Arguments of `berth completions`.
#[derive(clap::Args, Debug)]
pub struct CompletionsArgs {
    /// The shell to complete for (`bash`, `zsh`, `fish`, `elvish` or `powershell`). Install
    /// with e.g. `berth completions bash > /etc/bash_completion.d/berth`.
    #[arg(value_enum)]
    shell: clap_complete::Shell,
}

/// Arguments of `berth man`.
#[derive(clap::Args, Debug)]
pub struct ManArgs {
    /// Write `berth.1` and one `berth-COMMAND.1` per command into this folder (created if
    /// missing) instead of printing `berth.1` to stdout.
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
}

/// `berth completions SHELL`: the completion script on stdout.
pub fn completions(args: CompletionsArgs, mut command: clap::Command) -> anyhow::Result<()> {
    let name = command.get_name().to_string();
    let mut out = std::io::stdout().lock();
    clap_complete::generate(args.shell, &mut command, name, &mut out);
    out.flush().context("cannot write the completion script")
}

/// `berth man [--out DIR]`: the man pages.
pub fn man(args: ManArgs, command: clap::Command) -> anyhow::Result<()> {
    let Some(dir) = args.out else {
        let mut out = std::io::stdout().lock();
        clap_mangen::Man::new(command)
            .render(&mut out)
            .context("cannot write the man page")?;
        return out.flush().context("cannot write the man page");
    };
    std::fs::create_dir_all(&dir)
        .with_context(|| format!("cannot create {}: check the path", dir.display()))?;
    let mut written = 0usize;
    write_pages(&command.clone(), "", &dir, &mut written)?;
    println!("wrote {written} man pages to {}", dir.display());
    Ok(())
}

/// Writes `command`'s page, then its subcommands' (`berth-secret-set.1`, …).
fn write_pages(
    command: &clap::Command,
    parent: &str,
    dir: &std::path::Path,
    written: &mut usize,
) -> anyhow::Result<()> {
    let name = if parent.is_empty() {
        command.get_name().to_string()
    } else {
        format!("{parent}-{}", command.get_name())
    };
    let path = dir.join(format!("{name}.1"));
    let mut bytes = Vec::new();
    // The page's title is its file's name, as man(1) looks it up.
    clap_mangen::Man::new(command.clone())
        .title(name.clone())
        .render(&mut bytes)
        .with_context(|| format!("cannot render {}", path.display()))?;
    std::fs::write(&path, bytes).with_context(|| {
        format!(
            "cannot write {}: check the folder is writable",
            path.display()
        )
    })?;
    *written += 1;
    for sub in command.get_subcommands().filter(|s| s.get_name() != "help") {
        write_pages(sub, &name, dir, written)?;
    }
    Ok(())
}
