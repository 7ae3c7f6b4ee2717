//! Issue 10, items 4 and 10: counts have an upper bound and strings cannot hold a NUL byte,
//! whether written in the file, substituted from a value or given with `--set`.

/// The documented bound (`berth_spec::model::MAX_REPLICAS`), written out so this test also
/// runs against a build without the constant.
const MAX_REPLICAS: u32 = 10_000;
use berth_spec::{render, validate};

const STACK: &str = "stack: shop
environments:
  staging:
    regions: [local]
services:
  web:
    process: { command: [berth, whoami] }
    replicas: 2
";

fn messages(r: Result<berth_spec::Stack, berth_spec::Diagnostics>) -> Vec<String> {
    match r {
        Ok(_) => vec![],
        Err(d) => d.0.iter().map(|d| d.display_in("f").to_string()).collect(),
    }
}

#[test]
fn the_largest_replica_count_validates_and_one_more_does_not() {
    let at = STACK.replace("replicas: 2", &format!("replicas: {MAX_REPLICAS}"));
    validate(at.as_bytes()).unwrap();
    let over = STACK.replace("replicas: 2", "replicas: 4294967295");
    let d = validate(over.as_bytes()).unwrap_err();
    assert_eq!(
        d.0.iter()
            .map(|d| d.display_in("f").to_string())
            .collect::<Vec<_>>(),
        ["f:8:15: services.web.replicas: expected a non-negative integer no larger than 10000, got 4294967295"]
    );
}

#[test]
fn a_set_override_is_bounded_like_the_file() {
    let ok = render(STACK.as_bytes(), "staging", &["web.replicas=10000".into()]).unwrap();
    assert_eq!(ok.services["web"].replicas, MAX_REPLICAS);
    let m = messages(render(
        STACK.as_bytes(),
        "staging",
        &["web.replicas=4294967295".into()],
    ));
    assert_eq!(m.len(), 1, "{m:?}");
    assert!(
        m[0].contains("--set web.replicas=4294967295")
            && m[0].contains("services.web.replicas")
            && m[0].contains("no larger than 10000"),
        "{m:?}"
    );
    let m = messages(render(
        STACK.as_bytes(),
        "staging",
        &["web.rollout.max_surge=10000000".into()],
    ));
    assert!(
        m.len() == 1 && m[0].contains("services.web.rollout.max_surge"),
        "{m:?}"
    );
}

#[test]
fn nul_bytes_are_refused_where_they_are_written() {
    let env = STACK.replace(
        "    replicas: 2\n",
        "    replicas: 2\n    env:\n      A: \"x\\0y\"\n",
    );
    assert_eq!(
        messages(render(env.as_bytes(), "staging", &[])),
        ["f:10:10: services.web.env.A: contains a NUL byte (\\0) at byte 1; environment values, arguments and paths cannot hold one: remove it"]
    );
    let arg = STACK.replace("[berth, whoami]", "[berth, \"who\\0ami\"]");
    let m = messages(render(arg.as_bytes(), "staging", &[]));
    assert!(
        m.len() == 1
            && m[0].starts_with("f:7:33: services.web.process.command[1]: contains a NUL byte"),
        "{m:?}"
    );
    // A raw NUL byte in the file is refused too (by the parser or here), never accepted.
    let raw = STACK.replace("[berth, whoami]", "[berth, \"who\0ami\"]");
    assert!(validate(raw.as_bytes()).is_err());
    // And through --set, as a double-quoted YAML flow value.
    let m = messages(render(
        STACK.as_bytes(),
        "staging",
        &["web.env.A=\"a\\0b\"".into()],
    ));
    assert!(
        m.len() == 1 && m[0].contains("--set web.env.A") && m[0].contains("NUL byte"),
        "{m:?}"
    );
}
