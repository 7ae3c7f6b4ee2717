//! The compiled form of a [`RouteTable`]: what the hot path reads.
//!
//! Compiling normalises hosts and prefixes once, groups routes by host and sorts each group
//! longest prefix first, so a lookup is one hash probe plus a short scan that stops at the first
//! match. A compiled table is immutable; [`crate::RouterHandle`] swaps whole tables with
//! `arc-swap`, so readers never take a lock and never see a half-updated table.

use std::borrow::Cow;
use std::cell::Cell;
use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, COOKIE};
use http::HeaderMap;

use crate::service::{Limiter, ServiceState};
use crate::stats::{shard, ArmStats, Counters, Padded, SHARDS};
use crate::table::{Endpoint, Limits, RouteTable, Sticky, BASIS_POINTS};
use crate::upstream::Upstream;

/// A routing table ready for lookups.
#[derive(Debug, Default)]
pub(crate) struct CompiledTable {
    /// The table this was compiled from, kept so the shell can read back what is live.
    pub(crate) source: Arc<RouteTable>,
    /// Normalised host → routes, longest prefix first.
    hosts: HashMap<String, Vec<Arc<Route>>>,
}

/// The long-lived state a compile links routes to: per-service state by name and per-instance
/// state by address, both surviving table swaps.
#[derive(Default)]
pub(crate) struct Registry {
    pub(crate) services: HashMap<String, Arc<ServiceState>>,
    pub(crate) upstreams: HashMap<SocketAddr, Arc<Upstream>>,
    /// Per-arm counters by (route's service, release, arm), kept for the router's life (the
    /// traffic reports are cumulative since it started; releases are few).
    pub(crate) arms: HashMap<ArmKey, Arc<ArmStats>>,
}

/// An arm's identity: the route's service (`STACK/SERVICE`), the release, and `release` for the
/// route's own release groups or the split service's name.
pub(crate) type ArmKey = (String, u64, String);

/// The arm name of a route's own release groups in [`ArmKey`] and traffic reports.
pub(crate) const OWN_ARM: &str = "release";

/// One route, with everything the proxy needs precomputed.
#[derive(Debug)]
pub(crate) struct Route {
    /// Normalised prefix: starts with `/`, no trailing `/`; empty for the root (matches all).
    prefix: String,
    /// The service's name, for error bodies and logs.
    pub(crate) name: Arc<str>,
    /// The service's counters, histogram and budget; shared by its routes and across tables.
    pub(crate) service: Arc<ServiceState>,
    pub(crate) endpoints: Box<[Target]>,
    /// Release groups (see [`crate::Endpoint::weight`]), in table order, of the route's own
    /// endpoints (`endpoints[..own]`); a split's endpoints follow them and form no group.
    groups: Box<[Group]>,
    /// Sum of the groups' weights.
    total_weight: u64,
    /// How many of `endpoints` are the route's own (the rest are the split service's).
    own: usize,
    /// Bucket ranges of the shares, new release first: a bucket below `until` goes to that
    /// group (`None`: the release has no endpoint now). Empty: split by weights.
    arms: ShareRanges,
    /// Where buckets past the shares' sum go (the first share listed).
    arms_rest: Option<usize>,
    /// The sticky hash's state after the route's salt (so a request hashes only its key).
    salt_state: u64,
    sticky: Key,
    /// The match header: name, value, and the group it sends to.
    matched: Option<(HeaderName, HeaderValue, Option<usize>)>,
    /// The split's share, key source and hash state (salted with the route's and the split
    /// service's names, never the rollout's salt).
    split: Option<(u32, Key, u64)>,
    /// `berth_arm_<hash of host and prefix>`.
    cookie_name: Box<str>,
    /// The split service's counters (its answers count there, not in the route's service).
    split_service: Option<Arc<ServiceState>>,
    /// Rotation offset for ties between equally loaded endpoints, so sequential requests
    /// spread round-robin; one per worker thread ([`crate::stats::shard`]), so cores do not
    /// share a cache line per request. Shared with the same (host, prefix) route of the
    /// previous table.
    next: Arc<[Padded<AtomicUsize>; SHARDS]>,
    /// The service's overload limiter, when it has limits.
    pub(crate) limiter: Option<Arc<Limiter>>,
    /// The maintenance page, when the route is in maintenance.
    pub(crate) maintenance: Option<Bytes>,
    /// The route's response-head timeout, when its entry sets one (see
    /// [`crate::RouteEntry::timeout_ms`]); the router's default otherwise.
    pub(crate) timeout: Option<std::time::Duration>,
}

/// The endpoints of one release and their summed weight.
#[derive(Debug)]
struct Group {
    weight: u64,
    members: Box<[usize]>,
}

/// An endpoint with its long-lived state attached.
#[derive(Debug)]
pub(crate) struct Target {
    pub(crate) endpoint: Endpoint,
    pub(crate) upstream: Arc<Upstream>,
    /// The counters of this endpoint's (service, release).
    pub(crate) release_counters: Arc<Counters>,
    /// The counters of this endpoint's arm (what traffic reports and per-arm metrics show).
    pub(crate) arm: Arc<ArmStats>,
}

/// Where a request's sticky key comes from, compiled.
#[derive(Debug)]
enum Key {
    Cookie,
    Header(HeaderName),
    Random,
}

/// Where one request goes, decided once before its first attempt so retries stay on its arm.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Choice {
    /// To the split service's endpoints.
    split: bool,
    /// The release group to prefer (`None`: any of the side's endpoints).
    group: Option<usize>,
    /// Sent by the match header (counted as matched, not in the arm's requests).
    pub(crate) matched: bool,
    /// A sticky key minted for a client without the cookie: set it on the answer.
    pub(crate) set_cookie: Option<u64>,
}

/// How long a minted sticky cookie lives (30 days): an experiment outlasts a browser session.
const COOKIE_MAX_AGE_SECS: u64 = 30 * 24 * 3600;

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// FNV-1a over `bytes` from `state`: fixed (not per-process) so every router, and a restarted
/// one, puts a key in the same bucket.
fn fnv(mut state: u64, bytes: &[u8]) -> u64 {
    for b in bytes {
        state ^= u64::from(*b);
        state = state.wrapping_mul(FNV_PRIME);
    }
    state
}

/// The hash state after `salt` and a separator (a salt can never run into the key).
fn salted(salt: &str, extra: &str) -> u64 {
    let state = fnv(fnv(FNV_OFFSET, salt.as_bytes()), &[0xff]);
    if extra.is_empty() {
        state
    } else {
        fnv(fnv(state, extra.as_bytes()), &[0xff])
    }
}

/// A key's bucket in `[0, BASIS_POINTS)`: FNV-1a then the splitmix64 finaliser, so keys that
/// differ in one byte land far apart.
pub(crate) fn bucket(salt_state: u64, key: &[u8]) -> u32 {
    let mut x = fnv(salt_state, key);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^= x >> 31;
    (x % u64::from(BASIS_POINTS)) as u32
}

/// A minted key as the cookie carries it: 16 lower-case hex digits.
fn hex_key(key: u64) -> [u8; 16] {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = [0u8; 16];
    for (i, slot) in out.iter_mut().enumerate() {
        *slot = DIGITS[((key >> (60 - 4 * i)) & 0xf) as usize];
    }
    out
}

/// The value of cookie `name` in the request's `Cookie` headers (any of them), if sent.
fn cookie_value<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a [u8]> {
    let name = name.as_bytes();
    headers.get_all(COOKIE).iter().find_map(|value| {
        value.as_bytes().split(|b| *b == b';').find_map(|pair| {
            let pair = pair.trim_ascii();
            pair.strip_prefix(name)
                .and_then(|rest| rest.strip_prefix(b"="))
                .map(<[u8]>::trim_ascii)
        })
    })
}

fn compile_key(sticky: &Sticky, route: &str) -> Key {
    match sticky {
        Sticky::Cookie => Key::Cookie,
        Sticky::None => Key::Random,
        Sticky::Header { name } => match HeaderName::from_bytes(name.as_bytes()) {
            Ok(name) => Key::Header(name),
            Err(_) => {
                tracing::warn!(service = %route, header = %name, "sticky header is not a valid header name: placing requests at random");
                Key::Random
            }
        },
    }
}

/// Groups larger than this pick by "power of two choices" instead of scanning every endpoint.
const SCAN_LIMIT: usize = 16;

thread_local! {
    /// xorshift64* state: weighted group choice and P2C need cheap, not cryptographic, randomness.
    static RNG: Cell<u64> = Cell::new(RandomState::new().hash_one(0x5eed_u64) | 1);
}

/// A pseudo-random number (per-thread xorshift64*).
pub(crate) fn random() -> u64 {
    RNG.with(|state| {
        let mut x = state.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        state.set(x);
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    })
}

impl Route {
    /// Picks an endpoint (its index in [`Route::endpoints`]), avoiding `avoid` (the endpoint a
    /// retry just failed on) when any other can serve; `None` when the route has no endpoints.
    ///
    /// First a release group is drawn at random in proportion to the weights; within it, the
    /// non-ejected endpoint with the fewest outstanding requests wins, ties broken round-robin.
    /// If the group has none to offer, any non-ejected endpoint of the route will do; if every
    /// endpoint is ejected, the least loaded one is used anyway (panic mode, as Envoy does: a
    /// guess is better than a certain 503 when the health data may be stale).
    #[cfg(test)]
    pub(crate) fn pick(&self, avoid: Option<usize>, now: u64) -> Option<usize> {
        let choice = self.choose(&HeaderMap::new());
        self.pick_for(&choice, avoid, now)
    }

    /// Decides where a request goes, from its headers: the match header first (to its
    /// release), then the split (sticky buckets with the split's salt), then the shares (sticky
    /// buckets with the route's salt, the new release owning `[0, w)`), or, without shares, a
    /// release group drawn at random by weight. A client without the sticky cookie gets a
    /// minted key, in [`Choice::set_cookie`]. Allocates nothing.
    pub(crate) fn choose(&self, headers: &HeaderMap) -> Choice {
        if let Some((name, value, Some(group))) = &self.matched {
            if headers.get_all(name).iter().any(|v| v == value) {
                return Choice {
                    group: Some(*group),
                    matched: true,
                    ..Choice::default()
                };
            }
        }
        let mut minted = None;
        if let Some((basis_points, key, state)) = &self.split {
            if self.bucket_of(key, *state, headers, &mut minted) < *basis_points {
                return Choice {
                    split: true,
                    set_cookie: minted,
                    ..Choice::default()
                };
            }
        }
        let group = if self.groups.is_empty() {
            None
        } else if self.arms.is_empty() {
            Some(self.choose_group())
        } else {
            let b = self.bucket_of(&self.sticky, self.salt_state, headers, &mut minted);
            self.arms
                .iter()
                .find(|(until, _)| b < *until)
                .map_or(self.arms_rest, |(_, group)| *group)
        };
        Choice {
            split: false,
            group,
            matched: false,
            set_cookie: minted,
        }
    }

    /// The request's bucket for `key` (a hash with `state`, or random).
    fn bucket_of(
        &self,
        key: &Key,
        state: u64,
        headers: &HeaderMap,
        minted: &mut Option<u64>,
    ) -> u32 {
        let random_bucket = || (random() % u64::from(BASIS_POINTS)) as u32;
        match key {
            Key::Random => random_bucket(),
            Key::Header(name) => headers
                .get(name)
                .map_or_else(random_bucket, |v| bucket(state, v.as_bytes())),
            Key::Cookie => match cookie_value(headers, &self.cookie_name) {
                Some(value) => bucket(state, value),
                None => bucket(state, &hex_key(*minted.get_or_insert_with(random))),
            },
        }
    }

    /// The service whose status counters an answer for `choice` goes to: the split service's
    /// for a split request, else the route's.
    pub(crate) fn counted_service(&self, choice: &Choice) -> &ServiceState {
        match (&self.split_service, choice.split) {
            (Some(other), true) => other,
            _ => &self.service,
        }
    }

    /// The `Set-Cookie` value that keeps a client with minted `key` on its arm.
    pub(crate) fn set_cookie(&self, key: u64) -> Option<HeaderValue> {
        let key = hex_key(key);
        let key = std::str::from_utf8(&key).ok()?;
        HeaderValue::from_str(&format!(
            "{}={key}; Path=/; Max-Age={COOKIE_MAX_AGE_SECS}; HttpOnly; SameSite=Lax",
            self.cookie_name
        ))
        .ok()
    }

    /// Picks an endpoint for `choice` (its index in [`Route::endpoints`]), avoiding `avoid`
    /// (the endpoint a retry just failed on) when any other can serve; `None` when the route
    /// has no endpoints.
    ///
    /// Within the chosen release group, the non-ejected endpoint with the fewest outstanding
    /// requests wins, ties broken round-robin. If the group has none to offer, any non-ejected
    /// endpoint of the same side (the route's own, or the split's) will do; if every endpoint
    /// there is ejected, the least loaded one is used anyway (panic mode, as Envoy does: a
    /// guess is better than a certain 503 when the health data may be stale). A side with no
    /// endpoint at all borrows the other's.
    pub(crate) fn pick_for(
        &self,
        choice: &Choice,
        avoid: Option<usize>,
        now: u64,
    ) -> Option<usize> {
        let n = self.endpoints.len();
        if n == 0 {
            return None;
        }
        if n == 1 {
            return Some(0);
        }
        let (lo, hi) = match (choice.split, self.own) {
            (true, own) if own < n => (own, n),
            (_, 0) => (0, n),
            (_, own) => (0, own),
        };
        let rotation = self.next[shard()].0.fetch_add(1, Ordering::Relaxed);
        let group = if choice.split { None } else { choice.group };
        group
            .and_then(|g| self.groups.get(g))
            .and_then(|g| {
                let members = &g.members;
                self.least_loaded(members.len(), |k| members[k], avoid, Some(now), rotation)
            })
            .or_else(|| self.least_loaded(hi - lo, |k| lo + k, avoid, Some(now), rotation))
            .or_else(|| self.least_loaded(hi - lo, |k| lo + k, avoid, None, rotation))
            .or(avoid)
    }

    fn choose_group(&self) -> usize {
        if self.groups.len() == 1 {
            return 0;
        }
        if self.total_weight == 0 {
            return (random() % self.groups.len() as u64) as usize;
        }
        let mut ticket = random() % self.total_weight;
        for (i, group) in self.groups.iter().enumerate() {
            if ticket < group.weight {
                return i;
            }
            ticket -= group.weight;
        }
        self.groups.len() - 1
    }

    /// The least loaded of `len` endpoints (`member(k)` maps to endpoint indices), skipping
    /// `avoid` and, when `now` is given, ejected ones.
    fn least_loaded(
        &self,
        len: usize,
        member: impl Fn(usize) -> usize,
        avoid: Option<usize>,
        now: Option<u64>,
        rotation: usize,
    ) -> Option<usize> {
        let usable = |i: usize| {
            Some(i) != avoid && now.is_none_or(|now| !self.endpoints[i].upstream.is_ejected(now))
        };
        let load = |i: usize| {
            self.endpoints[i]
                .upstream
                .outstanding
                .load(Ordering::Relaxed)
        };
        if len > SCAN_LIMIT {
            // Power of two choices: two random candidates, the less loaded wins.
            let a = member((random() % len as u64) as usize);
            let b = member((random() % len as u64) as usize);
            match (usable(a), usable(b)) {
                (true, true) => return Some(if load(b) < load(a) { b } else { a }),
                (true, false) => return Some(a),
                (false, true) => return Some(b),
                // Both unusable: fall through to a full scan.
                (false, false) => {}
            }
        }
        let mut best: Option<(usize, u32)> = None;
        for k in 0..len {
            let i = member((rotation + k) % len);
            if !usable(i) {
                continue;
            }
            let l = load(i);
            if best.is_none_or(|(_, b)| l < b) {
                best = Some((i, l));
                if l == 0 {
                    break;
                }
            }
        }
        best.map(|(i, _)| i)
    }

    fn matches(&self, path: &str) -> bool {
        prefix_matches(&self.prefix, path)
    }
}

/// The page served in maintenance mode when the table brings none.
const DEFAULT_MAINTENANCE_PAGE: &str = "<!doctype html>\n<html><head><meta charset=\"utf-8\">\
<title>Down for maintenance</title></head><body><h1>Down for maintenance</h1>\
<p>This service is being worked on and will be back shortly.</p></body></html>\n";

/// `prefix` (normalised) matches `path` on a segment boundary.
fn prefix_matches(prefix: &str, path: &str) -> bool {
    prefix.is_empty()
        || (path.starts_with(prefix)
            && matches!(path.as_bytes().get(prefix.len()), None | Some(b'/')))
}

/// Normalises a host for comparison: port stripped, lower case, trailing dot dropped.
/// Borrows when the host is already normal, which is the common case on the hot path.
pub(crate) fn normalize_host(host: &str) -> Cow<'_, str> {
    let host = host.trim();
    let host = if let Some(rest) = host.strip_prefix('[') {
        // IPv6 literal: `[::1]:8080` → `[::1]`.
        match rest.find(']') {
            Some(end) => &host[..end + 2],
            None => host,
        }
    } else {
        match host.rfind(':') {
            Some(colon) => &host[..colon],
            None => host,
        }
    };
    let host = host.strip_suffix('.').unwrap_or(host);
    if host.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(host.to_ascii_lowercase())
    } else {
        Cow::Borrowed(host)
    }
}

/// Normalises a configured prefix: leading `/` added, trailing `/`s removed, root → empty.
fn normalize_prefix(prefix: &str) -> String {
    let trimmed = prefix.trim().trim_end_matches('/');
    if trimmed.is_empty() {
        String::new()
    } else if trimmed.starts_with('/') {
        trimmed.to_owned()
    } else {
        format!("/{trimmed}")
    }
}

/// Bucket ranges: (end of the range, the release group it goes to).
type ShareRanges = Box<[(u32, Option<usize>)]>;

/// The shares' bucket ranges, new release (the last listed) first, then the others in the
/// order listed; and where buckets past their sum go (the first listed). No ranges when the
/// shares are empty or sum to nothing: the route then splits by endpoint weights.
fn compile_shares(
    shares: &[crate::table::Share],
    group_of: impl Fn(u64) -> Option<usize>,
) -> (ShareRanges, Option<usize>) {
    let total: u64 = shares.iter().map(|s| u64::from(s.basis_points)).sum();
    let (Some(newest), Some(first)) = (shares.last(), shares.first()) else {
        return (Box::new([]), None);
    };
    if total == 0 {
        return (Box::new([]), None);
    }
    let mut until = 0u32;
    let ranges = std::iter::once(newest)
        .chain(&shares[..shares.len() - 1])
        .map(|share| {
            until = until.saturating_add(share.basis_points).min(BASIS_POINTS);
            (until, group_of(share.release))
        })
        .collect();
    (ranges, group_of(first.release))
}

impl CompiledTable {
    /// Compiles `source`. `previous` lends its rotation positions; `registry` holds the
    /// long-lived per-service and per-instance state, and is pruned of instances no longer in
    /// the table (their in-flight requests keep their own references).
    pub(crate) fn compile(
        source: Arc<RouteTable>,
        previous: &CompiledTable,
        registry: &mut Registry,
    ) -> CompiledTable {
        let mut by_host: HashMap<String, Vec<Route>> = HashMap::new();
        let mut live: HashMap<SocketAddr, Arc<Upstream>> = HashMap::new();
        // The first route of a service that carries limits sets them for all its routes,
        // those listed before it included; the limiters are made once every route is read.
        let mut limits: HashMap<&str, Option<Limits>> = HashMap::new();
        for entry in &source.routes {
            let host = normalize_host(&entry.host).into_owned();
            let prefix = normalize_prefix(&entry.path_prefix);
            let routes = by_host.entry(host.clone()).or_default();
            if routes.iter().any(|r| r.prefix == prefix) {
                tracing::warn!(
                    host = %entry.host,
                    prefix = %entry.path_prefix,
                    service = %entry.service,
                    "duplicate route ignored: an earlier entry has the same host and prefix"
                );
                continue;
            }
            let next = previous
                .route(&host, &prefix)
                .map(|r| r.next.clone())
                .unwrap_or_default();
            let service = registry
                .services
                .entry(entry.service.clone())
                .or_default()
                .clone();
            let split_service = entry.split.as_ref().map(|split| {
                registry
                    .services
                    .entry(split.service.clone())
                    .or_default()
                    .clone()
            });
            let own = entry.endpoints.len();
            let split_endpoints = entry.split.iter().flat_map(|s| s.endpoints.iter());
            let mut endpoints = Vec::with_capacity(own + split_endpoints.clone().count());
            for (i, e) in entry.endpoints.iter().chain(split_endpoints).enumerate() {
                let upstream = registry
                    .upstreams
                    .entry(e.addr)
                    .or_insert_with(|| Arc::new(Upstream::new(e.addr)))
                    .clone();
                live.insert(e.addr, upstream.clone());
                let (counters_of, arm_name) = match (&entry.split, &split_service) {
                    (Some(split), Some(other)) if i >= own => {
                        let bare = split
                            .service
                            .rsplit_once('/')
                            .map_or(split.service.as_str(), |(_, s)| s);
                        (other, bare)
                    }
                    _ => (&service, OWN_ARM),
                };
                let arm = registry
                    .arms
                    .entry((entry.service.clone(), e.release, arm_name.to_owned()))
                    .or_default()
                    .clone();
                endpoints.push(Target {
                    endpoint: e.clone(),
                    upstream,
                    release_counters: counters_of.release(e.release),
                    arm,
                });
            }
            let mut building: Vec<(u64, u64, Vec<usize>)> = Vec::new();
            for (i, target) in endpoints.iter().enumerate().take(own) {
                let (release, weight) = (target.endpoint.release, target.endpoint.weight);
                match building.iter_mut().find(|(r, _, _)| *r == release) {
                    Some((_, sum, members)) => {
                        *sum += u64::from(weight);
                        members.push(i);
                    }
                    None => building.push((release, u64::from(weight), vec![i])),
                }
            }
            let group_of = |release: u64| building.iter().position(|(r, _, _)| *r == release);
            let (arms, arms_rest) = compile_shares(&entry.shares, group_of);
            let matched = entry.matched.as_ref().and_then(|m| {
                match (
                    HeaderName::from_bytes(m.header.as_bytes()),
                    HeaderValue::from_str(&m.value),
                ) {
                    (Ok(name), Ok(value)) => Some((name, value, group_of(m.release))),
                    _ => {
                        tracing::warn!(service = %entry.service, header = %m.header, "match header or value is not valid in HTTP: ignored");
                        None
                    }
                }
            });
            let split = entry.split.as_ref().map(|split| {
                (
                    split.basis_points.min(BASIS_POINTS),
                    compile_key(&split.sticky, &entry.service),
                    // Not the rollout's salt: an experiment keeps its users across deploys.
                    salted(&entry.service, &split.service),
                )
            });
            let cookie_name = format!(
                "berth_arm_{:08x}",
                fnv(fnv(FNV_OFFSET, host.as_bytes()), prefix.as_bytes()) as u32
            )
            .into_boxed_str();
            let groups: Box<[Group]> = building
                .into_iter()
                .map(|(_, weight, members)| Group {
                    weight,
                    members: members.into_boxed_slice(),
                })
                .collect();
            let first = limits.entry(&entry.service).or_default();
            if first.is_none() {
                *first = entry.limits;
            }
            let maintenance = entry.maintenance.as_ref().map(|m| {
                Bytes::from(
                    m.page_html
                        .clone()
                        .unwrap_or_else(|| DEFAULT_MAINTENANCE_PAGE.to_owned()),
                )
            });
            routes.push(Route {
                prefix,
                name: Arc::from(entry.service.as_str()),
                service,
                total_weight: groups.iter().map(|g| g.weight).sum(),
                groups,
                endpoints: endpoints.into_boxed_slice(),
                own,
                arms,
                arms_rest,
                salt_state: salted(&entry.salt, ""),
                sticky: compile_key(&entry.sticky, &entry.service),
                matched,
                split,
                cookie_name,
                split_service,
                next,
                limiter: None,
                maintenance,
                timeout: entry.timeout_ms.map(std::time::Duration::from_millis),
            });
        }
        let mut limiters: HashMap<Arc<str>, Option<Arc<Limiter>>> = HashMap::new();
        let hosts = by_host
            .into_iter()
            .map(|(host, mut routes)| {
                routes.sort_by_key(|r| std::cmp::Reverse(r.prefix.len()));
                let routes = routes
                    .into_iter()
                    .map(|mut route| {
                        route.limiter = limiters
                            .entry(route.name.clone())
                            .or_insert_with(|| {
                                let limits = limits.get(&*route.name).copied().flatten();
                                route.service.limiter(limits)
                            })
                            .clone();
                        Arc::new(route)
                    })
                    .collect();
                (host, routes)
            })
            .collect();
        registry.upstreams = live;
        // Arms neither table mentions are done with (the previous table still holds the
        // arms it routed to, so their last counts reach one more report). An arm that comes
        // back starts again from zero, which the server takes as a restart of that counter.
        registry.arms.retain(|_, arm| Arc::strong_count(arm) > 1);
        CompiledTable { source, hosts }
    }

    /// The route for a request: exact (normalised) host, longest matching prefix.
    /// `host` must already be normalised with [`normalize_host`].
    pub(crate) fn lookup(&self, host: &str, path: &str) -> Option<&Arc<Route>> {
        self.hosts.get(host)?.iter().find(|r| r.matches(path))
    }

    fn route(&self, host: &str, prefix: &str) -> Option<&Arc<Route>> {
        self.hosts.get(host)?.iter().find(|r| r.prefix == prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::table::RouteEntry;
    use crate::upstream::now_nanos;

    fn entry(host: &str, prefix: &str, service: &str, n: u16) -> RouteEntry {
        RouteEntry {
            host: host.into(),
            path_prefix: prefix.into(),
            service: service.into(),
            endpoints: (0..n)
                .map(|i| Endpoint {
                    addr: ([127, 0, 0, 1], 9000 + i).into(),
                    instance: format!("{service}-{i}"),
                    release: 1,
                    weight: 100,
                })
                .collect(),
            ..RouteEntry::default()
        }
    }

    fn compile(routes: Vec<RouteEntry>) -> CompiledTable {
        CompiledTable::compile(
            Arc::new(RouteTable { routes }),
            &CompiledTable::default(),
            &mut Registry::default(),
        )
    }

    fn service<'a>(t: &'a CompiledTable, host: &str, path: &str) -> Option<&'a str> {
        t.lookup(&normalize_host(host), path)
            .map(|r| r.name.as_ref())
    }

    #[test]
    fn prefixes_match_on_segment_boundaries() {
        assert!(prefix_matches("", "/anything"));
        assert!(prefix_matches("/api", "/api"));
        assert!(prefix_matches("/api", "/api/"));
        assert!(prefix_matches("/api", "/api/x/y"));
        assert!(!prefix_matches("/api", "/apix"));
        assert!(!prefix_matches("/api", "/ap"));
        assert!(!prefix_matches("/api", "/"));
    }

    #[test]
    fn hosts_are_normalised() {
        assert_eq!(normalize_host("Shop.Local:8080"), "shop.local");
        assert_eq!(normalize_host("shop.local"), "shop.local");
        assert!(matches!(normalize_host("shop.local"), Cow::Borrowed(_)));
        assert_eq!(normalize_host("shop.local."), "shop.local");
        assert_eq!(normalize_host("[::1]:80"), "[::1]");
        assert_eq!(normalize_host("[::1]"), "[::1]");
        assert_eq!(normalize_host("127.0.0.1:80"), "127.0.0.1");
    }

    #[test]
    fn prefixes_are_normalised() {
        assert_eq!(normalize_prefix("/"), "");
        assert_eq!(normalize_prefix(""), "");
        assert_eq!(normalize_prefix("/api/"), "/api");
        assert_eq!(normalize_prefix("api"), "/api");
    }

    #[test]
    fn longest_prefix_wins_within_a_host() {
        let t = compile(vec![
            entry("shop.local", "/", "web", 1),
            entry("shop.local", "/api/v2", "api2", 1),
            entry("SHOP.local", "/api", "api", 1),
            entry("other.local", "/api", "other", 1),
        ]);
        assert_eq!(service(&t, "shop.local", "/"), Some("web"));
        assert_eq!(service(&t, "shop.local", "/apix"), Some("web"));
        assert_eq!(service(&t, "shop.local", "/api"), Some("api"));
        assert_eq!(service(&t, "Shop.Local:80", "/api/v2/x"), Some("api2"));
        assert_eq!(service(&t, "shop.local", "/api/v22"), Some("api"));
        assert_eq!(service(&t, "other.local", "/api/x"), Some("other"));
        assert_eq!(service(&t, "other.local", "/"), None);
        assert_eq!(service(&t, "nowhere", "/"), None);
    }

    #[test]
    fn first_duplicate_wins() {
        let t = compile(vec![
            entry("a", "/x", "first", 1),
            entry("a", "/x/", "second", 1),
        ]);
        assert_eq!(service(&t, "a", "/x"), Some("first"));
    }

    #[test]
    fn limits_cover_every_route_of_the_service() {
        let limits = Limits {
            concurrency: 2,
            queue: 1,
            queue_timeout_ms: 10,
        };
        let mut limited = entry("a", "/b", "s", 1);
        limited.limits = Some(limits);
        let mut other = entry("a", "/c", "s", 1);
        other.limits = Some(Limits {
            concurrency: 9,
            ..limits
        });
        // Found by the fuzz target: a route listed before the first one with limits escaped
        // them.
        let t = compile(vec![
            entry("a", "/a", "s", 1),
            limited,
            other,
            entry("b", "/", "s", 1),
            entry("b", "/x", "free", 1),
        ]);
        let limiter = |path: &str| t.lookup("a", path).expect("route").limiter.clone();
        let first = limiter("/b").expect("limited");
        assert_eq!(first.limits, limits);
        for shared in [
            limiter("/a"),
            limiter("/c"),
            t.lookup("b", "/").expect("route").limiter.clone(),
        ] {
            assert!(Arc::ptr_eq(&shared.expect("limited"), &first));
        }
        assert!(t.lookup("b", "/x").expect("route").limiter.is_none());
    }

    fn port(t: &CompiledTable, avoid: Option<usize>) -> u16 {
        let route = t.lookup("a", "/").expect("route");
        let i = route.pick(avoid, now_nanos()).expect("endpoint");
        route.endpoints[i].endpoint.addr.port()
    }

    #[test]
    fn idle_endpoints_rotate_and_the_rotation_survives_recompiles() {
        let t = compile(vec![entry("a", "/", "s", 3)]);
        let picks: Vec<u16> = (0..6).map(|_| port(&t, None)).collect();
        assert_eq!(picks, [9000, 9001, 9002, 9000, 9001, 9002]);
        let t2 = CompiledTable::compile(t.source.clone(), &t, &mut Registry::default());
        assert_eq!(port(&t2, None), 9000, "position carried over: 6 % 3 == 0");
        assert_eq!(port(&t2, None), 9001);
    }

    #[test]
    fn the_least_loaded_endpoint_wins_and_ejected_ones_are_skipped() {
        let t = compile(vec![entry("a", "/", "s", 3)]);
        let route = t.lookup("a", "/").expect("route");
        route.endpoints[0]
            .upstream
            .outstanding
            .store(2, Ordering::Relaxed);
        route.endpoints[1]
            .upstream
            .outstanding
            .store(1, Ordering::Relaxed);
        route.endpoints[2]
            .upstream
            .outstanding
            .store(3, Ordering::Relaxed);
        for _ in 0..4 {
            assert_eq!(port(&t, None), 9001);
        }
        assert_eq!(
            port(&t, Some(1)),
            9000,
            "a retry avoids the endpoint that failed"
        );
        route.endpoints[1].upstream.failed();
        assert_eq!(port(&t, None), 9000, "ejected");
        route.endpoints[0].upstream.failed();
        route.endpoints[2].upstream.failed();
        assert_eq!(port(&t, None), 9001, "all ejected: least loaded anyway");
    }

    #[test]
    fn weights_split_between_releases() {
        let mut e = entry("a", "/", "s", 4);
        for (i, ep) in e.endpoints.iter_mut().enumerate() {
            // Three stable instances at 30 each, one canary at 10.
            ep.release = if i == 3 { 2 } else { 1 };
            ep.weight = if i == 3 { 10 } else { 30 };
        }
        let t = compile(vec![e]);
        let canary = (0..20_000).filter(|_| port(&t, None) == 9003).count();
        assert!((1_700..2_300).contains(&canary), "{canary} of 20000");
    }

    #[test]
    fn empty_route_picks_nothing() {
        let t = compile(vec![entry("a", "/", "s", 0)]);
        assert!(t
            .lookup("a", "/x")
            .expect("route")
            .pick(None, now_nanos())
            .is_none());
    }

    use crate::table::{MatchRule, Share, Split, Sticky};

    /// Two stable instances of release 1 and one of release 2 at `new_bp` basis points.
    fn canary(new_bp: u32, sticky: Sticky) -> RouteEntry {
        let mut e = entry("a", "/", "shop/web", 3);
        e.endpoints[2].release = 2;
        e.shares = vec![
            Share {
                release: 1,
                basis_points: BASIS_POINTS - new_bp,
            },
            Share {
                release: 2,
                basis_points: new_bp,
            },
        ];
        e.salt = "shop/production/2".into();
        e.sticky = sticky;
        e
    }

    fn user(i: usize) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            "x-user",
            HeaderValue::from_str(&format!("user-{i}")).expect("value"),
        );
        h
    }

    /// The release a request with `headers` is sent to, and its choice.
    fn release_for(route: &Route, headers: &HeaderMap) -> (u64, Choice) {
        let choice = route.choose(headers);
        let i = route
            .pick_for(&choice, None, now_nanos())
            .expect("endpoint");
        (route.endpoints[i].endpoint.release, choice)
    }

    fn header_sticky() -> Sticky {
        Sticky::Header {
            name: "X-User".into(),
        }
    }

    #[test]
    fn shares_hold_within_a_point_over_100k_keys() {
        for new_bp in [50, 1_000, 5_000] {
            let t = compile(vec![canary(new_bp, header_sticky())]);
            let route = t.lookup("a", "/").expect("route");
            let n = 100_000;
            let on_new = (0..n)
                .filter(|i| release_for(route, &user(*i)).0 == 2)
                .count();
            let expected = n * new_bp as usize / BASIS_POINTS as usize;
            assert!(
                on_new.abs_diff(expected) <= n / 100,
                "{on_new} of {n} on the new release at {new_bp} bp (expected {expected})"
            );
        }
        // Without a key (`none`, or no header): random, in the same proportion.
        let t = compile(vec![canary(1_000, Sticky::None)]);
        let route = t.lookup("a", "/").expect("route");
        let on_new = (0..100_000)
            .filter(|_| release_for(route, &HeaderMap::new()).0 == 2)
            .count();
        assert!(on_new.abs_diff(10_000) <= 1_000, "{on_new}");
    }

    #[test]
    fn raising_the_share_only_adds_clients_to_the_new_release() {
        let on_new = |bp: u32| -> std::collections::BTreeSet<usize> {
            let t = compile(vec![canary(bp, header_sticky())]);
            let route = t.lookup("a", "/").expect("route");
            (0..20_000)
                .filter(|i| release_for(route, &user(*i)).0 == 2)
                .collect()
        };
        let mut before = on_new(0);
        assert!(before.is_empty());
        for bp in [50, 1_000, 2_500, 5_000, 10_000] {
            let now = on_new(bp);
            assert!(
                before.is_subset(&now),
                "a client left the new release at {bp} bp"
            );
            assert!(now.len() > before.len());
            before = now;
        }
        assert_eq!(before.len(), 20_000);
    }

    #[test]
    fn matched_requests_always_reach_the_new_release_and_are_flagged() {
        let mut e = canary(0, header_sticky());
        e.matched = Some(MatchRule {
            header: "X-Canary".into(),
            value: "always".into(),
            release: 2,
        });
        let t = compile(vec![e]);
        let route = t.lookup("a", "/").expect("route");
        for i in 0..1_000 {
            let mut h = user(i);
            h.insert("x-canary", HeaderValue::from_static("always"));
            let (release, choice) = release_for(route, &h);
            assert_eq!(release, 2);
            assert!(choice.matched);
            h.insert("x-canary", HeaderValue::from_static("never"));
            let (release, choice) = release_for(route, &h);
            assert_eq!(release, 1, "0 bp and no match: stable");
            assert!(!choice.matched);
        }
    }

    #[test]
    fn a_client_without_the_cookie_gets_one_that_keeps_it_on_its_arm() {
        let t = compile(vec![canary(5_000, Sticky::Cookie)]);
        let route = t.lookup("a", "/").expect("route");
        assert!(route.cookie_name.starts_with("berth_arm_"));
        let mut seen = [0usize; 3];
        for _ in 0..200 {
            let (release, choice) = release_for(route, &HeaderMap::new());
            seen[release as usize] += 1;
            let key = choice.set_cookie.expect("a cookie is minted");
            let set = route.set_cookie(key).expect("header");
            let set = set.to_str().expect("ascii");
            assert!(
                set.contains("; Path=/")
                    && set.contains("HttpOnly")
                    && set.contains("SameSite=Lax"),
                "{set}"
            );
            let pair = set.split(';').next().expect("pair");
            let mut h = HeaderMap::new();
            h.insert(
                COOKIE,
                HeaderValue::from_str(&format!("other=1; {pair}")).expect("cookie"),
            );
            for _ in 0..5 {
                let (again, choice) = release_for(route, &h);
                assert_eq!(again, release, "the cookie keeps the client on its arm");
                assert!(
                    choice.set_cookie.is_none(),
                    "no new cookie for a client that has one"
                );
            }
        }
        assert!(seen[1] > 50 && seen[2] > 50, "{seen:?}");
        // A route that splits nothing sets no cookie.
        let t = compile(vec![entry("a", "/", "s", 2)]);
        let route = t.lookup("a", "/").expect("route");
        assert!(route.choose(&HeaderMap::new()).set_cookie.is_none());
    }

    #[test]
    fn a_split_sends_its_share_to_the_other_service_and_only_there() {
        let mut e = entry("a", "/", "shop/web", 2);
        e.split = Some(Split {
            service: "shop/web-next".into(),
            basis_points: 2_000,
            sticky: header_sticky(),
            endpoints: vec![Endpoint {
                addr: ([127, 0, 0, 1], 9100).into(),
                instance: "next-0".into(),
                release: 7,
                weight: 100,
            }],
        });
        let t = compile(vec![e]);
        let route = t.lookup("a", "/").expect("route");
        let n = 100_000;
        let mut split = 0usize;
        for i in 0..n {
            let choice = route.choose(&user(i));
            let picked = route
                .pick_for(&choice, None, now_nanos())
                .expect("endpoint");
            let port = route.endpoints[picked].endpoint.addr.port();
            assert_eq!(
                choice.split,
                port == 9100,
                "a split request goes to the other service only"
            );
            if choice.split {
                split += 1;
                assert_eq!(route.endpoints[picked].arm.snapshot(), Default::default());
                // A retry that avoids the only split endpoint stays on it rather than cross.
                assert_eq!(
                    route.pick_for(&choice, Some(picked), now_nanos()),
                    Some(picked)
                );
            }
        }
        assert!(split.abs_diff(n / 5) <= n / 100, "{split} of {n}");
        let arm = |i: usize| route.endpoints[i].arm.clone();
        assert!(
            !Arc::ptr_eq(&arm(0), &arm(2)),
            "the split has an arm of its own"
        );
        assert!(Arc::ptr_eq(&arm(0), &arm(1)), "one arm per release");
    }

    #[test]
    fn a_split_keeps_its_clients_across_rollout_salts() {
        let split_of = |salt: &str| -> Vec<bool> {
            let mut e = entry("a", "/", "shop/web", 1);
            e.salt = salt.into();
            e.split = Some(Split {
                service: "shop/web-next".into(),
                basis_points: 5_000,
                sticky: header_sticky(),
                endpoints: vec![],
            });
            let t = compile(vec![e]);
            let route = t.lookup("a", "/").expect("route");
            (0..2_000).map(|i| route.choose(&user(i)).split).collect()
        };
        assert_eq!(split_of("shop/production/2"), split_of("shop/production/3"));
    }

    proptest::proptest! {
        /// Lookup and pick never panic, whatever the table and the request's host and path
        /// (the fuzz target's job, done as a property test inside the crate).
        #[test]
        fn lookup_and_pick_never_panic(
            routes in proptest::collection::vec(
                ("[a-zA-Z0-9.:\\[\\]-]{0,12}", "[/a-z%.]{0,10}", 0u16..4, 0u32..200, 0u64..3),
                0..8,
            ),
            host in "\\PC{0,24}",
            path in "\\PC{0,24}",
        ) {
            let entries = routes
                .into_iter()
                .map(|(host, prefix, n, weight, release)| {
                    let mut e = entry(&host, &prefix, "s", n);
                    for ep in &mut e.endpoints {
                        ep.weight = weight;
                        ep.release = release + u64::from(ep.addr.port() % 2);
                    }
                    e
                })
                .collect();
            let t = compile(entries);
            if let Some(route) = t.lookup(&normalize_host(&host), &path) {
                for avoid in [None, Some(0), Some(7)] {
                    if let Some(i) = route.pick(avoid, now_nanos()) {
                        proptest::prop_assert!(i < route.endpoints.len());
                    }
                }
            }
        }

        /// Shares, splits, match rules and sticky keys of any shape never make a choice or a
        /// pick panic or leave the route's endpoints, and a split choice stays on the split's
        /// endpoints whenever it has any.
        #[test]
        fn progressive_choices_never_panic(
            n in 0u16..4,
            shares in proptest::collection::vec((0u64..4, 0u32..12_000), 0..4),
            split in proptest::option::of((0u16..3, 0u32..12_000, 0u8..3)),
            sticky in 0u8..3,
            matched in proptest::option::of(0u64..4),
            cookie in proptest::option::of("[ -~]{0,40}"),
            user in proptest::option::of("[a-z0-9]{0,8}"),
        ) {
            let key = |k: u8| match k {
                0 => Sticky::Cookie,
                1 => Sticky::None,
                _ => Sticky::Header { name: "X-User".into() },
            };
            let mut e = entry("a", "/", "shop/web", n);
            for ep in &mut e.endpoints {
                ep.release = u64::from(ep.addr.port() % 3);
            }
            e.shares = shares
                .into_iter()
                .map(|(release, basis_points)| Share { release, basis_points })
                .collect();
            e.sticky = key(sticky);
            e.matched = matched.map(|release| MatchRule {
                header: "X-Canary".into(),
                value: "always".into(),
                release,
            });
            e.split = split.map(|(m, basis_points, k)| Split {
                service: "shop/next".into(),
                basis_points,
                sticky: key(k),
                endpoints: (0..m)
                    .map(|i| Endpoint {
                        addr: ([127, 0, 0, 2], 9500 + i).into(),
                        instance: format!("next-{i}"),
                        release: 9,
                        weight: 100,
                    })
                    .collect(),
            });
            let t = compile(vec![e]);
            let route = t.lookup("a", "/").expect("route");
            let mut headers = HeaderMap::new();
            if let Some(cookie) = &cookie {
                if let Ok(v) = HeaderValue::from_str(&format!("{}={cookie}", route.cookie_name)) {
                    headers.insert(COOKIE, v);
                }
            }
            if let Some(user) = &user {
                if let Ok(v) = HeaderValue::from_str(user) {
                    headers.insert("x-user", v);
                }
                headers.insert("x-canary", HeaderValue::from_static("always"));
            }
            let choice = route.choose(&headers);
            if let Some(key) = choice.set_cookie {
                proptest::prop_assert!(route.set_cookie(key).is_some());
            }
            for avoid in [None, Some(0), Some(9)] {
                if let Some(i) = route.pick_for(&choice, avoid, now_nanos()) {
                    proptest::prop_assert!(i < route.endpoints.len());
                    if choice.split && route.own < route.endpoints.len() && route.endpoints.len() > 1 {
                        proptest::prop_assert!(i >= route.own);
                    }
                }
            }
        }
    }
}
