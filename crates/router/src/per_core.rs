//! One router, one listener per core, able to take over its address from a running router.
//!
//! Why: the proxy is fastest with one single-threaded runtime per core, each accepting on its
//! own `SO_REUSEPORT` socket, so that a connection, its requests and its upstream connections
//! stay on one thread (see `upstream`'s per-thread pools). `scripts/bench-router` measured
//! the same proxy on one multi-threaded runtime at ~25 % fewer requests per second and ~30 %
//! more CPU per request. A node's router restarts by taking over its port
//! ([`crate::bind_reuseport_takeover`]); with several sockets the steering that makes the
//! takeover reset nobody must also be *released* once the old router has gone, or every
//! connection would stay on one core: [`Steering::release_when_alone`].

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use crate::socket::{
    attach_steering, bind_or_join, detach_steering, listen_socket, listeners_like, LISTEN_BACKLOG,
};

/// How often [`Steering::release_when_alone`] looks whether the old router has gone.
const RELEASE_POLL: Duration = Duration::from_millis(50);

/// Where the old router's sockets cannot be counted, how long to keep steering: long enough
/// for a router to drain its accept queue and close (it does that first when told to stop).
const RELEASE_BLIND: Duration = Duration::from_secs(30);

/// The listeners of a router with one per core, bound by [`bind_per_core_takeover`].
#[derive(Debug)]
pub struct CoreListeners {
    /// One listening socket per core, not yet registered with a runtime: each core's runtime
    /// registers its own (`tokio::net::TcpListener::from_std`), so that its connections are
    /// driven by that core's reactor.
    pub listeners: Vec<std::net::TcpListener>,
    /// Set when another router listened on the address: new connections are steered to the
    /// first listener until [`Steering::release_when_alone`] runs its course.
    pub steering: Option<Steering>,
}

/// The takeover steering of a [`CoreListeners`] group.
#[derive(Debug)]
pub struct Steering {
    /// A second descriptor of the steered socket (the group is the kernel's, reachable through
    /// any of its sockets).
    socket: socket2::Socket,
    /// How many listeners of the group are this router's.
    ours: usize,
}

/// Binds `cores` listeners (at least one) on `addr` in one `SO_REUSEPORT` group of its own,
/// failing with "address in use" when anything already listens there: for a router that must
/// not share its port with another one by accident (`berth up`: two of them on one machine
/// must collide loudly). The first socket binds without `SO_REUSEPORT` and opens the group
/// only once it holds the port.
pub fn bind_per_core(addr: SocketAddr, cores: usize) -> io::Result<CoreListeners> {
    let first = listen_socket(addr)?;
    first.bind(&addr.into())?;
    first.set_reuse_port(true)?;
    first.listen(LISTEN_BACKLOG)?;
    let listeners = join_group(first, cores)?;
    Ok(CoreListeners {
        listeners: listeners.into_iter().map(Into::into).collect(),
        steering: None,
    })
}

/// `first`, listening, and `cores - 1` more sockets joining its group on its address.
fn join_group(first: socket2::Socket, cores: usize) -> io::Result<Vec<socket2::Socket>> {
    // The port actually bound (port 0 picked one), for the other cores to join.
    let bound = first
        .local_addr()?
        .as_socket()
        .ok_or_else(|| io::Error::other("the router's socket has no IP address"))?;
    let mut sockets = vec![first];
    for _ in 1..cores.max(1) {
        let socket = listen_socket(bound)?;
        socket.set_reuse_port(true)?;
        socket.bind(&bound.into())?;
        socket.listen(LISTEN_BACKLOG)?;
        sockets.push(socket);
    }
    Ok(sockets)
}

/// Binds `cores` listeners (at least one) on `addr` in one `SO_REUSEPORT` group.
///
/// When nobody listens on `addr`, that is all: the kernel spreads new connections over them by
/// hash. When another router listens there (a restart: `berth agent --replace`, a second
/// `berth router`), the new sockets join its group and a program steers every new connection
/// to the first new one, as [`crate::bind_reuseport_takeover`] does: the old router, told to
/// stop, resets nobody. Call [`Steering::release_when_alone`] then, so that the cores share
/// the load once the old router has gone. Port 0 picks a free port for the whole group.
pub fn bind_per_core_takeover(addr: SocketAddr, cores: usize) -> io::Result<CoreListeners> {
    let cores = cores.max(1);
    let first = listen_socket(addr)?;
    let joined = bind_or_join(&first, addr)?;
    let sockets = join_group(first, cores)?;
    let steering = if joined {
        // Sockets join the group's list in `listen` order: the old router's first, then ours.
        let old = match listeners_like(&sockets[0]) {
            Some(total) => total.saturating_sub(cores),
            None => {
                tracing::warn!("cannot count the listeners on the router's address; assuming one");
                1
            }
        };
        attach_steering(&sockets[0], old)?;
        Some(Steering {
            socket: sockets[0].try_clone()?,
            ours: cores,
        })
    } else {
        None
    };
    Ok(CoreListeners {
        listeners: sockets.into_iter().map(Into::into).collect(),
        steering,
    })
}

impl Steering {
    /// Waits until no listener but this router's is left on the address (the old router has
    /// closed its socket), then removes the steering program, so that new connections are
    /// spread over every core again. Where the listeners cannot be counted, it waits
    /// 30 s instead.
    pub async fn release_when_alone(self) {
        let started = crate::clock::tokio_now();
        loop {
            match listeners_like(&self.socket) {
                Some(count) if count <= self.ours => break,
                Some(_) => {}
                None if started.elapsed() >= RELEASE_BLIND => break,
                None => {}
            }
            tokio::time::sleep(RELEASE_POLL).await;
        }
        match detach_steering(&self.socket) {
            Ok(()) => {
                tracing::debug!("the old router has gone: connections spread over every core again")
            }
            Err(err) => {
                tracing::warn!(%err, "cannot remove the takeover steering; new connections stay on one core")
            }
        }
    }
}
