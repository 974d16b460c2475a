//! The scheduler's decisions as plain functions over plain data.
//!
//! Which slot a call takes, whether an instance starts, which idle instance is evicted for
//! room or reaped past its keep-alive, and when a call waits or gives up are decided here,
//! over the state of the node's function pools. Nothing in this module starts or stops a
//! process, takes a lock or reads the clock: the pool passes `now`, calls these functions
//! under its lock, and carries out what they decide (starting into a `Reservation`,
//! stopping what is `Leaving`) after releasing it. That is what lets the tests drive every
//! decision with constructed instants and no instance at all.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use model::limits;

use crate::keepalive::IdleGaps;
use crate::{InstanceConfig, SandboxError};

/// What the decisions need to know of an instance beyond the pool's bookkeeping.
pub(crate) trait Liveness {
    /// Whether the instance has ended on its own (crashed, was killed).
    fn is_dead(&self) -> bool;
}

/// An instance in a function's pool.
pub(crate) struct Entry<M> {
    pub member: M,
    /// Calls running on the instance now.
    pub in_flight: usize,
    /// When `in_flight` last dropped to zero.
    pub idle_since: Instant,
}

/// The instances of one function (one version of it) on this node.
pub(crate) struct FunctionPool<M> {
    /// Which pool of this name this is: a function deleted and deployed again gets a new
    /// pool, and a start or a wait counted in the old one must not be taken off the new.
    pub epoch: u64,
    /// Hash of the `InstanceConfig` the instances were started with.
    pub config_key: u64,
    /// The latest configuration, for starting provisioned instances.
    pub config: InstanceConfig,
    pub entries: Vec<Entry<M>>,
    /// Instances being started, counted against `max_instances`.
    pub starting: usize,
    /// Calls waiting for a slot.
    pub waiting: usize,
    /// The idle gaps between calls, for adaptive keep-alive.
    pub gaps: IdleGaps,
}

impl<M> FunctionPool<M> {
    /// Instances started or starting, as counted against `max_instances`.
    pub fn instances(&self) -> usize {
        self.entries.len() + self.starting
    }
}

/// The node's function pools and what they use of its capacity.
pub(crate) struct State<M> {
    pub functions: HashMap<String, FunctionPool<M>>,
    /// Instances alive (busy, idle, or starting), counted against `instances_max`.
    pub live: usize,
    pub memory_mb: u64,
    pub closed: bool,
    /// The next `FunctionPool::epoch`.
    pub next_epoch: u64,
    /// The id of the next instance to start.
    pub next_instance: u64,
}

impl<M> Default for State<M> {
    fn default() -> Self {
        State {
            functions: HashMap::new(),
            live: 0,
            memory_mb: 0,
            closed: false,
            next_epoch: 0,
            next_instance: 1,
        }
    }
}

impl<M> State<M> {
    /// The pool of `config`'s function, made if new.
    pub fn function_pool(&mut self, config: &InstanceConfig, key: u64) -> &mut FunctionPool<M> {
        let id = config.pool_id();
        if !self.functions.contains_key(id.as_ref()) {
            self.next_epoch += 1;
            self.functions.insert(
                id.clone().into_owned(),
                FunctionPool {
                    epoch: self.next_epoch,
                    config_key: key,
                    config: config.clone(),
                    entries: Vec::new(),
                    starting: 0,
                    waiting: 0,
                    gaps: Default::default(),
                },
            );
        }
        self.functions.get_mut(id.as_ref()).expect("inserted above")
    }

    /// The pool of `function` if it is still the one of `epoch`.
    pub fn function_of(&mut self, function: &str, epoch: u64) -> Option<&mut FunctionPool<M>> {
        self.functions
            .get_mut(function)
            .filter(|fp| fp.epoch == epoch)
    }
}

/// The node's bounds.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Capacity {
    pub instances_max: usize,
    pub memory_max_mb: u64,
}

/// Room taken for an instance about to start: one of the node's instances, its memory, and
/// one of its function's `starting`. The pool turns it into a slot at once, whose drop
/// gives the room back.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Reservation {
    pub instance_id: u64,
    pub memory_mb: u64,
    /// The epoch of the function pool whose `starting` counts the instance.
    pub epoch: u64,
}

/// An instance taken out of its pool, to be stopped once the lock is released; `reason`
/// is for its lifecycle event (none: it ended by itself).
pub(crate) struct Leaving<M> {
    pub entry: Entry<M>,
    pub reason: Option<String>,
}

impl<M> Leaving<M> {
    fn because(entry: Entry<M>, reason: impl Into<String>) -> Self {
        Leaving {
            entry,
            reason: Some(reason.into()),
        }
    }
}

/// What one look at the pool decided for a call.
#[derive(Debug)]
pub(crate) enum Decision<M> {
    /// A slot on this warm instance, already counted in its `in_flight`.
    Warm(M),
    /// Start an instance into this reservation.
    Start(Reservation),
    /// An idle instance of another function leaves for room (in `gone`): look again.
    Evict,
    /// Nothing free: wait for a slot, or give up at the deadline with this error.
    Wait(SandboxError),
}

/// One look at the pool for a call of `config` (whose hash is `key`) at `now`. `waiting`
/// is the epoch of the pool that counts this call as waiting, kept across looks; instances
/// that leave the pool go to `gone`. An error is final: the node is shutting down, or the
/// call is throttled at once (its queue is full, or it may not wait at all).
pub(crate) fn admit<M: Liveness + Clone>(
    state: &mut State<M>,
    node: Capacity,
    config: &InstanceConfig,
    key: u64,
    waiting: &mut Option<u64>,
    now: Instant,
    gone: &mut Vec<Leaving<M>>,
) -> Result<Decision<M>, SandboxError> {
    if state.closed {
        return Err(SandboxError::ShuttingDown);
    }
    let (live, memory_mb) = (state.live, state.memory_mb);
    let fp = state.function_pool(config, key);
    // Idle gaps are only tracked for functions that adapt their keep-alive.
    if config.policy.keep_alive_max_ms > 0 && fp.gaps.is_idle() {
        fp.gaps.call_arrived(now);
    }
    if fp.config_key != key {
        // The function changed: its instances run old code or config.
        fp.config_key = key;
        gone.extend(
            fp.entries
                .drain(..)
                .map(|e| Leaving::because(e, "the function was updated")),
        );
    }
    fp.config = config.clone();
    let (dead, alive): (Vec<Entry<M>>, Vec<Entry<M>>) = std::mem::take(&mut fp.entries)
        .into_iter()
        .partition(|e| e.member.is_dead());
    fp.entries = alive;
    gone.extend(dead.into_iter().map(|entry| Leaving {
        entry,
        reason: None,
    }));
    if let Some(i) = warm_slot(fp, config.concurrency.max(1) as usize) {
        let e = &mut fp.entries[i];
        e.in_flight += 1;
        return Ok(Decision::Warm(e.member.clone()));
    }
    let max = config.policy.max_instances.max(1) as usize;
    if fp.instances() < max {
        if let Some(r) = reserve(state, node, config) {
            return Ok(Decision::Start(r));
        }
        // The node is full: stop the longest-idle instance of another function that is
        // above its minimum, if there is one.
        if let Some((name, i)) = victim(state, &config.pool_id()) {
            let entry = state
                .functions
                .get_mut(&name)
                .expect("found by victim")
                .entries
                .remove(i);
            gone.push(Leaving::because(entry, "evicted to make room on the node"));
            return Ok(Decision::Evict);
        }
    }
    let fp = state
        .functions
        .get_mut(config.pool_id().as_ref())
        .expect("made above");
    if *waiting != Some(fp.epoch) {
        if fp.waiting >= limits::QUEUE_LENGTH_MAX || config.policy.queue_timeout_ms == 0 {
            return Err(throttled(config));
        }
        fp.waiting += 1;
        *waiting = Some(fp.epoch);
    }
    let give_up = if fp.instances() < max {
        SandboxError::NodeFull {
            live,
            instances_max: node.instances_max,
            memory_mb,
            memory_max_mb: node.memory_max_mb,
            waited_ms: config.policy.queue_timeout_ms as u64,
        }
    } else {
        throttled(config)
    };
    Ok(Decision::Wait(give_up))
}

/// The instance a call takes a slot on: one with a free slot, the most recently added
/// first (it is the warmest, and the older ones are left to go idle and be reaped).
pub(crate) fn warm_slot<M>(fp: &FunctionPool<M>, concurrency: usize) -> Option<usize> {
    fp.entries.iter().rposition(|e| e.in_flight < concurrency)
}

/// The instance to stop for room on a full node: the longest idle of all the functions
/// other than `pool_id` that have more instances than their `min_instances`, by function
/// name and position.
pub(crate) fn victim<M>(state: &State<M>, pool_id: &str) -> Option<(String, usize)> {
    state
        .functions
        .iter()
        .filter(|(name, p)| {
            name.as_str() != pool_id && p.entries.len() > p.config.policy.min_instances as usize
        })
        .flat_map(|(name, p)| {
            p.entries
                .iter()
                .enumerate()
                .filter(|(_, e)| e.in_flight == 0)
                .map(move |(i, e)| (name, i, e.idle_since))
        })
        .min_by_key(|(_, _, since)| *since)
        .map(|(name, i, _)| (name.clone(), i))
}

/// Reserves node capacity and the function's count for a new instance of `config`, if
/// the node has room (an instance and `memory_mb`) and the function has a pool.
pub(crate) fn reserve<M>(
    state: &mut State<M>,
    node: Capacity,
    config: &InstanceConfig,
) -> Option<Reservation> {
    let memory_mb = config.memory_mb as u64;
    if state.live >= node.instances_max || state.memory_mb + memory_mb > node.memory_max_mb {
        return None;
    }
    let fp = state.functions.get_mut(config.pool_id().as_ref())?;
    fp.starting += 1;
    let epoch = fp.epoch;
    state.live += 1;
    state.memory_mb += memory_mb;
    let instance_id = state.next_instance;
    state.next_instance += 1;
    Some(Reservation {
        instance_id,
        memory_mb,
        epoch,
    })
}

/// The error of a call refused for its function's limits.
fn throttled(config: &InstanceConfig) -> SandboxError {
    SandboxError::Throttled {
        function: config.function.clone(),
        max_instances: config.policy.max_instances,
        waited_ms: config.policy.queue_timeout_ms as u64,
        retry_after_s: (config.policy.queue_timeout_ms as u64)
            .div_ceil(1000)
            .max(1),
    }
}

/// How the instance started into a reservation of `epoch` fared on arrival.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Arrival {
    /// Its function was deleted while it started: it joins no pool, serves the call that
    /// started it (accepted before the delete), and goes when that call is done.
    pub deleted: bool,
    /// The node shut down while it started.
    pub closed: bool,
}

/// An instance started into a reservation of `epoch` for `config` (hash `key`) joins its
/// function's pool at `now` with `in_flight` calls, unless the function changed, was
/// deleted, or the node closed meanwhile.
pub(crate) fn arrived<M>(
    state: &mut State<M>,
    config: &InstanceConfig,
    key: u64,
    epoch: u64,
    member: M,
    in_flight: usize,
    now: Instant,
) -> Arrival {
    let closed = state.closed;
    match state.function_of(&config.pool_id(), epoch) {
        Some(fp) => {
            fp.starting -= 1;
            if !closed && fp.config_key == key {
                fp.entries.push(Entry {
                    member,
                    in_flight,
                    idle_since: now,
                });
            }
            Arrival {
                deleted: false,
                closed,
            }
        }
        None => Arrival {
            deleted: true,
            closed,
        },
    }
}

/// A call's slot on the instance `is_it` picks is given back at `now`. The instance leaves
/// the pool when `retire` says so (it died, timed out, or was left mid-call with no room
/// for another), when its function changed since it started (`key`), or when it is dead.
pub(crate) fn checkin<M: Liveness>(
    state: &mut State<M>,
    function: &str,
    key: u64,
    is_it: impl Fn(&M) -> bool,
    retire: bool,
    now: Instant,
) -> Option<Entry<M>> {
    let pool = state.functions.get_mut(function)?;
    let i = pool.entries.iter().position(|e| is_it(&e.member))?;
    let entry = &mut pool.entries[i];
    entry.in_flight -= 1;
    if entry.in_flight == 0 {
        entry.idle_since = now;
        if pool.config.policy.keep_alive_max_ms > 0
            && pool.starting == 0
            && pool.entries.iter().all(|e| e.in_flight == 0)
        {
            pool.gaps.went_idle(now);
        }
    }
    let dead = pool.entries[i].member.is_dead();
    (retire || pool.config_key != key || dead).then(|| pool.entries.remove(i))
}

/// Takes the instances of `function` out of the node: after an update those of `$LATEST`
/// (published versions never change), and after a delete (`forget`) every version's, with
/// the pools themselves (so their minimums are forgotten too).
pub(crate) fn remove<M>(state: &mut State<M>, function: &str, forget: bool) -> Vec<Entry<M>> {
    if forget {
        // A deleted function's versions go too (their pools are `function:N`).
        let prefix = format!("{function}:");
        let ids: Vec<String> = state
            .functions
            .keys()
            .filter(|k| *k == function || k.starts_with(&prefix))
            .cloned()
            .collect();
        ids.iter()
            .filter_map(|id| state.functions.remove(id))
            .flat_map(|f| f.entries)
            .collect()
    } else {
        state
            .functions
            .get_mut(function)
            .map(|f| std::mem::take(&mut f.entries))
            .unwrap_or_default()
    }
}

/// How long `fp`'s idle instances are kept: `idle_timeout_ms`, or longer with adaptive
/// keep-alive.
pub(crate) fn keep_alive<M>(fp: &FunctionPool<M>) -> Duration {
    let policy = &fp.config.policy;
    Duration::from_millis(
        fp.gaps
            .keep_alive_ms(policy.idle_timeout_ms, policy.keep_alive_max_ms),
    )
}

/// Takes out of `fp` the instances idle past its keep-alive at `now`, the longest idle
/// first, down to `min_instances`.
pub(crate) fn reap<M>(fp: &mut FunctionPool<M>, now: Instant) -> Vec<Leaving<M>> {
    let min = fp.config.policy.min_instances as usize;
    let idle_timeout = keep_alive(fp);
    let idle_timeout_ms = fp.config.policy.idle_timeout_ms;
    let adapted = idle_timeout.as_millis() > idle_timeout_ms as u128;
    let mut expired = Vec::new();
    while fp.entries.len() > min {
        let oldest = fp
            .entries
            .iter()
            .enumerate()
            .filter(|(_, e)| {
                e.in_flight == 0 && now.saturating_duration_since(e.idle_since) >= idle_timeout
            })
            .min_by_key(|(_, e)| e.idle_since)
            .map(|(i, _)| i);
        let Some(i) = oldest else { break };
        let e = fp.entries.remove(i);
        expired.push(Leaving::because(
            e,
            if adapted {
                format!(
                    "idle for {} ms (adaptive keep-alive past idle_timeout_ms {idle_timeout_ms})",
                    idle_timeout.as_millis(),
                )
            } else {
                format!("idle for {} ms", idle_timeout.as_millis())
            },
        ));
    }
    expired
}

/// The instances to freeze at `now`: those with no call in flight that have been idle for
/// `after` or longer. The pool freezes them under its lock, so no call can take one
/// between this look and the freeze; one already frozen is listed again (freezing is
/// idempotent).
pub(crate) fn to_freeze<M>(
    state: &State<M>,
    now: Instant,
    after: Duration,
) -> impl Iterator<Item = &M> {
    state
        .functions
        .values()
        .flat_map(|fp| &fp.entries)
        .filter(move |e| e.in_flight == 0 && now.saturating_duration_since(e.idle_since) >= after)
        .map(|e| &e.member)
}

/// How many instances `fp` must start to reach its `min_instances`.
pub(crate) fn missing<M>(fp: &FunctionPool<M>) -> usize {
    (fp.config.policy.min_instances as usize).saturating_sub(fp.instances())
}

/// What one maintenance tick decided.
pub(crate) struct Tick<M> {
    /// Instances idle past their keep-alive, to stop (running `pre_stop` first).
    pub expired: Vec<Leaving<M>>,
    /// Instances to start for `min_instances`, each into its reservation.
    pub to_start: Vec<(InstanceConfig, Reservation)>,
}

/// One maintenance tick at `now`: every function's instances idle past their keep-alive
/// are reaped (down to `min_instances`), and as many instances as the node has room for
/// are reserved to bring each function up to `min_instances` (none once it is closed).
pub(crate) fn tick<M>(state: &mut State<M>, node: Capacity, now: Instant) -> Tick<M> {
    let mut expired = Vec::new();
    let mut to_start = Vec::new();
    let closed = state.closed;
    let names: Vec<String> = state.functions.keys().cloned().collect();
    for name in names {
        let fp = state.functions.get_mut(&name).expect("listed above");
        expired.extend(reap(fp, now));
        let missing = missing(fp);
        if closed {
            continue;
        }
        let config = fp.config.clone();
        for _ in 0..missing {
            match reserve(state, node, &config) {
                Some(r) => to_start.push((config.clone(), r)),
                None => break,
            }
        }
    }
    Tick { expired, to_start }
}

#[cfg(test)]
mod tests;
