//! `cargo xtask bench-queue`: queue triggers end to end, per broker, at batch sizes 1 and
//! 10, against a direct consumer in the same run.
//!
//! For each broker (`--broker nats|mqtt|amqp|redis`, all by default) and batch size, two
//! consumers take the same load: the *direct* consumer is the broker's source crate driven
//! by a plain fetch-and-acknowledge loop (the client library and nothing else: no batches,
//! no function), and *nimbus* is a release `nimbus server` whose queue trigger calls a
//! no-op Python function (`bench/queue`). Each sees two phases: latency (messages published
//! one by one at `--rate`, 200/s, for 3 s: publish → handler start, p50/p99) and throughput
//! (`--messages`, 5,000, published as fast as the publisher goes: the rate from the first
//! publish to the last message handled). Every body is the publish time, so the receiving
//! side computes each message's latency from its own clock (the same machine's). Each
//! function may run 4 instances: the eight functions of a full run stay within the node's
//! instance cap (64), so none is throttled by the ones before it.

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use bytes::Bytes;
use platform::queue::{Connector, Subscription};

use crate::{Conn, Nimbus, build_nimbus, percentile, root};

/// Seconds since the epoch, with microseconds: what a body carries and the handler prints.
fn now_s() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("the clock is past 1970")
        .as_secs_f64()
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Broker {
    Nats,
    Mqtt,
    Amqp,
    Redis,
}

impl Broker {
    fn name(self) -> &'static str {
        match self {
            Broker::Nats => "nats",
            Broker::Mqtt => "mqtt",
            Broker::Amqp => "amqp",
            Broker::Redis => "redis",
        }
    }

    /// The trigger's spec (JSON, which YAML reads too) for a fresh destination `dest`.
    fn spec(self, dest: &str, batch: usize) -> serde_json::Value {
        let source = match self {
            Broker::Nats => {
                serde_json::json!({"nats": {"url": "nats://127.0.0.1:4222", "stream": dest, "subject": dest}})
            }
            Broker::Mqtt => {
                serde_json::json!({"mqtt": {"url": "mqtt://127.0.0.1:1883", "topic": format!("bench/{dest}"), "qos": 1}})
            }
            Broker::Amqp => {
                serde_json::json!({"amqp": {"url": "amqp://guest:guest@127.0.0.1:5672/%2f", "queue": dest}})
            }
            Broker::Redis => {
                serde_json::json!({"redis": {"url": "redis://127.0.0.1:6379", "stream": dest}})
            }
        };
        let mut spec = serde_json::json!({"name": "bench", "batch_size": batch});
        spec.as_object_mut()
            .expect("an object")
            .extend(source.as_object().expect("an object").clone());
        spec
    }

    fn connector(self) -> Box<dyn Connector> {
        match self {
            Broker::Nats => Box::new(queue_nats::NatsConnector),
            Broker::Mqtt => Box::new(queue_mqtt::MqttConnector),
            Broker::Amqp => Box::new(queue_amqp::AmqpConnector),
            Broker::Redis => Box::new(queue_redis::RedisConnector),
        }
    }
}

/// Publishes bodies to one destination with the broker's client library.
enum Publisher {
    Nats(async_nats::jetstream::Context, String),
    Mqtt {
        client: rumqttc::AsyncClient,
        topic: String,
        /// Polls the client's event loop (rumqttc sends nothing otherwise).
        _events: tokio::task::JoinHandle<()>,
    },
    Amqp {
        channel: lapin::Channel,
        queue: String,
        /// Kept open while the channel is used.
        _conn: lapin::Connection,
    },
    Redis(redis::aio::MultiplexedConnection, String),
}

impl Publisher {
    async fn open(broker: Broker, dest: &str) -> anyhow::Result<Publisher> {
        Ok(match broker {
            Broker::Nats => {
                let client = async_nats::connect("nats://127.0.0.1:4222").await?;
                Publisher::Nats(async_nats::jetstream::new(client), dest.to_string())
            }
            Broker::Mqtt => {
                let mut options =
                    rumqttc::MqttOptions::new(format!("bench-pub-{dest}"), "127.0.0.1", 1883);
                options.set_inflight(1000);
                let (client, mut events) = rumqttc::AsyncClient::new(options, 10_000);
                let task = tokio::spawn(async move { while events.poll().await.is_ok() {} });
                Publisher::Mqtt {
                    client,
                    topic: format!("bench/{dest}"),
                    _events: task,
                }
            }
            Broker::Amqp => {
                let conn = lapin::Connection::connect_with_runtime(
                    "amqp://guest:guest@127.0.0.1:5672/%2f",
                    lapin::ConnectionProperties::default(),
                    queue_amqp::tokio_runtime(),
                )
                .await?;
                let channel = conn.create_channel().await?;
                Publisher::Amqp {
                    channel,
                    queue: dest.to_string(),
                    _conn: conn,
                }
            }
            Broker::Redis => {
                let client = redis::Client::open("redis://127.0.0.1:6379")?;
                Publisher::Redis(
                    client.get_multiplexed_async_connection().await?,
                    dest.to_string(),
                )
            }
        })
    }

    /// Publishes `n` messages, each body its publish time; one at a time when `pace` is
    /// set (that long apart), else as fast as the client takes them.
    async fn publish(&mut self, n: usize, pace: Option<Duration>) -> anyhow::Result<()> {
        let started = Instant::now();
        let mut pending = Vec::new();
        for i in 0..n {
            if let Some(pace) = pace {
                tokio::time::sleep_until((started + pace * i as u32).into()).await;
            }
            let body = Bytes::from(format!("{:.6}", now_s()));
            match self {
                Publisher::Nats(js, subject) => {
                    pending.push(js.publish(subject.clone(), body).await?);
                    if pending.len() >= 256 || pace.is_some() {
                        for ack in pending.drain(..) {
                            ack.await?;
                        }
                    }
                }
                Publisher::Mqtt { client, topic, .. } => {
                    client
                        .publish(
                            topic.clone(),
                            rumqttc::QoS::AtLeastOnce,
                            false,
                            body.to_vec(),
                        )
                        .await?;
                }
                Publisher::Amqp { channel, queue, .. } => {
                    channel
                        .basic_publish(
                            "".into(),
                            queue.as_str().into(),
                            lapin::options::BasicPublishOptions::default(),
                            &body,
                            lapin::BasicProperties::default(),
                        )
                        .await?;
                }
                Publisher::Redis(conn, stream) => {
                    let _: String = redis::cmd("XADD")
                        .arg(stream.as_str())
                        .arg("*")
                        .arg("body")
                        .arg(body.as_ref())
                        .query_async(conn)
                        .await?;
                }
            }
        }
        if let Publisher::Nats(..) = self {
            for ack in pending {
                ack.await?;
            }
        }
        Ok(())
    }
}

/// What one consumer saw in one phase: each message's publish → handled latency (ms) and
/// when the last one was handled.
struct Seen {
    latency_ms: Vec<f64>,
    last_s: f64,
}

/// Reads (publish time, handled time) pairs into a phase's result.
fn seen(pairs: &[(f64, f64)]) -> Seen {
    let mut latency_ms: Vec<f64> = pairs.iter().map(|(p, h)| (h - p) * 1000.0).collect();
    latency_ms.sort_by(f64::total_cmp);
    Seen {
        latency_ms,
        last_s: pairs.iter().map(|(_, h)| *h).fold(0.0, f64::max),
    }
}

/// The direct consumer: the source crate's fetch and acknowledge, nothing else. Runs until
/// stopped; each message's (publish time, receive time) goes to `out`.
async fn direct(
    broker: Broker,
    dest: String,
    batch: usize,
    out: std::sync::Arc<std::sync::Mutex<Vec<(f64, f64)>>>,
    stop: tokio::sync::watch::Receiver<bool>,
    ready: tokio::sync::oneshot::Sender<()>,
) -> anyhow::Result<()> {
    let spec: model::queue::QueueTrigger = serde_json::from_value(broker.spec(&dest, batch))?;
    let connector = broker.connector();
    let mut consumer = connector
        .connect(&Subscription {
            spec: &spec,
            group: format!("direct-{dest}"),
            member: format!("direct-{dest}-0"),
            prefetch: 1000,
        })
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let _ = ready.send(());
    while !*stop.borrow() {
        let messages = consumer
            .fetch(batch, Duration::from_millis(200))
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let at = now_s();
        let acks = futures_util::future::join_all(messages.iter().map(|m| m.ack.ack())).await;
        for a in acks {
            a.map_err(|e| anyhow::anyhow!("{e}"))?;
        }
        let mut out = out.lock().unwrap();
        for m in &messages {
            let published: f64 = std::str::from_utf8(&m.body)?.parse()?;
            out.push((published, at));
        }
    }
    Ok(())
}

/// Every `T <time> <body> <body> ...` line the no-op function printed: (publish, handled).
async fn handled(server: &Nimbus, function: &str) -> anyhow::Result<Vec<(f64, f64)>> {
    let addr = server.endpoint.trim_start_matches("http://").to_string();
    let mut conn = Conn::open(&addr).await?;
    let mut out = Vec::new();
    let mut before: Option<i64> = None;
    loop {
        let mut path = format!("/v1/functions/{function}/logs?q=T%20&limit=1000");
        if let Some(b) = before {
            path.push_str(&format!("&before={b}"));
        }
        let page = conn.get_json(&path, &server.token).await?;
        for line in page["lines"].as_array().context("no lines")? {
            let Some(text) = line["message"].as_str().and_then(|m| m.strip_prefix("T ")) else {
                continue;
            };
            let mut parts = text.split_whitespace();
            let at: f64 = parts.next().context("no time")?.parse()?;
            for p in parts {
                out.push((p.parse::<f64>()?, at));
            }
        }
        match page["next_before"].as_i64() {
            Some(b) => before = Some(b),
            None => break,
        }
    }
    Ok(out)
}

/// Waits until `count()` reaches `n` or `within` passes.
async fn wait_for<F, Fut>(n: usize, within: Duration, mut count: F) -> anyhow::Result<usize>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<usize>>,
{
    let deadline = Instant::now() + within;
    loop {
        let c = count().await?;
        if c >= n || Instant::now() > deadline {
            return Ok(c);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

struct Options {
    brokers: Vec<Broker>,
    messages: usize,
    rate: f64,
}

fn options(args: &[String]) -> anyhow::Result<Options> {
    let mut o = Options {
        brokers: vec![Broker::Nats, Broker::Mqtt, Broker::Amqp, Broker::Redis],
        messages: 5_000,
        rate: 200.0,
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = || it.next().with_context(|| format!("{a} needs a value"));
        match a.as_str() {
            "--broker" => {
                let name = value()?;
                o.brokers = vec![match name.as_str() {
                    "nats" => Broker::Nats,
                    "mqtt" => Broker::Mqtt,
                    "amqp" => Broker::Amqp,
                    "redis" => Broker::Redis,
                    other => bail!("unknown broker {other}; use nats, mqtt, amqp or redis"),
                }];
            }
            "--messages" => o.messages = value()?.parse()?,
            "--rate" => o.rate = value()?.parse()?,
            other => bail!("unknown option {other}"),
        }
    }
    Ok(o)
}

/// One consumer's result: its latency phase, its throughput, messages it never handled.
struct Outcome {
    latency: Seen,
    rate: f64,
    lost: usize,
}

pub(crate) fn bench_queue(args: &[String]) -> anyhow::Result<()> {
    let o = options(args)?;
    let root = root();
    build_nimbus(&root)?;
    let nimbus = root.join("target/release/nimbus");
    let data = std::env::temp_dir().join(format!("nimbus-bench-queue-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&data);
    let server = Nimbus::start(&nimbus, &data, &[])?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let latency_n = (o.rate * 3.0) as usize;
    let pace = Duration::from_secs_f64(1.0 / o.rate);
    let mut results: HashMap<(Broker, usize, &str), Outcome> = HashMap::new();
    let run_id = std::process::id();
    for &broker in &o.brokers {
        for batch in [1usize, 10] {
            // Direct.
            let dest = format!("bd{}{batch}x{run_id}", broker.name());
            let r = rt.block_on(async {
                let out = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
                let (stop_tx, stop) = tokio::sync::watch::channel(false);
                let (ready_tx, ready) = tokio::sync::oneshot::channel();
                let consumer = tokio::spawn(direct(
                    broker,
                    dest.clone(),
                    batch,
                    out.clone(),
                    stop,
                    ready_tx,
                ));
                ready.await.context("the direct consumer did not start")?;
                let mut publisher = Publisher::open(broker, &dest).await?;
                publisher.publish(latency_n, Some(pace)).await?;
                let count = || {
                    let out = out.clone();
                    async move { anyhow::Ok(out.lock().unwrap().len()) }
                };
                wait_for(latency_n, Duration::from_secs(30), count).await?;
                let latency = seen(&std::mem::take(&mut *out.lock().unwrap()));
                let first = now_s();
                publisher.publish(o.messages, None).await?;
                let count = || {
                    let out = out.clone();
                    async move { anyhow::Ok(out.lock().unwrap().len()) }
                };
                let got = wait_for(o.messages, Duration::from_secs(120), count).await?;
                let thr = seen(&out.lock().unwrap());
                let _ = stop_tx.send(true);
                let _ = consumer.await;
                anyhow::Ok(Outcome {
                    latency,
                    rate: got as f64 / (thr.last_s - first),
                    lost: o.messages.saturating_sub(got),
                })
            })?;
            results.insert((broker, batch, "direct"), r);

            // Nimbus.
            let dest = format!("bn{}{batch}x{run_id}", broker.name());
            let function = format!("sink-{}-{batch}", broker.name());
            let project = data.join(format!("project-{function}"));
            std::fs::create_dir_all(&project)?;
            std::fs::write(
                project.join("nimbus.yaml"),
                format!(
                    "functions:\n  {function}:\n    runtime: python3\n    handler: main.handler\n    code: {}\n    memory_mb: 128\n    max_instances: 4\n    triggers:\n      - queue: {}\n",
                    root.join("bench/queue").display(),
                    broker.spec(&dest, batch)
                ),
            )?;
            server.deploy(&project)?;
            let r = rt.block_on(async {
                // Running: the trigger connected (and the instance warms on the first batch).
                let addr = server.endpoint.trim_start_matches("http://").to_string();
                let mut conn = Conn::open(&addr).await?;
                let deadline = Instant::now() + Duration::from_secs(30);
                loop {
                    let list = conn
                        .get_json(&format!("/v1/triggers?function={function}"), &server.token)
                        .await?;
                    if list["triggers"][0]["connection"] == "running" {
                        break;
                    }
                    if Instant::now() > deadline {
                        bail!("the trigger did not connect: {list}");
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                let mut publisher = Publisher::open(broker, &dest).await?;
                // Warm the instance; not counted.
                publisher
                    .publish(3, Some(Duration::from_millis(50)))
                    .await?;
                wait_for(3, Duration::from_secs(30), || async {
                    Ok(handled(&server, &function).await?.len())
                })
                .await?;
                let warm = handled(&server, &function).await?.len();
                publisher.publish(latency_n, Some(pace)).await?;
                wait_for(warm + latency_n, Duration::from_secs(60), || async {
                    Ok(handled(&server, &function).await?.len())
                })
                .await?;
                let mut all = handled(&server, &function).await?;
                all.sort_by(|a, b| a.0.total_cmp(&b.0));
                let latency = seen(&all[warm.min(all.len())..]);
                let before = all.len();
                let first = now_s();
                publisher.publish(o.messages, None).await?;
                let got = wait_for(before + o.messages, Duration::from_secs(300), || async {
                    Ok(handled(&server, &function).await?.len())
                })
                .await?;
                let mut all = handled(&server, &function).await?;
                all.retain(|(p, _)| *p >= first);
                let thr = seen(&all);
                anyhow::Ok(Outcome {
                    latency,
                    rate: (got - before) as f64 / (thr.last_s - first),
                    lost: (before + o.messages).saturating_sub(got),
                })
            })?;
            results.insert((broker, batch, "nimbus"), r);
        }
    }
    drop(server);
    let _ = std::fs::remove_dir_all(&data);
    println!(
        "bench-queue: latency at {} msgs/s for 3 s (publish -> handler start), throughput of {} messages published as fast as the client goes; no-op Python function",
        o.rate, o.messages
    );
    println!(
        "{:<6} {:>5} {:<7} {:>10} {:>10} {:>12} {:>8}",
        "BROKER", "BATCH", "SIDE", "P50 ms", "P99 ms", "MSGS/S", "RATIO"
    );
    for &broker in &o.brokers {
        for batch in [1usize, 10] {
            let direct_rate = results[&(broker, batch, "direct")].rate;
            for side in ["direct", "nimbus"] {
                let r = &results[&(broker, batch, side)];
                println!(
                    "{:<6} {:>5} {:<7} {:>10.2} {:>10.2} {:>12.0} {:>8.2}{}",
                    broker.name(),
                    batch,
                    side,
                    percentile(&r.latency.latency_ms, 0.5),
                    percentile(&r.latency.latency_ms, 0.99),
                    r.rate,
                    r.rate / direct_rate,
                    if r.lost > 0 && side == "nimbus" {
                        format!("  ({} not handled)", r.lost)
                    } else {
                        String::new()
                    }
                );
            }
        }
    }
    Ok(())
}
