//! Every file in `tests/invalid/` is refused with exactly the lines in its `.expected` sibling
//! (`FILE:LINE:COL: message`, as `berth validate` prints them).
//!
//! The expected files are written and reviewed by hand. On a mismatch the actual output is
//! written next to the test's temporary directory to help a reviewer compare — never copied
//! over the expected file automatically.

use std::fs;
use std::path::Path;

#[test]
fn invalid_stack_files_report_exactly_the_expected_errors() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/invalid");
    let mut names: Vec<String> = fs::read_dir(&dir)
        .expect("tests/invalid exists")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".yaml"))
        .collect();
    names.sort();
    assert!(names.len() >= 30, "only {} invalid files", names.len());

    let actual_dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("invalid-actual");
    let _ = fs::create_dir_all(&actual_dir);
    let mut failures = Vec::new();
    for name in &names {
        let source = fs::read(dir.join(name)).expect("readable");
        let actual = match berth_spec::validate(&source) {
            Ok(()) => "(valid)\n".to_string(),
            Err(d) => {
                d.0.iter()
                    .map(|d| format!("{}\n", d.display_in(name)))
                    .collect()
            }
        };
        let expected_path = dir.join(name.replace(".yaml", ".expected"));
        let expected = fs::read_to_string(&expected_path).unwrap_or_default();
        if actual != expected {
            let _ = fs::write(actual_dir.join(name.replace(".yaml", ".actual")), &actual);
            failures.push(format!(
                "--- {name}\nexpected:\n{expected}actual:\n{actual}"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn at_least_one_file_shows_several_errors_at_once() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/invalid");
    let most = fs::read_dir(&dir)
        .expect("tests/invalid exists")
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".expected"))
        .map(|e| {
            fs::read_to_string(e.path())
                .unwrap_or_default()
                .lines()
                .count()
        })
        .max()
        .unwrap_or(0);
    assert!(most >= 3);
}
