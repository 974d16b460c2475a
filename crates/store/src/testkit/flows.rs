//! `FlowStore`'s contract: revisions, starts within a running limit, steps that apply a
//! consumed item once, batches of steps, claims of work with leases, purges; and what must
//! hold when nodes sharing one database race (functions taking two stores: two handles,
//! two pools, on the same database).
//!
//! Work rows are seen through the trait alone (`work_keys`), so one function serves every
//! backend.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};

use futures_util::future::join_all;

use crate::flows::StepRequest;
use crate::{Created, ExecutionRecord, FlowStore, PutOutcome, StepCommit, Stepped, WorkItem};

/// An execution of flow `order` at `revision`, running, started at 10.
pub fn execution(id: &str, name: &str, revision: i64) -> ExecutionRecord {
    ExecutionRecord {
        id: id.into(),
        flow: "order".into(),
        revision,
        name: name.into(),
        status: "RUNNING".into(),
        input: "{}".into(),
        output: None,
        error: None,
        cause: None,
        started_at_ms: 10,
        stopped_at_ms: None,
        transitions: 0,
        snapshot: "{}".into(),
    }
}

/// A free timer of `execution`, due at `due_ms`.
pub fn work(execution: &str, key: &str, due_ms: i64) -> WorkItem {
    WorkItem {
        execution: execution.into(),
        key: key.into(),
        kind: "timer".into(),
        due_ms,
        body: "{}".into(),
        owner: None,
        lease_until_ms: 0,
    }
}

/// A step's change that sets the snapshot to `snapshot` and writes one history event.
fn running(snapshot: &str, event: i64) -> StepCommit {
    StepCommit {
        status: "RUNNING".into(),
        transitions: event,
        snapshot: snapshot.into(),
        history: vec![(event, format!("{{\"e\":{event}}}"))],
        ..Default::default()
    }
}

/// Every work row's key, by execution, read through `claim_work` at the end of time with
/// a claim that has already run out when it is made: the rows' owners change (to `probe`),
/// nothing else, and the probe can be repeated. For the end of a test.
async fn all_work(store: &dyn FlowStore) -> BTreeMap<String, Vec<String>> {
    const END_MS: i64 = i64::MAX / 2;
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for w in store
        .claim_work("probe", END_MS, END_MS, 1_000_000)
        .await
        .unwrap()
    {
        out.entry(w.execution).or_default().push(w.key);
    }
    for keys in out.values_mut() {
        keys.sort();
    }
    out
}

/// The keys of an execution's work rows, in order (see `all_work`).
pub async fn work_keys(store: &dyn FlowStore, execution: &str) -> Vec<String> {
    all_work(store).await.remove(execution).unwrap_or_default()
}

/// Makes flow `order` and executions `ids` of it, each with the work rows `keys`.
pub async fn executions_with_work(store: &dyn FlowStore, ids: &[&str], keys: &[&str]) {
    store.put_flow("order", "{}", "", "[]", 1).await.unwrap();
    for id in ids {
        let first = StepCommit {
            status: "RUNNING".into(),
            snapshot: "{}".into(),
            add: keys.iter().map(|k| work(id, k, 5)).collect(),
            ..Default::default()
        };
        store
            .create_execution(&execution(id, id, 1), &first, usize::MAX)
            .await
            .unwrap();
    }
}

/// A new definition or description is a new revision, the same put again changes nothing,
/// new triggers alone are an update of the same revision, and revision numbers go on
/// after a delete.
pub async fn flows_keep_revisions_and_a_rewrite_of_the_same_is_unchanged(s: &dyn FlowStore) {
    let (f, o) = s.put_flow("order", "{\"a\":1}", "", "[]", 1).await.unwrap();
    assert_eq!((f.revision, o), (1, PutOutcome::Created));
    let (_, o) = s.put_flow("order", "{\"a\":1}", "", "[]", 2).await.unwrap();
    assert_eq!(o, PutOutcome::Unchanged);
    let (f, o) = s
        .put_flow("order", "{\"a\":2}", "two", "[]", 3)
        .await
        .unwrap();
    assert_eq!((f.revision, o), (2, PutOutcome::Updated));
    assert_eq!(
        s.flow_revision("order", 1).await.unwrap().as_deref(),
        Some("{\"a\":1}")
    );
    assert_eq!(
        s.get_flow("order").await.unwrap().unwrap().definition,
        "{\"a\":2}"
    );
    // New triggers alone: updated, the same revision (executions run what they ran).
    let (f, o) = s
        .put_flow("order", "{\"a\":2}", "two", "[{\"timer\":{}}]", 4)
        .await
        .unwrap();
    assert_eq!((f.revision, o), (2, PutOutcome::Updated));
    let listed = s.list_flows().await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].triggers, "[{\"timer\":{}}]");
    assert_eq!(listed[0].updated_at_ms, 4);
    assert!(s.delete_flow("order").await.unwrap());
    assert!(!s.delete_flow("order").await.unwrap());
    let (f, _) = s.put_flow("order", "{\"a\":3}", "", "[]", 5).await.unwrap();
    assert_eq!(f.revision, 3, "revision numbers go on after a delete");
}

/// Flows list by name, compared as bytes (as SQLite compares text), whatever the
/// database's collation: capitals before `_` before small letters.
pub async fn flows_list_by_name_as_bytes(s: &dyn FlowStore) {
    for name in ["b", "_c", "B", "a-1", "a"] {
        s.put_flow(name, "{}", "", "[]", 1).await.unwrap();
    }
    let names: Vec<String> = s
        .list_flows()
        .await
        .unwrap()
        .into_iter()
        .map(|f| f.name)
        .collect();
    assert_eq!(names, ["B", "_c", "a", "a-1", "b"]);
}

/// A start needs the flow at the record's revision; a name is started once (the same
/// name again answers the existing execution); `running_max` bounds running executions.
pub async fn an_execution_is_made_once_per_name_within_the_running_limit(s: &dyn FlowStore) {
    let first = StepCommit {
        status: "RUNNING".into(),
        snapshot: "{\"n\":1}".into(),
        history: vec![(1, "{}".into())],
        add: vec![work("e1", "t1", 5)],
        ..Default::default()
    };
    assert_eq!(
        s.create_execution(&execution("e1", "a", 1), &first, 2)
            .await
            .unwrap(),
        Created::NoFlow
    );
    s.put_flow("order", "{}", "", "[]", 1).await.unwrap();
    assert_eq!(
        s.create_execution(&execution("e1", "a", 2), &first, 2)
            .await
            .unwrap(),
        Created::NoFlow,
        "another revision than the flow's"
    );
    assert_eq!(
        s.create_execution(&execution("e1", "a", 1), &first, 2)
            .await
            .unwrap(),
        Created::New
    );
    match s
        .create_execution(&execution("e2", "a", 1), &first, 2)
        .await
        .unwrap()
    {
        Created::Existing(e) => assert_eq!(e.id, "e1"),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        s.create_execution(
            &execution("e3", "b", 1),
            &StepCommit {
                status: "RUNNING".into(),
                ..Default::default()
            },
            2
        )
        .await
        .unwrap(),
        Created::New
    );
    assert_eq!(
        s.create_execution(&execution("e4", "c", 1), &StepCommit::default(), 2)
            .await
            .unwrap(),
        Created::TooMany
    );
    let got = s.get_execution("e1").await.unwrap().unwrap();
    assert_eq!(got.snapshot, "{\"n\":1}");
    assert_eq!(
        s.history("e1", 0, 10).await.unwrap(),
        vec!["{}".to_string()]
    );
    assert_eq!(
        s.list_executions("order", Some("RUNNING"), None, 10)
            .await
            .unwrap()
            .len(),
        2
    );
    // A deleted flow starts nothing, but a start already made is still answered.
    assert!(s.delete_flow("order").await.unwrap());
    assert!(matches!(
        s.create_execution(&execution("e5", "a", 1), &first, 2)
            .await
            .unwrap(),
        Created::Existing(_)
    ));
    assert_eq!(
        s.create_execution(&execution("e5", "d", 1), &first, 2)
            .await
            .unwrap(),
        Created::NoFlow
    );
}

/// Lists are newest first (ties by id), filtered by status and paged by start time,
/// without snapshots; history pages by event id.
pub async fn executions_list_newest_first_and_history_pages_by_id(s: &dyn FlowStore) {
    s.put_flow("order", "{}", "", "[]", 1).await.unwrap();
    for (id, started_at_ms, status) in [
        ("e3", 30, "RUNNING"),
        ("e1", 10, "SUCCEEDED"),
        ("e2b", 20, "RUNNING"),
        ("e2a", 20, "FAILED"),
    ] {
        let record = ExecutionRecord {
            started_at_ms,
            ..execution(id, id, 1)
        };
        let first = StepCommit {
            status: status.into(),
            snapshot: "{\"big\":1}".into(),
            history: (1..=5)
                .rev()
                .map(|n| (n, format!("{{\"n\":{n}}}")))
                .collect(),
            ..Default::default()
        };
        assert_eq!(
            s.create_execution(&record, &first, 10).await.unwrap(),
            Created::New
        );
    }
    let ids = |list: Vec<ExecutionRecord>| -> Vec<String> {
        assert!(list.iter().all(|e| e.snapshot.is_empty()), "{list:?}");
        list.into_iter().map(|e| e.id).collect()
    };
    assert_eq!(
        ids(s.list_executions("order", None, None, 10).await.unwrap()),
        ["e3", "e2a", "e2b", "e1"]
    );
    assert_eq!(
        ids(s.list_executions("order", None, None, 2).await.unwrap()),
        ["e3", "e2a"]
    );
    assert_eq!(
        ids(s
            .list_executions("order", None, Some(20), 10)
            .await
            .unwrap()),
        ["e1"]
    );
    assert_eq!(
        ids(s
            .list_executions("order", Some("RUNNING"), None, 10)
            .await
            .unwrap()),
        ["e3", "e2b"]
    );
    assert!(
        s.list_executions("other", None, None, 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        s.history("e3", 0, 10).await.unwrap(),
        (1..=5)
            .map(|n| format!("{{\"n\":{n}}}"))
            .collect::<Vec<_>>()
    );
    assert_eq!(
        s.history("e3", 2, 2).await.unwrap(),
        ["{\"n\":3}", "{\"n\":4}"]
    );
}

/// A step consuming a work item applies it once; a step of an execution that does not
/// exist is `Missing`.
pub async fn a_consumed_item_is_applied_once(s: &dyn FlowStore) {
    s.put_flow("order", "{}", "", "[]", 1).await.unwrap();
    let first = StepCommit {
        status: "RUNNING".into(),
        add: vec![work("e1", "t1", 5)],
        ..Default::default()
    };
    s.create_execution(&execution("e1", "a", 1), &first, 10)
        .await
        .unwrap();
    let calls = AtomicU32::new(0);
    let mut change = |r: &ExecutionRecord| {
        calls.fetch_add(1, Ordering::Relaxed);
        assert_eq!(r.id, "e1");
        Some(StepCommit {
            status: "SUCCEEDED".into(),
            stopped_at_ms: Some(9),
            snapshot: "{\"done\":true}".into(),
            history: vec![(2, "{\"x\":1}".into())],
            clear: true,
            ..Default::default()
        })
    };
    assert_eq!(
        s.step("e1", Some("t1"), &mut change).await.unwrap(),
        Stepped::Committed
    );
    assert_eq!(
        s.step("e1", Some("t1"), &mut change).await.unwrap(),
        Stepped::AlreadyApplied
    );
    assert_eq!(calls.load(Ordering::Relaxed), 1);
    let got = s.get_execution("e1").await.unwrap().unwrap();
    assert_eq!(
        (got.status.as_str(), got.stopped_at_ms),
        ("SUCCEEDED", Some(9))
    );
    assert_eq!(
        s.step("nope", None, &mut change).await.unwrap(),
        Stepped::Missing
    );
}

/// A step's change may remove work, replace it (the same key again) or write nothing
/// (`Unchanged`: its consumed item stays consumed); a history event id written before is
/// kept.
pub async fn a_step_removes_replaces_and_keeps_work(s: &dyn FlowStore) {
    executions_with_work(s, &["e1"], &["t1", "t2", "t3"]).await;
    let mut change = |_: &ExecutionRecord| {
        let mut c = running("{\"s\":1}", 1);
        c.history.push((2, "{\"e\":2}".into()));
        c.remove = vec!["t2".into(), "absent".into()];
        c.add = vec![
            WorkItem {
                owner: Some("n1".into()),
                lease_until_ms: 50,
                ..work("e1", "t3", 40)
            },
            work("e1", "t4", 60),
        ];
        Some(c)
    };
    assert_eq!(
        s.step("e1", None, &mut change).await.unwrap(),
        Stepped::Committed
    );
    // The same event id again, with another body: the first stays.
    let mut again = |_: &ExecutionRecord| {
        Some(StepCommit {
            history: vec![(1, "{\"again\":1}".into())],
            ..running("{\"s\":2}", 1)
        })
    };
    assert_eq!(
        s.step("e1", Some("t1"), &mut again).await.unwrap(),
        Stepped::Committed
    );
    assert_eq!(
        s.history("e1", 0, 10).await.unwrap(),
        ["{\"e\":1}", "{\"e\":2}"]
    );
    let mut nothing = |_: &ExecutionRecord| None;
    assert_eq!(
        s.step("e1", Some("t4"), &mut nothing).await.unwrap(),
        Stepped::Unchanged
    );
    assert_eq!(
        s.step("e1", Some("t4"), &mut nothing).await.unwrap(),
        Stepped::AlreadyApplied
    );
    assert_eq!(
        s.get_execution("e1").await.unwrap().unwrap().snapshot,
        "{\"s\":2}"
    );
    // t3 was replaced by a claimed one: n1 holds it until 50.
    assert!(s.claim_work("n2", 45, 100, 10).await.unwrap().is_empty());
    let got = s.claim_work("n2", 50, 100, 10).await.unwrap();
    assert_eq!(
        got.iter()
            .map(|w| (w.key.as_str(), w.due_ms))
            .collect::<Vec<_>>(),
        [("t3", 40)]
    );
    assert_eq!(work_keys(s, "e1").await, ["t3"]);
}

/// Work is claimed when due, by one node until its lease runs out; renewing extends a
/// claim, releasing frees it at once.
pub async fn work_is_claimed_when_due_once_until_its_lease_runs_out(s: &dyn FlowStore) {
    s.put_flow("order", "{}", "", "[]", 1).await.unwrap();
    let first = StepCommit {
        status: "RUNNING".into(),
        add: vec![work("e1", "late", 500), work("e1", "soon", 100)],
        ..Default::default()
    };
    s.create_execution(&execution("e1", "a", 1), &first, 10)
        .await
        .unwrap();
    assert_eq!(s.next_due(0).await.unwrap(), Some(100));
    assert!(s.claim_work("n1", 50, 1000, 10).await.unwrap().is_empty());
    let got = s.claim_work("n1", 100, 1000, 10).await.unwrap();
    assert_eq!(
        got.iter().map(|w| w.key.as_str()).collect::<Vec<_>>(),
        vec!["soon"]
    );
    assert_eq!(
        (got[0].owner.as_deref(), got[0].lease_until_ms),
        (Some("n1"), 1000)
    );
    assert!(
        s.claim_work("n2", 200, 1200, 10).await.unwrap().is_empty(),
        "held by n1"
    );
    let got = s.claim_work("n2", 1000, 2000, 10).await.unwrap();
    assert_eq!(
        got.iter().map(|w| w.key.as_str()).collect::<Vec<_>>(),
        vec!["soon", "late"],
        "n1's lease ran out; the late one is due; in due order"
    );
    s.renew_work("n2", &[("e1".into(), "soon".into())], 5000)
        .await
        .unwrap();
    // Another node's claim is not renewed by this one.
    s.renew_work("n9", &[("e1".into(), "late".into())], 9000)
        .await
        .unwrap();
    let got = s.claim_work("n3", 3000, 4000, 10).await.unwrap();
    assert_eq!(
        got.iter().map(|w| w.key.as_str()).collect::<Vec<_>>(),
        vec!["late"],
        "only the renewed one is still held"
    );
    assert_eq!(s.release_work("n2").await.unwrap(), 1);
    let got = s.claim_work("n3", 3000, 4000, 10).await.unwrap();
    assert_eq!(
        got.iter().map(|w| w.key.as_str()).collect::<Vec<_>>(),
        vec!["soon"],
        "a released claim is free at once"
    );
}

/// The next due time is the earliest of free work's due times and claimed work's ends of
/// claim (or due times, if later) still to come; none without work.
pub async fn next_due_is_the_earliest_free_or_expiring_work(s: &dyn FlowStore) {
    assert_eq!(s.next_due(0).await.unwrap(), None);
    executions_with_work(s, &["e1"], &[]).await;
    let mut add = |_: &ExecutionRecord| {
        let mut c = running("{}", 1);
        c.add = vec![
            work("e1", "free", 700),
            WorkItem {
                owner: Some("n1".into()),
                lease_until_ms: 300,
                ..work("e1", "held", 100)
            },
            // Due after its claim ends: counted from its due time.
            WorkItem {
                owner: Some("n1".into()),
                lease_until_ms: 400,
                ..work("e1", "held-later", 500)
            },
        ];
        Some(c)
    };
    s.step("e1", None, &mut add).await.unwrap();
    assert_eq!(s.next_due(0).await.unwrap(), Some(300));
    assert_eq!(
        s.next_due(300).await.unwrap(),
        Some(500),
        "a claim that has run out counts no more (`claim_work` takes it)"
    );
    assert_eq!(s.next_due(500).await.unwrap(), Some(700));
}

/// Purging deletes executions stopped before a time, with their histories, and the
/// revisions no flow or execution uses.
pub async fn purge_removes_old_stopped_executions_and_unused_revisions(s: &dyn FlowStore) {
    s.put_flow("order", "{}", "", "[]", 1).await.unwrap();
    let stopped = StepCommit {
        status: "SUCCEEDED".into(),
        stopped_at_ms: Some(20),
        history: vec![(1, "{}".into())],
        ..Default::default()
    };
    s.create_execution(
        &execution("e1", "a", 1),
        &StepCommit {
            status: "RUNNING".into(),
            ..Default::default()
        },
        10,
    )
    .await
    .unwrap();
    s.step("e1", None, &mut |_| Some(stopped.clone()))
        .await
        .unwrap();
    s.put_flow("order", "{\"v\":2}", "", "[]", 2).await.unwrap();
    assert_eq!(s.purge_executions(10).await.unwrap(), 0);
    assert_eq!(s.purge_executions(30).await.unwrap(), 1);
    assert!(s.get_execution("e1").await.unwrap().is_none());
    assert!(s.history("e1", 0, 10).await.unwrap().is_empty());
    assert!(s.flow_revision("order", 1).await.unwrap().is_none());
    assert!(s.flow_revision("order", 2).await.unwrap().is_some());
}

/// A batch commits each step as it would alone: later steps see earlier ones, an item is
/// applied once, removed and cleared items are gone for later steps.
pub async fn a_batch_commits_each_step_as_it_would_alone(s: &dyn FlowStore) {
    executions_with_work(s, &["e1", "e2", "e3"], &["t1", "t2"]).await;
    let seen = Mutex::new(Vec::<String>::new());
    let seen = &seen;
    let mut steps = vec![
        // Committed: consumes its item, adds one.
        StepRequest {
            execution: "e1",
            consumes: Some("t1"),
            change: Box::new(|r: &ExecutionRecord| {
                seen.lock().unwrap().push(format!("e1:{}", r.snapshot));
                let mut c = running("{\"at\":1}", 2);
                c.add = vec![work("e1", "t3", 7)];
                Some(c)
            }),
        },
        // The same item again in the same batch: applied once.
        StepRequest {
            execution: "e1",
            consumes: Some("t1"),
            change: Box::new(|_: &ExecutionRecord| panic!("an applied item is applied again")),
        },
        // An item that never was.
        StepRequest {
            execution: "e2",
            consumes: Some("gone"),
            change: Box::new(|_: &ExecutionRecord| panic!("a missing item is applied")),
        },
        StepRequest {
            execution: "nope",
            consumes: None,
            change: Box::new(|_: &ExecutionRecord| panic!("a missing execution is stepped")),
        },
        // The caller writes nothing; its item is still consumed.
        StepRequest {
            execution: "e3",
            consumes: Some("t1"),
            change: Box::new(|_: &ExecutionRecord| None),
        },
        // e2 cancels t1, so a later answer of t1 in the batch finds it gone.
        StepRequest {
            execution: "e2",
            consumes: None,
            change: Box::new(|_: &ExecutionRecord| {
                let mut c = running("{\"e2\":1}", 2);
                c.remove = vec!["t1".into()];
                Some(c)
            }),
        },
        StepRequest {
            execution: "e2",
            consumes: Some("t1"),
            change: Box::new(|_: &ExecutionRecord| panic!("a cancelled item is applied")),
        },
        // e1's second step sees its first, and ends the execution (its work goes).
        StepRequest {
            execution: "e1",
            consumes: Some("t2"),
            change: Box::new(|r: &ExecutionRecord| {
                seen.lock().unwrap().push(format!("e1:{}", r.snapshot));
                Some(StepCommit {
                    status: "SUCCEEDED".into(),
                    stopped_at_ms: Some(9),
                    transitions: 3,
                    snapshot: "{\"done\":true}".into(),
                    history: vec![(3, "{\"e\":3}".into())],
                    clear: true,
                    ..Default::default()
                })
            }),
        },
        // After the clear, the execution's other items are gone too.
        StepRequest {
            execution: "e1",
            consumes: Some("t3"),
            change: Box::new(|_: &ExecutionRecord| panic!("a cleared item is applied")),
        },
    ];
    let got: Vec<Stepped> = s
        .step_batch(&mut steps)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    assert_eq!(
        got,
        vec![
            Stepped::Committed,
            Stepped::AlreadyApplied,
            Stepped::AlreadyApplied,
            Stepped::Missing,
            Stepped::Unchanged,
            Stepped::Committed,
            Stepped::AlreadyApplied,
            Stepped::Committed,
            Stepped::AlreadyApplied,
        ]
    );
    assert_eq!(
        *seen.lock().unwrap(),
        vec!["e1:{}".to_string(), "e1:{\"at\":1}".to_string()]
    );
    let e1 = s.get_execution("e1").await.unwrap().unwrap();
    assert_eq!(
        (e1.status.as_str(), e1.stopped_at_ms, e1.transitions),
        ("SUCCEEDED", Some(9), 3)
    );
    assert_eq!(e1.snapshot, "{\"done\":true}");
    assert_eq!(
        s.history("e1", 0, 10).await.unwrap(),
        vec!["{\"e\":2}".to_string(), "{\"e\":3}".to_string()]
    );
    assert!(work_keys(s, "e1").await.is_empty());
    let e2 = s.get_execution("e2").await.unwrap().unwrap();
    assert_eq!(e2.snapshot, "{\"e2\":1}");
    assert_eq!(work_keys(s, "e2").await, vec!["t2".to_string()]);
    let e3 = s.get_execution("e3").await.unwrap().unwrap();
    assert_eq!(
        (e3.status.as_str(), e3.snapshot.as_str()),
        ("RUNNING", "{}")
    );
    assert_eq!(work_keys(s, "e3").await, vec!["t2".to_string()]);
}

/// The history event whose JSON is this, the backend's test refuses to write (with an
/// error saying `boom refused`) before it runs
/// `a_failing_step_fails_alone_and_the_rest_of_its_batch_commits`.
pub const REFUSED_EVENT: &str = "boom";

/// When a statement of a batch fails, the batch is rolled back and each step committed
/// alone: the failure is its own step's, the others commit. The store must refuse to
/// write a history event `REFUSED_EVENT` (the backend's test arranges it).
pub async fn a_failing_step_fails_alone_and_the_rest_of_its_batch_commits(s: &dyn FlowStore) {
    executions_with_work(s, &["e1", "e2", "e3"], &["t1"]).await;
    let calls = AtomicU32::new(0);
    let calls = &calls;
    let step = |execution: &'static str, event: &'static str| StepRequest {
        execution,
        consumes: Some("t1"),
        change: Box::new(move |_: &ExecutionRecord| {
            calls.fetch_add(1, Ordering::Relaxed);
            Some(StepCommit {
                status: "RUNNING".into(),
                snapshot: format!("{{\"{execution}\":1}}"),
                history: vec![(2, event.into())],
                ..Default::default()
            })
        }),
    };
    let mut steps = vec![
        step("e1", "{}"),
        step("e2", REFUSED_EVENT),
        step("e3", "{}"),
    ];
    let got = s.step_batch(&mut steps).await;
    assert!(matches!(got[0], Ok(Stepped::Committed)), "{:?}", got[0]);
    assert!(
        matches!(&got[1], Err(e) if e.to_string().contains("boom refused")),
        "{:?}",
        got[1]
    );
    assert!(matches!(got[2], Ok(Stepped::Committed)), "{:?}", got[2]);
    // Each change ran in the batch, then again alone.
    assert_eq!(calls.load(Ordering::Relaxed), 6);
    for (id, snapshot, keys) in [
        ("e1", "{\"e1\":1}", 0),
        ("e2", "{}", 1),
        ("e3", "{\"e3\":1}", 0),
    ] {
        let got = s.get_execution(id).await.unwrap().unwrap();
        assert_eq!(got.snapshot, snapshot, "{id}");
        assert_eq!(work_keys(s, id).await.len(), keys, "{id}");
    }
    assert_eq!(s.history("e2", 0, 10).await.unwrap().len(), 0);
    assert_eq!(
        s.history("e3", 0, 10).await.unwrap(),
        vec!["{}".to_string()]
    );
}

/// Steps and batches of more rows than a backend may write in one statement (SQLite binds
/// 32,766 parameters at most, PostgreSQL 65,535) write every row: a start with 6,000 work
/// items and history events, a batch of 6,050 steps over 51 executions that consumes as
/// many items and adds as many.
pub async fn large_steps_and_batches_write_every_row(s: &dyn FlowStore) {
    const ITEMS: i64 = 6_000;
    const OTHERS: usize = 50;
    s.put_flow("order", "{}", "", "[]", 1).await.unwrap();
    let key = |i: i64| format!("k{i:05}");
    let first = StepCommit {
        status: "RUNNING".into(),
        snapshot: "0".into(),
        history: (1..=ITEMS).map(|n| (n, n.to_string())).collect(),
        add: (0..ITEMS).map(|i| work("e0", &key(i), 5)).collect(),
        ..Default::default()
    };
    assert_eq!(
        s.create_execution(&execution("e0", "e0", 1), &first, usize::MAX)
            .await
            .unwrap(),
        Created::New
    );
    let others: Vec<String> = (0..OTHERS).map(|i| format!("o{i:02}")).collect();
    let refs: Vec<&str> = others.iter().map(String::as_str).collect();
    executions_with_work(s, &refs, &["t"]).await;
    let before = all_work(s).await;
    assert_eq!(before.len(), 1 + OTHERS);
    assert_eq!(before["e0"].len(), ITEMS as usize);
    assert_eq!(
        s.history("e0", 0, 100_000).await.unwrap().len(),
        ITEMS as usize
    );

    // Each step of e0 answers one item and adds another in its place.
    let keys: Vec<String> = (0..ITEMS).map(key).collect();
    let mut steps: Vec<StepRequest<'_>> = keys
        .iter()
        .map(|k| StepRequest {
            execution: "e0",
            consumes: Some(k.as_str()),
            change: Box::new(|r: &ExecutionRecord| {
                let n: i64 = r.snapshot.parse().unwrap();
                Some(StepCommit {
                    status: "RUNNING".into(),
                    snapshot: (n + 1).to_string(),
                    history: vec![(ITEMS + n + 1, (ITEMS + n + 1).to_string())],
                    add: vec![work("e0", &format!("u{n:05}"), 5)],
                    ..Default::default()
                })
            }),
        })
        .collect();
    for id in &refs {
        steps.push(StepRequest {
            execution: id,
            consumes: Some("t"),
            change: Box::new(move |_: &ExecutionRecord| {
                let mut c = running(&format!("\"{id}\""), 2);
                c.add = vec![work(id, "u", 5)];
                Some(c)
            }),
        });
    }
    let got = s.step_batch(&mut steps).await;
    assert_eq!(got.len(), ITEMS as usize + OTHERS);
    assert!(
        got.iter().all(|r| matches!(r, Ok(Stepped::Committed))),
        "{:?}",
        got.iter().find(|r| !matches!(r, Ok(Stepped::Committed)))
    );
    let e0 = s.get_execution("e0").await.unwrap().unwrap();
    assert_eq!(e0.snapshot, ITEMS.to_string());
    let history = s.history("e0", 0, 100_000).await.unwrap();
    assert_eq!(
        history,
        (1..=2 * ITEMS).map(|n| n.to_string()).collect::<Vec<_>>()
    );
    let mut after = all_work(s).await;
    assert_eq!(
        after.remove("e0").unwrap(),
        (0..ITEMS).map(|i| format!("u{i:05}")).collect::<Vec<_>>()
    );
    assert_eq!(after.len(), OTHERS);
    assert!(after.values().all(|keys| keys == &["u"]));
    let last = s.get_execution(refs[OTHERS - 1]).await.unwrap().unwrap();
    assert_eq!(last.snapshot, format!("\"{}\"", refs[OTHERS - 1]));
}

/// One of two stores by turns: nodes racing through both.
fn either<'s>(a: &'s dyn FlowStore, b: &'s dyn FlowStore, i: usize) -> &'s dyn FlowStore {
    if i.is_multiple_of(2) { a } else { b }
}

/// Nodes claiming due work at once never get the same item, and between them get all.
pub async fn racing_nodes_claim_each_item_once(a: &dyn FlowStore, b: &dyn FlowStore) {
    const ITEMS: usize = 300;
    let keys: Vec<String> = (0..ITEMS).map(|i| format!("w{i:03}")).collect();
    let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
    executions_with_work(a, &["e1"], &refs).await;
    let claimers = (0..8).map(|i| async move {
        let owner = format!("n{i}");
        let store = either(a, b, i);
        let mut got = Vec::new();
        loop {
            let claimed = store.claim_work(&owner, 10, 10_000, 7).await.unwrap();
            if claimed.is_empty() {
                return got;
            }
            assert!(claimed.len() <= 7);
            for w in claimed {
                assert_eq!(w.owner.as_deref(), Some(owner.as_str()));
                got.push(w.key);
            }
        }
    });
    let claimed: Vec<String> = join_all(claimers).await.into_iter().flatten().collect();
    let distinct: BTreeSet<&String> = claimed.iter().collect();
    assert_eq!(distinct.len(), claimed.len(), "an item was claimed twice");
    assert_eq!(distinct.into_iter().cloned().collect::<Vec<_>>(), keys);
    assert!(a.claim_work("n9", 10, 10_000, 10).await.unwrap().is_empty());
}

/// Starts racing on two nodes: a name is started once, and `running_max` holds (exactly
/// that many start).
pub async fn racing_starts_stay_within_the_running_limit(a: &dyn FlowStore, b: &dyn FlowStore) {
    const RUNNING_MAX: usize = 4;
    const STARTS: usize = 24;
    a.put_flow("order", "{}", "", "[]", 1).await.unwrap();
    let first = StepCommit {
        status: "RUNNING".into(),
        snapshot: "{}".into(),
        history: vec![(1, "{}".into())],
        ..Default::default()
    };
    let first = &first;
    let same = (0..8).map(|i| async move {
        either(a, b, i)
            .create_execution(&execution(&format!("s{i}"), "same", 1), first, 100)
            .await
            .unwrap()
    });
    let got = join_all(same).await;
    let made: Vec<usize> = (0..8).filter(|i| got[*i] == Created::New).collect();
    assert_eq!(made.len(), 1, "{got:?}");
    let winner = format!("s{}", made[0]);
    for c in &got {
        match c {
            Created::New => {}
            Created::Existing(e) => assert_eq!(e.id, winner),
            other => panic!("{other:?}"),
        }
    }

    // One is running already.
    let starts = (0..STARTS).map(|i| async move {
        let id = format!("e{i:02}");
        either(a, b, i)
            .create_execution(&execution(&id, &id, 1), first, RUNNING_MAX)
            .await
            .unwrap()
    });
    let got = join_all(starts).await;
    let new = got.iter().filter(|c| **c == Created::New).count();
    let too_many = got.iter().filter(|c| **c == Created::TooMany).count();
    assert_eq!(
        (new, too_many),
        (RUNNING_MAX - 1, STARTS + 1 - RUNNING_MAX),
        "{got:?}"
    );
    assert_eq!(
        a.list_executions("order", Some("RUNNING"), None, 100)
            .await
            .unwrap()
            .len(),
        RUNNING_MAX
    );
}

/// A step that adds one to the snapshot (a counter) and writes its event.
fn bump(r: &ExecutionRecord) -> Option<StepCommit> {
    let n: i64 = r.snapshot.parse().unwrap();
    Some(running(&(n + 1).to_string(), n + 1))
}

/// Steps of one execution racing on two nodes take turns: each reads what the one before
/// wrote (no step's change is lost), and a consumed item is applied by one of them.
pub async fn racing_steps_of_one_execution_take_turns(a: &dyn FlowStore, b: &dyn FlowStore) {
    const KEYS: usize = 8;
    a.put_flow("order", "{}", "", "[]", 1).await.unwrap();
    let first = StepCommit {
        status: "RUNNING".into(),
        snapshot: "0".into(),
        add: (0..KEYS).map(|i| work("e1", &format!("t{i}"), 5)).collect(),
        ..Default::default()
    };
    a.create_execution(&execution("e1", "e1", 1), &first, 10)
        .await
        .unwrap();
    // Sixteen lone steps.
    let steps = (0..16).map(|i| async move {
        let mut change = bump;
        either(a, b, i).step("e1", None, &mut change).await.unwrap()
    });
    for got in join_all(steps).await {
        assert_eq!(got, Stepped::Committed);
    }
    // Sixteen batches: each answers one of the items (every item twice), then steps again.
    let batches = (0..16).map(|i| async move {
        let key = format!("t{}", i % KEYS);
        let mut steps = [
            StepRequest {
                execution: "e1",
                consumes: Some(key.as_str()),
                change: Box::new(bump),
            },
            StepRequest {
                execution: "e1",
                consumes: None,
                change: Box::new(bump),
            },
        ];
        let got = either(a, b, i).step_batch(&mut steps).await;
        let got: Vec<Stepped> = got.into_iter().map(Result::unwrap).collect();
        assert_eq!(got[1], Stepped::Committed);
        (i % KEYS, got[0].clone())
    });
    let mut applied: BTreeMap<usize, usize> = BTreeMap::new();
    for (key, got) in join_all(batches).await {
        match got {
            Stepped::Committed => *applied.entry(key).or_default() += 1,
            Stepped::AlreadyApplied => {}
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(applied.len(), KEYS, "{applied:?}");
    assert!(applied.values().all(|n| *n == 1), "{applied:?}");
    let total = 16 + KEYS + 16;
    let e1 = a.get_execution("e1").await.unwrap().unwrap();
    assert_eq!(e1.snapshot, total.to_string());
    assert_eq!(
        b.history("e1", 0, 1000).await.unwrap(),
        (1..=total)
            .map(|n| format!("{{\"e\":{n}}}"))
            .collect::<Vec<_>>()
    );
    assert!(work_keys(a, "e1").await.is_empty());
}

/// Puts of one flow racing on two nodes: one creates it, and each new definition is a
/// revision of its own, numbered once.
pub async fn racing_puts_number_each_revision_once(a: &dyn FlowStore, b: &dyn FlowStore) {
    const PUTS: usize = 8;
    let puts = (0..PUTS).map(|i| async move {
        let definition = format!("{{\"v\":{i}}}");
        let (f, o) = either(a, b, i)
            .put_flow("race", &definition, "", "[]", i as i64)
            .await
            .unwrap();
        (f.revision, o, definition)
    });
    let got = join_all(puts).await;
    assert_eq!(
        got.iter()
            .filter(|(_, o, _)| *o == PutOutcome::Created)
            .count(),
        1,
        "{got:?}"
    );
    let revisions: BTreeSet<i64> = got.iter().map(|(r, _, _)| *r).collect();
    assert_eq!(
        revisions,
        (1..=PUTS as i64).collect::<BTreeSet<_>>(),
        "{got:?}"
    );
    for (revision, _, definition) in &got {
        assert_eq!(
            b.flow_revision("race", *revision).await.unwrap().as_ref(),
            Some(definition)
        );
    }
    assert_eq!(
        a.get_flow("race").await.unwrap().unwrap().revision,
        PUTS as i64
    );
}
