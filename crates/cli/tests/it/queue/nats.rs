//! Queue triggers on NATS end to end: JetStream durable consumers (at least once) and core
//! NATS queue groups, published to with nats-py.

use std::time::Duration;

use serde_json::Value;

use super::{
    bodies, dead_letters, project, python, received, unique, wait_connection, wait_received,
};
use crate::harness::Server;

const URL: &str = "nats://127.0.0.1:4222";

/// Publishes `messages` (subject, body) to JetStream (each publish acknowledged by the
/// stream), with a header on each.
fn publish(url: &str, messages: &[(&str, &str)]) {
    let list = serde_json::to_string(messages).unwrap();
    python(&format!(
        concat!(
            "import asyncio, json, nats\n",
            "async def main():\n",
            "    nc = await nats.connect('{url}')\n",
            "    js = nc.jetstream()\n",
            "    for subject, body in json.loads('''{list}'''):\n",
            "        await js.publish(subject, body.encode(), headers={{'x-test': 'yes'}})\n",
            "    await nc.close()\n",
            "asyncio.run(main())\n",
        ),
        url = url,
        list = list
    ));
}

/// The stream's consumer state: (pending, ack pending) of `consumer`.
fn consumer_state(url: &str, stream: &str, consumer: &str) -> (u64, u64) {
    let out = python(&format!(
        concat!(
            "import asyncio, nats\n",
            "async def main():\n",
            "    nc = await nats.connect('{url}')\n",
            "    info = await nc.jetstream().consumer_info('{stream}', '{consumer}')\n",
            "    print(info.num_pending, info.num_ack_pending)\n",
            "    await nc.close()\n",
            "asyncio.run(main())\n",
        ),
        url = url,
        stream = stream,
        consumer = consumer
    ));
    let mut n = out.split_whitespace().map(|v| v.parse::<u64>().unwrap());
    (n.next().unwrap(), n.next().unwrap())
}

#[tokio::test]
async fn jetstream_messages_reach_the_function_in_batches_with_their_fields() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("data"));
    let (stream, subject) = (unique("S"), unique("orders"));
    let dir = project(
        tmp.path(),
        "orders",
        &format!(
            "{{name: orders, nats: {{url: \"{URL}\", stream: {stream}, subject: \"{subject}.>\"}}, batch_size: 10, batch_window_ms: 500}}"
        ),
        "",
    );
    server.deploy(&dir).await;
    let t = wait_connection(
        &server,
        "orders",
        "orders",
        "running",
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(t["connection"], "running", "{t}");
    assert_eq!(t["kind"], "queue");
    let first = format!("{subject}.eu");
    let messages: Vec<(&str, String)> = (0..5).map(|i| (first.as_str(), format!("m{i}"))).collect();
    let refs: Vec<(&str, &str)> = messages.iter().map(|(s, b)| (*s, b.as_str())).collect();
    publish(URL, &refs);
    let got = wait_received(&server, "orders", 5, Duration::from_secs(30)).await;
    assert_eq!(bodies(&got), ["m0", "m1", "m2", "m3", "m4"]);
    let r = &got[0];
    assert_eq!(r["eventSource"], "nimbus:nats");
    assert_eq!(r["trigger"], "orders");
    assert_eq!(r["headers"]["x-test"], "yes");
    assert_eq!(r["nats"]["subject"], first);
    assert_eq!(r["nats"]["stream"], stream.as_str());
    assert_eq!(r["nats"]["sequence"], 1);
    assert_eq!(r["messageId"], "1");
    assert_eq!(r["attempt"], 1);
    assert!(r["publishedAt"].as_str().unwrap().ends_with('Z'), "{r}");
    // The window gathered the five into one call.
    let records = server
        .get_json("/v1/functions/orders/invocations?limit=100")
        .await;
    let calls: Vec<&Value> = records["invocations"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["trigger"] == "queue:orders")
        .collect();
    assert_eq!(calls.len(), 1, "{records}");
    // All acknowledged: nothing pending in the consumer.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let consumer = "nimbus-orders-orders";
    while consumer_state(URL, &stream, consumer) != (0, 0) {
        assert!(
            std::time::Instant::now() < deadline,
            "messages left unacknowledged"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(dead_letters(&server, "orders").await.is_empty());
}

/// A private NATS server with JetStream on `port`, its store in `dir`: one a test may
/// stop and start again (the machine's is shared by every test).
struct PrivateNats {
    child: std::process::Child,
    port: u16,
    dir: std::path::PathBuf,
}

impl PrivateNats {
    fn start(port: u16, dir: &std::path::Path) -> PrivateNats {
        let child = std::process::Command::new("nats-server")
            .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
            .arg(dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("nats-server runs");
        super::wait_port(port, Duration::from_secs(20));
        PrivateNats {
            child,
            port,
            dir: dir.to_path_buf(),
        }
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    fn restart(&mut self) -> PrivateNats {
        self.stop();
        PrivateNats::start(self.port, &self.dir)
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for PrivateNats {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Waits until the function's record count of `body` reaches `n`.
async fn wait_count(
    server: &Server,
    function: &str,
    body: &str,
    n: usize,
    within: Duration,
) -> usize {
    let deadline = std::time::Instant::now() + within;
    loop {
        let got = bodies(&received(server, function).await)
            .into_iter()
            .filter(|b| b == body)
            .count();
        if got >= n || std::time::Instant::now() > deadline {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn a_bad_record_is_retried_alone_then_dead_lettered_and_failing_batches_go_to_the_dlq() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("data"));
    let (stream, subject) = (unique("S"), unique("jobs"));
    let dir = project(
        tmp.path(),
        "jobs",
        &format!(
            "{{name: jobs, nats: {{url: \"{URL}\", stream: {stream}, subject: \"{subject}\"}}, batch_size: 10, batch_window_ms: 300, max_retries: 2, retry_delay_ms: 50}}"
        ),
        "",
    );
    server.deploy(&dir).await;
    wait_connection(&server, "jobs", "jobs", "running", Duration::from_secs(30)).await;
    publish(
        URL,
        &[(&subject, "ok1"), (&subject, "bad1"), (&subject, "ok2")],
    );
    // The bad one: its first call and two retries; the good ones once each.
    assert_eq!(
        wait_count(&server, "jobs", "bad1", 3, Duration::from_secs(30)).await,
        3
    );
    let letters = super::wait_dead_letters(&server, "jobs", 1).await;
    assert_eq!(letters.len(), 1, "{letters:?}");
    // The good ones' log lines may be recorded a moment after the dead letter.
    let got = wait_received(&server, "jobs", 5, Duration::from_secs(10)).await;
    let b = bodies(&got);
    assert_eq!(b.iter().filter(|b| *b == "ok1").count(), 1, "{b:?}");
    assert_eq!(b.iter().filter(|b| *b == "ok2").count(), 1, "{b:?}");
    let attempts: Vec<i64> = got
        .iter()
        .filter(|r| r["body"] == "bad1")
        .map(|r| r["attempt"].as_i64().unwrap())
        .collect();
    assert_eq!(attempts, [1, 2, 3]);
    assert_eq!(
        letters[0]["payload"]["Records"][0]["body"], "bad1",
        "{}",
        letters[0]
    );
    assert_eq!(
        letters[0]["error"]["errorType"], "BatchItemFailure",
        "{}",
        letters[0]
    );

    // A function that fails whole batches: every message is dead-lettered after its
    // retries, and acknowledged.
    publish(URL, &[(&subject, "fail-a"), (&subject, "fail-b")]);
    assert_eq!(super::wait_dead_letters(&server, "jobs", 3).await.len(), 3);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while consumer_state(URL, &stream, "nimbus-jobs-jobs") != (0, 0) {
        assert!(
            std::time::Instant::now() < deadline,
            "dead-lettered messages left unacknowledged"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let t = super::trigger(&server, "jobs", "jobs").await;
    assert_eq!(t["dead_lettered"], 3, "{t}");
    assert_eq!(t["delivered"], 2, "{t}");
}

#[tokio::test]
async fn a_batch_in_flight_when_the_server_is_killed_is_delivered_again_after_the_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let server = Server::start(&data);
    let (stream, subject) = (unique("S"), unique("slow"));
    let dir = project(
        tmp.path(),
        "slowfn",
        &format!(
            "{{name: work, nats: {{url: \"{URL}\", stream: {stream}, subject: \"{subject}\", ack_wait_ms: 2000}}, batch_size: 1}}"
        ),
        "",
    );
    server.deploy(&dir).await;
    wait_connection(
        &server,
        "slowfn",
        "work",
        "running",
        Duration::from_secs(30),
    )
    .await;
    publish(URL, &[(&subject, "slow-1")]);
    super::wait_held(&server, "slowfn", "work", Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    server.kill();
    let server = Server::start(&data);
    // Delivered again once the ack wait passes (JetStream delivers what was never
    // acknowledged), and this time it completes.
    assert_eq!(
        wait_count(&server, "slowfn", "slow-1", 1, Duration::from_secs(60)).await,
        1
    );
    let got = received(&server, "slowfn").await;
    assert_eq!(got.last().unwrap()["nats"]["deliveries"], 2, "{got:?}");
}

#[tokio::test]
async fn a_broker_restart_is_reported_and_survived() {
    let tmp = tempfile::tempdir().unwrap();
    let mut nats = PrivateNats::start(super::free_port(), &tmp.path().join("nats"));
    let url = nats.url();
    let server = Server::start(&tmp.path().join("data"));
    let dir = project(
        tmp.path(),
        "dev",
        &format!(
            "{{name: dev, nats: {{url: \"{url}\", stream: DEV, subject: \"dev.>\"}}, batch_size: 5}}"
        ),
        "",
    );
    server.deploy(&dir).await;
    wait_connection(&server, "dev", "dev", "running", Duration::from_secs(30)).await;
    publish(&url, &[("dev.a", "before")]);
    assert_eq!(
        wait_count(&server, "dev", "before", 1, Duration::from_secs(30)).await,
        1
    );
    nats.stop();
    let t = wait_connection(
        &server,
        "dev",
        "dev",
        "reconnecting",
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(t["connection"], "reconnecting", "{t}");
    assert!(
        t["error"].as_str().is_some_and(|e| e.contains("127.0.0.1")),
        "{t}"
    );
    let events = server.get_json("/v1/events?function=dev").await;
    assert!(
        events.to_string().contains("trigger_disconnected"),
        "{events}"
    );
    let _nats = nats.restart();
    let t = wait_connection(&server, "dev", "dev", "running", Duration::from_secs(60)).await;
    assert_eq!(t["connection"], "running", "{t}");
    assert!(t.get("error").is_none_or(Value::is_null), "{t}");
    publish(&url, &[("dev.b", "after")]);
    assert_eq!(
        wait_count(&server, "dev", "after", 1, Duration::from_secs(30)).await,
        1
    );
    assert_eq!(
        wait_count(&server, "dev", "before", 1, Duration::from_secs(1)).await,
        1
    );
}

#[tokio::test]
async fn a_paused_trigger_leaves_messages_in_the_stream_until_resumed() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("data"));
    let (stream, subject) = (unique("S"), unique("p"));
    let dir = project(
        tmp.path(),
        "pausing",
        &format!(
            "{{name: feed, nats: {{url: \"{URL}\", stream: {stream}, subject: \"{subject}\", ack_wait_ms: 2000}}}}"
        ),
        "",
    );
    server.deploy(&dir).await;
    wait_connection(
        &server,
        "pausing",
        "feed",
        "running",
        Duration::from_secs(30),
    )
    .await;
    let run = server.cli(&["triggers", "pause", "pausing", "feed"]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    wait_connection(
        &server,
        "pausing",
        "feed",
        "paused",
        Duration::from_secs(10),
    )
    .await;
    publish(URL, &[(&subject, "p1"), (&subject, "p2")]);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(received(&server, "pausing").await.is_empty());
    // Still in the stream, unacknowledged: waiting, or caught by a pull that was open when
    // the pause came (JetStream delivers those again after the ack wait).
    let (pending, unacked) = consumer_state(URL, &stream, "nimbus-pausing-feed");
    assert_eq!(
        pending + unacked,
        2,
        "{pending} pending, {unacked} unacknowledged"
    );
    let run = server.cli(&["triggers", "resume", "pausing", "feed"]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let got = wait_received(&server, "pausing", 2, Duration::from_secs(30)).await;
    let mut got = bodies(&got);
    got.sort();
    assert_eq!(got, ["p1", "p2"]);
}

#[tokio::test]
async fn one_instance_takes_a_thousand_messages_without_a_dead_letter() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("data"));
    let (stream, subject) = (unique("S"), unique("bulk"));
    let dir = project(
        tmp.path(),
        "bulk",
        &format!(
            "{{name: bulk, nats: {{url: \"{URL}\", stream: {stream}, subject: \"{subject}\"}}, batch_size: 10, max_retries: 0}}"
        ),
        "    max_instances: 1\n",
    );
    server.deploy(&dir).await;
    wait_connection(&server, "bulk", "bulk", "running", Duration::from_secs(30)).await;
    let bodies_sent: Vec<String> = (0..1000).map(|i| format!("n{i}")).collect();
    let messages: Vec<(&str, &str)> = bodies_sent
        .iter()
        .map(|b| (subject.as_str(), b.as_str()))
        .collect();
    publish(URL, &messages);
    let got = wait_received(&server, "bulk", 1000, Duration::from_secs(120)).await;
    let mut seen: Vec<String> = bodies(&got);
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), 1000);
    assert!(dead_letters(&server, "bulk").await.is_empty());
}

#[tokio::test]
async fn ordered_delivery_keeps_each_subjects_order_through_a_retry() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("data"));
    let (stream, subject) = (unique("S"), unique("ord"));
    let dir = project(
        tmp.path(),
        "ordered",
        &format!(
            "{{name: ord, nats: {{url: \"{URL}\", stream: {stream}, subject: \"{subject}.*\"}}, batch_size: 3, ordered: true, max_retries: 3, retry_delay_ms: 300}}"
        ),
        "",
    );
    server.deploy(&dir).await;
    wait_connection(
        &server,
        "ordered",
        "ord",
        "running",
        Duration::from_secs(30),
    )
    .await;
    let (a, b) = (format!("{subject}.a"), format!("{subject}.b"));
    let mut messages: Vec<(&str, String)> = Vec::new();
    for i in 0..6 {
        messages.push((
            &a,
            if i == 2 {
                format!("bad-a{i}")
            } else {
                format!("a{i}")
            },
        ));
        messages.push((&b, format!("b{i}")));
    }
    let refs: Vec<(&str, &str)> = messages.iter().map(|(s, m)| (*s, m.as_str())).collect();
    publish(URL, &refs);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let got = loop {
        let got = received(&server, "ordered").await;
        if dead_letters(&server, "ordered").await.len() == 1
            && bodies(&got).contains(&"a5".to_string())
        {
            break got;
        }
        assert!(std::time::Instant::now() < deadline, "{:?}", bodies(&got));
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    // Each key's first deliveries come in publish order; a's later messages never come
    // before its bad one's last try.
    let of = |key: &str| -> Vec<String> {
        got.iter()
            .filter(|r| r["nats"]["subject"] == key)
            .map(|r| r["body"].as_str().unwrap().to_string())
            .collect()
    };
    let seen_b = of(&b);
    assert_eq!(seen_b, ["b0", "b1", "b2", "b3", "b4", "b5"]);
    let seen_a = of(&a);
    let last_bad = seen_a.iter().rposition(|m| m == "bad-a2").unwrap();
    // A message after a failed one is retried with it (never settled before it): the
    // last one comes only once the bad one is settled.
    let first_a5 = seen_a.iter().position(|m| m == "a5").unwrap();
    assert!(last_bad < first_a5, "{seen_a:?}");
    let mut order: Vec<&String> = Vec::new();
    for m in &seen_a {
        if !order.contains(&m) {
            order.push(m);
        }
    }
    assert_eq!(
        order,
        ["a0", "a1", "bad-a2", "a3", "a4", "a5"],
        "{seen_a:?}"
    );
}

#[tokio::test]
async fn core_nats_subjects_are_taken_through_a_queue_group() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("data"));
    let subject = unique("core");
    let dir = project(
        tmp.path(),
        "corefn",
        &format!("{{name: core, nats: {{url: \"{URL}\", subject: \"{subject}\"}}, batch_size: 1}}"),
        "",
    );
    server.deploy(&dir).await;
    wait_connection(
        &server,
        "corefn",
        "core",
        "running",
        Duration::from_secs(30),
    )
    .await;
    python(&format!(
        concat!(
            "import asyncio, nats\n",
            "async def main():\n",
            "    nc = await nats.connect('{URL}')\n",
            "    await nc.publish('{subject}', b'hello', headers={{'Nats-Msg-Id': 'm-1'}})\n",
            "    await nc.flush()\n",
            "    await nc.close()\n",
            "asyncio.run(main())\n",
        ),
        URL = URL,
        subject = subject
    ));
    let got = wait_received(&server, "corefn", 1, Duration::from_secs(30)).await;
    assert_eq!(bodies(&got), ["hello"]);
    assert_eq!(got[0]["messageId"], "m-1");
    assert_eq!(got[0]["nats"]["subject"], subject.as_str());
}
