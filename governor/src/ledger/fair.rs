//! Weighted fair shares of one dependency's permits between its tenants, and
//! between each tenant's routes.
//!
//! The allocation is weighted max-min of the permits in flight: a free permit
//! goes to the waiting tenant with the fewest permits in flight per unit of
//! weight, this permit counted (priority still first: the tenant is chosen among those with a
//! waiter of the highest priority waiting), ties to the one served longest
//! ago. A tenant that asks for less than its share is never held back by
//! the others; what it leaves is lent to the others as it frees up, and
//! comes back the same way, as permits are released, never by revoking a
//! held one. With `by = tenant_route`, the tenant's permit then goes to its
//! waiting route with the fewest in flight: routes share their tenant's
//! part equally, so a tenant with ten routes does not get ten shares.
//!
//! A full queue with no lower-priority waiter makes room for an arrival by
//! displacing the newest waiter of its priority of the other tenant with the
//! most load (in flight + queued) per weight that has one, if that tenant
//! has more load per weight than the arrival's tenant would have with the
//! arrival. A tenant within its max-min share of the
//! permits and the queue (`limit + max_queue`) is so never answered
//! QUEUE_FULL while a tenant beyond its share has a waiter: every tenant over
//! its share has more load per weight than any tenant within it.
//!
//! Each operation is O(log tenants): the tenants with waiters are kept in
//! ordered sets, one per priority by use per weight and one by load per
//! weight, and each tenant's routes the same way; the waiters themselves are
//! on their route's lists in the wait queue (see [`WaiterQueue`]). Nothing on
//! the permit path scans the tenants or the waiters; a status reads the
//! table in O(tenants) ([`Fair::read`]) and sorts after the lock.
//!
//! The table is bounded by `max_tenants`, tenants and routes together. The
//! tenants named in `weights` are always in it; another tenant stays while
//! it has a permit or a waiter, and after that until the room is needed
//! (the longest idle goes first). When every entry is busy, a new tenant
//! shares one overflow tenant (at the default weight) with the others that
//! found no room, and a new route shares its tenant's default route (the one
//! of the requests without a route): stricter for them, never looser for
//! anyone in the table, and no busy entry is forgotten.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use slab::Slab;

use super::limits::{FairBy, Fairness};
use super::waiters::{FlowId, Priority, WaiterKey, WaiterQueue};

/// The tenants listed in a status beside the named ones, most loaded first.
pub const STATUS_TENANTS: usize = 32;

const PRIORITIES: usize = Priority::ALL.len();

/// What became of an arrival.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Arrival {
    Granted,
    /// Queued with this priority, a retry or not.
    Queued(Priority, bool),
    Rejected,
    /// A permit granted under an earlier table, counted in this one.
    Held,
}

/// Why a waiter left the queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Left {
    Granted,
    /// Turned away (timed out, displaced, shed, drained).
    Rejected,
    /// Its caller went away.
    Gone,
}

/// A granted or queued request's entry in the table: released into the
/// table of the same epoch only (a new `by` builds a new table).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct FlowRef {
    epoch: u32,
    tenant: u32,
    route: u32,
}

/// What a tenant or a route holds and waits for.
#[derive(Clone, Copy, Debug, Default)]
struct Usage {
    in_flight: u32,
    queued: [u32; PRIORITIES],
    /// The retries among `queued`.
    retries: [u32; PRIORITIES],
    /// When it was last granted a permit (the table's clock): ties go to
    /// the one served longest ago.
    turn: u64,
    /// Arrivals being decided (between [`Fair::flow`] and [`Fair::arrived`]):
    /// the entry is kept meanwhile.
    pending: u32,
}

impl Usage {
    fn queued_total(&self) -> u32 {
        self.queued.iter().sum()
    }

    fn load(&self) -> u32 {
        self.in_flight + self.queued_total()
    }

    fn idle(&self) -> bool {
        self.load() == 0 && self.pending == 0
    }
}

/// `count / weight` in fixed point, for ordered sets (counts and weights are
/// bounded by a million and a thousand: no overflow, and exact enough to
/// order any two counts of one weight, or one count of two weights).
fn per_weight(count: u32, weight: u32) -> u64 {
    (u64::from(count) << 32) / u64::from(weight)
}

/// Members (tenants, or a tenant's routes) competing for permits by weight.
#[derive(Debug, Default)]
struct Group {
    /// For each priority, the members with a waiter of it: (in flight per
    /// weight with the permit it would get, turn, member), the next to
    /// serve first. Counting the next permit (like a fair queue's finish
    /// tag) is what settles integer permits on the max-min shares: a tenant
    /// of weight 2 holding 4 goes before one of weight 1 holding 2.
    ready: [BTreeSet<(u64, u64, u32)>; PRIORITIES],
    /// For each priority, the members with a waiter of it, and those with
    /// a retry waiting at it: (load per weight, member), the most loaded
    /// last: where a full queue looks for a waiter to displace.
    loaded: [BTreeSet<(u64, u32)>; PRIORITIES],
    loaded_retries: [BTreeSet<(u64, u32)>; PRIORITIES],
}

impl Group {
    fn remove(&mut self, member: u32, usage: &Usage, weight: u32) {
        let used = per_weight(usage.in_flight + 1, weight);
        let load = per_weight(usage.load(), weight);
        for p in 0..PRIORITIES {
            if usage.queued[p] > 0 {
                self.ready[p].remove(&(used, usage.turn, member));
                self.loaded[p].remove(&(load, member));
            }
            if usage.retries[p] > 0 {
                self.loaded_retries[p].remove(&(load, member));
            }
        }
    }

    fn insert(&mut self, member: u32, usage: &Usage, weight: u32) {
        let used = per_weight(usage.in_flight + 1, weight);
        let load = per_weight(usage.load(), weight);
        for p in 0..PRIORITIES {
            if usage.queued[p] > 0 {
                self.ready[p].insert((used, usage.turn, member));
                self.loaded[p].insert((load, member));
            }
            if usage.retries[p] > 0 {
                self.loaded_retries[p].insert((load, member));
            }
        }
    }

    fn next(&self, priority: Priority) -> Option<u32> {
        self.ready[priority as usize].first().map(|&(_, _, m)| m)
    }

    /// The most loaded member, other than `except`, with a waiter of
    /// `priority` (a retry, with `retry`).
    fn most_loaded(&self, priority: Priority, retry: bool, except: Option<u32>) -> Option<u32> {
        let set = if retry {
            &self.loaded_retries[priority as usize]
        } else {
            &self.loaded[priority as usize]
        };
        set.iter()
            .rev()
            .map(|&(_, m)| m)
            .find(|&m| Some(m) != except)
    }
}

#[derive(Debug)]
struct Route {
    name: Arc<str>,
    usage: Usage,
    /// Its waiters' lists in the wait queue.
    flow: FlowId,
    granted: u64,
    rejected: u64,
}

#[derive(Debug)]
struct Tenant {
    name: Arc<str>,
    weight: u32,
    named: bool,
    usage: Usage,
    routes: Slab<Route>,
    route_names: HashMap<Arc<str>, u32>,
    group: Group,
    granted: u64,
    rejected: u64,
    /// Its stamp in the idle order, while it is there.
    idle: Option<u64>,
}

impl Tenant {
    fn new(name: Arc<str>, weight: u32, named: bool) -> Tenant {
        Tenant {
            name,
            weight,
            named,
            usage: Usage::default(),
            routes: Slab::new(),
            route_names: HashMap::new(),
            group: Group::default(),
            granted: 0,
            rejected: 0,
            idle: None,
        }
    }
}

/// The fair-share table of one dependency.
#[derive(Debug)]
pub(crate) struct Fair {
    config: Fairness,
    epoch: u32,
    tenants: Slab<Tenant>,
    names: HashMap<Arc<str>, u32>,
    /// The tenant shared by those that found no room.
    overflow: Option<u32>,
    group: Group,
    /// Idle tenants that may be forgotten, by when they went idle.
    idle: BTreeMap<u64, u32>,
    /// Tenants and named routes in the table (not the overflow tenant, nor
    /// the tenants' default routes): at most `max_tenants` once room is made.
    entries: usize,
    clock: u64,
    empty: Arc<str>,
}

/// One tenant in a status.
#[derive(Clone, Debug, PartialEq)]
pub struct TenantStatus {
    /// Empty for the requests without a tenant, and for the overflow tenant.
    pub tenant: Arc<str>,
    /// The tenant shared by those that found no room in the table.
    pub overflow: bool,
    /// Named in `weights`.
    pub named: bool,
    pub weight: u32,
    pub in_flight: u32,
    pub queued: u32,
    /// Its weighted max-min share of the enforced limit, given every
    /// tenant's demand (in flight + queued) at this instant.
    pub share: f64,
    /// Since it entered the table.
    pub granted_total: u64,
    pub rejected_total: u64,
    /// Its routes with a permit or a waiter (`by = tenant_route`).
    pub routes: Vec<RouteStatus>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct RouteStatus {
    /// Empty for the requests without a route (and the routes that found
    /// no room).
    pub route: Arc<str>,
    pub in_flight: u32,
    pub queued: u32,
    /// Its part of the tenant's share.
    pub share: f64,
    pub granted_total: u64,
    pub rejected_total: u64,
}

/// How much of the fair-share table a status reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TenantDetail {
    /// Only how many tenants it tracks (the status page's sampler, logs).
    None,
    /// The named tenants (the metrics).
    Named,
    /// The named tenants and the most loaded others (the control plane).
    Top,
}

/// The table as read under the lock; [`FairReading::finish`] computes the
/// shares (O(tenants log tenants)) after it.
#[derive(Debug)]
pub(crate) struct FairReading {
    limit: u32,
    tracked: u32,
    /// Every tenant's (demand, weight), in table order.
    demands: Vec<(u32, u32)>,
    /// The listed tenants, each with its position in `demands`.
    listed: Vec<(usize, TenantStatus)>,
}

impl FairReading {
    pub(crate) fn finish(self) -> FairStatus {
        let shares = max_min(f64::from(self.limit), &self.demands);
        let tenants = self
            .listed
            .into_iter()
            .map(|(position, mut tenant)| {
                tenant.share = shares[position];
                let routes: Vec<(u32, u32)> = tenant
                    .routes
                    .iter()
                    .map(|r| (r.in_flight + r.queued, 1))
                    .collect();
                for (route, share) in tenant.routes.iter_mut().zip(max_min(tenant.share, &routes)) {
                    route.share = share;
                }
                tenant
            })
            .collect();
        FairStatus {
            tenants,
            tracked: self.tracked,
        }
    }
}

/// The table in a status: the named tenants and the most loaded others.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FairStatus {
    pub tenants: Vec<TenantStatus>,
    /// Tenants in the table (the listed ones and the rest).
    pub tracked: u32,
}

impl Fair {
    pub(crate) fn new(config: Fairness, epoch: u32) -> Fair {
        let mut fair = Fair {
            config,
            epoch,
            tenants: Slab::new(),
            names: HashMap::new(),
            overflow: None,
            group: Group::default(),
            idle: BTreeMap::new(),
            entries: 0,
            clock: 0,
            empty: Arc::from(""),
        };
        fair.add_named();
        fair
    }

    pub(crate) fn config(&self) -> &Fairness {
        &self.config
    }

    /// New weights or a new bound, `by` unchanged: the tenants keep their
    /// permits and waiters.
    pub(crate) fn reweigh(&mut self, config: Fairness) {
        debug_assert_eq!(config.by(), self.config.by());
        self.config = config;
        for index in 0..self.tenants.capacity() {
            let Some(tenant) = self.tenants.get_mut(index) else {
                continue;
            };
            let member = index as u32;
            self.group.remove(member, &tenant.usage, tenant.weight);
            let (weight, named) = if self.overflow == Some(member) {
                (self.config.default_weight(), false)
            } else {
                self.config.weight_of(&tenant.name)
            };
            tenant.weight = weight;
            tenant.named = named;
            self.group.insert(member, &tenant.usage, tenant.weight);
            match (named, tenant.idle) {
                (true, Some(stamp)) => {
                    self.idle.remove(&stamp);
                    tenant.idle = None;
                }
                (false, None) if tenant.usage.idle() && self.overflow != Some(member) => {
                    self.clock += 1;
                    tenant.idle = Some(self.clock);
                    self.idle.insert(self.clock, member);
                }
                _ => {}
            }
        }
        self.add_named();
        while self.entries > self.config.max_tenants() as usize && self.forget_idle() {}
    }

    fn add_named(&mut self) {
        let weights = self.config.weights().clone();
        for name in weights.keys() {
            if !self.names.contains_key(name) {
                self.insert_tenant(name.clone());
            }
        }
    }

    fn insert_tenant(&mut self, name: Arc<str>) -> u32 {
        let (weight, named) = self.config.weight_of(&name);
        let index = self
            .tenants
            .insert(Tenant::new(name.clone(), weight, named)) as u32;
        self.names.insert(name, index);
        self.entries += 1;
        if !named {
            self.clock += 1;
            self.tenants[index as usize].idle = Some(self.clock);
            self.idle.insert(self.clock, index);
        }
        index
    }

    /// Forgets the tenant idle the longest; false if none is.
    fn forget_idle(&mut self) -> bool {
        let Some((_, index)) = self.idle.pop_first() else {
            return false;
        };
        let tenant = self.tenants.remove(index as usize);
        debug_assert!(tenant.usage.idle() && tenant.routes.is_empty());
        self.names.remove(&tenant.name);
        self.entries -= 1;
        true
    }

    /// Whether one more entry fits, forgetting an idle tenant if need be.
    fn make_room(&mut self) -> bool {
        self.entries < self.config.max_tenants() as usize || self.forget_idle()
    }

    /// The entry of a request by `tenant` on `route` (made if need be; its
    /// route's lists are opened in `queue`), kept until the arrival is
    /// decided: every call is followed by one [`Fair::arrived`].
    pub(crate) fn flow<T>(
        &mut self,
        tenant: Option<&str>,
        route: Option<&str>,
        queue: &mut WaiterQueue<T>,
    ) -> FlowRef {
        let name = tenant.unwrap_or("");
        let index = match self.names.get(name).copied() {
            Some(index) => index,
            None if self.make_room() => self.insert_tenant(Arc::from(name)),
            None => self.overflow_tenant(),
        };
        // Off the idle order first: making room for a route must not
        // forget its own tenant.
        if let Some(stamp) = self.tenants[index as usize].idle.take() {
            self.idle.remove(&stamp);
        }
        let overflow = self.overflow == Some(index);
        let route_name = match self.config.by() {
            FairBy::TenantRoute if !overflow => route.unwrap_or(""),
            _ => "",
        };
        let known = self.tenants[index as usize]
            .route_names
            .get(route_name)
            .copied();
        let route = match known {
            Some(route) => route,
            // The default route ("") is always made; another only with room.
            None if route_name.is_empty() || self.make_room() => {
                self.insert_route(index, route_name, queue)
            }
            None => self.insert_route(index, "", queue),
        };
        let tenant = &mut self.tenants[index as usize];
        tenant.usage.pending += 1;
        tenant.routes[route as usize].usage.pending += 1;
        FlowRef {
            epoch: self.epoch,
            tenant: index,
            route,
        }
    }

    /// The name of an entry's tenant, if the entry is of this table and
    /// still in it (the overflow entry has none).
    pub(crate) fn tenant_of(&self, flow: FlowRef) -> Option<Arc<str>> {
        let live = self.live(flow) && self.overflow != Some(flow.tenant);
        live.then(|| self.tenants[flow.tenant as usize].name.clone())
    }

    fn overflow_tenant(&mut self) -> u32 {
        if let Some(index) = self.overflow {
            return index;
        }
        let tenant = Tenant::new(self.empty.clone(), self.config.default_weight(), false);
        let index = self.tenants.insert(tenant) as u32;
        self.overflow = Some(index);
        index
    }

    fn insert_route<T>(&mut self, tenant: u32, name: &str, queue: &mut WaiterQueue<T>) -> u32 {
        let tenant = &mut self.tenants[tenant as usize];
        if let Some(&route) = tenant.route_names.get(name) {
            return route;
        }
        let name: Arc<str> = if name.is_empty() {
            self.empty.clone()
        } else {
            self.entries += 1;
            Arc::from(name)
        };
        let route = tenant.routes.insert(Route {
            name: name.clone(),
            usage: Usage::default(),
            flow: queue.open_flow(),
            granted: 0,
            rejected: 0,
        }) as u32;
        tenant.route_names.insert(name, route);
        route
    }

    fn live(&self, flow: FlowRef) -> bool {
        flow.epoch == self.epoch
            && self
                .tenants
                .get(flow.tenant as usize)
                .is_some_and(|t| t.routes.contains(flow.route as usize))
    }

    /// The wait-queue flow of an entry from [`Fair::flow`].
    pub(crate) fn queue_flow(&self, flow: FlowRef) -> FlowId {
        self.tenants[flow.tenant as usize].routes[flow.route as usize].flow
    }

    /// Applies `change` to the tenant's and the route's usage, keeping both
    /// groups in order.
    fn change(&mut self, flow: FlowRef, change: impl Fn(&mut Usage)) {
        let tenant = &mut self.tenants[flow.tenant as usize];
        let route = &mut tenant.routes[flow.route as usize];
        self.group.remove(flow.tenant, &tenant.usage, tenant.weight);
        tenant.group.remove(flow.route, &route.usage, 1);
        change(&mut tenant.usage);
        change(&mut route.usage);
        self.group.insert(flow.tenant, &tenant.usage, tenant.weight);
        tenant.group.insert(flow.route, &route.usage, 1);
    }

    /// Forgets what an entry no longer needs: an idle route's lists, and an
    /// idle tenant goes to the idle order (or stays, named).
    fn settle<T>(&mut self, flow: FlowRef, queue: &mut WaiterQueue<T>) {
        let overflow = self.overflow == Some(flow.tenant);
        let tenant = &mut self.tenants[flow.tenant as usize];
        if tenant.routes[flow.route as usize].usage.idle() {
            let route = tenant.routes.remove(flow.route as usize);
            tenant.route_names.remove(&route.name);
            queue.close_flow(route.flow);
            if !route.name.is_empty() {
                self.entries -= 1;
            }
        }
        if tenant.usage.idle() && !tenant.named && !overflow && tenant.idle.is_none() {
            self.clock += 1;
            tenant.idle = Some(self.clock);
            self.idle.insert(self.clock, flow.tenant);
        }
    }

    fn count(&mut self, flow: FlowRef, granted: bool) {
        let tenant = &mut self.tenants[flow.tenant as usize];
        let route = &mut tenant.routes[flow.route as usize];
        if granted {
            tenant.granted += 1;
            route.granted += 1;
        } else {
            tenant.rejected += 1;
            route.rejected += 1;
        }
    }

    /// What became of an arrival from [`Fair::flow`].
    pub(crate) fn arrived<T>(
        &mut self,
        flow: FlowRef,
        arrival: Arrival,
        queue: &mut WaiterQueue<T>,
    ) {
        if !self.live(flow) {
            return;
        }
        self.clock += 1;
        let turn = self.clock;
        self.change(flow, |u| {
            u.pending -= 1;
            match arrival {
                Arrival::Granted => {
                    u.in_flight += 1;
                    u.turn = turn;
                }
                Arrival::Queued(priority, retry) => {
                    u.queued[priority as usize] += 1;
                    u.retries[priority as usize] += u32::from(retry);
                }
                Arrival::Held => u.in_flight += 1,
                Arrival::Rejected => {}
            }
        });
        match arrival {
            Arrival::Granted => self.count(flow, true),
            Arrival::Rejected => self.count(flow, false),
            Arrival::Queued(..) | Arrival::Held => {}
        }
        self.settle(flow, queue);
    }

    /// A waiter of `priority` left the queue.
    pub(crate) fn dequeued<T>(
        &mut self,
        flow: FlowRef,
        priority: Priority,
        retry: bool,
        left: Left,
        queue: &mut WaiterQueue<T>,
    ) {
        if !self.live(flow) {
            return;
        }
        self.clock += 1;
        let turn = self.clock;
        self.change(flow, |u| {
            u.queued[priority as usize] -= 1;
            u.retries[priority as usize] -= u32::from(retry);
            if left == Left::Granted {
                u.in_flight += 1;
                u.turn = turn;
            }
        });
        match left {
            Left::Granted => self.count(flow, true),
            Left::Rejected => self.count(flow, false),
            Left::Gone => {}
        }
        self.settle(flow, queue);
    }

    /// A permit of the entry came back (released, expired, or a grant taken
    /// back). A permit of an older table is forgotten.
    pub(crate) fn released<T>(&mut self, flow: FlowRef, queue: &mut WaiterQueue<T>) {
        if self.live(flow) {
            self.change(flow, |u| u.in_flight -= 1);
            self.settle(flow, queue);
        }
    }

    /// The entry the next permit goes to among those with a waiter of
    /// `priority`: the tenant with the fewest in flight per weight, then its
    /// route with the fewest in flight.
    pub(crate) fn next(&self, priority: Priority) -> Option<FlowRef> {
        let tenant = self.group.next(priority)?;
        let route = self.tenants[tenant as usize].group.next(priority)?;
        Some(FlowRef {
            epoch: self.epoch,
            tenant,
            route,
        })
    }

    /// The waiter a fair arrival displaces from a full queue (the caller
    /// has found no waiter of a lower priority to displace): the newest
    /// waiter of `priority` (a retry, for a retry) of the most loaded other
    /// tenant (per weight) that has one, from its most loaded such route, if
    /// that tenant has more load per weight than the arrival's would have
    /// with it.
    pub(crate) fn victim<T>(
        &self,
        arrival: FlowRef,
        priority: Priority,
        retry: bool,
        queue: &WaiterQueue<T>,
    ) -> Option<WaiterKey> {
        if !self.live(arrival) {
            return None;
        }
        let most = self
            .group
            .most_loaded(priority, retry, Some(arrival.tenant))?;
        let own = &self.tenants[arrival.tenant as usize];
        let other = &self.tenants[most as usize];
        let own_load = u64::from(own.usage.load()) + 1;
        let other_load = u64::from(other.usage.load());
        if other_load * u64::from(own.weight) <= own_load * u64::from(other.weight) {
            return None;
        }
        let route = other.group.most_loaded(priority, retry, None)?;
        queue.flow_newest(other.routes[route as usize].flow, priority, retry)
    }

    /// What a status shows of the table, read under the dependency's lock
    /// in O(tenants) (the named tenants, and with [`TenantDetail::Top`] the
    /// [`STATUS_TENANTS`] most loaded others, picked without sorting); the
    /// shares are computed by [`FairReading::finish`], after the lock.
    pub(crate) fn read(&self, limit: u32, detail: TenantDetail) -> FairReading {
        let tracked = self.tenants.len() as u32;
        if detail == TenantDetail::None {
            return FairReading {
                limit,
                tracked,
                demands: Vec::new(),
                listed: Vec::new(),
            };
        }
        let mut demands = Vec::with_capacity(self.tenants.len());
        let mut named = Vec::new();
        let mut others = Vec::new();
        for (position, (index, tenant)) in self.tenants.iter().enumerate() {
            demands.push((tenant.usage.load(), tenant.weight));
            if tenant.named {
                named.push((position, index));
            } else if detail == TenantDetail::Top {
                others.push((tenant.usage.load(), tenant.granted, position, index));
            }
        }
        // The most loaded first, then the most granted.
        let by_load = |a: &(u32, u64, usize, usize), b: &(u32, u64, usize, usize)| {
            (b.0, b.1).cmp(&(a.0, a.1))
        };
        if others.len() > STATUS_TENANTS {
            others.select_nth_unstable_by(STATUS_TENANTS, by_load);
            others.truncate(STATUS_TENANTS);
        }
        others.sort_by(by_load);
        let listed = named
            .into_iter()
            .chain(
                others
                    .into_iter()
                    .map(|(_, _, position, index)| (position, index)),
            )
            .map(|(position, index)| (position, self.tenant_status(index)))
            .collect();
        FairReading {
            limit,
            tracked,
            demands,
            listed,
        }
    }

    /// A tenant's figures, its shares still to compute.
    fn tenant_status(&self, index: usize) -> TenantStatus {
        let tenant = &self.tenants[index];
        TenantStatus {
            tenant: tenant.name.clone(),
            overflow: self.overflow == Some(index as u32),
            named: tenant.named,
            weight: tenant.weight,
            in_flight: tenant.usage.in_flight,
            queued: tenant.usage.queued_total(),
            share: 0.0,
            granted_total: tenant.granted,
            rejected_total: tenant.rejected,
            routes: match self.config.by() {
                FairBy::Tenant => Vec::new(),
                FairBy::TenantRoute => tenant
                    .routes
                    .iter()
                    .map(|(_, route)| RouteStatus {
                        route: route.name.clone(),
                        in_flight: route.usage.in_flight,
                        queued: route.usage.queued_total(),
                        share: 0.0,
                        granted_total: route.granted,
                        rejected_total: route.rejected,
                    })
                    .collect(),
            },
        }
    }

    /// Checks the table against its own counts (tests and fuzzing).
    #[cfg(test)]
    pub(crate) fn check<T>(&self, queue: &WaiterQueue<T>) {
        let mut entries = 0;
        for (index, tenant) in &self.tenants {
            let overflow = self.overflow == Some(index as u32);
            if !overflow {
                entries += 1;
                assert_eq!(self.names.get(&tenant.name), Some(&(index as u32)));
            }
            let mut sum = Usage::default();
            for (_, route) in &tenant.routes {
                assert!(!route.usage.idle(), "an idle route is forgotten");
                if !route.name.is_empty() {
                    entries += 1;
                }
                sum.in_flight += route.usage.in_flight;
                for p in Priority::ALL {
                    sum.queued[p as usize] += route.usage.queued[p as usize];
                    sum.retries[p as usize] += route.usage.retries[p as usize];
                    assert!(route.usage.retries[p as usize] <= route.usage.queued[p as usize]);
                    assert_eq!(
                        queue.flow_has(route.flow, p),
                        route.usage.queued[p as usize] > 0
                    );
                }
            }
            assert_eq!(sum.in_flight, tenant.usage.in_flight);
            assert_eq!(sum.queued, tenant.usage.queued);
            assert_eq!(sum.retries, tenant.usage.retries);
            let idle_listed = tenant.idle.is_some();
            assert_eq!(
                idle_listed,
                tenant.usage.idle() && !tenant.named && !overflow,
                "tenant {:?}",
                tenant.name
            );
        }
        assert_eq!(entries, self.entries);
        assert_eq!(
            self.idle.len(),
            self.tenants
                .iter()
                .filter(|(_, t)| t.idle.is_some())
                .count()
        );
    }
}

/// Weighted max-min fair shares of `capacity` between `demands` (demand,
/// weight): water-filling, the smallest demand per weight first.
pub fn max_min(capacity: f64, demands: &[(u32, u32)]) -> Vec<f64> {
    let mut order: Vec<usize> = (0..demands.len()).filter(|&i| demands[i].0 > 0).collect();
    order.sort_by(|&a, &b| {
        let (da, wa) = demands[a];
        let (db, wb) = demands[b];
        (u64::from(da) * u64::from(wb)).cmp(&(u64::from(db) * u64::from(wa)))
    });
    let mut shares = vec![0.0; demands.len()];
    let mut left = capacity;
    let mut weight: f64 = order.iter().map(|&i| f64::from(demands[i].1)).sum();
    for (position, &i) in order.iter().enumerate() {
        let (demand, w) = demands[i];
        let fair = left * f64::from(w) / weight;
        if f64::from(demand) <= fair {
            shares[i] = f64::from(demand);
            left -= f64::from(demand);
            weight -= f64::from(w);
        } else {
            for &j in &order[position..] {
                shares[j] = left * f64::from(demands[j].1) / weight;
            }
            break;
        }
    }
    shares
}
