//! Versions, aliases and canaries through the API and the CLI, against the real server.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::harness::{Server, header, project};

/// A project whose function answers `answer` (and fails when its env says so).
fn release(root: &std::path::Path, dir: &str, answer: &str, extra: &str) -> std::path::PathBuf {
    project(
        root,
        dir,
        &format!("functions:\n  rel:\n    runtime: python3\n    handler: main.handler\n{extra}"),
        &[(
            "main.py",
            &format!(
                "import os\ndef handler(event, context):\n    if os.environ.get('FAIL'):\n        raise RuntimeError('broken release')\n    return {{'answer': '{answer}', 'version': context.function_version}}\n"
            ),
        )],
    )
}

/// Calls `target` and returns (answer, version header, error type).
async fn call(server: &Server, target: &str, affinity: Option<&str>) -> (String, String, String) {
    let mut req = server
        .req(Method::POST, &format!("/v1/functions/{target}/invocations"))
        .body("{}");
    if let Some(key) = affinity {
        req = req.header("x-nimbus-affinity", key);
    }
    let res = req.send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let version = header(&res, "x-nimbus-version").to_string();
    let error = header(&res, "x-nimbus-error-type").to_string();
    let body: Value = res.json().await.unwrap();
    let answer = body["answer"].as_str().unwrap_or_default().to_string();
    if error.is_empty() {
        // The function sees the version it runs as, as on Lambda.
        assert_eq!(body["version"], version.as_str());
    }
    (answer, version, error)
}

async fn publish(server: &Server) -> (StatusCode, Value) {
    let res = server
        .req(Method::POST, "/v1/functions/rel/versions")
        .json(&json!({"description": "a release"}))
        .send()
        .await
        .unwrap();
    (res.status(), res.json().await.unwrap())
}

async fn set_alias(server: &Server, alias: &str, body: Value) -> (StatusCode, Value) {
    let res = server
        .req(Method::PUT, &format!("/v1/functions/rel/aliases/{alias}"))
        .json(&body)
        .send()
        .await
        .unwrap();
    (res.status(), res.json().await.unwrap())
}

#[tokio::test]
async fn versions_aliases_and_a_sticky_canary_survive_a_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let server = Server::start(&data);
    server.deploy(&release(tmp.path(), "one", "one", "")).await;
    let (status, v1) = publish(&server).await;
    assert_eq!(
        (status, v1["version"].as_u64()),
        (StatusCode::CREATED, Some(1))
    );
    // Nothing changed: the same version, not a new one.
    let (status, again) = publish(&server).await;
    assert_eq!(
        (status, again["version"].as_u64()),
        (StatusCode::OK, Some(1))
    );

    server.deploy(&release(tmp.path(), "two", "two", "")).await;
    let (status, v2) = publish(&server).await;
    assert_eq!(
        (status, v2["version"].as_u64()),
        (StatusCode::CREATED, Some(2))
    );
    // Both versions answer, each with its own code; the bare name is $LATEST.
    assert_eq!(call(&server, "rel:1", None).await.0, "one");
    assert_eq!(call(&server, "rel:2", None).await.0, "two");
    let (answer, version, _) = call(&server, "rel", None).await;
    assert_eq!((answer.as_str(), version.as_str()), ("two", "$LATEST"));

    // An alias on version 1, then moved to 2.
    let (status, _) = set_alias(&server, "prod", json!({"version": 1})).await;
    assert_eq!(status, StatusCode::OK);
    let (answer, version, _) = call(&server, "rel:prod", None).await;
    assert_eq!((answer.as_str(), version.as_str()), ("one", "1"));
    set_alias(&server, "prod", json!({"version": 2})).await;
    assert_eq!(call(&server, "rel:prod", None).await.1, "2");

    // A 10% canary: over 2,000 calls version 2 gets 8% to 12%.
    let (status, alias) = set_alias(
        &server,
        "prod",
        json!({"version": 1, "canary": {"version": 2, "percent": 10}}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{alias}");
    let mut to_canary = 0;
    for batch in 0..100 {
        let calls: Vec<_> = (0..20)
            .map(|_| {
                tokio::spawn(
                    server
                        .req(Method::POST, "/v1/functions/rel:prod/invocations")
                        .body("{}")
                        .send(),
                )
            })
            .collect();
        for c in calls {
            let res = c.await.unwrap().unwrap();
            if header(&res, "x-nimbus-version") == "2" {
                to_canary += 1;
            }
        }
        let _ = batch;
    }
    assert!(
        (160..=240).contains(&to_canary),
        "{to_canary} of 2000 calls went to the canary"
    );
    // Each version keeps its own warm instances: alternating between them starts no more
    // than each pool's cap (10 each), not an instance per switch.
    let events: Value = server.get_json("/v1/events?function=rel&limit=1000").await;
    let started = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["event"] == "started")
        .count();
    assert!(started <= 25, "{started} instances started");
    // The same affinity key always gets the same version.
    let mut seen = std::collections::HashSet::new();
    for user in 0..40 {
        let key = format!("user-{user}");
        let first = call(&server, "rel:prod", Some(&key)).await.1;
        for _ in 0..4 {
            assert_eq!(
                call(&server, "rel:prod", Some(&key)).await.1,
                first,
                "{key}"
            );
        }
        seen.insert(first);
    }
    assert!(seen.contains("1"), "{seen:?}");

    // A version in use cannot be deleted, and the answer says by what.
    let res = server
        .req(Method::DELETE, "/v1/functions/rel/versions/2")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::CONFLICT);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["code"], "in_use");
    assert!(
        body["message"].as_str().unwrap().contains("alias `prod`"),
        "{body}"
    );

    // After a restart everything is still there.
    drop(server);
    let server = Server::start(&data);
    assert_eq!(call(&server, "rel:1", None).await.0, "one");
    let listed = server.cli(&["versions", "rel"]).await;
    assert_eq!(listed.code, 0, "{}", listed.stderr);
    assert!(listed.stdout.contains("a release"), "{}", listed.stdout);
    let aliases = server.cli(&["alias", "ls", "rel"]).await;
    assert!(
        aliases.stdout.contains("version 1, canary 2 at 10"),
        "{}",
        aliases.stdout
    );
    // Unknown versions and aliases say so.
    let res = server
        .req(Method::POST, "/v1/functions/rel:7/invocations")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["code"], "version_not_found");
    let res = server
        .req(Method::POST, "/v1/functions/rel:staging/invocations")
        .send()
        .await
        .unwrap();
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["code"], "alias_not_found");
}

#[tokio::test]
async fn a_failing_canary_is_rolled_back() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("data"));
    server
        .deploy(&release(tmp.path(), "good", "good", ""))
        .await;
    publish(&server).await;
    server
        .deploy(&release(tmp.path(), "bad", "bad", "    env: {FAIL: '1'}\n"))
        .await;
    publish(&server).await;
    let (status, _) = set_alias(
        &server,
        "prod",
        json!({"version": 1, "canary": {"version": 2, "percent": 50,
            "guard": {"max_error_rate": 0.2, "min_calls": 5, "window_ms": 60000}}}),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let mut failures = 0;
    for _ in 0..60 {
        if !call(&server, "rel:prod", None).await.2.is_empty() {
            failures += 1;
        }
    }
    // The guard tripped after a handful of failures; every later call ran version 1.
    assert!((5..=15).contains(&failures), "{failures} failures");
    let alias: Value = server.get_json("/v1/functions/rel/aliases/prod").await;
    assert_eq!(alias["canary"]["percent"], 0.0, "{alias}");
    assert!(
        alias["canary"]["rolled_back"]
            .as_str()
            .unwrap()
            .contains("rolled back"),
        "{alias}"
    );
    for _ in 0..20 {
        assert_eq!(call(&server, "rel:prod", None).await.1, "1");
    }
    let events: Value = server.get_json("/v1/events?function=rel").await;
    assert!(
        events["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["event"] == "rolled_back"),
        "{events}"
    );
}

#[tokio::test]
async fn deploy_publish_moves_the_aliases_of_the_manifest() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("data"));
    let first = release(tmp.path(), "v1", "one", "    aliases: {prod: {}}\n");
    let run = server
        .cli(&["deploy", "--publish", first.to_str().unwrap()])
        .await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.stdout.contains("published rel:1"), "{}", run.stdout);
    assert_eq!(call(&server, "rel:prod", None).await.0, "one");
    // The next release goes out as a 20% canary of prod.
    let second = release(
        tmp.path(),
        "v2",
        "two",
        "    aliases: {prod: {canary_percent: 20}}\n",
    );
    let run = server
        .cli(&["deploy", "--publish", second.to_str().unwrap()])
        .await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let alias: Value = server.get_json("/v1/functions/rel/aliases/prod").await;
    assert_eq!(alias["version"], 1);
    assert_eq!(alias["canary"], json!({"version": 2, "percent": 20.0}));
    // The CLI sets, lists and refuses in one line.
    let run = server.cli(&["alias", "set", "rel", "prod", "2"]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let run = server.cli(&["version-rm", "rel", "2"]).await;
    assert_eq!(run.code, 1);
    assert!(
        run.stderr
            .starts_with("error: version 2 of `rel` is in use by alias `prod`"),
        "{}",
        run.stderr
    );
    let run = server.cli(&["invoke", "rel:prod"]).await;
    assert!(run.stdout.contains("two"), "{}", run.stdout);
}

#[tokio::test]
async fn a_route_can_call_a_version_or_an_alias() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("data"));
    server.deploy(&release(tmp.path(), "one", "one", "")).await;
    publish(&server).await;
    set_alias(&server, "live", json!({"version": 1})).await;
    // $LATEST moves on, with routes to the published version and to the alias.
    let routes = "    triggers:\n      - http: {path: /pinned, methods: [GET], auth: anonymous, qualifier: '1'}\n      - http: {path: /live, methods: [GET], auth: anonymous, qualifier: live}\n      - http: {path: /latest, methods: [GET], auth: anonymous}\n";
    server
        .deploy(&release(tmp.path(), "two", "two", routes))
        .await;
    for (path, answer, version) in [
        ("/pinned", "one", "1"),
        ("/live", "one", "1"),
        ("/latest", "two", "$LATEST"),
    ] {
        let res = server.get(path).send().await.unwrap();
        assert_eq!(res.status(), StatusCode::OK, "{path}");
        assert_eq!(header(&res, "x-nimbus-version"), version, "{path}");
        let body: Value = res.json().await.unwrap();
        assert_eq!(body["answer"], answer, "{path}");
    }
    // What a route points at cannot be deleted from under it.
    for path in [
        "/v1/functions/rel/versions/1",
        "/v1/functions/rel/aliases/live",
    ] {
        let res = server.req(Method::DELETE, path).send().await.unwrap();
        assert_eq!(res.status(), StatusCode::CONFLICT, "{path}");
        let body: Value = res.json().await.unwrap();
        assert!(
            body["message"].as_str().unwrap().contains("route"),
            "{body}"
        );
    }
}
