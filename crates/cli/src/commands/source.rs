//! Reading stack files from disk, shared by every command that takes `-f FILE`.

use std::io::Read;

use anyhow::Context;
use berth_spec::Diagnostics;

/// Largest stack file accepted, as the parser's own limit.
const MAX_BYTES: u64 = 8 * 1024 * 1024;

/// Reads a stack file's bytes. A file over the limit is refused from its size alone, before any
/// of it is read, so a mistaken path to a huge file costs nothing; reading is capped as well in
/// case the file grows meanwhile.
pub fn read(path: &str) -> anyhow::Result<Vec<u8>> {
    let file =
        std::fs::File::open(path).with_context(|| format!("{path}: cannot open the stack file"))?;
    let size = file
        .metadata()
        .with_context(|| format!("{path}: cannot read the stack file"))?
        .len();
    if size > MAX_BYTES {
        anyhow::bail!(
            "{path}:1:1: file is {:.1} MiB; stack files are limited to 8 MiB",
            size as f64 / (1024.0 * 1024.0)
        );
    }
    let mut bytes = Vec::new();
    file.take(MAX_BYTES + 1)
        .read_to_end(&mut bytes)
        .with_context(|| format!("{path}: cannot read the stack file"))?;
    Ok(bytes)
}

/// Prints every diagnostic as `FILE:LINE:COL: message` on stderr.
pub fn print_diagnostics(path: &str, diagnostics: &Diagnostics) {
    for d in &diagnostics.0 {
        eprintln!("{}", d.display_in(path));
    }
}
