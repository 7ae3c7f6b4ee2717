//! Fuzzes the stack-file reader: any bytes in, a tree or a diagnostic out, never a panic, a
//! stack overflow, or unbounded time/memory.
#![no_main]

use berth_spec::yaml::{parse, Limits};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The real limits, as `berth validate` uses them.
    let _ = parse(data, &Limits::default());
    // Tiny limits as well, so that the fuzzer reaches the size, depth and node-budget refusals
    // (and the error paths after them) with small inputs.
    let tight = Limits {
        max_bytes: 4096,
        max_depth: 6,
        max_nodes: 64,
    };
    let _ = parse(data, &tight);
    // The whole validator too: decoding, templates, overlays and the dependency graph must
    // never panic on whatever tree the reader accepts.
    let _ = berth_spec::validate(data);
});
