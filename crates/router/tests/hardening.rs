//! Issue 10's router holes, each against real sockets: fake instances written here (hung,
//! `Content-Length` + `Transfer-Encoding`, an unsolicited `101`, killed mid-request), a raw or
//! hyper client, and the router's own `serve_with`.

#![expect(
    clippy::disallowed_methods,
    reason = "a real router over real sockets: deadlines and measured durations are wall-clock"
)]

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use berth_router::{serve_with, Endpoint, RouteEntry, RouteTable, RouterConfig, RouterHandle};
use bytes::Bytes;
use http::{Request, StatusCode, Version};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

const HOST: &str = "app.test";

async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(10), fut)
        .await
        .unwrap_or_else(|_| panic!("timed out: {what}"))
}

fn endpoint(addr: SocketAddr) -> Endpoint {
    Endpoint {
        addr,
        instance: addr.to_string(),
        release: 1,
        weight: 100,
    }
}

fn table(addrs: &[SocketAddr], timeout_ms: Option<u64>) -> RouteTable {
    RouteTable {
        routes: vec![RouteEntry {
            host: HOST.into(),
            path_prefix: "/".into(),
            service: "app".into(),
            endpoints: addrs.iter().copied().map(endpoint).collect(),
            limits: None,
            maintenance: None,
            timeout_ms,
            ..RouteEntry::default()
        }],
    }
}

/// A router on a port of its own; stops when the test's runtime ends.
async fn router(handle: RouterHandle, config: RouterConfig) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(serve_with(listener, handle, config, std::future::pending()));
    addr
}

/// One request read off a raw connection: its head (as text) and body.
struct Seen {
    head: String,
    body: Vec<u8>,
}

impl Seen {
    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|line| {
            let (n, v) = line.split_once(':')?;
            n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

/// Reads one request (head, then a `Content-Length` body) from `stream`, keeping what follows
/// in `buf`; `None` at EOF.
async fn read_request(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<Seen> {
    let end = loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break end + 4;
        }
        let mut chunk = [0u8; 4096];
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    buf.drain(..end);
    let mut seen = Seen {
        head,
        body: Vec::new(),
    };
    let len: usize = seen
        .header("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    while buf.len() < len {
        let mut chunk = [0u8; 4096];
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    seen.body = buf.drain(..len).collect();
    Some(seen)
}

/// A fake instance: `on_request` gets every request of every connection and answers with the
/// bytes to write back (`None`: hold the connection open and never answer). It records every
/// request it read.
struct Fake {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    /// Set to true: every connection is reset (`SO_LINGER` 0) and the port closed, as when
    /// the process is killed with `kill -9`.
    kill: watch::Sender<bool>,
}

impl Fake {
    fn requests(&self) -> usize {
        self.seen.lock().expect("seen").len()
    }
}

async fn fake(on_request: impl Fn(&Seen) -> Option<Vec<u8>> + Send + Sync + 'static) -> Fake {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let seen = Arc::new(Mutex::new(Vec::new()));
    let (kill, killed) = watch::channel(false);
    let on_request = Arc::new(on_request);
    {
        let seen = seen.clone();
        let mut dead = killed.clone();
        tokio::spawn(async move {
            loop {
                let (mut stream, _) = tokio::select! {
                    accepted = listener.accept() => match accepted {
                        Ok(accepted) => accepted,
                        Err(_) => continue,
                    },
                    _ = dead.wait_for(|k| *k) => return, // the listener closes: refused
                };
                let (seen, on_request, mut dead) =
                    (seen.clone(), on_request.clone(), killed.clone());
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let killed = loop {
                        let request = tokio::select! {
                            request = read_request(&mut stream, &mut buf) => request,
                            _ = dead.wait_for(|k| *k) => break true,
                        };
                        let Some(request) = request else { break false };
                        let answer = on_request(&request);
                        seen.lock().expect("seen").push(request);
                        match answer {
                            Some(bytes) => {
                                if stream.write_all(&bytes).await.is_err() {
                                    break false;
                                }
                            }
                            None => {
                                let _ = dead.wait_for(|k| *k).await;
                                break true;
                            }
                        }
                    };
                    if killed {
                        // What the kernel does to the sockets of a killed process that had
                        // unread data, and what `kill -9` looks like mid-request: a reset.
                        let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
                    }
                    drop(stream);
                });
            }
        });
    }
    Fake { addr, seen, kill }
}

fn ok() -> Option<Vec<u8>> {
    Some(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok".to_vec())
}

/// Sends `request` (raw bytes) on a new connection and returns the status of the answer and
/// the whole answer as text (read until the router closes, or the first answer when it keeps
/// the connection open).
async fn raw(addr: SocketAddr, request: &[u8]) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.write_all(request).await.expect("write");
    read_answer(&mut stream).await
}

async fn read_answer(stream: &mut TcpStream) -> (u16, String) {
    let mut buf = Vec::new();
    loop {
        if let Some(end) = buf.windows(4).position(|w: &[u8]| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            if buf.len() >= end + 4 + len {
                break;
            }
        }
        let mut chunk = [0u8; 4096];
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, text)
}

fn get(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nhost: {HOST}\r\n\r\n").into_bytes()
}

// ---- 12: a slowly sent small body ----

#[tokio::test]
async fn a_small_body_that_does_not_arrive_in_time_gets_408_and_nothing_is_forwarded() {
    let app = fake(|_| ok()).await;
    let handle = RouterHandle::with_table(table(&[app.addr], None));
    let config = RouterConfig {
        body_timeout: Some(Duration::from_millis(300)),
        ..RouterConfig::default()
    };
    let addr = router(handle.clone(), config).await;
    // Ten bytes announced, three sent, then nothing.
    let request = format!("POST /orders HTTP/1.1\r\nhost: {HOST}\r\ncontent-length: 10\r\n\r\nabc");
    let (status, answer) = within("the 408", raw(addr, request.as_bytes())).await;
    assert_eq!(status, 408, "{answer}");
    assert!(answer.contains("request body"), "says why: {answer}");
    assert_eq!(app.requests(), 0, "the instance got nothing");
    // Counted as the client's 4xx, not blamed on the instance.
    let stats = handle.stats();
    assert_eq!(stats.services["app"].client_error, 1, "{stats:?}");
    // A body that does arrive in time is forwarded whole.
    let request =
        format!("POST /orders HTTP/1.1\r\nhost: {HOST}\r\ncontent-length: 10\r\n\r\nabcdefghij");
    let (status, answer) = within("the 200", raw(addr, request.as_bytes())).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(app.seen.lock().expect("seen")[0].body, b"abcdefghij");
}

// ---- 16: response timeout ----

#[tokio::test]
async fn a_hung_instance_gets_504_after_the_route_timeout_and_is_counted() {
    let hung = fake(|_| None).await;
    let handle = RouterHandle::with_table(table(&[hung.addr], Some(300)));
    let addr = router(handle.clone(), RouterConfig::default()).await;
    let started = std::time::Instant::now();
    let (status, answer) = within("the 504", raw(addr, &get("/slow"))).await;
    assert_eq!(status, 504, "{answer}");
    assert!(answer.contains("timed out"), "{answer}");
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "not before the limit"
    );
    assert_eq!(hung.requests(), 1, "sent once, never retried");
    let metrics = handle.metrics_text();
    assert!(
        metrics.contains("berth_router_upstream_timeouts_total{service=\"app\"} 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn routes_without_a_timeout_get_the_routers_default() {
    let hung = fake(|_| None).await;
    let handle = RouterHandle::with_table(table(&[hung.addr], None));
    let config = RouterConfig {
        response_timeout: Some(Duration::from_millis(200)),
        ..RouterConfig::default()
    };
    let addr = router(handle, config).await;
    let (status, answer) = within("the 504", raw(addr, &get("/"))).await;
    assert_eq!(status, 504, "{answer}");
}

#[tokio::test]
async fn a_slow_upload_is_not_cut_by_the_response_timeout() {
    // The timer starts when the request has been sent whole: an upload that takes longer than
    // the timeout, answered at once after, is a 200.
    let app = fake(|_| ok()).await;
    let handle = RouterHandle::with_table(table(&[app.addr], Some(300)));
    let addr = router(handle, RouterConfig::default()).await;
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let len = 100 * 1024; // above the replay limit: streamed
    let head = format!("POST /upload HTTP/1.1\r\nhost: {HOST}\r\ncontent-length: {len}\r\n\r\n");
    stream.write_all(head.as_bytes()).await.expect("head");
    for _ in 0..10 {
        stream.write_all(&vec![b'x'; len / 10]).await.expect("part");
        tokio::time::sleep(Duration::from_millis(80)).await;
    }
    let (status, answer) = within("the answer", read_answer(&mut stream)).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(app.seen.lock().expect("seen")[0].body.len(), len);
}

// ---- 16: responses the router will not forward ----

#[tokio::test]
async fn a_response_with_both_content_length_and_transfer_encoding_gets_502() {
    let smuggler = fake(|_| {
        Some(
            b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n\
              5\r\nhello\r\n0\r\n\r\n"
                .to_vec(),
        )
    })
    .await;
    let handle = RouterHandle::with_table(table(&[smuggler.addr], None));
    let addr = router(handle, RouterConfig::default()).await;
    let (status, answer) = within("the 502", raw(addr, &get("/"))).await;
    assert_eq!(status, 502, "{answer}");
    assert!(
        !answer.contains("hello"),
        "nothing of it forwarded: {answer}"
    );
}

#[tokio::test]
async fn an_unsolicited_101_gets_502() {
    let switcher = fake(|_| {
        Some(
            b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\n\r\n"
                .to_vec(),
        )
    })
    .await;
    let handle = RouterHandle::with_table(table(&[switcher.addr], None));
    let addr = router(handle, RouterConfig::default()).await;
    let (status, answer) = within("the 502", raw(addr, &get("/"))).await;
    assert_eq!(status, 502, "{answer}");
}

// ---- 16: HTTP/2 requests ----

async fn h2_client(addr: SocketAddr) -> hyper::client::conn::http2::SendRequest<Full<Bytes>> {
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .expect("h2 handshake");
    tokio::spawn(conn);
    sender
}

async fn h2_send(
    sender: &mut hyper::client::conn::http2::SendRequest<Full<Bytes>>,
    request: Request<Full<Bytes>>,
) -> (StatusCode, Bytes) {
    let response = within("h2 answer", sender.send_request(request))
        .await
        .expect("h2 response");
    let status = response.status();
    let body = within("h2 body", response.into_body().collect())
        .await
        .expect("body")
        .to_bytes();
    (status, body)
}

#[tokio::test]
async fn an_http2_request_with_more_than_100_headers_gets_431() {
    let app = fake(|_| ok()).await;
    let handle = RouterHandle::with_table(table(&[app.addr], None));
    let addr = router(handle, RouterConfig::default()).await;
    let mut sender = h2_client(addr).await;
    let request = |fields: usize| {
        let mut builder = Request::builder()
            .version(Version::HTTP_2)
            .uri(format!("http://{HOST}/"));
        for i in 0..fields {
            builder = builder.header(format!("x-field-{i}"), "1");
        }
        builder.body(Full::new(Bytes::new())).expect("request")
    };
    let (status, body) = h2_send(&mut sender, request(150)).await;
    assert_eq!(
        status,
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        "{body:?}"
    );
    assert_eq!(app.requests(), 0, "not forwarded");
    let (status, _) = h2_send(&mut sender, request(90)).await;
    assert_eq!(status, StatusCode::OK, "90 fields are fine");
    // Cookie crumbs (one field per cookie, as browsers send them on HTTP/2) count as one.
    let mut builder = Request::builder()
        .version(Version::HTTP_2)
        .uri(format!("http://{HOST}/"));
    for i in 0..150 {
        builder = builder.header("cookie", format!("c{i}=1"));
    }
    let (status, _) = h2_send(
        &mut sender,
        builder.body(Full::new(Bytes::new())).expect("request"),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "150 cookie crumbs are one field");
}

#[tokio::test]
async fn an_http2_host_header_other_than_the_authority_gets_400() {
    let app = fake(|_| ok()).await;
    let other = fake(|_| ok()).await;
    let mut routes = table(&[app.addr], None);
    routes.routes.push(RouteEntry {
        host: "other.test".into(),
        service: "other".into(),
        ..table(&[other.addr], None).routes.remove(0)
    });
    let addr = router(RouterHandle::with_table(routes), RouterConfig::default()).await;
    let mut sender = h2_client(addr).await;
    let request = |host: &str| {
        Request::builder()
            .version(Version::HTTP_2)
            .uri(format!("http://{HOST}/"))
            .header("host", host)
            .body(Full::new(Bytes::new()))
            .expect("request")
    };
    let (status, body) = h2_send(&mut sender, request("other.test")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body:?}");
    assert_eq!(
        &body[..],
        b"the Host header differs from :authority\n".as_slice()
    );
    assert_eq!(app.requests() + other.requests(), 0, "forwarded nowhere");
    // The same authority in another case is the same entity.
    let (status, _) = h2_send(&mut sender, request("APP.test")).await;
    assert_eq!(status, StatusCode::OK);
}

// ---- 16: X-Forwarded-* only from trusted proxies ----

fn claims() -> Vec<u8> {
    format!(
        "GET / HTTP/1.1\r\nhost: {HOST}\r\nx-forwarded-for: 203.0.113.7\r\n\
         x-forwarded-proto: https\r\nx-forwarded-host: shop.example\r\n\
         forwarded: for=203.0.113.7\r\n\r\n"
    )
    .into_bytes()
}

#[tokio::test]
async fn forwarded_headers_from_an_untrusted_client_are_replaced() {
    let app = fake(|_| ok()).await;
    let handle = RouterHandle::with_table(table(&[app.addr], None));
    // Trusted: some other network, not the test's loopback client.
    let config = RouterConfig {
        trusted_proxies: vec!["10.0.0.0/8".parse().expect("cidr")],
        ..RouterConfig::default()
    };
    let addr = router(handle, config).await;
    let (status, _) = within("answer", raw(addr, &claims())).await;
    assert_eq!(status, 200);
    let seen = app.seen.lock().expect("seen");
    assert_eq!(seen[0].header("x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(seen[0].header("x-forwarded-proto"), Some("http"));
    assert_eq!(seen[0].header("x-forwarded-host"), Some(HOST));
    assert_eq!(seen[0].header("forwarded"), None);
}

#[tokio::test]
async fn forwarded_headers_from_a_trusted_proxy_are_kept_and_appended_to() {
    let app = fake(|_| ok()).await;
    let handle = RouterHandle::with_table(table(&[app.addr], None));
    let config = RouterConfig {
        trusted_proxies: vec!["127.0.0.0/8".parse().expect("cidr")],
        ..RouterConfig::default()
    };
    let addr = router(handle, config).await;
    let (status, _) = within("answer", raw(addr, &claims())).await;
    assert_eq!(status, 200);
    let seen = app.seen.lock().expect("seen");
    assert_eq!(
        seen[0].header("x-forwarded-for"),
        Some("203.0.113.7, 127.0.0.1")
    );
    assert_eq!(seen[0].header("x-forwarded-proto"), Some("https"));
    assert_eq!(seen[0].header("x-forwarded-host"), Some("shop.example"));
}

// ---- 16: a token for /metrics ----

#[tokio::test]
async fn metrics_need_the_token_when_one_is_configured() {
    let metrics = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let metrics_addr = metrics.local_addr().expect("addr");
    let config = RouterConfig {
        metrics: Some(metrics),
        metrics_token: Some("s3cret-token".into()),
        ..RouterConfig::default()
    };
    router(RouterHandle::new(), config).await;
    let scrape = |auth: Option<&str>| {
        let auth = auth
            .map(|a| format!("authorization: {a}\r\n"))
            .unwrap_or_default();
        format!("GET /metrics HTTP/1.1\r\nhost: m\r\n{auth}connection: close\r\n\r\n")
    };
    let (status, answer) = within("no token", raw(metrics_addr, scrape(None).as_bytes())).await;
    assert_eq!(status, 401, "{answer}");
    assert!(
        answer
            .to_ascii_lowercase()
            .contains("www-authenticate: bearer"),
        "{answer}"
    );
    let (status, _) = within(
        "wrong token",
        raw(metrics_addr, scrape(Some("Bearer s3cret-tokeX")).as_bytes()),
    )
    .await;
    assert_eq!(status, 401);
    let (status, answer) = within(
        "right token",
        raw(metrics_addr, scrape(Some("Bearer s3cret-token")).as_bytes()),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert!(
        answer.contains("berth_router_unrouted_requests_total"),
        "{answer}"
    );
}

#[tokio::test]
async fn metrics_without_a_token_stay_open() {
    let metrics = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let metrics_addr = metrics.local_addr().expect("addr");
    let config = RouterConfig {
        metrics: Some(metrics),
        ..RouterConfig::default()
    };
    router(RouterHandle::new(), config).await;
    let (status, _) = within(
        "scrape",
        raw(
            metrics_addr,
            b"GET /metrics HTTP/1.1\r\nhost: m\r\nconnection: close\r\n\r\n",
        ),
    )
    .await;
    assert_eq!(status, 200);
}

// ---- 17: a GET that meets a dead instance goes to a live one ----

async fn closed_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    listener.local_addr().expect("addr")
}

#[tokio::test]
async fn a_get_fails_over_past_several_refusing_instances_to_a_live_one() {
    // Three instances were killed at once and the table still lists them first: connection
    // refused, three times, then a live one.
    let live = fake(|_| ok()).await;
    let dead = [
        closed_port().await,
        closed_port().await,
        closed_port().await,
    ];
    let addrs = [dead[0], dead[1], dead[2], live.addr];
    let handle = RouterHandle::with_table(table(&addrs, None));
    let addr = router(handle, RouterConfig::default()).await;
    for method in ["GET", "HEAD", "GET", "GET"] {
        // `connection: close`: the answer to HEAD announces a length it does not carry.
        let request = format!("{method} / HTTP/1.1\r\nhost: {HOST}\r\nconnection: close\r\n\r\n");
        let (status, answer) = within("answer", raw(addr, request.as_bytes())).await;
        assert_eq!(status, 200, "{method}: {answer}");
    }
    assert_eq!(live.requests(), 4);
}

#[tokio::test]
async fn a_get_on_a_pooled_connection_to_a_killed_instance_is_retried() {
    let dying = fake(|_| ok()).await;
    let live = fake(|_| ok()).await;
    let handle = RouterHandle::with_table(table(&[dying.addr, live.addr], None));
    let addr = router(handle, RouterConfig::default()).await;
    // Warm both: the router keeps an idle connection to each.
    let mut client = TcpStream::connect(addr).await.expect("connect");
    for _ in 0..4 {
        client.write_all(&get("/")).await.expect("write");
        let (status, answer) = within("warm", read_answer(&mut client)).await;
        assert_eq!(status, 200, "{answer}");
    }
    assert!(dying.requests() > 0 && live.requests() > 0);
    // kill -9: its pooled connections are reset, its port refuses.
    dying.kill.send_replace(true);
    for _ in 0..6 {
        client.write_all(&get("/")).await.expect("write");
        let (status, answer) = within("after the kill", read_answer(&mut client)).await;
        assert_eq!(status, 200, "{answer}");
    }
}

#[tokio::test]
async fn a_get_reset_after_it_was_sent_is_retried_on_a_live_instance() {
    // The instance reads the request and dies before answering.
    let dying = fake(|_| None).await;
    let live = fake(|_| ok()).await;
    let handle = RouterHandle::with_table(table(&[dying.addr, live.addr], None));
    let addr = router(handle, RouterConfig::default()).await;
    let mut pending = Vec::new();
    for _ in 0..4 {
        pending.push(tokio::spawn(async move { raw(addr, &get("/")).await }));
    }
    within("the dying instance has a request", async {
        while dying.requests() == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    dying.kill.send_replace(true);
    for answer in pending {
        let (status, answer) = within("answer", answer).await.expect("task");
        assert_eq!(status, 200, "{answer}");
    }
}

#[tokio::test]
async fn failing_over_from_an_instance_killed_mid_load_is_not_limited_by_the_retry_budget() {
    // 300 GETs in flight over two instances, then one is killed: ~150 requests are reset after
    // they were sent. The retry budget holds 100 retries; every one of them must still be
    // answered by the live instance.
    let dying = fake(|_| None).await;
    let release = Arc::new(tokio::sync::Semaphore::new(0));
    let held = Arc::new(AtomicUsize::new(0));
    let live = {
        let (release, held) = (release.clone(), held.clone());
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let (release, held) = (release.clone(), held.clone());
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    while read_request(&mut stream, &mut buf).await.is_some() {
                        held.fetch_add(1, Ordering::SeqCst);
                        // Held until the test lets everything through.
                        let _ = release.acquire().await.map(|p| p.forget());
                        if stream.write_all(&ok().unwrap_or_default()).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        addr
    };
    let handle = RouterHandle::with_table(table(&[dying.addr, live], None));
    let addr = router(handle.clone(), RouterConfig::default()).await;
    const N: usize = 300;
    let mut pending = Vec::new();
    for _ in 0..N {
        pending.push(tokio::spawn(async move { raw(addr, &get("/")).await }));
    }
    within("every request is in flight", async {
        while dying.requests() + held.load(Ordering::SeqCst) < N {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    let on_dying = dying.requests();
    assert!(
        on_dying > 100,
        "more in flight on it than the budget holds: {on_dying}"
    );
    dying.kill.send_replace(true);
    within("the retries reach the live instance", async {
        while held.load(Ordering::SeqCst) < N {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    release.add_permits(N);
    let mut statuses = std::collections::BTreeMap::new();
    for answer in pending {
        let (status, _) = within("answer", answer).await.expect("task");
        *statuses.entry(status).or_insert(0) += 1;
    }
    assert_eq!(statuses, [(200, N)].into_iter().collect(), "{statuses:?}");
}

#[tokio::test]
async fn a_get_that_meets_two_instances_dying_in_turn_is_answered_by_the_third() {
    // Each of the first two instances reads the request and is killed before answering: the
    // GET went out twice, and still must not get a 502 while a live instance is there.
    let first = fake(|_| None).await;
    let second = fake(|_| None).await;
    let live = fake(|_| ok()).await;
    let handle = RouterHandle::with_table(table(&[first.addr, second.addr, live.addr], None));
    let addr = router(handle, RouterConfig::default()).await;
    let answer = tokio::spawn(async move { raw(addr, &get("/")).await });
    for dying in [&first, &second] {
        within("the request reaches the next dying instance", async {
            while dying.requests() == 0 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
        dying.kill.send_replace(true);
    }
    let (status, text) = within("answer", answer).await.expect("task");
    assert_eq!(status, 200, "{text}");
    assert_eq!(live.requests(), 1);
}
