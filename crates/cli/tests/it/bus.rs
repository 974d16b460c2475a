//! The event bus against the real server: CloudEvents from the CloudEvents SDK (PyPI) in
//! structured, binary and batch modes and a PutEvents request reach exactly the functions
//! whose patterns match (prefix, anything-but, numeric), once even when published twice;
//! `format: cloudevent` events (a bus event and a timer's) parse with the SDK in the
//! function; bad events and bad patterns are refused.

use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use crate::harness::{Server, delivered, project, test_python};

const ECHO: &str = "def handler(event, context):\n    return event\n";

const PARSE: &str = r#"from cloudevents.v1.http import from_dict
def handler(event, context):
    e = from_dict(event)
    return {"type": e["type"], "source": e["source"], "data": e.data}
"#;

#[tokio::test]
async fn cloudevents_and_putevents_reach_exactly_the_matching_functions_once() {
    let python = test_python();
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("data"));
    let manifest = r#"functions:
  pro:
    runtime: python3
    handler: main.handler
    code: echo
    triggers:
      - event: {name: pro, pattern: {type: [com.example.user.created], data: {plan: [{prefix: pro}]}}}
  notusers:
    runtime: python3
    handler: main.handler
    code: echo
    triggers:
      - event: {name: rest, pattern: {source: [{anything-but: [app.users]}]}}
  orders:
    runtime: python3
    handler: main.handler
    code: echo
    triggers:
      - event: {name: placed, pattern: {source: [app.orders], detail-type: [OrderPlaced]}}
  big:
    runtime: python3
    handler: main.handler
    code: parse
    timeout_ms: 10000
    triggers:
      - event: {name: big, format: cloudevent, pattern: {data: {amount: [{numeric: [">", 100]}]}}}
      - timer: {name: tick, every: 1s, format: cloudevent, payload: {amount: 1}}
"#;
    let dir = project(
        tmp.path(),
        "bus",
        manifest,
        &[
            ("echo/main.py", ECHO),
            ("parse/main.py", PARSE),
            ("parse/requirements.txt", "cloudevents==2.2.0\n"),
        ],
    );
    server.deploy(&dir).await;
    let made = server
        .cli(&["-o", "json", "keys", "create", "publisher"])
        .await;
    let key: Value = serde_json::from_str(&made.stdout).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/it/bus/publish.py");
    let out = std::process::Command::new(&python)
        .arg(script)
        .arg(&server.endpoint)
        .arg(key["key"].as_str().unwrap())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let answers: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let summary: Vec<(u64, u64)> = answers
        .iter()
        .map(|a| {
            (
                a["status"].as_u64().unwrap(),
                a["body"]["deliveries"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    // u-1 to pro and big (twice: the second publish finds its deliveries there); u-2 to
    // none; the batch to notusers twice and big once; PutEvents to notusers and orders.
    assert_eq!(
        summary,
        vec![(202, 2), (202, 2), (202, 0), (202, 3), (202, 2), (400, 0)],
        "{answers:#?}"
    );
    assert_eq!(answers[4]["body"]["failed"][0]["index"], 1);
    assert!(
        answers[4]["body"]["failed"][0]["error"]
            .as_str()
            .unwrap()
            .contains("Detail"),
        "{}",
        answers[4]
    );
    assert!(
        answers[5]["body"]["message"]
            .as_str()
            .unwrap()
            .contains("not a CloudEvent")
    );

    tokio::time::sleep(Duration::from_millis(3_000)).await;
    let pro = delivered(&server, "pro", "event:pro").await;
    assert_eq!(pro.len(), 1, "published twice, delivered once: {pro:?}");
    assert_eq!(pro[0]["result"]["id"], "u-1");
    assert_eq!(pro[0]["result"]["specversion"], "1.0");
    let rest = delivered(&server, "notusers", "event:rest").await;
    assert_eq!(rest.len(), 3, "{rest:?}");
    let orders = delivered(&server, "orders", "event:placed").await;
    assert_eq!(orders.len(), 1);
    // Natively, a PutEvents entry arrives as EventBridge delivers it.
    assert_eq!(orders[0]["result"]["detail-type"], "OrderPlaced");
    assert_eq!(orders[0]["result"]["detail"]["amount"], 120);
    // `format: cloudevent`, parsed by the SDK inside the function.
    let mut big: Vec<Value> = delivered(&server, "big", "event:big")
        .await
        .into_iter()
        .map(|a| a["result"].clone())
        .collect();
    big.sort_by_key(|r| r["data"]["amount"].as_i64());
    assert_eq!(big.len(), 2, "{big:?}");
    assert_eq!(big[0]["data"]["amount"], 200);
    assert_eq!(big[1]["type"], "com.example.user.created");
    let ticks = delivered(&server, "big", "timer:tick").await;
    assert!(!ticks.is_empty());
    assert_eq!(ticks[0]["result"]["type"], "Scheduled Event");
    assert_eq!(ticks[0]["result"]["source"], "nimbus.timer");
    assert_eq!(ticks[0]["result"]["data"]["amount"], 1);

    // A paused rule takes nothing until resumed (and not what came meanwhile).
    let put = |id: &'static str| {
        server
            .req(reqwest::Method::POST, "/v1/events")
            .header("content-type", "application/json")
            .body(format!(
                r#"{{"Entries": [{{"Source": "app.orders", "DetailType": "OrderPlaced", "Detail": "{{\"amount\": 1, \"n\": \"{id}\"}}"}}]}}"#
            ))
            .send()
    };
    let run = server.cli(&["triggers", "pause", "orders", "placed"]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(put("while-paused").await.unwrap().status(), 202);
    let run = server
        .cli(&["triggers", "resume", "orders", "placed"])
        .await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(put("after").await.unwrap().status(), 202);
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let seen: Vec<String> = delivered(&server, "orders", "event:placed")
        .await
        .iter()
        .filter_map(|a| a["result"]["detail"]["n"].as_str().map(String::from))
        .collect();
    assert_eq!(seen, vec!["after".to_string()]);

    // A wrong key is refused; so is a pattern that does not parse, at deploy.
    let res = server
        .http
        .post(server.url("/v1/events"))
        .header("x-nimbus-key", "nk_wrong")
        .header("content-type", "application/cloudevents+json")
        .body(r#"{"specversion":"1.0","id":"x","source":"s","type":"t"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 403);
    let bad = project(
        tmp.path(),
        "badrule",
        "functions:\n  badrule:\n    runtime: python3\n    handler: main.handler\n    triggers:\n      - event: {name: r, pattern: {detail: {price: [{numeric: [\">\"]}]}}}\n",
        &[("main.py", ECHO)],
    );
    let run = server.cli(&["deploy", bad.to_str().unwrap()]).await;
    assert_ne!(run.code, 0);
    assert!(
        run.stderr
            .contains("triggers[0].event.pattern: detail.price"),
        "{}",
        run.stderr
    );
}

/// A route with `format: cloudevent` hands the handler the request's CloudEvent, parsed
/// (binary mode here: the `ce-*` headers), and refuses what is not one.
#[tokio::test]
async fn a_cloudevent_route_gives_the_handler_the_parsed_event() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("data"));
    let publisher = r#"import json, os, urllib.request
def handler(event, context):
    body = json.dumps({"specversion": "1.0", "id": context.aws_request_id,
                       "source": "fn.publisher", "type": "hello", "data": event}).encode()
    req = urllib.request.Request(os.environ["NIMBUS_EVENTS_URL"], data=body, method="POST",
        headers={"content-type": "application/cloudevents+json",
                 "x-nimbus-key": os.environ["NIMBUS_EVENTS_KEY"]})
    with urllib.request.urlopen(req) as r:
        return json.loads(r.read())
"#;
    let dir = project(
        tmp.path(),
        "ceroute",
        "functions:\n  ceroute:\n    runtime: python3\n    handler: main.handler\n    code: echo\n    triggers:\n      - http: {path: /ce, methods: [POST], auth: anonymous, format: cloudevent}\n      - event: {name: heard, pattern: {source: [fn.publisher]}}\n  publisher:\n    runtime: python3\n    handler: main.handler\n    code: pub\n    timeout_ms: 10000\n",
        &[("echo/main.py", ECHO), ("pub/main.py", publisher)],
    );
    server.deploy(&dir).await;
    // A function publishes to the bus with what its environment gives it.
    let res = server.invoke("publisher", r#"{"n": 1}"#).await;
    let answer: Value = res.json().await.unwrap();
    assert_eq!(answer["deliveries"], 1, "{answer}");
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let heard = delivered(&server, "ceroute", "event:heard").await;
    assert_eq!(heard.len(), 1);
    assert_eq!(heard[0]["result"]["data"], serde_json::json!({"n": 1}));
    let res = server
        .http
        .post(server.url("/ce"))
        .header("ce-specversion", "1.0")
        .header("ce-id", "42")
        .header("ce-source", "/sensors/7")
        .header("ce-type", "com.example.reading")
        .header("content-type", "application/json")
        .body(r#"{"celsius": 21.5}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let v: Value = res.json().await.unwrap();
    assert_eq!(v["id"], "42");
    assert_eq!(v["source"], "/sensors/7");
    assert_eq!(v["data"]["celsius"], 21.5);
    let res = server
        .http
        .post(server.url("/ce"))
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    let v: Value = res.json().await.unwrap();
    assert!(
        v["message"].as_str().unwrap().contains("not a CloudEvent"),
        "{v}"
    );
}

/// Ingestion is bounded per key: past its events a second, a publisher gets 429 with
/// Retry-After, and nothing of that request is delivered.
#[tokio::test]
async fn a_key_publishing_past_its_rate_is_throttled() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start_with(
        &tmp.path().join("data"),
        &["--bus-events-per-second-per-key", "2"],
        &[],
    );
    let batch = |n: usize| {
        let events: Vec<Value> = (0..n)
            .map(|i| serde_json::json!({"specversion": "1.0", "id": format!("e{i}"), "source": "s", "type": "t"}))
            .collect();
        server
            .req(reqwest::Method::POST, "/v1/events")
            .header("content-type", "application/cloudevents-batch+json")
            .body(serde_json::to_string(&events).unwrap())
            .send()
    };
    assert_eq!(batch(2).await.unwrap().status(), 202);
    let res = batch(3).await.unwrap();
    assert_eq!(res.status(), 429);
    assert!(res.headers().contains_key("retry-after"));
    let v: Value = res.json().await.unwrap();
    assert_eq!(v["code"], "rate_limited");
}
