//! The fuzz target's entry point: a routing table and a raw downstream byte stream in, the
//! router's real connection handling in between, invariants checked on everything that comes
//! out. Not part of the public API; `fuzz/fuzz_targets/route_request.rs` and
//! `tests/fuzz_corpus.rs` call [`route_request`] (see `fuzz/README.md`).
//!
//! # Input
//! ```text
//! OPTIONS                      one line of words, see below
//! TABLE LINES                  the first table, when a `--` line follows
//! --
//! TABLE LINES                  the table requests are routed by (after the switch)
//! ==
//! REQUEST BYTES                everything after the `==` line, sent as is
//! ```
//! Without a `\n==\n` the whole input is the request and [`DEFAULT_TABLE`] is the table.
//!
//! **Options**: `h2` (prefix the request bytes with the HTTP/2 preface: raw frames follow),
//! `h2c` (the request bytes are requests in text form — `METHOD TARGET`, `name: value` lines,
//! an empty line, the body — separated by `&&` lines, sent by a real HTTP/2 client), `tls`
//! (the connection counts as TLS), `v6` (the client's address is IPv4-mapped IPv6), `nolog`
//! (no access log), `switchN` (the first table routes the first N requests, then the second is
//! applied; default 0), `respDIGITS` (the fake upstream's answers, cycled: see
//! `upstream_answer`).
//!
//! **Table lines**: `HOST PREFIX SERVICE TOKEN…`, split on single spaces (so a leading space
//! is an empty host). Tokens: `u`/`d`/`e`/`z` an endpoint — the fake upstream, `127.0.0.1:1`,
//! `[::1]:1`, a port that was bound and closed — optionally followed by a release number and
//! `*WEIGHT` (`u2*0`); `Lc,q,t` limits (missing numbers: 1, 0, 0; the queue timeout capped at
//! 20 ms); `M` or `MPAGE` maintenance. Anything else is ignored.
//!
//! # Invariants
//! Besides "no panic and no hang":
//! - every table applied is live afterwards, its instances are exactly the registry's, and
//!   the routes of one service share one limiter with the first limits listed for it;
//! - the compiled lookup agrees with a naive model (first of duplicate host + prefix wins,
//!   longest segment-boundary prefix wins) for every request and for probe strings, and host
//!   normalisation ignores case, a port and a trailing dot;
//! - requests are routed by the target's authority when it has one (absolute-form,
//!   authority-form, HTTP/2's `:authority`), else by `Host`; the router itself answers 400 to
//!   more than one `Host` header, to an HTTP/1.1 request with neither `Host` nor an authority,
//!   to userinfo in the authority and to an HTTP/2 `Host` other than `:authority`, 431 to an
//!   HTTP/2 request with more than 100 fields, and 405 with `Allow` to CONNECT, counts those as
//!   unrouted and forwards none of them;
//! - every answer is the one its route calls for: 404 with `no route for HOST/PATH` when no
//!   route matches, the maintenance page with `Retry-After: 120`, `no healthy instance` 503s
//!   only for routes without endpoints, overload 503s only for limited services, 502s only
//!   for routes with endpoints, and an instance's answer only from an instance of the route —
//!   the answer to *this* request, not another's;
//! - no hop-by-hop header crosses the proxy in either direction (including those the other
//!   side's `Connection` names), except `Upgrade` on a protocol switch; the instance gets the
//!   routed host as `Host` and `X-Forwarded-Host` (none without a host), `X-Forwarded-For` that
//!   is exactly the client (it is no trusted proxy: its own claims and `Forwarded` go),
//!   `X-Forwarded-Proto`, exactly one `X-Request-Id` (the client's first when it is valid,
//!   else a valid new one), the origin-form target, HTTP/1.1, and a body as long as the client's
//!   `Content-Length`;
//! - the instance receives no request the client did not send (no smuggling), each client
//!   request at most twice (one retry), an idempotent one at most once per attempt;
//! - the bytes the client gets are well-formed HTTP/1.x responses, in request order, each with
//!   the status and body the proxy produced, hop-by-hop free, then at most one of hyper's own
//!   error answers; after a `101`, exactly the instance's tunnel bytes; or well-formed HTTP/2
//!   frames starting with SETTINGS;
//! - afterwards the counters match the answers one for one, nothing is left in flight,
//!   outstanding or queued, and `/metrics` is valid exposition text.
//!
//! The connection is served with the very settings [`crate::serve_with`] uses
//! (`server::http_builder`), half-close included: the client shuts its side down after the
//! last byte, and the answers to requests already read must still arrive.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::convert::Infallible;
use std::hash::BuildHasher;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::{BodyExt, Either, Full};
use hyper::body::{Body, Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::compiled::{normalize_host, Route};
use crate::proxy::{ConnInfo, Proxy, ProxyBody};
use crate::server::MAX_HEADERS;
use crate::stats::StatusClasses;
use crate::table::{Endpoint, Limits, Maintenance, RouteEntry, RouteTable};
use crate::RouterHandle;

/// The table used when the input has no `==` line.
pub const DEFAULT_TABLE: &str = "localhost / web u
shop.local /api api u d
shop.local / shop d z
down.local / down M
empty.local / empty
limited.local / limited u L0,0,0
[::1] / v6 u";

/// One input taking longer than this is a hang (loopback only, queue waits capped).
const HANG: Duration = Duration::from_secs(10);
/// Queue timeouts from the input are capped, so that waiting in a queue stays cheap.
const MAX_QUEUE_TIMEOUT_MS: u64 = 20;
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Added to each request before the proxy sees it, to recognise it at the instance.
const X_FUZZ_DOWN: HeaderName = HeaderName::from_static("x-fuzz-down");
/// Added to each answer after the proxy made it, to recognise it on the wire.
const X_FUZZ_RECORD: HeaderName = HeaderName::from_static("x-fuzz-record");
/// Set by the fake upstream on its answers: the number of the request it answers.
const X_FUZZ_SEQ: HeaderName = HeaderName::from_static("x-fuzz-seq");
/// A header the fake upstream names in its `Connection` header.
const X_HOP_SECRET: HeaderName = HeaderName::from_static("x-hop-secret");
const TUNNEL_HELLO: &[u8] = b"tunnel-hello:";
const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(10, 1, 2, 3);

/// What one input did; the corpus test uses it to check that seeds still reach what they are
/// named after.
#[derive(Debug, Default)]
pub struct Report {
    /// The final statuses the client received, in order (100 Continue left out), from HTTP/1
    /// responses or the HTTP/2 client.
    pub statuses: Vec<u16>,
    /// Requests the fake upstream received.
    pub upstream_requests: usize,
    /// HTTP/2 frames the router wrote on a raw HTTP/2 connection.
    pub h2_frames: usize,
    /// Whether a protocol switch was tunnelled to the fake upstream.
    pub tunnelled: bool,
    /// Lookups compared with the model.
    pub lookups: usize,
}

/// Runs one fuzz input; panics when an invariant does not hold.
pub fn route_request(data: &[u8]) {
    run(data);
}

/// [`route_request`], returning what happened.
pub fn run(data: &[u8]) -> Report {
    let input = Input::parse(data);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a Tokio runtime");
    let handle = RouterHandle::new();
    let state: Shared = Arc::default();
    let mut report = runtime.block_on(async {
        match tokio::time::timeout(HANG, exchange(&input, &handle, &state)).await {
            Ok(report) => report,
            Err(_) => panic!("the exchange did not end within {HANG:?}"),
        }
    });
    // Every task, connection and body goes with the runtime.
    drop(runtime);
    let mut state = lock(&state);
    if let Err(problem) = check_settled(&handle, &state) {
        state.problems.push(problem);
    }
    report.upstream_requests = state.upstream.len();
    assert!(
        state.problems.is_empty(),
        "router invariants broken:\n{}",
        state.problems.join("\n")
    );
    report
}

// ---------------------------------------------------------------------------------------------
// The input

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Mode {
    #[default]
    Http1,
    /// Raw frames after the preface.
    Http2,
    /// Text requests sent by hyper's HTTP/2 client.
    Http2Client,
}

#[derive(Debug, Clone)]
struct Options {
    mode: Mode,
    tls: bool,
    v6: bool,
    access_log: bool,
    switch_after: usize,
    responses: Vec<u8>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            mode: Mode::Http1,
            tls: false,
            v6: false,
            access_log: true,
            switch_after: 0,
            responses: vec![0],
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    Live,
    Dead,
    DeadV6,
    Closed,
}

#[derive(Debug, Clone)]
struct EndpointSpec {
    kind: Kind,
    release: u64,
    weight: u32,
}

#[derive(Debug, Clone)]
struct RouteSpec {
    host: String,
    prefix: String,
    service: String,
    endpoints: Vec<EndpointSpec>,
    limits: Option<Limits>,
    maintenance: Option<Maintenance>,
}

struct Input<'a> {
    options: Options,
    first: Option<Vec<RouteSpec>>,
    second: Vec<RouteSpec>,
    request: &'a [u8],
}

impl<'a> Input<'a> {
    fn parse(data: &'a [u8]) -> Self {
        let Some(split) = find(data, b"\n==\n") else {
            return Input {
                options: Options::default(),
                first: None,
                second: routes(DEFAULT_TABLE.split('\n')),
                request: data,
            };
        };
        let head = String::from_utf8_lossy(&data[..split]);
        let mut lines = head.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l));
        let options = parse_options(lines.next().unwrap_or_default());
        let rest: Vec<&str> = lines.collect();
        let (first, second) = match rest.iter().position(|l| *l == "--") {
            Some(sep) => (
                Some(routes(rest[..sep].iter().copied())),
                routes(rest[sep + 1..].iter().copied()),
            ),
            None => (None, routes(rest.iter().copied())),
        };
        Input {
            options,
            first,
            second,
            request: &data[split + 4..],
        }
    }
}

fn parse_options(line: &str) -> Options {
    let mut options = Options::default();
    for word in line.split(' ') {
        match word {
            "h2" => options.mode = Mode::Http2,
            "h2c" => options.mode = Mode::Http2Client,
            "tls" => options.tls = true,
            "v6" => options.v6 = true,
            "nolog" => options.access_log = false,
            _ => {
                if let Some(n) = word.strip_prefix("switch") {
                    options.switch_after = n.parse::<usize>().unwrap_or(0).min(1_000);
                } else if let Some(digits) = word.strip_prefix("resp") {
                    let responses: Vec<u8> = digits
                        .bytes()
                        .filter(u8::is_ascii_digit)
                        .map(|d| d - b'0')
                        .collect();
                    if !responses.is_empty() {
                        options.responses = responses;
                    }
                }
            }
        }
    }
    options
}

fn routes<'l>(lines: impl Iterator<Item = &'l str>) -> Vec<RouteSpec> {
    lines.filter(|l| !l.is_empty()).map(parse_route).collect()
}

fn parse_route(line: &str) -> RouteSpec {
    let mut fields = line.split(' ');
    let mut next = || fields.next().unwrap_or_default().to_owned();
    let mut route = RouteSpec {
        host: next(),
        prefix: next(),
        service: next(),
        endpoints: Vec::new(),
        limits: None,
        maintenance: None,
    };
    for token in line.split(' ').skip(3) {
        let Some(first) = token.chars().next() else {
            continue;
        };
        let rest = &token[first.len_utf8()..];
        let kind = match first {
            'u' => Kind::Live,
            'd' => Kind::Dead,
            'e' => Kind::DeadV6,
            'z' => Kind::Closed,
            'L' => {
                let mut numbers = rest.split(',');
                let mut number = || numbers.next().and_then(|n| n.parse::<u64>().ok());
                let concurrency = number().map_or(1, |n| u32::try_from(n).unwrap_or(u32::MAX));
                let queue = number().map_or(0, |n| u32::try_from(n).unwrap_or(u32::MAX));
                let queue_timeout_ms = number().unwrap_or(0).min(MAX_QUEUE_TIMEOUT_MS);
                route.limits = Some(Limits {
                    concurrency,
                    queue,
                    queue_timeout_ms,
                });
                continue;
            }
            'M' => {
                route.maintenance = Some(Maintenance {
                    page_html: (!rest.is_empty()).then(|| rest.to_owned()),
                });
                continue;
            }
            _ => continue,
        };
        let (release, weight) = match rest.split_once('*') {
            Some((release, weight)) => (release, weight.parse().ok()),
            None => (rest, None),
        };
        route.endpoints.push(EndpointSpec {
            kind,
            release: release.parse().unwrap_or(1),
            weight: weight.unwrap_or(crate::table::DEFAULT_WEIGHT),
        });
    }
    route
}

/// Where the endpoint kinds point in this run.
struct Addrs {
    live: SocketAddr,
    closed: SocketAddr,
}

fn table(specs: &[RouteSpec], addrs: &Addrs) -> Arc<RouteTable> {
    let routes = specs
        .iter()
        .map(|spec| RouteEntry {
            host: spec.host.clone(),
            path_prefix: spec.prefix.clone(),
            service: spec.service.clone(),
            endpoints: spec
                .endpoints
                .iter()
                .enumerate()
                .map(|(i, e)| {
                    let (addr, letter) = match e.kind {
                        Kind::Live => (addrs.live, 'u'),
                        Kind::Dead => (SocketAddr::from((Ipv4Addr::LOCALHOST, 1)), 'd'),
                        Kind::DeadV6 => (SocketAddr::from((Ipv6Addr::LOCALHOST, 1)), 'e'),
                        Kind::Closed => (addrs.closed, 'z'),
                    };
                    Endpoint {
                        addr,
                        instance: format!("{letter}{i}"),
                        release: e.release,
                        weight: e.weight,
                    }
                })
                .collect(),
            limits: spec.limits,
            maintenance: spec.maintenance.clone(),
            timeout_ms: None,
            ..RouteEntry::default()
        })
        .collect();
    Arc::new(RouteTable { routes })
}

// ---------------------------------------------------------------------------------------------
// Shared state of one run

type Shared = Arc<Mutex<State>>;

#[derive(Default)]
struct State {
    /// Every request the proxy was handed, by number.
    records: Vec<Record>,
    /// Every request the fake upstream received, by number.
    upstream: Vec<UpRecord>,
    /// Invariants found broken in tasks (which must not panic: a spawned task's panic would
    /// be swallowed outside the fuzzer).
    problems: Vec<String>,
    /// The second table and the request number from which it routes.
    pending: Option<(usize, Arc<RouteTable>)>,
    /// Requests inside the proxy right now.
    active: usize,
    /// The fake upstream's address.
    live: Option<SocketAddr>,
    lookups: usize,
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A request as the proxy got it, and what it answered.
struct Record {
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    /// The host as routed (normalised) and the path.
    host: String,
    path: String,
    upgrade: bool,
    marker: String,
    /// The model's route's service; `None`: unrouted (or refused).
    service: Option<String>,
    /// What the router must answer without routing, by the model: status and body.
    refusal: Option<(StatusCode, &'static str)>,
    /// The status the proxy answered with, once it has.
    status: Option<StatusCode>,
    /// The body the client must receive (unless the method or status forbid one).
    body: Option<Bytes>,
}

/// A request as the fake upstream got it, and what it answered.
struct UpRecord {
    method: Method,
    version: Version,
    uri: Uri,
    headers: HeaderMap,
    body: Option<Bytes>,
    status: Option<StatusCode>,
    sent: Bytes,
}

/// Counts a request as inside the proxy for as long as it lives.
struct Active(Shared);

impl Active {
    fn enter(state: &Shared) -> Self {
        lock(state).active += 1;
        Active(state.clone())
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        lock(&self.0).active -= 1;
    }
}

macro_rules! ensure {
    ($cond:expr, $($message:tt)+) => {
        if !$cond {
            return Err(format!($($message)+));
        }
    };
}

// ---------------------------------------------------------------------------------------------
// One run

async fn exchange(input: &Input<'_>, handle: &RouterHandle, state: &Shared) -> Report {
    let upstream = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .await
        .expect("bind the fake upstream");
    let closed = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .expect("bind and close a port");
    let addrs = Addrs {
        live: upstream.local_addr().expect("the fake upstream's address"),
        closed,
    };
    lock(state).live = Some(addrs.live);
    tokio::spawn(fake_upstream(
        upstream,
        state.clone(),
        input.options.responses.clone(),
    ));

    let second = table(&input.second, &addrs);
    let apply = |table: &Arc<RouteTable>| {
        handle.update(table.clone());
        match check_table(handle, table, input.request) {
            Ok(lookups) => lock(state).lookups += lookups,
            Err(problem) => panic!("after an update: {problem}"),
        }
    };
    match &input.first {
        Some(first) => {
            apply(&table(first, &addrs));
            if input.options.switch_after == 0 {
                apply(&second);
            } else {
                lock(state).pending = Some((input.options.switch_after, second));
            }
        }
        None => apply(&second),
    }

    let info = ConnInfo {
        remote: if input.options.v6 {
            SocketAddr::from((CLIENT_IP.to_ipv6_mapped(), 40_000))
        } else {
            SocketAddr::from((CLIENT_IP, 40_000))
        },
        tls: input.options.tls,
        trusted: false,
    };
    let proxy = Arc::new(Proxy {
        handle: handle.clone(),
        access_log: input.options.access_log,
        body_timeout: crate::BODY_TIMEOUT,
        response_timeout: crate::RESPONSE_TIMEOUT,
    });
    // Exactly as `serve_with` builds it.
    let http = crate::server::http_builder();
    let service = {
        let (state, handle) = (state.clone(), handle.clone());
        service_fn(move |request: Request<Incoming>| {
            let (state, handle, proxy) = (state.clone(), handle.clone(), proxy.clone());
            async move { Ok::<_, Infallible>(answer(&state, &handle, &proxy, info, request).await) }
        })
    };
    let (client, server) = tokio::io::duplex(64 * 1024);
    let served = http.serve_connection_with_upgrades(TokioIo::new(server), service);

    let mut report = Report::default();
    match input.options.mode {
        Mode::Http1 | Mode::Http2 => {
            let h2 = input.options.mode == Mode::Http2;
            let (mut reader, mut writer) = tokio::io::split(client);
            let write = async {
                if h2 {
                    let _ = writer.write_all(PREFACE).await;
                }
                let _ = writer.write_all(input.request).await;
                if h2 {
                    // HTTP/2 has no half-close: let the router read and answer what it got
                    // before the end of the connection resets every stream.
                    for turn in 0..256 {
                        tokio::task::yield_now().await;
                        if turn >= 32 && lock(state).active == 0 {
                            break;
                        }
                    }
                }
                let _ = writer.shutdown().await;
            };
            let read = async {
                let mut transcript = Vec::new();
                let _ = reader.read_to_end(&mut transcript).await;
                transcript
            };
            let (_, (), transcript) = tokio::join!(served, write, read);
            let sent: Vec<u8> = if h2 {
                [PREFACE, input.request].concat()
            } else {
                input.request.to_vec()
            };
            let checked = if transcript.starts_with(b"HTTP/1.") {
                check_http1(&transcript, &lock(state).records, &sent, &mut report)
            } else {
                check_frames(&transcript, &mut report)
            };
            if let Err(problem) = checked {
                panic!(
                    "{problem}\nwhat the router wrote:\n{}",
                    String::from_utf8_lossy(&transcript)
                );
            }
        }
        Mode::Http2Client => {
            let requests = h2_requests(input.request);
            let client = async {
                let Ok((sender, connection)) =
                    hyper::client::conn::http2::Builder::new(TokioExecutor::new())
                        .handshake::<_, Full<Bytes>>(TokioIo::new(client))
                        .await
                else {
                    return Vec::new();
                };
                tokio::spawn(connection);
                let mut calls = Vec::new();
                for request in requests {
                    let mut sender = sender.clone();
                    calls.push(tokio::spawn(async move {
                        let response = sender.send_request(request).await.ok()?;
                        let (parts, body) = response.into_parts();
                        let body = body.collect().await.ok()?.to_bytes();
                        Some((parts, body))
                    }));
                }
                drop(sender);
                let mut answers = Vec::new();
                for call in calls {
                    if let Ok(Some(answer)) = call.await {
                        answers.push(answer);
                    }
                }
                answers
            };
            let (_, answers) = tokio::join!(served, client);
            let records = &lock(state).records;
            for (parts, body) in answers {
                report.statuses.push(parts.status.as_u16());
                if let Err(problem) = check_h2_answer(&parts, &body, records) {
                    panic!("HTTP/2 client: {problem}");
                }
            }
        }
    }
    report.lookups = lock(state).lookups;
    report
}

/// The proxy's service, wrapped: switch tables when due, note what the request is and where
/// it must go, let the proxy answer, check the answer.
async fn answer(
    state: &Shared,
    handle: &RouterHandle,
    proxy: &Proxy,
    info: ConnInfo,
    mut request: Request<Incoming>,
) -> Response<ProxyBody> {
    let _active = Active::enter(state);
    let (id, switch) = {
        let mut state = lock(state);
        let id = state.records.len();
        let switch = match &state.pending {
            Some((from, _)) if *from == id => state.pending.take().map(|(_, table)| table),
            _ => None,
        };
        (id, switch)
    };
    if let Some(table) = switch {
        handle.update(table.clone());
        let checked = check_table(handle, &table, b"");
        let mut state = lock(state);
        match checked {
            Ok(lookups) => state.lookups += lookups,
            Err(problem) => state.problems.push(format!("after the switch: {problem}")),
        }
    }
    strip_marker_token(request.headers_mut());
    // The marker header goes on below, before the proxy counts the fields.
    let refusal = refusal(&request, 1);
    let host = normalize_host(request_host(&request)).into_owned();
    let path = request.uri().path().to_owned();
    let live = handle.table();
    let model = Model::new(&live).route(&host, &path).cloned();
    let compiled = handle.shared.table.load().lookup(&host, &path).cloned();
    if let Err(problem) = same_route(model.as_ref(), compiled.as_deref()) {
        lock(state).problems.push(format!(
            "request {id} ({host}{path}): lookup and model disagree: {problem}"
        ));
    }
    let marker = format!("{:016x}-{id}", nonce());
    let record = Record {
        method: request.method().clone(),
        uri: request.uri().clone(),
        headers: request.headers().clone(),
        host,
        path,
        upgrade: wants_upgrade(&request),
        marker: marker.clone(),
        service: model
            .as_ref()
            .filter(|_| refusal.is_none())
            .map(|e| e.service.clone()),
        refusal,
        status: None,
        body: None,
    };
    if let Ok(value) = HeaderValue::from_str(&marker) {
        request.headers_mut().insert(X_FUZZ_DOWN, value);
    }
    lock(state).records.push(record);

    let response = proxy.handle(info, request).await;
    // Recorded before any await: the counters have counted this answer.
    lock(state).records[id].status = Some(response.status());
    let (mut parts, body) = response.into_parts();
    let (body, local) = match body {
        Either::Left(upstream) => (Either::Left(upstream), None),
        Either::Right(full) => {
            let bytes = match full.collect().await {
                Ok(collected) => collected.to_bytes(),
                Err(never) => match never {},
            };
            (Either::Right(Full::new(bytes.clone())), Some(bytes))
        }
    };
    {
        let mut state = lock(state);
        let checked = check_answer(
            &state,
            id,
            model.as_ref(),
            compiled.as_deref(),
            info,
            &parts,
            local.as_ref(),
        );
        match checked {
            Ok(body) => state.records[id].body = Some(body),
            Err(problem) => {
                let record = &state.records[id];
                let problem = format!(
                    "request {id} ({} {} host {:?}): {problem}",
                    record.method, record.uri, record.host
                );
                state.problems.push(problem);
            }
        }
    }
    parts.headers.insert(X_FUZZ_RECORD, HeaderValue::from(id));
    Response::from_parts(parts, body)
}

// ---------------------------------------------------------------------------------------------
// The routing model

/// A prefix as the router compares it: no surrounding whitespace, no trailing `/`, a leading
/// `/` (added when missing), and the root as the empty string.
fn model_prefix(prefix: &str) -> String {
    let trimmed = prefix.trim().trim_end_matches('/');
    match trimmed {
        "" => String::new(),
        p if p.starts_with('/') => p.to_owned(),
        p => format!("/{p}"),
    }
}

fn prefix_covers(prefix: &str, path: &str) -> bool {
    prefix.is_empty()
        || path == prefix
        || path
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.starts_with('/'))
}

/// The table as the model reads it: the entries the router keeps (the first of each normalised
/// host and prefix), with their normalised host and prefix.
struct Model<'t> {
    kept: Vec<(String, String, &'t RouteEntry)>,
}

impl<'t> Model<'t> {
    fn new(table: &'t RouteTable) -> Self {
        let mut kept: Vec<(String, String, &RouteEntry)> = Vec::new();
        for entry in &table.routes {
            let host = normalize_host(&entry.host).into_owned();
            let prefix = model_prefix(&entry.path_prefix);
            if !kept.iter().any(|(h, p, _)| *h == host && *p == prefix) {
                kept.push((host, prefix, entry));
            }
        }
        Model { kept }
    }

    fn entries(&self) -> impl Iterator<Item = &'t RouteEntry> + '_ {
        self.kept.iter().map(|(_, _, entry)| *entry)
    }

    /// The route a request for (normalised) `host` and `path` must take, by a linear scan.
    fn route(&self, host: &str, path: &str) -> Option<&'t RouteEntry> {
        let mut best: Option<(&RouteEntry, usize)> = None;
        for (h, prefix, entry) in &self.kept {
            if h == host
                && prefix_covers(prefix, path)
                && best.is_none_or(|(_, len)| prefix.len() > len)
            {
                best = Some((entry, prefix.len()));
            }
        }
        best.map(|(entry, _)| entry)
    }
}

fn same_route(model: Option<&RouteEntry>, compiled: Option<&Route>) -> Result<(), String> {
    match (model, compiled) {
        (None, None) => Ok(()),
        (Some(entry), Some(route)) => {
            let addrs: Vec<SocketAddr> = entry.endpoints.iter().map(|e| e.addr).collect();
            let compiled_addrs: Vec<SocketAddr> =
                route.endpoints.iter().map(|t| t.endpoint.addr).collect();
            ensure!(
                *route.name == *entry.service
                    && addrs == compiled_addrs
                    && route.maintenance.is_some() == entry.maintenance.is_some(),
                "model: {} {:?} {addrs:?}; compiled: {} {compiled_addrs:?}",
                entry.service,
                entry.path_prefix,
                route.name
            );
            Ok(())
        }
        (model, compiled) => Err(format!(
            "model: {:?}; compiled: {:?}",
            model.map(|e| (&e.host, &e.path_prefix, &e.service)),
            compiled.map(|r| &r.name)
        )),
    }
}

/// Checks a table just applied; returns how many lookups it compared.
fn check_table(
    handle: &RouterHandle,
    table: &Arc<RouteTable>,
    text: &[u8],
) -> Result<usize, String> {
    ensure!(
        *handle.table() == **table,
        "the table read back is not the one applied"
    );
    let model = Model::new(table);
    let kept: Vec<&RouteEntry> = model.entries().collect();
    let wanted: HashSet<SocketAddr> = kept
        .iter()
        .flat_map(|e| e.endpoints.iter().map(|ep| ep.addr))
        .collect();
    let registered: HashSet<SocketAddr> = handle
        .shared
        .registry
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .upstreams
        .keys()
        .copied()
        .collect();
    ensure!(
        wanted == registered,
        "instances in the table {wanted:?}, in the registry {registered:?}"
    );

    let compiled = handle.shared.table.load();
    let mut limiters: HashMap<&str, Option<&Arc<crate::service::Limiter>>> = HashMap::new();
    for entry in &kept {
        let prefix = model_prefix(&entry.path_prefix);
        let path = if prefix.is_empty() { "/" } else { &prefix };
        let Some(route) = compiled.lookup(&normalize_host(&entry.host), path) else {
            return Err(format!(
                "route {:?} {:?} is not found by its own prefix",
                entry.host, entry.path_prefix
            ));
        };
        same_route(Some(entry), Some(route))?;
        // "The first route with limits sets them and all its routes share one budget."
        let first_limits = kept
            .iter()
            .find(|k| k.service == entry.service && k.limits.is_some())
            .and_then(|k| k.limits);
        let limits = route.limiter.as_ref().map(|l| l.limits);
        ensure!(
            limits == first_limits,
            "route {:?} {:?} of service {:?} has limits {limits:?}, the service's first are \
             {first_limits:?}",
            entry.host,
            entry.path_prefix,
            entry.service
        );
        let shared = limiters
            .entry(&entry.service)
            .or_insert(route.limiter.as_ref());
        ensure!(
            match (shared, route.limiter.as_ref()) {
                (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                (a, b) => a.is_none() && b.is_none(),
            },
            "the routes of service {:?} do not share one limiter",
            entry.service
        );
    }

    // Probe strings: words of the request, and the table's own hosts and prefixes, varied.
    let mut hosts: Vec<String> = Vec::new();
    let mut paths: Vec<String> = vec!["/".into(), String::new(), "//".into()];
    let text = String::from_utf8_lossy(text);
    for word in text.split(['\n', ' ']).take(4) {
        let word = word.trim_end_matches('\r');
        hosts.push(word.to_owned());
        paths.push(word.to_owned());
    }
    for entry in &table.routes {
        let h = &entry.host;
        hosts.extend([
            h.clone(),
            format!("{}:8080", h.to_ascii_uppercase()),
            format!("[{h}]:1"),
        ]);
        let p = &entry.path_prefix;
        paths.extend([p.clone(), format!("{p}/x"), format!("{p}x")]);
        if hosts.len() >= 16 && paths.len() >= 16 {
            break;
        }
    }
    hosts.truncate(16);
    paths.truncate(16);
    for raw in &hosts {
        let host = normalize_host(raw);
        // Case, a port and a trailing dot do not matter; nor does the port of a literal.
        if !raw.is_empty()
            && raw
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
            && !raw.ends_with('.')
        {
            for variant in [
                raw.to_ascii_uppercase(),
                format!("{raw}:8080"),
                format!("{raw}."),
            ] {
                ensure!(
                    normalize_host(&variant) == host,
                    "host {variant:?} normalises to {:?}, {raw:?} to {host:?}",
                    normalize_host(&variant)
                );
            }
        }
        if !raw.contains(']') {
            let literal = format!("[{raw}]");
            ensure!(
                normalize_host(&format!("{literal}:80")) == normalize_host(&literal),
                "the port of {literal:?} is not ignored"
            );
        }
        for path in &paths {
            let expected = model.route(&host, path);
            let found = compiled.lookup(&host, path);
            same_route(expected, found.map(|r| &**r))
                .map_err(|problem| format!("lookup {raw:?} {path:?}: {problem}"))?;
        }
    }
    Ok(hosts.len() * paths.len())
}

// ---------------------------------------------------------------------------------------------
// Answers

/// The host a request is routed by (RFC 9112 §3.2.2, RFC 9113 §8.3.1): the target's
/// authority when it has one, else the `Host` header (empty if unreadable or absent).
fn request_host<B>(request: &Request<B>) -> &str {
    match request.uri().authority() {
        Some(authority) => authority.as_str(),
        None => request
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or_default(),
    }
}

/// The `Allow` header of the 405 to CONNECT.
const CONNECT_ALLOW: &[u8] = b"GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS";

/// The answer the router must make without routing, if any: 400 to several `Host` headers
/// (RFC 9112 §3.2), to none on HTTP/1.1 when the target has no authority, to userinfo in the
/// authority (RFC 9110 §4.2.4), to an HTTP/2 `Host` that differs from `:authority` (RFC 9113
/// §8.3.1); 431 to an HTTP/2 request with more than 100 fields (cookie crumbs as one; `added`
/// fields the harness puts on before the proxy sees it count too); then
/// 405 to CONNECT.
fn refusal<B>(request: &Request<B>, added: usize) -> Option<(StatusCode, &'static str)> {
    let hosts = request.headers().get_all(header::HOST).iter().count();
    let authority = request.uri().authority();
    if hosts > 1 {
        Some((StatusCode::BAD_REQUEST, "more than one Host header\n"))
    } else if authority.is_some_and(|a| a.as_str().contains('@')) {
        Some((StatusCode::BAD_REQUEST, "userinfo in the request target\n"))
    } else if request.version() == Version::HTTP_2
        && authority.is_some_and(|a| {
            request
                .headers()
                .get(header::HOST)
                .is_some_and(|h| !h.as_bytes().eq_ignore_ascii_case(a.as_str().as_bytes()))
        })
    {
        Some((
            StatusCode::BAD_REQUEST,
            "the Host header differs from :authority\n",
        ))
    } else if hosts == 0 && authority.is_none() && request.version() == Version::HTTP_11 {
        Some((StatusCode::BAD_REQUEST, "no Host header\n"))
    } else if request.version() == Version::HTTP_2 && {
        let cookies = request.headers().get_all(header::COOKIE).iter().count();
        request.headers().len() + added - cookies.saturating_sub(1) > crate::server::MAX_HEADERS
    } {
        Some((
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "too many header fields\n",
        ))
    } else if request.method() == Method::CONNECT {
        Some((
            StatusCode::METHOD_NOT_ALLOWED,
            "CONNECT is not supported: this is a reverse proxy\n",
        ))
    } else {
        None
    }
}

fn connection_tokens(headers: &HeaderMap) -> Vec<String> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .filter(|t| !t.is_empty())
        .collect()
}

fn wants_upgrade<B>(request: &Request<B>) -> bool {
    request.version() == Version::HTTP_11
        && request.headers().contains_key(header::UPGRADE)
        && connection_tokens(request.headers())
            .iter()
            .any(|t| t == "upgrade")
}

/// Drops `x-fuzz-down` from the `Connection` header, so that the marker reaches the instance.
fn strip_marker_token(headers: &mut HeaderMap) {
    if !connection_tokens(headers)
        .iter()
        .any(|t| *t == X_FUZZ_DOWN.as_str())
    {
        return;
    }
    let values: Vec<HeaderValue> = headers
        .get_all(header::CONNECTION)
        .iter()
        .cloned()
        .collect();
    headers.remove(header::CONNECTION);
    for value in values {
        let value = match value.to_str() {
            Ok(text) => {
                let kept: Vec<&str> = text
                    .split(',')
                    .filter(|t| !t.trim().eq_ignore_ascii_case(X_FUZZ_DOWN.as_str()))
                    .collect();
                HeaderValue::from_str(&kept.join(",")).unwrap_or(value)
            }
            Err(_) => value,
        };
        headers.append(header::CONNECTION, value);
    }
}

fn nonce() -> u64 {
    static NONCE: OnceLock<u64> = OnceLock::new();
    *NONCE.get_or_init(|| std::collections::hash_map::RandomState::new().hash_one(0x7a11_u64))
}

fn values<'h>(headers: &'h HeaderMap, name: &str) -> Vec<&'h [u8]> {
    headers
        .get_all(name)
        .iter()
        .map(HeaderValue::as_bytes)
        .collect()
}

/// Whether a response to `method` with `status` has no body on the wire (RFC 9110 §6.4.1: a
/// successful CONNECT turns the connection into a tunnel).
fn no_body(method: &Method, status: StatusCode) -> bool {
    method == Method::HEAD
        || (method == Method::CONNECT && status.is_success())
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
}

/// Hop-by-hop headers a response from the proxy must not carry (before hyper frames it).
fn check_response_headers(headers: &HeaderMap, status: StatusCode) -> Result<(), String> {
    for name in [
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        X_HOP_SECRET.as_str(),
    ] {
        ensure!(!headers.contains_key(name), "the answer carries {name}");
    }
    if status == StatusCode::SWITCHING_PROTOCOLS {
        ensure!(
            values(headers, "connection") == [b"upgrade"] && headers.contains_key(header::UPGRADE),
            "a 101 without Upgrade and Connection: upgrade"
        );
    } else {
        ensure!(
            !headers.contains_key(header::CONNECTION) && !headers.contains_key(header::UPGRADE),
            "the answer carries Connection or Upgrade"
        );
    }
    Ok(())
}

/// Checks the proxy's answer to request `id`; returns the body the client must receive.
fn check_answer(
    state: &State,
    id: usize,
    model: Option<&RouteEntry>,
    compiled: Option<&Route>,
    info: ConnInfo,
    parts: &http::response::Parts,
    local: Option<&Bytes>,
) -> Result<Bytes, String> {
    let record = &state.records[id];
    let status = parts.status;
    let headers = &parts.headers;
    check_response_headers(headers, status)?;
    let seq = headers
        .get(&X_FUZZ_SEQ)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    let retry_after = headers.get(header::RETRY_AFTER).map(HeaderValue::as_bytes);
    if let Some((expected, body)) = record.refusal {
        ensure!(
            status == expected && seq.is_none() && local.map(|b| &b[..]) == Some(body.as_bytes()),
            "to be refused with {expected} {body:?}, yet answered {status} {local:?}"
        );
        ensure!(
            status != StatusCode::METHOD_NOT_ALLOWED
                || headers.get(header::ALLOW).map(HeaderValue::as_bytes) == Some(CONNECT_ALLOW),
            "a 405 with Allow {:?}",
            headers.get(header::ALLOW)
        );
        return Ok(Bytes::from_static(body.as_bytes()));
    }
    let Some(entry) = model else {
        let expected = format!("no route for {}{}\n", record.host, record.path);
        ensure!(
            status == StatusCode::NOT_FOUND && local.map(|b| &b[..]) == Some(expected.as_bytes()),
            "unrouted, yet answered {status} {local:?}"
        );
        return Ok(Bytes::from(expected));
    };
    if let Some(maintenance) = &entry.maintenance {
        let page = compiled
            .and_then(|r| r.maintenance.clone())
            .unwrap_or_default();
        ensure!(
            status == StatusCode::SERVICE_UNAVAILABLE
                && retry_after == Some(b"120")
                && local == Some(&page)
                && maintenance
                    .page_html
                    .as_ref()
                    .is_none_or(|p| p.as_bytes() == &page[..]),
            "in maintenance, yet answered {status} {local:?}"
        );
        return Ok(page);
    }
    if let Some(seq) = seq {
        let Some(up) = state.upstream.get(seq) else {
            return Err(format!("an answer from unknown upstream request {seq}"));
        };
        ensure!(
            entry.endpoints.iter().any(|e| Some(e.addr) == state.live),
            "answered by the fake upstream, which is not an endpoint of {:?}",
            entry.service
        );
        let markers = values(&up.headers, X_FUZZ_DOWN.as_str());
        ensure!(
            markers == [record.marker.as_bytes()],
            "got the answer to upstream request {seq}, which was for {:?}",
            String::from_utf8_lossy(&markers.concat())
        );
        ensure!(
            up.status == Some(status),
            "the upstream answered {:?}, the client gets {status}",
            up.status
        );
        check_forwarded(record, up, info)?;
        return Ok(up.sent.clone());
    }
    let Some(body) = local else {
        return Err(format!(
            "an answer ({status}) from an instance without {X_FUZZ_SEQ}"
        ));
    };
    let service = &entry.service;
    let text = String::from_utf8_lossy(body);
    match status {
        StatusCode::SERVICE_UNAVAILABLE if retry_after == Some(b"1") => {
            ensure!(
                compiled.is_some_and(|r| r.limiter.is_some()),
                "an overload answer for {service:?}, which has no limits"
            );
            ensure!(
                text.starts_with(&format!("{service} is overloaded (")),
                "overload body {text:?}"
            );
        }
        StatusCode::SERVICE_UNAVAILABLE => {
            ensure!(
                entry.endpoints.is_empty(),
                "503 for {service:?}, which has endpoints"
            );
            ensure!(
                text == format!("no healthy instance of {service}\n"),
                "503 body {text:?}"
            );
        }
        StatusCode::BAD_GATEWAY => {
            ensure!(
                !entry.endpoints.is_empty(),
                "502 for {service:?}, which has no endpoints"
            );
            let unreachable = format!("upstream {service} unreachable\n");
            let failed = format!("upstream {service} failed\n");
            let live = entry.endpoints.iter().any(|e| Some(e.addr) == state.live);
            ensure!(
                text == unreachable || (text == failed && live),
                "502 body {text:?}"
            );
        }
        StatusCode::BAD_REQUEST => {}
        _ => return Err(format!("unexpected answer {status} {text:?}")),
    }
    Ok(body.clone())
}

/// What the instance must have received for `record`.
fn check_forwarded(record: &Record, up: &UpRecord, info: ConnInfo) -> Result<(), String> {
    let h = &up.headers;
    ensure!(up.method == record.method, "method became {}", up.method);
    ensure!(
        up.version == Version::HTTP_11,
        "forwarded as {:?}",
        up.version
    );
    for name in [
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
    ] {
        ensure!(!h.contains_key(name), "{name} was forwarded");
    }
    if record.upgrade {
        let upgrade = record
            .headers
            .get(header::UPGRADE)
            .map(HeaderValue::as_bytes);
        ensure!(
            values(h, "connection") == [b"upgrade"]
                && h.get(header::UPGRADE).map(HeaderValue::as_bytes) == upgrade,
            "a protocol switch forwarded without its Upgrade and Connection: upgrade"
        );
    } else {
        ensure!(
            !h.contains_key(header::CONNECTION) && !h.contains_key(header::UPGRADE),
            "Connection or Upgrade was forwarded"
        );
    }
    let te = values(h, "transfer-encoding");
    ensure!(
        te.is_empty() || te == [b"chunked"],
        "forwarded with Transfer-Encoding {te:?}"
    );
    for token in connection_tokens(&record.headers) {
        let readded = [
            "host",
            "content-length",
            "transfer-encoding",
            "x-forwarded-for",
            "x-forwarded-proto",
            "x-forwarded-host",
            "x-request-id",
            "upgrade",
            "connection",
            "x-fuzz-down",
        ];
        if !readded.contains(&token.as_str()) {
            ensure!(
                !h.contains_key(token.as_str()),
                "{token}, named in the client's Connection, was forwarded"
            );
        }
    }
    // The routed host: the target's authority, which wins over `Host`, else `Host`.
    let host = match record.uri.authority() {
        Some(authority) => Some(authority.as_str().as_bytes().to_vec()),
        None => record
            .headers
            .get(header::HOST)
            .map(|v| v.as_bytes().to_vec()),
    };
    if let Some(host) = host {
        ensure!(
            values(h, "host") == [&host[..]],
            "Host {:?} forwarded as {:?}",
            String::from_utf8_lossy(&host),
            values(h, "host")
        );
        ensure!(
            values(h, "x-forwarded-host") == [&host[..]],
            "X-Forwarded-Host {:?}",
            values(h, "x-forwarded-host")
        );
    } else {
        // The fuzzed client is no trusted proxy: what it claims is not passed on.
        ensure!(
            values(h, "x-forwarded-host").is_empty(),
            "an untrusted client's X-Forwarded-Host {:?} was forwarded",
            values(h, "x-forwarded-host")
        );
    }
    ensure!(
        values(h, "forwarded").is_empty(),
        "an untrusted client's Forwarded {:?} was forwarded",
        values(h, "forwarded")
    );
    let forwarded_for = values(h, "x-forwarded-for");
    let client = info.remote.ip().to_canonical().to_string();
    ensure!(
        forwarded_for == [client.as_bytes()],
        "X-Forwarded-For {forwarded_for:?} is not exactly {client} (the client is not trusted)"
    );
    let proto: &[u8] = if info.tls { b"https" } else { b"http" };
    ensure!(
        values(h, "x-forwarded-proto") == [proto],
        "X-Forwarded-Proto {:?}",
        values(h, "x-forwarded-proto")
    );
    let valid = |v: &[u8]| !v.is_empty() && v.len() <= 200 && v.iter().all(u8::is_ascii_graphic);
    let ids = values(h, "x-request-id");
    let id = ids.first().copied();
    ensure!(
        ids.len() == 1 && id.is_some_and(valid),
        "X-Request-Id {ids:?}"
    );
    // The client's first, when valid; otherwise a new one (not one of the client's others).
    match values(&record.headers, "x-request-id")[..] {
        [] => {}
        [theirs, ..] if valid(theirs) => ensure!(
            id == Some(theirs),
            "the client's X-Request-Id {theirs:?} became {id:?}"
        ),
        [_, ref others @ ..] => ensure!(
            !others.iter().any(|o| Some(*o) == id),
            "the client's first X-Request-Id was invalid, a later one {id:?} went on"
        ),
    }
    let target = if record.uri.scheme().is_some() || record.uri.authority().is_some() {
        record
            .uri
            .path_and_query()
            .map_or_else(|| "/".to_owned(), |pq| pq.as_str().to_owned())
    } else {
        record.uri.to_string()
    };
    ensure!(
        up.uri.to_string() == target,
        "target {} forwarded as {}",
        record.uri,
        up.uri
    );
    let lengths = values(&record.headers, "content-length");
    if let (Some(body), [length], false) = (
        &up.body,
        &lengths[..],
        record.headers.contains_key(header::TRANSFER_ENCODING),
    ) {
        if let Some(length) = std::str::from_utf8(length)
            .ok()
            .and_then(|l| l.parse::<usize>().ok())
        {
            ensure!(
                body.len() == length,
                "Content-Length {length}, {} bytes forwarded",
                body.len()
            );
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The fake upstream

async fn fake_upstream(listener: TcpListener, state: Shared, responses: Vec<u8>) {
    while let Ok((stream, _)) = listener.accept().await {
        let (state, responses) = (state.clone(), responses.clone());
        tokio::spawn(async move {
            let service = service_fn(move |request: Request<Incoming>| {
                let (state, responses) = (state.clone(), responses.clone());
                async move { Ok::<_, Infallible>(upstream_answer(&state, &responses, request).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                // The router adds a few headers to the hundred it accepts.
                .max_headers(MAX_HEADERS * 2)
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades()
                .await;
        });
    }
}

/// A body in a few frames, so the router streams a chunked answer.
struct Chunks(Vec<Bytes>);

impl Body for Chunks {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(self.get_mut().0.pop().map(|b| Ok(Frame::data(b))))
    }
}

/// Answers request `seq` with kind `responses[seq % len]`:
/// 0 `200` with a body; 1 the same with every hop-by-hop header and a `Connection`-named one;
/// 2 `204`; 3 `304`; 4 `503` with `Retry-After: 7`; 5 `200` in chunks; 6 `101` and a tunnel
/// (`tunnel-hello:` then an echo) when the request asks to upgrade, else as 0; 7 `200` with
/// `Connection: close`.
async fn upstream_answer(
    state: &Shared,
    responses: &[u8],
    mut request: Request<Incoming>,
) -> Response<Either<Full<Bytes>, Chunks>> {
    let seq = {
        let mut state = lock(state);
        state.upstream.push(UpRecord {
            method: request.method().clone(),
            version: request.version(),
            uri: request.uri().clone(),
            headers: request.headers().clone(),
            body: None,
            status: None,
            sent: Bytes::new(),
        });
        state.upstream.len() - 1
    };
    let kind = responses
        .get(seq % responses.len().max(1))
        .copied()
        .unwrap_or(0);
    let upgrade = request.headers().get(header::UPGRADE).cloned();
    let switch = (kind == 6).then_some(upgrade).flatten();
    let on_upgrade = switch.is_some().then(|| hyper::upgrade::on(&mut request));
    let received = request
        .into_body()
        .collect()
        .await
        .ok()
        .map(|c| c.to_bytes());
    let text = Bytes::from(format!("upstream answer {seq}\n"));
    let response = Response::new(Either::Left(Full::new(text.clone())));
    let mut sent = text.clone();
    let (mut parts, mut body) = response.into_parts();
    let headers = &mut parts.headers;
    headers.insert(X_FUZZ_SEQ, HeaderValue::from(seq));
    match kind {
        1 => {
            for (name, value) in [
                ("connection", "x-hop-secret"),
                ("x-hop-secret", "1"),
                ("keep-alive", "timeout=5"),
                ("proxy-authenticate", "Basic"),
                ("proxy-connection", "keep-alive"),
                ("trailer", "x-t"),
                ("te", "trailers"),
                ("upgrade", "h2c"),
            ] {
                headers.insert(name, HeaderValue::from_static(value));
            }
        }
        2 | 3 => {
            parts.status = if kind == 2 {
                StatusCode::NO_CONTENT
            } else {
                StatusCode::NOT_MODIFIED
            };
            body = Either::Left(Full::new(Bytes::new()));
            sent = Bytes::new();
        }
        4 => {
            parts.status = StatusCode::SERVICE_UNAVAILABLE;
            headers.insert(header::RETRY_AFTER, HeaderValue::from_static("7"));
        }
        5 => {
            let chunks = ["chunk one;", "chunk two;", "chunk three\n"];
            sent = Bytes::from(chunks.concat());
            body = Either::Right(Chunks(
                chunks.iter().rev().map(|c| Bytes::from(*c)).collect(),
            ));
        }
        6 => {
            if let (Some(protocol), Some(on_upgrade)) = (switch, on_upgrade) {
                parts.status = StatusCode::SWITCHING_PROTOCOLS;
                headers.insert(header::UPGRADE, protocol);
                headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
                body = Either::Left(Full::new(Bytes::new()));
                sent = Bytes::new();
                tokio::spawn(async move {
                    if let Ok(upgraded) = on_upgrade.await {
                        let (mut reader, mut writer) = tokio::io::split(TokioIo::new(upgraded));
                        if writer.write_all(TUNNEL_HELLO).await.is_ok() {
                            let _ = tokio::io::copy(&mut reader, &mut writer).await;
                        }
                        let _ = writer.shutdown().await;
                    }
                });
            }
        }
        7 => {
            headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        _ => {}
    }
    let mut state = lock(state);
    let up = &mut state.upstream[seq];
    up.body = received;
    up.status = Some(parts.status);
    up.sent = sent;
    Response::from_parts(parts, body)
}

// ---------------------------------------------------------------------------------------------
// What the client received

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

struct Head {
    status: u16,
    headers: Vec<(String, Vec<u8>)>,
}

impl Head {
    fn values(&self, name: &str) -> Vec<&[u8]> {
        self.headers
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| &v[..])
            .collect()
    }
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// A response head at the start of `buf`, and its length.
fn parse_head(buf: &[u8]) -> Result<(Head, usize), String> {
    let end = find(buf, b"\r\n\r\n").ok_or("a response head without its end")?;
    let mut lines = buf[..end]
        .split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l));
    let status_line = lines.next().unwrap_or_default();
    ensure!(
        (status_line.starts_with(b"HTTP/1.1 ") || status_line.starts_with(b"HTTP/1.0 "))
            && status_line.len() >= 12
            && status_line[9..12].iter().all(u8::is_ascii_digit)
            && (status_line.len() == 12 || status_line[12] == b' ')
            && !status_line.iter().any(|&b| b < 0x20 && b != b'\t'),
        "bad status line {:?}",
        String::from_utf8_lossy(status_line)
    );
    let status = std::str::from_utf8(&status_line[9..12])
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let mut headers = Vec::new();
    for line in lines {
        let colon = line.iter().position(|&b| b == b':');
        let Some(colon) = colon.filter(|&c| c > 0 && line[..c].iter().all(|&b| is_tchar(b))) else {
            return Err(format!(
                "bad header line {:?}",
                String::from_utf8_lossy(line)
            ));
        };
        let value = line[colon + 1..].trim_ascii();
        ensure!(
            !value.iter().any(|&b| (b < 0x20 && b != b'\t') || b == 0x7f),
            "bad header value {:?}",
            String::from_utf8_lossy(value)
        );
        headers.push((
            String::from_utf8_lossy(&line[..colon]).to_ascii_lowercase(),
            value.to_vec(),
        ));
    }
    Ok((Head { status, headers }, end + 4))
}

/// A response body at the start of `buf` framed as `head` says, and its length on the wire.
fn parse_body(buf: &[u8], head: &Head, no_body: bool) -> Result<(Vec<u8>, usize), String> {
    if no_body {
        return Ok((Vec::new(), 0));
    }
    let te = head.values("transfer-encoding");
    if !te.is_empty() {
        ensure!(te == [b"chunked"], "Transfer-Encoding {te:?}");
        let mut body = Vec::new();
        let mut pos = 0;
        loop {
            let line_end = find(&buf[pos..], b"\r\n").ok_or("a chunk size line without its end")?;
            let line = &buf[pos..pos + line_end];
            let size = line.split(|&b| b == b';').next().unwrap_or_default();
            let size = std::str::from_utf8(size)
                .ok()
                .and_then(|s| usize::from_str_radix(s.trim(), 16).ok())
                .ok_or_else(|| format!("bad chunk size {:?}", String::from_utf8_lossy(line)))?;
            pos += line_end + 2;
            if size == 0 {
                loop {
                    let end = find(&buf[pos..], b"\r\n").ok_or("trailers without their end")?;
                    pos += end + 2;
                    if end == 0 {
                        return Ok((body, pos));
                    }
                }
            }
            ensure!(
                buf.len() >= pos + size + 2 && &buf[pos + size..pos + size + 2] == b"\r\n",
                "a chunk of {size} bytes cut short"
            );
            body.extend_from_slice(&buf[pos..pos + size]);
            pos += size + 2;
        }
    }
    let lengths = head.values("content-length");
    if let Some(first) = lengths.first() {
        ensure!(
            lengths.iter().all(|l| l == first),
            "different Content-Lengths {lengths:?}"
        );
        let length = std::str::from_utf8(first)
            .ok()
            .and_then(|l| l.parse::<usize>().ok())
            .ok_or_else(|| format!("bad Content-Length {first:?}"))?;
        ensure!(
            buf.len() >= length,
            "a body of {length} bytes cut short at {}",
            buf.len()
        );
        return Ok((buf[..length].to_vec(), length));
    }
    // Delimited by the end of the connection.
    Ok((buf.to_vec(), buf.len()))
}

/// Hop-by-hop headers on the wire: only those hyper itself writes, with the values it writes.
fn check_wire_headers(head: &Head) -> Result<(), String> {
    for name in [
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        X_HOP_SECRET.as_str(),
    ] {
        ensure!(head.values(name).is_empty(), "{name} on the wire");
    }
    let switching = head.status == 101;
    for value in head.values("connection") {
        for token in value.split(|&b| b == b',') {
            let token = token.trim_ascii().to_ascii_lowercase();
            ensure!(
                token == b"close" || token == b"keep-alive" || (switching && token == b"upgrade"),
                "Connection: {:?} on the wire",
                String::from_utf8_lossy(value)
            );
        }
    }
    ensure!(
        switching || head.values("upgrade").is_empty(),
        "Upgrade on a {} answer",
        head.status
    );
    Ok(())
}

/// The HTTP/1 byte stream the client received.
fn check_http1(
    transcript: &[u8],
    records: &[Record],
    sent: &[u8],
    report: &mut Report,
) -> Result<(), String> {
    let mut pos = 0;
    let mut last: Option<usize> = None;
    while pos < transcript.len() {
        let (head, length) = parse_head(&transcript[pos..])?;
        pos += length;
        check_wire_headers(&head)?;
        let record_id = head.values("x-fuzz-record").first().and_then(|v| {
            std::str::from_utf8(v)
                .ok()
                .and_then(|v| v.parse::<usize>().ok())
        });
        let Some(id) = record_id else {
            if (100..200).contains(&head.status) && head.status != 101 {
                // 100 Continue, written by hyper when the body is first read.
                continue;
            }
            // One of hyper's own error answers: the connection ends after it.
            ensure!(
                [400, 408, 413, 414, 431, 500, 501, 505].contains(&head.status),
                "an answer ({}) the proxy did not make",
                head.status
            );
            let (_, length) = parse_body(&transcript[pos..], &head, false)?;
            pos += length;
            ensure!(pos == transcript.len(), "bytes after hyper's error answer");
            report.statuses.push(head.status);
            break;
        };
        ensure!(
            last.is_none_or(|last| id > last),
            "answer {id} after answer {last:?}: out of order or twice"
        );
        last = Some(id);
        let record = records
            .get(id)
            .ok_or_else(|| format!("answer {id} to an unknown request"))?;
        ensure!(
            record.status.map(|s| s.as_u16()) == Some(head.status),
            "answer {id}: {} on the wire, {:?} from the proxy",
            head.status,
            record.status
        );
        report.statuses.push(head.status);
        if head.status == 101 {
            // The rest is the instance's tunnel: its greeting, then an echo of what the client
            // sent after its request.
            let rest = &transcript[pos..];
            match rest.strip_prefix(TUNNEL_HELLO) {
                Some(echo) => ensure!(
                    sent.ends_with(echo),
                    "the tunnel echoed {:?}, not the end of what was sent",
                    String::from_utf8_lossy(echo)
                ),
                None => ensure!(
                    TUNNEL_HELLO.starts_with(rest),
                    "the tunnel carried {:?}",
                    String::from_utf8_lossy(rest)
                ),
            }
            report.tunnelled = !rest.is_empty();
            return Ok(());
        }
        let status = StatusCode::from_u16(head.status).map_err(|e| e.to_string())?;
        let (body, length) =
            parse_body(&transcript[pos..], &head, no_body(&record.method, status))?;
        pos += length;
        if let Some(expected) = &record.body {
            let expected: &[u8] = if no_body(&record.method, status) {
                b""
            } else {
                expected
            };
            ensure!(
                body == expected,
                "answer {id}: body {:?} on the wire, {:?} from the proxy",
                String::from_utf8_lossy(&body),
                String::from_utf8_lossy(expected)
            );
        }
    }
    Ok(())
}

/// The HTTP/2 byte stream the client received: whole frames, SETTINGS first.
fn check_frames(transcript: &[u8], report: &mut Report) -> Result<(), String> {
    let mut pos = 0;
    while pos < transcript.len() {
        ensure!(transcript.len() >= pos + 9, "a frame header cut short");
        let frame = &transcript[pos..pos + 9];
        let length =
            usize::from(frame[0]) << 16 | usize::from(frame[1]) << 8 | usize::from(frame[2]);
        ensure!(
            pos > 0 || (frame[3] == 4 && frame[5..9] == [0; 4]),
            "the first frame is not SETTINGS: {frame:?}"
        );
        ensure!(frame[5] & 0x80 == 0, "the reserved bit is set");
        ensure!(
            transcript.len() >= pos + 9 + length,
            "a frame of {length} bytes cut short"
        );
        pos += 9 + length;
        report.h2_frames += 1;
    }
    Ok(())
}

fn check_h2_answer(
    parts: &http::response::Parts,
    body: &Bytes,
    records: &[Record],
) -> Result<(), String> {
    check_response_headers(&parts.headers, parts.status).map_err(|e| e + " (HTTP/2)")?;
    let id = parts
        .headers
        .get(&X_FUZZ_RECORD)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
        .ok_or_else(|| format!("an answer ({}) the proxy did not make", parts.status))?;
    let record = records
        .get(id)
        .ok_or_else(|| format!("answer {id} to an unknown request"))?;
    ensure!(
        record.status == Some(parts.status),
        "answer {id}: {} received, {:?} from the proxy",
        parts.status,
        record.status
    );
    if let Some(expected) = &record.body {
        let expected: &[u8] = if no_body(&record.method, parts.status) {
            b""
        } else {
            expected
        };
        ensure!(
            body == expected,
            "answer {id}: body {body:?}, {expected:?} from the proxy"
        );
    }
    Ok(())
}

/// Requests for the HTTP/2 client, from their text form.
fn h2_requests(text: &[u8]) -> Vec<Request<Full<Bytes>>> {
    let mut requests = Vec::new();
    let mut rest = text;
    while !rest.is_empty() {
        let (one, next) = match find(rest, b"\n&&\n") {
            Some(i) => (&rest[..i], &rest[i + 4..]),
            None => (rest, &b""[..]),
        };
        rest = next;
        let (head, body) = match find(one, b"\n\n") {
            Some(i) => (&one[..i], &one[i + 2..]),
            None => (one, &b""[..]),
        };
        let mut lines = head
            .split(|&b| b == b'\n')
            .map(|l| l.strip_suffix(b"\r").unwrap_or(l));
        let first = String::from_utf8_lossy(lines.next().unwrap_or_default()).into_owned();
        let (method, target) = first.split_once(' ').unwrap_or((&first, "/"));
        let mut headers = HeaderMap::new();
        for line in lines {
            let Some(colon) = line.iter().position(|&b| b == b':') else {
                continue;
            };
            if let (Ok(name), Ok(value)) = (
                HeaderName::from_bytes(line[..colon].trim_ascii()),
                HeaderValue::from_bytes(line[colon + 1..].trim_ascii()),
            ) {
                headers.append(name, value);
            }
        }
        let uri = if target.contains("://") {
            target.to_owned()
        } else {
            let authority = headers
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .unwrap_or("h2c.fuzz");
            format!("http://{authority}{target}")
        };
        let Ok(mut request) = Request::builder()
            .method(method)
            .uri(uri)
            .version(Version::HTTP_2)
            .body(Full::new(Bytes::copy_from_slice(body)))
        else {
            continue;
        };
        *request.headers_mut() = headers;
        requests.push(request);
    }
    requests
}

// ---------------------------------------------------------------------------------------------
// After the run

fn add(classes: &mut StatusClasses, status: StatusCode) {
    match status.as_u16() / 100 {
        1 => classes.informational += 1,
        2 => classes.success += 1,
        3 => classes.redirection += 1,
        4 => classes.client_error += 1,
        _ => classes.server_error += 1,
    }
}

/// Once every task is gone: counters match the answers, nothing is held, `/metrics` parses.
fn check_settled(handle: &RouterHandle, state: &State) -> Result<(), String> {
    let mut expected: BTreeMap<Option<&str>, StatusClasses> = BTreeMap::new();
    for record in &state.records {
        if let Some(status) = record.status {
            add(
                expected.entry(record.service.as_deref()).or_default(),
                status,
            );
        }
    }
    // Every upstream request came from a client request, which was sent at most twice, or
    // when it is idempotent at most once per attempt.
    let mut forwarded: HashMap<&[u8], usize> = HashMap::new();
    for (seq, up) in state.upstream.iter().enumerate() {
        let markers = values(&up.headers, X_FUZZ_DOWN.as_str());
        let known = markers.len() == 1
            && state
                .records
                .iter()
                .any(|r| r.marker.as_bytes() == markers[0]);
        ensure!(
            known,
            "upstream request {seq} ({} {}) is no client request: {:?}",
            up.method,
            up.uri,
            markers
        );
        ensure!(
            up.method != Method::CONNECT,
            "upstream request {seq} is a CONNECT"
        );
        ensure!(
            !state
                .records
                .iter()
                .any(|r| r.refusal.is_some() && r.marker.as_bytes() == markers[0]),
            "upstream request {seq} is a request the router had to refuse"
        );
        let idempotent = state
            .records
            .iter()
            .find(|r| r.marker.as_bytes() == markers[0])
            .is_some_and(|r| {
                matches!(r.method, Method::GET | Method::HEAD | Method::OPTIONS)
                    || r.headers.contains_key("idempotency-key")
            });
        let most = if idempotent {
            usize::from(crate::MAX_ATTEMPTS)
        } else {
            2
        };
        let count = forwarded.entry(markers[0]).or_default();
        *count += 1;
        ensure!(*count <= most, "a request was sent upstream {count} times");
    }
    let stats = handle.stats();
    let unrouted = expected.remove(&None).unwrap_or_default();
    ensure!(
        stats.unrouted == unrouted,
        "unrouted counters {:?}, answers {unrouted:?}",
        stats.unrouted
    );
    for (name, counted) in &stats.services {
        let answered = expected.remove(&Some(name.as_str())).unwrap_or_default();
        ensure!(
            *counted == answered,
            "counters of {name:?}: {counted:?}, answers {answered:?}"
        );
    }
    ensure!(
        expected.is_empty(),
        "answers of services without counters: {expected:?}"
    );
    {
        let registry = handle
            .shared
            .registry
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for (name, service) in &registry.services {
            ensure!(
                service.in_flight.get() == 0,
                "{name:?} has {} requests in flight after the end",
                service.in_flight.get()
            );
            if let Some(limiter) = service.current_limiter() {
                let queued = limiter.queued.load(std::sync::atomic::Ordering::Relaxed);
                ensure!(
                    queued == 0,
                    "{name:?} has {queued} requests queued after the end"
                );
            }
        }
        for upstream in registry.upstreams.values() {
            let outstanding = upstream
                .outstanding
                .load(std::sync::atomic::Ordering::Relaxed);
            ensure!(
                outstanding == 0,
                "{} has {outstanding} requests outstanding after the end",
                upstream.addr
            );
        }
    }
    check_metrics(&handle.metrics_text())
}

/// Every line of the exposition text is a comment or `name{labels} value`.
fn check_metrics(text: &str) -> Result<(), String> {
    for line in text.split('\n') {
        if line.is_empty() {
            continue;
        }
        if line.starts_with('#') {
            ensure!(
                line.starts_with("# HELP berth_router_")
                    || line.starts_with("# TYPE berth_router_"),
                "metrics comment {line:?}"
            );
            continue;
        }
        let bytes = line.as_bytes();
        let name_end = bytes
            .iter()
            .position(|&b| !(b.is_ascii_alphanumeric() || b == b'_' || b == b':'))
            .unwrap_or(bytes.len());
        ensure!(line.starts_with("berth_router_"), "metrics line {line:?}");
        let mut pos = name_end;
        if bytes.get(pos) == Some(&b'{') {
            pos += 1;
            loop {
                let label_end = bytes[pos..]
                    .iter()
                    .position(|&b| !(b.is_ascii_alphanumeric() || b == b'_'))
                    .map_or(bytes.len(), |e| pos + e);
                ensure!(
                    label_end > pos && bytes[label_end..].starts_with(b"=\""),
                    "metrics labels in {line:?}"
                );
                pos = label_end + 2;
                loop {
                    match bytes.get(pos) {
                        Some(b'\\') => {
                            ensure!(
                                matches!(bytes.get(pos + 1), Some(b'\\' | b'"' | b'n')),
                                "a bad escape in {line:?}"
                            );
                            pos += 2;
                        }
                        Some(b'"') => break,
                        Some(_) => pos += 1,
                        None => return Err(format!("an unterminated label in {line:?}")),
                    }
                }
                pos += 1;
                match bytes.get(pos) {
                    Some(b',') => pos += 1,
                    Some(b'}') => {
                        pos += 1;
                        break;
                    }
                    _ => return Err(format!("metrics labels in {line:?}")),
                }
            }
        }
        let value = line[pos..].strip_prefix(' ');
        ensure!(
            value.is_some_and(|v| v.parse::<f64>().is_ok()),
            "metrics value in {line:?}"
        );
    }
    Ok(())
}
