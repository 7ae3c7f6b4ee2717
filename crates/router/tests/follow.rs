//! `follow_server` against a small imitation of `berth server`'s `/v1/routes` on 127.0.0.1.
//!
//! Nothing sleeps to wait for something: every wait is on a channel or a polled condition,
//! bounded by a deadline.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use berth_api::control::{EndpointView, ErrorBody, RouteView, RoutingTable};
use berth_client::Client;
use berth_router::follow::{follow_server, to_route_table};
use berth_router::{RouteTable, RouterHandle};
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tokio::task::{JoinHandle, JoinSet};

const DEADLINE: Duration = Duration::from_secs(20);

async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(DEADLINE, fut).await {
        Ok(value) => value,
        Err(_) => panic!("timed out waiting for {what}"),
    }
}

/// One `GET /v1/routes` as the imitation saw it.
#[derive(Debug)]
struct Poll {
    query: HashMap<String, String>,
    auth: Option<String>,
    /// The router's table at the moment the poll arrived.
    table_then: Arc<RouteTable>,
}

impl Poll {
    fn get(&self, key: &str) -> Option<&str> {
        self.query.get(key).map(String::as_str)
    }
}

/// What the imitation answers to the `n`th poll (from 0) carrying `version`; `None` holds the
/// poll until the imitation is killed.
type Script = fn(usize, Option<&str>) -> Option<Response>;

#[derive(Clone)]
struct Imitation {
    polls: mpsc::UnboundedSender<Poll>,
    count: Arc<AtomicUsize>,
    script: Script,
    router: RouterHandle,
}

async fn routes(
    State(imitation): State<Imitation>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    let n = imitation.count.fetch_add(1, Ordering::SeqCst);
    let version = query.get("version").cloned();
    let auth = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let _ = imitation.polls.send(Poll {
        query,
        auth,
        table_then: imitation.router.table(),
    });
    match (imitation.script)(n, version.as_deref()) {
        Some(response) => response,
        None => std::future::pending().await,
    }
}

/// Serves the imitation on `listener` with its own accept loop, so aborting the returned task
/// drops the listener *and* every open connection: the server is gone, as if killed.
fn start(listener: TcpListener, imitation: Imitation) -> JoinHandle<()> {
    let app = Router::new()
        .route("/v1/routes", get(routes))
        .with_state(imitation);
    tokio::spawn(async move {
        let mut connections = JoinSet::new();
        while let Ok((stream, _)) = listener.accept().await {
            let service = TowerToHyperService::new(app.clone());
            connections.spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    })
}

fn table(version: &str, endpoints: &[(&str, &str)]) -> RoutingTable {
    RoutingTable {
        version: version.into(),
        routes: vec![RouteView {
            host: "shop.local".into(),
            path: "/".into(),
            stack: "shop".into(),
            service: "web".into(),
            endpoints: endpoints
                .iter()
                .map(|(addr, instance)| EndpointView {
                    addr: (*addr).into(),
                    instance: (*instance).into(),
                    release: 1,
                    weight: 100,
                })
                .collect(),
            limits: None,
            maintenance: None,
            timeout_ms: None,
            ..RouteView::default()
        }],
    }
}

fn v1() -> RoutingTable {
    table(
        "v1",
        &[("127.0.0.1:1001", "web-1"), ("not-an-address", "web-x")],
    )
}

fn v2() -> RoutingTable {
    table("v2", &[("127.0.0.1:1002", "web-2")])
}

/// The first server: v1 to a router that has nothing, v2 to one that acked v1, then holds.
fn first_server(_n: usize, version: Option<&str>) -> Option<Response> {
    match version {
        None => Some(Json(v1()).into_response()),
        Some("v1") => Some(Json(v2()).into_response()),
        Some(_) => None,
    }
}

/// The server after a restart: failing at first (its store is not open yet), then holding.
fn restarted_server(n: usize, _version: Option<&str>) -> Option<Response> {
    (n < 2).then(|| {
        let body = ErrorBody {
            error: "the store failed".into(),
            details: vec![],
        };
        (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
    })
}

async fn next_poll(polls: &mut mpsc::UnboundedReceiver<Poll>, what: &str) -> Poll {
    within(what, polls.recv())
        .await
        .unwrap_or_else(|| panic!("the imitation stopped before {what}"))
}

#[tokio::test]
async fn follows_tables_acks_what_it_applied_and_keeps_the_table_when_the_server_goes() {
    let router = RouterHandle::new();
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr: SocketAddr = listener.local_addr().expect("addr");
    let (polls_tx, mut polls) = mpsc::unbounded_channel();
    let server = start(
        listener,
        Imitation {
            polls: polls_tx.clone(),
            count: Arc::default(),
            script: first_server,
            router: router.clone(),
        },
    );

    let client =
        Client::new(&format!("http://{addr}"), Some("node-a.secret".into())).expect("client");
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let follower = tokio::spawn(follow_server(
        client,
        "router-a".into(),
        router.clone(),
        async move {
            let _ = stop_rx.await;
        },
    ));

    // 1: a router with nothing asks without a version, and gets v1.
    let first = next_poll(&mut polls, "the first poll").await;
    assert_eq!(first.get("version"), None);
    assert_eq!(first.get("router"), Some("router-a"));
    assert_eq!(first.get("wait"), Some("25"));
    assert_eq!(first.auth.as_deref(), Some("Bearer node-a.secret"));
    assert!(first.table_then.routes.is_empty());

    // 2: its next poll acknowledges v1, which it had applied by then (minus the bad address).
    let second = next_poll(&mut polls, "the poll acking v1").await;
    assert_eq!(second.get("version"), Some("v1"));
    assert_eq!(second.get("router"), Some("router-a"));
    assert_eq!(*second.table_then, to_route_table(&v1()));
    assert_eq!(second.table_then.routes[0].endpoints.len(), 1);

    // 3: and the one after acknowledges v2; the server holds that one.
    let third = next_poll(&mut polls, "the poll acking v2").await;
    assert_eq!(third.get("version"), Some("v2"));
    let expected = to_route_table(&v2());
    assert_eq!(*router.table(), expected);

    // The server dies with the poll in flight: the table stays.
    server.abort();
    let _ = server.await;
    assert_eq!(*router.table(), expected);

    // It comes back on the same address, failing twice before it works. The router retried
    // through the refused connections and the 503s, and still says it holds v2.
    let listener = within("rebinding the address", async {
        loop {
            match TcpListener::bind(addr).await {
                Ok(listener) => break listener,
                Err(_) => tokio::task::yield_now().await,
            }
        }
    })
    .await;
    let restarted = start(
        listener,
        Imitation {
            polls: polls_tx,
            count: Arc::default(),
            script: restarted_server,
            router: router.clone(),
        },
    );
    for n in 0..3 {
        let poll = next_poll(&mut polls, "a poll to the restarted server").await;
        assert_eq!(
            poll.get("version"),
            Some("v2"),
            "poll {n} after the restart"
        );
        assert_eq!(*poll.table_then, expected, "poll {n} after the restart");
    }
    assert_eq!(*router.table(), expected);

    // Shutdown ends the follower even with a poll held.
    let _ = stop_tx.send(());
    within("the follower to stop", follower)
        .await
        .expect("the follower did not panic");
    restarted.abort();
}
