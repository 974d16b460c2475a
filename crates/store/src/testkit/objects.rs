//! `ObjectMeta`'s contract: buckets and their limit, objects swapped with the blob they let
//! go of, listings in bytewise key order, multipart uploads, the bucket-event outbox in
//! commit order, notification and website configuration, and what racing writers of one
//! database must never break.

use std::collections::{BTreeMap, BTreeSet};

use futures_util::future::join_all;
use model::bucket::Website;

use crate::objects::{
    ListPage, ListQuery, NewObjectEvent, ObjectAttrs, ObjectChange, ObjectError, ObjectEvent,
    ObjectMeta, ObjectRecord, PartRecord, UploadRecord,
};

fn object(bucket: &str, key: &str, blob: &str) -> ObjectRecord {
    ObjectRecord {
        bucket: bucket.into(),
        key: key.into(),
        blob_id: blob.into(),
        size_bytes: 3,
        etag: "e".into(),
        modified_ms: 1,
        attrs: ObjectAttrs {
            content_type: Some("text/plain".into()),
            user_metadata: [("a".to_string(), "b".to_string())].into(),
            ..Default::default()
        },
    }
}

async fn put(s: &dyn ObjectMeta, bucket: &str, key: &str, blob: &str) -> Option<String> {
    s.commit_object(ObjectChange::Put(Box::new(object(bucket, key, blob))), &[])
        .await
        .unwrap()
}

fn delete(bucket: &str, key: &str) -> ObjectChange {
    ObjectChange::Delete {
        bucket: bucket.into(),
        key: key.into(),
    }
}

fn part(upload: &str, n: i32, blob: &str) -> PartRecord {
    PartRecord {
        upload_id: upload.into(),
        part_number: n,
        blob_id: blob.into(),
        size_bytes: 5,
        etag: format!("e{n}"),
        modified_ms: 1,
        checksums: BTreeMap::new(),
    }
}

fn upload(id: &str, bucket: &str, key: &str) -> UploadRecord {
    UploadRecord {
        upload_id: id.into(),
        bucket: bucket.into(),
        key: key.into(),
        created_at_ms: 1,
        attrs: ObjectAttrs::default(),
    }
}

fn keys(page: &ListPage) -> Vec<&str> {
    page.objects.iter().map(|o| o.key.as_str()).collect()
}

fn q<'a>(
    prefix: &'a str,
    delimiter: Option<&'a str>,
    after: Option<&'a str>,
    max_keys: usize,
) -> ListQuery<'a> {
    ListQuery {
        prefix,
        delimiter,
        after,
        max_keys,
    }
}

fn event(name: &str, node: &str, at_ms: i64) -> NewObjectEvent {
    NewObjectEvent {
        event: name.into(),
        at_ms,
        node: node.into(),
        lineage: 2,
    }
}

/// Buckets are made once and up to the limit, listed by name, and deleted only when empty;
/// their uploads in progress go with them and their parts' blobs are answered.
pub async fn buckets_are_made_listed_bounded_and_deleted_only_empty(s: &dyn ObjectMeta) {
    s.create_bucket("b1", 5, 2).await.unwrap();
    assert!(matches!(
        s.create_bucket("b1", 6, 2).await,
        Err(ObjectError::BucketExists(_))
    ));
    s.create_bucket("b2", 6, 2).await.unwrap();
    assert!(matches!(
        s.create_bucket("b3", 7, 2).await,
        Err(ObjectError::TooMany(_))
    ));
    let names: Vec<_> = s
        .list_buckets()
        .await
        .unwrap()
        .into_iter()
        .map(|b| b.name)
        .collect();
    assert_eq!(names, ["b1", "b2"]);
    assert_eq!(s.bucket("b1").await.unwrap().unwrap().created_at_ms, 5);

    put(s, "b1", "k", "1").await;
    assert!(matches!(
        s.delete_bucket("b1").await,
        Err(ObjectError::BucketNotEmpty(_))
    ));
    // An upload in progress does not keep a bucket: it is aborted with it.
    let up = UploadRecord {
        upload_id: "u1".into(),
        bucket: "b2".into(),
        key: "k".into(),
        created_at_ms: 1,
        attrs: ObjectAttrs::default(),
    };
    s.create_upload(&up, 10).await.unwrap();
    s.put_part(&part("u1", 1, "p1")).await.unwrap();
    assert_eq!(s.delete_bucket("b2").await.unwrap(), ["p1"]);
    assert!(matches!(
        s.delete_bucket("b2").await,
        Err(ObjectError::NoSuchBucket(_))
    ));
    assert!(s.referenced_blobs().await.unwrap().contains("1"));
    assert!(!s.referenced_blobs().await.unwrap().contains("p1"));
}

/// A put or delete swaps the object's row and answers the blob it let go of; a copy onto
/// itself lets go of nothing.
pub async fn a_change_swaps_the_row_and_lets_go_of_the_old_blob(s: &dyn ObjectMeta) {
    assert!(matches!(
        s.commit_object(ObjectChange::Put(Box::new(object("nope", "k", "1"))), &[])
            .await,
        Err(ObjectError::NoSuchBucket(_))
    ));
    s.create_bucket("b", 1, 10).await.unwrap();
    assert_eq!(put(s, "b", "k", "1").await, None);
    assert_eq!(s.object("b", "k").await.unwrap(), object("b", "k", "1"));
    assert_eq!(put(s, "b", "k", "2").await.as_deref(), Some("1"));
    // A copy onto itself keeps its blob.
    assert_eq!(put(s, "b", "k", "2").await, None);
    let gone = s
        .commit_object(
            ObjectChange::Delete {
                bucket: "b".into(),
                key: "k".into(),
            },
            &[],
        )
        .await
        .unwrap();
    assert_eq!(gone.as_deref(), Some("2"));
    assert!(matches!(
        s.object("b", "k").await,
        Err(ObjectError::NoSuchKey(_))
    ));
    assert!(matches!(
        s.object("x", "k").await,
        Err(ObjectError::NoSuchBucket(_))
    ));
}

/// Listings roll keys up into common prefixes at the delimiter and page by the marker, a
/// common prefix counting as one entry.
pub async fn listings_roll_up_prefixes_and_page(s: &dyn ObjectMeta) {
    s.create_bucket("b", 1, 10).await.unwrap();
    for k in ["a", "b/1", "b/2", "b/3/x", "c", "d/1", "e"] {
        put(s, "b", k, "1").await;
    }
    let all = s.list_objects("b", &q("", None, None, 1000)).await.unwrap();
    assert_eq!(keys(&all).len(), 7);
    assert_eq!(all.next_after, None);

    let top = s
        .list_objects("b", &q("", Some("/"), None, 1000))
        .await
        .unwrap();
    assert_eq!(keys(&top), ["a", "c", "e"]);
    assert_eq!(top.common_prefixes, ["b/", "d/"]);

    // Pages of two: a common prefix counts as one entry, and the marker skips it.
    let p1 = s
        .list_objects("b", &q("", Some("/"), None, 2))
        .await
        .unwrap();
    assert_eq!(
        (keys(&p1), p1.common_prefixes.clone()),
        (vec!["a"], vec!["b/".to_string()])
    );
    assert_eq!(p1.next_after.as_deref(), Some("b/"));
    let p2 = s
        .list_objects("b", &q("", Some("/"), Some("b/"), 2))
        .await
        .unwrap();
    assert_eq!(keys(&p2), ["c"]);
    assert_eq!(p2.common_prefixes, ["d/"]);
    let p3 = s
        .list_objects("b", &q("", Some("/"), Some("d/"), 2))
        .await
        .unwrap();
    assert_eq!(keys(&p3), ["e"]);
    assert_eq!(p3.next_after, None);

    let under = s
        .list_objects("b", &q("b/", Some("/"), None, 1000))
        .await
        .unwrap();
    assert_eq!(keys(&under), ["b/1", "b/2"]);
    assert_eq!(under.common_prefixes, ["b/3/"]);
    let after = s
        .list_objects("b", &q("b/", None, Some("b/1"), 1000))
        .await
        .unwrap();
    assert_eq!(keys(&after), ["b/2", "b/3/x"]);
    let none = s
        .list_objects("b", &q("zz", None, None, 1000))
        .await
        .unwrap();
    assert!(none.objects.is_empty());
    assert!(matches!(
        s.list_objects("x", &q("", None, None, 1)).await,
        Err(ObjectError::NoSuchBucket(_))
    ));
}

/// A listing whose keys span more than one batch of rows (`LIST_BATCH_ROWS`) pages through
/// them all, each common prefix once.
pub async fn a_listing_pages_through_more_than_a_batch(s: &dyn ObjectMeta) {
    s.create_bucket("b", 1, 10).await.unwrap();
    for i in 0..2500 {
        put(s, "b", &format!("k/{i:05}"), "1").await;
        if i % 2 == 0 {
            put(s, "b", &format!("p{i:05}/x"), "1").await;
        }
    }
    let mut seen = 0;
    let mut prefixes = 0;
    let mut after: Option<String> = None;
    loop {
        let page = s
            .list_objects(
                "b",
                &ListQuery {
                    prefix: "",
                    delimiter: Some("/"),
                    after: after.as_deref(),
                    max_keys: 300,
                },
            )
            .await
            .unwrap();
        seen += page.objects.len();
        prefixes += page.common_prefixes.len();
        match page.next_after {
            Some(n) => after = Some(n),
            None => break,
        }
    }
    assert_eq!((seen, prefixes), (0, 1 + 1250));
}

/// Multipart uploads are bounded per bucket, collect parts (a part again replaces it), list
/// in (key, id) order, and complete or abort answering every blob let go of.
pub async fn uploads_collect_parts_and_complete_into_an_object_at_once(s: &dyn ObjectMeta) {
    s.create_bucket("b", 1, 10).await.unwrap();
    let up = |id: &str, key: &str| UploadRecord {
        upload_id: id.into(),
        bucket: "b".into(),
        key: key.into(),
        created_at_ms: 1,
        attrs: ObjectAttrs::default(),
    };
    s.create_upload(&up("u1", "k"), 2).await.unwrap();
    s.create_upload(&up("u2", "j"), 2).await.unwrap();
    assert!(matches!(
        s.create_upload(&up("u3", "k"), 2).await,
        Err(ObjectError::TooMany(_))
    ));
    assert!(matches!(
        s.upload("b", "other", "u1").await,
        Err(ObjectError::NoSuchUpload(_))
    ));
    assert_eq!(s.put_part(&part("u1", 2, "p2")).await.unwrap(), None);
    assert_eq!(s.put_part(&part("u1", 1, "p1")).await.unwrap(), None);
    assert_eq!(
        s.put_part(&part("u1", 1, "p1b")).await.unwrap().as_deref(),
        Some("p1")
    );
    let parts = s.list_parts("u1", 0, 10).await.unwrap();
    assert_eq!(
        parts.iter().map(|p| p.blob_id.as_str()).collect::<Vec<_>>(),
        ["p1b", "p2"]
    );
    assert_eq!(s.list_parts("u1", 1, 10).await.unwrap().len(), 1);
    let listed = s.list_uploads("b", "", None, 10).await.unwrap();
    assert_eq!(
        listed.iter().map(|u| u.key.as_str()).collect::<Vec<_>>(),
        ["j", "k"]
    );
    assert_eq!(s.list_uploads("b", "k", None, 10).await.unwrap().len(), 1);
    assert_eq!(
        s.list_uploads("b", "", Some(("j", "u2")), 10)
            .await
            .unwrap()[0]
            .upload_id,
        "u1"
    );

    put(s, "b", "k", "old").await;
    let mut released = s
        .complete_upload("u1", object("b", "k", "joined"), &[])
        .await
        .unwrap();
    released.sort();
    assert_eq!(released, ["old", "p1b", "p2"]);
    assert_eq!(s.object("b", "k").await.unwrap().blob_id, "joined");
    assert!(matches!(
        s.complete_upload("u1", object("b", "k", "again"), &[])
            .await,
        Err(ObjectError::NoSuchUpload(_))
    ));
    assert!(matches!(
        s.put_part(&part("u1", 3, "late")).await,
        Err(ObjectError::NoSuchUpload(_))
    ));
    s.put_part(&part("u2", 1, "q1")).await.unwrap();
    assert_eq!(s.abort_upload("u2").await.unwrap(), ["q1"]);
    assert!(matches!(
        s.abort_upload("u2").await,
        Err(ObjectError::NoSuchUpload(_))
    ));
    let refs = s.referenced_blobs().await.unwrap();
    assert_eq!(refs, ["joined".to_string()].into());
}

/// A bucket's website configuration is set, read, replaced and removed, and goes with its
/// bucket.
pub async fn a_website_is_set_read_replaced_removed_and_goes_with_its_bucket(s: &dyn ObjectMeta) {
    let site = Website {
        index_document: "index.html".into(),
        error_document: Some("404.html".into()),
    };
    assert!(matches!(
        s.bucket_website("nope").await,
        Err(ObjectError::NoSuchBucket(_))
    ));
    assert!(matches!(
        s.set_bucket_website("nope", Some(&site)).await,
        Err(ObjectError::NoSuchBucket(_))
    ));
    s.create_bucket("site", 1, 10).await.unwrap();
    assert_eq!(s.bucket_website("site").await.unwrap(), None);
    s.set_bucket_website("site", Some(&site)).await.unwrap();
    assert_eq!(s.bucket_website("site").await.unwrap(), Some(site.clone()));
    let bare = Website {
        index_document: "home.htm".into(),
        error_document: None,
    };
    s.set_bucket_website("site", Some(&bare)).await.unwrap();
    assert_eq!(s.bucket_website("site").await.unwrap(), Some(bare));
    s.set_bucket_website("site", None).await.unwrap();
    assert_eq!(s.bucket_website("site").await.unwrap(), None);
    // A bucket made again under the same name starts without one.
    s.set_bucket_website("site", Some(&site)).await.unwrap();
    s.delete_bucket("site").await.unwrap();
    s.create_bucket("site", 2, 10).await.unwrap();
    assert_eq!(s.bucket_website("site").await.unwrap(), None);
}

/// Names and keys compare byte by byte in UTF-8 (S3's order), whatever the database's
/// collation: in bucket lists, object listings, their markers and delimiters, and upload
/// lists. A bound holding NUL, which no stored key holds, matches nothing and pages as the
/// bytes before it.
pub async fn keys_order_bytewise(s: &dyn ObjectMeta) {
    for name in ["b1", "b.1", "b-1"] {
        s.create_bucket(name, 1, 10).await.unwrap();
    }
    let names: Vec<_> = s
        .list_buckets()
        .await
        .unwrap()
        .into_iter()
        .map(|b| b.name)
        .collect();
    assert_eq!(names, ["b-1", "b.1", "b1"]);

    let mut all = vec![
        "a",
        "B",
        "a/b",
        "a-b",
        "a0",
        "aB",
        "ab",
        "Z",
        "z",
        "é",
        "e\u{301}",
        "ä/1",
        "ä/2",
        "日本/x",
        "日本語",
        "\u{1F600}",
        "\u{FFFD}",
    ];
    for k in &all {
        put(s, "b1", k, "1").await;
    }
    all.sort_unstable();
    let listed = s.list_objects("b1", &q("", None, None, 100)).await.unwrap();
    assert_eq!(keys(&listed), all);

    let top = s
        .list_objects("b1", &q("", Some("/"), None, 100))
        .await
        .unwrap();
    assert_eq!(top.common_prefixes, ["a/", "ä/", "日本/"]);
    let after_a = s
        .list_objects("b1", &q("", None, Some("a"), 3))
        .await
        .unwrap();
    assert_eq!(keys(&after_a), ["a-b", "a/b", "a0"]);
    assert_eq!(after_a.next_after.as_deref(), Some("a0"));
    // A delimiter of several bytes, under a prefix of several.
    let cjk = s
        .list_objects("b1", &q("日", Some("本"), None, 100))
        .await
        .unwrap();
    assert_eq!(
        (keys(&cjk).len(), cjk.common_prefixes),
        (0, vec!["日本".into()])
    );
    let after_umlaut = s
        .list_objects("b1", &q("", Some("/"), Some("ä/"), 100))
        .await
        .unwrap();
    assert_eq!(
        keys(&after_umlaut),
        ["é", "日本語", "\u{FFFD}", "\u{1F600}"]
    );
    assert_eq!(after_umlaut.common_prefixes, ["日本/"]);

    let nul = s
        .list_objects("b1", &q("a\0", None, None, 100))
        .await
        .unwrap();
    assert_eq!(nul, ListPage::default());
    let past_nul = s
        .list_objects("b1", &q("a", None, Some("a\0b"), 2))
        .await
        .unwrap();
    assert_eq!(keys(&past_nul), ["a-b", "a/b"]);

    for (id, key) in [("u1", "é"), ("u2", "B"), ("u3", "a"), ("u0", "a")] {
        s.create_upload(&upload(id, "b1", key), 10).await.unwrap();
    }
    let order = |uploads: Vec<UploadRecord>| -> Vec<String> {
        uploads.into_iter().map(|u| u.upload_id).collect()
    };
    let uploads = s.list_uploads("b1", "", None, 10).await.unwrap();
    assert_eq!(order(uploads), ["u2", "u0", "u3", "u1"]);
    let after = s
        .list_uploads("b1", "", Some(("a", "u0")), 10)
        .await
        .unwrap();
    assert_eq!(order(after), ["u3", "u1"]);
    assert!(
        s.list_uploads("b1", "a\0", None, 10)
            .await
            .unwrap()
            .is_empty()
    );
    let past_nul = s
        .list_uploads("b1", "", Some(("a\0", "")), 10)
        .await
        .unwrap();
    assert_eq!(order(past_nul), ["u1"]);
    let id_past_nul = s
        .list_uploads("b1", "", Some(("a", "u0\0")), 10)
        .await
        .unwrap();
    assert_eq!(order(id_past_nul), ["u3", "u1"]);
    assert!(matches!(
        s.upload("b1", "a", "u0\0").await,
        Err(ObjectError::NoSuchUpload(_))
    ));
}

/// Every committed change writes its events into the outbox in the same transaction, in
/// commit order; a change refused or a delete of nothing writes none. A node reads its own
/// events and every event older than the staleness bound, at most `limit`, and removes those
/// it delivered.
pub async fn events_are_committed_with_their_change_in_order(s: &dyn ObjectMeta) {
    let put_event = |node, at| [event("ObjectCreated:Put", node, at)];
    assert!(matches!(
        s.commit_object(
            ObjectChange::Put(Box::new(object("b", "k1", "1"))),
            &put_event("n1", 10)
        )
        .await,
        Err(ObjectError::NoSuchBucket(_))
    ));
    s.create_bucket("b", 1, 10).await.unwrap();
    s.commit_object(
        ObjectChange::Put(Box::new(object("b", "k1", "1"))),
        &put_event("n1", 10),
    )
    .await
    .unwrap();
    let removed = [event("ObjectRemoved:Delete", "n1", 11)];
    s.commit_object(delete("b", "nothing"), &removed)
        .await
        .unwrap();
    s.commit_object(delete("b", "k1"), &removed).await.unwrap();
    s.commit_object(
        ObjectChange::Put(Box::new(object("b", "k2", "2"))),
        &[
            event("ObjectCreated:Put", "n2", 20),
            event("ObjectCreated:Copy", "n2", 20),
        ],
    )
    .await
    .unwrap();
    s.create_upload(&upload("u", "b", "k3"), 10).await.unwrap();
    s.complete_upload(
        "u",
        object("b", "k3", "3"),
        &[event("ObjectCreated:CompleteMultipartUpload", "n1", 30)],
    )
    .await
    .unwrap();

    let all = s.pending_object_events("n1", 21, 100).await.unwrap();
    let told = |events: &[ObjectEvent]| -> Vec<(String, String, String)> {
        events
            .iter()
            .map(|e| (e.node.clone(), e.key.clone(), e.event.clone()))
            .collect()
    };
    let row = |node: &str, key: &str, event: &str| -> (String, String, String) {
        (node.into(), key.into(), event.into())
    };
    assert_eq!(
        told(&all),
        [
            row("n1", "k1", "ObjectCreated:Put"),
            row("n1", "k1", "ObjectRemoved:Delete"),
            row("n2", "k2", "ObjectCreated:Put"),
            row("n2", "k2", "ObjectCreated:Copy"),
            row("n1", "k3", "ObjectCreated:CompleteMultipartUpload"),
        ]
    );
    assert!(all.windows(2).all(|w| w[0].seq < w[1].seq));
    assert_eq!(
        all[0],
        ObjectEvent {
            seq: all[0].seq,
            bucket: "b".into(),
            key: "k1".into(),
            event: "ObjectCreated:Put".into(),
            size_bytes: Some(3),
            etag: Some("e".into()),
            at_ms: 10,
            node: "n1".into(),
            lineage: 2,
        }
    );
    assert_eq!((all[1].size_bytes, all[1].etag.as_deref()), (None, None));

    // n2's events are not yet stale for n1; they are n2's own.
    let mine = s.pending_object_events("n1", 20, 100).await.unwrap();
    assert_eq!(mine.len(), 3);
    assert_eq!(
        s.pending_object_events("n2", 0, 100).await.unwrap().len(),
        2
    );
    assert!(
        s.pending_object_events("n3", 0, 100)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        s.pending_object_events("n1", 21, 2).await.unwrap(),
        all[..2]
    );

    s.delete_object_events(&[all[0].seq, all[2].seq, i64::MAX])
        .await
        .unwrap();
    s.delete_object_events(&[]).await.unwrap();
    let left = s.pending_object_events("n1", 100, 100).await.unwrap();
    assert_eq!(left, [all[1].clone(), all[3].clone(), all[4].clone()]);
}

/// A bucket's notification rules are set, replaced and removed, listed by bucket, and go
/// with their bucket.
pub async fn notifications_are_kept_with_their_bucket(s: &dyn ObjectMeta) {
    assert!(matches!(
        s.set_bucket_notifications("nope", Some("[]")).await,
        Err(ObjectError::NoSuchBucket(_))
    ));
    assert!(matches!(
        s.set_bucket_notifications("nope", None).await,
        Err(ObjectError::NoSuchBucket(_))
    ));
    s.create_bucket("b1", 1, 10).await.unwrap();
    s.create_bucket("b0", 1, 10).await.unwrap();
    assert!(s.bucket_notifications().await.unwrap().is_empty());
    s.set_bucket_notifications("b1", Some("[1]")).await.unwrap();
    s.set_bucket_notifications("b0", Some("[0]")).await.unwrap();
    s.set_bucket_notifications("b1", Some("[2]")).await.unwrap();
    let pair = |b: &str, r: &str| (b.to_string(), r.to_string());
    assert_eq!(
        s.bucket_notifications().await.unwrap(),
        [pair("b0", "[0]"), pair("b1", "[2]")]
    );
    s.set_bucket_notifications("b1", None).await.unwrap();
    s.set_bucket_notifications("b1", None).await.unwrap();
    assert_eq!(s.bucket_notifications().await.unwrap(), [pair("b0", "[0]")]);
    s.delete_bucket("b0").await.unwrap();
    assert!(s.bucket_notifications().await.unwrap().is_empty());
    s.create_bucket("b0", 2, 10).await.unwrap();
    assert!(s.bucket_notifications().await.unwrap().is_empty());
}

/// Nodes creating buckets at once stop at the limit together, and one name is made once.
pub async fn racing_bucket_creations_stop_at_the_limit(s: &dyn ObjectMeta) {
    let names: Vec<String> = (0..12).map(|i| format!("b{i:02}")).collect();
    let made = join_all(names.iter().map(|n| s.create_bucket(n, 1, 5))).await;
    assert_eq!(made.iter().filter(|r| r.is_ok()).count(), 5);
    assert!(
        made.iter()
            .all(|r| matches!(r, Ok(()) | Err(ObjectError::TooMany(_))))
    );
    assert_eq!(s.list_buckets().await.unwrap().len(), 5);

    let same = join_all((0..8).map(|_| s.create_bucket("one", 1, 100))).await;
    assert_eq!(same.iter().filter(|r| r.is_ok()).count(), 1);
    assert!(
        same.iter()
            .all(|r| matches!(r, Ok(()) | Err(ObjectError::BucketExists(_))))
    );
}

/// Puts and deletes of one key at once: the object ends as one of the puts, each blob let
/// go of is answered exactly once (to the change that replaced or deleted it), and the
/// outbox tells the changes in the order they replaced one another.
pub async fn racing_changes_of_one_key_answer_each_blob_once(s: &dyn ObjectMeta) {
    s.create_bucket("b", 1, 10).await.unwrap();
    let blobs: Vec<String> = (0..16).map(|i| format!("blob{i:02}")).collect();
    let changes: Vec<(Option<&str>, ObjectChange)> = blobs
        .iter()
        .enumerate()
        .flat_map(|(i, blob)| {
            let mut record = object("b", "k", blob);
            record.etag = blob.clone();
            let mut changes = vec![(Some(blob.as_str()), ObjectChange::Put(Box::new(record)))];
            if i % 4 == 3 {
                changes.push((None, delete("b", "k")));
            }
            changes
        })
        .collect();
    let events = [event("ObjectChanged", "n", 1)];
    let answers = join_all(
        changes
            .iter()
            .map(|(_, change)| s.commit_object(change.clone(), &events)),
    )
    .await;
    let mut put_answers: BTreeMap<&str, Option<String>> = BTreeMap::new();
    let mut delete_answers: Vec<String> = Vec::new();
    for ((blob, _), answer) in changes.iter().zip(answers) {
        match blob {
            Some(blob) => {
                put_answers.insert(blob, answer.unwrap());
            }
            None => delete_answers.extend(answer.unwrap()),
        }
    }

    // Replay the outbox: each put must have answered what the key held just before it.
    let mut held: Option<String> = None;
    let mut deleted_in_order: Vec<String> = Vec::new();
    for e in s.pending_object_events("n", 0, 100).await.unwrap() {
        match e.etag {
            Some(blob) => {
                let replaced = held.replace(blob.clone());
                assert_eq!(put_answers[blob.as_str()], replaced, "put of {blob}");
            }
            None => deleted_in_order.push(held.take().expect("a delete event deleted something")),
        }
    }
    deleted_in_order.sort();
    delete_answers.sort();
    assert_eq!(deleted_in_order, delete_answers);
    match &held {
        Some(blob) => assert_eq!(&s.object("b", "k").await.unwrap().blob_id, blob),
        None => assert!(matches!(
            s.object("b", "k").await,
            Err(ObjectError::NoSuchKey(_))
        )),
    }
    let mut answered: Vec<String> = put_answers.into_values().flatten().collect();
    answered.extend(delete_answers);
    answered.extend(held);
    answered.sort();
    assert_eq!(answered, blobs, "every blob answered once, or held");
}

/// Nodes starting multipart uploads in one bucket at once stop at its limit together.
pub async fn racing_uploads_stop_at_the_limit(s: &dyn ObjectMeta) {
    s.create_bucket("b", 1, 10).await.unwrap();
    let ups: Vec<UploadRecord> = (0..10)
        .map(|i| upload(&format!("u{i}"), "b", "k"))
        .collect();
    let made = join_all(ups.iter().map(|u| s.create_upload(u, 3))).await;
    assert_eq!(made.iter().filter(|r| r.is_ok()).count(), 3);
    assert!(
        made.iter()
            .all(|r| matches!(r, Ok(()) | Err(ObjectError::TooMany(_))))
    );
    assert_eq!(s.list_uploads("b", "", None, 100).await.unwrap().len(), 3);
}

/// A bucket deleted while objects, uploads and parts are written into it: either the delete
/// is refused (something was put first) or nothing written is left behind, and every part's
/// blob is answered by the delete or refused to its writer.
pub async fn racing_writes_and_a_bucket_delete_leave_nothing_behind(s: &dyn ObjectMeta) {
    for round in 0..4 {
        let bucket = format!("b{round}");
        s.create_bucket(&bucket, 1, 10).await.unwrap();
        let (u, v) = (format!("{bucket}-u"), format!("{bucket}-v"));
        s.create_upload(&upload(&u, &bucket, "k"), 10)
            .await
            .unwrap();
        let puts: Vec<ObjectChange> = (0..6)
            .map(|i| ObjectChange::Put(Box::new(object(&bucket, &format!("k{i}"), "o"))))
            .collect();
        let parts: Vec<PartRecord> = (1..=6)
            .map(|n| part(&u, n, &format!("{bucket}-p{n}")))
            .collect();
        // The delete starts before, among or after the writers.
        let (early, late) = puts.split_at(round * 2);
        let second = upload(&v, &bucket, "k");
        let (put_early, deleted, put_late, parted, started) = futures_util::future::join5(
            join_all(early.iter().map(|c| s.commit_object(c.clone(), &[]))),
            s.delete_bucket(&bucket),
            join_all(late.iter().map(|c| s.commit_object(c.clone(), &[]))),
            join_all(parts.iter().map(|p| s.put_part(p))),
            s.create_upload(&second, 10),
        )
        .await;
        let put: Vec<_> = put_early.into_iter().chain(put_late).collect();
        let parts_kept: BTreeSet<String> = parts
            .iter()
            .zip(&parted)
            .filter(|(_, r)| r.is_ok())
            .map(|(p, _)| p.blob_id.clone())
            .collect();
        assert!(
            parted
                .iter()
                .all(|r| matches!(r, Ok(None) | Err(ObjectError::NoSuchUpload(_))))
        );
        match deleted {
            Ok(released) => {
                assert!(
                    put.iter()
                        .all(|r| matches!(r, Err(ObjectError::NoSuchBucket(_))))
                );
                assert!(matches!(
                    started,
                    Ok(()) | Err(ObjectError::NoSuchBucket(_))
                ));
                assert!(s.bucket(&bucket).await.unwrap().is_none());
                assert_eq!(released.into_iter().collect::<BTreeSet<_>>(), parts_kept);
                let refs = s.referenced_blobs().await.unwrap();
                assert!(parts.iter().all(|p| !refs.contains(&p.blob_id)));
                // Made again, the bucket starts empty.
                s.create_bucket(&bucket, 2, 10).await.unwrap();
                assert!(
                    s.list_uploads(&bucket, "", None, 10)
                        .await
                        .unwrap()
                        .is_empty()
                );
            }
            Err(ObjectError::BucketNotEmpty(_)) => {
                let listed = s
                    .list_objects(&bucket, &q("", None, None, 100))
                    .await
                    .unwrap();
                // The bucket was there throughout: every put went in.
                assert!(put.iter().all(|r| r.is_ok()));
                assert_eq!(listed.objects.len(), put.len());
                let stored: BTreeSet<String> = s
                    .list_parts(&u, 0, 100)
                    .await
                    .unwrap()
                    .into_iter()
                    .map(|p| p.blob_id)
                    .collect();
                assert_eq!(stored, parts_kept);
            }
            Err(e) => panic!("delete_bucket: {e}"),
        }
    }
}

/// Parts put while their upload completes: each part's blob is answered once, by the put
/// that replaced it, by the completion, or refused to its writer; the object alone is left.
pub async fn racing_parts_and_a_completion_answer_each_blob_once(s: &dyn ObjectMeta) {
    s.create_bucket("b", 1, 10).await.unwrap();
    s.create_upload(&upload("u", "b", "k"), 10).await.unwrap();
    let parts: Vec<PartRecord> = (0..12)
        .map(|i| part("u", 1 + i % 3, &format!("p{i:02}")))
        .collect();
    let (early, late) = parts.split_at(6);
    let ((early, completed), late) = futures_util::future::join(
        futures_util::future::join(
            join_all(early.iter().map(|p| s.put_part(p))),
            s.complete_upload("u", object("b", "k", "whole"), &[]),
        ),
        join_all(late.iter().map(|p| s.put_part(p))),
    )
    .await;
    let mut answered: Vec<String> = completed.unwrap();
    for (p, r) in parts.iter().zip(early.into_iter().chain(late)) {
        match r {
            Ok(replaced) => answered.extend(replaced),
            // Refused: its writer removes the blob.
            Err(ObjectError::NoSuchUpload(_)) => answered.push(p.blob_id.clone()),
            Err(e) => panic!("put_part: {e}"),
        }
    }
    answered.sort();
    let mut all: Vec<String> = parts.iter().map(|p| p.blob_id.clone()).collect();
    all.sort();
    assert_eq!(answered, all);
    assert_eq!(
        s.referenced_blobs().await.unwrap(),
        ["whole".to_string()].into()
    );
}

/// Events of changes committed at once are numbered in the order they commit: a reader of
/// the outbox never finds an event numbered before one it has already read (it would
/// deliver it out of order, or a sequencer would go backwards).
pub async fn racing_commits_number_events_in_commit_order(s: &dyn ObjectMeta) {
    use std::sync::atomic::{AtomicBool, Ordering};

    s.create_bucket("b", 1, 10).await.unwrap();
    let done = AtomicBool::new(false);
    let changes: Vec<ObjectChange> = (0..256)
        .map(|i| ObjectChange::Put(Box::new(object("b", &format!("k{i:02}"), "o"))))
        .collect();
    let events = [event("ObjectCreated:Put", "n", 1)];
    let writers = async {
        let answers = join_all(changes.iter().map(|c| s.commit_object(c.clone(), &events))).await;
        done.store(true, Ordering::SeqCst);
        answers
    };
    let reader = async {
        let mut seen: BTreeSet<i64> = BTreeSet::new();
        loop {
            let last = done.load(Ordering::SeqCst);
            let read = s.pending_object_events("n", 0, 1000).await.unwrap();
            let before = seen.last().copied().unwrap_or(0);
            for e in &read {
                if seen.insert(e.seq) {
                    assert!(e.seq > before, "event {} appeared after {before}", e.seq);
                }
            }
            if last {
                return seen;
            }
        }
    };
    let (answers, seen) = futures_util::future::join(writers, reader).await;
    assert!(answers.iter().all(|r| r.is_ok()));
    assert_eq!(seen.len(), 256);
}
