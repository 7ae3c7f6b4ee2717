//! Restarting the router without failing a request (pingora's graceful upgrade, issue 4): a
//! new router binds the port with `bind_reuseport_takeover` while the old one still serves,
//! and from then on the kernel hands every new connection to the new one (a classic BPF
//! program steering the `SO_REUSEPORT` group); the old one is then told to stop: it takes
//! what is queued on its socket, closes it, finishes what is in flight and returns. Clients
//! hammering the port with new connections throughout see no error of any kind — also not
//! the reset at `connect` that, without steering, hits a connection whose handshake lands on
//! the old socket between its last `accept` and its close, whatever
//! `net.ipv4.tcp_migrate_req` says.
//!
//! Besides the restarts under load: the steering itself (every new connection reaches the
//! newest listener, also with two older ones still listening, over IPv4 and IPv6), and the
//! per-core listeners of `bind_reuseport`, which must keep sharing connections.
//!
//! Nothing sleeps to wait for something: every wait is on a channel, a task, an accept, or a
//! polled counter, bounded by a deadline. The old router is stopped once the new one has
//! answered a few requests (as a restart does once the new router is up), not in the same
//! microsecond as the takeover: a handshake the old socket began just before the takeover
//! still completes there, which takes a loopback round trip.

#![expect(
    clippy::disallowed_methods,
    reason = "a real router over real sockets: deadlines and measured durations are wall-clock"
)]

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use berth_router::{
    bind_reuseport, bind_reuseport_takeover, serve_with, Endpoint, RouteEntry, RouteTable,
    RouterConfig, RouterHandle,
};
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

const DEADLINE: Duration = Duration::from_secs(30);
const HOST: &str = "app.local";

async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(DEADLINE, fut).await {
        Ok(value) => value,
        Err(_) => panic!("timed out waiting for {what}"),
    }
}

/// Polls `condition` until it holds, failing the test after [`DEADLINE`].
async fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let start = Instant::now();
    while !condition() {
        assert!(start.elapsed() < DEADLINE, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A backend answering `name`; `/hold` reports its arrival and answers once `release` is
/// true.
async fn backend(
    name: String,
    arrivals: mpsc::UnboundedSender<()>,
    release: watch::Receiver<bool>,
) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let name = Bytes::from(name);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (arrivals, release, name) = (arrivals.clone(), release.clone(), name.clone());
            let service = service_fn(move |req: Request<Incoming>| {
                let (arrivals, mut release, name) =
                    (arrivals.clone(), release.clone(), name.clone());
                async move {
                    if req.uri().path() == "/hold" {
                        let _ = arrivals.send(());
                        let _ = release.wait_for(|r| *r).await;
                    }
                    Ok::<_, Infallible>(Response::new(Full::new(name)))
                }
            });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service),
            );
        }
    });
    addr
}

/// A backend answering `name` at once, to every path.
async fn plain_backend(name: String) -> SocketAddr {
    let (arrivals, _) = mpsc::unbounded_channel();
    let (_, release) = watch::channel(true);
    backend(name, arrivals, release).await
}

fn table(backend: SocketAddr) -> RouteTable {
    RouteTable {
        routes: vec![RouteEntry {
            host: HOST.into(),
            path_prefix: "/".into(),
            service: "app".into(),
            endpoints: vec![Endpoint {
                addr: backend,
                instance: "i-1".into(),
                release: 1,
                weight: 100,
            }],
            limits: None,
            maintenance: None,
            timeout_ms: None,
            ..RouteEntry::default()
        }],
    }
}

/// Runs a router on `listener` until `stop` fires; `stopping` is told the moment the router
/// has seen the signal (so the test knows shutdown began before it releases a request).
fn start(
    listener: TcpListener,
    backend: SocketAddr,
    stop: oneshot::Receiver<()>,
    stopping: oneshot::Sender<()>,
) -> JoinHandle<()> {
    tokio::spawn(serve_with(
        listener,
        RouterHandle::with_table(table(backend)),
        RouterConfig::default(),
        async move {
            let _ = stop.await;
            let _ = stopping.send(());
        },
    ))
}

/// One `GET path` on a new connection; the body, or why it failed (a reset during `connect`
/// is the close race the takeover removes).
async fn get_once(addr: SocketAddr, path: &str) -> Result<String, String> {
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e} ({:?})", e.kind()))?;
    exchange(stream, path).await
}

/// One `GET path` on `stream`, bounded in time.
async fn exchange(stream: TcpStream, path: &str) -> Result<String, String> {
    let exchange = async {
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        tokio::spawn(conn);
        let request = Request::builder()
            .uri(path)
            .header("host", HOST)
            .body(Full::new(Bytes::new()))
            .map_err(|e| e.to_string())?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| format!("request: {e:?}"))?;
        if response.status() != StatusCode::OK {
            let status = response.status();
            let body = response.into_body().collect().await.map(|b| b.to_bytes());
            return Err(format!("status {status}: {body:?}"));
        }
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("body: {e}"))?
            .to_bytes();
        Ok(String::from_utf8_lossy(&body).into_owned())
    };
    match tokio::time::timeout(Duration::from_secs(5), exchange).await {
        Ok(result) => result,
        Err(_) => Err("timed out".into()),
    }
}

/// Clients that open a new connection per request to `addr` until told to stop, handing each
/// answer (the backend's name) to `answered` and recording every failure.
struct Clients {
    failures: Arc<Mutex<Vec<String>>>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Clients {
    fn start(
        addr: SocketAddr,
        count: usize,
        answered: impl Fn(&str) + Send + Sync + 'static,
    ) -> Self {
        let failures = Arc::new(Mutex::new(Vec::new()));
        let answered = Arc::new(answered);
        let (stop, stopped) = watch::channel(false);
        let tasks = (0..count)
            .map(|_| {
                let (failures, answered, stopped) =
                    (failures.clone(), answered.clone(), stopped.clone());
                tokio::spawn(async move {
                    while !*stopped.borrow() {
                        match get_once(addr, "/").await {
                            Ok(body) => answered(&body),
                            Err(err) => {
                                eprintln!("failed request: {err}");
                                failures.lock().expect("failures").push(err);
                            }
                        }
                    }
                })
            })
            .collect();
        Clients {
            failures,
            stop,
            tasks,
        }
    }

    /// Stops the clients; every failure they saw.
    async fn stop(self) -> Vec<String> {
        self.stop.send_replace(true);
        for task in self.tasks {
            within("a client to stop", task).await.expect("client task");
        }
        let failures = self.failures.lock().expect("failures").clone();
        failures
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_router_takes_the_port_and_the_old_one_drains_without_a_failed_request() {
    let (arrivals, mut arrived) = mpsc::unbounded_channel();
    let (release, held) = watch::channel(false);
    let old_backend = backend("old".into(), arrivals.clone(), held.clone()).await;
    let new_backend = backend("new".into(), arrivals, held).await;

    // A first start: nobody to take over from.
    let first = bind_reuseport_takeover("127.0.0.1:0".parse().expect("addr")).expect("bind first");
    let addr = first.local_addr().expect("addr");
    let (stop_old, old_stop) = oneshot::channel();
    let (old_stopping, mut old_is_stopping) = oneshot::channel();
    let old = start(first, old_backend, old_stop, old_stopping);

    // A request in flight on the old router when it is told to stop.
    let in_flight = tokio::spawn(get_once(addr, "/hold"));
    within("the held request at the backend", arrived.recv()).await;

    // Clients that open a new connection per request, all through the handover.
    let (old_n, new_n) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let clients = Clients::start(addr, 3, {
        let (old_n, new_n) = (old_n.clone(), new_n.clone());
        move |body| {
            let n = if body == "old" { &old_n } else { &new_n };
            n.fetch_add(1, Ordering::SeqCst);
        }
    });
    eventually("requests through the old router", || {
        old_n.load(Ordering::SeqCst) >= 50
    })
    .await;

    // The new router takes the port over while the old one still listens.
    let second = bind_reuseport_takeover(addr).expect("a second listener on the same port");
    let (_stop_new, new_stop) = oneshot::channel();
    let (new_stopping, _) = oneshot::channel();
    let new = start(second, new_backend, new_stop, new_stopping);
    eventually("requests through the new router", || {
        new_n.load(Ordering::SeqCst) >= 50
    })
    .await;

    // Stop the old one; once it has seen the signal, let the held request finish.
    stop_old.send(()).expect("old router running");
    within("the old router to begin stopping", &mut old_is_stopping)
        .await
        .expect("stopping");
    release.send_replace(true);
    assert_eq!(
        within("the held request", in_flight)
            .await
            .expect("task")
            .ok()
            .as_deref(),
        Some("old"),
        "an in-flight request must finish on the old router"
    );
    within("the old router to finish", old)
        .await
        .expect("old router task");

    // Everything now goes to the new router.
    let after = new_n.load(Ordering::SeqCst);
    eventually("requests after the old router is gone", || {
        new_n.load(Ordering::SeqCst) >= after + 100
    })
    .await;
    let failures = clients.stop().await;
    eprintln!(
        "old router answered {}, new router {}, failed {}",
        old_n.load(Ordering::SeqCst),
        new_n.load(Ordering::SeqCst),
        failures.len()
    );
    assert!(
        failures.is_empty(),
        "no request may fail across the handover: {failures:?}"
    );
    assert!(!new.is_finished(), "the new router keeps serving");
}

/// Restarts back to back under load, each generation taking over from the previous one.
/// Without the steering (new generations bound with plain `bind_reuseport`), 100 such
/// restarts here saw 0 to 3 connections reset at `connect`: 200 make a regression visible.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_restarts_under_load_fail_no_request() {
    const RESTARTS: usize = 200;
    // How many requests each generation answers before the previous one is stopped.
    const READY: usize = 3;
    let answered: Arc<Vec<AtomicUsize>> =
        Arc::new((0..=RESTARTS).map(|_| AtomicUsize::new(0)).collect());
    let unexpected = Arc::new(Mutex::new(Vec::<String>::new()));

    let listener =
        bind_reuseport_takeover("127.0.0.1:0".parse().expect("addr")).expect("bind first");
    let addr = listener.local_addr().expect("addr");
    let (mut stop_old, stop) = oneshot::channel();
    let mut old = start(
        listener,
        plain_backend("0".into()).await,
        stop,
        oneshot::channel().0,
    );

    let clients = Clients::start(addr, 3, {
        let (answered, unexpected) = (answered.clone(), unexpected.clone());
        move |body| match body.parse::<usize>().ok().and_then(|g| answered.get(g)) {
            Some(n) => {
                n.fetch_add(1, Ordering::SeqCst);
            }
            None => unexpected.lock().expect("unexpected").push(body.to_owned()),
        }
    });
    eventually("requests through the first router", || {
        answered[0].load(Ordering::SeqCst) >= READY
    })
    .await;

    for generation in 1..=RESTARTS {
        let backend = plain_backend(generation.to_string()).await;
        let listener = bind_reuseport_takeover(addr).expect("take the port over");
        let (stop_new, stop) = oneshot::channel();
        let new = start(listener, backend, stop, oneshot::channel().0);
        eventually("requests through the new router", || {
            answered[generation].load(Ordering::SeqCst) >= READY
        })
        .await;
        stop_old.send(()).expect("old router running");
        within("the old router to finish", old)
            .await
            .expect("old router task");
        (stop_old, old) = (stop_new, new);
    }

    let after = answered[RESTARTS].load(Ordering::SeqCst);
    eventually("requests through the last router", || {
        answered[RESTARTS].load(Ordering::SeqCst) >= after + 20
    })
    .await;
    let failures = clients.stop().await;
    let total: usize = answered.iter().map(|n| n.load(Ordering::SeqCst)).sum();
    eprintln!(
        "{RESTARTS} restarts: {total} requests answered, {} failed",
        failures.len()
    );
    assert!(
        failures.is_empty(),
        "no request may fail across {RESTARTS} restarts: {} failed: {failures:?}",
        failures.len()
    );
    let unexpected = unexpected.lock().expect("unexpected").clone();
    assert!(unexpected.is_empty(), "unexpected answers: {unexpected:?}");
    assert!(!old.is_finished(), "the last router keeps serving");
    let _ = stop_old.send(());
    within("the last router to finish", old)
        .await
        .expect("last router task");
}

/// Opens `n` connections to `addr`, kept open so that each stays in its listener's queue.
async fn connect_many(addr: SocketAddr, n: usize) -> Vec<TcpStream> {
    let mut streams = Vec::with_capacity(n);
    for _ in 0..n {
        streams.push(
            within("connect", TcpStream::connect(addr))
                .await
                .expect("connect"),
        );
    }
    streams
}

/// Accepts on `listeners` until `n` connections came in; how many each one took.
async fn accept_counts(listeners: &[&TcpListener], n: usize) -> Vec<usize> {
    let mut counts = vec![0; listeners.len()];
    while counts.iter().sum::<usize>() < n {
        let accepts = listeners
            .iter()
            .map(|listener| Box::pin(listener.accept()))
            .collect::<Vec<_>>();
        let (accepted, which, _) = within("an accept", futures_select_all(accepts)).await;
        accepted.expect("accept");
        counts[which] += 1;
    }
    counts
}

/// The first of `futures` to finish, its index, and the others.
async fn futures_select_all<F: Future + Unpin>(mut futures: Vec<F>) -> (F::Output, usize, Vec<F>) {
    let (output, index) = std::future::poll_fn(|cx| {
        for (index, future) in futures.iter_mut().enumerate() {
            if let std::task::Poll::Ready(output) = std::pin::Pin::new(future).poll(cx) {
                return std::task::Poll::Ready((output, index));
            }
        }
        std::task::Poll::Pending
    })
    .await;
    futures.remove(index);
    (output, index, futures)
}

/// Whether nothing is queued on `listener` (a non-blocking `accept` has nothing to give).
fn queue_is_empty(listener: TcpListener) -> bool {
    let listener = listener.into_std().expect("std listener");
    matches!(listener.accept(), Err(err) if err.kind() == std::io::ErrorKind::WouldBlock)
}

const CONNECTIONS: usize = 64;

/// The steering on its own: after each takeover, every new connection reaches the newest
/// listener — with one older listener, with two (the position in the group is counted, not
/// assumed), and after the older ones have closed (the program's position is then past the
/// group's end and the kernel's hash falls back to the one listener left).
async fn the_newest_listener_gets_every_new_connection(any: &str) {
    let first = bind_reuseport(any.parse().expect("addr")).expect("bind first");
    let addr = first.local_addr().expect("addr");

    let second = bind_reuseport_takeover(addr).expect("take over from one listener");
    let _streams = connect_many(addr, CONNECTIONS).await;
    assert_eq!(
        accept_counts(&[&second, &first], CONNECTIONS).await,
        [CONNECTIONS, 0],
        "every new connection goes to the listener that took over"
    );

    let third = bind_reuseport_takeover(addr).expect("take over from two listeners");
    let _streams = connect_many(addr, CONNECTIONS).await;
    assert_eq!(
        accept_counts(&[&third, &second, &first], CONNECTIONS).await,
        [CONNECTIONS, 0, 0],
        "with two older listeners, the newest still gets every connection"
    );

    assert!(queue_is_empty(first), "nothing waits on the first listener");
    assert!(
        queue_is_empty(second),
        "nothing waits on the second listener"
    );
    let _streams = connect_many(addr, CONNECTIONS).await;
    assert_eq!(
        accept_counts(&[&third], CONNECTIONS).await,
        [CONNECTIONS],
        "alone in its group, the last listener gets everything"
    );

    let fourth = bind_reuseport_takeover(addr).expect("take over again");
    let _streams = connect_many(addr, CONNECTIONS).await;
    assert_eq!(
        accept_counts(&[&fourth, &third], CONNECTIONS).await,
        [CONNECTIONS, 0],
        "the next takeover steers again"
    );
}

#[tokio::test]
async fn the_newest_listener_gets_every_new_connection_ipv4() {
    the_newest_listener_gets_every_new_connection("127.0.0.1:0").await;
}

#[tokio::test]
async fn the_newest_listener_gets_every_new_connection_ipv6() {
    the_newest_listener_gets_every_new_connection("[::1]:0").await;
}

/// `bind_reuseport`'s listeners (one per core) keep sharing new connections: none of them
/// steers. 64 connections all on one of two listeners would be a 1 in 2^63 hash.
#[tokio::test]
async fn per_core_listeners_share_new_connections() {
    let first = bind_reuseport("127.0.0.1:0".parse().expect("addr")).expect("bind first");
    let addr = first.local_addr().expect("addr");
    let second = bind_reuseport(addr).expect("a second listener on the same port");
    let _streams = connect_many(addr, CONNECTIONS).await;
    let counts = accept_counts(&[&first, &second], CONNECTIONS).await;
    assert!(
        counts.iter().all(|&n| n > 0),
        "both listeners get connections: {counts:?}"
    );
}

/// A port held by a listener without `SO_REUSEPORT` (`berth up`'s router) is not taken over.
#[tokio::test]
async fn a_plain_listener_is_not_taken_over() {
    let plain = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = plain.local_addr().expect("addr");
    let err = bind_reuseport_takeover(addr).expect_err("the port is taken");
    assert_eq!(err.kind(), std::io::ErrorKind::AddrInUse);
}

/// A router with one listener per core (`bind_per_core_takeover`): on a free port its cores
/// share new connections; taking over from a running router, every new connection goes to its
/// first listener while the old one still listens, and once the old one has closed and the
/// steering is released, the cores share them again.
#[tokio::test]
async fn a_per_core_router_takes_over_then_spreads_over_its_cores() {
    let fresh = berth_router::bind_per_core_takeover("127.0.0.1:0".parse().expect("addr"), 2)
        .expect("bind two cores on a free port");
    assert!(fresh.steering.is_none(), "nothing to take over from");
    let fresh: Vec<TcpListener> = fresh
        .listeners
        .into_iter()
        .map(|l| TcpListener::from_std(l).expect("register"))
        .collect();
    let addr = fresh[0].local_addr().expect("addr");
    let _streams = connect_many(addr, CONNECTIONS).await;
    let counts = accept_counts(&[&fresh[0], &fresh[1]], CONNECTIONS).await;
    assert!(counts.iter().all(|&n| n > 0), "cores share: {counts:?}");

    drop(fresh);

    // The takeover, from a router with one listener (what a router was before this change):
    // without the release, the kernel's list would end as [new 1, new 0] with the program still
    // answering position 1, and every connection would stay on one core.
    let old = bind_reuseport_takeover(addr).expect("the old router's listener");
    let taking = berth_router::bind_per_core_takeover(addr, 2).expect("take over");
    let steering = taking
        .steering
        .expect("a running router was there: steering");
    let new: Vec<TcpListener> = taking
        .listeners
        .into_iter()
        .map(|l| TcpListener::from_std(l).expect("register"))
        .collect();
    let _streams = connect_many(addr, CONNECTIONS).await;
    assert_eq!(
        accept_counts(&[&new[0], &new[1], &old], CONNECTIONS).await,
        [CONNECTIONS, 0, 0],
        "while the old router listens, every new connection goes to the new first listener"
    );

    // The old router goes; the steering is released once nobody else listens.
    assert!(queue_is_empty(old));
    within("the steering released", steering.release_when_alone()).await;
    let _streams = connect_many(addr, CONNECTIONS).await;
    let counts = accept_counts(&[&new[0], &new[1]], CONNECTIONS).await;
    assert!(
        counts.iter().all(|&n| n > 0),
        "after the release both new cores get connections: {counts:?}"
    );
}

/// `berth up`'s router (`bind_per_core`): its cores share new connections, and it refuses a
/// port anybody listens on, even a `SO_REUSEPORT` router's (two `berth up` must collide).
#[tokio::test]
async fn a_per_core_router_that_must_not_share_its_port_collides() {
    let own = berth_router::bind_per_core("127.0.0.1:0".parse().expect("addr"), 2)
        .expect("bind two cores on a free port");
    assert!(own.steering.is_none());
    let own: Vec<TcpListener> = own
        .listeners
        .into_iter()
        .map(|l| TcpListener::from_std(l).expect("register"))
        .collect();
    let addr = own[0].local_addr().expect("addr");
    let _streams = connect_many(addr, CONNECTIONS).await;
    let counts = accept_counts(&[&own[0], &own[1]], CONNECTIONS).await;
    assert!(counts.iter().all(|&n| n > 0), "cores share: {counts:?}");

    let err = berth_router::bind_per_core(addr, 2).expect_err("the port is taken");
    assert_eq!(err.kind(), std::io::ErrorKind::AddrInUse);
    let shared = bind_reuseport("127.0.0.1:0".parse().expect("addr")).expect("a node router");
    let err = berth_router::bind_per_core(shared.local_addr().expect("addr"), 2)
        .expect_err("a node router's port is taken too");
    assert_eq!(err.kind(), std::io::ErrorKind::AddrInUse);
}
