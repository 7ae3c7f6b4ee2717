//! Checks across services: `depends_on` names real services and forms no cycle, and no two
//! routes claim the same host and path.

use std::collections::HashMap;

use super::fields::Item;
use super::names::did_you_mean;
use crate::diag::{Diagnostic, Pos};

/// A service as the graph checks see it.
#[derive(Debug, Clone)]
pub struct Node<'a> {
    /// The service's name.
    pub name: &'a str,
    /// `depends_on` entries with their positions, in source order.
    pub deps: &'a [Item],
    /// `(host, path)` and where the host is written, if the service has a route.
    pub route: Option<(&'a str, &'a str, Pos)>,
    /// `route.split.service` and where it is written.
    pub split: Option<(&'a str, Pos)>,
    /// The port the service's route names (a split's target answers on its port of that name).
    pub route_port: Option<&'a str>,
    /// The service's declared port names.
    pub ports: Vec<&'a str>,
}

/// Every problem with dependencies and routes. Services are visited in source order, so the
/// reported cycles and duplicates are deterministic.
pub fn check(services: &[Node]) -> Vec<Diagnostic> {
    let mut diags = Vec::new();
    let index: HashMap<&str, usize> = services
        .iter()
        .enumerate()
        .map(|(i, s)| (s.name, i))
        .collect();
    // Edges that survive the name checks: (target, position of the entry).
    let mut edges: Vec<Vec<(usize, Pos, usize)>> = vec![Vec::new(); services.len()];
    for (i, s) in services.iter().enumerate() {
        let path = format!("services.{}.depends_on", s.name);
        for (k, it) in s.deps.iter().enumerate() {
            let (dep, pos, p) = (&it.text, &it.pos, format!("{path}[{}]", it.index));
            if dep == s.name {
                diags.push(Diagnostic::at(
                    *pos,
                    format!("{p}: `{dep}` cannot depend on itself"),
                ));
            } else if s.deps[..k].iter().any(|d| d.text == *dep) {
                diags.push(Diagnostic::at(
                    *pos,
                    format!("{p}: `{dep}` is listed twice"),
                ));
            } else if let Some(&t) = index.get(dep.as_str()) {
                edges[i].push((t, *pos, it.index));
            } else {
                diags.push(Diagnostic::at(
                    *pos,
                    format!(
                        "{p}: unknown service `{dep}`{}",
                        did_you_mean(dep, services.iter().map(|s| s.name))
                    ),
                ));
            }
        }
    }
    for s in services {
        let Some((target, pos)) = s.split else {
            continue;
        };
        let p = format!("services.{}.route.split.service", s.name);
        match index.get(target).map(|&t| &services[t]) {
            _ if target == s.name => diags.push(Diagnostic::at(
                pos,
                format!("{p}: a route cannot split to its own service"),
            )),
            None => diags.push(Diagnostic::at(
                pos,
                format!(
                    "{p}: unknown service `{target}`{}",
                    did_you_mean(target, services.iter().map(|s| s.name))
                ),
            )),
            Some(t) if s.route_port.is_some_and(|port| !t.ports.contains(&port)) => {
                let port = s.route_port.unwrap_or_default();
                diags.push(Diagnostic::at(
                    pos,
                    format!("{p}: service `{target}` has no port `{port}` (the route's port), so it cannot answer the split: declare it, like `ports: {{ {port}: 0 }}`"),
                ))
            }
            Some(_) => {}
        }
    }
    cycles(services, &edges, &mut diags);
    duplicate_routes(services, &mut diags);
    diags
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mark {
    New,
    OnPath,
    Done,
}

/// Depth-first search without recursion (a 10,000-service chain must not overflow the stack).
/// Each edge back into the current path closes a cycle, reported at that `depends_on` entry.
fn cycles(services: &[Node], edges: &[Vec<(usize, Pos, usize)>], diags: &mut Vec<Diagnostic>) {
    let mut mark = vec![Mark::New; services.len()];
    let mut path: Vec<usize> = Vec::new();
    for root in 0..services.len() {
        if mark[root] != Mark::New {
            continue;
        }
        // (node, index of the next edge to follow)
        let mut stack: Vec<(usize, usize)> = vec![(root, 0)];
        mark[root] = Mark::OnPath;
        path.push(root);
        while let Some(&mut (u, ref mut next)) = stack.last_mut() {
            if let Some(&(v, pos, j)) = edges[u].get(*next) {
                *next += 1;
                match mark[v] {
                    Mark::New => {
                        mark[v] = Mark::OnPath;
                        path.push(v);
                        stack.push((v, 0));
                    }
                    Mark::OnPath => {
                        let from = path.iter().position(|&x| x == v).unwrap_or(0);
                        let mut names: Vec<&str> =
                            path[from..].iter().map(|&x| services[x].name).collect();
                        names.push(services[v].name);
                        diags.push(Diagnostic::at(
                            pos,
                            format!(
                                "services.{}.depends_on[{j}]: dependency cycle {}",
                                services[u].name,
                                names.join(" -> ")
                            ),
                        ));
                    }
                    Mark::Done => {}
                }
            } else {
                mark[u] = Mark::Done;
                path.pop();
                stack.pop();
            }
        }
    }
}

fn duplicate_routes(services: &[Node], diags: &mut Vec<Diagnostic>) {
    let mut seen: HashMap<(&str, &str), &str> = HashMap::new();
    for s in services {
        let Some((host, path, pos)) = s.route else {
            continue;
        };
        if let Some(first) = seen.get(&(host, path)) {
            diags.push(Diagnostic::at(
                pos,
                format!(
                    "services.{}.route.host: {host}{path} is already routed to `{first}`",
                    s.name
                ),
            ));
        } else {
            seen.insert((host, path), s.name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deps(list: &[(&str, usize)]) -> Vec<Item> {
        list.iter()
            .enumerate()
            .map(|(index, (d, l))| Item {
                text: d.to_string(),
                pos: Pos { line: *l, col: 1 },
                index,
            })
            .collect()
    }

    #[test]
    fn cycles_are_reported_where_they_close() {
        let a = deps(&[("b", 1)]);
        let b = deps(&[("c", 2)]);
        let c = deps(&[("a", 3)]);
        let d = deps(&[("a", 4), ("d", 5), ("x", 6), ("a", 7)]);
        let nodes = [
            Node {
                name: "a",
                deps: &a,
                route: None,
                split: None,
                route_port: None,
                ports: vec![],
            },
            Node {
                name: "b",
                deps: &b,
                route: None,
                split: None,
                route_port: None,
                ports: vec![],
            },
            Node {
                name: "c",
                deps: &c,
                route: None,
                split: None,
                route_port: None,
                ports: vec![],
            },
            Node {
                name: "d",
                deps: &d,
                route: None,
                split: None,
                route_port: None,
                ports: vec![],
            },
        ];
        let msgs: Vec<String> = check(&nodes)
            .into_iter()
            .map(|d| format!("{}: {}", d.pos.unwrap().line, d.message))
            .collect();
        assert_eq!(
            msgs,
            [
                "5: services.d.depends_on[1]: `d` cannot depend on itself",
                "6: services.d.depends_on[2]: unknown service `x`",
                "7: services.d.depends_on[3]: `a` is listed twice",
                "3: services.c.depends_on[0]: dependency cycle a -> b -> c -> a",
            ]
        );
    }

    #[test]
    fn a_long_chain_does_not_overflow() {
        let names: Vec<String> = (0..20_000).map(|i| format!("s{i}")).collect();
        let deps: Vec<Vec<Item>> = (0..20_000)
            .map(|i| {
                vec![Item {
                    text: format!("s{}", (i + 1) % 20_000),
                    pos: Pos {
                        line: i + 1,
                        col: 1,
                    },
                    index: 0,
                }]
            })
            .collect();
        let nodes: Vec<Node> = names
            .iter()
            .zip(&deps)
            .map(|(n, d)| Node {
                name: n,
                deps: d,
                route: None,
                split: None,
                route_port: None,
                ports: vec![],
            })
            .collect();
        let diags = check(&nodes);
        assert_eq!(diags.len(), 1);
        assert!(diags[0]
            .message
            .starts_with("services.s19999.depends_on[0]: dependency cycle s0 -> s1"));
    }
}
