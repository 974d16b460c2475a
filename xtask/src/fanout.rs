//! `cargo xtask bench-fanout`: what reading telemetry across a cluster costs, in one run.
//!
//! One node on SQLite against one node of three sharing PostgreSQL + S3, asked the same
//! queries: `GET /v1/functions/chatty/invocations?limit=50`, `…/logs?limit=50` and
//! `…/stats`, one at a time on one kept-alive connection, alternated round by round. Both
//! hold about the same calls of `bench/chatty` (ten log lines each); in the cluster they
//! were run on all three nodes (versions whose homes are the three, each called at its
//! home), so every query reads three stores and merges their answers. On a 2-core machine
//! the three nodes share the cores, so the difference is the fan-out's cost with its
//! peers' work included, not what separate machines would show.

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::Request;
use hyper_util::rt::TokioIo;

use crate::cluster::shared_stores;
use crate::{Auth, Nimbus, Target, build_nimbus, median_ms, parse, root, run};

/// The queries measured, by name.
const QUERIES: [(&str, &str); 3] = [
    ("invocations", "/v1/functions/chatty/invocations?limit=50"),
    ("logs", "/v1/functions/chatty/logs?limit=50"),
    ("stats", "/v1/functions/chatty/stats"),
];

/// Requests per query per round.
const REQUESTS: usize = 200;

/// A copy of `bench/chatty` whose code differs by `marker`, so each publish is a version.
fn chatty_project(dir: &std::path::Path, marker: &str) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    let root = root().join("bench/chatty");
    std::fs::copy(root.join("nimbus.yaml"), dir.join("nimbus.yaml"))?;
    let code = std::fs::read_to_string(root.join("main.py"))?;
    std::fs::write(dir.join("main.py"), format!("{code}\n# {marker}\n"))?;
    Ok(())
}

fn deploy_publish(node: &Nimbus, dir: &std::path::Path) -> anyhow::Result<()> {
    let ok = Command::new(&node.binary)
        .args(["deploy", "--publish"])
        .arg(dir)
        .env("NIMBUS_ENDPOINT", &node.endpoint)
        .env("NIMBUS_DATA_DIR", &node.data)
        .stdout(std::process::Stdio::null())
        .status()?;
    if !ok.success() {
        bail!("deploying {} failed", dir.display());
    }
    Ok(())
}

/// GETs `path` from `node` and answers the body as JSON.
async fn get_json(node: &Nimbus, path: &str) -> anyhow::Result<serde_json::Value> {
    let addr = node.endpoint.trim_start_matches("http://").to_string();
    let tcp = tokio::net::TcpStream::connect(&addr).await?;
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
    tokio::spawn(conn);
    let req = Request::get(path)
        .header("host", &addr)
        .header("authorization", format!("Bearer {}", node.token))
        .body(Empty::<Bytes>::new())?;
    let res = send.send_request(req).await?;
    let body = res.into_body().collect().await?.to_bytes();
    serde_json::from_slice(&body).context("a JSON answer")
}

/// The latencies (ms) of `REQUESTS` GETs of `path`, one at a time on one connection, after
/// a few unmeasured ones.
async fn latencies(node: &Nimbus, path: &str) -> anyhow::Result<Vec<f64>> {
    let addr = node.endpoint.trim_start_matches("http://").to_string();
    let tcp = tokio::net::TcpStream::connect(&addr).await?;
    tcp.set_nodelay(true)?;
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
    tokio::spawn(conn);
    let mut out = Vec::with_capacity(REQUESTS);
    for i in 0..REQUESTS + 10 {
        // A larger answer may be read before the connection is ready for the next request.
        send.ready().await?;
        let req = Request::get(path)
            .header("host", &addr)
            .header("authorization", format!("Bearer {}", node.token))
            .body(Empty::<Bytes>::new())?;
        let t = Instant::now();
        let res = send.send_request(req).await?;
        let status = res.status();
        let body = res.into_body().collect().await?.to_bytes();
        if !status.is_success() || body.windows(17).any(|w| w == b"unreachable_nodes") {
            bail!("unexpected answer {status} to {path}: {body:?}");
        }
        if i >= 10 {
            out.push(t.elapsed().as_secs_f64() * 1000.0);
        }
    }
    Ok(out)
}

fn target(node: &Nimbus, function: String) -> Target {
    Target {
        name: "calls",
        addr: node.endpoint.trim_start_matches("http://").to_string(),
        path: format!("/v1/functions/{function}/invocations"),
        auth: Auth::Bearer(node.token.clone()),
    }
}

pub fn bench_fanout(args: &[String]) -> anyhow::Result<()> {
    let opts = parse(args)?;
    let root = root();
    build_nimbus(&root)?;
    let binary = root.join("target/release/nimbus");
    let work = std::env::temp_dir().join(format!("nimbus-bench-fanout-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    // Held to the end: the database is dropped with it.
    let (_db, shared) = shared_stores()?;
    let single = Nimbus::start(&binary, &work.join("single"), &[])?;
    let nodes = [
        Nimbus::start(&binary, &work.join("a"), &shared)?,
        Nimbus::start(&binary, &work.join("b"), &shared)?,
        Nimbus::start(&binary, &work.join("c"), &shared)?,
    ];
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;

    // Every node sees the three before versions are placed.
    let deadline = Instant::now() + Duration::from_secs(15);
    let ids: Vec<String> = loop {
        let mut seen = Vec::new();
        for n in &nodes {
            let v = rt.block_on(get_json(n, "/v1/nodes"))?;
            let alive: Vec<&serde_json::Value> = v["nodes"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|n| n["state"] == "alive")
                .collect();
            seen.push(alive.len());
        }
        if seen.iter().all(|n| *n == 3) {
            let v = rt.block_on(get_json(&nodes[0], "/v1/nodes"))?;
            break nodes
                .iter()
                .map(|node| {
                    v["nodes"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .find(|n| n["address"] == node.endpoint.as_str())
                        .and_then(|n| n["id"].as_str())
                        .map(str::to_string)
                        .context("a node's id")
                })
                .collect::<anyhow::Result<_>>()?;
        }
        if Instant::now() > deadline {
            bail!("the nodes did not see each other: {seen:?}");
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    std::thread::sleep(Duration::from_millis(1500));

    // The same function on both; in the cluster, versions until each node is one's home.
    chatty_project(&work.join("p-single"), "single")?;
    single.deploy(&work.join("p-single"))?;
    let mut homes: Vec<(usize, u32)> = Vec::new();
    for v in 1..=30u32 {
        let dir = work.join(format!("p-{v}"));
        chatty_project(&dir, &v.to_string())?;
        deploy_publish(&nodes[0], &dir)?;
        let key = platform::placement::key("chatty", &v.to_string(), 0);
        let home = platform::placement::home(&key, ids.iter(), |n| n.as_str()).context("a home")?;
        let index = ids.iter().position(|i| i == home).expect("one of them");
        if homes.iter().all(|(i, _)| *i != index) {
            homes.push((index, v));
        }
        if homes.len() == 3 {
            break;
        }
    }
    if homes.len() < 3 {
        bail!("30 versions did not have three homes");
    }
    // About the same calls on both: three seconds on the single node, one per version (at
    // its home) in the cluster.
    let fill = Duration::from_secs(3);
    rt.block_on(run(&target(&single, "chatty".into()), 1, fill))?;
    for (index, v) in &homes {
        let t = target(&nodes[*index], format!("chatty:{v}"));
        rt.block_on(run(&t, 1, fill / 3))?;
    }
    let count = |node: &Nimbus| -> anyhow::Result<u64> {
        let v = rt.block_on(get_json(node, "/v1/functions/chatty/stats"))?;
        Ok(v["totals"]["invocations"].as_u64().unwrap_or(0))
    };
    println!(
        "calls recorded: single node {}, cluster {} (nodes {})",
        count(&single)?,
        count(&nodes[0])?,
        ids.join(", ")
    );

    println!(
        "{:<12} {:<26} {:>9} {:>8} {:>8}",
        "query", "target", "requests", "p50_ms", "p99_ms"
    );
    let mut results: Vec<(&str, Vec<f64>, Vec<f64>)> = QUERIES
        .iter()
        .map(|(name, _)| (*name, Vec::new(), Vec::new()))
        .collect();
    for _ in 0..opts.rounds {
        for (i, (name, path)) in QUERIES.iter().enumerate() {
            for (target, node, into) in [
                ("1 node (SQLite)", &single, 1),
                ("1 of 3 (PostgreSQL+S3)", &nodes[0], 2),
            ] {
                let mut l = rt.block_on(latencies(node, path))?;
                let (p50, p99) = median_ms(&mut l);
                println!("{name:<12} {target:<26} {REQUESTS:>9} {p50:>8.3} {p99:>8.3}");
                let r = &mut results[i];
                if into == 1 {
                    r.1.extend(l);
                } else {
                    r.2.extend(l);
                }
            }
        }
    }
    println!();
    println!("all rounds ({} requests each):", REQUESTS * opts.rounds);
    for (name, mut one, mut three) in results {
        let (p50_1, p99_1) = median_ms(&mut one);
        let (p50_3, p99_3) = median_ms(&mut three);
        println!(
            "  {name:<12} p50 {p50_1:.3} ms -> {p50_3:.3} ms ({:+.2} ms)   p99 {p99_1:.3} ms -> {p99_3:.3} ms",
            p50_3 - p50_1
        );
    }
    drop((single, nodes));
    let _ = std::fs::remove_dir_all(&work);
    Ok(())
}
