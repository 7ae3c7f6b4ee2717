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
        Percent(50),
        "an environment that does not say allows a 50 % drop without --confirm"
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

const TYPED: &str = r#"
stack: typed
values:
  ratio: 0.5
  debug: false
  count: 2
  name: shop
environments:
  staging:
    regions: [local]
    values: { ratio: 1, debug: true }
  production:
    regions: [eu-west]
services:
  web:
    process: { command: [berth, whoami] }
    env:
      RATIO: ${values.ratio}
      DEBUG: ${values.debug}
      LABEL: "${values.name}-${values.count}-${region}"
      VERSION: 1.10
      ON: true
      N: 007
    ports: { http: 0 }
    replicas: ${values.count}
    health: { tcp: true }
"#;

#[test]
fn env_values_are_stringified_as_written_and_values_take_their_type() {
    let s = render(TYPED.as_bytes(), "production", &[]).unwrap();
    let env = &s.services["web"].env;
    assert_eq!(env["RATIO"], "0.5");
    assert_eq!(env["DEBUG"], "false");
    assert_eq!(env["LABEL"], "shop-2-${region}");
    assert_eq!(env["VERSION"], "1.10");
    assert_eq!(env["ON"], "true");
    assert_eq!(env["N"], "007");
    assert_eq!(s.services["web"].replicas, 2);
    // A health check on a service with exactly one port probes that port.
    assert_eq!(
        s.services["web"].health.as_ref().unwrap().port.as_deref(),
        Some("http")
    );
    let eu = s.service_for_region("web", "eu-west").unwrap();
    assert_eq!(eu.env["LABEL"], "shop-2-eu-west");

    let s = render(TYPED.as_bytes(), "staging", &[]).unwrap();
    assert_eq!(s.services["web"].env["RATIO"], "1");
    assert_eq!(s.services["web"].env["DEBUG"], "true");
}

#[test]
fn overrides_can_create_defaulted_fields_and_use_values() {
    let sets = [
        "web.rollout.progress_deadline=5m",
        "web.replicas=${values.count}",
        "web.placement.constraints=[\"zone in [a, b]\"]",
        "web.env.EMPTY=",
    ]
    .map(String::from);
    let s = render(TYPED.as_bytes(), "production", &sets).unwrap();
    let web = &s.services["web"];
    assert_eq!(web.rollout.progress_deadline.millis, 300_000);
    assert_eq!(web.replicas, 2);
    assert_eq!(web.placement.constraints[0].to_string(), "zone in [a, b]");
    assert_eq!(web.env["EMPTY"], "");

    let bad = [
        "web.health.port=admin",
        "web.rollout.strategy=rolling.x",
        "web.replicas.x=1",
        "web.env.PORT=1",
    ]
    .map(String::from);
    assert_eq!(
        messages(render(TYPED.as_bytes(), "production", &bad)),
        [
            "f: --set web.env.PORT=1: services.web.env.PORT: `PORT` is set by berth for every instance (PORT, PORT_<NAME>, BERTH_*)",
            "f: --set web.health.port=admin: services.web.health.port: `admin` is not a declared port; expected one of the service's ports (http)",
            "f: --set web.replicas.x=1: services.web.replicas: expected a non-negative integer, got a mapping",
            "f: --set web.rollout.strategy=rolling.x: services.web.rollout.strategy: expected one of rolling, blue_green, canary, got \"rolling.x\", did you mean `rolling`?",
        ]
    );
}

#[test]
fn render_needs_the_literal_parts_valid_but_checks_services_for_its_environment_only() {
    let src = TYPED.replace("values: { ratio: 1, debug: true }", "values: { count: -1 }");
    // staging's overlay makes replicas negative: validate says so, production still renders.
    let err = validate(src.as_bytes()).unwrap_err();
    assert_eq!(
        err.0.iter().map(|d| d.display_in("f").to_string()).collect::<Vec<_>>(),
        ["f:25:15: services.web.replicas: expected a non-negative integer, got -1 (from ${values.count}) (in environment `staging`)"]
    );
    assert!(render(src.as_bytes(), "production", &[]).is_ok());
    assert!(render(src.as_bytes(), "staging", &[]).is_err());
}

#[test]
fn bad_input_never_panics() {
    for src in [
        "",
        "[]",
        "3",
        "stack:",
        "services: {a: {process: {command: [[1]]}}}",
        "stack: s\nenvironments: {e: {regions: [r]}}\nservices: {a: {image: \"@\"}}",
        "stack: s\nenvironments: {e: {regions: [r]}}\nservices: {a: {image: \":\"}}",
        "stack: s\nenvironments: {e: {regions: [r]}}\nservices: {a: {image: \"x@sha256:é\"}}",
        "stack: s\nenvironments: {e: {regions: [r]}}\nservices: {a: {process: {command: [\"${\"]}}}}",
        "stack: s\nenvironments: {e: {regions: [r]}}\nservices: {a: {process: {command: [x]}, replicas: \"${values.}\"}}",
    ] {
        let _ = validate(src.as_bytes());
        let _ = render(src.as_bytes(), "e", &["a.x.y.z=[".to_string(), "=".to_string(), ".=.".to_string()]);
    }
}

const PROGRESSIVE: &str = r#"
stack: shop
environments:
  production:
    regions: [eu-west, us-east]
    waves: { bake: 10m, min_requests: 1000, on_failure: revert_all }
  staging:
    regions: [local]
    waves: { on_failure: halt }
services:
  web:
    process: { command: [berth, whoami] }
    ports: { http: 0 }
    route: { host: shop.localhost, port: http }
    rollout:
      strategy: canary
      steps: [0.5%, 10%, 50%]
      bake: 30s
      min_requests: 200
      sticky: header:X-User
      match: { header: X-Canary, value: always }
      on_failure: pause
  admin:
    process: { command: [berth, whoami] }
    rollout: { strategy: canary }
  api:
    process: { command: [berth, whoami] }
    rollout:
      strategy: blue_green
      preview_host: preview.shop.localhost
      bake: 30s
      auto_promote: false
      keep_previous: 15m
  jobs:
    process: { command: [berth, whoami] }
    rollout: { strategy: blue_green }
  plain:
    process: { command: [berth, whoami] }
  shop:
    process: { command: [berth, whoami] }
    ports: { http: 0 }
    route: { host: ab.localhost, port: http, split: { service: shop-next, weight: 20% } }
  shop-next:
    process: { command: [berth, whoami] }
    ports: { http: 0 }
"#;

#[test]
fn progressive_delivery_fields_render_with_explicit_defaults_and_round_trip() {
    use berth_spec::model::{BasisPoints, Match, OnFailure, Sticky, WaveFailure};
    validate(PROGRESSIVE.as_bytes()).unwrap();
    let s = render(PROGRESSIVE.as_bytes(), "production", &[]).unwrap();
    let web = &s.services["web"].rollout;
    assert_eq!(
        web.steps,
        Some(vec![BasisPoints(50), BasisPoints(1000), BasisPoints(5000)])
    );
    assert_eq!(web.bake.map(|d| d.millis), Some(30_000));
    assert_eq!(web.min_requests, Some(200));
    assert_eq!(web.sticky, Some(Sticky::Header("X-User".into())));
    assert_eq!(
        web.matched,
        Some(Match {
            header: "X-Canary".into(),
            value: "always".into()
        })
    );
    assert_eq!(web.on_failure, Some(OnFailure::Pause));
    let admin = &s.services["admin"].rollout;
    assert_eq!(
        admin.steps,
        Some(vec![BasisPoints(1000), BasisPoints(5000)])
    );
    assert_eq!(admin.bake.map(|d| d.millis), Some(300_000), "5m by default");
    assert_eq!(admin.min_requests, Some(300));
    assert_eq!(admin.sticky, Some(Sticky::Cookie));
    assert_eq!(admin.on_failure, Some(OnFailure::Rollback));
    assert_eq!(admin.matched, None);
    let api = &s.services["api"].rollout;
    assert_eq!(api.preview_host.as_deref(), Some("preview.shop.localhost"));
    assert_eq!(api.auto_promote, Some(false));
    assert_eq!(api.keep_previous.map(|d| d.millis), Some(900_000));
    let jobs = &s.services["jobs"].rollout;
    assert_eq!(jobs.bake.map(|d| d.millis), Some(60_000), "1m by default");
    assert_eq!(jobs.auto_promote, Some(true));
    assert_eq!(jobs.preview_host, None);
    let plain = &s.services["plain"].rollout;
    assert_eq!(plain.steps, None, "rolling renders as it always did");
    assert_eq!(plain.bake, None);
    let split = s.services["shop"]
        .route
        .as_ref()
        .and_then(|r| r.split.clone())
        .unwrap();
    assert_eq!(
        (split.service.as_str(), split.weight, split.sticky),
        ("shop-next", BasisPoints(2000), Sticky::Cookie),
        "sticky: cookie by default"
    );
    let waves = s.environments["production"].waves.clone().unwrap();
    assert_eq!(
        (waves.bake.millis, waves.min_requests, waves.on_failure),
        (600_000, 1000, WaveFailure::RevertAll)
    );

    let y = to_yaml(&s);
    assert!(y.contains("0.5%"), "{y}");
    validate(y.as_bytes()).unwrap();
    let again = render(y.as_bytes(), "production", &[]).unwrap();
    assert_eq!(again, s);
    assert_eq!(to_yaml(&again), y);

    let staging = render(PROGRESSIVE.as_bytes(), "staging", &[]).unwrap();
    let waves = staging.environments["staging"].waves.clone().unwrap();
    assert_eq!(
        (waves.bake.millis, waves.min_requests, waves.on_failure),
        (300_000, 300, WaveFailure::Halt)
    );
    let none = render(SHOP.as_bytes(), "production", &[]).unwrap();
    assert!(none.environments.values().all(|e| e.waves.is_none()));
}

#[test]
fn canary_fields_can_be_set_from_the_command_line() {
    use berth_spec::model::BasisPoints;
    let s = render(
        PROGRESSIVE.as_bytes(),
        "production",
        &["web.rollout.min_requests=5".into()],
    )
    .unwrap();
    assert_eq!(s.services["web"].rollout.min_requests, Some(5));
    assert_eq!(
        s.services["web"].rollout.steps.as_ref().map(|v| v[0]),
        Some(BasisPoints(50))
    );
}

/// `approval: N` counts approvers (`true` is 1, `false` 0), `approval_timeout` defaults to
/// 24 h, and a record written when `approval` was a boolean still reads.
#[test]
fn approval_is_a_count_with_a_timeout() {
    let file = |approval: &str| {
        format!("stack: s\nenvironments:\n  prod:\n    regions: [local]\n    approval: {approval}\nservices:\n  web:\n    image: example/web:1\n")
    };
    let env = |approval: &str| {
        render(file(approval).as_bytes(), "prod", &[]).map(|s| s.environments["prod"].clone())
    };
    assert_eq!(env("2").unwrap().approval, 2);
    assert_eq!(env("true").unwrap().approval, 1);
    assert_eq!(env("false").unwrap().approval, 0);
    let e = env("1\n    approval_timeout: 2s").unwrap();
    assert_eq!((e.approval, e.approval_timeout.millis), (1, 2_000));
    assert_eq!(
        env("2").unwrap().approval_timeout,
        berth_spec::model::DEFAULT_APPROVAL_TIMEOUT
    );
    let bad = messages(render(file("many").as_bytes(), "prod", &[]));
    assert!(
        bad.iter().any(|m| m.contains("environments.prod.approval")),
        "{bad:?}"
    );
    let bad = messages(render(file("7").as_bytes(), "prod", &[]));
    assert!(!bad.is_empty(), "at most 6 approvers");
    // Older records: `approval: true` in JSON.
    let old: berth_spec::model::Environment =
        serde_json::from_str(r#"{"regions":["local"],"approval":true,"max_capacity_drop":"50%"}"#)
            .unwrap();
    assert_eq!(old.approval, 1);
    assert_eq!(
        old.approval_timeout,
        berth_spec::model::DEFAULT_APPROVAL_TIMEOUT
    );
}
