//! End-to-end tests: a real router on 127.0.0.1:0 in front of tiny real hyper backends.
//!
//! Nothing here sleeps to wait for something: every wait is on a condition or a channel, bounded
//! by a deadline so a broken router fails the test instead of hanging it.

#![expect(
    clippy::disallowed_methods,
    reason = "a real router over real sockets: deadlines and measured durations are wall-clock"
)]

use std::collections::HashMap;
use std::convert::Infallible;
use std::error::Error as StdError;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use berth_router::{serve, Endpoint, RouteEntry, RouteTable, RouterHandle};
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{combinators::BoxBody, BodyExt, Channel, Full};
use hyper::body::{Body, Incoming};
use hyper::client::conn::http1::SendRequest;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, watch};

type BoxError = Box<dyn StdError + Send + Sync>;
type TestBody = BoxBody<Bytes, BoxError>;

/// Every wait in these tests is bounded by this.
const DEADLINE: Duration = Duration::from_secs(20);

/// Awaits `fut`, failing the test if it takes longer than [`DEADLINE`].
async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(DEADLINE, fut).await {
        Ok(value) => value,
        Err(_) => panic!("timed out waiting for {what}"),
    }
}

fn full(body: impl Into<Bytes>) -> TestBody {
    Full::new(body.into())
        .map_err(|never| match never {})
        .boxed()
}

/// Hands a `/slow` request's body sender to the test.
type SlowSenders = mpsc::UnboundedSender<http_body_util::channel::Sender<Bytes, BoxError>>;

/// A backend that answers its own name, echoes bodies on `/echo`, reports the headers it got on
/// `/headers`, and on `/slow` streams a body whose chunks the test sends through `slow`.
async fn backend(name: &'static str, slow: Option<SlowSenders>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind backend");
    let addr = listener.local_addr().expect("backend addr");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let slow = slow.clone();
            let service = service_fn(move |req: Request<Incoming>| {
                let slow = slow.clone();
                async move {
                    let response: Response<TestBody> = match req.uri().path() {
                        "/echo" => Response::new(req.into_body().map_err(BoxError::from).boxed()),
                        "/headers" => {
                            let seen: HashMap<String, String> = req
                                .headers()
                                .iter()
                                .map(|(k, v)| {
                                    (k.to_string(), String::from_utf8_lossy(v.as_bytes()).into())
                                })
                                .collect();
                            Response::new(full(serde_json::to_vec(&seen).expect("json")))
                        }
                        "/slow" => {
                            let (tx, body) = Channel::<Bytes, BoxError>::new(1);
                            if let Some(slow) = slow {
                                slow.send(tx).expect("test listens for slow senders");
                            }
                            Response::new(body.boxed())
                        }
                        _ => Response::new(full(name)),
                    };
                    Ok::<_, Infallible>(response)
                }
            });
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

/// A running router: its address, its handle and the switch that stops it.
struct Router {
    addr: SocketAddr,
    handle: RouterHandle,
    stop: Option<oneshot::Sender<()>>,
    done: tokio::task::JoinHandle<()>,
}

async fn router(table: RouteTable) -> Router {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind router");
    let addr = listener.local_addr().expect("router addr");
    let handle = RouterHandle::with_table(table);
    let (stop, stopped) = oneshot::channel::<()>();
    let done = tokio::spawn(serve(listener, handle.clone(), async {
        let _ = stopped.await;
    }));
    Router {
        addr,
        handle,
        stop: Some(stop),
        done,
    }
}

/// One keep-alive client connection. Its `SendRequest` is bound to that single TCP connection,
/// so a request succeeding on it proves the connection was reused.
async fn connect(addr: SocketAddr) -> SendRequest<TestBody> {
    let stream = within("connect", TcpStream::connect(addr))
        .await
        .expect("connect");
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    sender
}

fn request(host: &str, path: &str, body: TestBody) -> Request<TestBody> {
    Request::builder()
        .uri(path)
        .header(http::header::HOST, host)
        .body(body)
        .expect("request")
}

/// Sends a GET and reads the whole answer.
async fn get(conn: &mut SendRequest<TestBody>, host: &str, path: &str) -> (StatusCode, String) {
    within("ready", conn.ready())
        .await
        .expect("connection open");
    let response = within("response", conn.send_request(request(host, path, full(""))))
        .await
        .expect("response");
    let status = response.status();
    let body = within("body", response.into_body().collect())
        .await
        .expect("body")
        .to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

fn endpoints(addrs: &[SocketAddr]) -> Vec<Endpoint> {
    addrs
        .iter()
        .enumerate()
        .map(|(i, addr)| Endpoint {
            addr: *addr,
            instance: format!("i-{i}"),
            release: 1,
            weight: 100,
        })
        .collect()
}

fn route(host: &str, prefix: &str, service: &str, addrs: &[SocketAddr]) -> RouteEntry {
    RouteEntry {
        host: host.into(),
        path_prefix: prefix.into(),
        service: service.into(),
        endpoints: endpoints(addrs),
        limits: None,
        maintenance: None,
        timeout_ms: None,
        ..RouteEntry::default()
    }
}

#[tokio::test]
async fn routes_by_host_and_longest_prefix_with_404_and_503() {
    let web = backend("web", None).await;
    let api = backend("api", None).await;
    let api2 = backend("api2", None).await;
    let other = backend("other", None).await;
    let r = router(RouteTable {
        routes: vec![
            route("shop.local", "/", "web", &[web]),
            route("shop.local", "/api", "api", &[api]),
            route("shop.local", "/api/v2/", "api2", &[api2]),
            route("Other.Local", "/", "other", &[other]),
            route("empty.local", "/", "empty", &[]),
        ],
    })
    .await;
    let mut c = connect(r.addr).await;

    for (host, path, want) in [
        ("shop.local", "/", "web"),
        ("shop.local", "/index.html", "web"),
        ("SHOP.local:8080", "/api", "api"),
        ("shop.local", "/api/x", "api"),
        ("shop.local", "/apix", "web"),
        ("shop.local", "/api/v2", "api2"),
        ("shop.local", "/api/v2/y?q=1", "api2"),
        ("shop.local", "/api/v22", "api"),
        ("shop.local", "/api/v2x", "api"),
        ("other.local", "/api", "other"),
    ] {
        assert_eq!(
            get(&mut c, host, path).await,
            (StatusCode::OK, want.to_owned()),
            "{host}{path}"
        );
    }

    let (status, body) = get(&mut c, "nowhere.local:80", "/x/y").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body.trim_end(), "no route for nowhere.local/x/y");

    let (status, body) = get(&mut c, "empty.local", "/").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body.trim_end(), "no healthy instance of empty");

    let stats = r.handle.stats();
    assert_eq!(stats.services["web"].success, 3);
    assert_eq!(stats.services["api"].success, 4);
    assert_eq!(stats.services["api2"].success, 2);
    assert_eq!(stats.services["other"].success, 1);
    assert_eq!(stats.services["empty"].server_error, 1);
    assert_eq!(stats.services["empty"].total(), 1);
    assert_eq!(stats.unrouted.client_error, 1);
    assert_eq!(stats.unrouted.total(), 1);
}

#[tokio::test]
async fn round_robin_spreads_evenly_over_three_backends() {
    let a = backend("a", None).await;
    let b = backend("b", None).await;
    let c = backend("c", None).await;
    let r = router(RouteTable {
        routes: vec![route("rr.local", "/", "rr", &[a, b, c])],
    })
    .await;
    let mut counts: HashMap<String, usize> = HashMap::new();
    // Half on one keep-alive connection, half on fresh connections: the counter is per route,
    // not per connection.
    let mut conn = connect(r.addr).await;
    for _ in 0..15 {
        let (status, name) = get(&mut conn, "rr.local", "/").await;
        assert_eq!(status, StatusCode::OK);
        *counts.entry(name).or_default() += 1;
    }
    for _ in 0..15 {
        let (status, name) = get(&mut connect(r.addr).await, "rr.local", "/").await;
        assert_eq!(status, StatusCode::OK);
        *counts.entry(name).or_default() += 1;
    }
    assert_eq!(counts.len(), 3, "{counts:?}");
    assert!(counts.values().all(|&n| n == 10), "{counts:?}");
    assert_eq!(r.handle.stats().services["rr"].success, 30);
}

#[tokio::test]
async fn table_update_applies_live_on_a_keep_alive_connection() {
    let old = backend("old", None).await;
    let new1 = backend("new1", None).await;
    let new2 = backend("new2", None).await;
    let r = router(RouteTable {
        routes: vec![route("live.local", "/", "live", &[old])],
    })
    .await;
    let mut conn = connect(r.addr).await;
    for _ in 0..3 {
        assert_eq!(get(&mut conn, "live.local", "/").await.1, "old");
    }

    r.handle.update(RouteTable {
        routes: vec![route("live.local", "/", "live", &[new1, new2])],
    });
    let mut seen = Vec::new();
    for _ in 0..4 {
        seen.push(get(&mut conn, "live.local", "/").await.1);
    }
    seen.sort();
    assert_eq!(seen, ["new1", "new1", "new2", "new2"]);

    // Removing the route takes effect just as fast, on the same connection.
    r.handle.update(RouteTable::default());
    assert_eq!(
        get(&mut conn, "live.local", "/").await.0,
        StatusCode::NOT_FOUND
    );
    assert!(
        !conn.is_closed(),
        "the client connection survived every update"
    );
    assert!(r.handle.table().routes.is_empty());
}

#[tokio::test]
async fn follows_a_watch_channel_and_keeps_the_last_table() {
    let first = backend("first", None).await;
    let second = backend("second", None).await;
    let r = router(RouteTable::default()).await;
    let (tx, rx) = watch::channel(Arc::new(RouteTable {
        routes: vec![route("w.local", "/", "w", &[first])],
    }));
    let follower = {
        let handle = r.handle.clone();
        tokio::spawn(async move { handle.follow(rx).await })
    };
    let mut conn = connect(r.addr).await;

    // `follow` applies asynchronously: poll until the condition holds, within the deadline.
    async fn wait_for(conn: &mut SendRequest<TestBody>, want: &str) {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let (_, body) = get(conn, "w.local", "/").await;
            if body == want {
                return;
            }
            assert!(Instant::now() < deadline, "never routed to {want}");
            tokio::task::yield_now().await;
        }
    }
    wait_for(&mut conn, "first").await;
    tx.send(Arc::new(RouteTable {
        routes: vec![route("w.local", "/", "w", &[second])],
    }))
    .expect("follower listens");
    wait_for(&mut conn, "second").await;

    drop(tx);
    within("follow to return", follower)
        .await
        .expect("follow task");
    assert_eq!(get(&mut conn, "w.local", "/").await.1, "second");
}

#[tokio::test]
async fn streams_a_20_mb_request_body_back_through_the_proxy() {
    const SIZE: usize = 20 * 1024 * 1024;
    const CHUNK: usize = 64 * 1024;
    let echo = backend("echo", None).await;
    let r = router(RouteTable {
        routes: vec![route("echo.local", "/", "echo", &[echo])],
    })
    .await;
    let pattern = |offset: usize| (offset % 251) as u8;

    let (mut body_tx, body) = Channel::<Bytes, BoxError>::new(4);
    let writer = tokio::spawn(async move {
        let mut offset = 0;
        while offset < SIZE {
            let chunk: Vec<u8> = (offset..offset + CHUNK).map(pattern).collect();
            offset += CHUNK;
            if body_tx.send_data(Bytes::from(chunk)).await.is_err() {
                return offset;
            }
        }
        offset
    });

    let mut conn = connect(r.addr).await;
    let mut upload = request("echo.local", "/echo", body.boxed());
    *upload.method_mut() = http::Method::PUT;
    let response = within("echo response head", conn.send_request(upload))
        .await
        .expect("echo response");
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.into_body();
    let mut received = 0usize;
    while let Some(frame) = within("echo frame", body.frame()).await {
        let frame = frame.expect("echo body frame");
        if let Ok(data) = frame.into_data() {
            for (i, byte) in data.iter().enumerate() {
                assert_eq!(*byte, pattern(received + i), "byte {}", received + i);
            }
            received += data.len();
        }
    }
    assert_eq!(received, SIZE);
    assert_eq!(within("writer", writer).await.expect("writer task"), SIZE);
}

#[tokio::test]
async fn a_chunked_body_on_a_get_is_forwarded_not_dropped() {
    let echo = backend("echo", None).await;
    let r = router(RouteTable {
        routes: vec![route("echo.local", "/", "echo", &[echo])],
    })
    .await;
    let (mut body_tx, body) = Channel::<Bytes, BoxError>::new(2);
    let mut req = request("echo.local", "/echo", body.boxed());
    req.headers_mut().insert(
        http::header::TRANSFER_ENCODING,
        http::HeaderValue::from_static("chunked"),
    );
    let mut conn = connect(r.addr).await;
    let response = conn.send_request(req);
    within("send", body_tx.send_data(Bytes::from_static(b"hello, ")))
        .await
        .expect("sent");
    within("send", body_tx.send_data(Bytes::from_static(b"world")))
        .await
        .expect("sent");
    drop(body_tx);
    let response = within("response", response).await.expect("response");
    let body = within("body", response.into_body().collect())
        .await
        .expect("body")
        .to_bytes();
    assert_eq!(body, Bytes::from_static(b"hello, world"));
}

#[tokio::test]
async fn a_slow_streaming_backend_delivers_the_first_chunk_before_the_last_is_sent() {
    let (slow_tx, mut slow_rx) = mpsc::unbounded_channel();
    let slow = backend("slow", Some(slow_tx)).await;
    let r = router(RouteTable {
        routes: vec![route("slow.local", "/", "slow", &[slow])],
    })
    .await;
    let mut conn = connect(r.addr).await;
    let response = within(
        "slow response head",
        conn.send_request(request("slow.local", "/slow", full(""))),
    )
    .await
    .expect("slow response");
    assert_eq!(response.status(), StatusCode::OK);
    let mut chunks = within("backend to start the body", slow_rx.recv())
        .await
        .expect("backend sender");

    let mut body = response.into_body();
    within("send first", chunks.send_data(Bytes::from_static(b"first")))
        .await
        .expect("first sent");
    let frame = within("first chunk through the proxy", body.frame())
        .await
        .expect("a frame")
        .expect("frame ok");
    assert_eq!(frame.into_data().ok(), Some(Bytes::from_static(b"first")));
    assert!(
        !body.is_end_stream(),
        "the body is still open: last not sent"
    );

    within("send last", chunks.send_data(Bytes::from_static(b"last")))
        .await
        .expect("last sent");
    drop(chunks);
    let rest = within("rest of the body", body.collect())
        .await
        .expect("rest")
        .to_bytes();
    assert_eq!(rest, Bytes::from_static(b"last"));
}

#[tokio::test]
async fn a_dead_backend_gives_502_quickly() {
    let dead = {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        listener.local_addr().expect("addr")
        // dropped here: nothing listens on that port any more
    };
    let r = router(RouteTable {
        routes: vec![route("dead.local", "/", "dead", &[dead])],
    })
    .await;
    let mut conn = connect(r.addr).await;
    let started = Instant::now();
    let (status, body) = get(&mut conn, "dead.local", "/").await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert_eq!(body.trim_end(), "upstream dead unreachable");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(r.handle.stats().services["dead"].server_error, 1);
    // The client connection is still usable after a 502.
    assert_eq!(
        get(&mut conn, "dead.local", "/").await.0,
        StatusCode::BAD_GATEWAY
    );
}

#[tokio::test]
async fn forwards_honest_headers_and_drops_hop_by_hop_ones() {
    let b = backend("h", None).await;
    let r = router(RouteTable {
        routes: vec![route("h.local", "/", "h", &[b])],
    })
    .await;
    let mut conn = connect(r.addr).await;
    within("ready", conn.ready()).await.expect("open");
    let req = Request::builder()
        .uri("/headers")
        .header("host", "H.local:8080")
        .header("x-forwarded-for", "203.0.113.7")
        .header("x-forwarded-proto", "https")
        .header("connection", "x-hop")
        .header("x-hop", "secret")
        .header("te", "trailers")
        .header("x-app", "kept")
        .body(full(""))
        .expect("request");
    let response = within("headers", conn.send_request(req))
        .await
        .expect("response");
    let body = within("body", response.into_body().collect())
        .await
        .expect("body")
        .to_bytes();
    let seen: HashMap<String, String> = serde_json::from_slice(&body).expect("json");
    assert_eq!(seen["host"], "H.local:8080");
    assert_eq!(seen["x-forwarded-host"], "H.local:8080");
    // The client is no trusted proxy (none is configured): its claims are replaced, not kept
    // (the trusted case is in hardening.rs).
    assert_eq!(seen["x-forwarded-for"], "127.0.0.1");
    assert_eq!(seen["x-forwarded-proto"], "http");
    assert_eq!(seen["x-app"], "kept");
    assert!(!seen.contains_key("x-hop"), "{seen:?}");
    assert!(!seen.contains_key("te"), "{seen:?}");
    assert!(!seen.contains_key("x-berth-instance"), "{seen:?}");
}

#[tokio::test]
async fn shutdown_stops_accepting_and_returns() {
    let b = backend("b", None).await;
    let mut r = router(RouteTable {
        routes: vec![route("s.local", "/", "s", &[b])],
    })
    .await;
    let mut conn = connect(r.addr).await;
    assert_eq!(get(&mut conn, "s.local", "/").await.1, "b");
    r.stop
        .take()
        .expect("stop switch")
        .send(())
        .expect("router running");
    within("serve to return", &mut r.done)
        .await
        .expect("serve task");
    assert!(TcpStream::connect(r.addr).await.is_err(), "listener closed");
    // The idle keep-alive connection was closed by the graceful shutdown.
    within("client connection to close", async {
        while !conn.is_closed() {
            if conn.ready().await.is_err() {
                break;
            }
            tokio::task::yield_now().await;
        }
    })
    .await;
}

/// Sends a GET with `cookie` (if any) and returns the body and the `Set-Cookie` answered.
async fn get_with_cookie(
    conn: &mut SendRequest<TestBody>,
    host: &str,
    cookie: Option<&str>,
) -> (StatusCode, String, Option<String>) {
    within("ready", conn.ready())
        .await
        .expect("connection open");
    let mut req = request(host, "/", full(""));
    if let Some(cookie) = cookie {
        req.headers_mut().insert(
            http::header::COOKIE,
            http::HeaderValue::from_str(cookie).expect("cookie"),
        );
    }
    let response = within("response", conn.send_request(req))
        .await
        .expect("response");
    let status = response.status();
    let set_cookie = response
        .headers()
        .get(http::header::SET_COOKIE)
        .map(|v| v.to_str().expect("ascii").to_owned());
    let body = within("body", response.into_body().collect())
        .await
        .expect("body")
        .to_bytes();
    (
        status,
        String::from_utf8_lossy(&body).into_owned(),
        set_cookie,
    )
}

#[tokio::test]
async fn a_sticky_canary_share_through_the_router_is_counted_per_arm() {
    use berth_router::table::Share;
    let stable = backend("stable", None).await;
    let canary = backend("canary", None).await;
    let mut entry = route("shop.local", "/", "shop/web", &[stable, canary]);
    entry.endpoints[1].release = 2;
    entry.shares = vec![
        Share {
            release: 1,
            basis_points: 8_000,
        },
        Share {
            release: 2,
            basis_points: 2_000,
        },
    ];
    entry.salt = "shop/production/2".into();
    let r = router(RouteTable {
        routes: vec![entry],
    })
    .await;
    let mut conn = connect(r.addr).await;
    let n = 1_000;
    let mut on_canary = 0;
    let mut kept = Vec::new();
    for _ in 0..n {
        let (status, body, set_cookie) = get_with_cookie(&mut conn, "shop.local", None).await;
        assert_eq!(status, StatusCode::OK);
        let set_cookie = set_cookie.expect("a client without the cookie gets one");
        if body == "canary" {
            on_canary += 1;
        }
        if kept.len() < 20 {
            let pair = set_cookie.split(';').next().expect("pair").to_owned();
            kept.push((pair, body));
        }
    }
    assert!(
        (150..=250).contains(&on_canary),
        "{on_canary} of {n} on a 20 % canary"
    );
    // Each client with its cookie stays on its arm, and is not given another cookie.
    for (cookie, first) in &kept {
        for _ in 0..10 {
            let (_, body, set_cookie) =
                get_with_cookie(&mut conn, "shop.local", Some(cookie)).await;
            assert_eq!(&body, first, "{cookie} changed arms");
            assert_eq!(set_cookie, None);
        }
    }
    let arms = r.handle.arm_counters();
    let count = |release: u64| {
        arms.iter().find(|a| a.release == release).map(|a| {
            (
                a.stack.as_str(),
                a.service.as_str(),
                a.arm.as_str(),
                a.requests,
            )
        })
    };
    let total = n + kept.len() * 10;
    let (_, _, _, on_stable) = count(1).expect("stable arm");
    let (stack, service, arm, on_new) = count(2).expect("canary arm");
    assert_eq!((stack, service, arm), ("shop", "web", "release"));
    assert_eq!(on_stable + on_new, total as u64);
    let metrics = r.handle.metrics_text();
    assert!(
        metrics.contains(&format!(
            "berth_router_arm_requests_total{{service=\"shop/web\",release=\"2\",arm=\"release\"}} {on_new}"
        )),
        "{metrics}"
    );
    assert!(metrics.contains("berth_router_arm_response_head_seconds_bucket{service=\"shop/web\",release=\"1\",arm=\"release\",le=\"+Inf\"}"));
}

#[tokio::test]
async fn an_ab_split_and_matched_requests_are_routed_and_counted_apart() {
    use berth_router::table::{MatchRule, Share, Split, Sticky};
    let stable = backend("stable", None).await;
    let canary = backend("canary", None).await;
    let next = backend("next", None).await;
    let mut entry = route("shop.local", "/", "shop/web", &[stable, canary]);
    entry.endpoints[1].release = 2;
    entry.shares = vec![
        Share {
            release: 1,
            basis_points: 10_000,
        },
        Share {
            release: 2,
            basis_points: 0,
        },
    ];
    entry.matched = Some(MatchRule {
        header: "X-Canary".into(),
        value: "always".into(),
        release: 2,
    });
    entry.split = Some(Split {
        service: "shop/web-next".into(),
        basis_points: 2_000,
        sticky: Sticky::Cookie,
        endpoints: vec![Endpoint {
            addr: next,
            instance: "next-0".into(),
            release: 7,
            weight: 100,
        }],
    });
    let r = router(RouteTable {
        routes: vec![entry],
    })
    .await;
    let mut conn = connect(r.addr).await;
    let n = 1_000;
    let mut seen: HashMap<String, u64> = HashMap::new();
    for _ in 0..n {
        let (status, body, set_cookie) = get_with_cookie(&mut conn, "shop.local", None).await;
        assert_eq!(status, StatusCode::OK);
        assert!(set_cookie.is_some());
        *seen.entry(body).or_default() += 1;
    }
    let on_next = seen.get("next").copied().unwrap_or(0);
    assert!((150..=250).contains(&on_next), "{seen:?}");
    assert_eq!(seen.get("canary"), None, "the canary is at 0 %: {seen:?}");
    // The match header reaches the canary at 0 %, counted as matched only.
    for _ in 0..25 {
        within("ready", conn.ready()).await.expect("open");
        let mut req = request("shop.local", "/", full(""));
        req.headers_mut()
            .insert("x-canary", http::HeaderValue::from_static("always"));
        let response = within("response", conn.send_request(req))
            .await
            .expect("response");
        let body = within("body", response.into_body().collect())
            .await
            .expect("body")
            .to_bytes();
        assert_eq!(&body[..], b"canary");
    }
    let arms = r.handle.arm_counters();
    let arm = |release: u64, name: &str| {
        arms.iter()
            .find(|a| a.release == release && a.arm == name)
            .unwrap_or_else(|| panic!("arm {release} {name} in {arms:?}"))
    };
    assert_eq!(arm(7, "web-next").requests, on_next);
    assert_eq!(
        arm(7, "web-next").service,
        "web",
        "reported under the route's service"
    );
    assert_eq!(arm(1, "release").requests, n - on_next);
    assert_eq!(
        (arm(2, "release").requests, arm(2, "release").matched),
        (0, 25)
    );
    // The split service's answers count as its own in the status counters.
    let stats = r.handle.stats();
    assert_eq!(stats.services["shop/web-next"].success, on_next);
    assert_eq!(stats.services["shop/web"].success, n - on_next + 25);
    let metrics = r.handle.metrics_text();
    assert!(
        metrics.contains(&format!(
            "berth_router_arm_requests_total{{service=\"shop/web\",release=\"7\",arm=\"web-next\"}} {on_next}"
        )),
        "{metrics}"
    );
    assert!(metrics.contains(
        "berth_router_arm_matched_total{service=\"shop/web\",release=\"2\",arm=\"release\"} 25"
    ));
}
