//! `MetaStore`'s contract, as tests any backend must pass: each function takes a fresh,
//! empty store and panics where the backend breaks the contract.

use std::collections::BTreeSet;

use model::{Alias, FunctionSpec, Runtime};

use crate::{
    AwsKeyRecord, BuildClaim, KeyRecord, MetaStore, PutMode, PutOutcome, StoreError, TimerProgress,
};

/// A function's spec for tests: Python, the handler given, code of zeros.
pub fn spec(name: &str, handler: &str) -> FunctionSpec {
    let mut s = FunctionSpec::new(name, Runtime::Python3, handler, &"0".repeat(64));
    s.timeout_ms = 1000;
    s
}

/// Create refuses an existing name; an upsert of the same spec changes nothing; a new
/// spec is a new revision; names list in order; a deleted function is gone.
pub async fn crud_and_revisions(store: &dyn MetaStore) {
    let (f, o) = store
        .put_function(&spec("b", "main.h"), PutMode::Create, 10)
        .await
        .unwrap();
    assert_eq!((f.revision, o), (1, PutOutcome::Created));
    assert!(matches!(
        store
            .put_function(&spec("b", "main.h"), PutMode::Create, 11)
            .await,
        Err(StoreError::Conflict(_))
    ));
    let (f, o) = store
        .put_function(&spec("b", "main.h"), PutMode::Upsert, 12)
        .await
        .unwrap();
    assert_eq!((f.revision, o), (1, PutOutcome::Unchanged));
    let (f, o) = store
        .put_function(&spec("b", "main.g"), PutMode::Upsert, 13)
        .await
        .unwrap();
    assert_eq!(
        (f.revision, o, f.created_at_ms, f.updated_at_ms),
        (2, PutOutcome::Updated, 10, 13)
    );
    store
        .put_function(&spec("a", "main.h"), PutMode::Upsert, 14)
        .await
        .unwrap();
    let names: Vec<_> = store
        .list_functions()
        .await
        .unwrap()
        .into_iter()
        .map(|f| f.spec.name)
        .collect();
    assert_eq!(names, ["a", "b"]);
    assert_eq!(
        store.get_function("b").await.unwrap().spec.handler,
        "main.g"
    );
    store.delete_function("b").await.unwrap();
    assert!(matches!(
        store.get_function("b").await,
        Err(StoreError::NotFound(_))
    ));
    assert!(matches!(
        store.delete_function("b").await,
        Err(StoreError::NotFound(_))
    ));
}

/// A build is claimed once: the same node may claim again (a retry), another waits for
/// the lease; done, everyone gets its archive; failed, it is free again.
pub async fn builds_are_claimed_once_and_remembered_when_done(store: &dyn MetaStore) {
    let sha = "a".repeat(64);
    assert_eq!(
        store.claim_build("k", "n1", 100, 1_000).await.unwrap(),
        BuildClaim::Claimed
    );
    assert_eq!(
        store.claim_build("k", "n1", 200, 1_000).await.unwrap(),
        BuildClaim::Claimed
    );
    assert_eq!(
        store.claim_build("k", "n2", 300, 1_300).await.unwrap(),
        BuildClaim::Running { node: "n1".into() }
    );
    // n1 died: its lease ends and n2 takes the build over.
    assert_eq!(
        store.claim_build("k", "n2", 1_001, 2_000).await.unwrap(),
        BuildClaim::Claimed
    );
    // n1's late finish does not count: the build is n2's now.
    store
        .finish_build("k", "n1", Some(&"b".repeat(64)), 1_100)
        .await
        .unwrap();
    store
        .finish_build("k", "n2", Some(&sha), 1_200)
        .await
        .unwrap();
    for node in ["n1", "n3"] {
        assert_eq!(
            store.claim_build("k", node, 5_000, 6_000).await.unwrap(),
            BuildClaim::Done {
                deps_sha256: sha.clone()
            }
        );
    }
    store.forget_build("k").await.unwrap();
    assert_eq!(
        store.claim_build("k", "n3", 5_000, 6_000).await.unwrap(),
        BuildClaim::Claimed
    );
    store.finish_build("k", "n3", None, 5_100).await.unwrap();
    assert_eq!(
        store.claim_build("k", "n1", 5_200, 6_000).await.unwrap(),
        BuildClaim::Claimed
    );
}

/// The code collector keeps a function's dependencies and its merged tree.
pub async fn referenced_code_names_dependencies_and_merged_trees(store: &dyn MetaStore) {
    let mut f = spec("f", "main.a");
    f.deps_sha256 = "d".repeat(64);
    store.put_function(&f, PutMode::Create, 1).await.unwrap();
    store
        .put_function(&spec("g", "main.a"), PutMode::Create, 1)
        .await
        .unwrap();
    let code = "0".repeat(64);
    let expected: BTreeSet<String> = [
        code.clone(),
        "d".repeat(64),
        crate::tree_id(&code, &"d".repeat(64)),
    ]
    .into();
    assert_eq!(store.referenced_code().await.unwrap(), expected);
}

pub async fn versions_are_numbered_once_and_aliases_guard_them(store: &dyn MetaStore) {
    store
        .put_function(&spec("f", "main.a"), PutMode::Create, 1)
        .await
        .unwrap();
    let (v1, new) = store.publish_version("f", "first", 2).await.unwrap();
    assert_eq!((v1.version, new), (1, true));
    // Unchanged: the same version comes back.
    let (again, new) = store.publish_version("f", "again", 3).await.unwrap();
    assert_eq!(
        (again.version, new, again.description.as_str()),
        (1, false, "first")
    );
    store
        .put_function(&spec("f", "main.b"), PutMode::Upsert, 4)
        .await
        .unwrap();
    let (v2, _) = store.publish_version("f", "", 5).await.unwrap();
    assert_eq!(v2.version, 2);
    assert_eq!(
        store.get_version("f", 1).await.unwrap().spec.handler,
        "main.a"
    );

    let alias = Alias {
        name: "prod".into(),
        version: 1,
        canary: Some(model::Canary {
            version: 2,
            percent: 10.0,
            guard: None,
            rolled_back: None,
        }),
        description: String::new(),
        updated_at_ms: 6,
    };
    store.put_alias("f", &alias).await.unwrap();
    let bad = Alias {
        version: 9,
        canary: None,
        ..alias.clone()
    };
    assert!(matches!(
        store.put_alias("f", &bad).await,
        Err(StoreError::VersionNotFound(_, 9))
    ));
    let refused = store.delete_version("f", 2).await.unwrap_err();
    assert_eq!(
        refused.to_string(),
        "version 2 of `f` is in use by alias `prod`; move or delete that first"
    );
    store.delete_alias("f", "prod").await.unwrap();
    store.delete_version("f", 2).await.unwrap();
    // A deleted number is not given out again.
    store
        .put_function(&spec("f", "main.c"), PutMode::Upsert, 7)
        .await
        .unwrap();
    let (v3, _) = store.publish_version("f", "", 8).await.unwrap();
    assert_eq!(v3.version, 3);
    let listed: Vec<u32> = store
        .list_versions("f")
        .await
        .unwrap()
        .iter()
        .map(|v| v.version)
        .collect();
    assert_eq!(listed, [1, 3]);
    // Deleting the function deletes its versions and aliases.
    store
        .put_alias(
            "f",
            &Alias {
                canary: None,
                ..alias
            },
        )
        .await
        .unwrap();
    let mut other = spec("g", "main.a");
    other.code_sha256 = "1".repeat(64);
    store
        .put_function(&other, PutMode::Create, 9)
        .await
        .unwrap();
    // f's versions and f share one code; g has another.
    assert_eq!(
        store.referenced_code().await.unwrap(),
        BTreeSet::from(["0".repeat(64), "1".repeat(64)])
    );
    store.delete_function("f").await.unwrap();
    assert_eq!(
        store.referenced_code().await.unwrap(),
        BTreeSet::from(["1".repeat(64)])
    );
    assert!(store.list_versions("f").await.unwrap().is_empty());
    assert!(store.list_aliases("f").await.unwrap().is_empty());
}

pub async fn timer_progress_only_moves_forward_and_a_resume_skips_the_pause(store: &dyn MetaStore) {
    let progress = |scheduled_ms, id: Option<&str>, skipped| TimerProgress {
        function: "f".into(),
        timer: "t".into(),
        scheduled_ms,
        now_ms: scheduled_ms + 5,
        request_id: id.map(String::from),
        error: None,
        skipped,
    };
    store
        .timer_progress(&[progress(2000, Some("r2"), false)])
        .await
        .unwrap();
    // Another node's late write of an earlier time does not move it back.
    store
        .timer_progress(&[progress(1000, Some("r1"), false)])
        .await
        .unwrap();
    store
        .timer_progress(&[progress(3000, None, true), progress(2500, None, false)])
        .await
        .unwrap();
    let s = &store.timer_states(Some("f")).await.unwrap()[0];
    assert_eq!(s.last_scheduled_ms, Some(3000));
    assert_eq!(s.last_request_id.as_deref(), Some("r2"));
    assert_eq!(s.last_fire_ms, Some(2005));
    assert_eq!(s.skipped, 1);
    assert!(!s.paused);
    store.set_timer_paused("f", "t", true, 4000).await.unwrap();
    assert!(store.timer_states(None).await.unwrap()[0].paused);
    store.set_timer_paused("f", "t", false, 9000).await.unwrap();
    let s = &store.timer_states(None).await.unwrap()[0];
    assert_eq!((s.paused, s.last_scheduled_ms), (false, Some(9000)));
    assert!(store.timer_states(Some("g")).await.unwrap().is_empty());
}

pub async fn one_builtin_access_key_whoever_makes_it(store: &dyn MetaStore) {
    let key = |id: &str, builtin: bool| AwsKeyRecord {
        access_key_id: id.into(),
        name: id.to_lowercase(),
        secret: format!("secret-of-{id}"),
        scope: "admin".into(),
        builtin,
        created_at_ms: 1,
    };
    // Two nodes starting together each try to make the admin's key: one is kept.
    let first = store.create_aws_key(&key("NKIAFIRST", true)).await.unwrap();
    let second = store
        .create_aws_key(&key("NKIASECOND", true))
        .await
        .unwrap();
    assert_eq!(first, second);
    assert_eq!(second.access_key_id, "NKIAFIRST");
    store.create_aws_key(&key("NKIAUSER", false)).await.unwrap();
    let ids: Vec<String> = store
        .list_aws_keys()
        .await
        .unwrap()
        .into_iter()
        .map(|k| k.access_key_id)
        .collect();
    assert_eq!(ids, ["NKIAFIRST", "NKIAUSER"]);
    // The builtin key is not deleted this way; a user's key is, once.
    assert!(matches!(
        store.delete_aws_key("NKIAFIRST").await,
        Err(StoreError::KeyNotFound(_))
    ));
    store.delete_aws_key("NKIAUSER").await.unwrap();
    assert!(matches!(
        store.delete_aws_key("NKIAUSER").await,
        Err(StoreError::KeyNotFound(_))
    ));
    assert_eq!(store.list_aws_keys().await.unwrap().len(), 1);
}

pub async fn keys_are_stored_by_hash(store: &dyn MetaStore) {
    let key = KeyRecord {
        id: "k1".into(),
        name: "ci".into(),
        sha256: "ab".repeat(32),
        created_at_ms: 5,
    };
    store.create_key(&key).await.unwrap();
    assert_eq!(store.list_keys().await.unwrap(), vec![key]);
    store.delete_key("k1").await.unwrap();
    assert!(matches!(
        store.delete_key("k1").await,
        Err(StoreError::KeyNotFound(_))
    ));
}

/// Publishes racing on one spec share one version; on new specs, each gets its own
/// number and none is given twice (nodes publish through their own connections).
pub async fn racing_publishes_number_each_version_once(store: &dyn MetaStore) {
    store
        .put_function(&spec("f", "main.a"), PutMode::Create, 1)
        .await
        .unwrap();
    let same = (0..8).map(|_| store.publish_version("f", "", 2));
    let published = futures_util::future::join_all(same).await;
    let numbers: BTreeSet<u32> = published
        .iter()
        .map(|r| r.as_ref().unwrap().0.version)
        .collect();
    assert_eq!(numbers, BTreeSet::from([1]));
    assert_eq!(
        published.iter().filter(|r| r.as_ref().unwrap().1).count(),
        1
    );
    for i in 0..4 {
        store
            .put_function(&spec("f", &format!("main.v{i}")), PutMode::Upsert, 3 + i)
            .await
            .unwrap();
        let racing = (0..4).map(|_| store.publish_version("f", "", 3 + i));
        for r in futures_util::future::join_all(racing).await {
            r.unwrap();
        }
    }
    let listed: Vec<u32> = store
        .list_versions("f")
        .await
        .unwrap()
        .iter()
        .map(|v| v.version)
        .collect();
    assert_eq!(listed, [1, 2, 3, 4, 5]);
}
