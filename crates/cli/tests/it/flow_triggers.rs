//! Triggers that start flows end to end: a timer's every scheduled time starts one
//! execution (paused with the CLI, gone with its flow), a bucket upload starts one with
//! S3's record (a function's overlapping rule is refused naming the flow), a Redis
//! stream's batch starts one and is acknowledged after it, and triggers a flow cannot have
//! are refused naming the field.

use std::collections::BTreeSet;
use std::process::Command;
use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::harness::{Server, aws_env, project, test_python};

/// A flow that ends with its input as its output.
const ECHO_FLOW: &str = r#"{"StartAt": "Got", "States": {"Got": {"Type": "Pass", "End": true}}}"#;

/// The executions of `flow`, newest first.
async fn executions(server: &Server, flow: &str) -> Vec<Value> {
    let list = server
        .get_json(&format!("/v1/flows/{flow}/executions?limit=1000"))
        .await;
    list["executions"].as_array().cloned().unwrap_or_default()
}

/// Waits (bounded) until `flow` has `n` executions that stopped; returns them all.
async fn wait_finished(server: &Server, flow: &str, n: usize, within: Duration) -> Vec<Value> {
    let deadline = Instant::now() + within;
    loop {
        let all = executions(server, flow).await;
        let done = all.iter().filter(|e| e["status"] != "RUNNING").count();
        if done >= n || Instant::now() > deadline {
            return all;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Runs a boto3 script against the server's S3 API with the admin's credentials.
fn boto3(server: &Server, script: &str) {
    let mut cmd = Command::new(test_python());
    cmd.args([
        "-c",
        &format!(
            "import boto3, os\ns3 = boto3.client('s3', endpoint_url=os.environ['S3'], region_name='us-east-1')\n{script}"
        ),
    ])
    .env("S3", &server.s3_endpoint);
    aws_env(&mut cmd, &server.data_dir);
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn a_timer_starts_one_execution_per_scheduled_time_pauses_and_goes_with_its_flow() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("data"));
    let dir = project(
        tmp.path(),
        "tick",
        "flows:\n  - name: tick\n    definition: f.asl.json\n    triggers:\n      - timer: {name: each-second, every: 1s}\n",
        &[("f.asl.json", ECHO_FLOW)],
    );
    server.deploy(&dir).await;
    let flow = server.get_json("/v1/flows/tick").await;
    assert_eq!(
        flow["triggers"][0]["timer"]["name"], "each-second",
        "{flow}"
    );

    let got = wait_finished(&server, "tick", 3, Duration::from_secs(30)).await;
    assert!(got.len() >= 3, "{got:?}");
    let mut times = BTreeSet::new();
    for e in &got {
        assert_eq!(e["status"], "SUCCEEDED", "{e}");
        // The fire's EventBridge event is the input, and (a Pass) the output.
        assert_eq!(e["input"]["detail-type"], "Scheduled Event", "{e}");
        assert_eq!(e["output"], e["input"]);
        assert!(
            e["input"]["resources"][0]
                .as_str()
                .unwrap()
                .ends_with(":rule/tick-each-second"),
            "{e}"
        );
        assert!(
            times.insert(e["input"]["time"].as_str().unwrap().to_string()),
            "a scheduled time started two executions: {got:?}"
        );
    }

    // Listed with every trigger, under the flow's target; its last fire names the
    // execution it started (the execution's name is the fire's event id).
    let run = server
        .cli(&["triggers", "ls", "flow/tick", "-o", "json"])
        .await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let listed: Value = serde_json::from_str(&run.stdout).unwrap();
    let t = &listed["triggers"][0];
    assert_eq!(
        (&t["function"], &t["kind"]),
        (&json!("flow/tick"), &json!("timer"))
    );
    assert!(t["next_fire_ms"].is_i64(), "{t}");
    let fire = t["last_request_id"].as_str().unwrap();
    let event = server.get_json(&format!("/v1/invocations/{fire}")).await;
    let execution = event["result"]["executionId"].as_str().unwrap_or_default();
    let started = server
        .get_json(&format!("/v1/executions/{execution}"))
        .await;
    assert_eq!(started["name"], fire, "{event}\n{started}");

    // Paused: nothing starts (after the fire that may have been under way) until resumed.
    let run = server
        .cli(&["triggers", "pause", "flow/tick", "each-second"])
        .await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let before = executions(&server, "tick").await.len();
    tokio::time::sleep(Duration::from_millis(3000)).await;
    assert_eq!(executions(&server, "tick").await.len(), before);
    let run = server
        .cli(&["triggers", "resume", "flow/tick", "each-second"])
        .await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let resumed = wait_finished(&server, "tick", before + 1, Duration::from_secs(10)).await;
    assert!(resumed.len() > before, "nothing started after the resume");

    // A trigger's name the flow does not have is a one-line error naming what it has.
    let run = server
        .cli(&["triggers", "pause", "flow/tick", "hourly"])
        .await;
    assert_ne!(run.code, 0);
    assert!(run.stderr.contains("each-second"), "{}", run.stderr);

    // Deleted, the flow's timer goes with it.
    let run = server.cli(&["flow", "rm", "tick"]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let all = server.get_json("/v1/triggers").await;
    assert!(
        !all["triggers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["function"] == "flow/tick"),
        "{all}"
    );
}

#[tokio::test]
async fn an_upload_starts_one_execution_with_s3s_record_and_overlapping_rules_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("data"));
    boto3(&server, "s3.create_bucket(Bucket='inbox')\n");
    let definition = json!({
        "StartAt": "Key",
        "States": {"Key": {
            "Type": "Pass",
            "Parameters": {
                "key.$": "$.Records[0].s3.object.key",
                "event.$": "$.Records[0].eventName",
                "bucket.$": "$.Records[0].s3.bucket.name"
            },
            "End": true
        }}
    });
    let dir = project(
        tmp.path(),
        "ingest",
        "flows:\n  - name: ingest\n    definition: f.asl.json\n    triggers:\n      - object: {name: uploads, bucket: inbox, prefix: in/}\n",
        &[("f.asl.json", &definition.to_string())],
    );
    server.deploy(&dir).await;
    boto3(
        &server,
        "s3.put_object(Bucket='inbox', Key='in/a.txt', Body=b'a')\n\
         s3.put_object(Bucket='inbox', Key='in/b.txt', Body=b'b')\n\
         s3.put_object(Bucket='inbox', Key='elsewhere/c.txt', Body=b'c')\n",
    );
    let got = wait_finished(&server, "ingest", 2, Duration::from_secs(30)).await;
    // Nothing more comes: each upload once, none for the other prefix.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let got_later = executions(&server, "ingest").await;
    assert_eq!(got_later.len(), 2, "{got_later:?}");
    let mut keys: Vec<&str> = got
        .iter()
        .map(|e| {
            assert_eq!(e["status"], "SUCCEEDED", "{e}");
            assert_eq!(e["output"]["event"], "ObjectCreated:Put");
            assert_eq!(e["output"]["bucket"], "inbox");
            e["output"]["key"].as_str().unwrap()
        })
        .collect();
    keys.sort();
    assert_eq!(keys, ["in/a.txt", "in/b.txt"]);

    // A function's rule that one upload could match as well is refused, naming the flow.
    let clash = project(
        tmp.path(),
        "clash",
        "functions:\n  clash:\n    runtime: python3\n    handler: main.handler\n    triggers:\n      - object: {bucket: inbox, prefix: in/docs/}\n",
        &[(
            "main.py",
            "def handler(event, context):\n    return event\n",
        )],
    );
    let run = server.cli(&["deploy", clash.to_str().unwrap()]).await;
    assert_ne!(run.code, 0, "{}", run.stdout);
    assert!(
        run.stderr.contains("flow `ingest`")
            && run.stderr.contains("function `clash`")
            && run.stderr.contains("overlaps"),
        "{}",
        run.stderr
    );
}

#[tokio::test]
async fn a_queue_batch_starts_one_execution_and_is_acknowledged_after_it() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("data"));
    let stream = crate::queue::unique("flow-q-");
    let dir = project(
        tmp.path(),
        "orders",
        &format!(
            "flows:\n  - name: orders\n    definition: f.asl.json\n    triggers:\n      - queue: {{redis: {{url: \"redis://127.0.0.1:6379\", stream: {stream}}}, batch_size: 3, batch_window_ms: 3000}}\n"
        ),
        &[("f.asl.json", ECHO_FLOW)],
    );
    server.deploy(&dir).await;
    let t = crate::queue::wait_connection(
        &server,
        "flow/orders",
        "redis",
        "running",
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(t["connection"], "running", "{t}");
    crate::queue::python(&format!(
        "import redis\nr = redis.Redis.from_url('redis://127.0.0.1:6379', decode_responses=True)\n\
         p = r.pipeline(transaction=False)\n\
         for b in ['o1', 'o2', 'o3']:\n    p.xadd('{stream}', {{'body': b}})\n\
         p.execute()\n"
    ));
    let got = wait_finished(&server, "orders", 1, Duration::from_secs(30)).await;
    let mut bodies: Vec<String> = got
        .iter()
        .flat_map(|e| {
            assert_eq!(e["status"], "SUCCEEDED", "{e}");
            assert!(e["name"].as_str().unwrap().starts_with("queue-"), "{e}");
            e["input"]["Records"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .map(|r| r["body"].as_str().unwrap().to_string())
        .collect();
    bodies.sort();
    assert_eq!(bodies, ["o1", "o2", "o3"], "{got:?}");

    // Acknowledged once started: the consumer group holds nothing pending.
    let group = "nimbus-flow:orders-redis";
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let pending = crate::queue::python(&format!(
            "import redis\nr = redis.Redis.from_url('redis://127.0.0.1:6379', decode_responses=True)\n\
             print(r.xpending('{stream}', '{group}')['pending'])\n"
        ));
        if pending.trim() == "0" {
            break;
        }
        assert!(Instant::now() < deadline, "still pending: {pending}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let delivered = crate::queue::trigger(&server, "flow/orders", "redis").await;
    assert_eq!(delivered["delivered"], 3, "{delivered}");
}

#[tokio::test]
async fn triggers_a_flow_cannot_have_are_refused_naming_the_field() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("data"));
    let put = |triggers: Value| {
        server
            .req(Method::PUT, "/v1/flows/bad")
            .json(&json!({
                "definition": serde_json::from_str::<Value>(ECHO_FLOW).unwrap(),
                "triggers": triggers,
            }))
            .send()
    };
    let cases = [
        (
            json!([{"http": {"path": "/start"}}]),
            "triggers[0]: a route (`http: /start`) cannot start a flow",
        ),
        (
            json!([{"timer": {"name": "t", "cron": "61 * * * *"}}]),
            "flow `bad`: triggers[0].timer.cron",
        ),
        (
            json!([{"timer": {"name": "t", "every": "1m"}}, {"timer": {"name": "t", "every": "2m"}}]),
            "triggers[1].timer.name: `t` names another trigger of this flow",
        ),
        (
            json!([{"queue": {"redis": {"url": "redis://127.0.0.1:6379", "stream": "s"}, "qualifier": "live"}}]),
            "triggers[0].queue.qualifier",
        ),
        (
            json!([{"event": {"name": "e", "pattern": {"source": "not-a-list"}}}]),
            "flow `bad`: triggers[0].event.pattern",
        ),
    ];
    for (triggers, expect) in cases {
        let res = put(triggers.clone()).await.unwrap();
        assert_eq!(res.status(), StatusCode::BAD_REQUEST, "{triggers}");
        let body: Value = res.json().await.unwrap();
        assert_eq!(body["code"], "invalid_request", "{body}");
        let message = body["message"].as_str().unwrap();
        assert!(
            message.contains(expect),
            "expected `{expect}` in `{message}`"
        );
    }
    // None of them was stored.
    let res = server
        .req(Method::GET, "/v1/flows/bad")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
}
