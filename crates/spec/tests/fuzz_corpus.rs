//! Replays the fuzzer's seed corpus through the YAML reader and the validator on every
//! `cargo test`.
//!
//! The fuzzer itself needs nightly-only sanitizer flags and minutes of CPU, so it does not run in
//! CI; this keeps every input it was seeded with (and every crash reproducer added to the corpus
//! later) from regressing into a panic.

use std::path::Path;

use berth_spec::yaml::{parse, Limits};

#[test]
fn every_corpus_file_parses_without_panicking() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/parse_stack");
    let entries = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot read the corpus at {}: {e}", dir.display()));
    let tight = Limits {
        max_bytes: 4096,
        max_depth: 6,
        max_nodes: 64,
    };
    let mut files = 0;
    for entry in entries {
        let path = entry.expect("a corpus directory entry").path();
        if !path.is_file() {
            continue;
        }
        let bytes =
            std::fs::read(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
        // A panic here fails the test and names nothing, so say which file it was first.
        eprintln!("{}", path.display());
        let _ = parse(&bytes, &Limits::default());
        let _ = parse(&bytes, &tight);
        let _ = berth_spec::validate(&bytes);
        files += 1;
    }
    assert!(
        files >= 10,
        "found only {files} corpus files in {}",
        dir.display()
    );
}

/// Spot checks that the seeds exercise what they are named after, so the corpus does not rot
/// into inputs that all fail the same way.
#[test]
fn seeds_hit_the_paths_they_are_named_for() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/parse_stack");
    let run = |name: &str| {
        let bytes = std::fs::read(dir.join(name)).expect("the seed exists");
        parse(&bytes, &Limits::default())
    };
    assert!(matches!(run("valid_full.yaml"), Ok(Some(_))));
    assert!(matches!(run("valid_merge.yaml"), Ok(Some(_))));
    assert!(matches!(run("empty.yaml"), Ok(None)));
    assert!(matches!(run("comments_only.yaml"), Ok(None)));
    let message = |name: &str| run(name).expect_err(name).message;
    assert!(message("deep_flow_200.yaml").contains("deeper than"));
    assert!(message("deep_block_200.yaml").contains("deeper than"));
    assert!(message("deep_indent_100.yaml").contains("deeper than"));
    assert!(message("invalid_utf8.yaml").contains("not UTF-8"));
    assert!(message("alias_unknown.yaml").contains("unknown alias"));
    assert!(message("duplicate_keys.yaml").contains("duplicate key"));
    assert!(message("two_docs.yaml").contains("one YAML document"));
    assert!(message("tags.yaml").contains("tags are not supported"));
    assert!(message("syntax_error.yaml").starts_with("YAML syntax error"));
}
