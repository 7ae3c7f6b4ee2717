//! Issue 5's image digests and garbage collection, end to end through the real `berth up` on
//! the real Docker Engine:
//!
//! 1. a release pins the image id its instances run; `berth gc` removes the image of the
//!    expired release and keeps the images of every retained release, even one whose tag moved
//!    to other bytes; a rollback then still runs the pinned bytes, with no registry reachable;
//! 2. with `history: 1`, an image only an expired release used is removed by `berth gc` once no
//!    container uses it, while the retained ones stay and a rollback to them works.
//!
//! The images are the test's own: `berth-test/busybox:v1|v2` committed with a label unique to
//! the test (so each has its own id, collectable without touching the shared test images other
//! tests run). Every container and image the test makes is removed when it ends, pass or fail.
//! Without an Engine each test prints a loud banner and passes, unless `BERTH_REQUIRE_DOCKER=1`.

mod common;

use std::time::Duration;

use berth_agent::bollard::models::{ContainerConfig, ContainerCreateBody};
use berth_agent::bollard::query_parameters::{
    CommitContainerOptionsBuilder, CreateContainerOptions, RemoveContainerOptionsBuilder,
    RemoveImageOptionsBuilder, TagImageOptionsBuilder,
};
use berth_agent::DockerDriver;
use common::cluster::{api_get, cli_ok, releases, wait_settled};
use common::docker::{engine_or_skip, DockerUp, V1, V2};
use common::{http, write_file};

const STACK: &str = "gc";
const SVC: &str = "web";
const DEADLINE: Duration = Duration::from_secs(60);

/// Images made for one test, removed (tags and ids, forced) when dropped.
struct Images {
    rt: tokio::runtime::Runtime,
    docker: DockerDriver,
    made: Vec<String>,
    tag: String,
}

impl Images {
    fn new(test: &str) -> Images {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let docker = rt
            .block_on(DockerDriver::connect())
            .unwrap_or_else(|e| panic!("the Engine answered a moment ago: {e}"));
        Images {
            rt,
            docker,
            made: vec![],
            tag: format!("berth-test/gc-e2e-{test}-{}", std::process::id()),
        }
    }

    /// The reference `REPO:tag` of this test's repository.
    fn reference(&self, tag: &str) -> String {
        format!("{}:{tag}", self.tag)
    }

    /// An image with the content of `base` but its own id, tagged `tag`; returns its id.
    #[track_caller]
    fn make(&mut self, base: &str, tag: &str) -> String {
        let reference = self.reference(tag);
        let client = self.docker.client();
        let id = self.rt.block_on(async {
            let body = ContainerCreateBody {
                image: Some(base.to_string()),
                ..Default::default()
            };
            let c = client
                .create_container(None::<CreateContainerOptions>, body)
                .await
                .expect("create a container to commit");
            let o = CommitContainerOptionsBuilder::default()
                .container(&c.id)
                .repo(&self.tag)
                .tag(tag)
                .changes(&format!("LABEL berth.test.gc={reference}"))
                .build();
            let committed = client.commit_container(o, ContainerConfig::default()).await;
            let o = RemoveContainerOptionsBuilder::default().force(true).build();
            let _ = client.remove_container(&c.id, Some(o)).await;
            committed.expect("commit").id
        });
        self.made.push(reference);
        self.made.push(id.clone());
        id
    }

    /// Points `tag` at `image` (as a re-push of the same tag would).
    fn retag(&mut self, image: &str, tag: &str) {
        let o = TagImageOptionsBuilder::default()
            .repo(&self.tag)
            .tag(tag)
            .build();
        self.rt
            .block_on(self.docker.client().tag_image(image, Some(o)))
            .expect("tag");
    }

    /// The id `image` (a reference or an id) names, if present.
    fn id_of(&self, image: &str) -> Option<String> {
        self.rt
            .block_on(self.docker.client().inspect_image(image))
            .ok()
            .and_then(|i| i.id)
    }

    /// The image id a container runs.
    fn container_image(&self, container: &str) -> Option<String> {
        self.rt
            .block_on(self.docker.client().inspect_container(container, None))
            .ok()
            .and_then(|i| i.image)
    }
}

impl Drop for Images {
    fn drop(&mut self) {
        for image in self.made.iter().rev() {
            let o = RemoveImageOptionsBuilder::default().force(true).build();
            let _ = self
                .rt
                .block_on(self.docker.client().remove_image(image, Some(o), None));
        }
    }
}

fn stack_file(up: &DockerUp, image: &str, history: u32) -> String {
    let name = format!("{}.yaml", image.replace(['/', ':'], "-"));
    write_file(
        up.dir(),
        &name,
        format!(
            r#"stack: {STACK}
history: {history}
environments:
  local:
    regions: [local]
services:
  {SVC}:
    image: {image}
    ports: {{ http: 8080 }}
    replicas: 2
    health: {{ http: /healthz, port: http, interval: 250ms, timeout: 1s, healthy: 1, unhealthy: 2 }}
    route: {{ host: 127.0.0.1, path: /, port: http }}
    rollout: {{ strategy: rolling, max_surge: 2, max_unavailable: 0, progress_deadline: 30s }}
    stop_grace: 1s
"#
        ),
    )
}

#[track_caller]
fn deploy(up: &DockerUp, image: &str, history: u32, release: u64) {
    let file = stack_file(up, image, history);
    cli_ok(up, &["deploy", "-f", &file, "--env", "local"]);
    wait_settled(up, STACK, SVC, 2, Some(release));
}

/// Waits until release `n` pins `id` for the service.
#[track_caller]
fn wait_pinned(up: &DockerUp, n: u64, id: &str) {
    up.wait_until(DEADLINE, &format!("release {n} to pin {id}"), || {
        releases(up, STACK, "local")
            .iter()
            .any(|r| r["number"] == n && r["images"][SVC] == id)
    });
}

/// `berth gc`, which waits for the node's report; returns its output.
#[track_caller]
fn gc(up: &DockerUp) -> String {
    cli_ok(up, &["gc", "--timeout", "60"])
}

/// The images the one node's report in `berth gc`'s output names as removed, from its line
/// `NODE: removed C container(s), N image(s) (REF, …), M MiB reclaimed`; panics if there is
/// not exactly one such line or N is not the number of references listed.
#[track_caller]
fn images_removed(out: &str) -> Vec<String> {
    let lines: Vec<&str> = out.lines().filter(|l| l.contains(": removed ")).collect();
    let [line] = lines[..] else {
        panic!("berth gc should print one report line (one node):\n{out}");
    };
    let after = line
        .split_once(" container(s), ")
        .map(|(_, rest)| rest)
        .unwrap_or_else(|| panic!("no container count in {line:?}"));
    let (count, rest) = after
        .split_once(" image(s)")
        .unwrap_or_else(|| panic!("no image count in {line:?}"));
    let count: usize = count
        .parse()
        .unwrap_or_else(|e| panic!("image count {count:?} in {line:?}: {e}"));
    let named: Vec<String> = rest
        .strip_prefix(" (")
        .and_then(|r| r.split_once(')'))
        .map(|(list, _)| list.split(", ").map(str::to_string).collect())
        .unwrap_or_default();
    assert_eq!(
        named.len(),
        count,
        "{line:?}: the count and the list differ"
    );
    named
}

/// `n` answers through the router, each `version`.
#[track_caller]
fn assert_answers(up: &DockerUp, n: usize, version: &str) {
    for i in 0..n {
        let r = http::get(up.router(), "/")
            .unwrap_or_else(|e| panic!("request {i} failed: {e}\n{}", up.log_tail()));
        assert_eq!(
            (r.status, r.text().trim()),
            (200, version),
            "request {i}\n{}",
            up.log_tail()
        );
    }
}

#[test]
fn gc_keeps_every_retained_release_image_and_a_rollback_runs_the_pinned_bytes() {
    if !engine_or_skip("gc_keeps_every_retained_release_image_and_a_rollback_runs_the_pinned_bytes")
    {
        return;
    }
    let mut images = Images::new("keep");
    let old = images.make(V1, "old");
    let app = images.make(V1, "app");
    let next = images.make(V2, "next");
    let up = DockerUp::start();

    // `history: 1` retains the live release and the one it replaced: releases 3 and 2. Release
    // 1 expires, so a collection has an image it must remove (a collection that removes
    // nothing cannot pass for one that keeps the right images).
    deploy(&up, &images.reference("old"), 1, 1);
    wait_pinned(&up, 1, &old);
    deploy(&up, &images.reference("app"), 1, 2);
    wait_pinned(&up, 2, &app);
    deploy(&up, &images.reference("next"), 1, 3);
    wait_pinned(&up, 3, &next);
    assert_answers(&up, 10, "v2");
    let kept: Vec<u64> = releases(&up, STACK, "local")
        .iter()
        .filter_map(|r| r["number"].as_u64())
        .collect();
    assert_eq!(kept, [3, 2], "history 1 retains releases 3 and 2");

    // The tag of release 2 now names other bytes (v2's), as after a re-push.
    images.retag(V2, "app");
    assert_ne!(images.id_of(&images.reference("app")), Some(app.clone()));

    let out = gc(&up);
    assert_eq!(
        images_removed(&out),
        [images.reference("old")],
        "berth gc should remove exactly the expired release's image:\n{out}"
    );
    assert_eq!(images.id_of(&old), None, "release 1's bytes are removed");
    assert_eq!(
        images.id_of(&app),
        Some(app.clone()),
        "release 2's bytes are kept, though its tag moved"
    );
    assert_eq!(images.id_of(&images.reference("next")), Some(next.clone()));

    // No registry is reachable: the rollback runs from the bytes on the node, the pinned ones.
    cli_ok(&up, &["rollback", STACK, "--env", "local", "2"]);
    wait_settled(&up, STACK, SVC, 2, Some(4));
    assert_answers(&up, 20, "v1");
    let running = up.containers().running();
    assert_eq!(running.len(), 2, "{running:?}");
    for c in &running {
        assert_eq!(images.container_image(&c.id), Some(app.clone()), "{c:?}");
    }
    let four = releases(&up, STACK, "local")
        .into_iter()
        .find(|r| r["number"] == 4)
        .expect("release 4");
    assert_eq!(
        four["images"][SVC],
        app.as_str(),
        "the rollback copies the pin: {four:#}"
    );
}

#[test]
fn gc_removes_an_image_only_an_expired_release_used() {
    if !engine_or_skip("gc_removes_an_image_only_an_expired_release_used") {
        return;
    }
    let mut images = Images::new("expire");
    let a = images.make(V1, "a");
    let b = images.make(V2, "b");
    let c = images.make(V1, "c");
    let up = DockerUp::start();

    deploy(&up, &images.reference("a"), 1, 1);
    wait_pinned(&up, 1, &a);
    deploy(&up, &images.reference("b"), 1, 2);
    wait_pinned(&up, 2, &b);
    // history 1 keeps release 1 until the next deploy (never the one being replaced).
    let out = gc(&up);
    assert_eq!(
        images_removed(&out),
        Vec::<String>::new(),
        "both releases are retained:\n{out}"
    );
    assert_eq!(images.id_of(&images.reference("a")), Some(a.clone()));
    assert_eq!(images.id_of(&images.reference("b")), Some(b.clone()));

    deploy(&up, &images.reference("c"), 1, 3);
    wait_pinned(&up, 3, &c);
    let kept: Vec<u64> = releases(&up, STACK, "local")
        .iter()
        .filter_map(|r| r["number"].as_u64())
        .collect();
    assert_eq!(
        kept,
        [3, 2],
        "history 1 keeps the live release and the one it replaced"
    );
    let keep = api_get(&up, "/v1/nodes").expect("nodes");
    let out = gc(&up);
    assert_eq!(
        images_removed(&out),
        [images.reference("a")],
        "berth gc should remove exactly a, and name it:\n{out}\nnodes: {keep:#}"
    );
    assert_eq!(
        images.id_of(&images.reference("a")),
        None,
        "a's tag is gone"
    );
    assert_eq!(images.id_of(&a), None, "and its bytes");
    assert_eq!(images.id_of(&images.reference("b")), Some(b.clone()));
    assert_eq!(images.id_of(&images.reference("c")), Some(c.clone()));
    assert!(
        images.id_of(V1).is_some() && images.id_of(V2).is_some(),
        "the shared test images are never the agent's to remove"
    );

    // A rollback to the retained release 2 works after the collection, without a registry.
    cli_ok(&up, &["rollback", STACK, "--env", "local", "2"]);
    wait_settled(&up, STACK, SVC, 2, Some(4));
    assert_answers(&up, 20, "v2");
}
