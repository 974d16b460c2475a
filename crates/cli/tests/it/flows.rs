//! Workflows end to end: definitions deployed from `nimbus.yaml`, executions of real Python
//! functions, task tokens, and executions that survive the server's SIGKILL. Calls are
//! counted in Redis (the machine's, as the queue tests use it), because a count must
//! survive the server that made the calls.

use std::io::{BufRead, BufReader, Write};
use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::harness::{Server, examples, project};

/// A Python module whose `handler` counts its calls in Redis under
/// `{event.prefix}:{event.item}`, sleeps `event.sleep` seconds, and returns the item.
const COUNTER: &str = concat!(
    "import socket, time\n",
    "def incr(key):\n",
    "    s = socket.create_connection(('127.0.0.1', 6379))\n",
    "    s.sendall(('INCR %s\\r\\n' % key).encode())\n",
    "    s.recv(64)\n",
    "    s.close()\n",
    "def handler(event, ctx):\n",
    "    incr('%s:%s' % (event['prefix'], event['item']))\n",
    "    time.sleep(event.get('sleep', 0))\n",
    "    return {'item': event['item']}\n",
);

/// How many times `key` was counted (0 when never).
fn redis_count(key: &str) -> i64 {
    let mut s =
        std::net::TcpStream::connect("127.0.0.1:6379").expect("Redis on 6379 (.ci/run starts it)");
    s.write_all(format!("GET {key}\r\n").as_bytes()).unwrap();
    // One reader for both lines: a second would miss what the first buffered.
    let mut reader = BufReader::new(&s);
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    if line.starts_with("$-1") {
        return 0;
    }
    let mut value = String::new();
    reader.read_line(&mut value).unwrap();
    value.trim().parse().unwrap_or(0)
}

fn unique(what: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("nimbus-flow-test:{what}:{}:{nanos}", std::process::id())
}

/// A project with the counter function `count` and one flow `f` of `definition`.
fn counter_project(root: &std::path::Path, name: &str, definition: &Value) -> std::path::PathBuf {
    project(
        root,
        name,
        "functions:\n  count:\n    runtime: python3\n    handler: main.handler\n    timeout_ms: 10000\n    max_instances: 40\nflows:\n  - name: f\n    definition: f.asl.json\n",
        &[
            ("main.py", COUNTER),
            ("f.asl.json", &definition.to_string()),
        ],
    )
}

async fn start(server: &Server, flow: &str, input: Value) -> Value {
    let res = server
        .req(Method::POST, &format!("/v1/flows/{flow}/executions"))
        .json(&json!({"input": input}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
    res.json().await.unwrap()
}

/// Waits (bounded) until the execution stops.
async fn finished(server: &Server, id: &str, within: Duration) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let e = server.get_json(&format!("/v1/executions/{id}")).await;
        if e["status"] != "RUNNING" {
            return e;
        }
        assert!(
            Instant::now() < deadline,
            "execution {id} still running: {e}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn history(server: &Server, id: &str) -> Vec<Value> {
    let h = server
        .get_json(&format!("/v1/executions/{id}/history"))
        .await;
    h["events"].as_array().unwrap().clone()
}

fn kinds(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .map(|e| e["type"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn the_order_saga_succeeds_or_compensates_and_its_calls_are_records_of_the_execution() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(tmp.path());
    server.deploy(&examples().join("order-saga")).await;
    let order = |card: &str, address: &str| {
        json!({"order_id": "o-1", "card": card, "address": address, "items": [{"sku": "tea", "price": 4}]}).to_string()
    };

    let ok = server
        .cli(&[
            "flow",
            "start",
            "order",
            "--sync",
            "--input",
            &order("ok", "1 Main St"),
            "--name",
            "good",
            "-o",
            "json",
        ])
        .await;
    assert_eq!(ok.code, 0, "{}{}", ok.stdout, ok.stderr);
    let ok: Value = serde_json::from_str(&ok.stdout).unwrap();
    assert_eq!(ok["status"], "SUCCEEDED");
    assert_eq!(ok["output"]["shipment"]["tracking"], "trk-o-1");
    assert_eq!(ok["output"]["payment"]["payment_id"], "pay-o-1");

    // A declined card releases the reservation; an address no carrier serves refunds the
    // charge and releases: both end in OrderFailed.
    let declined = server
        .cli(&[
            "flow",
            "start",
            "order",
            "--sync",
            "--input",
            &order("declined", "1 Main St"),
            "-o",
            "json",
        ])
        .await;
    assert_eq!(declined.code, 1);
    let declined: Value = serde_json::from_str(&declined.stdout).unwrap();
    assert_eq!(declined["status"], "FAILED");
    assert_eq!(declined["error"], "OrderFailed");
    let names = |events: &[Value]| -> Vec<String> {
        events
            .iter()
            .filter(|e| e["type"] == "TaskStateEntered")
            .map(|e| {
                e["stateEnteredEventDetails"]["name"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect()
    };
    let h = history(&server, declined["id"].as_str().unwrap()).await;
    assert_eq!(names(&h), ["Reserve", "Charge", "Release"]);

    let lost = server
        .cli(&[
            "flow",
            "start",
            "order",
            "--sync",
            "--input",
            &order("ok", "nowhere"),
            "-o",
            "json",
        ])
        .await;
    let lost: Value = serde_json::from_str(&lost.stdout).unwrap();
    assert_eq!(lost["status"], "FAILED");
    let h = history(&server, lost["id"].as_str().unwrap()).await;
    assert_eq!(
        names(&h),
        ["Reserve", "Charge", "Ship", "Refund", "Release"]
    );
    assert!(h.iter().any(|e| e["type"] == "TaskFailed"
        && e["taskFailedEventDetails"]["error"] == "ShippingUnavailable"));

    // The same name and input is the same execution; another input is refused.
    let again = server.req(Method::POST, "/v1/flows/order/executions").json(&json!({"name": "good", "input": serde_json::from_str::<Value>(&order("ok", "1 Main St")).unwrap()})).send().await.unwrap();
    assert_eq!(again.status(), StatusCode::OK);
    assert_eq!(again.json::<Value>().await.unwrap()["id"], ok["id"]);
    let clash = server
        .req(Method::POST, "/v1/flows/order/executions")
        .json(&json!({"name": "good", "input": {}}))
        .send()
        .await
        .unwrap();
    assert_eq!(clash.status(), StatusCode::CONFLICT);
    assert_eq!(
        clash.json::<Value>().await.unwrap()["code"],
        "execution_exists"
    );

    // Each task's call is an invocation record naming the flow and the execution.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let records = server
            .get_json("/v1/functions/ship_order/invocations?limit=10")
            .await;
        let triggers: Vec<&str> = records["invocations"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|r| r["trigger"].as_str())
            .collect();
        if triggers.contains(&"flow:order/good") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no record of the flow's call: {records}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let listed = server
        .cli(&[
            "flow",
            "executions",
            "order",
            "--status",
            "FAILED",
            "-o",
            "json",
        ])
        .await;
    let listed: Value = serde_json::from_str(&listed.stdout).unwrap();
    assert_eq!(listed["executions"].as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn every_state_type_runs_against_real_functions() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(tmp.path());
    let prefix = unique("states");
    let definition = json!({
        "StartAt": "Setup",
        "States": {
            "Setup": {"Type": "Pass", "Parameters": {"prefix.$": "$.prefix", "items.$": "States.ArrayRange(1, 3, 1)", "kind": "fan"}, "Next": "Route"},
            "Route": {"Type": "Choice", "Choices": [
                {"And": [{"Variable": "$.kind", "StringMatches": "f*"}, {"Variable": "$.items[0]", "NumericEquals": 1}], "Next": "Both"}
            ], "Default": "Broken"},
            "Broken": {"Type": "Fail", "Error": "Unreachable"},
            "Both": {"Type": "Parallel", "ResultPath": "$.parallel", "Next": "Pause", "Branches": [
                {"StartAt": "Each", "States": {"Each": {"Type": "Map", "ItemsPath": "$.items", "MaxConcurrency": 2,
                    "ItemSelector": {"prefix.$": "$.prefix", "item.$": "States.Format('map-{}', $$.Map.Item.Value)"},
                    "ItemProcessor": {"StartAt": "Call", "States": {"Call": {"Type": "Task", "Resource": "nimbus:function:count", "OutputPath": "$.item", "End": true}}},
                    "End": true}}},
                {"StartAt": "One", "States": {"One": {"Type": "Task", "Resource": "arn:aws:states:::lambda:invoke",
                    "Parameters": {"FunctionName": "count", "Payload": {"prefix.$": "$.prefix", "item": "single"}},
                    "ResultSelector": {"item.$": "$.Payload.item", "code.$": "$.StatusCode"}, "End": true}}}
            ]},
            "Pause": {"Type": "Wait", "Seconds": 1, "Next": "Done"},
            "Done": {"Type": "Succeed", "OutputPath": "$.parallel"}
        }
    });
    server
        .deploy(&counter_project(tmp.path(), "states", &definition))
        .await;
    let e = start(&server, "f", json!({"prefix": prefix})).await;
    let e = finished(&server, e["id"].as_str().unwrap(), Duration::from_secs(30)).await;
    assert_eq!(e["status"], "SUCCEEDED", "{e}");
    assert_eq!(
        e["output"],
        json!([["map-1", "map-2", "map-3"], {"item": "single", "code": 200}])
    );
    for item in ["map-1", "map-2", "map-3", "single"] {
        assert_eq!(redis_count(&format!("{prefix}:{item}")), 1, "{item}");
    }
    let started = chrono_ms(e["started_at"].as_str().unwrap());
    let stopped = chrono_ms(e["stopped_at"].as_str().unwrap());
    assert!(stopped - started >= 1000, "the Wait waited: {e}");
    let h = history(&server, e["id"].as_str().unwrap()).await;
    let k = kinds(&h);
    for kind in [
        "PassStateEntered",
        "ChoiceStateEntered",
        "ParallelStateStarted",
        "MapStateStarted",
        "MapIterationSucceeded",
        "WaitStateEntered",
        "SucceedStateEntered",
        "ExecutionSucceeded",
    ] {
        assert!(k.iter().any(|x| x == kind), "{kind} missing from {k:?}");
    }
}

/// `2026-12-06T15:00:01.250Z` in Unix ms (the format is fixed).
fn chrono_ms(t: &str) -> i64 {
    let n = |a: usize, b: usize| t[a..b].parse::<i64>().unwrap();
    let (y, m, d) = (n(0, 4), n(5, 7), n(8, 10));
    let days = {
        let y = if m <= 2 { y - 1 } else { y };
        let era = y.div_euclid(400);
        let yoe = y - era * 400;
        let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
        era * 146_097 + yoe * 365 + yoe / 4 - yoe / 100 + doy - 719_468
    };
    ((days * 24 + n(11, 13)) * 60 + n(14, 16)) * 60_000 + n(17, 19) * 1000 + n(20, 23)
}

#[tokio::test]
async fn a_map_of_a_thousand_items_runs_forty_at_a_time() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(tmp.path());
    let prefix = unique("map1000");
    let definition = json!({
        "StartAt": "Fan",
        "States": {
            "Fan": {"Type": "Map", "ItemsPath": "$.items", "MaxConcurrency": 40,
                "ItemSelector": {"prefix.$": "$.prefix", "item.$": "$$.Map.Item.Value"},
                "ItemProcessor": {"StartAt": "Call", "States": {"Call": {"Type": "Task", "Resource": "nimbus:function:count", "OutputPath": "$.item", "End": true}}},
                "ResultSelector": {"count.$": "States.ArrayLength($)", "last.$": "$[999]"},
                "End": true}
        }
    });
    server
        .deploy(&counter_project(tmp.path(), "map1000", &definition))
        .await;
    let items: Vec<i64> = (0..1000).collect();
    let e = start(&server, "f", json!({"prefix": prefix, "items": items})).await;
    let e = finished(&server, e["id"].as_str().unwrap(), Duration::from_secs(120)).await;
    assert_eq!(e["status"], "SUCCEEDED", "{e}");
    assert_eq!(e["output"], json!({"count": 1000, "last": 999}));
    for i in [0, 1, 500, 999] {
        assert_eq!(redis_count(&format!("{prefix}:{i}")), 1);
    }
}

/// The task token in the payload of the execution's TaskScheduled event.
async fn token_of(server: &Server, id: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        for e in history(server, id).await {
            if e["type"] == "TaskScheduled" {
                let params: Value = serde_json::from_str(
                    e["taskScheduledEventDetails"]["parameters"]
                        .as_str()
                        .unwrap(),
                )
                .unwrap();
                return params["Payload"]["token"].as_str().unwrap().to_string();
            }
        }
        assert!(Instant::now() < deadline, "no task scheduled");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn wait_for_task_token_succeeds_fails_and_times_out_without_heartbeats() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(tmp.path());
    let definition = json!({
        "StartAt": "Approve",
        "States": {
            "Approve": {"Type": "Task", "Resource": "arn:aws:states:::lambda:invoke.waitForTaskToken",
                "Parameters": {"FunctionName": "count", "Payload": {"prefix": "approval", "item.$": "$$.Execution.Name", "token.$": "$$.Task.Token"}},
                "HeartbeatSeconds": 2, "TimeoutSeconds": 30, "ResultPath": "$.approval", "End": true}
        }
    });
    server
        .deploy(&counter_project(tmp.path(), "token", &definition))
        .await;

    let ok = start(&server, "f", json!({"order": 1})).await;
    let id = ok["id"].as_str().unwrap();
    let token = token_of(&server, id).await;
    // The function returned, the task still waits; a heartbeat keeps it alive past 2 s.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let hb = server.cli(&["flow", "heartbeat", &token]).await;
    assert_eq!(hb.code, 0, "{}", hb.stderr);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(
        server.get_json(&format!("/v1/executions/{id}")).await["status"],
        "RUNNING"
    );
    let sent = server
        .cli(&[
            "flow",
            "send-success",
            &token,
            "--task-output",
            r#"{"approved": true}"#,
        ])
        .await;
    assert_eq!(sent.code, 0, "{}", sent.stderr);
    let e = finished(&server, id, Duration::from_secs(10)).await;
    assert_eq!(e["status"], "SUCCEEDED");
    assert_eq!(
        e["output"],
        json!({"order": 1, "approval": {"approved": true}})
    );
    // The token's task is over: answering it again says so.
    let late = server.cli(&["flow", "send-success", &token]).await;
    assert_eq!(late.code, 1);
    assert!(
        late.stderr.contains("task_not_found") || late.stderr.contains("no longer waits"),
        "{}",
        late.stderr
    );
    let forged = server
        .cli(&[
            "flow",
            "send-success",
            &format!("{id}:1-0:{}", "0".repeat(32)),
        ])
        .await;
    assert!(forged.stderr.contains("not valid"), "{}", forged.stderr);

    let rejected = start(&server, "f", json!({"order": 2})).await;
    let id = rejected["id"].as_str().unwrap();
    let token = token_of(&server, id).await;
    let sent = server
        .cli(&[
            "flow",
            "send-failure",
            &token,
            "--error",
            "Rejected",
            "--cause",
            "too expensive",
        ])
        .await;
    assert_eq!(sent.code, 0, "{}", sent.stderr);
    let e = finished(&server, id, Duration::from_secs(10)).await;
    assert_eq!(
        (
            e["status"].as_str(),
            e["error"].as_str(),
            e["cause"].as_str()
        ),
        (Some("FAILED"), Some("Rejected"), Some("too expensive"))
    );

    let silent = start(&server, "f", json!({"order": 3})).await;
    let e = finished(
        &server,
        silent["id"].as_str().unwrap(),
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(e["error"], "States.HeartbeatTimeout", "{e}");
}

#[tokio::test]
async fn invalid_definitions_are_refused_at_deploy_naming_the_state_and_field() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(tmp.path());
    let cases = [
        (
            json!({"StartAt": "A", "States": {"A": {"Type": "Pass", "Next": "Nowhere"}}}),
            "States.A.Next: 'Nowhere' is not a state",
        ),
        (
            json!({"StartAt": "A", "States": {"A": {"Type": "Pass", "End": true}, "B": {"Type": "Pass", "End": true}}}),
            "States.B: cannot be reached",
        ),
        (
            json!({"StartAt": "A", "States": {"A": {"Type": "Task", "Resource": "nimbus:function:count", "End": true,
            "Catch": [{"ErrorEquals": ["States.ALL"], "Next": "A"}, {"ErrorEquals": ["X"], "Next": "A"}]}}}),
            "States.A.Catch[0].ErrorEquals: States.ALL must be in the last",
        ),
        (
            json!({"StartAt": "A", "States": {"A": {"Type": "Pass", "End": true, "InputPath": "items"}}}),
            "States.A.InputPath",
        ),
        (
            json!({"StartAt": "A", "States": {"A": {"Type": "Task", "Resource": "nimbus:function:missing", "End": true}}}),
            "calls function `missing`, which does not exist",
        ),
    ];
    for (n, (definition, expected)) in cases.into_iter().enumerate() {
        let dir = counter_project(tmp.path(), &format!("bad{n}"), &definition);
        let run = server.cli(&["deploy", dir.to_str().unwrap()]).await;
        assert_eq!(run.code, 1, "{definition}");
        assert!(
            run.stderr.contains(expected),
            "{definition}\n{}",
            run.stderr
        );
        assert!(run.stderr.contains("invalid_definition"), "{}", run.stderr);
    }
    let res = server
        .req(Method::PUT, "/v1/flows/x")
        .json(&json!({"definition": {"StartAt": "A"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    let missing = server
        .req(Method::POST, "/v1/flows/nope/executions")
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    assert_eq!(
        missing.json::<Value>().await.unwrap()["code"],
        "flow_not_found"
    );
}

/// The keys counted once each, and the extra calls (a call cut off by the SIGKILL runs
/// again: at least once, as on Step Functions).
fn counted(prefix: &str, items: &[String]) -> (usize, i64) {
    let counts: Vec<i64> = items
        .iter()
        .map(|i| redis_count(&format!("{prefix}:{i}")))
        .collect();
    assert!(counts.iter().all(|c| *c >= 1), "every item ran: {counts:?}");
    (
        counts.iter().filter(|c| **c == 1).count(),
        counts.iter().map(|c| c - 1).sum(),
    )
}

#[tokio::test]
async fn sigkill_during_a_map_then_the_execution_completes_and_no_completed_task_runs_again() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let server = Server::start(&data);
    let prefix = unique("killmap");
    let definition = json!({
        "StartAt": "Fan",
        "States": {"Fan": {"Type": "Map", "ItemsPath": "$.items", "MaxConcurrency": 5,
            "ItemSelector": {"prefix.$": "$.prefix", "item.$": "$$.Map.Item.Value", "sleep": 0.2},
            "ItemProcessor": {"StartAt": "Call", "States": {"Call": {"Type": "Task", "Resource": "nimbus:function:count", "OutputPath": "$.item", "End": true}}},
            "End": true}}
    });
    server
        .deploy(&counter_project(tmp.path(), "killmap", &definition))
        .await;
    let items: Vec<String> = (0..40).map(|i| format!("i{i}")).collect();
    let e = start(&server, "f", json!({"prefix": prefix, "items": items})).await;
    let id = e["id"].as_str().unwrap().to_string();
    // Kill once some iterations have finished and others run.
    let deadline = Instant::now() + Duration::from_secs(20);
    let done_before = loop {
        let h = history(&server, &id).await;
        let done: Vec<i64> = h
            .iter()
            .filter(|e| e["type"] == "MapIterationSucceeded")
            .map(|e| {
                e["mapIterationSucceededEventDetails"]["index"]
                    .as_i64()
                    .unwrap()
            })
            .collect();
        if done.len() >= 10 {
            break done;
        }
        assert!(Instant::now() < deadline, "the Map did not progress");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    server.kill();
    let server = Server::start(&data);
    let e = finished(&server, &id, Duration::from_secs(60)).await;
    assert_eq!(e["status"], "SUCCEEDED", "{e}");
    assert_eq!(e["output"], json!(items));
    // Iterations committed before the kill never ran again; at most the five in flight did.
    for i in &done_before {
        assert_eq!(
            redis_count(&format!("{prefix}:i{i}")),
            1,
            "iteration {i} completed before the kill"
        );
    }
    let (_, extra) = counted(&prefix, &items);
    assert!(
        extra <= 5,
        "{extra} calls ran twice; at most the 5 in flight may"
    );
}

#[tokio::test]
async fn sigkill_during_a_wait_then_the_execution_completes_on_time_with_each_task_once() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let server = Server::start(&data);
    let prefix = unique("killwait");
    let definition = json!({
        "StartAt": "Before",
        "States": {
            "Before": {"Type": "Task", "Resource": "nimbus:function:count", "Parameters": {"prefix.$": "$.prefix", "item": "before"}, "ResultPath": null, "Next": "Pause"},
            "Pause": {"Type": "Wait", "Seconds": 3, "Next": "After"},
            "After": {"Type": "Task", "Resource": "nimbus:function:count", "Parameters": {"prefix.$": "$.prefix", "item": "after"}, "End": true}
        }
    });
    server
        .deploy(&counter_project(tmp.path(), "killwait", &definition))
        .await;
    let e = start(&server, "f", json!({"prefix": prefix})).await;
    let id = e["id"].as_str().unwrap().to_string();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !kinds(&history(&server, &id).await)
        .iter()
        .any(|k| k == "WaitStateEntered")
    {
        assert!(Instant::now() < deadline, "the Wait was not entered");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server.kill();
    let server = Server::start(&data);
    let e = finished(&server, &id, Duration::from_secs(20)).await;
    assert_eq!(e["status"], "SUCCEEDED", "{e}");
    assert_eq!(e["output"], json!({"item": "after"}));
    assert_eq!(redis_count(&format!("{prefix}:before")), 1);
    assert_eq!(redis_count(&format!("{prefix}:after")), 1);
    let started = chrono_ms(e["started_at"].as_str().unwrap());
    let stopped = chrono_ms(e["stopped_at"].as_str().unwrap());
    assert!(
        stopped - started >= 3000,
        "the Wait kept its time across the restart: {e}"
    );
}

#[tokio::test]
async fn stop_ends_a_running_execution_and_its_wait_never_fires() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(tmp.path());
    let prefix = unique("stop");
    let definition = json!({
        "StartAt": "Pause",
        "States": {
            "Pause": {"Type": "Wait", "Seconds": 2, "Next": "After"},
            "After": {"Type": "Task", "Resource": "nimbus:function:count", "Parameters": {"prefix.$": "$.prefix", "item": "after"}, "End": true}
        }
    });
    server
        .deploy(&counter_project(tmp.path(), "stop", &definition))
        .await;
    let e = start(&server, "f", json!({"prefix": prefix})).await;
    let id = e["id"].as_str().unwrap();
    let run = server
        .cli(&[
            "flow",
            "stop",
            id,
            "--error",
            "Cancelled",
            "--cause",
            "by the test",
            "-o",
            "json",
        ])
        .await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let stopped: Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(stopped["status"], "ABORTED");
    assert_eq!(stopped["error"], "Cancelled");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(redis_count(&format!("{prefix}:after")), 0);
    assert_eq!(
        kinds(&history(&server, id).await)
            .last()
            .map(String::as_str),
        Some("ExecutionAborted")
    );
}

#[tokio::test]
async fn the_map_example_resizes_every_object_in_order() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(tmp.path());
    server.deploy(&examples().join("map-objects")).await;
    let objects: Vec<Value> = (0..25)
        .map(|i| json!({"key": format!("p{i}.jpg")}))
        .collect();
    let input = json!({"bucket": "photos", "objects": objects}).to_string();
    let run = server
        .cli(&[
            "flow",
            "start",
            "resize-all",
            "--input",
            &input,
            "--sync",
            "-o",
            "json",
        ])
        .await;
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    let e: Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(e["status"], "SUCCEEDED");
    assert_eq!(e["output"]["count"], 25);
    let keys: Vec<&str> = e["output"]["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["key"].as_str().unwrap())
        .collect();
    let expected: Vec<String> = (0..25).map(|i| format!("p{i}.jpg")).collect();
    assert_eq!(keys, expected);
}
