//! `cargo xtask bench-cluster`: what the cluster's shared engines cost, in one run.
//!
//! One node on PostgreSQL + S3 (the machine's PostgreSQL, a database of the run's own; the
//! S3 store `.ci/run` starts, under a prefix of the run's own) against one node on SQLite
//! and the local disk, alternated round by round: deploy time, warm invoke latency (p50 at
//! one connection; the hot path must stay on the in-memory cache), warm invoke throughput,
//! and the durable asynchronous accept rate. Then what PostgreSQL carries, read from its own
//! statistics: transactions, rows written and WAL bytes of an idle node, per warm invoke and
//! per asynchronous invocation (the figures of ARCHITECTURE.md's scale model). Then two more
//! PostgreSQL nodes join: the throughput of the three nodes (the connections split over
//! them) against the first alone, and the three idle nodes' load. On a 2-core machine three
//! nodes share the same two cores, so that ratio measures the cluster's overhead, not scaling.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::{
    Auth, Nimbus, Stats, Target, build_nimbus, median_ms, parse, root, run, submit_async,
    wait_succeeded,
};

/// One connection count's samples: p50s and throughputs of SQLite, then of PostgreSQL.
type Compared = (usize, Vec<f64>, Vec<f64>, Vec<f64>, Vec<f64>);

/// Events submitted per accept measurement.
const ASYNC_EVENTS: usize = 5_000;

/// How long idle nodes' load on PostgreSQL is read over.
const IDLE_WINDOW: Duration = Duration::from_secs(20);

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
    url: String,
}

impl Database {
    fn new() -> anyhow::Result<Database> {
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

fn blobs_url() -> String {
    let endpoint =
        std::env::var("NIMBUS_TEST_S3").unwrap_or_else(|_| "http://127.0.0.1:8333".into());
    let bucket = std::env::var("NIMBUS_TEST_S3_BUCKET").unwrap_or_else(|_| "nimbus-test".into());
    format!(
        "s3://{bucket}/bench-{:016x}?endpoint={endpoint}&region=us-east-1&access_key_id=nimbus-test&secret_access_key=nimbus-test-secret",
        rand::random::<u64>()
    )
}

/// A database and an S3 prefix of the run's own, and the server flags that put a node on
/// them (`--db`, `--blobs`); the database is dropped with the first.
pub(crate) fn shared_stores() -> anyhow::Result<(Database, Vec<std::ffi::OsString>)> {
    let db = Database::new()?;
    let blobs = blobs_url();
    let flags = ["--db", &db.url, "--blobs", &blobs]
        .into_iter()
        .map(Into::into)
        .collect();
    Ok((db, flags))
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
/// Returns the rate and each connection's last request id (to wait for the runs).
async fn accept_rate(node: &Nimbus, conns: usize) -> anyhow::Result<(f64, Vec<String>)> {
    let addr = node.endpoint.trim_start_matches("http://");
    let started = Instant::now();
    let lasts = submit_async(addr, &node.token, ASYNC_EVENTS, conns).await?;
    let rate = (conns * (ASYNC_EVENTS / conns)) as f64 / started.elapsed().as_secs_f64();
    Ok((rate, lasts))
}

/// What PostgreSQL has done so far: the bench database's committed transactions and rows
/// written (`pg_stat_database`), and the server's write-ahead log position in bytes (the
/// whole server's: run the bench on an otherwise quiet PostgreSQL).
#[derive(Clone, Copy)]
struct PgCounters {
    at: Instant,
    xacts: f64,
    rows: f64,
    wal_bytes: f64,
}

/// How long a PostgreSQL backend may hold its statistics before publishing them: 1 s while
/// busy, 10 s once idle (PostgreSQL 15's `PGSTAT_IDLE_INTERVAL`). Readings wait this long
/// after the work they count.
const PG_STATS_DELAY: Duration = Duration::from_secs(11);

fn pg_counters(db: &Database) -> anyhow::Result<PgCounters> {
    let sql = format!(
        "SELECT xact_commit, tup_inserted + tup_updated + tup_deleted, \
         pg_current_wal_lsn() - '0/0'::pg_lsn FROM pg_stat_database WHERE datname = '{}'",
        db.name
    );
    let out = Command::new("psql")
        .arg(&db.url)
        .args(["-qXtAF", " ", "-c", &sql])
        .output()
        .context("psql (PostgreSQL's client)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let v: Vec<f64> = text
        .split_whitespace()
        .map(str::parse)
        .collect::<Result<_, _>>()
        .with_context(|| format!("pg_stat_database: {text:?}"))?;
    let [xacts, rows, wal_bytes] = v[..] else {
        bail!("pg_stat_database: {text:?}");
    };
    Ok(PgCounters {
        at: Instant::now(),
        xacts,
        rows,
        wal_bytes,
    })
}

/// The connections open to the bench database now (every node's pool and listener).
fn pg_connections(db: &Database) -> anyhow::Result<usize> {
    let sql = format!(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = '{}'",
        db.name
    );
    let out = Command::new("psql")
        .arg(postgres_base())
        .args(["-qXtA", "-c", &sql])
        .output()
        .context("psql (PostgreSQL's client)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.trim()
        .parse()
        .with_context(|| format!("pg_stat_activity: {text:?}"))
}

/// Backlogs at which a node's read of the cluster's waiting counts is timed.
const BACKLOGS: [usize; 2] = [10_000, 100_000];

/// How long PostgreSQL takes (its own execution time, median of 5) to answer one node's read
/// of the cluster's waiting counts (`AsyncQueue::waiting`, which every node makes every
/// 500 ms, and `pending`, as often) with `rows` events waiting. Run with no node attached:
/// the rows are of a function none has.
fn waiting_read_ms(db: &Database, rows: usize) -> anyhow::Result<f64> {
    let fill = format!(
        "DELETE FROM async_invocations; \
         INSERT INTO async_invocations (id, function, payload, status, attempts, \
         function_errors, enqueued_at_ms, next_attempt_at_ms, updated_at_ms) \
         SELECT 'backlog-' || i, 'backlog-' || (i % 10), '\\x7b7d', 'queued', 0, 0, i, i, i \
         FROM generate_series(1, {rows}) i; ANALYZE async_invocations"
    );
    let ok = Command::new("psql")
        .arg(&db.url)
        .args(["-qXc", &fill])
        .status()
        .context("psql (PostgreSQL's client)")?;
    if !ok.success() {
        bail!("filling the queue failed");
    }
    let mut times = Vec::new();
    for _ in 0..5 {
        // The statement `PgStore::waiting` runs.
        let out = Command::new("psql")
            .arg(&db.url)
            .args([
                "-qXtA",
                "-c",
                "EXPLAIN (ANALYZE, FORMAT JSON) SELECT function, COUNT(*) AS n \
                 FROM async_invocations WHERE status IN ('queued', 'retrying') GROUP BY function",
            ])
            .output()
            .context("psql (PostgreSQL's client)")?;
        let plan: serde_json::Value = serde_json::from_slice(&out.stdout)
            .with_context(|| format!("EXPLAIN: {}", String::from_utf8_lossy(&out.stdout)))?;
        let ms = plan[0]["Execution Time"]
            .as_f64()
            .with_context(|| format!("EXPLAIN: {plan}"))?;
        times.push(ms);
    }
    Ok(median_ms(&mut times).0)
}

/// PostgreSQL's work between two readings, less what idle nodes do in that time (`idle`
/// per second), per `ops` operations: (transactions, rows written, WAL bytes).
fn per_op(a: PgCounters, b: PgCounters, idle: (f64, f64, f64), ops: f64) -> (f64, f64, f64) {
    let secs = (b.at - a.at).as_secs_f64();
    (
        ((b.xacts - a.xacts) - idle.0 * secs).max(0.0) / ops,
        ((b.rows - a.rows) - idle.1 * secs).max(0.0) / ops,
        ((b.wal_bytes - a.wal_bytes) - idle.2 * secs).max(0.0) / ops,
    )
}

/// What `nodes` idle nodes cost PostgreSQL per second (heartbeats, the change feed's and the
/// shared queue's polls, timers' and leases' ticks), read over `window`.
fn idle_rate(db: &Database, window: Duration) -> anyhow::Result<(f64, f64, f64)> {
    let a = pg_counters(db)?;
    std::thread::sleep(window);
    let b = pg_counters(db)?;
    Ok(per_op(a, b, (0.0, 0.0, 0.0), (b.at - a.at).as_secs_f64()))
}

pub fn bench_cluster(args: &[String]) -> anyhow::Result<()> {
    let opts = parse(args)?;
    let root = root();
    build_nimbus(&root)?;
    let binary = root.join("target/release/nimbus");
    let work = std::env::temp_dir().join(format!("nimbus-bench-cluster-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    let (db, shared) = shared_stores()?;
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
        for (node, rates) in [(&sqlite, &mut acc_s), (&pg, &mut acc_p)] {
            let (rate, lasts) = rt.block_on(accept_rate(node, opts.connections))?;
            rates.push(rate);
            // The queued events run before the next measurement, which they would slow.
            let addr = node.endpoint.trim_start_matches("http://");
            rt.block_on(wait_succeeded(addr, &node.token, &lasts))?;
        }
    }

    // What PostgreSQL carries: idle, per warm invoke, per asynchronous invocation.
    println!();
    println!("PostgreSQL's load (transactions, rows written, WAL bytes):");
    std::thread::sleep(PG_STATS_DELAY);
    let idle_one = idle_rate(&db, IDLE_WINDOW)?;
    let before = pg_counters(&db)?;
    let warm = rt.block_on(run(&t_pg, 1, duration))?;
    std::thread::sleep(PG_STATS_DELAY);
    let after = pg_counters(&db)?;
    let per_warm = per_op(before, after, idle_one, warm.requests as f64);
    let before = pg_counters(&db)?;
    let (_, lasts) = rt.block_on(accept_rate(&pg, opts.connections))?;
    rt.block_on(wait_succeeded(
        pg.endpoint.trim_start_matches("http://"),
        &pg.token,
        &lasts,
    ))?;
    std::thread::sleep(PG_STATS_DELAY);
    let after = pg_counters(&db)?;
    let per_async = per_op(before, after, idle_one, ASYNC_EVENTS as f64);

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
    std::thread::sleep(PG_STATS_DELAY);
    let idle_three = idle_rate(&db, IDLE_WINDOW)?;
    // A node's pool keeps what its busiest moment opened (up to --db-connections-max).
    let connections_one = pg_connections(&db)?;
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
    let connections_three = pg_connections(&db)?;

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
    let show = |what: &str, (x, r, w): (f64, f64, f64)| {
        println!("  {what:<40} {x:9.2} transactions  {r:9.2} rows written  {w:10.0} WAL bytes");
    };
    show("idle, 1 node, per second:", idle_one);
    show("idle, 3 nodes, per second:", idle_three);
    show("per warm synchronous invoke:", per_warm);
    show("per asynchronous invocation (accept+run):", per_async);
    println!(
        "  connections open: {connections_one} with node A after its load and B, C idle; {connections_three} after all three's"
    );
    drop((sqlite, pg, b, c));
    for rows in BACKLOGS {
        let ms = waiting_read_ms(&db, rows)?;
        println!(
            "  one node's read of the waiting counts, {rows} events waiting: {ms:.2} ms \
             (every node makes 4 such reads a second)"
        );
    }
    let _ = std::fs::remove_dir_all(&work);
    Ok(())
}
