//! Rendering the stack from DESIGN.md: defaults explicit, overlays, `--set`, canonical YAML.

use berth_spec::model::{Amount, Percent};
use berth_spec::{render, to_yaml, validate};

const SHOP: &str = include_str!("valid/shop.yaml");

fn messages(r: Result<berth_spec::Stack, berth_spec::Diagnostics>) -> Vec<String> {
    match r {
        Ok(_) => vec![],
        Err(d) => d.0.iter().map(|d| d.display_in("f").to_string()).collect(),
    }
}

#[test]
fn the_design_example_validates() {
    validate(SHOP.as_bytes()).unwrap();
}

#[test]
fn overlays_and_defaults() {
    let staging = render(SHOP.as_bytes(), "staging", &[]).unwrap();
    let prod = render(SHOP.as_bytes(), "production", &[]).unwrap();
    assert_eq!(staging.services["web"].replicas, 1);
    assert_eq!(prod.services["web"].replicas, 2);
    assert_eq!(prod.regions(), ["eu-west", "us-east"]);
    assert_eq!(
        prod.environments["production"].max_capacity_drop,
        Percent(50)
    );
    assert_eq!(
        staging.environments["staging"].max_capacity_drop,
        Percent(100)
    );
    let api = &prod.services["api"];
    assert_eq!(api.replicas, 1);
    assert_eq!(api.stop_grace.millis, 10_000);
    assert_eq!(api.rollout.progress_deadline.millis, 60_000);
    assert_eq!(
        api.placement.constraints[0].to_string(),
        "region == ${region}"
    );
    let web = &prod.services["web"];
    assert_eq!(web.resources.cpu.millis, 100);
    assert_eq!(web.resources.memory.bytes, 64 << 20);
    let eu = prod.service_for_region("api", "eu-west").unwrap();
    assert_eq!(eu.placement.constraints[0].to_string(), "region == eu-west");
}

#[test]
fn overrides_are_typed_like_their_field() {
    let sets = [
        "web.env.VERSION=2",
        "web.replicas=3",
        "api.image=x:v2",
        "web.rollout.max_surge=25%",
    ]
    .map(String::from);
    let s = render(SHOP.as_bytes(), "production", &sets).unwrap();
    assert_eq!(s.services["web"].env["VERSION"], "2");
    assert_eq!(s.services["web"].replicas, 3);
    assert_eq!(s.services["api"].image.as_deref(), Some("x:v2"));
    assert_eq!(
        s.services["web"].rollout.max_surge,
        Amount::Percent(Percent(25))
    );

    let bad = [
        "nope.replicas=3",
        "web.replicaz=3",
        "web.replicas=abc",
        "api.image=x:latest",
        "web.rollout.max_surge=0",
        "web",
    ]
    .map(String::from);
    assert_eq!(
        messages(render(SHOP.as_bytes(), "production", &bad)),
        [
            "f: --set api.image=x:latest: services.api.image: the tag `latest` is refused: it names a different image tomorrow; pin a version tag or a digest",
            "f: --set nope.replicas=3: unknown service `nope`",
            "f: --set web.replicas=abc: services.web.replicas: expected a non-negative integer, got \"abc\"",
            "f: --set web.replicaz=3: services.web.replicaz: unknown field, did you mean `replicas`?",
            "f: --set web.rollout.max_surge=0: services.web.rollout.max_surge: a rolling rollout needs max_surge or max_unavailable above 0, or it can never progress",
            "f: --set web: missing `=`; expected service.path=value, like web.replicas=3",
        ]
    );
}

#[test]
fn unknown_environment_suggests() {
    assert_eq!(
        messages(render(SHOP.as_bytes(), "prod", &[])),
        ["f: unknown environment `prod`"]
    );
    assert_eq!(
        messages(render(SHOP.as_bytes(), "staging2", &[])),
        ["f: unknown environment `staging2`, did you mean `staging`?"]
    );
}

#[test]
fn to_yaml_is_canonical_and_valid() {
    let s = render(SHOP.as_bytes(), "production", &[]).unwrap();
    let y = to_yaml(&s);
    println!("{y}");
    validate(y.as_bytes()).unwrap();
    let again = render(y.as_bytes(), "production", &[]).unwrap();
    assert_eq!(again, s);
    assert_eq!(to_yaml(&again), y);
}
