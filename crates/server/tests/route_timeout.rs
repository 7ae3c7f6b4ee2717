//! `route.timeout` travels from the stack file into the routing table the routers poll
//! (issue 10, item 16: a per-route upstream response timeout).

mod harness;

use std::time::Duration;

use harness::{deploy, web_stack, Server};

#[tokio::test(flavor = "multi_thread")]
async fn a_route_timeout_reaches_the_routing_table() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = Server::start(dir.path()).await;
    let source = web_stack("shop", 1, "60s");
    let with_timeout = source.replace(
        "path: /, port: http }",
        "path: /, port: http, timeout: 1500ms }",
    );
    assert_ne!(with_timeout, source, "the harness's route line changed");
    deploy(&server, &with_timeout).await;
    let table = server
        .admin
        .routes(None, None, Duration::ZERO)
        .await
        .expect("routes");
    assert_eq!(table.routes.len(), 1, "{table:?}");
    assert_eq!(table.routes[0].timeout_ms, Some(1500), "{table:?}");
    // A route without one leaves the router's default.
    deploy(&server, &web_stack("cart", 1, "60s")).await;
    let table = server
        .admin
        .routes(None, None, Duration::ZERO)
        .await
        .expect("routes");
    let timeouts: Vec<_> = table
        .routes
        .iter()
        .map(|r| (r.host.as_str(), r.timeout_ms))
        .collect();
    assert_eq!(
        timeouts,
        [("cart.local", None), ("shop.local", Some(1500))],
        "{table:?}"
    );
    server.stop().await;
}
