//! Replays the API fuzzer's seed corpus (`fuzz/corpus/api_bodies`) on every `cargo test`, and
//! throws random JSON at the same endpoints: the bodies of register, heartbeat, deploy, plan
//! and secrets are decoded and validated by the real handlers, never with a panic or a 5xx.
//!
//! The fuzzer itself (`fuzz/fuzz_targets/api_bodies.rs`) needs libFuzzer and minutes of CPU;
//! this keeps its seeds and every reproducer added to the corpus from regressing.

use std::path::Path;

use berth_server::fuzzing::{split, ApiFuzzer, ENDPOINTS};
use proptest::prelude::*;

fn corpus() -> Vec<(String, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/api_bodies");
    let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot read the corpus at {}: {e}", dir.display()))
        .map(|e| e.expect("a corpus entry").path())
        .filter(|p| p.is_file())
        .map(|p| {
            let bytes = std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            (
                p.file_name()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .into_owned(),
                bytes,
            )
        })
        .collect();
    files.sort();
    files
}

#[test]
fn every_corpus_body_is_answered_without_a_server_error() {
    let api = ApiFuzzer::new();
    let files = corpus();
    assert!(files.len() >= 20, "only {} corpus files", files.len());
    let mut statuses = Vec::new();
    for (name, bytes) in &files {
        match api.run(bytes) {
            Ok(status) => statuses.push((name.clone(), status)),
            Err(failure) => panic!("{name}: {failure}"),
        }
    }
    let status = |name: &str| {
        statuses
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, s)| *s)
            .unwrap_or_else(|| panic!("no seed {name}"))
    };
    // The seeds reach what they are named for: accepted bodies and refused ones.
    assert_eq!(status("register_valid.txt"), 200);
    assert_eq!(status("heartbeat_empty.txt"), 200);
    assert_eq!(status("deploy_valid.txt"), 200);
    assert_eq!(status("plan_valid.txt"), 200);
    assert_eq!(status("secret_valid.txt"), 200);
    for refused in [
        "register_bad_name.txt",
        "register_missing_field.txt",
        "heartbeat_bad_state.txt",
        "deploy_set_huge_replicas.txt",
        "deploy_replicas_over_bound.txt",
        "deploy_nul_env.txt",
        "deploy_invalid_yaml.txt",
        "deploy_not_an_object.txt",
        "secret_nul.txt",
        "secret_too_large.txt",
        "secret_not_a_string.txt",
        "secret_invalid_utf8.txt",
        "truncated_json.txt",
    ] {
        assert_eq!(status(refused), 400, "{refused}");
    }
}

#[test]
fn the_endpoint_line_is_read_and_other_bytes_pick_one() {
    assert_eq!(split(b"secret\n{}"), ("secret", &b"{}"[..]));
    assert_eq!(split(b"register"), ("register", &b""[..]));
    let (endpoint, body) = split(b"\x03{\"a\":1}");
    assert_eq!(endpoint, ENDPOINTS[3]);
    assert_eq!(body, b"\x03{\"a\":1}");
}

/// Random JSON values, nested a little, with strings that may hold NULs and odd characters.
fn json() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        any::<u64>().prop_map(serde_json::Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(serde_json::Value::from),
        "[a-z0-9 .:/\\\\\\x00-\\x1f\u{80}-\u{10ffff}]{0,40}".prop_map(serde_json::Value::from),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(serde_json::Value::from),
            prop::collection::btree_map(
                prop_oneof![
                    Just("name".to_string()),
                    Just("statuses".to_string()),
                    Just("source".to_string()),
                    Just("env".to_string()),
                    Just("set".to_string()),
                    Just("value".to_string()),
                    Just("file".to_string()),
                    Just("labels".to_string()),
                    Just("resources".to_string()),
                    "[a-z_]{1,12}",
                ],
                inner,
                0..6,
            )
            .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn random_json_bodies_never_get_a_server_error(endpoint in 0..ENDPOINTS.len(), body in json()) {
        thread_local! {
            static API: ApiFuzzer = ApiFuzzer::new();
        }
        let mut input = ENDPOINTS[endpoint].as_bytes().to_vec();
        input.push(b'\n');
        input.extend_from_slice(body.to_string().as_bytes());
        let result = API.with(|api| api.run(&input).map_err(|f| f.to_string()));
        prop_assert!(result.is_ok(), "{:?}", result);
    }
}
