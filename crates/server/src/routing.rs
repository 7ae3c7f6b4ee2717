//! The routing table: built from the cluster view, once per change, and served to every router
//! from a cache.
//!
//! [`build`] is pure: the live releases' routes and the healthy, running instances of a
//! [`View`]. [`TableCache`] keeps the last table with the view's routing revision it was built
//! at (see [`crate::view::Touched::routing`]) and its JSON body, so a router's long-poll costs
//! a version comparison, not a table build and a serialisation. [`RecentTables`] remembers
//! which instances each recent version held, for router acknowledgements (see
//! [`crate::routers`]).

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::Arc;

use axum::body::Bytes;
use berth_api::control::{
    EndpointView, LimitsView, MatchView, ReleaseShare, RouteView, SplitView, StickyView,
};
use berth_api::InstanceState;

use crate::state::Desired;
use crate::view::View;

/// How many table versions are remembered for acknowledgements.
const REMEMBERED_TABLES: usize = 64;

/// Builds the table's routes (sorted) from the view: for each rollout's target release, each
/// service with a route, the wanted and healthy instances with the route's port reported.
/// As costly as the routed stacks' instances.
pub fn build(view: &View) -> Vec<RouteView> {
    let mut routes = Vec::new();
    for ((stack, env), rollout) in view.rollouts() {
        let Some(release) = view.release(stack, env, rollout.value.to) else {
            continue;
        };
        let routed: Vec<_> = release
            .value
            .spec
            .services
            .iter()
            .filter_map(|(name, service)| Some((name, service.route.as_ref()?)))
            .collect();
        if routed.is_empty() {
            continue;
        }
        // A/B split targets: (service, port name) of each split, answering on the port its
        // route names.
        let split_targets: Vec<(&str, &str)> = routed
            .iter()
            .filter_map(|(_, route)| {
                let split = route.split.as_ref()?;
                Some((split.service.as_str(), route.port.as_str()))
            })
            .collect();
        let mut split_endpoints: HashMap<(&str, &str), Vec<EndpointView>> = HashMap::new();
        // The stack's endpoints by service, in one walk over its instances (id order).
        let mut by_service: HashMap<&str, Vec<EndpointView>> = HashMap::new();
        for r in view.instances_of(stack, env).map(|r| &r.value) {
            if r.desired != Desired::Run || r.state() != InstanceState::Healthy {
                continue;
            }
            for (target, port_name) in &split_targets {
                if r.spec.service != *target {
                    continue;
                }
                let port = r.status.as_ref().and_then(|s| s.ports.get(*port_name));
                if let (Some(port), Some(node)) = (port, view.node(&r.spec.node)) {
                    split_endpoints
                        .entry((target, port_name))
                        .or_default()
                        .push(EndpointView {
                            addr: format!("{}:{port}", node.value.registration.address),
                            instance: r.spec.id.clone(),
                            release: r.spec.release,
                            weight: berth_rollout::strategy::EQUAL_WEIGHT,
                        });
                }
            }
            let Some(route) = release
                .value
                .spec
                .services
                .get(&r.spec.service)
                .and_then(|s| s.route.as_ref())
            else {
                continue;
            };
            let Some(port) = r.status.as_ref().and_then(|s| s.ports.get(&route.port)) else {
                continue;
            };
            let Some(node) = view.node(&r.spec.node) else {
                continue;
            };
            by_service
                .entry(r.spec.service.as_str())
                .or_default()
                .push(EndpointView {
                    addr: format!("{}:{port}", node.value.registration.address),
                    instance: r.spec.id.clone(),
                    release: r.spec.release,
                    weight: berth_rollout::strategy::EQUAL_WEIGHT,
                });
        }
        for (name, route) in routed {
            let mut endpoints = by_service.remove(name.as_str()).unwrap_or_default();
            let progressive = progressive(
                &rollout.value,
                name,
                release.value.spec.services.get(name),
                &mut endpoints,
            );
            if let (Some(host), Some(preview)) = (&progressive.preview_host, &progressive.preview) {
                routes.push(RouteView {
                    host: host.clone(),
                    path: route.path.clone(),
                    stack: stack.clone(),
                    service: name.clone(),
                    endpoints: preview.clone(),
                    limits: route.limits.as_ref().map(|l| LimitsView {
                        concurrency: l.concurrency,
                        queue: l.queue,
                        queue_timeout_ms: l.queue_timeout.millis,
                    }),
                    timeout_ms: route.timeout.map(|t| t.millis),
                    ..Default::default()
                });
            }
            routes.push(RouteView {
                host: route.host.clone(),
                path: route.path.clone(),
                stack: stack.clone(),
                service: name.clone(),
                endpoints,
                limits: route.limits.as_ref().map(|l| LimitsView {
                    concurrency: l.concurrency,
                    queue: l.queue,
                    queue_timeout_ms: l.queue_timeout.millis,
                }),
                maintenance: view
                    .maintenance()
                    .get(&(stack.clone(), name.clone()))
                    .cloned(),
                timeout_ms: route.timeout.map(|t| t.millis),
                shares: progressive.shares,
                salt: progressive.salt,
                sticky: progressive.sticky,
                matched: progressive.matched,
                split: route.split.as_ref().map(|split| SplitView {
                    service: split.service.clone(),
                    basis_points: split.weight.0,
                    sticky: sticky_view(&split.sticky),
                    endpoints: split_endpoints
                        .get(&(split.service.as_str(), route.port.as_str()))
                        .cloned()
                        .unwrap_or_default(),
                }),
            });
        }
    }
    routes.sort_by(|a, b| {
        (&a.host, &a.path, &a.stack, &a.service).cmp(&(&b.host, &b.path, &b.stack, &b.service))
    });
    routes
}

/// What a progressive rollout adds to one route: the shares, the sticky settings, and a
/// blue/green preview route.
#[derive(Default)]
struct Progressive {
    shares: Vec<ReleaseShare>,
    salt: String,
    sticky: StickyView,
    matched: Option<MatchView>,
    preview_host: Option<String>,
    preview: Option<Vec<EndpointView>>,
}

/// Weighs `endpoints` by the rollout's traffic split for `name` (see
/// [`crate::controllers::rollout::service_traffic`]) and fills the route's progressive fields:
/// - every endpoint's weight is its release's share in basis points divided among the
///   release's endpoints, so a router that splits by summed weights honours the share;
/// - `shares` lists the releases with endpoints and a share, the new release last (its sticky
///   buckets are `[0, share)`), with the service's `sticky`, `match` and a salt per rollout;
/// - endpoints with no share are left out of the route while any other can serve, so not even
///   a retry reaches a release out of traffic (a blue/green before its switch, a failed
///   canary); if none could serve, every endpoint is kept at equal weight rather than none;
/// - a blue/green before its switch gets its `preview_host` route with only the new release.
fn progressive(
    rollout: &crate::state::RolloutRecord,
    name: &str,
    service: Option<&berth_spec::model::Service>,
    endpoints: &mut Vec<EndpointView>,
) -> Progressive {
    use berth_rollout::Traffic;
    let mut out = Progressive::default();
    let to = rollout.to;
    let new_healthy = endpoints.iter().filter(|e| e.release == to).count();
    let traffic = crate::controllers::rollout::service_traffic(
        rollout,
        name,
        u32::try_from(new_healthy).unwrap_or(u32::MAX),
    );
    let Traffic::PerRelease(split) = &traffic else {
        return out;
    };
    let mut per_release: std::collections::BTreeMap<u64, usize> = Default::default();
    for e in endpoints.iter() {
        *per_release.entry(e.release).or_default() += 1;
    }
    for e in endpoints.iter_mut() {
        e.weight = crate::controllers::rollout::endpoint_weight(
            &traffic,
            e.release,
            per_release.get(&e.release).copied().unwrap_or(1),
        );
    }
    if let (Some(berth_rollout::ServiceRollout::BlueGreen(bg)), Some(host)) = (
        rollout.services.get(name),
        service.and_then(|s| s.rollout.preview_host.clone()),
    ) {
        if bg.switched_ms.is_none() && bg.phase == berth_rollout::Phase::Progressing {
            let preview: Vec<EndpointView> = endpoints
                .iter()
                .filter(|e| e.release == bg.to_release)
                .map(|e| EndpointView {
                    weight: berth_rollout::strategy::EQUAL_WEIGHT,
                    ..e.clone()
                })
                .collect();
            out.preview_host = Some(host);
            out.preview = Some(preview);
        }
    }
    if endpoints.iter().any(|e| e.weight > 0) {
        endpoints.retain(|e| e.weight > 0);
    } else {
        for e in endpoints.iter_mut() {
            e.weight = berth_rollout::strategy::EQUAL_WEIGHT;
        }
        return out;
    }
    // Shares for releases that can serve; the new release last.
    let mut shares: Vec<ReleaseShare> = split
        .iter()
        .filter(|(r, bp)| **bp > 0 && per_release.contains_key(r))
        .map(|(r, bp)| ReleaseShare {
            release: *r,
            basis_points: *bp,
        })
        .collect();
    shares.sort_by_key(|s| (s.release == to, s.release));
    let total: u32 = shares.iter().map(|s| s.basis_points).sum();
    if shares.len() < 2 || total != berth_api::control::BASIS_POINTS {
        return out; // one release serves: plain weights say it all
    }
    out.shares = shares;
    out.salt = format!("{}/{}/{}", rollout.stack, rollout.env, to);
    let spec = service.map(|s| &s.rollout);
    out.sticky = spec
        .and_then(|r| r.sticky.as_ref())
        .map(sticky_view)
        .unwrap_or_default();
    out.matched = spec.and_then(|r| r.matched.as_ref()).map(|m| MatchView {
        header: m.header.clone(),
        value: m.value.clone(),
        release: to,
    });
    out
}

/// The stack file's `sticky` as the routers read it.
fn sticky_view(sticky: &berth_spec::model::Sticky) -> StickyView {
    match sticky {
        berth_spec::model::Sticky::Cookie => StickyView::Cookie,
        berth_spec::model::Sticky::Header(name) => StickyView::Header { name: name.clone() },
        berth_spec::model::Sticky::None => StickyView::None,
    }
}

/// One built table, ready to serve.
#[derive(Debug)]
pub struct Cached {
    /// The view's routing revision it was built at.
    pub revision: i64,
    /// Its content version ([`crate::version::content_version`] of the routes).
    pub version: String,
    /// `{"version":…,"routes":[…]}`: the [`berth_api::control::RoutingTable`] as JSON.
    pub body: Bytes,
    /// The instances it holds.
    pub instances: Arc<BTreeSet<String>>,
}

/// The last table built, rebuilt only when the view's routing revision moved past it.
#[derive(Debug, Default)]
pub struct TableCache(tokio::sync::Mutex<Option<Arc<Cached>>>);

impl TableCache {
    /// The table for the view as it is now: the cached one if the routing inputs did not
    /// change since, else built once (concurrent callers wait for that one build) and
    /// remembered in `recent` for acknowledgements.
    pub async fn current(
        &self,
        live: &crate::live::LiveView,
        recent: &std::sync::Mutex<RecentTables>,
    ) -> Arc<Cached> {
        let mut cache = self.0.lock().await;
        let (revision, routes) = {
            let view = live.read();
            let revision = view.routing_revision();
            if let Some(cached) = cache.as_ref().filter(|c| c.revision == revision) {
                return cached.clone();
            }
            (revision, build(&view))
        };
        // The view's guard is let go: serialising a large table does not hold the follower up.
        let cached = Arc::new(serialise(revision, &routes));
        if let Ok(mut recent) = recent.lock() {
            recent.remember(&cached.version, cached.instances.clone());
        }
        *cache = Some(cached.clone());
        cached
    }
}

/// The table's JSON body, with the routes serialised once for both the version and the body.
fn serialise(revision: i64, routes: &[RouteView]) -> Cached {
    let routes_json = serde_json::to_vec(routes).unwrap_or_else(|_| b"[]".to_vec());
    let version = crate::version::of_bytes(&routes_json);
    let mut body = Vec::with_capacity(routes_json.len() + version.len() + 24);
    body.extend_from_slice(b"{\"version\":\"");
    body.extend_from_slice(version.as_bytes());
    body.extend_from_slice(b"\",\"routes\":");
    body.extend_from_slice(&routes_json);
    body.push(b'}');
    let instances = routes
        .iter()
        .flat_map(|r| r.endpoints.iter().map(|e| e.instance.clone()))
        .collect();
    Cached {
        revision,
        version,
        body: Bytes::from(body),
        instances: Arc::new(instances),
    }
}

/// Recently served tables: version → instances they contain.
#[derive(Debug, Default)]
pub struct RecentTables(VecDeque<(String, Arc<BTreeSet<String>>)>);

impl RecentTables {
    /// Remembers the instances of table `version` (the oldest is forgotten past
    /// [`REMEMBERED_TABLES`]).
    pub fn remember(&mut self, version: &str, instances: Arc<BTreeSet<String>>) {
        if self.0.iter().any(|(v, _)| v == version) {
            return;
        }
        if self.0.len() >= REMEMBERED_TABLES {
            self.0.pop_front();
        }
        self.0.push_back((version.to_string(), instances));
    }

    /// The instances of table `version`, if it is still remembered.
    pub fn get(&self, version: &str) -> Option<&Arc<BTreeSet<String>>> {
        self.0.iter().find(|(v, _)| v == version).map(|(_, s)| s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_api::control::RoutingTable;

    #[test]
    fn the_cached_body_is_the_routing_table_as_json() {
        let routes = vec![RouteView {
            host: "shop.example.com".into(),
            path: "/".into(),
            stack: "shop".into(),
            service: "web".into(),
            endpoints: vec![EndpointView {
                addr: "10.0.0.1:8080".into(),
                instance: "i1".into(),
                release: 2,
                weight: 100,
            }],
            limits: None,
            maintenance: None,
            timeout_ms: None,
            ..RouteView::default()
        }];
        let cached = serialise(7, &routes);
        let table: RoutingTable = serde_json::from_slice(&cached.body).expect("json");
        assert_eq!(table.version, crate::version::content_version(&routes));
        assert_eq!(table.version, cached.version);
        assert_eq!(table.routes, routes);
        assert_eq!(
            cached.body.as_ref(),
            serde_json::to_vec(&table).expect("json").as_slice()
        );
        assert!(cached.instances.contains("i1"));
    }
}

#[cfg(test)]
mod build_tests {
    use berth_api::control::{ReleaseShare, StickyView};

    use super::build;
    use crate::controllers::testing::World;
    use crate::keys;
    use crate::state::encode;

    const STACK: &str = r#"stack: shop
environments:
  prod:
    regions: [local]
services:
  web:
    process: {command: [sleep, "VERSION"]}
    ports: { http: 0 }
    replicas: 4
    resources: { cpu: 100m, memory: 64Mi }
    route: { host: shop.localhost, port: http, split: { service: next, weight: 20%, sticky: header:X-User } }
    rollout: { strategy: canary, steps: [10%, 50%], bake: 1h, sticky: none, match: { header: X-Canary, value: always } }
  next:
    process: {command: [sleep, "1"]}
    ports: { http: 0 }
    resources: { cpu: 100m, memory: 64Mi }
"#;

    /// Gives every instance a reported `http` port, as agents do.
    fn ports(w: &mut World) {
        let records: Vec<_> = w
            .view
            .instances()
            .values()
            .map(|r| r.value.clone())
            .collect();
        for (i, mut r) in records.into_iter().enumerate() {
            if let Some(s) = r.status.as_mut() {
                s.ports.insert("http".to_string(), 20_000 + i as u16);
            }
            w.put(&keys::instance(&r.spec.id), encode(&r));
        }
    }

    #[test]
    fn a_canary_step_and_a_split_reach_the_table() {
        let mut w = World::new();
        w.node("a", None);
        w.deploy(&STACK.replace("VERSION", "1"), 1, None, false);
        w.settle(20);
        w.deploy(&STACK.replace("VERSION", "2"), 2, Some(1), false);
        for round in 0..3 {
            w.pass(round);
            w.agents();
            w.now += 1_000;
        }
        ports(&mut w);
        let routes = build(&w.view);
        let route = routes
            .iter()
            .find(|r| r.service == "web")
            .expect("the web route");
        assert_eq!(
            route.shares,
            [
                ReleaseShare {
                    release: 1,
                    basis_points: 9_000
                },
                ReleaseShare {
                    release: 2,
                    basis_points: 1_000
                }
            ],
            "the new release last"
        );
        assert_eq!(route.salt, "shop/prod/2");
        assert_eq!(route.sticky, StickyView::None);
        assert_eq!(route.matched.as_ref().map(|m| m.release), Some(2));
        let weight = |release| -> u32 {
            route
                .endpoints
                .iter()
                .filter(|e| e.release == release)
                .map(|e| e.weight)
                .sum()
        };
        assert_eq!(
            (weight(1), weight(2)),
            (9_000, 1_000),
            "{:?}",
            route.endpoints
        );
        let split = route.split.as_ref().expect("the split");
        assert_eq!(
            (split.service.as_str(), split.basis_points),
            ("next", 2_000)
        );
        assert_eq!(
            split.sticky,
            StickyView::Header {
                name: "X-User".into()
            }
        );
        assert_eq!(split.endpoints.len(), 1, "next's one instance");
    }
}
