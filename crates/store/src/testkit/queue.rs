//! `AsyncQueue`'s contract: arrival order, idempotency keys, retries, dead letters, and
//! leases on running invocations.

use bytes::Bytes;

use crate::{Accepted, AsyncQueue, AsyncStatus, Finish, Lease, NewEvent};

/// A new event of `target`, not claimed.
pub fn event(id: &str, target: &str, key: Option<&str>, now_ms: i64) -> NewEvent {
    NewEvent {
        id: id.into(),
        function: target.into(),
        payload: Bytes::from_static(b"{}"),
        idempotency_key: key.map(String::from),
        traceparent: None,
        source: None,
        now_ms,
        claimed: None,
        lineage: 0,
    }
}

/// `node`'s lease until `until_ms`.
pub fn lease(node: &str, until_ms: i64) -> Lease {
    Lease {
        node: node.into(),
        until_ms,
    }
}

pub async fn claims_in_arrival_order_and_survives_a_crash(q: &dyn AsyncQueue) {
    let accepted = q
        .enqueue(&[
            event("a", "f", Some("k"), 1),
            event("b", "f", None, 2),
            event("c", "g", None, 3),
            event("d", "f", Some("k"), 4),
        ])
        .await
        .unwrap();
    assert_eq!(accepted[3], Accepted::Duplicate("a".into()));
    // Two of f's, in arrival order; g's one.
    let claimed = q
        .claim(&[("f".into(), 2), ("g".into(), 5)], 10, &lease("n1", 1_000))
        .await
        .unwrap();
    let ids: Vec<&str> = claimed.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids, ["a", "b", "c"]);
    assert!(
        claimed
            .iter()
            .all(|r| r.attempts == 1 && r.status == AsyncStatus::Running)
    );
    // Nothing is claimed twice.
    assert!(
        q.claim(&[("f".into(), 9)], 10, &lease("n1", 1_000))
            .await
            .unwrap()
            .is_empty()
    );
    let retry = Finish::Retry {
        at_ms: 100,
        function_error: true,
        result: None,
    };
    q.finish("a", &retry, "n1", 11).await.unwrap();
    assert!(
        q.claim(&[("f".into(), 9)], 50, &lease("n1", 1_000))
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        q.claim(&[("f".into(), 9)], 100, &lease("n1", 1_000))
            .await
            .unwrap()[0]
            .id,
        "a"
    );
    // A crash: whatever the node ran is queued again when it starts, and its next
    // attempt counts.
    assert_eq!(q.release("n1", 200).await.unwrap(), 3);
    let again = q
        .claim(&[("f".into(), 9)], 200, &lease("n1", 1_000))
        .await
        .unwrap();
    let attempts: Vec<(&str, u32)> = again.iter().map(|r| (r.id.as_str(), r.attempts)).collect();
    assert_eq!(attempts, [("a", 3), ("b", 2)]);
    let dead = Finish::Done {
        status: AsyncStatus::DeadLettered,
        result: Some(b"{\"errorType\":\"E\"}".to_vec()),
        version: None,
        function_error: true,
    };
    q.finish("b", &dead, "n1", 201).await.unwrap();
    let letters = q
        .list(AsyncStatus::DeadLettered, Some("f"), 10)
        .await
        .unwrap();
    assert_eq!((letters.len(), letters[0].function_errors), (1, 1));
    assert_eq!(q.redrive(&["b".into()], 300).await.unwrap(), 1);
    let b = q.get("b").await.unwrap().unwrap();
    assert_eq!((b.status, b.attempts), (AsyncStatus::Queued, 0));
    assert_eq!(q.pending().await.unwrap().len(), 2);
    // Waiting for an attempt: b (redriven) and c (released); a is running.
    let mut waiting = q.waiting().await.unwrap();
    waiting.sort();
    assert_eq!(waiting, [("f".to_string(), 1), ("g".to_string(), 1)]);
    // Finished rows go after their retention; waiting ones stay.
    q.finish(
        "a",
        &Finish::Done {
            status: AsyncStatus::Succeeded,
            result: None,
            version: Some("$LATEST".into()),
            function_error: false,
        },
        "n1",
        400,
    )
    .await
    .unwrap();
    assert_eq!(q.purge(500).await.unwrap(), 1);
    assert!(q.get("a").await.unwrap().is_none());
    assert!(q.get("b").await.unwrap().is_some());
}

pub async fn a_claimed_submission_is_running_at_once_and_a_restart_queues_it_again(
    q: &dyn AsyncQueue,
) {
    let claimed = NewEvent {
        claimed: Some(lease("n1", 1_000)),
        ..event("c", "f", Some("k"), 1)
    };
    let accepted = q
        .enqueue(&[claimed.clone(), event("q", "f", None, 2)])
        .await
        .unwrap();
    assert_eq!(accepted, vec![Accepted::New, Accepted::New]);
    let c = q.get("c").await.unwrap().unwrap();
    assert_eq!((c.status, c.attempts), (AsyncStatus::Running, 1));
    // A claim round takes only the queued one.
    let taken = q
        .claim(&[("f".into(), 10)], 5, &lease("n1", 1_000))
        .await
        .unwrap();
    assert_eq!(
        taken.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(),
        ["q"]
    );
    // Its key still answers a repeat with it.
    assert_eq!(
        q.enqueue(&[NewEvent {
            id: "c2".into(),
            ..claimed
        }])
        .await
        .unwrap(),
        vec![Accepted::Duplicate("c".into())]
    );
    // The node died while it ran: after the restart it is delivered again.
    assert_eq!(q.release("n1", 10).await.unwrap(), 2);
    let again = q
        .claim(&[("f".into(), 10)], 10, &lease("n1", 1_000))
        .await
        .unwrap();
    let c = again.iter().find(|r| r.id == "c").unwrap();
    assert_eq!(c.attempts, 2);
}

/// Running invocations are their node's while it renews its lease; once it stops (dead,
/// stalled), any node queues them again, and the late node's end of an attempt another
/// node took over is not recorded over it. A restarting node releases only its own.
pub async fn leases_hold_running_invocations_and_any_node_requeues_expired_ones(
    q: &dyn AsyncQueue,
) {
    q.enqueue(&[
        event("a", "f", None, 1),
        event("b", "f", None, 2),
        event("c", "g", None, 3),
    ])
    .await
    .unwrap();
    q.claim(&[("f".into(), 1)], 10, &lease("n1", 1_000))
        .await
        .unwrap();
    q.claim(&[("f".into(), 1), ("g".into(), 1)], 10, &lease("n2", 1_000))
        .await
        .unwrap();
    // n1 renews; n2 stalls.
    assert_eq!(q.renew(&lease("n1", 2_000)).await.unwrap(), 1);
    assert_eq!(q.requeue_expired(999).await.unwrap(), vec![]);
    assert_eq!(
        q.requeue_expired(1_500).await.unwrap(),
        vec![("f".to_string(), 1), ("g".to_string(), 1)]
    );
    // n3 takes b over; n2's late end of b is not recorded over n3's attempt.
    let taken = q
        .claim(&[("f".into(), 5)], 1_600, &lease("n3", 3_000))
        .await
        .unwrap();
    assert_eq!(taken[0].id, "b");
    let done = Finish::Done {
        status: AsyncStatus::Succeeded,
        result: None,
        version: None,
        function_error: false,
    };
    q.finish("b", &done, "n2", 1_700).await.unwrap();
    let b = q.get("b").await.unwrap().unwrap();
    assert_eq!((b.status, b.attempts), (AsyncStatus::Running, 2));
    // n2's end of c, queued again but not yet taken, is kept: c does not run twice.
    q.finish("c", &done, "n2", 1_700).await.unwrap();
    assert_eq!(
        q.get("c").await.unwrap().unwrap().status,
        AsyncStatus::Succeeded
    );
    // n1 restarts: only its own attempt is due again.
    assert_eq!(q.release("n1", 1_800).await.unwrap(), 1);
    let a = q.get("a").await.unwrap().unwrap();
    assert_eq!(a.status, AsyncStatus::Queued);
    q.finish("b", &done, "n3", 1_900).await.unwrap();
    assert_eq!(
        q.get("b").await.unwrap().unwrap().status,
        AsyncStatus::Succeeded
    );
}

/// A node renewing its leases while it finishes attempts, and another node requeueing
/// expired attempts while their node finishes them, all at once: no statement fails. (On
/// PostgreSQL each statement that locks several rows locks them in id order or skips the
/// locked ones; a renewal in another order met a batch end in a deadlock.)
pub async fn renewing_finishing_and_requeueing_at_once_never_deadlock(q: &dyn AsyncQueue) {
    const N: usize = 1_000;
    // Ids in an order unlike their arrival, as random request ids are.
    let id = |set: &str, i: usize| format!("{set}{:08x}", (i as u32).wrapping_mul(2_654_435_761));
    let events: Vec<NewEvent> = (0..N)
        .flat_map(|i| {
            [
                event(&id("a", i), "f", None, i as i64),
                event(&id("b", i), "g", None, i as i64),
            ]
        })
        .collect();
    q.enqueue(&events).await.unwrap();
    let mine = q
        .claim(&[("f".into(), N)], 2_000, &lease("n1", 5_000))
        .await
        .unwrap();
    // n2's attempts whose lease ran out at 2,500.
    let stalled = q
        .claim(&[("g".into(), N)], 2_000, &lease("n2", 2_500))
        .await
        .unwrap();
    assert_eq!((mine.len(), stalled.len()), (N, N));
    let done = Finish::Done {
        status: AsyncStatus::Succeeded,
        result: None,
        version: None,
        function_error: false,
    };
    // Each batch ends attempts from all over the table, as a node's concurrent attempts
    // end in any order.
    let finish = |mut records: Vec<crate::AsyncRecord>, node: &'static str| {
        let done = done.clone();
        records.sort_by(|a, b| a.id.cmp(&b.id));
        async move {
            for chunk in records.chunks(100) {
                let ends: Vec<(String, Finish)> =
                    chunk.iter().map(|r| (r.id.clone(), done.clone())).collect();
                q.finish_many(&ends, node, 2_600).await.unwrap();
            }
        }
    };
    let renewing = async {
        for i in 0..100 {
            q.renew(&lease("n1", 6_000 + i)).await.unwrap();
        }
    };
    let requeueing = async {
        for _ in 0..100 {
            q.requeue_expired(3_000).await.unwrap();
        }
    };
    tokio::join!(
        finish(mine, "n1"),
        renewing,
        finish(stalled, "n2"),
        requeueing
    );
    // n1's attempts all ended; each of n2's either ended or is queued again, none lost.
    for i in 0..N {
        let a = q.get(&id("a", i)).await.unwrap().unwrap();
        assert_eq!(a.status, AsyncStatus::Succeeded);
        let b = q.get(&id("b", i)).await.unwrap().unwrap();
        assert!(
            matches!(b.status, AsyncStatus::Succeeded | AsyncStatus::Queued),
            "{:?}",
            b.status
        );
    }
}
