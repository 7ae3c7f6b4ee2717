//! Reading stack files from disk, shared by every command that takes `-f FILE`.

use std::io::Read;

use anyhow::Context;
use berth_spec::Diagnostics;

/// Largest stack file read from disk. Reading stops one byte past it, so a huge file costs
/// nothing and the parser reports the size limit with its own clear message.
const READ_CAP: u64 = 8 * 1024 * 1024 + 1;

/// Reads a stack file's bytes, capped so a mistaken path to a huge file cannot exhaust memory.
pub fn read(path: &str) -> anyhow::Result<Vec<u8>> {
    let file =
        std::fs::File::open(path).with_context(|| format!("{path}: cannot open the stack file"))?;
    let mut bytes = Vec::new();
    file.take(READ_CAP)
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
