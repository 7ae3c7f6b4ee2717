//! The accept loop: one task per downstream connection, HTTP/1.1 and h2c on the same port,
//! optional TLS, an optional metrics listener, graceful stop on a shutdown signal.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, Notify};

use tokio_rustls::TlsAcceptor;

use berth_net::head_guard::{Activity, Tracked};
// The pause after a failed `accept` (e.g. out of file descriptors), shared with the API.
use berth_net::ACCEPT_BACKOFF;

use crate::proxy::{ConnInfo, Proxy, BODY_TIMEOUT, RESPONSE_TIMEOUT};
use crate::tls::TlsListener;
use crate::trust::Cidr;
use crate::RouterHandle;

/// How long a connection with no request in progress may take to send the next request head
/// before it is closed (slowloris guard; also the idle keep-alive limit). The default of
/// [`RouterConfig::head_timeout`].
pub const HEADER_READ_TIMEOUT: Duration = berth_net::HEADER_READ_TIMEOUT;
/// The most header fields a request may carry (HTTP/1.1); more gets `431`. hyper's default,
/// which the router relies on rather than sets (see `serve_with`).
pub const MAX_HEADERS: usize = 100;
/// The largest request head, in bytes: hyper's read buffer for HTTP/1.1 (a head that does not
/// fit gets `431`) and the HTTP/2 header-list limit.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;
/// The listen backlog of [`bind_reuseport`]: room for a burst of connections while a core is
/// busy (the kernel caps it at `net.core.somaxconn`).
pub(crate) const LISTEN_BACKLOG: i32 = 4096;

/// Binds a TCP listener with `SO_REUSEPORT` (and `SO_REUSEADDR`), so that several sockets —
/// in this process or in another — can listen on the same address, and the kernel spreads
/// new connections between them (by a hash of each connection's addresses and ports).
///
/// This is the function for **one listener per core**: each core's runtime accepts on its own
/// socket, so a connection, its requests and its upstream connections stay on one thread (no
/// cross-thread wake-ups; see `scripts/bench-router`'s `static_router`). Every socket bound
/// with it gets its share of new connections.
///
/// For a **restart** — a new router taking the port over from one that still listens — use
/// [`bind_reuseport_takeover`] instead: it binds the same way and then steers every new
/// connection to the new listener, so the old one can close without resetting anyone. (A
/// listener bound here can be taken over that way; the sharing here is what makes it
/// possible.)
///
/// Port 0 picks a port nobody listens on (never one that another `SO_REUSEPORT` listener of
/// the same user holds), then opens it to sharing.
///
/// Must be called inside a Tokio runtime (the listener registers with its reactor).
pub fn bind_reuseport(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = listen_socket(addr)?;
    // For port 0, the kernel would happily pick a port that another `SO_REUSEPORT` listener
    // of the same user already has, and the two would silently share connections. So port 0
    // is chosen by a plain bind (a port nobody uses), and opened to sharing only then: the
    // group is formed at `listen`.
    if addr.port() != 0 {
        socket.set_reuse_port(true)?;
    }
    socket.bind(&addr.into())?;
    socket.set_reuse_port(true)?;
    socket.listen(LISTEN_BACKLOG)?;
    TcpListener::from_std(socket.into())
}

/// Binds a listener like [`bind_reuseport`] for a router that **takes over** `addr` from
/// another (an older process, or an earlier router of this one) that still listens there,
/// and makes the kernel hand every new connection to the new listener. This is the restart
/// without a failed request (pingora's graceful upgrade):
///
/// 1. the new router calls this while the old one still listens, so at no moment is nobody
///    listening and no client sees "connection refused";
/// 2. from the moment this returns, no new connection reaches the old socket;
/// 3. the old router is then told to stop: [`serve_with`] takes what is already queued on its
///    socket, closes it, and finishes its in-flight requests.
///
/// Without step 2, the kernel spreads new connections over both sockets up to the old one's
/// close, and one whose handshake completes on the old socket between its last `accept` and
/// its close is reset (Linux moves such connections to a remaining listener only with
/// `net.ipv4.tcp_migrate_req = 1`). With it, that race has nobody to hit, whatever the
/// sysctl.
///
/// How: the listener joins the `SO_REUSEPORT` group of the old one at `listen`, at the end of
/// the group's list of sockets; it then attaches to the group a classic BPF program
/// (`SO_ATTACH_REUSEPORT_CBPF`) that answers that position for every new connection. The
/// program belongs to the group, not the socket, and replaces any earlier one. When the old
/// sockets close the group shrinks, the position is past its end and the kernel falls back
/// to its hash: the new listener, alone, gets everything, and the next takeover attaches its
/// own program. The position is the number of listeners on `addr` (counted in
/// `/proc/net/tcp` or `tcp6`) minus one; where that count cannot be read, one old listener is
/// assumed (what a router has).
///
/// Limits:
/// - a handshake the old socket began *before* this returned still completes there, one
///   client round trip later (more if a packet is lost): stop the old router once the new
///   one is up and serving, not in the same instant (with `tcp_migrate_req = 1`, Linux
///   moves even those);
/// - if the old generation has several listeners on `addr` (one per core), the steering holds
///   until the first of them closes; then the group's hash shares new connections between
///   the new listener and the old ones left, as without steering;
/// - when nobody listens on `addr` (a first start, or port 0), this is [`bind_reuseport`]:
///   nothing to take over, no program attached.
///
/// It is [`crate::bind_per_core_takeover`] with one listener; for one listener per core, call
/// that (calling this once per core would steer every connection to the last one). Linux only
/// (elsewhere it binds like [`bind_reuseport`], without steering). Must be called inside a
/// Tokio runtime.
pub fn bind_reuseport_takeover(addr: SocketAddr) -> io::Result<TcpListener> {
    // The one-listener case of a per-core takeover. Its steering need not be released: with
    // one listener of ours, the program's position is past the group's end once the old
    // router's sockets have gone, and the kernel's hash has only this listener to choose.
    let group = crate::per_core::bind_per_core_takeover(addr, 1)?;
    let listener = group
        .listeners
        .into_iter()
        .next()
        .ok_or_else(|| io::Error::other("no listener bound"))?;
    TcpListener::from_std(listener)
}

/// Binds and listens on `addr`, joining the `SO_REUSEPORT` group of a router that already
/// listens there; whether one did. A plain bind fails exactly when another socket listens on
/// the address: only then is there a group to join and a listener to take over from. The
/// socket is open to sharing either way, so that the next router can take over from it.
pub(crate) fn bind_or_join(socket: &socket2::Socket, addr: SocketAddr) -> io::Result<bool> {
    let joined = match socket.bind(&addr.into()) {
        Ok(()) => false,
        Err(err) if err.kind() == io::ErrorKind::AddrInUse => {
            socket.set_reuse_port(true)?;
            socket.bind(&addr.into())?;
            true
        }
        Err(err) => return Err(err),
    };
    socket.set_reuse_port(true)?;
    socket.listen(LISTEN_BACKLOG)?;
    Ok(joined)
}

/// A non-blocking TCP socket for `addr` with `SO_REUSEADDR`, not yet bound.
pub(crate) fn listen_socket(addr: SocketAddr) -> io::Result<socket2::Socket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    if addr.is_ipv6() {
        // Same as `TcpListener::bind`: an IPv6 wildcard takes IPv4 clients too where the
        // system allows it; failure to change the default is not fatal.
        let _ = socket.set_only_v6(false);
    }
    Ok(socket)
}

/// Attaches to `socket`'s `SO_REUSEPORT` group a program that hands every new connection to
/// the group's socket at `index`.
#[cfg(target_os = "linux")]
pub(crate) fn attach_steering(socket: &socket2::Socket, index: usize) -> io::Result<()> {
    let index = u32::try_from(index).unwrap_or(u32::MAX);
    // One instruction, `return index`: the position, in the group, of the socket that gets
    // the connection. Past the group's end, the kernel falls back to its hash.
    let program = [libc::sock_filter {
        code: (libc::BPF_RET | libc::BPF_K) as u16,
        jt: 0,
        jf: 0,
        k: index,
    }];
    let fprog = libc::sock_fprog {
        len: program.len() as libc::c_ushort,
        // The kernel only reads the program (it copies it), the `*mut` is the C type's.
        filter: program.as_ptr().cast_mut(),
    };
    use std::os::fd::AsRawFd;
    // SAFETY: `setsockopt` reads `optlen` bytes at `optval`: `optval` points to `fprog`, a live,
    // initialised `sock_fprog` on this stack frame, and `optlen` is exactly its size. For
    // `SO_ATTACH_REUSEPORT_CBPF` the kernel then reads `fprog.len` (= 1) `sock_filter`s at
    // `fprog.filter`, which points to `program`, alive until this function returns, and copies
    // them into its own program before `setsockopt` returns: no pointer is kept. The file
    // descriptor is `socket`'s, open for the whole call because `socket` is borrowed. Nothing
    // is written to our memory.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ATTACH_REUSEPORT_CBPF,
            std::ptr::from_ref(&fprog).cast(),
            std::mem::size_of::<libc::sock_fprog>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(not(target_os = "linux"))]
pub(crate) fn attach_steering(_socket: &socket2::Socket, _index: usize) -> io::Result<()> {
    Ok(())
}

/// Removes the steering program of `socket`'s `SO_REUSEPORT` group: the kernel spreads new
/// connections over the group's sockets by hash again.
#[cfg(target_os = "linux")]
pub(crate) fn detach_steering(socket: &socket2::Socket) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    // asm-generic/socket.h (x86_64, aarch64, riscv); not in every libc release.
    const SO_DETACH_REUSEPORT_BPF: libc::c_int = 68;
    let unused: libc::c_int = 0;
    // SAFETY: `setsockopt` reads `optlen` (= size of a c_int) bytes at `optval`, which points
    // to `unused`, a live, initialised c_int on this stack frame (the kernel ignores its value
    // for this option). The descriptor is `socket`'s, open for the whole call since `socket`
    // is borrowed. Nothing is written to our memory and no pointer is kept.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_DETACH_REUSEPORT_BPF,
            std::ptr::from_ref(&unused).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(not(target_os = "linux"))]
pub(crate) fn detach_steering(_socket: &socket2::Socket) -> io::Result<()> {
    Ok(())
}

/// How many TCP sockets listen on `socket`'s exact address and port (same family), itself
/// included: its `SO_REUSEPORT` group, as a listener on a different address is in another
/// group and one without `SO_REUSEPORT` or of another user would have failed its bind. `None`
/// if `/proc/net/tcp{,6}` cannot be read or does not list `socket` (found by its inode).
#[cfg(target_os = "linux")]
pub(crate) fn listeners_like(socket: &socket2::Socket) -> Option<usize> {
    use std::io::BufRead;
    use std::os::fd::AsRawFd;
    let local = socket.local_addr().ok()?.as_socket()?;
    // `/proc/self/fd/N` of a socket links to `socket:[INODE]`.
    let link = std::fs::read_link(format!("/proc/self/fd/{}", socket.as_raw_fd())).ok()?;
    let inode = link
        .to_str()?
        .strip_prefix("socket:[")?
        .strip_suffix(']')?
        .to_owned();
    let table = if local.is_ipv4() {
        "/proc/net/tcp"
    } else {
        "/proc/net/tcp6"
    };
    let table = io::BufReader::new(std::fs::File::open(table).ok()?);
    let (mut count, mut found) = (0, false);
    for line in table.lines().skip(1) {
        let line = line.ok()?;
        // `sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode ...`
        let fields: Vec<&str> = line.split_whitespace().take(10).collect();
        let [_, address, _, state, _, _, _, _, _, ino] = fields[..] else {
            continue;
        };
        const TCP_LISTEN: &str = "0A";
        if state == TCP_LISTEN && proc_net_address(address) == Some((local.ip(), local.port())) {
            count += 1;
            found |= ino == inode;
        }
    }
    found.then_some(count)
}

#[cfg(not(target_os = "linux"))]
pub(crate) fn listeners_like(_socket: &socket2::Socket) -> Option<usize> {
    None
}

/// An address as `/proc/net/tcp{,6}` prints it: `IP:PORT`, the IP as the 32-bit words of its
/// network-order bytes printed in hex in host order (one word for IPv4, four for IPv6), the
/// port in hex.
#[cfg(target_os = "linux")]
fn proc_net_address(text: &str) -> Option<(std::net::IpAddr, u16)> {
    let (ip, port) = text.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let word = |i: usize| {
        let hex = ip.get(8 * i..8 * i + 8)?;
        Some(u32::from_str_radix(hex, 16).ok()?.to_ne_bytes())
    };
    let ip = match ip.len() {
        8 => std::net::IpAddr::from(word(0)?),
        32 => {
            let mut bytes = [0u8; 16];
            for (i, chunk) in bytes.chunks_exact_mut(4).enumerate() {
                chunk.copy_from_slice(&word(i)?);
            }
            std::net::IpAddr::from(bytes)
        }
        _ => return None,
    };
    Some((ip, port))
}

/// Options for [`serve_with`]; `RouterConfig::default()` is what [`serve`] uses.
#[derive(Default)]
pub struct RouterConfig {
    /// A listener for `GET /metrics` (Prometheus text). Separate from the proxy listener so
    /// that no routed host can shadow it and it need not be exposed where traffic arrives;
    /// `None`: no metrics endpoint ([`RouterHandle::metrics_text`] still works).
    pub metrics: Option<TcpListener>,
    /// Log one `info` line per request on the `berth_router::access` tracing target
    /// (method, host, path, status, service, endpoint, attempts, time to response head,
    /// request id, error kind and fault).
    pub access_log: bool,
    /// A second listener whose connections speak TLS (certificates by SNI, ALPN `h2` and
    /// `http/1.1`); served like the plain one, with `X-Forwarded-Proto: https`. Separate
    /// rather than sniffed on one port, as ports 80 and 443 are. `None`: plain HTTP only.
    pub tls: Option<TlsListener>,
    /// How long a connection with no request in progress may take to deliver the next request
    /// head before it is closed: the slowloris guard, which also ends idle keep-alive (and
    /// HTTP/2) connections. `None`: [`HEADER_READ_TIMEOUT`].
    pub head_timeout: Option<Duration>,
    /// How long a small request body (up to 64 KiB, read whole before it is
    /// forwarded) may take to arrive; past it the client gets `408` and the instance nothing.
    /// `None`: [`BODY_TIMEOUT`].
    pub body_timeout: Option<Duration>,
    /// How long an instance may take to send its response head once it has the request, for
    /// routes whose entry sets no [`crate::RouteEntry::timeout_ms`]; past it, `504`.
    /// `None`: [`RESPONSE_TIMEOUT`].
    pub response_timeout: Option<Duration>,
    /// Peers whose `X-Forwarded-For`, `X-Forwarded-Proto` and `X-Forwarded-Host` are kept (the
    /// router appends the peer to `X-Forwarded-For`); from any other peer they are replaced by
    /// what the router saw. Empty (the default): nobody's claims are trusted. See [`crate::trust`].
    pub trusted_proxies: Vec<Cidr>,
    /// A bearer token the metrics listener requires (`Authorization: Bearer TOKEN`, else
    /// `401`). `None`: `/metrics` is open to whoever can reach the metrics address.
    pub metrics_token: Option<String>,
}

impl RouterConfig {
    /// The same settings without the listeners (metrics and TLS are served once, by the first
    /// core): what every further per-core router of one process gets.
    pub fn sibling(&self) -> RouterConfig {
        RouterConfig {
            metrics: None,
            access_log: self.access_log,
            tls: None,
            head_timeout: self.head_timeout,
            body_timeout: self.body_timeout,
            response_timeout: self.response_timeout,
            trusted_proxies: self.trusted_proxies.clone(),
            metrics_token: None,
        }
    }
}

impl std::fmt::Debug for RouterConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RouterConfig")
            .field(
                "metrics",
                &self.metrics.as_ref().and_then(|l| l.local_addr().ok()),
            )
            .field("access_log", &self.access_log)
            .field("tls", &self.tls)
            .field("head_timeout", &self.head_timeout)
            .field("body_timeout", &self.body_timeout)
            .field("response_timeout", &self.response_timeout)
            .field("trusted_proxies", &self.trusted_proxies)
            // The token itself never goes to a log.
            .field("metrics_token", &self.metrics_token.as_ref().map(|_| "…"))
            .finish()
    }
}

/// Serves HTTP on `listener` with the default [`RouterConfig`]; see [`serve_with`].
pub async fn serve(
    listener: TcpListener,
    handle: RouterHandle,
    shutdown: impl Future<Output = ()>,
) {
    serve_with(listener, handle, RouterConfig::default(), shutdown).await;
}

/// Serves HTTP/1.1 and h2c (HTTP/2 with prior knowledge) on `listener`, proxying by the routes
/// in `handle`, until `shutdown` completes.
///
/// The caller binds the listener (tests bind port 0 and read the address back) and owns the
/// shutdown signal, so the router can be embedded in `berth up`, in an agent, or run alone.
/// The routing table is read from `handle` on every request, so [`RouterHandle::update`] takes
/// effect immediately, even on keep-alive connections that are already open.
///
/// On shutdown it takes the connections already queued on its sockets, stops accepting, lets
/// in-flight requests finish (and connections accepted just before the signal send their first
/// request, see [`FIRST_REQUEST_GRACE`]), closes idle keep-alive connections, and returns once
/// every connection is done. With a second router bound by [`bind_reuseport_takeover`] on the same port, that
/// is a restart in which no request fails. Accept errors (such as running out
/// of file descriptors) are logged and retried rather than returned: a router stays up.
pub async fn serve_with(
    listener: TcpListener,
    handle: RouterHandle,
    config: RouterConfig,
    shutdown: impl Future<Output = ()>,
) {
    let proxy = Arc::new(Proxy {
        handle: handle.clone(),
        access_log: config.access_log,
        body_timeout: config.body_timeout.unwrap_or(BODY_TIMEOUT),
        response_timeout: config.response_timeout.unwrap_or(RESPONSE_TIMEOUT),
    });
    let trusted_proxies = config.trusted_proxies;
    let metrics_token = config.metrics_token.map(Arc::<str>::from);
    let http = http_builder();
    let head_timeout = config.head_timeout.unwrap_or(HEADER_READ_TIMEOUT);
    let (stop, stopped) = watch::channel(false);
    let (alive, mut all_done) = mpsc::channel::<()>(1);
    let (stop_metrics, metrics_stopped) = tokio::sync::oneshot::channel::<()>();
    let metrics = config.metrics.map(|listener| {
        tokio::spawn(serve_metrics(listener, handle, metrics_token, async {
            let _ = metrics_stopped.await;
        }))
    });
    tokio::pin!(shutdown);

    let serve = |stream: TcpStream, remote: SocketAddr, tls: Option<&TlsAcceptor>| {
        if let Err(err) = stream.set_nodelay(true) {
            tracing::debug!(%err, %remote, "set_nodelay failed");
        }
        let info = ConnInfo {
            remote,
            tls: tls.is_some(),
            trusted: crate::trust::trusted(&trusted_proxies, remote.ip()),
        };
        let life = Lifeline {
            stop: stopped.clone(),
            _alive: alive.clone(),
        };
        let (http, proxy) = (http.clone(), proxy.clone());
        match tls {
            None => {
                tokio::spawn(run_connection(
                    http,
                    stream,
                    proxy,
                    info,
                    head_timeout,
                    life,
                ));
            }
            Some(acceptor) => {
                // The handshake runs in the connection's task, not in the accept loop, and is
                // bounded like a request head (a client that stalls mid-handshake is a
                // slowloris too). The lifeline makes a shutdown wait for it.
                let handshake = acceptor.accept(stream);
                tokio::spawn(async move {
                    match tokio::time::timeout(HEADER_READ_TIMEOUT, handshake).await {
                        Ok(Ok(stream)) => {
                            run_connection(http, stream, proxy, info, head_timeout, life).await
                        }
                        Ok(Err(err)) => tracing::debug!(%err, %remote, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%remote, "TLS handshake timed out"),
                    }
                });
            }
        }
    };
    let (tls_listener, acceptor) = match config.tls {
        Some(TlsListener { listener, acceptor }) => (Some(listener), Some(acceptor)),
        None => (None, None),
    };
    loop {
        let (accepted, tls) = tokio::select! {
            accepted = listener.accept() => (accepted, None),
            accepted = accept_on(tls_listener.as_ref()) => (accepted, acceptor.as_ref()),
            () = &mut shutdown => break,
        };
        match accepted {
            Ok((stream, remote)) => serve(stream, remote, tls),
            Err(err) => {
                tracing::warn!(%err, "accept failed");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
            }
        }
    }
    // Connections the kernel already completed on these sockets would be reset when they
    // close: take them first (they are served like any other, then closed gracefully below).
    // With a second router on the same port (`bind_reuseport_takeover`), new ones go there: it steers them.
    drain(listener, |stream, remote| serve(stream, remote, None));
    if let Some(tls_listener) = tls_listener {
        drain(tls_listener, |stream, remote| {
            serve(stream, remote, acceptor.as_ref());
        });
    }
    let _ = stop_metrics.send(());
    stop.send_replace(true);
    drop(alive);
    // Every connection task holds a sender: `None` once the last one has ended.
    let _ = all_done.recv().await;
    if let Some(metrics) = metrics {
        let _ = metrics.await;
    }
}

/// The HTTP/1.1 + HTTP/2 connection settings of every router connection (also used by the
/// fuzz harness, so that what is fuzzed is what is served).
pub(crate) fn http_builder() -> auto::Builder<TokioExecutor> {
    let mut http = auto::Builder::new(TokioExecutor::new());
    http.http1()
        .timer(TokioTimer::new())
        // The slowloris guard is the router's own, one timer per connection rather than one
        // per request head (see `head_guard`): hyper's is turned off.
        .header_read_timeout(None)
        // MAX_HEADERS is hyper's own default (100), so it is not set: setting it, even to the
        // default, makes hyper initialise two 100-slot arrays for every request head (measured
        // ~4% of the router's user CPU). `too_many_headers_get_431` pins the limit at 100.
        .max_buf_size(MAX_HEAD_BYTES)
        // A client that shuts down its sending side right after its request (`nc -N`, some
        // health checkers) still gets its answer, as nginx and HAProxy give it.
        .half_close(true)
        // Responses are copied into one buffer and sent with one `write` rather than a
        // `writev` of head and body: for the small answers most requests get, the copy is
        // cheaper than the vectored call (A/B, 6 interleaved runs: -1.7% CPU/request).
        .writev(false);
    http.http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(MAX_HEAD_BYTES).unwrap_or(u32::MAX));
    http
}

/// How long a connection that has not yet sent its first request may take to send it once the
/// router is stopping. hyper's graceful shutdown closes a connection that is between
/// requests, which is right for a kept-alive one (its client knows the close may come) but
/// wrong for one accepted a moment ago whose request is still on its way: that client would
/// see its first request fail. Such a connection gets its first request served (with
/// `Connection: close`); one that sends nothing in this time is closed.
pub const FIRST_REQUEST_GRACE: Duration = Duration::from_secs(2);

/// What ties a connection task to its [`serve_with`]: the stop signal, and a sender whose
/// drop tells `serve_with` the connection is done (it returns when all are).
struct Lifeline {
    stop: watch::Receiver<bool>,
    _alive: mpsc::Sender<()>,
}

/// Resolves once the router is stopping (or its `serve_with` is gone).
async fn stopping(stop: &mut watch::Receiver<bool>) {
    // The borrow `wait_for` returns is not `Send`; drop it here, not across an await.
    let _ = stop.wait_for(|stop| *stop).await.map(|_| ());
}

/// Whether a connection has passed a request to the proxy yet.
#[derive(Default)]
struct FirstRequest {
    seen: AtomicBool,
    arrived: Notify,
}

/// Serves one connection (HTTP/1.1 or HTTP/2, plain or TLS) until it ends; when the router
/// stops, shuts it down gracefully: in-flight requests finish, keep-alive ends, and a
/// connection still waiting for its first request gets [`FIRST_REQUEST_GRACE`] to send it.
async fn run_connection<I>(
    http: auto::Builder<TokioExecutor>,
    io: I,
    proxy: Arc<Proxy>,
    info: ConnInfo,
    head_timeout: Duration,
    mut life: Lifeline,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let first = Arc::new(FirstRequest::default());
    let activity = Activity::new();
    let service = {
        let (first, activity) = (first.clone(), activity.clone());
        service_fn(move |request| {
            if !first.seen.load(Ordering::Relaxed) {
                first.seen.store(true, Ordering::Relaxed);
                first.arrived.notify_one();
            }
            let busy = activity.begin();
            let proxy = proxy.clone();
            async move {
                let response = proxy.handle(info, request).await;
                Ok::<_, std::convert::Infallible>(response.map(|body| Tracked::new(body, busy)))
            }
        })
    };
    let connection = http.serve_connection_with_upgrades(TokioIo::new(io), service);
    tokio::pin!(connection);
    let result = tokio::select! {
        result = connection.as_mut() => result,
        () = activity.idle_for(head_timeout) => {
            tracing::debug!(remote = %info.remote, "no request head within the limit; closing");
            Ok(())
        }
        () = stopping(&mut life.stop) => {
            let early = !first.seen.load(Ordering::Relaxed);
            let ended = if early {
                tokio::select! {
                    result = connection.as_mut() => Some(result),
                    () = first.arrived.notified() => None,
                    () = tokio::time::sleep(FIRST_REQUEST_GRACE) => None,
                }
            } else {
                None
            };
            match ended {
                Some(result) => result,
                None => {
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            }
        }
    };
    if let Err(err) = result {
        tracing::debug!(%err, remote = %info.remote, tls = info.tls, "connection ended with an error");
    }
}

/// Accepts on `listener`, or never when there is none (so `select!` can treat both alike).
async fn accept_on(listener: Option<&TcpListener>) -> io::Result<(TcpStream, SocketAddr)> {
    match listener {
        Some(listener) => listener.accept().await,
        None => std::future::pending().await,
    }
}

/// Hands every connection already queued on `listener` to `serve`, then closes it. A plain
/// non-blocking `accept` until the queue is empty: the reactor's readiness may lag behind the
/// kernel's queue, the socket's own answer does not.
fn drain(listener: TcpListener, mut serve: impl FnMut(TcpStream, SocketAddr)) {
    let listener = match listener.into_std() {
        Ok(listener) => listener,
        Err(err) => {
            tracing::warn!(%err, "cannot drain the accept queue");
            return;
        }
    };
    while let Ok((stream, remote)) = listener.accept() {
        match stream
            .set_nonblocking(true)
            .and_then(|()| TcpStream::from_std(stream))
        {
            Ok(stream) => serve(stream, remote),
            Err(err) => tracing::debug!(%err, %remote, "dropping a queued connection"),
        }
    }
}

/// Answers `GET /metrics` with [`RouterHandle::metrics_text`], anything else with 404.
async fn serve_metrics(
    listener: TcpListener,
    handle: RouterHandle,
    token: Option<Arc<str>>,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    loop {
        let (stream, remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    tracing::warn!(%err, "metrics accept failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
            () = &mut shutdown => return,
        };
        let (handle, token) = (handle.clone(), token.clone());
        let service = service_fn(move |request: Request<Incoming>| {
            let handle = handle.clone();
            let allowed = token.as_deref().is_none_or(|t| bearer_matches(&request, t));
            async move {
                Ok::<_, std::convert::Infallible>(if allowed {
                    metrics_response(&handle, &request)
                } else {
                    unauthorized()
                })
            }
        });
        tokio::spawn(async move {
            let served = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service)
                .await;
            if let Err(err) = served {
                tracing::debug!(%err, %remote, "metrics connection ended with an error");
            }
        });
    }
}

/// Whether `request` carries `Authorization: Bearer TOKEN` with this token. Compared in time
/// that does not depend on where the bytes differ.
fn bearer_matches(request: &Request<Incoming>, token: &str) -> bool {
    let Some(given) = request
        .headers()
        .get(header::AUTHORIZATION)
        .map(HeaderValue::as_bytes)
        .and_then(|v| v.strip_prefix(b"Bearer "))
    else {
        return false;
    };
    let expected = token.as_bytes();
    given.len() == expected.len()
        && given
            .iter()
            .zip(expected)
            .fold(0u8, |diff, (a, b)| diff | (a ^ b))
            == 0
}

/// The `401` to a metrics request without the configured token.
fn unauthorized() -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(
        b"the router's metrics need Authorization: Bearer TOKEN (--metrics-token-file)\n",
    )));
    *response.status_mut() = StatusCode::UNAUTHORIZED;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    headers.insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"berth-router metrics\""),
    );
    response
}

fn metrics_response(handle: &RouterHandle, request: &Request<Incoming>) -> Response<Full<Bytes>> {
    let (status, content_type, body) = if request.uri().path() == "/metrics" {
        (
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            handle.metrics_text(),
        )
    } else {
        (
            StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            "only /metrics here\n".to_owned(),
        )
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}
