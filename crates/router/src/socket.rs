//! The socket calls under the router's listeners: a `SO_REUSEPORT` socket, joining the group of
//! a router that already listens, counting that group's listeners, and the steering program
//! of a takeover.
//!
//! Its own module so that `server` (one listener) and `per_core` (one per core) both build on
//! it without importing each other.

use std::io;
use std::net::SocketAddr;

/// The listen backlog of [`crate::bind_reuseport`] and [`crate::bind_per_core`]: room for a
/// burst of connections while a core is busy (the kernel caps it at `net.core.somaxconn`).
pub(crate) const LISTEN_BACKLOG: i32 = 4096;

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
#[allow(
    unsafe_code,
    reason = "setsockopt(SO_ATTACH_REUSEPORT_CBPF) has no safe wrapper; see SAFETY"
)]
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
#[allow(
    unsafe_code,
    reason = "setsockopt(SO_DETACH_REUSEPORT_BPF) has no safe wrapper; see SAFETY"
)]
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
