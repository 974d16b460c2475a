//! Queue triggers on MQTT end to end: paho-mqtt publishes into the machine's Mosquitto
//! (or a private one a test restarts) and the test function's logs show what it got:
//! fields and properties, partial batch failures, the dead-letter queue, redelivery after
//! a SIGKILL and after a broker restart, pause and resume, backpressure and per-topic
//! order. Both protocol versions run (3.1.1 where a test says `version: 3`).

use std::path::Path;
use std::process::{Child, Command};
use std::time::Duration;

use serde_json::{Value, json};

use super::{
    bodies, dead_letters, free_port, project, python, received, unique, wait_connection,
    wait_dead_letters, wait_port, wait_received,
};
use crate::harness::Server;

/// The machine's broker, shared by every test (each on topics of its own).
const PORT: u16 = 1883;

/// Publishes `messages` (`{"topic", "body"}`, with MQTT 5's `user`, `content_type`,
/// `response_topic`, `correlation_data` when given) at QoS 1 in order, waiting until the
/// broker has each.
fn publish(port: u16, version: u8, messages: &[Value]) {
    let args = json!([port, version, messages]).to_string();
    python(&format!(
        r#"
import json, threading
import paho.mqtt.client as mqtt
from paho.mqtt.properties import Properties
from paho.mqtt.packettypes import PacketTypes
port, version, msgs = json.loads(r'''{args}''')
c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5 if version == 5 else mqtt.MQTTv311)
connected = threading.Event()
c.on_connect = lambda *a: connected.set()
c.connect('127.0.0.1', port)
c.loop_start()
assert connected.wait(30), 'no CONNACK'
infos = []
for m in msgs:
    props = None
    if version == 5 and any(k in m for k in ('user', 'content_type', 'response_topic', 'correlation_data')):
        props = Properties(PacketTypes.PUBLISH)
        if 'user' in m: props.UserProperty = [tuple(x) for x in m['user']]
        if 'content_type' in m: props.ContentType = m['content_type']
        if 'response_topic' in m: props.ResponseTopic = m['response_topic']
        if 'correlation_data' in m: props.CorrelationData = m['correlation_data'].encode()
    infos.append(c.publish(m['topic'], m['body'], qos=1, properties=props))
for i in infos:
    i.wait_for_publish(60)
    assert i.is_published()
c.disconnect()
c.loop_stop()
"#
    ));
}

/// `{"topic": topic, "body": body}` for each body.
fn plain(topic: &str, bodies: &[&str]) -> Vec<Value> {
    bodies
        .iter()
        .map(|b| json!({"topic": topic, "body": b}))
        .collect()
}

/// The trigger (YAML flow mapping) reading `topic` of the broker on `port`, with extra
/// settings (`, batch_size: 1`).
fn trigger_spec(port: u16, topic: &str, version: u8, extra: &str) -> String {
    format!(
        "{{mqtt: {{url: \"mqtt://127.0.0.1:{port}\", topic: \"{topic}\", version: {version}}}{extra}}}"
    )
}

/// A server with function `function` deployed, its trigger running.
async fn serve(root: &Path, function: &str, trigger: &str, extra: &str) -> Server {
    let server = Server::start(&root.join("data"));
    let dir = project(root, function, trigger, extra);
    server.deploy(&dir).await;
    let t = wait_connection(
        &server,
        function,
        "mqtt",
        "running",
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(t["connection"], "running", "{t}");
    server
}

/// The bodies of `function`'s records, each once, with how often it came.
fn counts(records: &[Value]) -> std::collections::BTreeMap<String, usize> {
    let mut m = std::collections::BTreeMap::new();
    for b in bodies(records) {
        *m.entry(b).or_insert(0) += 1;
    }
    m
}

/// Waits until `done` holds for the function's records (or 60 s passed); returns them.
async fn wait_for(server: &Server, function: &str, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let got = received(server, function).await;
        if done(&got) || std::time::Instant::now() > deadline {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test]
async fn messages_arrive_in_batches_with_their_topic_qos_and_properties() {
    let tmp = tempfile::tempdir().unwrap();
    let (f, topic) = (unique("mqf"), unique("mqt"));
    let spec = trigger_spec(
        PORT,
        &format!("{topic}/+"),
        5,
        ", batch_size: 10, batch_window_ms: 3000",
    );
    let server = serve(tmp.path(), &f, &spec, "").await;
    let mut messages = vec![json!({
        "topic": format!("{topic}/dev1"), "body": "hello",
        "user": [["k", "v"], ["message-id", "order-1"]],
        "content_type": "text/plain", "response_topic": "replies", "correlation_data": "c-1",
    })];
    messages.extend(plain(&format!("{topic}/dev2"), &["m2", "m3", "m4", "m5"]));
    publish(PORT, 5, &messages);
    let got = wait_received(&server, &f, 5, Duration::from_secs(60)).await;
    assert_eq!(bodies(&got), ["hello", "m2", "m3", "m4", "m5"], "{got:?}");
    let first = &got[0];
    assert_eq!(first["eventSource"], "nimbus:mqtt");
    assert_eq!(first["trigger"], "mqtt");
    assert_eq!(first["messageId"], "order-1");
    assert_eq!(first["headers"]["k"], "v");
    assert_eq!(first["attempt"], 1);
    let m = &first["mqtt"];
    assert_eq!(m["topic"], format!("{topic}/dev1"));
    assert_eq!(m["qos"], 1);
    assert_eq!(m["retain"], false);
    assert_eq!(m["dup"], false);
    assert_eq!(m["content_type"], "text/plain");
    assert_eq!(m["response_topic"], "replies");
    assert_eq!(m["correlation_data"], "c-1");
    assert_eq!(got[1]["mqtt"]["topic"], format!("{topic}/dev2"));
    // Ids are unique where the publisher set none.
    let ids: std::collections::HashSet<&str> = got
        .iter()
        .map(|r| r["messageId"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 5);
    // The window gathered all five into one call.
    let calls = crate::harness::delivered(&server, &f, "queue:mqtt").await;
    assert_eq!(calls.len(), 1, "{calls:?}");
}

#[tokio::test]
async fn a_bad_record_alone_is_retried_then_dead_lettered() {
    let tmp = tempfile::tempdir().unwrap();
    let (f, topic) = (unique("mqf"), unique("mqt"));
    let spec = trigger_spec(
        PORT,
        &topic,
        5,
        ", batch_size: 10, batch_window_ms: 2000, max_retries: 2, retry_delay_ms: 50",
    );
    let server = serve(tmp.path(), &f, &spec, "").await;
    publish(PORT, 5, &plain(&topic, &["ok1", "bad1", "ok2"]));
    let got = wait_for(&server, &f, |r| {
        counts(r).get("bad1").copied().unwrap_or(0) >= 3
    })
    .await;
    let dead = wait_dead_letters(&server, &f, 1).await;
    assert_eq!(dead.len(), 1, "{dead:?}");
    let got = {
        // Whatever came after the dead letter (nothing should) is counted too.
        let later = received(&server, &f).await;
        assert!(later.len() >= got.len());
        later
    };
    let c = counts(&got);
    assert_eq!(c.get("ok1"), Some(&1), "{c:?}");
    assert_eq!(c.get("ok2"), Some(&1), "{c:?}");
    assert_eq!(c.get("bad1"), Some(&3), "{c:?}");
    let attempts: Vec<i64> = got
        .iter()
        .filter(|r| r["body"] == "bad1")
        .map(|r| r["attempt"].as_i64().unwrap())
        .collect();
    assert_eq!(attempts, [1, 2, 3]);
}

/// Stops the server gracefully, starts it again on its data dir (its MQTT session
/// resumes: a message it never acknowledged comes again), publishes a marker and waits
/// for it; returns the records that came after the restart, the marker included.
async fn restart_and_mark(server: Server, root: &Path, f: &str, topic: &str) -> Vec<Value> {
    server.stop();
    let server = Server::start(&root.join("data"));
    let t = wait_connection(&server, f, "mqtt", "running", Duration::from_secs(60)).await;
    assert_eq!(t["connection"], "running", "{t}");
    let before = received(&server, f).await.len();
    publish(PORT, 5, &plain(topic, &["marker"]));
    let got = wait_for(&server, f, |r| bodies(r).iter().any(|b| b == "marker")).await;
    assert!(bodies(&got).iter().any(|b| b == "marker"), "{got:?}");
    // The session's unacknowledged messages come before anything published after it.
    got[before.min(got.len())..].to_vec()
}

#[tokio::test]
async fn a_failing_function_dead_letters_its_messages_and_acknowledges_them() {
    let tmp = tempfile::tempdir().unwrap();
    let (f, topic) = (unique("mqf"), unique("mqt"));
    let spec = trigger_spec(
        PORT,
        &topic,
        5,
        ", batch_size: 1, max_retries: 2, retry_delay_ms: 50",
    );
    let server = serve(tmp.path(), &f, &spec, "").await;
    // One message per call: the handler raises at the first `fail` of a batch, so it
    // would log no later one.
    publish(PORT, 5, &plain(&topic, &["fail1", "fail2"]));
    let dead = wait_dead_letters(&server, &f, 2).await;
    assert_eq!(dead.len(), 2, "{dead:?}");
    // A call's log lines may show up after its dead letter.
    let got = wait_for(&server, &f, |r| {
        let c = counts(r);
        c.get("fail1") >= Some(&3) && c.get("fail2") >= Some(&3)
    })
    .await;
    let c = counts(&got);
    assert_eq!(c.get("fail1"), Some(&3), "{c:?}");
    assert_eq!(c.get("fail2"), Some(&3), "{c:?}");
    // Acknowledged: the broker has nothing left for the trigger's session.
    let after = restart_and_mark(server, tmp.path(), &f, &topic).await;
    assert_eq!(bodies(&after), ["marker"], "{after:?}");
}

#[tokio::test]
async fn a_batch_in_flight_when_the_server_is_killed_comes_again() {
    let tmp = tempfile::tempdir().unwrap();
    let (f, topic) = (unique("mqf"), unique("mqt"));
    let spec = trigger_spec(PORT, &topic, 3, ", batch_size: 10");
    let server = serve(tmp.path(), &f, &spec, "").await;
    publish(PORT, 3, &plain(&topic, &["slow1"]));
    // A call's log lines are kept when it ends: the trigger's count of messages taken and
    // not settled shows the batch in flight.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while super::trigger(&server, &f, "mqtt").await["held"] != 1 {
        assert!(
            std::time::Instant::now() < deadline,
            "the message never came"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Into the function's ten seconds of sleep.
    tokio::time::sleep(Duration::from_secs(2)).await;
    server.kill();
    let server = Server::start(&tmp.path().join("data"));
    let got = wait_for(&server, &f, |r| bodies(r).iter().any(|b| b == "slow1")).await;
    let again: Vec<&Value> = got.iter().filter(|r| r["body"] == "slow1").collect();
    assert!(!again.is_empty(), "{got:?}");
    // The broker sent it again, as its DUP flag says.
    assert_eq!(again.last().unwrap()["mqtt"]["dup"], true, "{got:?}");
}

/// A private Mosquitto with persistence, on its own port, that a test may restart.
struct Broker {
    port: u16,
    config: std::path::PathBuf,
    child: Child,
}

impl Broker {
    fn start(dir: &Path) -> Broker {
        let port = free_port();
        let config = dir.join("mosquitto.conf");
        std::fs::write(
            &config,
            format!(
                "listener {port} 127.0.0.1\nallow_anonymous true\npersistence true\npersistence_location {}/\n",
                dir.display()
            ),
        )
        .unwrap();
        let child = Command::new("mosquitto")
            .arg("-c")
            .arg(&config)
            .spawn()
            .unwrap();
        wait_port(port, Duration::from_secs(30));
        Broker {
            port,
            config,
            child,
        }
    }

    /// SIGTERM (Mosquitto saves its sessions), then waits for it to exit.
    fn stop(&mut self) {
        let pid = rustix::process::Pid::from_raw(self.child.id() as i32).unwrap();
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        let _ = self.child.wait();
    }

    fn restart(&mut self) {
        self.stop();
        self.child = Command::new("mosquitto")
            .arg("-c")
            .arg(&self.config)
            .spawn()
            .unwrap();
        wait_port(self.port, Duration::from_secs(30));
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.stop();
    }
}

#[tokio::test]
async fn the_trigger_reconnects_after_a_broker_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let broker_dir = tmp.path().join("broker");
    std::fs::create_dir_all(&broker_dir).unwrap();
    let mut broker = Broker::start(&broker_dir);
    let (f, topic) = (unique("mqf"), unique("mqt"));
    let spec = trigger_spec(broker.port, &topic, 5, ", batch_size: 10");
    let server = serve(tmp.path(), &f, &spec, "").await;
    publish(broker.port, 5, &plain(&topic, &["before1"]));
    let got = wait_received(&server, &f, 1, Duration::from_secs(60)).await;
    assert_eq!(bodies(&got), ["before1"]);
    broker.stop();
    let t = wait_connection(&server, &f, "mqtt", "reconnecting", Duration::from_secs(60)).await;
    assert_eq!(t["connection"], "reconnecting", "{t}");
    assert!(t["error"].as_str().is_some_and(|e| !e.is_empty()), "{t}");
    broker.restart();
    let t = wait_connection(&server, &f, "mqtt", "running", Duration::from_secs(60)).await;
    assert_eq!(t["connection"], "running", "{t}");
    publish(broker.port, 5, &plain(&topic, &["after1", "after2"]));
    let got = wait_received(&server, &f, 3, Duration::from_secs(60)).await;
    assert_eq!(bodies(&got), ["before1", "after1", "after2"], "{got:?}");
}

#[tokio::test]
async fn a_paused_trigger_takes_nothing_and_resumes_with_what_waited() {
    let tmp = tempfile::tempdir().unwrap();
    let (f, topic) = (unique("mqf"), unique("mqt"));
    let spec = trigger_spec(PORT, &topic, 3, ", batch_size: 10");
    let server = serve(tmp.path(), &f, &spec, "").await;
    publish(PORT, 3, &plain(&topic, &["one"]));
    let got = wait_received(&server, &f, 1, Duration::from_secs(60)).await;
    assert_eq!(bodies(&got), ["one"]);
    let run = server.cli(&["triggers", "pause", &f, "mqtt"]).await;
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    let t = wait_connection(&server, &f, "mqtt", "paused", Duration::from_secs(30)).await;
    assert_eq!(t["connection"], "paused", "{t}");
    publish(PORT, 3, &plain(&topic, &["two", "three"]));
    // Nothing comes while paused (the messages wait in the trigger's session).
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(bodies(&received(&server, &f).await), ["one"]);
    let run = server.cli(&["triggers", "resume", &f, "mqtt"]).await;
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    let got = wait_received(&server, &f, 3, Duration::from_secs(60)).await;
    assert_eq!(bodies(&got), ["one", "two", "three"], "{got:?}");
}

#[tokio::test]
async fn a_single_instance_function_gets_a_thousand_messages_without_losing_one() {
    let tmp = tempfile::tempdir().unwrap();
    let (f, topic) = (unique("mqf"), unique("mqt"));
    let spec = trigger_spec(PORT, &topic, 5, ", batch_size: 10");
    let server = serve(tmp.path(), &f, &spec, "    max_instances: 1\n").await;
    let sent: Vec<String> = (0..1000).map(|i| format!("m{i}")).collect();
    let refs: Vec<&str> = sent.iter().map(String::as_str).collect();
    publish(PORT, 5, &plain(&topic, &refs));
    let got = wait_for(&server, &f, |r| counts(r).len() >= 1000).await;
    let c = counts(&got);
    assert_eq!(c.len(), 1000, "{} distinct of 1000", c.len());
    assert!(dead_letters(&server, &f).await.is_empty());
    // One topic, one session: they came in order.
    let first: Vec<String> = {
        let mut seen = std::collections::HashSet::new();
        bodies(&got)
            .into_iter()
            .filter(|b| seen.insert(b.clone()))
            .collect()
    };
    assert_eq!(first, sent);
}

#[tokio::test]
async fn ordered_topics_keep_their_order_through_retries() {
    let tmp = tempfile::tempdir().unwrap();
    let (f, topic) = (unique("mqf"), unique("mqt"));
    let spec = trigger_spec(
        PORT,
        &format!("{topic}/+"),
        5,
        ", batch_size: 1, ordered: true, max_retries: 2, retry_delay_ms: 1000",
    );
    let server = serve(tmp.path(), &f, &spec, "").await;
    let (a, b) = (format!("{topic}/a"), format!("{topic}/b"));
    let mut messages = Vec::new();
    for i in 1..=5 {
        let body_a = if i == 3 {
            "bad-a3".to_string()
        } else {
            format!("a{i}")
        };
        messages.push(json!({"topic": a, "body": body_a}));
        messages.push(json!({"topic": b, "body": format!("b{i}")}));
    }
    publish(PORT, 5, &messages);
    let got = wait_for(&server, &f, |r| {
        let c = counts(r);
        c.contains_key("a5") && c.contains_key("b5")
    })
    .await;
    let of = |key: &str| -> Vec<String> {
        got.iter()
            .filter(|r| r["mqtt"]["topic"] == key)
            .map(|r| r["body"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(
        of(&a),
        ["a1", "a2", "bad-a3", "bad-a3", "bad-a3", "a4", "a5"],
        "{got:?}"
    );
    assert_eq!(of(&b), ["b1", "b2", "b3", "b4", "b5"], "{got:?}");
    // Key b went on while key a waited for its retries.
    let place = |body: &str| bodies(&got).iter().position(|x| x == body).unwrap();
    assert!(place("b5") < place("a4"), "{got:?}");
    assert_eq!(wait_dead_letters(&server, &f, 1).await.len(), 1);
}
