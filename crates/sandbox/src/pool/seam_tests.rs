//! Tests of the pool through the executor seam: fake instances and paused time, so what
//! the pool does with its decisions (starts, evictions, waits, throttles, reaping,
//! provisioning, shutdown) is checked without a process.

use super::*;
use crate::Policy;
use crate::executor::fake::FakeExecutor;

fn fake_pool(config: PoolConfig) -> (tempfile::TempDir, Arc<FakeExecutor>, Arc<Pool>) {
    let tmp = tempfile::tempdir().unwrap();
    let runtimes = Runtimes::install(tmp.path(), None, None).unwrap();
    let executor = Arc::new(FakeExecutor {
        start_ms: 20,
        ..Default::default()
    });
    let pool = Pool::with_executor(runtimes, config, Arc::new(executor.clone()));
    (tmp, executor, pool)
}

fn function(name: &str, policy: Policy) -> InstanceConfig {
    InstanceConfig {
        policy,
        ..InstanceConfig::for_test(
            name,
            model::Runtime::Python3,
            "main.handler",
            "/nonexistent",
        )
    }
}

fn policy(queue_timeout_ms: u32) -> Policy {
    Policy {
        idle_timeout_ms: 1000,
        queue_timeout_ms,
        ..Policy::default()
    }
}

async fn lease(pool: &Arc<Pool>, config: &InstanceConfig) -> Lease {
    match pool.acquire(config).await {
        Ok(Acquired::Ready(lease)) => lease,
        Ok(Acquired::Failed(e, _)) => panic!("the start failed: {e:?}"),
        Err(e) => panic!("no slot: {e}"),
    }
}

/// The lifecycle events of `function`, oldest first, as `event: reason`.
fn events(pool: &Pool, function: &str) -> Vec<String> {
    let mut events: Vec<String> = pool
        .events(Some(function), 100)
        .into_iter()
        .map(|e| format!("{} {}: {}", e.event, e.instance_id, e.reason))
        .collect();
    events.reverse();
    events
}

fn sleep_ms(ms: u64) -> tokio::time::Sleep {
    tokio::time::sleep(Duration::from_millis(ms))
}

#[tokio::test(start_paused = true)]
async fn calls_run_on_the_executors_instances_cold_then_warm() {
    let (_tmp, _executor, pool) = fake_pool(PoolConfig::default());
    let f = function("f", policy(100));
    let first = pool.invoke(&f, "r1", b"\"hi\"").await.unwrap();
    assert!(matches!(&first.outcome, Outcome::Success { body, .. } if &body[..] == b"\"hi\""));
    assert!(first.cold_start);
    assert_eq!((first.instance_id, first.init_ms), (1, Some(20.0)));
    let second = pool.invoke(&f, "r2", b"2").await.unwrap();
    assert!(!second.cold_start);
    assert_eq!(second.instance_id, 1);
    assert_eq!(
        events(&pool, "f"),
        ["started 1: a call found no free instance; faked, ready in 20.0 ms"]
    );
}

#[tokio::test(start_paused = true)]
async fn a_full_node_evicts_the_longest_idle_other_function_then_waits_and_gives_up() {
    let (_tmp, executor, pool) = fake_pool(PoolConfig {
        instances_max: 2,
        ..PoolConfig::default()
    });
    let [a, b, c, d] = ["a", "b", "c", "d"].map(|name| function(name, policy(100)));
    pool.invoke(&a, "r", b"1").await.unwrap();
    sleep_ms(10).await;
    pool.invoke(&b, "r", b"1").await.unwrap();
    // The node is full of idle instances: `a`'s, idle longest, makes room for `c`.
    let c_lease = lease(&pool, &c).await;
    assert!(c_lease.cold_start);
    assert!(executor.is_stopped(1) && !executor.is_stopped(2));
    assert_eq!(
        events(&pool, "a").last().unwrap(),
        "stopped 1: evicted to make room on the node"
    );
    // With every instance busy, `d` waits its queue timeout and the node is the reason.
    let _b_lease = lease(&pool, &b).await;
    let waited_from = tokio::time::Instant::now();
    match pool.acquire(&d).await {
        Err(SandboxError::NodeFull {
            live,
            instances_max,
            waited_ms,
            ..
        }) => assert_eq!((live, instances_max, waited_ms), (2, 2, 100)),
        Err(e) => panic!("expected NodeFull, got {e}"),
        Ok(_) => panic!("expected NodeFull, got a slot"),
    }
    assert!(waited_from.elapsed() >= Duration::from_millis(100));
    // A call waiting when an instance goes idle is woken, evicts it and starts.
    let waiter = tokio::spawn({
        let pool = pool.clone();
        async move { lease(&pool, &d).await.instance_id() }
    });
    sleep_ms(10).await;
    drop(c_lease);
    assert_eq!(waiter.await.unwrap(), 4);
    assert!(executor.is_stopped(3));
    assert_eq!(pool.live_instances(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_function_at_max_instances_is_throttled_and_it_is_recorded() {
    let (_tmp, _executor, pool) = fake_pool(PoolConfig::default());
    let f = function(
        "f",
        Policy {
            max_instances: 1,
            ..policy(0)
        },
    );
    let _held = lease(&pool, &f).await;
    match pool.acquire(&f).await {
        Err(SandboxError::Throttled { max_instances, .. }) => assert_eq!(max_instances, 1),
        Err(e) => panic!("expected Throttled, got {e}"),
        Ok(_) => panic!("expected Throttled, got a slot"),
    }
    assert!(
        events(&pool, "f")
            .last()
            .unwrap()
            .starts_with("throttled 0: ")
    );
}

#[tokio::test(start_paused = true)]
async fn a_call_that_may_not_wait_gets_none_at_once_and_nothing_is_recorded() {
    let (_tmp, _executor, pool) = fake_pool(PoolConfig {
        instances_max: 2,
        ..PoolConfig::default()
    });
    let f = function(
        "f",
        Policy {
            max_instances: 1,
            ..policy(5_000)
        },
    );
    // A free node starts an instance for it, as for any call.
    let held = match pool.acquire_now(&f).await {
        Ok(Some(Acquired::Ready(lease))) => lease,
        _ => panic!("expected a slot"),
    };
    assert!(held.cold_start);
    // At max_instances it does not wait the queue timeout: it is told at once.
    let asked = tokio::time::Instant::now();
    assert!(matches!(pool.acquire_now(&f).await, Ok(None)));
    assert_eq!(asked.elapsed(), Duration::ZERO);
    // A full node (every instance busy) answers the same, and so does a function that
    // may not queue at all; neither is a throttle of this node's.
    let g = function("g", policy(5_000));
    let _g_held = lease(&pool, &g).await;
    let h = function("h", policy(0));
    assert!(matches!(pool.acquire_now(&h).await, Ok(None)));
    let no_wait = function(
        "f",
        Policy {
            max_instances: 1,
            ..policy(0)
        },
    );
    assert!(matches!(pool.acquire_now(&no_wait).await, Ok(None)));
    for name in ["f", "h"] {
        assert!(
            !events(&pool, name)
                .iter()
                .any(|e| e.starts_with("throttled")),
            "{name}: {:?}",
            events(&pool, name)
        );
    }
    // Once the slot is free, the warm instance takes the next call.
    drop(held);
    match pool.acquire_now(&f).await {
        Ok(Some(Acquired::Ready(lease))) => assert!(!lease.cold_start),
        _ => panic!("expected the warm slot"),
    }
}

#[tokio::test(start_paused = true)]
async fn idle_instances_are_reaped_after_their_pre_stop_hook() {
    let (_tmp, executor, pool) = fake_pool(PoolConfig::default());
    let f = InstanceConfig {
        pre_stop: "main.stop".into(),
        ..function("f", policy(100))
    };
    pool.invoke(&f, "r", b"1").await.unwrap();
    sleep_ms(900).await;
    assert_eq!(pool.instances_of("f"), 1);
    // The maintenance tick after the idle timeout stops it.
    sleep_ms(700).await;
    assert_eq!(pool.instances_of("f"), 0);
    assert_eq!(pool.live_instances(), 0);
    assert!(executor.is_stopped(1));
    assert_eq!(executor.pre_stops.load(Ordering::Acquire), 1);
    assert_eq!(
        events(&pool, "f").last().unwrap(),
        "stopped 1: idle for 1000 ms"
    );
}

#[tokio::test(start_paused = true)]
async fn min_instances_are_started_ahead_of_traffic_and_kept() {
    let (_tmp, executor, pool) = fake_pool(PoolConfig::default());
    let kept = Policy {
        min_instances: 2,
        ..policy(100)
    };
    pool.provision(&function("f", kept));
    sleep_ms(600).await;
    assert_eq!(pool.instances_of("f"), 2);
    assert_eq!(executor.started.lock().unwrap().len(), 2);
    assert!(events(&pool, "f")[0].ends_with("min_instances; faked, ready in 20.0 ms"));
    // Kept past the idle timeout while provisioned; reaped once the minimum is gone.
    sleep_ms(3000).await;
    assert_eq!(pool.instances_of("f"), 2);
    pool.provision(&function("f", policy(100)));
    sleep_ms(600).await;
    assert_eq!(pool.instances_of("f"), 0);
}

#[tokio::test(start_paused = true)]
async fn a_start_that_fails_is_an_outcome_and_frees_its_room() {
    let (_tmp, executor, pool) = fake_pool(PoolConfig::default());
    executor.broken.store(true, Ordering::Release);
    let inv = pool
        .invoke(&function("f", policy(100)), "r", b"1")
        .await
        .unwrap();
    assert!(
        matches!(&inv.outcome, Outcome::Error(e) if e.error_type == "Runtime.ImportModuleError")
    );
    assert_eq!((pool.live_instances(), pool.instances_of("f")), (0, 0));
}

#[tokio::test(start_paused = true)]
async fn shutdown_stops_busy_instances_and_the_executor() {
    let (_tmp, executor, pool) = fake_pool(PoolConfig::default());
    let f = function("f", policy(100));
    let held = lease(&pool, &f).await;
    pool.shutdown().await;
    // The lease still holds the instance, but it was stopped from outside.
    assert!(held.is_dead());
    assert!(executor.shut_down.load(Ordering::Acquire));
    assert!(matches!(
        pool.acquire(&f).await,
        Err(SandboxError::ShuttingDown)
    ));
}

/// An instance is frozen once idle for `FREEZE_AFTER`, never while a call holds it; the
/// next call, and its pre-stop hook, thaw it first; back-to-back calls never freeze it.
#[tokio::test(start_paused = true)]
async fn idle_instances_are_frozen_and_thawed_before_their_next_use() {
    let (_tmp, executor, pool) = fake_pool(PoolConfig::default());
    let f = InstanceConfig {
        pre_stop: "main.stop".into(),
        ..function("f", policy(100))
    };
    pool.invoke(&f, "r1", b"1").await.unwrap();
    sleep_ms(50).await;
    assert_eq!(executor.take_log(), ["call 1"], "not frozen at once");
    sleep_ms(200).await;
    assert_eq!(executor.take_log(), ["freeze 1"]);
    sleep_ms(300).await;
    assert!(executor.take_log().is_empty(), "frozen once");
    pool.invoke(&f, "r2", b"2").await.unwrap();
    assert_eq!(executor.take_log(), ["thaw 1", "call 1"]);
    // Calls closer together than `FREEZE_AFTER` leave it running.
    for _ in 0..5 {
        sleep_ms(50).await;
        pool.invoke(&f, "r", b"3").await.unwrap();
    }
    assert_eq!(executor.take_log(), ["call 1"; 5]);
    // A lease held for a second (a call in flight) is never frozen under it.
    let held = lease(&pool, &f).await;
    sleep_ms(1000).await;
    held.invoke("r4", b"4").await;
    drop(held);
    assert_eq!(executor.take_log(), ["call 1"]);
    // Reaped past the idle timeout: frozen first, thawed for its pre-stop hook.
    sleep_ms(1600).await;
    assert_eq!(executor.take_log(), ["freeze 1", "thaw 1", "pre-stop 1"]);
    assert!(executor.is_stopped(1));
}

/// With concurrency 2, the instance is frozen only after the last of its calls ended.
#[tokio::test(start_paused = true)]
async fn a_shared_instance_is_frozen_only_after_its_last_call() {
    let (_tmp, executor, pool) = fake_pool(PoolConfig::default());
    let f = InstanceConfig {
        concurrency: 2,
        ..function("f", policy(100))
    };
    let a = lease(&pool, &f).await;
    let b = lease(&pool, &f).await;
    assert_eq!(a.instance_id(), b.instance_id());
    a.invoke("a", b"1").await;
    drop(a);
    sleep_ms(500).await;
    b.invoke("b", b"2").await;
    assert_eq!(executor.take_log(), ["call 1", "call 1"]);
    drop(b);
    sleep_ms(250).await;
    assert_eq!(executor.take_log(), ["freeze 1"]);
    // Two calls arriving together on the frozen instance: one thaw, before both.
    let (a, b) = tokio::join!(lease(&pool, &f), lease(&pool, &f));
    tokio::join!(a.invoke("a", b"1"), b.invoke("b", b"2"));
    assert_eq!(executor.take_log(), ["thaw 1", "call 1", "call 1"]);
}

/// Shutdown stops frozen instances too, thawing them for their pre-stop hooks; with
/// `freeze_idle` off, nothing is ever frozen.
#[tokio::test(start_paused = true)]
async fn freezing_can_be_turned_off_and_shutdown_thaws() {
    let (_tmp, executor, pool) = fake_pool(PoolConfig {
        freeze_idle: false,
        ..PoolConfig::default()
    });
    let f = function("f", policy(100));
    pool.invoke(&f, "r", b"1").await.unwrap();
    sleep_ms(900).await;
    pool.invoke(&f, "r", b"1").await.unwrap();
    assert_eq!(executor.take_log(), ["call 1", "call 1"]);

    let (_tmp, executor, pool) = fake_pool(PoolConfig::default());
    let f = InstanceConfig {
        pre_stop: "main.stop".into(),
        ..function("f", policy(100))
    };
    pool.invoke(&f, "r", b"1").await.unwrap();
    sleep_ms(300).await;
    pool.shutdown().await;
    assert_eq!(
        executor.take_log(),
        ["call 1", "freeze 1", "thaw 1", "pre-stop 1"]
    );
    assert!(executor.is_stopped(1));
}
