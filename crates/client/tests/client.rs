//! The client against a tiny axum imitation of the server, on 127.0.0.1:0.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use berth_api::control::{DeployRequest, DesiredInstances, ErrorBody, Event, RoutingTable};
use berth_client::{Client, ClientError};
use futures::StreamExt;
use tokio::sync::mpsc;

const DEADLINE: Duration = Duration::from_secs(10);

/// A route the imitation served, and the query it got.
type SeenQuery = (String, HashMap<String, String>);

/// What the imitation saw: each call's route and query string, and its authorization header.
#[derive(Clone, Default)]
struct Seen {
    queries: Arc<Mutex<Vec<SeenQuery>>>,
    auth: Arc<Mutex<Vec<Option<String>>>>,
}

impl Seen {
    fn record(&self, route: &str, query: HashMap<String, String>, headers: &HeaderMap) {
        self.queries
            .lock()
            .expect("lock")
            .push((route.to_string(), query));
        let auth = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        self.auth.lock().expect("lock").push(auth);
    }
}

async fn serve(app: Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}")
}

fn error(status: StatusCode, message: &str, details: &[&str]) -> Response {
    let body = ErrorBody {
        error: message.to_string(),
        details: details.iter().map(|d| d.to_string()).collect(),
    };
    (status, Json(body)).into_response()
}

fn deploy_request() -> DeployRequest {
    DeployRequest {
        file: "shop.yaml".into(),
        source: "stack: shop\n".into(),
        env: "staging".into(),
        set: vec![],
        confirm: None,
        plan_id: None,
        dry_run: false,
        force: false,
    }
}

/// `POST /v1/deploy` answers the status named by the stack file's `env` field, so one route
/// exercises every mapping.
async fn deploy(Json(req): Json<DeployRequest>) -> Response {
    match req.env.as_str() {
        "400" => error(
            StatusCode::BAD_REQUEST,
            "invalid stack file",
            &[
                "shop.yaml:3:5: unknown field `replica`",
                "shop.yaml:7:1: bad",
            ],
        ),
        "401" => error(
            StatusCode::UNAUTHORIZED,
            "missing or wrong bearer token",
            &[],
        ),
        "404" => error(StatusCode::NOT_FOUND, "no stack `shop`", &[]),
        "409" => error(StatusCode::CONFLICT, "the live release moved", &[]),
        "428" => error(
            StatusCode::PRECONDITION_REQUIRED,
            "this plan stops 3 instances: pass --confirm shop",
            &[],
        ),
        "503" => error(StatusCode::SERVICE_UNAVAILABLE, "the store failed", &[]),
        "502" => (StatusCode::BAD_GATEWAY, "<html>proxy says no</html>").into_response(),
        "garbage" => (StatusCode::OK, "{\"stack\": 1}").into_response(),
        _ => Json(serde_json::json!({
            "stack": "shop", "env": req.env, "release": 4,
            "plan": {"id": "p1", "text": "+ web", "detail": {}}
        }))
        .into_response(),
    }
}

#[tokio::test]
async fn statuses_become_error_variants() {
    let base = serve(Router::new().route("/v1/deploy", post(deploy))).await;
    let client = Client::new(&base, Some("admin-token".into())).expect("client");
    let with_env = |env: &str| DeployRequest {
        env: env.into(),
        ..deploy_request()
    };

    let ok = client.deploy(&with_env("staging")).await.expect("deploy");
    assert_eq!((ok.stack.as_str(), ok.release), ("shop", Some(4)));

    let e = client.deploy(&with_env("400")).await.expect_err("400");
    match &e {
        ClientError::Invalid { message, details } => {
            assert_eq!(message, "invalid stack file");
            assert_eq!(details.len(), 2);
        }
        other => panic!("400 gave {other:?}"),
    }
    assert!(e
        .to_string()
        .contains("\nshop.yaml:3:5: unknown field `replica`\n"));
    assert_eq!(e.exit_code(), 1);

    let e = client.deploy(&with_env("401")).await.expect_err("401");
    assert!(matches!(e, ClientError::Unauthorized { .. }), "{e:?}");
    assert!(e.to_string().starts_with("the server refused the token: "));

    let e = client.deploy(&with_env("404")).await.expect_err("404");
    assert!(matches!(e, ClientError::NotFound { .. }), "{e:?}");

    let e = client.deploy(&with_env("409")).await.expect_err("409");
    assert!(matches!(e, ClientError::Conflict { .. }), "{e:?}");

    let e = client.deploy(&with_env("428")).await.expect_err("428");
    assert!(matches!(e, ClientError::Refused { .. }), "{e:?}");
    assert_eq!(e.exit_code(), 3);
    assert_eq!(
        e.to_string(),
        "this plan stops 3 instances: pass --confirm shop"
    );

    let e = client.deploy(&with_env("503")).await.expect_err("503");
    assert!(
        matches!(e, ClientError::Server { status: 503, .. }) && e.is_transient(),
        "{e:?}"
    );

    let e = client.deploy(&with_env("502")).await.expect_err("502");
    assert_eq!(
        e.to_string(),
        "the berth server answered 502: <html>proxy says no</html>"
    );

    let e = client
        .deploy(&with_env("garbage"))
        .await
        .expect_err("decode");
    assert!(matches!(e, ClientError::Decode { .. }), "{e:?}");
    assert!(e.to_string().contains("POST /v1/deploy"), "{e}");
}

#[tokio::test]
async fn a_server_that_is_not_there_is_unreachable_with_a_hint() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    drop(listener);
    let base = format!("http://{addr}");
    let client = Client::new(&base, None).expect("client");
    let e = client.nodes().await.expect_err("nobody listens");
    assert!(matches!(e, ClientError::Unreachable { .. }), "{e:?}");
    let message = e.to_string();
    assert!(
        message.starts_with(&format!("cannot reach the berth server at {base}: ")),
        "{message}"
    );
    assert!(
        message.ends_with(
            "is the server (or `berth up`) running there? check --server or BERTH_SERVER"
        ),
        "{message}"
    );
    assert!(e.is_transient());
}

#[test]
fn bad_urls_and_tokens_are_refused_before_any_call() {
    for url in [
        "localhost:7070",
        "ftp://x",
        "https://x:1",
        "http://u:p@x:1",
        "not a url",
    ] {
        let e = Client::new(url, None).expect_err(url);
        assert!(matches!(e, ClientError::Config { .. }), "{url}: {e:?}");
        assert!(e.to_string().contains("--server"), "{e}");
    }
    let e = Client::new("http://127.0.0.1:1", Some("a\nb".into())).expect_err("newline");
    assert!(matches!(e, ClientError::Config { .. }));
    let client = Client::new("http://127.0.0.1:1", Some("secret".into())).expect("ok");
    assert!(!format!("{client:?}").contains("secret"));
}

#[tokio::test]
async fn long_polls_pass_version_wait_and_router_and_the_token() {
    let seen = Seen::default();
    let app = Router::new()
        .route(
            "/v1/nodes/{name}/desired",
            get(
                |State(seen): State<Seen>,
                 Path(name): Path<String>,
                 Query(q): Query<HashMap<String, String>>,
                 headers: HeaderMap| async move {
                    seen.record(&format!("desired {name}"), q, &headers);
                    Json(DesiredInstances {
                        version: "d2".into(),
                        instances: vec![],
                        keep_images: vec![],
                        gc_generation: 0,
                    })
                },
            ),
        )
        .route(
            "/v1/routes",
            get(
                |State(seen): State<Seen>,
                 Query(q): Query<HashMap<String, String>>,
                 headers: HeaderMap| async move {
                    seen.record("routes", q, &headers);
                    Json(RoutingTable {
                        version: "r2".into(),
                        routes: vec![],
                    })
                },
            ),
        )
        .with_state(seen.clone());
    let base = serve(app).await;
    let client = Client::new(&base, Some(" node-1.secret\n".into())).expect("client");

    let desired = client
        .desired("node-1", Some("d1"), Duration::from_millis(7_200))
        .await
        .expect("desired");
    assert_eq!(desired.version, "d2");
    let table = client
        .routes(Some("router-a"), None, Duration::from_secs(20))
        .await
        .expect("routes");
    assert_eq!(table.version, "r2");
    // A name is one path segment whatever it contains: it cannot climb to another route.
    client
        .desired("../routes", None, Duration::ZERO)
        .await
        .expect("desired, for a node with an odd name");

    let queries = seen.queries.lock().expect("lock").clone();
    assert_eq!(queries[0].0, "desired node-1");
    assert_eq!(queries[0].1.get("version").map(String::as_str), Some("d1"));
    assert_eq!(
        queries[0].1.get("wait").map(String::as_str),
        Some("8"),
        "rounded up"
    );
    assert_eq!(queries[1].0, "routes");
    assert_eq!(queries[1].1.get("wait").map(String::as_str), Some("20"));
    assert_eq!(
        queries[1].1.get("router").map(String::as_str),
        Some("router-a")
    );
    assert!(!queries[1].1.contains_key("version"));
    assert_eq!(queries[2].0, "desired ../routes");
    assert_eq!(queries[2].1.get("wait").map(String::as_str), Some("0"));
    let auth = seen.auth.lock().expect("lock").clone();
    assert_eq!(auth, vec![Some("Bearer node-1.secret".to_string()); 3]);

    let anonymous = client.with_token(None).expect("client");
    anonymous
        .routes(None, None, Duration::ZERO)
        .await
        .expect("routes");
    assert_eq!(seen.auth.lock().expect("lock").last(), Some(&None));
}

fn event_json(revision: i64) -> String {
    serde_json::to_string(&Event {
        revision,
        kind: "put".into(),
        subject: "release".into(),
        key: format!("/releases/shop/{revision}"),
        summary: format!("release {revision}"),
        stack: Some("shop".into()),
        env: None,
        at_ms: None,
        who: None,
    })
    .expect("json")
}

#[tokio::test]
async fn events_are_decoded_as_they_arrive_across_chunks() {
    // The test hands the imitation each chunk in turn, so it can check an event is yielded
    // before the rest of the body even exists.
    let (chunks_tx, chunks_rx) = mpsc::unbounded_channel::<Vec<u8>>();
    let chunks_rx = Arc::new(Mutex::new(Some(chunks_rx)));
    let seen = Seen::default();
    let app = Router::new()
        .route(
            "/v1/events",
            get(
                move |State(seen): State<Seen>,
                      Query(q): Query<HashMap<String, String>>,
                      headers: HeaderMap| {
                    let rx = chunks_rx.lock().expect("lock").take();
                    async move {
                        seen.record("events", q, &headers);
                        let Some(rx) = rx else {
                            return error(StatusCode::CONFLICT, "only once", &[]);
                        };
                        let stream = futures::stream::unfold(rx, |mut rx| async move {
                            rx.recv()
                                .await
                                .map(|chunk| (Ok::<_, Infallible>(chunk), rx))
                        });
                        Response::builder()
                            .header("content-type", "text/event-stream")
                            .body(Body::from_stream(stream))
                            .expect("response")
                    }
                },
            ),
        )
        .with_state(seen.clone());
    let base = serve(app).await;
    let client = Client::new(&base, Some("admin".into())).expect("client");
    let mut events = Box::pin(client.events(true, Some(41)));

    let first = event_json(42);
    let second = event_json(43);
    let (second_a, second_b) = second.split_at(second.len() / 2);
    // Event 1 whole and the start of event 2, cut inside its JSON.
    chunks_tx
        .send(format!(": keep-alive\n\ndata: {first}\r\n\r\ndata: {second_a}").into_bytes())
        .expect("send");
    let got = tokio::time::timeout(DEADLINE, events.next())
        .await
        .expect("event 42 before the rest of the body")
        .expect("an item")
        .expect("an event");
    assert_eq!(got.revision, 42);

    // The rest of event 2, its line end cut between `\r` and `\n`, then a bad event and a good one.
    chunks_tx
        .send(format!("{second_b}\r").into_bytes())
        .expect("send");
    chunks_tx.send(b"\n\r\n".to_vec()).expect("send");
    chunks_tx
        .send(
            format!(
                "data: {{\"nonsense\":true}}\n\ndata: {}\n\n",
                event_json(44)
            )
            .into_bytes(),
        )
        .expect("send");
    drop(chunks_tx);
    let rest: Vec<_> = tokio::time::timeout(DEADLINE, events.collect::<Vec<_>>())
        .await
        .expect("the stream ends with the body");
    assert_eq!(rest.len(), 3, "{rest:?}");
    assert_eq!(rest[0].as_ref().expect("event 43").revision, 43);
    assert!(
        matches!(rest[1], Err(ClientError::Decode { .. })),
        "{:?}",
        rest[1]
    );
    assert_eq!(rest[2].as_ref().expect("event 44").revision, 44);

    let queries = seen.queries.lock().expect("lock").clone();
    assert_eq!(queries[0].1.get("follow").map(String::as_str), Some("true"));
    assert_eq!(queries[0].1.get("since").map(String::as_str), Some("41"));

    // A second call gets 409 from the imitation: one error item, then the end.
    let items: Vec<_> = client.events(false, None).collect().await;
    assert_eq!(items.len(), 1);
    assert!(matches!(items[0], Err(ClientError::Conflict { .. })));
    let queries = seen.queries.lock().expect("lock").clone();
    assert_eq!(
        queries[1].1.get("follow").map(String::as_str),
        Some("false")
    );
    assert!(!queries[1].1.contains_key("since"));
}

#[tokio::test]
async fn health_needs_no_token_and_a_path_prefix_is_kept() {
    let app = Router::new().nest(
        "/berth",
        Router::new().route("/v1/health", get(|| async { "ok\n" })),
    );
    let base = serve(app).await;
    let client = Client::new(&format!("{base}/berth/"), None).expect("client");
    client.health().await.expect("healthy");
    let client = Client::new(&format!("{base}/berth"), None).expect("client");
    client.health().await.expect("healthy");
    let client = Client::new(&base, None).expect("client");
    let e = client.health().await.expect_err("no such path");
    assert!(matches!(e, ClientError::NotFound { .. }), "{e:?}");
}

#[test]
fn https_needs_a_trust_and_a_pinned_ca_needs_https() {
    let e = Client::new("https://127.0.0.1:1", None).expect_err("no trust");
    assert!(matches!(e, ClientError::Config { .. }), "{e:?}");
    assert!(e.to_string().contains("--ca FILE or set BERTH_CA"), "{e}");
    let pin = berth_client::ServerTrust::Fingerprint("ab".repeat(32));
    let e = Client::with_trust("http://127.0.0.1:1", None, Some(pin.clone())).expect_err("http");
    assert!(e.to_string().contains("use https://"), "{e}");
    Client::with_trust("https://127.0.0.1:1", None, Some(pin)).expect("https with a pin");
}
