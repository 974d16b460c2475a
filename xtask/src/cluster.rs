//! `cargo xtask bench-cluster`: what the cluster's shared engines cost, in one run.
//!
//! One node on PostgreSQL + S3 (the machine's PostgreSQL, a database of the run's own; the
//! S3 store `.ci/run` starts, under a prefix of the run's own) against one node on SQLite
//! and the local disk, alternated round by round: deploy time, warm invoke latency (p50 at
//! one connection; the hot path must stay on the in-memory cache), warm invoke throughput,
//! and the durable asynchronous accept rate. Then two more PostgreSQL nodes join: the
//! throughput of the three nodes (the connections split over them) against the first alone.
//! On a 2-core machine three nodes share the same two cores, so that ratio measures the
//! cluster's overhead, not scaling.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;

use crate::{Auth, Nimbus, Stats, Target, build_nimbus, median_ms, parse, root, run};

/// One connection count's samples: p50s and throughputs of SQLite, then of PostgreSQL.
type Compared = (usize, Vec<f64>, Vec<f64>, Vec<f64>, Vec<f64>);

/// Events submitted per accept measurement.
const ASYNC_EVENTS: usize = 5_000;

fn psql(sql: &str) -> anyhow::Result<()> {
    let base = postgres_base();
    let ok = Command::new("psql")
        .arg(&base)
        .args(["-qXc", sql])
        .status()
        .context("psql (PostgreSQL's client)")?;
    if !ok.success() {
        bail!("{sql} failed on {base}");
    }
    Ok(())
}

fn postgres_base() -> String {
    std::env::var("NIMBUS_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// A database of this run's own, dropped at the end.
pub(crate) struct Database {
    name: String,
    pub(crate) url: String,
}

impl Database {
    pub(crate) fn new() -> anyhow::Result<Database> {
        let name = format!("nimbus_bench_{:016x}", rand::random::<u64>());
        psql(&format!("CREATE DATABASE {name}"))?;
        let base = postgres_base();
        let url = format!("{}/{name}", &base[..base.rfind('/').unwrap()]);
        Ok(Database { name, url })
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        let _ = psql(&format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            self.name
        ));
    }
}

pub(crate) fn blobs_url() -> String {
    let endpoint =
        std::env::var("NIMBUS_TEST_S3").unwrap_or_else(|_| "http://127.0.0.1:8333".into());
    let bucket = std::env::var("NIMBUS_TEST_S3_BUCKET").unwrap_or_else(|_| "nimbus-test".into());
    format!(
        "s3://{bucket}/bench-{:016x}?endpoint={endpoint}&region=us-east-1&access_key_id=nimbus-test&secret_access_key=nimbus-test-secret",
        rand::random::<u64>()
    )
}

/// A copy of `bench/noop` whose code differs by `marker`, so each deploy uploads new code.
fn noop_project(dir: &Path, marker: &str) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    let root = root().join("bench/noop");
    std::fs::copy(root.join("nimbus.yaml"), dir.join("nimbus.yaml"))?;
    let code = std::fs::read_to_string(root.join("main.py"))?;
    std::fs::write(dir.join("main.py"), format!("{code}\n# {marker}\n"))?;
    Ok(())
}

fn target(node: &Nimbus, name: &'static str) -> Target {
    Target {
        name,
        addr: node.endpoint.trim_start_matches("http://").to_string(),
        path: "/v1/functions/noop/invocations".into(),
        auth: Auth::Bearer(node.token.clone()),
    }
}

/// Durable asynchronous accepts per second: `ASYNC_EVENTS` over `conns` connections.
async fn accept_rate(node: &Nimbus, conns: usize) -> anyhow::Result<f64> {
    let addr = node.endpoint.trim_start_matches("http://").to_string();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..conns {
        let (addr, token) = (addr.clone(), node.token.clone());
        tasks.push(tokio::spawn(async move {
            let tcp = tokio::net::TcpStream::connect(&addr).await?;
            tcp.set_nodelay(true)?;
            let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
            tokio::spawn(conn);
            for _ in 0..ASYNC_EVENTS / conns {
                let req = Request::post("/v1/functions/noop/invocations")
                    .header("host", &addr)
                    .header("authorization", format!("Bearer {token}"))
                    .header("x-nimbus-invocation-type", "async")
                    .body(Full::new(Bytes::from_static(b"{}")))?;
                let res = send.send_request(req).await?;
                let status = res.status();
                let body = res.into_body().collect().await?.to_bytes();
                if status.as_u16() != 202 {
                    bail!("unexpected answer {status}: {body:?}");
                }
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok((conns * (ASYNC_EVENTS / conns)) as f64 / started.elapsed().as_secs_f64())
}

pub fn bench_cluster(args: &[String]) -> anyhow::Result<()> {
    let opts = parse(args)?;
    let root = root();
    build_nimbus(&root)?;
    let binary = root.join("target/release/nimbus");
    let work = std::env::temp_dir().join(format!("nimbus-bench-cluster-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    let db = Database::new()?;
    let blobs = blobs_url();
    let shared: Vec<std::ffi::OsString> = ["--db", &db.url, "--blobs", &blobs]
        .into_iter()
        .map(Into::into)
        .collect();
    let sqlite = Nimbus::start(&binary, &work.join("sqlite"), &[])?;
    let pg = Nimbus::start(&binary, &work.join("pg-a"), &shared)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;

    // Deploy: new code each time (upload, check, store), alternating the two nodes.
    let (mut deploy_sqlite, mut deploy_pg) = (Vec::new(), Vec::new());
    for round in 0..opts.rounds.max(3) {
        for (node, times) in [(&sqlite, &mut deploy_sqlite), (&pg, &mut deploy_pg)] {
            let dir = work.join(format!("project-{round}-{}", times.len()));
            noop_project(&dir, &format!("{round}"))?;
            let t = Instant::now();
            node.deploy(&dir)?;
            times.push(t.elapsed().as_secs_f64() * 1000.0);
        }
    }
    let duration = Duration::from_secs(opts.seconds);
    let (t_sqlite, t_pg) = (
        target(&sqlite, "1 node, SQLite"),
        target(&pg, "1 node, PostgreSQL+S3"),
    );
    println!(
        "{:<24} {:>5} {:>9} {:>10} {:>8} {:>8}",
        "target", "conns", "requests", "req/s", "p50_ms", "p99_ms"
    );
    let mut results: Vec<Compared> = Vec::new();
    for conns in [1, opts.connections] {
        let (mut p50_s, mut p50_p, mut rps_s, mut rps_p) = (vec![], vec![], vec![], vec![]);
        for _ in 0..opts.rounds {
            let s: Stats = rt.block_on(run(&t_sqlite, conns, duration))?;
            let p: Stats = rt.block_on(run(&t_pg, conns, duration))?;
            s.print(t_sqlite.name, conns);
            p.print(t_pg.name, conns);
            p50_s.push(s.p50_ms);
            p50_p.push(p.p50_ms);
            rps_s.push(s.rps);
            rps_p.push(p.rps);
        }
        results.push((conns, p50_s, p50_p, rps_s, rps_p));
    }
    let (mut acc_s, mut acc_p) = (Vec::new(), Vec::new());
    for _ in 0..opts.rounds {
        acc_s.push(rt.block_on(accept_rate(&sqlite, opts.connections))?);
        acc_p.push(rt.block_on(accept_rate(&pg, opts.connections))?);
    }
    // Let the queued events run before the three-node part.
    std::thread::sleep(Duration::from_secs(5));

    let b = Nimbus::start(&binary, &work.join("pg-b"), &shared)?;
    let c = Nimbus::start(&binary, &work.join("pg-c"), &shared)?;
    let targets = [
        target(&pg, "node A"),
        target(&b, "node B"),
        target(&c, "node C"),
    ];
    // Each node runs the function once before measuring (its cold start is not measured).
    for t in &targets {
        rt.block_on(run(t, 1, Duration::from_millis(200)))?;
    }
    let (mut one, mut three) = (Vec::new(), Vec::new());
    let per_node = (opts.connections / 3).max(1);
    for _ in 0..opts.rounds {
        let alone = rt.block_on(run(&targets[0], per_node * 3, duration))?;
        let all = rt.block_on(async {
            let runs = targets.iter().map(|t| run(t, per_node, duration));
            futures_util::future::try_join_all(runs).await
        })?;
        one.push(alone.rps);
        three.push(all.iter().map(|s| s.rps).sum::<f64>());
    }

    println!();
    println!("medians of {} rounds:", opts.rounds);
    let med = |v: &mut Vec<f64>| median_ms(v).0;
    println!(
        "  deploy (new code):        SQLite {:7.0} ms   PostgreSQL+S3 {:7.0} ms   ({:.2}x)",
        med(&mut deploy_sqlite),
        med(&mut deploy_pg),
        med(&mut deploy_pg) / med(&mut deploy_sqlite)
    );
    for (conns, mut p50_s, mut p50_p, mut rps_s, mut rps_p) in results {
        println!(
            "  warm invoke, {conns:>2} conn(s): p50 SQLite {:.3} ms   PostgreSQL+S3 {:.3} ms   ({:+.1}%); req/s {:.0} vs {:.0}",
            med(&mut p50_s),
            med(&mut p50_p),
            (med(&mut p50_p) / med(&mut p50_s) - 1.0) * 100.0,
            med(&mut rps_s),
            med(&mut rps_p)
        );
    }
    println!(
        "  async accept, {} conns:    SQLite {:.0}/s   PostgreSQL {:.0}/s   ({:.2}x)",
        opts.connections,
        med(&mut acc_s),
        med(&mut acc_p),
        med(&mut acc_p) / med(&mut acc_s)
    );
    println!(
        "  warm invoke throughput, {} conns: 1 node {:.0} req/s   3 nodes {:.0} req/s   ({:.2}x; one machine's cores shared)",
        per_node * 3,
        med(&mut one),
        med(&mut three),
        med(&mut three) / med(&mut one)
    );
    drop((sqlite, pg, b, c));
    let _ = std::fs::remove_dir_all(&work);
    Ok(())
}
