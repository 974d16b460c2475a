//! Tests of the scheduler's decisions: plain state, constructed instants, no instance.

use super::*;
use crate::Policy;

/// An instance as the decisions see it: an id to tell it apart, and whether it died.
#[derive(Clone, Debug, PartialEq)]
struct Fake {
    id: u64,
    dead: bool,
}

impl Liveness for Fake {
    fn is_dead(&self) -> bool {
        self.dead
    }
}

const KEY: u64 = 1;
const NODE: Capacity = Capacity {
    instances_max: 4,
    memory_max_mb: 1024,
};

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn config(function: &str, policy: Policy) -> InstanceConfig {
    InstanceConfig {
        policy,
        ..InstanceConfig::for_test(
            function,
            model::Runtime::Python3,
            "main.handler",
            "/nonexistent",
        )
    }
}

fn policy(min_instances: u32, max_instances: u32) -> Policy {
    Policy {
        min_instances,
        max_instances,
        idle_timeout_ms: 1000,
        keep_alive_max_ms: 0,
        queue_timeout_ms: 500,
    }
}

/// An instance with `in_flight` calls, idle since `idle_at_ms` after `t0`.
type Spec = (usize, u64);

/// Adds `config`'s pool with instances as `specs` say (ids numbered on from the state's
/// next instance), counted against the node as started instances are.
fn add(state: &mut State<Fake>, config: &InstanceConfig, specs: &[Spec], t0: Instant) {
    let mut entries = Vec::new();
    for (in_flight, idle_at_ms) in specs {
        entries.push(Entry {
            member: Fake {
                id: state.next_instance,
                dead: false,
            },
            in_flight: *in_flight,
            idle_since: t0 + ms(*idle_at_ms),
        });
        state.next_instance += 1;
        state.live += 1;
        state.memory_mb += config.memory_mb as u64;
    }
    state.function_pool(config, KEY).entries = entries;
}

fn ids(entries: &[Entry<Fake>]) -> Vec<u64> {
    entries.iter().map(|e| e.member.id).collect()
}

fn leaving_ids(gone: &[Leaving<Fake>]) -> Vec<u64> {
    gone.iter().map(|l| l.entry.member.id).collect()
}

/// One `admit` of a call of `config` at `now` that has not waited yet.
fn look(
    state: &mut State<Fake>,
    node: Capacity,
    config: &InstanceConfig,
    now: Instant,
) -> (Result<Decision<Fake>, SandboxError>, Vec<Leaving<Fake>>) {
    let mut gone = Vec::new();
    let decision = admit(state, node, config, KEY, &mut None, now, &mut gone);
    (decision, gone)
}

/// What a decision was, in a word, for tables.
fn word(decision: &Result<Decision<Fake>, SandboxError>) -> String {
    match decision {
        Ok(Decision::Warm(m)) => format!("warm {}", m.id),
        Ok(Decision::Start(r)) => format!("start {}", r.instance_id),
        Ok(Decision::Evict) => "evict".into(),
        Ok(Decision::Wait(SandboxError::NodeFull { .. })) => "wait, then node full".into(),
        Ok(Decision::Wait(SandboxError::Throttled { .. })) => "wait, then throttled".into(),
        Ok(Decision::Wait(e)) => format!("wait, then {e}"),
        Err(SandboxError::Throttled { .. }) => "throttled".into(),
        Err(e) => format!("error {e}"),
    }
}

#[test]
fn a_warm_slot_is_the_most_recently_added_instance_with_room() {
    // (concurrency, in_flight of each instance in the order added, the slot taken)
    let cases: &[(usize, &[usize], Option<usize>)] = &[
        (1, &[0, 0, 0], Some(2)),
        (1, &[0, 0, 1], Some(1)),
        (1, &[1, 1], None),
        (2, &[1, 2], Some(0)),
        (2, &[2, 1], Some(1)),
        (4, &[], None),
    ];
    let t0 = Instant::now();
    for (concurrency, in_flight, expect) in cases {
        let mut state = State::default();
        let specs: Vec<Spec> = in_flight.iter().map(|n| (*n, 0)).collect();
        let config = config("f", policy(0, 10));
        add(&mut state, &config, &specs, t0);
        let fp = &state.functions["f"];
        assert_eq!(
            warm_slot(fp, *concurrency),
            *expect,
            "concurrency {concurrency}, in flight {in_flight:?}"
        );
    }
}

#[test]
fn admit_takes_a_warm_slot_and_counts_the_call() {
    let t0 = Instant::now();
    let mut state = State::default();
    let config = config("f", policy(0, 10));
    add(&mut state, &config, &[(0, 0), (0, 5)], t0);
    let (decision, gone) = look(&mut state, NODE, &config, t0 + ms(10));
    assert_eq!(word(&decision), "warm 2");
    assert!(gone.is_empty());
    assert_eq!(state.functions["f"].entries[1].in_flight, 1);
    let (decision, _) = look(&mut state, NODE, &config, t0 + ms(10));
    assert_eq!(word(&decision), "warm 1");
    // Both busy at concurrency 1: the next call starts a third.
    let (decision, _) = look(&mut state, NODE, &config, t0 + ms(10));
    assert_eq!(word(&decision), "start 3");
}

#[test]
fn a_start_needs_room_under_max_instances_and_on_the_node() {
    // (max_instances, the function's busy instances, another function's busy instances,
    //  the node, what a call decides)
    let small = Capacity {
        instances_max: 4,
        memory_max_mb: 300,
    };
    let cases: &[(u32, usize, usize, Capacity, &str)] = &[
        (10, 0, 0, NODE, "start 1"),
        (10, 2, 1, NODE, "start 4"),
        (2, 2, 0, NODE, "wait, then throttled"),
        (1, 1, 3, NODE, "wait, then throttled"),
        (10, 1, 3, NODE, "wait, then node full"),
        (10, 0, 4, NODE, "wait, then node full"),
        // Two instances of 128 MB fit in 300 MB; a third does not.
        (10, 1, 0, small, "start 2"),
        (10, 1, 1, small, "wait, then node full"),
    ];
    let t0 = Instant::now();
    for (max, own, other, node, expect) in cases {
        let mut state = State::default();
        let f = config("f", policy(0, *max));
        add(&mut state, &f, &vec![(1, 0); *own], t0);
        add(
            &mut state,
            &config("g", policy(0, 10)),
            &vec![(1, 0); *other],
            t0,
        );
        let (live, memory_mb) = (state.live, state.memory_mb);
        let (decision, _) = look(&mut state, *node, &f, t0);
        assert_eq!(
            word(&decision),
            *expect,
            "max {max}, own {own}, other {other}, {node:?}"
        );
        if let Ok(Decision::Start(r)) = &decision {
            // The reservation is counted at once, against the node and the function.
            assert_eq!(state.live, live + 1);
            assert_eq!(state.memory_mb, memory_mb + 128);
            assert_eq!(state.functions["f"].starting, 1);
            assert_eq!(r.memory_mb, 128);
            assert_eq!(r.epoch, state.functions["f"].epoch);
        }
        if let Ok(Decision::Wait(SandboxError::NodeFull {
            live: l,
            instances_max,
            ..
        })) = &decision
        {
            assert_eq!((*l, *instances_max), (live, node.instances_max));
        }
    }
}

#[test]
fn eviction_takes_the_longest_idle_instance_of_another_function_above_its_minimum() {
    let t0 = Instant::now();
    let mut state = State::default();
    let node = Capacity {
        instances_max: 6,
        memory_max_mb: 1024,
    };
    // "b" holds the oldest idle instance but is at its minimum: never a victim. "a" has
    // a busy instance (never a victim) and two idle ones; "f" (the caller) is busy.
    add(&mut state, &config("b", policy(1, 10)), &[(0, 0)], t0);
    add(
        &mut state,
        &config("a", policy(0, 10)),
        &[(0, 30), (1, 1), (0, 20)],
        t0,
    );
    let f = config("f", policy(0, 10));
    add(&mut state, &f, &[(1, 0), (1, 0)], t0);
    assert_eq!(victim(&state, "f"), Some(("a".into(), 2)));
    // The caller's own function is never its victim.
    assert_eq!(victim(&state, "a"), None);
    let (decision, gone) = look(&mut state, node, &f, t0 + ms(100));
    assert_eq!(word(&decision), "evict");
    assert_eq!(leaving_ids(&gone), [4]);
    assert_eq!(
        gone[0].reason.as_deref(),
        Some("evicted to make room on the node")
    );
    // The pool frees the victim's room when it drops; the next look starts.
    state.live -= 1;
    state.memory_mb -= 128;
    let (decision, _) = look(&mut state, node, &f, t0 + ms(100));
    assert_eq!(word(&decision), "start 7");
    // Then "a"'s other idle instance, then nothing: "a" has only its busy one left,
    // which is above its minimum of 0 but busy.
    let (decision, gone) = look(&mut state, node, &f, t0 + ms(100));
    assert_eq!(
        (word(&decision), leaving_ids(&gone)),
        ("evict".into(), vec![2])
    );
    state.live -= 1;
    state.memory_mb -= 128;
    let (decision, _) = look(&mut state, node, &f, t0 + ms(100));
    assert_eq!(word(&decision), "start 8");
    let (decision, gone) = look(&mut state, node, &f, t0 + ms(100));
    assert_eq!(word(&decision), "wait, then node full");
    assert!(gone.is_empty());
}

#[test]
fn the_queue_is_bounded_and_counts_each_call_once() {
    let t0 = Instant::now();
    let mut state = State::default();
    let f = config("f", policy(0, 1));
    add(&mut state, &f, &[(1, 0)], t0);
    let mut waiting = None;
    let mut gone = Vec::new();
    for _ in 0..3 {
        // A call that looks again is still one waiting call.
        let decision = admit(&mut state, NODE, &f, KEY, &mut waiting, t0, &mut gone);
        assert_eq!(word(&decision), "wait, then throttled");
    }
    let epoch = state.functions["f"].epoch;
    assert_eq!(waiting, Some(epoch));
    assert_eq!(state.functions["f"].waiting, 1);
    // A full queue throttles a new call at once; one already in it waits on.
    state.functions.get_mut("f").unwrap().waiting = limits::QUEUE_LENGTH_MAX;
    let (decision, _) = look(&mut state, NODE, &f, t0);
    assert_eq!(word(&decision), "throttled");
    let decision = admit(&mut state, NODE, &f, KEY, &mut waiting, t0, &mut gone);
    assert_eq!(word(&decision), "wait, then throttled");
}

#[test]
fn a_call_that_may_not_wait_is_throttled_at_once_with_when_to_retry() {
    let t0 = Instant::now();
    // (queue_timeout_ms, the decision, retry_after_s)
    let cases: &[(u32, &str, u64)] = &[
        (0, "throttled", 1),
        (1, "wait, then throttled", 1),
        (2500, "wait, then throttled", 3),
    ];
    for (queue_timeout_ms, expect, retry) in cases {
        let mut state = State::default();
        let f = config(
            "f",
            Policy {
                queue_timeout_ms: *queue_timeout_ms,
                ..policy(0, 1)
            },
        );
        add(&mut state, &f, &[(1, 0)], t0);
        let (decision, _) = look(&mut state, NODE, &f, t0);
        assert_eq!(
            word(&decision),
            *expect,
            "queue_timeout_ms {queue_timeout_ms}"
        );
        let (Err(e) | Ok(Decision::Wait(e))) = decision else {
            panic!("not throttled")
        };
        let SandboxError::Throttled {
            retry_after_s,
            waited_ms,
            max_instances,
            ..
        } = e
        else {
            panic!("not throttled: {e}")
        };
        assert_eq!(
            (retry_after_s, waited_ms, max_instances),
            (*retry, *queue_timeout_ms as u64, 1)
        );
    }
}

#[test]
fn a_closed_node_admits_nothing() {
    let mut state = State::<Fake> {
        closed: true,
        ..Default::default()
    };
    let (decision, _) = look(&mut state, NODE, &config("f", policy(0, 1)), Instant::now());
    assert!(matches!(decision, Err(SandboxError::ShuttingDown)));
}

#[test]
fn a_changed_function_retires_its_instances_and_dead_ones_leave() {
    let t0 = Instant::now();
    let mut state = State::default();
    let f = config("f", policy(0, 10));
    add(&mut state, &f, &[(0, 0), (0, 0), (1, 0)], t0);
    state.functions.get_mut("f").unwrap().entries[1].member.dead = true;
    let (decision, gone) = look(&mut state, NODE, &f, t0);
    // The dead one leaves without a reason (it ended by itself); the last warm one serves.
    assert_eq!(word(&decision), "warm 1");
    assert_eq!(leaving_ids(&gone), [2]);
    assert_eq!(gone[0].reason, None);
    // A new configuration (another key) retires every instance, busy or not.
    let mut gone = Vec::new();
    let decision = admit(&mut state, NODE, &f, KEY + 1, &mut None, t0, &mut gone);
    assert_eq!(leaving_ids(&gone), [1, 3]);
    assert!(
        gone.iter()
            .all(|l| l.reason.as_deref() == Some("the function was updated"))
    );
    assert_eq!(word(&decision), "start 4");
}

#[test]
fn reaping_takes_the_longest_idle_first_down_to_the_minimum() {
    // (min_instances, instances (in_flight, idle since ms), now ms, ids reaped in order);
    // the idle timeout is 1000 ms and ids number the instances from 1.
    let cases: &[(u32, &[Spec], u64, &[u64])] = &[
        (0, &[(0, 900), (0, 0), (0, 300)], 1500, &[2, 3]),
        (0, &[(0, 900), (0, 0), (0, 300)], 999, &[]),
        (0, &[(0, 0)], 1000, &[1]),
        (1, &[(0, 900), (0, 0), (0, 300)], 5000, &[2, 3]),
        (2, &[(0, 900), (0, 0), (0, 300)], 5000, &[2]),
        (3, &[(0, 0), (0, 0), (0, 0)], 5000, &[]),
        // Busy instances are never reaped, but count towards the minimum.
        (1, &[(1, 0), (0, 100), (0, 50)], 5000, &[3, 2]),
        (2, &[(1, 0), (0, 100), (0, 50)], 5000, &[3]),
    ];
    let t0 = Instant::now();
    for (min, specs, now_ms, expect) in cases {
        let mut state = State::default();
        add(&mut state, &config("f", policy(*min, 10)), specs, t0);
        let fp = state.functions.get_mut("f").unwrap();
        let reaped = reap(fp, t0 + ms(*now_ms));
        assert_eq!(
            leaving_ids(&reaped),
            *expect,
            "min {min}, {specs:?} at {now_ms} ms"
        );
        assert!(
            reaped
                .iter()
                .all(|l| l.reason.as_deref() == Some("idle for 1000 ms"))
        );
    }
}

#[test]
fn adaptive_keep_alive_extends_the_reap_time() {
    let t0 = Instant::now();
    let mut state = State::default();
    let f = config(
        "f",
        Policy {
            keep_alive_max_ms: 10_000,
            ..policy(0, 10)
        },
    );
    // One instance serving a call every 2 s, each taking 10 ms: the gaps are learned from
    // the calls' ends (`checkin`) and arrivals (`admit`).
    let (first, _) = look(&mut state, NODE, &f, t0);
    let Ok(Decision::Start(r)) = first else {
        panic!("no start")
    };
    let me = Fake {
        id: r.instance_id,
        dead: false,
    };
    arrived(&mut state, &f, KEY, r.epoch, me.clone(), 1, t0);
    let mut now = t0;
    for _ in 0..5 {
        now += ms(10);
        assert!(checkin(&mut state, "f", KEY, |m| *m == me, false, now).is_none());
        now += ms(2000);
        let (decision, _) = look(&mut state, NODE, &f, now);
        assert_eq!(word(&decision), "warm 1");
    }
    now += ms(10);
    checkin(&mut state, "f", KEY, |m| *m == me, false, now);
    let fp = state.functions.get_mut("f").unwrap();
    // The gaps' 90th percentile (2000 ms) and a fifth.
    assert_eq!(keep_alive(fp), ms(2400));
    assert!(reap(fp, now + ms(2000)).is_empty());
    let reaped = reap(fp, now + ms(2400));
    assert_eq!(leaving_ids(&reaped), [1]);
    assert_eq!(
        reaped[0].reason.as_deref(),
        Some("idle for 2400 ms (adaptive keep-alive past idle_timeout_ms 1000)")
    );
}

#[test]
fn a_tick_reaps_and_reserves_up_to_min_instances_within_the_node() {
    let t0 = Instant::now();
    // (min_instances, instances (in_flight, idle since ms), the node's instances_max,
    //  closed, (reaped, reserved))
    type Case<'a> = (u32, &'a [Spec], usize, bool, (usize, usize));
    let cases: &[Case] = &[
        (3, &[(0, 0)], 4, false, (0, 2)),
        (3, &[(0, 0)], 2, false, (0, 1)),
        (0, &[(0, 0), (1, 0)], 4, false, (1, 0)),
        (2, &[], 4, true, (0, 0)),
        (0, &[(0, 0)], 4, true, (1, 0)),
    ];
    for (min, specs, instances_max, closed, expect) in cases {
        let mut state = State::default();
        let f = config("f", policy(*min, 10));
        add(&mut state, &f, specs, t0);
        state.closed = *closed;
        let node = Capacity {
            instances_max: *instances_max,
            ..NODE
        };
        let fp = &state.functions["f"];
        let missing_before = missing(fp);
        let tick = tick(&mut state, node, t0 + ms(5000));
        assert_eq!(
            (tick.expired.len(), tick.to_start.len()),
            *expect,
            "min {min}, {specs:?}, instances_max {instances_max}, closed {closed}"
        );
        let fp = &state.functions["f"];
        assert_eq!(fp.starting, tick.to_start.len());
        assert!(tick.to_start.len() <= missing_before);
    }
}

#[test]
fn a_checked_in_slot_makes_the_instance_idle_unless_it_must_go() {
    let t0 = Instant::now();
    // (retire, dead, key of the call, whether it leaves)
    let cases: &[(bool, bool, u64, bool)] = &[
        (false, false, KEY, false),
        (true, false, KEY, true),
        (false, true, KEY, true),
        (false, false, KEY + 1, true),
    ];
    for (retire, dead, key, leaves) in cases {
        let mut state = State::default();
        add(&mut state, &config("f", policy(0, 10)), &[(1, 0)], t0);
        state.functions.get_mut("f").unwrap().entries[0].member.dead = *dead;
        let gone = checkin(&mut state, "f", *key, |m| m.id == 1, *retire, t0 + ms(7));
        assert_eq!(
            gone.is_some(),
            *leaves,
            "retire {retire}, dead {dead}, key {key}"
        );
        if let Some(e) = state.functions["f"].entries.first() {
            assert_eq!((e.in_flight, e.idle_since), (0, t0 + ms(7)));
        }
    }
    // An instance the pool no longer has is ignored.
    let mut state = State::<Fake>::default();
    assert!(checkin(&mut state, "f", KEY, |_| true, false, t0).is_none());
}

#[test]
fn a_started_instance_joins_its_pool_unless_it_changed_went_or_closed() {
    let t0 = Instant::now();
    let f = config("f", policy(0, 10));
    let fresh = || {
        let mut state = State::default();
        let (decision, _) = look(&mut state, NODE, &f, t0);
        let Ok(Decision::Start(r)) = decision else {
            panic!("no start")
        };
        (state, r)
    };
    let me = Fake { id: 1, dead: false };
    // Joined: counted as started no more, in the pool with the caller's call.
    let (mut state, r) = fresh();
    let arrival = arrived(&mut state, &f, KEY, r.epoch, me.clone(), 1, t0);
    assert_eq!(
        arrival,
        Arrival {
            deleted: false,
            closed: false
        }
    );
    assert_eq!(state.functions["f"].starting, 0);
    assert_eq!(ids(&state.functions["f"].entries), [1]);
    // The function changed while it started: it serves its call but joins no pool.
    let (mut state, r) = fresh();
    arrived(&mut state, &f, KEY + 1, r.epoch, me.clone(), 1, t0);
    assert!(state.functions["f"].entries.is_empty());
    // Deleted (and deployed again: another epoch) while it started.
    let (mut state, r) = fresh();
    remove(&mut state, "f", true);
    state.function_pool(&f, KEY);
    let arrival = arrived(&mut state, &f, KEY, r.epoch, me.clone(), 1, t0);
    assert!(arrival.deleted);
    assert_eq!(state.functions["f"].starting, 0);
    assert!(state.functions["f"].entries.is_empty());
    // The node closed while it started.
    let (mut state, r) = fresh();
    state.closed = true;
    let arrival = arrived(&mut state, &f, KEY, r.epoch, me, 1, t0);
    assert!(arrival.closed && !arrival.deleted);
    assert!(state.functions["f"].entries.is_empty());
}

#[test]
fn removing_a_function_takes_its_versions_only_when_it_is_deleted() {
    let t0 = Instant::now();
    let mut state = State::default();
    let latest = config("f", policy(0, 10));
    let v1 = InstanceConfig {
        version: "1".into(),
        ..latest.clone()
    };
    add(&mut state, &latest, &[(0, 0)], t0);
    add(&mut state, &v1, &[(0, 0)], t0);
    add(&mut state, &config("fg", policy(0, 10)), &[(0, 0)], t0);
    assert_eq!(ids(&remove(&mut state, "f", false)), [1]);
    assert!(state.functions.contains_key("f"));
    assert_eq!(ids(&remove(&mut state, "f", true)), [2]);
    let mut left: Vec<&String> = state.functions.keys().collect();
    left.sort();
    assert_eq!(left, ["fg"]);
}
