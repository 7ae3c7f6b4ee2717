//! One request through the proxy: route it, admit it, rewrite its headers, forward it with at
//! most one retry, stream the answer.
//!
//! Bodies are streamed, never fully buffered, with one bounded exception: a request body with
//! a `Content-Length` of at most [`REPLAY_LIMIT`] is read first, so that the request can be
//! replayed on another instance when a reused keep-alive connection turns out to have been
//! closed by the app (hyper#2136). Larger and chunked bodies stream, and are replayed only if
//! hyper hands the request back unsent. Response bodies always stream: the first bytes of a
//! slow response reach the client as soon as the instance sends them.
//!
//! # Retries
//! A failed attempt is retried on another endpoint when there is one, and only when
//! [`ProxyError::retry_safe`] says so:
//! - nothing was sent (connect failure, request handed back): any request;
//! - a reused connection died before any response byte: any request whose body is replayable;
//! - the request was sent and the exchange failed: only idempotent requests — `GET`, `HEAD`,
//!   `OPTIONS`, or any request carrying an `Idempotency-Key` header (the IETF httpapi draft's
//!   opt-in). A non-idempotent request is never sent twice.
//!
//! Failing over to an endpoint that is not ejected is free: the instance that failed is
//! ejected (or its connection was dead), so the retry adds no load to a failing service, and a
//! `GET` that meets a killed instance is answered by a live one however many died at once (up
//! to [`MAX_ATTEMPTS`] endpoints per request; a request that is not idempotent goes out on a
//! connection at most twice). When every other endpoint is ejected too — the
//! whole service failing — or the only one is the same, one retry at most, paid from the
//! service's retry budget (retries add at most 20% to its requests, plus a reserve).
//!
//! # Timeouts
//! A small body must arrive within the body timeout (else `408`, nothing forwarded); an
//! instance must send its response head within the route's timeout once it has the whole
//! request (else `504`, not retried: the app may still be acting on it).

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::request::Parts;
use http::uri::{PathAndQuery, Uri};
use http::{Method, Request, Response, StatusCode, Version};
use http_body_util::{BodyExt, Either, Full, Limited};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper_util::rt::TokioIo;
use tokio::sync::OwnedSemaphorePermit;

use crate::compiled::{normalize_host, Choice, Route};
use crate::error::ProxyError;
use crate::upstream::{now_nanos, Conn, UpBody, Upstream};
use crate::RouterHandle;

/// What the proxy answers with: an instance's streamed body, or a short body of its own.
pub(crate) type ProxyBody = Either<UpstreamBody, Full<Bytes>>;

/// Request bodies up to this size (by `Content-Length`) are read before forwarding, so they can
/// be replayed; see the module docs.
pub const REPLAY_LIMIT: u64 = 64 * 1024;

/// How long reading such a small body may take (slow-body guard); past it the client gets
/// `408` and nothing is forwarded. The default of [`crate::RouterConfig::body_timeout`].
pub const BODY_TIMEOUT: Duration = Duration::from_secs(30);

/// How long an instance may take to send its response head once it has the whole request,
/// unless the route says otherwise ([`crate::RouteEntry::timeout_ms`]); past it the client gets
/// `504`. nginx's `proxy_read_timeout` default: generous for slow pages, finite for a hung
/// backend. The default of [`crate::RouterConfig::response_timeout`].
pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(60);

/// The most endpoints one request is tried on. Failing over from a dead instance to a live one
/// is not limited by the retry budget (see the module docs), so this bounds a request's
/// attempts when several instances died at once (a killed instance stays in the table until
/// the registry notices).
pub const MAX_ATTEMPTS: u8 = 5;

/// The most header fields an HTTP/2 request may carry, as hyper allows an HTTP/1.1 one
/// ([`crate::server::MAX_HEADERS`]); more gets `431`. Cookie crumbs (RFC 9113 §8.2.3 lets a
/// client split `Cookie` into one field per cookie) count as one field.
const MAX_H2_HEADERS: usize = crate::server::MAX_HEADERS;

/// `Retry-After` on overload 503s: come back in a second, the queue will have moved.
const RETRY_AFTER_OVERLOAD: HeaderValue = HeaderValue::from_static("1");
/// `Retry-After` on maintenance 503s.
const RETRY_AFTER_MAINTENANCE: HeaderValue = HeaderValue::from_static("120");

/// One downstream connection, as the proxy needs to know it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ConnInfo {
    pub(crate) remote: SocketAddr,
    /// Whether the client spoke TLS (sets `X-Forwarded-Proto`).
    pub(crate) tls: bool,
    /// Whether the peer is a configured trusted proxy ([`crate::RouterConfig::trusted_proxies`]):
    /// only then are its `X-Forwarded-*` headers kept (and `X-Forwarded-For` appended to).
    pub(crate) trusted: bool,
}

/// State shared by every connection of one [`crate::serve_with`] call.
pub(crate) struct Proxy {
    pub(crate) handle: RouterHandle,
    pub(crate) access_log: bool,
    /// See [`BODY_TIMEOUT`].
    pub(crate) body_timeout: Duration,
    /// The response-head timeout of routes that set none; see [`RESPONSE_TIMEOUT`].
    pub(crate) response_timeout: Duration,
}

/// A short response generated by the router itself.
fn local(status: StatusCode, content_type: &'static str, body: Bytes) -> Response<ProxyBody> {
    let mut response = Response::new(Either::Right(Full::new(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

fn plain(status: StatusCode, body: String) -> Response<ProxyBody> {
    local(status, "text/plain; charset=utf-8", Bytes::from(body))
}

/// Accounting for one admitted request, released when its response body ends (or the client
/// goes away): the in-flight gauge, the latency histogram, the concurrency slot, and the
/// chosen endpoint's outstanding count.
pub(crate) struct Guard {
    route: Arc<Route>,
    /// The endpoint whose outstanding count this request holds.
    endpoint: Option<usize>,
    started: Instant,
    _permit: Option<OwnedSemaphorePermit>,
    /// A WebSocket tunnel: its lifetime is no request latency.
    tunnel: bool,
}

impl Guard {
    fn new(route: Arc<Route>, started: Instant, permit: Option<OwnedSemaphorePermit>) -> Self {
        route.service.in_flight.add(1);
        Guard {
            route,
            endpoint: None,
            started,
            _permit: permit,
            tunnel: false,
        }
    }

    fn hold(&mut self, endpoint: usize) {
        self.release();
        self.route.endpoints[endpoint]
            .upstream
            .outstanding
            .fetch_add(1, Ordering::Relaxed);
        self.endpoint = Some(endpoint);
    }

    fn release(&mut self) {
        if let Some(i) = self.endpoint.take() {
            self.route.endpoints[i]
                .upstream
                .outstanding
                .fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.release();
        let service = &self.route.service;
        service.in_flight.add(-1);
        if !self.tunnel {
            service.latency.observe(self.started.elapsed());
        }
    }
}

/// An instance's response body, streamed as is. When it ends cleanly its connection goes back
/// to the pool and the request's [`Guard`] is released; when it is dropped early the
/// connection is closed (its state is unknown).
pub(crate) struct UpstreamBody {
    inner: Incoming,
    conn: Option<(Conn, Arc<Upstream>)>,
    guard: Option<Guard>,
}

impl UpstreamBody {
    fn new(inner: Incoming, conn: Option<(Conn, Arc<Upstream>)>, guard: Guard) -> Self {
        let mut body = UpstreamBody {
            inner,
            conn,
            guard: Some(guard),
        };
        if body.inner.is_end_stream() {
            // HEAD, 204, 304, `Content-Length: 0`: the server may never poll this body.
            body.finish();
        }
        body
    }

    fn finish(&mut self) {
        if let Some((conn, upstream)) = self.conn.take() {
            upstream.checkin(conn);
        }
        self.guard = None;
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => this.finish(),
            Poll::Ready(Some(Ok(_))) if this.inner.is_end_stream() => this.finish(),
            Poll::Ready(Some(Err(_))) => {
                this.conn = None;
                this.guard = None;
            }
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A client's streamed request body on its way to an instance, which says when it has been
/// sent whole (so the response-head timeout does not count the upload; see `forward`).
pub(crate) struct Watched {
    inner: Incoming,
    sent: Option<Arc<SentWhole>>,
}

/// Set once a [`Watched`] body has ended.
#[derive(Default)]
pub(crate) struct SentWhole {
    done: std::sync::atomic::AtomicBool,
    notify: tokio::sync::Notify,
}

impl SentWhole {
    fn mark(&self) {
        if !self.done.swap(true, Ordering::Relaxed) {
            self.notify.notify_waiters();
        }
    }

    async fn wait(&self) {
        loop {
            let notified = self.notify.notified();
            if self.done.load(Ordering::Relaxed) {
                return;
            }
            notified.await;
        }
    }
}

impl Watched {
    fn new(inner: Incoming) -> Self {
        Watched { inner, sent: None }
    }

    /// This body with a fresh signal (a body handed back unsent is watched again).
    fn watched(mut self) -> (Self, Arc<SentWhole>) {
        let sent = Arc::new(SentWhole::default());
        self.sent = Some(sent.clone());
        if self.inner.is_end_stream() {
            sent.mark();
        }
        (self, sent)
    }

    fn ended(&self) {
        if let Some(sent) = &self.sent {
            sent.mark();
        }
    }
}

impl Body for Watched {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(None) | Poll::Ready(Some(Err(_))) => this.ended(),
            Poll::Ready(Some(Ok(_))) if this.inner.is_end_stream() => this.ended(),
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        let end = self.inner.is_end_stream();
        if end {
            self.ended();
        }
        end
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Resolves `timeout` after the request was sent whole: `sent` says when a streamed body ended
/// (`None`: a buffered body, sent with the head).
async fn response_deadline(sent: Option<Arc<SentWhole>>, timeout: Duration) {
    if let Some(sent) = sent {
        sent.wait().await;
    }
    tokio::time::sleep(timeout).await;
}

/// Why an instance's response must not be forwarded, if it must not: both `Content-Length`
/// and `Transfer-Encoding` (RFC 9112 §6.3: a sender must not, and a proxy that forwarded one
/// would hand the client a framing it may read differently — the smuggling shape), or a `101`
/// to a request that asked for no protocol switch (the client would be left on a connection
/// speaking an unknown protocol).
fn malformed(response: &Response<Incoming>, upgrade_asked: bool) -> Option<&'static str> {
    let headers = response.headers();
    if headers.contains_key(header::CONTENT_LENGTH)
        && headers.contains_key(header::TRANSFER_ENCODING)
    {
        Some("both Content-Length and Transfer-Encoding")
    } else if response.status() == StatusCode::SWITCHING_PROTOCOLS && !upgrade_asked {
        Some("101 Switching Protocols to a request that asked for no upgrade")
    } else {
        None
    }
}

/// The request as it will be sent upstream, minus its body.
struct Head {
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    /// The trace this hop continues or started (its `traceparent` is in `headers`).
    trace: crate::trace::Hop,
}

impl Head {
    fn request(&self, body: UpBody) -> Request<UpBody> {
        let mut request = Request::new(body);
        *request.method_mut() = self.method.clone();
        *request.uri_mut() = self.uri.clone();
        *request.headers_mut() = self.headers.clone();
        request
    }

    fn into_request(self, body: UpBody) -> Request<UpBody> {
        let mut request = Request::new(body);
        *request.method_mut() = self.method;
        *request.uri_mut() = self.uri;
        *request.headers_mut() = self.headers;
        request
    }
}

/// The request body as far as replaying goes.
enum Payload {
    /// Fully read (or empty): can be sent any number of times.
    Replayable(Bytes),
    /// The client's stream, until it is handed to the first attempt.
    Stream(Option<Incoming>),
}

/// Whether a request may be sent twice (see the module docs).
fn idempotent(method: &Method, headers: &HeaderMap) -> bool {
    matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
        || headers.contains_key(IDEMPOTENCY_KEY)
}

/// The outcome of forwarding, for the access log.
struct Outcome {
    endpoint: Option<SocketAddr>,
    /// The index of the last endpoint tried, whose arm the answer counts in.
    target: Option<usize>,
    attempts: u8,
    error: Option<ProxyError>,
    /// The `X-Request-Id` forwarded (when logging), which may not be the client's.
    request_id: Option<HeaderValue>,
    /// The trace id forwarded, for the access log (`None` for answers made before forwarding).
    trace_id: Option<crate::trace::TraceId>,
}

impl Proxy {
    /// Handles one request end to end. Never fails: every problem becomes a status code.
    pub(crate) async fn handle(
        &self,
        conn: ConnInfo,
        request: Request<Incoming>,
    ) -> Response<ProxyBody> {
        let started = crate::clock::now();
        let raw_host = match target_host(&request) {
            Ok(host) => host,
            Err(refusal) => return self.refuse(conn, &request, refusal.answer(), started),
        };
        if request.version() == Version::HTTP_2 && too_many_h2_headers(request.headers()) {
            return self.refuse(conn, &request, too_many_headers(), started);
        }
        if request.method() == Method::CONNECT {
            // A reverse proxy, not a forward one: no tunnels to instances (nor through them).
            return self.refuse(conn, &request, connect_refused(), started);
        }
        let host = normalize_host(raw_host);
        // Load, look up and clone the route out, so no arc-swap guard is held across an await.
        let route: Option<Arc<Route>> = self
            .handle
            .shared
            .table
            .load()
            .lookup(&host, request.uri().path())
            .cloned();
        let Some(route) = route else {
            let response = plain(
                StatusCode::NOT_FOUND,
                format!("no route for {host}{}\n", request.uri().path()),
            );
            self.handle.shared.unrouted.record(response.status());
            self.log(conn, &request, None, &response, started, None);
            return response;
        };
        if let Some(page) = &route.maintenance {
            let mut response = local(
                StatusCode::SERVICE_UNAVAILABLE,
                "text/html; charset=utf-8",
                page.clone(),
            );
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, RETRY_AFTER_MAINTENANCE);
            route.service.counters.record(response.status());
            self.log(conn, &request, Some(&route), &response, started, None);
            return response;
        }
        let permit = match &route.limiter {
            None => None,
            Some(limiter) => match limiter.acquire().await {
                Ok(permit) => Some(permit),
                Err(overloaded) => {
                    route.service.rejected.fetch_add(1, Ordering::Relaxed);
                    let mut response = plain(
                        StatusCode::SERVICE_UNAVAILABLE,
                        format!("{} is overloaded ({overloaded}); retry later\n", route.name),
                    );
                    response
                        .headers_mut()
                        .insert(header::RETRY_AFTER, RETRY_AFTER_OVERLOAD);
                    route.service.counters.record(response.status());
                    self.log(conn, &request, Some(&route), &response, started, None);
                    return response;
                }
            },
        };
        let access = self.access_log.then(|| AccessLine::of(&request));
        let choice = route.choose(request.headers());
        let guard = Guard::new(route.clone(), started, permit);
        let (mut response, outcome) = self.forward(conn, &route, guard, request, &choice).await;
        if let Some(trace_id) = outcome.trace_id {
            response
                .headers_mut()
                .insert(crate::trace::X_TRACE_ID, trace_id.header_value());
        }
        route
            .counted_service(&choice)
            .counters
            .record(response.status());
        if let Some(target) = outcome.target.and_then(|i| route.endpoints.get(i)) {
            target
                .arm
                .record(response.status(), started.elapsed(), choice.matched);
        }
        if let Some(cookie) = choice.set_cookie.and_then(|key| route.set_cookie(key)) {
            response.headers_mut().append(header::SET_COOKIE, cookie);
        }
        if let Some(access) = access {
            access.emit(conn, &route, &response, started, &outcome);
        }
        response
    }

    /// Sends the request to an endpoint of `route` (the guard's), retrying once when that is
    /// safe, and returns the response (the guard travels inside its body).
    async fn forward(
        &self,
        conn: ConnInfo,
        route: &Arc<Route>,
        mut guard: Guard,
        mut request: Request<Incoming>,
        choice: &Choice,
    ) -> (Response<ProxyBody>, Outcome) {
        let upgrade = wants_upgrade(&request).then(|| hyper::upgrade::on(&mut request));
        let (parts, body) = request.into_parts();
        let idempotent = idempotent(&parts.method, &parts.headers);
        let http1 = parts.version < Version::HTTP_2;
        let mut head = upstream_head(parts, conn, upgrade.is_some());
        let request_id = if self.access_log {
            head.headers.get(X_REQUEST_ID).cloned()
        } else {
            None
        };
        let mut outcome = Outcome {
            endpoint: None,
            target: None,
            attempts: 0,
            error: None,
            request_id,
            trace_id: Some(head.trace.trace_id),
        };
        let mut payload = match read_small_body(body, &mut head.headers, self.body_timeout).await {
            Ok(payload) => payload,
            Err(error) => {
                let status = match error {
                    ProxyError::ClientBodyTimeout { .. } => StatusCode::REQUEST_TIMEOUT,
                    _ => StatusCode::BAD_REQUEST,
                };
                let mut response = plain(status, format!("{error}\n"));
                if http1 && status == StatusCode::REQUEST_TIMEOUT {
                    // The rest of the body may still be on its way: this connection is done.
                    response
                        .headers_mut()
                        .insert(header::CONNECTION, HeaderValue::from_static("close"));
                }
                outcome.error = Some(error);
                return (response, outcome);
            }
        };
        let timeout = route.timeout.unwrap_or(self.response_timeout);
        // Tried on at most this many endpoints (see `MAX_ATTEMPTS`); a retry paid from the
        // budget only as the second attempt.
        let max_attempts = u8::try_from(route.endpoints.len())
            .unwrap_or(MAX_ATTEMPTS)
            .clamp(2, MAX_ATTEMPTS);
        // A request handed back unsent by a failed attempt.
        let mut returned: Option<Request<UpBody>> = None;
        // The endpoint the retry decision chose, so the retry goes where it was judged safe.
        let mut chosen: Option<usize> = None;
        // Attempts whose request went out on a connection, and whether the retry budget paid
        // for one already (at most once). A request that is not idempotent goes out at most
        // twice; an idempotent one may meet as many dying instances as it has attempts.
        let max_written = if idempotent { max_attempts } else { 2 };
        let mut written = 0u8;
        let mut paid = false;
        let mut head = Some(head);
        loop {
            let Some(i) = chosen
                .take()
                .or_else(|| route.pick_for(choice, None, now_nanos()))
            else {
                let response = plain(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("no healthy instance of {}\n", route.name),
                );
                return (response, outcome);
            };
            outcome.attempts += 1;
            outcome.target = Some(i);
            let target = &route.endpoints[i];
            outcome.endpoint = Some(target.endpoint.addr);
            guard.hold(i);
            let last = outcome.attempts >= max_attempts;
            let result = match target.upstream.checkout().await {
                Err(err) => Err(err),
                Ok(mut pooled) => {
                    let request = match returned.take() {
                        Some(request) => request,
                        None => match &mut payload {
                            Payload::Replayable(bytes) if !last => head
                                .as_ref()
                                .map(|h| h.request(Either::Left(Full::new(bytes.clone())))),
                            Payload::Replayable(bytes) => head
                                .take()
                                .map(|h| h.into_request(Either::Left(Full::new(bytes.clone())))),
                            Payload::Stream(body) => body
                                .take()
                                .zip(head.take())
                                .map(|(body, h)| h.into_request(Either::Right(Watched::new(body)))),
                        }
                        // Unreachable: a retry happens only with a request to send.
                        .unwrap_or_else(|| Request::new(Either::Left(Full::new(Bytes::new())))),
                    };
                    // The response timer starts once the request is sent whole: at once for a
                    // buffered body, when a streamed one ends (an upload may take its time).
                    let (request, sent) = match request.into_parts() {
                        (parts, Either::Right(stream)) => {
                            let (stream, sent) = stream.watched();
                            (
                                Request::from_parts(parts, Either::Right(stream)),
                                Some(sent),
                            )
                        }
                        (parts, body) => (Request::from_parts(parts, body), None),
                    };
                    let exchange = pooled.sender.try_send_request(request);
                    let answer = tokio::select! {
                        answer = exchange => Some(answer),
                        () = response_deadline(sent, timeout) => None,
                    };
                    match answer {
                        Some(Ok(response)) => Ok((response, pooled)),
                        None => Err(ProxyError::ResponseTimeout {
                            addr: target.endpoint.addr,
                            after: timeout,
                        }),
                        Some(Err(mut failed)) => {
                            let addr = target.endpoint.addr;
                            let unsent = failed.take_message();
                            let source = failed.into_error();
                            let err = if unsent.is_some() {
                                ProxyError::NotSent { addr, source }
                            } else if source.is_user() {
                                ProxyError::ClientBody { source }
                            } else if pooled.reused
                                && (source.is_incomplete_message() || source.is_canceled())
                            {
                                ProxyError::StaleConnection { addr, source }
                            } else {
                                ProxyError::Exchange { addr, source }
                            };
                            returned = unsent;
                            Err(err)
                        }
                    }
                }
            };
            let result = result.and_then(|(response, pooled)| {
                match malformed(&response, upgrade.is_some()) {
                    // The connection goes with `pooled`: its framing is not to be trusted.
                    Some(reason) => Err(ProxyError::BadResponse {
                        addr: target.endpoint.addr,
                        reason,
                    }),
                    None => Ok((response, pooled)),
                }
            });
            match result {
                Ok((response, pooled)) => {
                    target.upstream.succeeded();
                    let response = self.respond(route, i, response, pooled, guard, upgrade);
                    return (response, outcome);
                }
                Err(err) => {
                    guard.release();
                    if err.ejects() && target.upstream.failed() {
                        route.service.ejections.fetch_add(1, Ordering::Relaxed);
                    }
                    let can_replay = returned.is_some()
                        || (head.is_some()
                            && match &payload {
                                Payload::Replayable(_) => true,
                                Payload::Stream(body) => body.is_some(),
                            });
                    let now = now_nanos();
                    let next = route.pick_for(choice, Some(i), now);
                    let elsewhere = next.is_some_and(|n| n != i);
                    // Failing over from an instance that failed to another one the router
                    // holds for live costs the service no extra work: the budget is for
                    // retries when the whole service is failing (every endpoint ejected) or on
                    // the same instance.
                    let live_elsewhere = next.is_some_and(|n| {
                        let other = &route.endpoints[n];
                        n != i
                            && other.endpoint.addr != target.endpoint.addr
                            && !other.upstream.is_ejected(now)
                    });
                    written += u8::from(err.was_written());
                    let retry = !last
                        && written < max_written
                        && err.retry_safe(idempotent)
                        && can_replay
                        && (elsewhere || !err.ejects())
                        && (live_elsewhere || (!paid && route.service.budget.withdraw()));
                    paid |= retry && !live_elsewhere;
                    tracing::debug!(service = %route.name, %err, fault = err.fault().as_str(), retry, "attempt failed");
                    if retry {
                        route.service.retries.fetch_add(1, Ordering::Relaxed);
                        chosen = next;
                        continue;
                    }
                    let response = match &err {
                        _ if err.fault() == crate::error::Fault::Client => {
                            plain(StatusCode::BAD_REQUEST, format!("{err}\n"))
                        }
                        ProxyError::ResponseTimeout { .. } => {
                            route.service.timeouts.fetch_add(1, Ordering::Relaxed);
                            plain(
                                StatusCode::GATEWAY_TIMEOUT,
                                format!("upstream {} timed out\n", route.name),
                            )
                        }
                        _ if err.unreachable() => plain(
                            StatusCode::BAD_GATEWAY,
                            format!("upstream {} unreachable\n", route.name),
                        ),
                        _ => plain(
                            StatusCode::BAD_GATEWAY,
                            format!("upstream {} failed\n", route.name),
                        ),
                    };
                    outcome.error = Some(err);
                    return (response, outcome);
                }
            }
        }
    }

    /// Turns an instance's response into the client's: hop-by-hop headers out, counters
    /// recorded, the body wrapped so the connection returns to the pool when it ends, and a
    /// `101` turned into a tunnel.
    fn respond(
        &self,
        route: &Arc<Route>,
        endpoint: usize,
        mut response: Response<Incoming>,
        sender: Conn,
        mut guard: Guard,
        upgrade: Option<hyper::upgrade::OnUpgrade>,
    ) -> Response<ProxyBody> {
        let target = &route.endpoints[endpoint];
        route.service.budget.deposit();
        target.release_counters.record(response.status());
        let switching = response.status() == StatusCode::SWITCHING_PROTOCOLS;
        if switching {
            if let Some(downstream) = upgrade {
                let upstream = hyper::upgrade::on(&mut response);
                let kept = keep_upgrade_headers(response.headers());
                remove_hop_by_hop(response.headers_mut());
                for (name, value) in kept {
                    response.headers_mut().insert(name, value);
                }
                guard.tunnel = true;
                tokio::spawn(tunnel(downstream, upstream, guard, sender));
                let (parts, _) = response.into_parts();
                return Response::from_parts(parts, Either::Right(Full::new(Bytes::new())));
            }
        }
        remove_hop_by_hop(response.headers_mut());
        let (parts, body) = response.into_parts();
        let conn = (!switching).then(|| (sender, target.upstream.clone()));
        Response::from_parts(parts, Either::Left(UpstreamBody::new(body, conn, guard)))
    }

    /// Answers a request the router will not route (a malformed target host, CONNECT):
    /// counted with the unrouted requests and logged without a service.
    fn refuse(
        &self,
        conn: ConnInfo,
        request: &Request<Incoming>,
        response: Response<ProxyBody>,
        started: Instant,
    ) -> Response<ProxyBody> {
        self.handle.shared.unrouted.record(response.status());
        self.log(conn, request, None, &response, started, None);
        response
    }

    /// The one-line log for answers made before forwarding.
    fn log(
        &self,
        conn: ConnInfo,
        request: &Request<Incoming>,
        route: Option<&Route>,
        response: &Response<ProxyBody>,
        started: Instant,
        error: Option<&ProxyError>,
    ) {
        if self.access_log {
            let outcome = Outcome {
                endpoint: None,
                target: None,
                attempts: 0,
                error: None,
                request_id: None,
                trace_id: None,
            };
            let _ = error;
            AccessLine::of(request).emit_with(
                conn,
                route.map(|r| &*r.name),
                response,
                started,
                &outcome,
            );
        }
    }
}

/// Copies bytes both ways between the client's and the instance's upgraded connections until
/// either side closes.
async fn tunnel(
    downstream: hyper::upgrade::OnUpgrade,
    upstream: hyper::upgrade::OnUpgrade,
    guard: Guard,
    _sender: Conn,
) {
    let (down, up) = tokio::join!(downstream, upstream);
    match (down, up) {
        (Ok(down), Ok(up)) => {
            let mut down = TokioIo::new(down);
            let mut up = TokioIo::new(up);
            if let Err(err) = tokio::io::copy_bidirectional(&mut down, &mut up).await {
                tracing::debug!(%err, service = %guard.route.name, "tunnel ended with an error");
            }
        }
        (down, up) => {
            tracing::debug!(
                downstream = ?down.err(),
                upstream = ?up.err(),
                "upgrade failed on one side"
            );
        }
    }
    drop(guard);
}

/// The request fields the access log needs, copied before the request is consumed.
struct AccessLine {
    method: Method,
    host: String,
    path: String,
    request_id: String,
}

impl AccessLine {
    fn of(request: &Request<Incoming>) -> Self {
        AccessLine {
            method: request.method().clone(),
            host: logged_host(request).to_owned(),
            path: request.uri().path().to_owned(),
            request_id: request
                .headers()
                .get(X_REQUEST_ID)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned(),
        }
    }

    fn emit(
        self,
        conn: ConnInfo,
        route: &Route,
        response: &Response<ProxyBody>,
        started: Instant,
        outcome: &Outcome,
    ) {
        self.emit_with(conn, Some(&route.name), response, started, outcome);
    }

    fn emit_with(
        self,
        conn: ConnInfo,
        service: Option<&str>,
        response: &Response<ProxyBody>,
        started: Instant,
        outcome: &Outcome,
    ) {
        let request_id = response
            .headers()
            .get(X_REQUEST_ID)
            .or(outcome.request_id.as_ref())
            .and_then(|v| v.to_str().ok())
            .unwrap_or(&self.request_id);
        let trace_hex = outcome.trace_id.map(|id| id.hex());
        let trace_id = trace_hex
            .as_ref()
            .and_then(|hex| std::str::from_utf8(hex).ok())
            .unwrap_or("");
        tracing::info!(
            target: "berth_router::access",
            remote = %conn.remote,
            method = %self.method,
            host = %self.host,
            path = %self.path,
            status = response.status().as_u16(),
            service = service.unwrap_or(""),
            endpoint = %LoggedEndpoint(outcome.endpoint),
            attempts = outcome.attempts,
            head_us = started.elapsed().as_micros() as u64,
            request_id,
            trace_id,
            error = outcome.error.as_ref().map(|e| e.kind()),
            fault = outcome.error.as_ref().map(|e| e.fault().as_str()),
            "request"
        );
    }
}

/// The endpoint in the access log: its address, or `-` when none was tried (a log line is
/// read by people and parsers, not as Rust's `Some(…)`).
struct LoggedEndpoint(Option<SocketAddr>);

impl std::fmt::Display for LoggedEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(addr) => write!(f, "{addr}"),
            None => f.write_str("-"),
        }
    }
}

/// An HTTP/1.1 request asking to switch protocols (`Connection: upgrade` + `Upgrade`).
fn wants_upgrade<B>(request: &Request<B>) -> bool {
    request.version() == Version::HTTP_11
        && request.headers().contains_key(header::UPGRADE)
        && request
            .headers()
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|token| token.trim().eq_ignore_ascii_case("upgrade"))
}

/// The `Upgrade` header and a `Connection: upgrade`, which a protocol switch must keep.
fn keep_upgrade_headers(headers: &HeaderMap) -> Vec<(HeaderName, HeaderValue)> {
    let mut kept = Vec::with_capacity(2);
    if let Some(upgrade) = headers.get(header::UPGRADE) {
        kept.push((header::UPGRADE, upgrade.clone()));
        kept.push((header::CONNECTION, HeaderValue::from_static("upgrade")));
    }
    kept
}

/// Rewrites the downstream request head for the instance: origin-form URI, HTTP/1.1,
/// hop-by-hop headers out, `Host` the routed host (the target's authority when it has one),
/// `X-Forwarded-*` and exactly one `X-Request-Id` set.
fn upstream_head(parts: Parts, conn: ConnInfo, upgrade: bool) -> Head {
    let Parts {
        method,
        uri,
        mut headers,
        ..
    } = parts;
    // The host the request was routed by (see `target_host`): the target's authority wins
    // over `Host`, which then goes (RFC 9112 §3.2.2: "MUST ignore the received Host").
    let original_host = match uri.authority() {
        Some(authority) => HeaderValue::from_str(authority.as_str()).ok(),
        None => headers.get(header::HOST).cloned(),
    };
    // Origin form (`/path?query`): HTTP/2 and absolute-form requests carry a full URI, which
    // many apps would not expect on an HTTP/1.1 request line.
    let uri = if uri.scheme().is_some() || uri.authority().is_some() {
        let path = uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        Uri::from(path)
    } else {
        uri
    };
    let kept = if upgrade {
        keep_upgrade_headers(&headers)
    } else {
        Vec::new()
    };
    remove_hop_by_hop(&mut headers);
    for (name, value) in kept {
        headers.insert(name, value);
    }
    if !conn.trusted {
        // Only a configured proxy may tell the instance who the client was and how it came:
        // from anyone else these are whatever the client chose to claim.
        headers.remove(X_FORWARDED_FOR);
        headers.remove(X_FORWARDED_HOST);
        headers.remove(X_FORWARDED_PROTO);
        headers.remove(FORWARDED);
    }
    if let Some(host) = original_host {
        // Instances see the Host the client asked for, not the endpoint's address.
        headers.insert(header::HOST, host.clone());
        if !headers.contains_key(X_FORWARDED_HOST) {
            headers.insert(X_FORWARDED_HOST, host);
        }
    }
    append_forwarded_for(&mut headers, conn.remote);
    if !headers.contains_key(X_FORWARDED_PROTO) {
        headers.insert(
            X_FORWARDED_PROTO,
            HeaderValue::from_static(if conn.tls { "https" } else { "http" }),
        );
    }
    // Exactly one id goes on: the client's first if it is valid, else a new one.
    let mut ids = headers.get_all(X_REQUEST_ID).iter();
    let first_valid = ids.next().is_some_and(valid_request_id);
    let several = ids.next().is_some();
    if !first_valid {
        headers.insert(X_REQUEST_ID, new_request_id());
    } else if several {
        if let Some(first) = headers.get(X_REQUEST_ID).cloned() {
            headers.insert(X_REQUEST_ID, first);
        }
    }
    let trace = crate::trace::hop(&mut headers, crate::compiled::random);
    Head {
        method,
        uri,
        headers,
        trace,
    }
}

/// Reads a small body whole (see [`REPLAY_LIMIT`]), or leaves a large one to stream. Fixes the
/// framing headers for what will be sent.
async fn read_small_body(
    body: Incoming,
    headers: &mut HeaderMap,
    timeout: Duration,
) -> Result<Payload, ProxyError> {
    if body.is_end_stream() {
        return Ok(Payload::Replayable(Bytes::new()));
    }
    match body.size_hint().exact() {
        Some(len) if len <= REPLAY_LIMIT => {
            let limit = usize::try_from(REPLAY_LIMIT).unwrap_or(usize::MAX);
            match tokio::time::timeout(timeout, Limited::new(body, limit).collect()).await {
                Ok(Ok(collected)) => Ok(Payload::Replayable(collected.to_bytes())),
                Ok(Err(err)) => match err.downcast::<hyper::Error>() {
                    Ok(err) => Err(ProxyError::ClientBody { source: *err }),
                    // The length limit cannot trip (hyper enforces Content-Length); treat
                    // anything else as a stream to forward rather than an error to invent.
                    Err(_) => Ok(Payload::Replayable(Bytes::new())),
                },
                // Never forward what arrived so far under the original `Content-Length`.
                Err(_) => Err(ProxyError::ClientBodyTimeout { after: timeout }),
            }
        }
        Some(_) => Ok(Payload::Stream(Some(body))),
        None => {
            // The downstream framing was chunked (or HTTP/2 without a length), and
            // `Transfer-Encoding` went with the other hop-by-hop headers. Say so again: for GET
            // (and HEAD, CONNECT) hyper would otherwise send no body at all.
            headers.insert(
                header::TRANSFER_ENCODING,
                HeaderValue::from_static("chunked"),
            );
            Ok(Payload::Stream(Some(body)))
        }
    }
}

const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");

/// A client's request id is passed through if it is short and printable; otherwise the router
/// makes one, so every log line of a request, across services, can be joined on it.
fn valid_request_id(value: &HeaderValue) -> bool {
    let bytes = value.as_bytes();
    !bytes.is_empty() && bytes.len() <= 200 && bytes.iter().all(|b| b.is_ascii_graphic())
}

/// A new request id: 8 hex digits that differ per router process, then a 16-digit counter
/// (the thread's number, then its count).
/// Unique per router without coordination, and cheap (no randomness per request).
fn new_request_id() -> HeaderValue {
    static PREFIX: OnceLock<u32> = OnceLock::new();
    // Per thread, so that threads do not share a cache line per request: each thread counts in
    // its own range of 2^48.
    static THREADS: AtomicU64 = AtomicU64::new(0);
    thread_local! {
        static COUNTER: std::cell::Cell<u64> =
            std::cell::Cell::new(THREADS.fetch_add(1, Ordering::Relaxed) << 48);
    }
    let prefix = *PREFIX.get_or_init(|| crate::compiled::random() as u32);
    let n = COUNTER.with(|c| {
        let n = c.get();
        c.set(n.wrapping_add(1));
        n
    });
    let mut buf = [0u8; 24];
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let value = (u128::from(prefix) << 64) | u128::from(n);
    for (i, slot) in buf.iter_mut().enumerate() {
        *slot = HEX[((value >> ((23 - i) * 4)) & 0xf) as usize];
    }
    HeaderValue::from_bytes(&buf).unwrap_or_else(|_| HeaderValue::from_static("0"))
}

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
/// RFC 7239's header: dropped from untrusted peers like the `X-Forwarded-*` ones (the router
/// itself sends only those).
const FORWARDED: HeaderName = HeaderName::from_static("forwarded");

/// Why a request's target host is unusable: each is a 400 (RFC 9112 §3.2, RFC 9110 §4.2.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BadHost {
    /// More than one `Host` header field, in any version.
    Several,
    /// An HTTP/1.1 request without `Host` whose target carries no authority either.
    Missing,
    /// `user@` in the target's authority: deprecated, and a way to disguise the host.
    Userinfo,
    /// An HTTP/2 request whose `Host` names another authority than its `:authority`
    /// (RFC 9113 §8.3.1: malformed). Routing by one and letting the app read the other is a
    /// way past host-based rules.
    Mismatch,
}

impl BadHost {
    /// The body of the 400.
    fn message(self) -> &'static str {
        match self {
            BadHost::Several => "more than one Host header\n",
            BadHost::Missing => "no Host header\n",
            BadHost::Userinfo => "userinfo in the request target\n",
            BadHost::Mismatch => "the Host header differs from :authority\n",
        }
    }

    fn answer(self) -> Response<ProxyBody> {
        local(
            StatusCode::BAD_REQUEST,
            "text/plain; charset=utf-8",
            Bytes::from_static(self.message().as_bytes()),
        )
    }
}

/// Whether an HTTP/2 request carries more than [`MAX_H2_HEADERS`] fields (cookie crumbs as
/// one). HTTP/1.1 requests are held to the same number by hyper itself.
fn too_many_h2_headers(headers: &HeaderMap) -> bool {
    if headers.len() <= MAX_H2_HEADERS {
        return false;
    }
    let crumbs = headers.get_all(header::COOKIE).iter().count();
    headers.len() - crumbs.saturating_sub(1) > MAX_H2_HEADERS
}

/// The 431 answered to an HTTP/2 request with too many header fields.
fn too_many_headers() -> Response<ProxyBody> {
    local(
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        "text/plain; charset=utf-8",
        Bytes::from_static(b"too many header fields\n"),
    )
}

/// The body of the 405 answered to CONNECT.
const CONNECT_REFUSED: &str = "CONNECT is not supported: this is a reverse proxy\n";
/// The `Allow` header of that 405 (RFC 9110 §15.5.6 requires one): the router forwards every
/// other method, and these are the ones it names; an instance may still refuse any of them.
const CONNECT_ALLOW: &str = "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS";

fn connect_refused() -> Response<ProxyBody> {
    let mut response = local(
        StatusCode::METHOD_NOT_ALLOWED,
        "text/plain; charset=utf-8",
        Bytes::from_static(CONNECT_REFUSED.as_bytes()),
    );
    response
        .headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(CONNECT_ALLOW));
    response
}

/// The host a request is for, as it is routed and forwarded: the authority of the target URI
/// when it has one — absolute-form and authority-form on HTTP/1 (RFC 9112 §3.2.2: it wins over
/// `Host`), `:authority` on HTTP/2 (RFC 9113 §8.3.1) — else the `Host` header (empty when it
/// is not visible ASCII, or absent on HTTP/1.0).
fn target_host<B>(request: &Request<B>) -> Result<&str, BadHost> {
    let mut hosts = request.headers().get_all(header::HOST).iter();
    let host = hosts.next();
    if hosts.next().is_some() {
        return Err(BadHost::Several);
    }
    if let Some(authority) = request.uri().authority() {
        if authority.as_str().contains('@') {
            return Err(BadHost::Userinfo);
        }
        if request.version() == Version::HTTP_2
            && host.is_some_and(|h| {
                !h.as_bytes()
                    .eq_ignore_ascii_case(authority.as_str().as_bytes())
            })
        {
            return Err(BadHost::Mismatch);
        }
        return Ok(authority.as_str());
    }
    match host {
        Some(host) => Ok(host.to_str().unwrap_or_default()),
        None if request.version() == Version::HTTP_11 => Err(BadHost::Missing),
        None => Ok(""),
    }
}

/// The host for the access log: the routed one, or for a refused request its first `Host`.
fn logged_host<B>(request: &Request<B>) -> &str {
    target_host(request).unwrap_or_else(|_| {
        request
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or_default()
    })
}

/// Headers that describe one connection, not the message (RFC 9110 §7.6.1); a proxy must not
/// forward them. `Upgrade` goes too, and is put back only on a protocol switch the proxy
/// tunnels (see `wants_upgrade`).
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
];

/// Removes the hop-by-hop headers, including any the `Connection` header names.
fn remove_hop_by_hop(headers: &mut HeaderMap) {
    if headers.contains_key(header::CONNECTION) {
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
            .collect();
        for name in named {
            headers.remove(name);
        }
    }
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
    headers.remove(header::UPGRADE);
}

/// Appends the client's address to `X-Forwarded-For`, folding repeated headers into one.
fn append_forwarded_for(headers: &mut HeaderMap, remote: SocketAddr) {
    // A dual-stack listener reports IPv4 clients as `::ffff:a.b.c.d`; forward `a.b.c.d`.
    let ip = remote.ip().to_canonical().to_string();
    let mut existing = headers
        .get_all(&X_FORWARDED_FOR)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .collect::<Vec<_>>()
        .join(", ");
    if existing.is_empty() {
        existing = ip;
    } else {
        existing.push_str(", ");
        existing.push_str(&ip);
    }
    match HeaderValue::from_str(&existing) {
        Ok(value) => {
            headers.insert(X_FORWARDED_FOR, value);
        }
        Err(_) => {
            // Unreachable in practice (joined visible-ASCII values); never forward a lie.
            headers.remove(X_FORWARDED_FOR);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_are_removed() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("close, X-Secret"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert("x-kept", HeaderValue::from_static("yes"));
        remove_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1, "{h:?}");
        assert_eq!(h.get("x-kept").map(|v| v.as_bytes()), Some(&b"yes"[..]));
    }

    #[test]
    fn forwarded_for_appends() {
        let remote: SocketAddr = ([10, 0, 0, 9], 5555).into();
        let mut h = HeaderMap::new();
        append_forwarded_for(&mut h, remote);
        assert_eq!(
            h.get(&X_FORWARDED_FOR).map(|v| v.as_bytes()),
            Some(&b"10.0.0.9"[..])
        );
        let mut h = HeaderMap::new();
        h.append(&X_FORWARDED_FOR, HeaderValue::from_static("1.1.1.1"));
        h.append(
            &X_FORWARDED_FOR,
            HeaderValue::from_static("2.2.2.2, 3.3.3.3"),
        );
        append_forwarded_for(&mut h, remote);
        assert_eq!(
            h.get(&X_FORWARDED_FOR).map(|v| v.as_bytes()),
            Some(&b"1.1.1.1, 2.2.2.2, 3.3.3.3, 10.0.0.9"[..])
        );
    }
}
