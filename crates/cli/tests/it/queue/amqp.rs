//! Queue triggers on amqp end to end: messages published with pika into the machine's
//! RabbitMQ (a queue of their own per test) reach the function in batches with their
//! properties and amqp fields; partial failures, failures and retries end in the
//! dead-letter queue with every message acknowledged; a SIGKILLed server's batch is
//! delivered again; a restarted broker (a private node the test starts, stops and starts)
//! is reconnected to; pause holds messages in the broker; a function of one instance gets
//! a thousand messages; ordered keys keep their order through retries.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::{
    bodies, dead_letters, free_port, project, python, received, unique, wait_connection,
    wait_dead_letters, wait_port, wait_received,
};
use crate::harness::Server;

/// The machine's RabbitMQ.
const URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// A Python string literal of `s` (JSON's escapes are Python's).
fn py(s: &str) -> String {
    serde_json::to_string(s).unwrap()
}

/// Publishes `messages` (`{body, key, id, headers, content_type, correlation_id, type,
/// timestamp}`; all but the body optional) to `queue` through a topic exchange of its own
/// bound with `#`, so each message keeps its routing key; waits for the broker's confirms.
fn publish(url: &str, queue: &str, messages: &[Value]) {
    let list = serde_json::to_string(messages).unwrap();
    python(&format!(
        "import json, pika\n\
         msgs = json.loads({list})\n\
         c = pika.BlockingConnection(pika.URLParameters({url}))\n\
         ch = c.channel()\n\
         q = {queue}\n\
         ch.queue_declare(queue=q, durable=True)\n\
         ch.exchange_declare(exchange=q + '-x', exchange_type='topic', durable=True)\n\
         ch.queue_bind(queue=q, exchange=q + '-x', routing_key='#')\n\
         ch.confirm_delivery()\n\
         for m in msgs:\n\
         \x20   p = pika.BasicProperties(delivery_mode=2, message_id=m.get('id'), headers=m.get('headers'),\n\
         \x20       content_type=m.get('content_type'), correlation_id=m.get('correlation_id'),\n\
         \x20       type=m.get('type'), timestamp=m.get('timestamp'))\n\
         \x20   ch.basic_publish(exchange=q + '-x', routing_key=m.get('key', 'k'), body=m['body'].encode(), properties=p)\n\
         c.close()\n",
        list = py(&list),
        url = py(url),
        queue = py(queue),
    ));
}

/// The queue's (ready messages, consumers), as pika's passive declare tells.
fn queue_state(url: &str, queue: &str) -> (u64, u64) {
    let out = python(&format!(
        "import pika\n\
         c = pika.BlockingConnection(pika.URLParameters({url}))\n\
         m = c.channel().queue_declare(queue={queue}, passive=True).method\n\
         print(m.message_count, m.consumer_count)\n\
         c.close()\n",
        url = py(url),
        queue = py(queue),
    ));
    let mut n = out.split_whitespace().map(|n| n.parse::<u64>().unwrap());
    (n.next().unwrap(), n.next().unwrap())
}

/// Waits until nobody consumes `queue` (the trigger's connection is gone: whatever it held
/// unacknowledged is back in the queue); returns the messages ready then.
fn ready_once_unconsumed(url: &str, queue: &str) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (ready, consumers) = queue_state(url, queue);
        if consumers == 0 {
            return ready;
        }
        assert!(Instant::now() < deadline, "{queue} is still consumed");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Messages unacknowledged in `queue` of the machine's broker, as `rabbitmqctl` counts them.
fn unacked(queue: &str) -> u64 {
    let out = Command::new("rabbitmqctl")
        .args([
            "-q",
            "list_queues",
            "--no-table-headers",
            "name",
            "messages_unacknowledged",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| {
            let mut f = l.split_whitespace();
            (f.next() == Some(queue)).then(|| f.next().unwrap().parse().unwrap())
        })
        .unwrap_or_else(|| panic!("rabbitmqctl lists no {queue}"))
}

/// Deletes a test's queue and exchange from the shared broker (best effort).
fn cleanup(url: &str, queue: &str) {
    let _ = Command::new(crate::harness::test_python())
        .args([
            "-c",
            &format!(
                "import pika\n\
                 c = pika.BlockingConnection(pika.URLParameters({url}))\n\
                 ch = c.channel()\n\
                 ch.queue_delete(queue={queue})\n\
                 ch.exchange_delete(exchange={queue} + '-x')\n\
                 c.close()\n",
                url = py(url),
                queue = py(queue),
            ),
        ])
        .output();
}

/// The trigger's YAML (flow mapping) reading `queue` at `url`, with extra settings.
fn trigger(url: &str, queue: &str, settings: &str) -> String {
    format!("{{amqp: {{url: \"{url}\", queue: {queue}}}{settings}}}")
}

/// A server on a new data dir with the test function `name` reading `queue`.
async fn serve(tmp: &Path, name: &str, trigger: &str, extra: &str) -> Server {
    let server = Server::start(&tmp.join("data"));
    server.deploy(&project(tmp, name, trigger, extra)).await;
    server
}

fn count<'a>(items: impl IntoIterator<Item = &'a String>) -> HashMap<&'a str, usize> {
    let mut m = HashMap::new();
    for i in items {
        *m.entry(i.as_str()).or_default() += 1;
    }
    m
}

#[tokio::test]
async fn messages_reach_the_function_in_batches_with_their_properties_and_fields() {
    let tmp = tempfile::tempdir().unwrap();
    let queue = unique("fields");
    let server = serve(
        tmp.path(),
        "fields",
        &trigger(URL, &queue, ", batch_size: 10, batch_window_ms: 1500"),
        "",
    )
    .await;
    publish(
        URL,
        &queue,
        &[
            json!({"body": "hello", "key": "orders.eu", "id": "m-1",
                "headers": {"tenant": "acme", "n": 7}, "content_type": "text/plain",
                "correlation_id": "c-1", "type": "order.created", "timestamp": 1_700_000_000}),
            json!({"body": "two", "key": "orders.us"}),
            json!({"body": "three", "key": "orders.us"}),
        ],
    );
    let got = wait_received(&server, "fields", 3, Duration::from_secs(60)).await;
    assert_eq!(bodies(&got), ["hello", "two", "three"], "{got:?}");
    let r = &got[0];
    assert_eq!(r["messageId"], "m-1");
    assert_eq!(r["eventSource"], "nimbus:amqp");
    assert_eq!(r["trigger"], "amqp");
    assert_eq!(r["attempt"], 1);
    assert_eq!(r["headers"]["tenant"], "acme");
    assert_eq!(r["headers"]["n"], "7");
    assert_eq!(r["headers"]["content_type"], "text/plain");
    assert_eq!(r["headers"]["correlation_id"], "c-1");
    assert_eq!(r["headers"]["type"], "order.created");
    assert_eq!(r["headers"]["timestamp"], "1700000000");
    assert!(
        r["publishedAt"]
            .as_str()
            .unwrap()
            .starts_with("2023-11-14T22:13:20"),
        "{r}"
    );
    let amqp = &r["amqp"];
    assert_eq!(amqp["exchange"], format!("{queue}-x"));
    assert_eq!(amqp["routingKey"], "orders.eu");
    assert_eq!(amqp["queue"], queue.as_str());
    assert_eq!(amqp["redelivered"], false);
    assert!(amqp["deliveryTag"].as_u64().unwrap() >= 1, "{amqp}");
    // Without a message id, the delivery tag on this connection names the message.
    let ids: HashSet<&str> = got
        .iter()
        .map(|r| r["messageId"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 3, "{ids:?}");
    assert!(
        got[1]["messageId"].as_str().unwrap().contains('@'),
        "{}",
        got[1]
    );
    assert_eq!(got[2]["amqp"]["routingKey"], "orders.us");
    // The three came in one call: the window held the batch open for them.
    let calls = crate::harness::delivered(&server, "fields", "queue:amqp").await;
    assert_eq!(calls.len(), 1, "{calls:?}");
    // Each was acknowledged: nothing is left once the trigger lets go.
    let run = server.cli(&["triggers", "pause", "fields", "amqp"]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(ready_once_unconsumed(URL, &queue), 0);
    cleanup(URL, &queue);
}

#[tokio::test]
async fn a_reported_item_failure_redelivers_only_that_message_then_dead_letters_it() {
    let tmp = tempfile::tempdir().unwrap();
    let queue = unique("partial");
    let server = serve(
        tmp.path(),
        "partial",
        &trigger(
            URL,
            &queue,
            ", batch_size: 10, batch_window_ms: 1000, max_retries: 2, retry_delay_ms: 50",
        ),
        "",
    )
    .await;
    publish(
        URL,
        &queue,
        &[
            json!({"body": "ok-1"}),
            json!({"body": "bad-1", "id": "the-bad-one"}),
            json!({"body": "ok-2"}),
        ],
    );
    let dead = wait_dead_letters(&server, "partial", 1).await;
    assert_eq!(dead.len(), 1, "{dead:?}");
    // The last attempt's log lines may be recorded a moment after its dead letter.
    let got = wait_received(&server, "partial", 5, Duration::from_secs(10)).await;
    let b = bodies(&got);
    let n = count(&b);
    assert_eq!(
        (n["ok-1"], n["ok-2"], n["bad-1"]),
        (1, 1, 3),
        "the good ones once, the bad one 1 + max_retries times: {b:?}"
    );
    let attempts: Vec<&Value> = got
        .iter()
        .filter(|r| r["body"] == "bad-1")
        .map(|r| &r["attempt"])
        .collect();
    assert_eq!(attempts, [1, 2, 3]);
    assert!(
        got.iter()
            .filter(|r| r["body"] == "bad-1")
            .all(|r| r["messageId"] == "the-bad-one")
    );
    let text = dead[0].to_string();
    assert!(
        text.contains("BatchItemFailure") && text.contains("the-bad-one"),
        "{text}"
    );
    // All three settled: none ready or unacknowledged in the broker.
    assert_eq!(unacked(&queue), 0);
    let run = server.cli(&["triggers", "pause", "partial", "amqp"]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(ready_once_unconsumed(URL, &queue), 0);
    cleanup(URL, &queue);
}

#[tokio::test]
async fn a_failing_function_dead_letters_its_messages_and_they_are_acknowledged() {
    let tmp = tempfile::tempdir().unwrap();
    let queue = unique("failing");
    let server = serve(
        tmp.path(),
        "failing",
        &trigger(
            URL,
            &queue,
            ", batch_size: 5, max_retries: 2, retry_delay_ms: 50",
        ),
        "",
    )
    .await;
    publish(
        URL,
        &queue,
        &[json!({"body": "fail-1"}), json!({"body": "fail-2"})],
    );
    let dead = wait_dead_letters(&server, "failing", 2).await;
    assert_eq!(dead.len(), 2, "{dead:?}");
    let b = bodies(&wait_received(&server, "failing", 6, Duration::from_secs(10)).await);
    let n = count(&b);
    assert_eq!((n["fail-1"], n["fail-2"]), (3, 3), "{b:?}");
    assert!(
        dead[0].to_string().contains("told to fail"),
        "{:?}",
        dead[0]
    );
    assert_eq!(
        unacked(&queue),
        0,
        "dead-lettered messages are acknowledged"
    );
    server.stop();
    assert_eq!(ready_once_unconsumed(URL, &queue), 0);
    cleanup(URL, &queue);
}

#[tokio::test]
async fn a_batch_in_flight_when_the_server_is_killed_is_delivered_again_after_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let queue = unique("killed");
    let data = tmp.path().join("data");
    let server = serve(tmp.path(), "killed", &trigger(URL, &queue, ""), "").await;
    publish(URL, &queue, &[json!({"body": "slow-1", "id": "s-1"})]);
    // The trigger took it and the function sleeps on it (its log shows once it returns):
    // unacknowledged, in flight.
    let deadline = Instant::now() + Duration::from_secs(60);
    while unacked(&queue) != 1 {
        assert!(Instant::now() < deadline, "never taken");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(unacked(&queue), 1, "still in flight");
    server.kill();
    let server = Server::start(&data);
    let deadline = Instant::now() + Duration::from_secs(90);
    let again = loop {
        let got = received(&server, "killed").await;
        if let Some(r) = got.iter().find(|r| r["amqp"]["redelivered"] == true) {
            break r.clone();
        }
        assert!(Instant::now() < deadline, "not delivered again: {got:?}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert_eq!(again["body"], "slow-1");
    assert_eq!(again["messageId"], "s-1");
    // Done the second time: acknowledged.
    let deadline = Instant::now() + Duration::from_secs(60);
    while unacked(&queue) != 0 {
        assert!(Instant::now() < deadline, "never acknowledged");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    server.stop();
    assert_eq!(ready_once_unconsumed(URL, &queue), 0);
    cleanup(URL, &queue);
}

/// A RabbitMQ node of the test's own (the machine's is shared by every test and is never
/// restarted), stopped when dropped.
struct PrivateBroker {
    port: u16,
    dist: u16,
    /// Its data, logs and configuration: open to all, since `rabbitmq-server` started as
    /// root runs the node as the `rabbitmq` user.
    dir: tempfile::TempDir,
}

impl PrivateBroker {
    fn new() -> PrivateBroker {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let broker = PrivateBroker {
            port: free_port(),
            dist: free_port(),
            dir,
        };
        // No plugins (it starts faster); its own listener, not the machine's 5672 that
        // /etc/rabbitmq/rabbitmq.conf names.
        std::fs::write(broker.path("plugins"), "[].").unwrap();
        std::fs::write(
            broker.path("rabbitmq.conf"),
            format!("listeners.tcp.local = 127.0.0.1:{}\n", broker.port),
        )
        .unwrap();
        broker.start();
        broker
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn node(&self) -> String {
        format!("nimbus-{}@localhost", self.port)
    }

    fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    fn start(&self) {
        let status = Command::new("rabbitmq-server")
            .arg("-detached")
            .env("RABBITMQ_NODENAME", self.node())
            .env("RABBITMQ_NODE_PORT", self.port.to_string())
            .env("RABBITMQ_DIST_PORT", self.dist.to_string())
            .env("RABBITMQ_MNESIA_BASE", self.dir.path())
            .env("RABBITMQ_LOG_BASE", self.dir.path())
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", self.path("plugins"))
            .env("RABBITMQ_CONFIG_FILE", self.path("rabbitmq.conf"))
            .status()
            .unwrap();
        assert!(status.success(), "rabbitmq-server did not start");
        wait_port(self.port, Duration::from_secs(120));
    }

    fn stop(&self) {
        let out = Command::new("rabbitmqctl")
            .args(["-n", &self.node(), "stop"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let deadline = Instant::now() + Duration::from_secs(60);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
            assert!(Instant::now() < deadline, "the broker still listens");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for PrivateBroker {
    fn drop(&mut self) {
        let _ = Command::new("rabbitmqctl")
            .args(["-n", &self.node(), "stop"])
            .output();
    }
}

#[tokio::test]
async fn the_trigger_reconnects_after_its_broker_restarts() {
    let tmp = tempfile::tempdir().unwrap();
    let broker = PrivateBroker::new();
    let url = broker.url();
    let queue = unique("restart");
    let server = serve(tmp.path(), "restart", &trigger(&url, &queue, ""), "").await;
    let t = wait_connection(
        &server,
        "restart",
        "amqp",
        "running",
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(t["connection"], "running", "{t}");
    publish(&url, &queue, &[json!({"body": "before"})]);
    wait_received(&server, "restart", 1, Duration::from_secs(60)).await;
    broker.stop();
    let t = wait_connection(
        &server,
        "restart",
        "amqp",
        "reconnecting",
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(t["connection"], "reconnecting", "{t}");
    let error = t["error"].as_str().unwrap_or_default();
    assert!(!error.is_empty(), "{t}");
    assert!(!error.contains(":guest@"), "no password in errors: {error}");
    broker.start();
    // The queue is durable, as was the message published while the trigger was away.
    publish(&url, &queue, &[json!({"body": "while-away"})]);
    let t = wait_connection(
        &server,
        "restart",
        "amqp",
        "running",
        Duration::from_secs(90),
    )
    .await;
    assert_eq!(t["connection"], "running", "{t}");
    publish(&url, &queue, &[json!({"body": "after"})]);
    let got = wait_received(&server, "restart", 3, Duration::from_secs(60)).await;
    let b = bodies(&got);
    assert_eq!(b[0], "before");
    assert_eq!(
        b[1..].iter().collect::<HashSet<_>>(),
        HashSet::from([&"while-away".to_string(), &"after".to_string()]),
        "{b:?}"
    );
    server.stop();
    drop(broker);
}

#[tokio::test]
async fn a_paused_trigger_leaves_messages_in_the_broker_until_resumed() {
    let tmp = tempfile::tempdir().unwrap();
    let queue = unique("paused");
    let server = serve(tmp.path(), "paused", &trigger(URL, &queue, ""), "").await;
    publish(URL, &queue, &[json!({"body": "first"})]);
    wait_received(&server, "paused", 1, Duration::from_secs(60)).await;
    let run = server.cli(&["triggers", "pause", "paused", "amqp"]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let t = wait_connection(&server, "paused", "amqp", "paused", Duration::from_secs(30)).await;
    assert_eq!(t["connection"], "paused", "{t}");
    assert_eq!(ready_once_unconsumed(URL, &queue), 0);
    publish(
        URL,
        &queue,
        &[
            json!({"body": "p-1"}),
            json!({"body": "p-2"}),
            json!({"body": "p-3"}),
        ],
    );
    // Paused, nobody consumes: the three stay in the broker.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(queue_state(URL, &queue), (3, 0));
    assert_eq!(bodies(&received(&server, "paused").await), ["first"]);
    let run = server.cli(&["triggers", "resume", "paused", "amqp"]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let got = wait_received(&server, "paused", 4, Duration::from_secs(60)).await;
    assert_eq!(bodies(&got), ["first", "p-1", "p-2", "p-3"]);
    server.stop();
    assert_eq!(ready_once_unconsumed(URL, &queue), 0);
    cleanup(URL, &queue);
}

#[tokio::test]
async fn one_instance_gets_a_thousand_messages_without_a_dead_letter() {
    let tmp = tempfile::tempdir().unwrap();
    let queue = unique("thousand");
    let server = serve(
        tmp.path(),
        "thousand",
        &trigger(URL, &queue, ", batch_size: 10"),
        "    max_instances: 1\n",
    )
    .await;
    let messages: Vec<Value> = (0..1000)
        .map(|i| json!({"body": format!("m-{i}")}))
        .collect();
    publish(URL, &queue, &messages);
    let got = wait_received(&server, "thousand", 1000, Duration::from_secs(240)).await;
    let distinct: HashSet<String> = bodies(&got).into_iter().collect();
    assert_eq!(distinct.len(), 1000, "{} records", got.len());
    assert!(dead_letters(&server, "thousand").await.is_empty());
    server.stop();
    assert_eq!(ready_once_unconsumed(URL, &queue), 0);
    cleanup(URL, &queue);
}

#[tokio::test]
async fn ordered_keys_keep_their_order_through_retries_while_other_keys_go_on() {
    let tmp = tempfile::tempdir().unwrap();
    let queue = unique("ordered");
    let server = serve(
        tmp.path(),
        "ordered",
        &trigger(
            URL,
            &queue,
            ", batch_size: 1, ordered: true, max_retries: 2, retry_delay_ms: 1000",
        ),
        "",
    )
    .await;
    let mut messages = Vec::new();
    for (a, b) in [
        ("a-1", "b-1"),
        ("bad-a-2", "b-2"),
        ("a-3", "b-3"),
        ("a-4", "b-4"),
    ] {
        messages.push(json!({"body": a, "key": "a"}));
        messages.push(json!({"body": b, "key": "b"}));
    }
    publish(URL, &queue, &messages);
    // a: a-1, bad-a-2 three times (1 + max_retries), a-3, a-4; b: its four.
    let got = wait_received(&server, "ordered", 10, Duration::from_secs(60)).await;
    let of = |key: &str| -> Vec<String> {
        got.iter()
            .filter(|r| r["amqp"]["routingKey"] == key)
            .map(|r| r["body"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(
        of("a"),
        ["a-1", "bad-a-2", "bad-a-2", "bad-a-2", "a-3", "a-4"],
        "{got:?}"
    );
    assert_eq!(of("b"), ["b-1", "b-2", "b-3", "b-4"], "{got:?}");
    // Key b went on while a's failed message waited out its retries (3 s of backoff).
    let b = bodies(&got);
    let at = |body: &str| b.iter().position(|x| x == body).unwrap();
    assert!(at("b-4") < at("a-3"), "{b:?}");
    assert_eq!(wait_dead_letters(&server, "ordered", 1).await.len(), 1);
    server.stop();
    assert_eq!(ready_once_unconsumed(URL, &queue), 0);
    cleanup(URL, &queue);
}
