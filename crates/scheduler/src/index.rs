//! The snapshot, indexed once per call: node classes, usage arrays, names → indexes, and the two
//! feasibility checks (static per class, dynamic per node).
//!
//! Everything the hot loop reads is a `Vec` indexed by node number; nothing in it hashes a
//! string or allocates.

use berth_spec::model::DriverKind;

use crate::rng::FxMap;
use crate::{Demand, Existing, Node, Reason};

/// A node's readiness as the class key sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum State {
    Ready,
    /// Ready for what runs there, closed to placements (see `Node::cordoned`).
    Cordoned,
    NotReady,
    /// A later node with an earlier node's name: never used.
    Duplicate,
}

/// Nodes indistinguishable to every demand of this call.
#[derive(Debug)]
pub(crate) struct Class {
    pub state: State,
    /// Bit set of [`driver_bit`]s.
    pub drivers: u8,
    /// Value id per relevant label key (see [`Index::key_pos`]); `0` is "label missing".
    pub values: Box<[u32]>,
    /// A member, whose labels stand for the class when constraints are evaluated.
    pub rep: usize,
    /// Members, in input order.
    pub nodes: Vec<u32>,
}

/// Why a whole class fails a demand; cheap to copy, turned into a [`Reason`] only to explain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StaticReason {
    NotReady,
    Duplicate,
    Driver(DriverKind),
    /// Index into the demand's constraints.
    Constraint(usize),
}

/// What one instance of a demand needs, read once from its `Service`.
#[derive(Debug, Clone)]
pub(crate) struct Ask {
    pub cpu: u64,
    pub mem: u64,
    pub ports: Vec<u16>,
}

impl Ask {
    pub(crate) fn of(demand: &Demand) -> Self {
        let r = demand.resources();
        Ask {
            cpu: r.cpu_millis,
            mem: r.memory_bytes,
            ports: demand.host_ports(),
        }
    }
}

pub(crate) fn driver_bit(d: DriverKind) -> u8 {
    match d {
        DriverKind::Process => 1,
        DriverKind::Docker => 2,
    }
}

/// The indexed snapshot plus the usage that placements and stops update.
#[derive(Debug)]
pub(crate) struct Index<'a> {
    pub node_class: Vec<u32>,
    pub classes: Vec<Class>,
    /// Label keys some constraint or spread key mentions → position in [`Class::values`].
    pub key_pos: FxMap<&'a str, usize>,
    /// Per relevant key, how many value ids exist (including `0`, missing).
    pub value_count: Vec<u32>,
    /// The node each existing instance runs on, if it is in the snapshot.
    pub existing_node: Vec<Option<u32>>,
    pub cpu_cap: Vec<u64>,
    pub mem_cap: Vec<u64>,
    pub cpu_used: Vec<u64>,
    pub mem_used: Vec<u64>,
    /// Host ports held per node; almost always empty, so no allocation for most nodes.
    pub ports: Vec<Vec<u16>>,
}

impl<'a> Index<'a> {
    /// `O(nodes × relevant keys + existing)`.
    pub(crate) fn build(
        nodes: &'a [Node],
        existing: &'a [Existing],
        demands: &'a [Demand],
    ) -> Self {
        let mut key_pos: FxMap<&'a str, usize> = FxMap::default();
        for d in demands {
            let p = &d.service.placement;
            let keys = p
                .constraints
                .iter()
                .map(|c| c.label.as_str())
                .chain(p.spread.iter().map(String::as_str));
            for k in keys {
                let next = key_pos.len();
                key_pos.entry(k).or_insert(next);
            }
        }
        let mut keys: Vec<&str> = vec![""; key_pos.len()];
        for (k, &p) in &key_pos {
            keys[p] = k;
        }
        let mut value_ids: Vec<FxMap<&'a str, u32>> = vec![FxMap::default(); keys.len()];
        let mut by_name: FxMap<&'a str, u32> = FxMap::default();
        let mut class_of: FxMap<(State, u8, Box<[u32]>), u32> = FxMap::default();
        let mut classes: Vec<Class> = Vec::new();
        let mut node_class = Vec::with_capacity(nodes.len());
        for (i, node) in nodes.iter().enumerate() {
            let state = if by_name.contains_key(node.name.as_str()) {
                State::Duplicate
            } else {
                by_name.insert(&node.name, i as u32);
                if node.ready && node.cordoned {
                    State::Cordoned
                } else if node.ready {
                    State::Ready
                } else {
                    State::NotReady
                }
            };
            let drivers = node.drivers.iter().fold(0, |m, &d| m | driver_bit(d));
            let values: Box<[u32]> = keys
                .iter()
                .zip(value_ids.iter_mut())
                .map(|(k, ids)| match node.labels.get(*k) {
                    None => 0,
                    Some(v) => {
                        let next = ids.len() as u32 + 1;
                        *ids.entry(v.as_str()).or_insert(next)
                    }
                })
                .collect();
            let c = *class_of
                .entry((state, drivers, values.clone()))
                .or_insert_with(|| {
                    classes.push(Class {
                        state,
                        drivers,
                        values,
                        rep: i,
                        nodes: Vec::new(),
                    });
                    classes.len() as u32 - 1
                });
            classes[c as usize].nodes.push(i as u32);
            node_class.push(c);
        }
        let n = nodes.len();
        let mut idx = Index {
            node_class,
            classes,
            key_pos,
            value_count: value_ids.iter().map(|m| m.len() as u32 + 1).collect(),
            existing_node: Vec::with_capacity(existing.len()),
            cpu_cap: nodes.iter().map(|n| n.capacity.cpu_millis).collect(),
            mem_cap: nodes.iter().map(|n| n.capacity.memory_bytes).collect(),
            cpu_used: vec![0; n],
            mem_used: vec![0; n],
            ports: vec![Vec::new(); n],
        };
        for e in existing {
            let node = by_name.get(e.node.as_str()).copied();
            if let Some(n) = node {
                let n = n as usize;
                idx.cpu_used[n] = idx.cpu_used[n].saturating_add(e.resources.cpu_millis);
                idx.mem_used[n] = idx.mem_used[n].saturating_add(e.resources.memory_bytes);
                idx.ports[n].extend_from_slice(&e.host_ports);
            }
            idx.existing_node.push(node);
        }
        idx
    }

    /// Frees what a stopped instance held on its node.
    pub(crate) fn release(&mut self, e: &Existing, node: u32) {
        let n = node as usize;
        self.cpu_used[n] = self.cpu_used[n].saturating_sub(e.resources.cpu_millis);
        self.mem_used[n] = self.mem_used[n].saturating_sub(e.resources.memory_bytes);
        for p in &e.host_ports {
            if let Some(i) = self.ports[n].iter().position(|q| q == p) {
                self.ports[n].swap_remove(i);
            }
        }
    }

    /// Reserves one instance of `ask` on `node`.
    pub(crate) fn reserve(&mut self, ask: &Ask, node: u32) {
        let n = node as usize;
        self.cpu_used[n] = self.cpu_used[n].saturating_add(ask.cpu);
        self.mem_used[n] = self.mem_used[n].saturating_add(ask.mem);
        self.ports[n].extend_from_slice(&ask.ports);
    }

    /// Static feasibility of every class for one demand: readiness, driver, constraints.
    /// `O(classes × constraints)`, once per demand per phase. `placing`: for new instances, so
    /// a cordoned class is not ready; for what already runs there, it is.
    pub(crate) fn class_reasons(
        &self,
        nodes: &[Node],
        demand: &Demand,
        placing: bool,
    ) -> Vec<Option<StaticReason>> {
        let driver = demand.service.driver();
        let bit = driver_bit(driver);
        let constraints = &demand.service.placement.constraints;
        self.classes
            .iter()
            .map(|c| match c.state {
                State::NotReady => Some(StaticReason::NotReady),
                State::Cordoned if placing => Some(StaticReason::NotReady),
                State::Duplicate => Some(StaticReason::Duplicate),
                State::Ready | State::Cordoned if c.drivers & bit == 0 => {
                    Some(StaticReason::Driver(driver))
                }
                State::Ready | State::Cordoned => {
                    let labels = &nodes[c.rep].labels;
                    constraints
                        .iter()
                        .position(|k| !k.holds(labels))
                        .map(StaticReason::Constraint)
                }
            })
            .collect()
    }

    /// Whether one more instance of `ask` fits on `node` right now. The hot path.
    #[inline]
    pub(crate) fn fits(&self, ask: &Ask, node: u32) -> bool {
        let n = node as usize;
        self.cpu_used[n].saturating_add(ask.cpu) <= self.cpu_cap[n]
            && self.mem_used[n].saturating_add(ask.mem) <= self.mem_cap[n]
            && (ask.ports.is_empty() || !ask.ports.iter().any(|p| self.ports[n].contains(p)))
    }

    /// The first dynamic check `node` fails, in [`Reason`] order; for explanations.
    pub(crate) fn dynamic_reason(&self, ask: &Ask, node: u32) -> Option<Reason> {
        let n = node as usize;
        if self.cpu_used[n].saturating_add(ask.cpu) > self.cpu_cap[n] {
            return Some(Reason::Cpu(ask.cpu));
        }
        if self.mem_used[n].saturating_add(ask.mem) > self.mem_cap[n] {
            return Some(Reason::Memory(ask.mem));
        }
        ask.ports
            .iter()
            .find(|p| self.ports[n].contains(p))
            .map(|&p| Reason::Port(p))
    }

    /// The node's value id for the relevant key at `key_pos`.
    #[inline]
    pub(crate) fn value(&self, node: u32, key_pos: usize) -> u32 {
        self.classes[self.node_class[node as usize] as usize].values[key_pos]
    }
}
