//! A cap on a listener's open connections that keeps room for the clients that matter.
//!
//! Without one, anyone who can reach a port can open connections until the process runs out
//! of file descriptors, and then nobody is served ("Too many open files"). Refusing newcomers
//! at a cap is not enough either: whoever holds the cap with idle connections then locks
//! everyone else out. So the rules are:
//!
//! - **A global cap** ([`ConnLimits::max`]), sized below the open-files limit so the process
//!   always has descriptors left for its store, logs and outgoing connections.
//! - **A reserve** ([`ConnLimits::reserve`]): the last part of the cap only admits
//!   connections from *known* sources, those that have authenticated before
//!   ([`ConnLimiter::mark_known`]). Strangers share `max - reserve`.
//! - **A per-source cap** ([`ConnLimits::per_source`]) for unknown sources: one address (an
//!   IPv6 /64) cannot take the strangers' share alone. Known sources are not capped per
//!   address: a fleet behind one NAT address is one source.
//! - **Idle connections make room.** When a cap is reached, the connection that has been idle
//!   longest (no request in progress, per its [`Activity`]) in the class that is full is
//!   closed to admit the newcomer: first among the same unknown source, then among unknown
//!   sources, and only for a known newcomer among known sources. Closing an idle keep-alive
//!   connection is always allowed in HTTP (clients retry a request that was never sent), and a
//!   connection that is still sending its first head counts as idle. A connection with a
//!   request in progress (a long-poll, an event stream, an upload) is never closed for room; if
//!   every candidate is busy, the newcomer is refused ([`Refused`]).
//!
//! So a flood of idle or slowloris connections costs its sender its own connections, never a
//! request in progress, and a newcomer (an agent's heartbeat, a health check) gets in unless
//! the cap is full of real work. The memory is bounded: at most `max` entries and
//! [`MAX_KNOWN`] known sources.
//!
//! This is the decision and the bookkeeping only; the accept loop closes the socket of a
//! refused connection and watches [`Slot::evicted`] next to its [`Activity::idle_for`].

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::Notify;

use crate::head_guard::Activity;

/// The most connections a listener holds, whatever the open-files limit: beyond this the memory
/// of idle connections matters more than descriptors (32,768 is three long-polls each for
/// 10,000 nodes).
pub const MAX_CONNECTIONS: usize = 32_768;

/// The most sources remembered as known; the least recently authenticated is forgotten first.
pub const MAX_KNOWN: usize = 4_096;

/// The caps of a [`ConnLimiter`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnLimits {
    /// Open connections in all.
    pub max: usize,
    /// Of `max`, how many only known sources may use.
    pub reserve: usize,
    /// Open connections from one unknown source (an IPv4 address, an IPv6 /64).
    pub per_source: usize,
}

impl ConnLimits {
    /// The caps for a process allowed `fd_limit` open files: three quarters of them for
    /// connections (the rest stay for the store, logs, child processes and outgoing
    /// connections), at most [`MAX_CONNECTIONS`]; a quarter of those reserved for known
    /// sources; an eighth (at least 16) per unknown source. With 1,024 files: 768, 192, 96.
    pub fn for_fd_limit(fd_limit: u64) -> ConnLimits {
        let files = usize::try_from(fd_limit).unwrap_or(usize::MAX);
        let max = (files / 4 * 3).clamp(16, MAX_CONNECTIONS);
        ConnLimits::new(max, max / 4, (max / 8).max(16))
    }

    /// Caps as given, made consistent: `max` at least 1, `reserve` below `max`, `per_source`
    /// at least 1 and at most what strangers share.
    pub fn new(max: usize, reserve: usize, per_source: usize) -> ConnLimits {
        let max = max.max(1);
        let reserve = reserve.min(max - 1);
        let per_source = per_source.clamp(1, max - reserve);
        ConnLimits {
            max,
            reserve,
            per_source,
        }
    }
}

/// Where a connection comes from, as far as the caps go: an IPv4 address, or an IPv6 /64
/// (one subscriber's prefix; a host can use any address in it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Source {
    V4(u32),
    V6(u64),
}

impl Source {
    fn of(ip: IpAddr) -> Source {
        match ip {
            IpAddr::V4(v4) => Source::V4(u32::from(v4)),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Source::V4(u32::from(v4)),
                None => Source::V6((u128::from(v6) >> 64) as u64),
            },
        }
    }
}

/// A newcomer that could not be admitted: the cap is full and every connection that could
/// make room has a request in progress. The accept loop closes its socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refused;

/// One open connection as the limiter sees it.
struct Entry {
    source: Source,
    /// Whether it was admitted as coming from a known source (and counted so).
    known: bool,
    activity: Arc<Activity>,
    evict: Arc<Eviction>,
}

/// Set when the limiter closes a connection to make room.
#[derive(Default)]
struct Eviction {
    done: AtomicBool,
    notify: Notify,
}

#[derive(Default)]
struct State {
    /// By admission order, so ties between equally idle connections go to the oldest.
    conns: BTreeMap<u64, Entry>,
    next_id: u64,
    unknown: usize,
    per_source: HashMap<Source, usize>,
    /// Known source → when it last authenticated (a counter, not a clock).
    known: HashMap<Source, u64>,
    marks: u64,
}

impl State {
    /// The connection idle longest among those `candidate` accepts.
    fn oldest_idle(&self, candidate: impl Fn(&Entry) -> bool) -> Option<u64> {
        self.conns
            .iter()
            .filter(|(_, e)| candidate(e))
            .filter_map(|(id, e)| e.activity.idle_since_ms().map(|since| (since, *id)))
            .min()
            .map(|(_, id)| id)
    }

    /// Forgets `id` and, if `evict`, tells its task to close it.
    fn remove(&mut self, id: u64, evict: bool) {
        let Some(entry) = self.conns.remove(&id) else {
            return;
        };
        if !entry.known {
            self.unknown -= 1;
            if let Some(n) = self.per_source.get_mut(&entry.source) {
                *n -= 1;
                if *n == 0 {
                    self.per_source.remove(&entry.source);
                }
            }
        }
        if evict {
            entry.evict.done.store(true, Ordering::Relaxed);
            entry.evict.notify.notify_one();
        }
    }
}

/// The connection cap of one listener (see the module documentation). Shared by its accept
/// loop, which [`admit`](ConnLimiter::admit)s every connection, and by whatever learns that a
/// source authenticated ([`mark_known`](ConnLimiter::mark_known)).
pub struct ConnLimiter {
    limits: ConnLimits,
    state: Mutex<State>,
}

impl std::fmt::Debug for ConnLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnLimiter")
            .field("limits", &self.limits)
            .field("open", &self.open())
            .finish()
    }
}

impl ConnLimiter {
    /// A limiter with no connection open and no source known.
    pub fn new(limits: ConnLimits) -> Arc<ConnLimiter> {
        Arc::new(ConnLimiter {
            limits,
            state: Mutex::new(State::default()),
        })
    }

    /// The caps in force.
    pub fn limits(&self) -> ConnLimits {
        self.limits
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Admits a connection from `peer`, closing the idle connection that makes room for it if
    /// a cap is reached, or refuses it when no connection can make room. The slot holds the
    /// connection's place (and its [`Activity`]) until it is dropped.
    pub fn admit(self: &Arc<Self>, peer: IpAddr) -> Result<Slot, Refused> {
        let source = Source::of(peer);
        let mut state = self.state();
        let known = state.known.contains_key(&source);
        let limits = self.limits;
        if !known && state.per_source.get(&source).copied().unwrap_or(0) >= limits.per_source {
            let victim = state
                .oldest_idle(|e| !e.known && e.source == source)
                .ok_or(Refused)?;
            state.remove(victim, true);
        }
        if known {
            if state.conns.len() >= limits.max {
                let victim = state
                    .oldest_idle(|e| !e.known)
                    .or_else(|| state.oldest_idle(|e| e.known))
                    .ok_or(Refused)?;
                state.remove(victim, true);
            }
        } else if state.unknown >= limits.max - limits.reserve || state.conns.len() >= limits.max {
            let victim = state.oldest_idle(|e| !e.known).ok_or(Refused)?;
            state.remove(victim, true);
        }
        let id = state.next_id;
        state.next_id += 1;
        let activity = Activity::new();
        let evict = Arc::new(Eviction::default());
        if !known {
            state.unknown += 1;
            *state.per_source.entry(source).or_insert(0) += 1;
        }
        state.conns.insert(
            id,
            Entry {
                source,
                known,
                activity: activity.clone(),
                evict: evict.clone(),
            },
        );
        Ok(Slot {
            limiter: self.clone(),
            id,
            activity,
            evict,
        })
    }

    /// Remembers that `peer` has authenticated: its next connections may use the reserve and
    /// are not capped per source. At most [`MAX_KNOWN`] sources are remembered.
    pub fn mark_known(&self, peer: IpAddr) {
        let source = Source::of(peer);
        let mut state = self.state();
        state.marks += 1;
        let mark = state.marks;
        if let Some(seen) = state.known.get_mut(&source) {
            *seen = mark;
            return;
        }
        if state.known.len() >= MAX_KNOWN {
            if let Some(oldest) = state
                .known
                .iter()
                .min_by_key(|(_, seen)| **seen)
                .map(|(s, _)| *s)
            {
                state.known.remove(&oldest);
            }
        }
        state.known.insert(source, mark);
    }

    /// Whether `peer` counts as known (has authenticated before).
    pub fn is_known(&self, peer: IpAddr) -> bool {
        self.state().known.contains_key(&Source::of(peer))
    }

    /// How many connections are open (admitted and neither dropped nor evicted).
    pub fn open(&self) -> usize {
        self.state().conns.len()
    }
}

/// An admitted connection's place under the cap; dropping it frees the place.
pub struct Slot {
    limiter: Arc<ConnLimiter>,
    id: u64,
    activity: Arc<Activity>,
    evict: Arc<Eviction>,
}

impl std::fmt::Debug for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Slot")
            .field("id", &self.id)
            .field("evicted", &self.is_evicted())
            .finish()
    }
}

impl Slot {
    /// The connection's activity: mark requests with [`Activity::begin`], so that the limiter
    /// never closes it during one, and guard it with [`Activity::idle_for`].
    pub fn activity(&self) -> &Arc<Activity> {
        &self.activity
    }

    /// Whether the limiter has closed this connection to make room for another.
    pub fn is_evicted(&self) -> bool {
        self.evict.done.load(Ordering::Relaxed)
    }

    /// Resolves once the limiter closes this connection to make room: the connection's task
    /// then drops it.
    pub async fn evicted(&self) {
        loop {
            let notified = self.evict.notify.notified();
            if self.is_evicted() {
                return;
            }
            notified.await;
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.limiter.state().remove(self.id, false);
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(10, 0, 0, last))
    }

    fn admit_n(limiter: &Arc<ConnLimiter>, peer: IpAddr, n: usize) -> Vec<Slot> {
        (0..n)
            .map(|i| {
                limiter
                    .admit(peer)
                    .unwrap_or_else(|_| panic!("connection {i} from {peer} refused"))
            })
            .collect()
    }

    #[test]
    fn limits_follow_the_open_files_limit() {
        assert_eq!(
            ConnLimits::for_fd_limit(1024),
            ConnLimits::new(768, 192, 96)
        );
        let huge = ConnLimits::for_fd_limit(u64::MAX);
        assert_eq!(huge.max, MAX_CONNECTIONS);
        let tiny = ConnLimits::for_fd_limit(0);
        assert!(tiny.max >= 1 && tiny.reserve < tiny.max && tiny.per_source >= 1);
        assert!(tiny.per_source <= tiny.max - tiny.reserve);
    }

    #[test]
    fn an_unknown_source_at_its_cap_loses_its_own_oldest_idle_connection() {
        let limiter = ConnLimiter::new(ConnLimits::new(100, 10, 3));
        let other = admit_n(&limiter, ip(2), 1);
        let first = admit_n(&limiter, ip(1), 3);
        let fourth = limiter.admit(ip(1)).expect("room is made, not refused");
        assert!(first[0].is_evicted(), "the oldest idle one makes room");
        assert!(!first[1].is_evicted() && !first[2].is_evicted());
        assert!(!other[0].is_evicted(), "another source is not touched");
        assert!(!fourth.is_evicted());
        assert_eq!(limiter.open(), 4);
    }

    #[test]
    fn a_connection_with_a_request_in_progress_is_never_closed_for_room() {
        let limiter = ConnLimiter::new(ConnLimits::new(100, 10, 2));
        let slots = admit_n(&limiter, ip(1), 2);
        let busy: Vec<_> = slots.iter().map(|s| s.activity().begin()).collect();
        assert_eq!(limiter.admit(ip(1)).err(), Some(Refused));
        assert!(slots.iter().all(|s| !s.is_evicted()));
        // Once one request ends, that connection is idle and makes room.
        drop(busy);
        let _third = limiter.admit(ip(1)).expect("an idle connection makes room");
        assert_eq!(slots.iter().filter(|s| s.is_evicted()).count(), 1);
    }

    #[test]
    fn the_longest_idle_connection_goes_first() {
        let limiter = ConnLimiter::new(ConnLimits::new(100, 10, 2));
        let slots = admit_n(&limiter, ip(1), 2);
        // The first was busy until now: the second has been idle longer.
        drop(slots[0].activity().begin());
        std::thread::sleep(std::time::Duration::from_millis(5));
        drop(slots[0].activity().begin());
        let _third = limiter.admit(ip(1)).expect("admitted");
        assert!(!slots[0].is_evicted());
        assert!(slots[1].is_evicted());
    }

    #[test]
    fn strangers_cannot_take_the_reserve_and_known_sources_can() {
        let limiter = ConnLimiter::new(ConnLimits::new(10, 4, 10));
        limiter.mark_known(ip(9));
        // Strangers fill their share (6) with requests in progress.
        let strangers: Vec<_> = (1..=6).map(|i| admit_n(&limiter, ip(i), 1)).collect();
        let _busy: Vec<_> = strangers.iter().map(|s| s[0].activity().begin()).collect();
        assert_eq!(
            limiter.admit(ip(7)).err(),
            Some(Refused),
            "no stranger past max - reserve"
        );
        // The known source uses the reserve, up to the global cap.
        let known = admit_n(&limiter, ip(9), 4);
        assert_eq!(limiter.open(), 10);
        // Full, and every stranger busy: a known newcomer makes room among known idle ones.
        let _more = limiter
            .admit(ip(9))
            .expect("a known idle connection makes room");
        assert_eq!(known.iter().filter(|s| s.is_evicted()).count(), 1);
        // A stranger cannot make room by closing a known source's connection.
        assert_eq!(limiter.admit(ip(8)).err(), Some(Refused));
        assert!(strangers.iter().all(|s| !s[0].is_evicted()));
    }

    #[test]
    fn a_known_newcomer_at_the_cap_closes_a_strangers_idle_connection_first() {
        let limiter = ConnLimiter::new(ConnLimits::new(4, 1, 4));
        limiter.mark_known(ip(9));
        let known = admit_n(&limiter, ip(9), 1);
        let strangers = admit_n(&limiter, ip(1), 3);
        assert_eq!(limiter.open(), 4);
        let _newcomer = limiter.admit(ip(9)).expect("admitted");
        assert!(
            !known[0].is_evicted(),
            "the known source's older connection stays"
        );
        assert_eq!(strangers.iter().filter(|s| s.is_evicted()).count(), 1);
        assert_eq!(limiter.open(), 4);
    }

    #[test]
    fn a_full_listener_of_idle_strangers_still_admits_a_stranger() {
        // The flood case: an attacker's idle connections fill the strangers' share; a health
        // check from elsewhere gets in, and the attacker's oldest goes.
        let limiter = ConnLimiter::new(ConnLimits::new(8, 2, 8));
        let flood = admit_n(&limiter, ip(1), 6);
        let _check = limiter.admit(ip(2)).expect("admitted");
        assert!(flood[0].is_evicted());
        assert_eq!(limiter.open(), 6);
    }

    #[test]
    fn dropping_and_evicting_free_places_exactly_once() {
        let limiter = ConnLimiter::new(ConnLimits::new(3, 0, 3));
        let mut slots = admit_n(&limiter, ip(1), 3);
        let fourth = limiter.admit(ip(1)).expect("admitted");
        assert_eq!(limiter.open(), 3);
        // The evicted slot's own drop does not free another place.
        slots.remove(0);
        assert_eq!(limiter.open(), 3);
        drop(slots);
        assert_eq!(limiter.open(), 1);
        drop(fourth);
        assert_eq!(limiter.open(), 0);
        let _again = admit_n(&limiter, ip(1), 3);
    }

    #[tokio::test]
    async fn an_evicted_slot_wakes_its_task() {
        let limiter = ConnLimiter::new(ConnLimits::new(1, 0, 1));
        let first = limiter.admit(ip(1)).expect("admitted");
        let waiter = tokio::spawn(async move { first.evicted().await });
        tokio::task::yield_now().await;
        let _second = limiter.admit(ip(1)).expect("admitted");
        tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .expect("woken")
            .expect("task");
    }

    #[test]
    fn known_sources_are_bounded_and_the_least_recent_is_forgotten() {
        let limiter = ConnLimiter::new(ConnLimits::new(10, 2, 2));
        let v6 = |n: u32| {
            IpAddr::V6(Ipv6Addr::new(
                0x2001,
                0xdb8,
                (n >> 16) as u16,
                n as u16,
                0,
                0,
                0,
                1,
            ))
        };
        for n in 0..MAX_KNOWN as u32 {
            limiter.mark_known(v6(n));
        }
        limiter.mark_known(v6(0)); // seen again: now the most recent
        limiter.mark_known(v6(MAX_KNOWN as u32));
        assert!(limiter.is_known(v6(0)));
        assert!(!limiter.is_known(v6(1)), "the least recent is forgotten");
        assert!(limiter.is_known(v6(MAX_KNOWN as u32)));
        assert_eq!(limiter.state().known.len(), MAX_KNOWN);
    }

    #[test]
    fn an_ipv6_slash_64_is_one_source_and_mapped_ipv4_is_ipv4() {
        let limiter = ConnLimiter::new(ConnLimits::new(100, 0, 2));
        let a = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 1, 0, 0, 0, 1));
        let b = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 1, 0xffff, 0, 0, 2));
        let slots = [limiter.admit(a).expect("a"), limiter.admit(b).expect("b")];
        let _third = limiter
            .admit(IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 1, 7, 7, 7, 7)))
            .expect("admitted");
        assert!(slots[0].is_evicted(), "the same /64 shares one cap");
        let mapped = IpAddr::V6(Ipv4Addr::new(10, 0, 0, 1).to_ipv6_mapped());
        limiter.mark_known(ip(1));
        assert!(limiter.is_known(mapped));
    }
}
