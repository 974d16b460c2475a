//! Project automation. `cargo xtask bench-invoke` measures warm synchronous invoke latency
//! and throughput of a no-op Python function through Nimbus's HTTP API, against a minimal
//! asyncio HTTP server answering the same bytes, both on this machine in the same run.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("bench-invoke") => bench_invoke(&args[1..]),
        _ => {
            eprintln!(
                "usage: cargo xtask bench-invoke [--seconds N] [--connections N]\n\n\
                 Builds the release binary, starts a server and the asyncio baseline, and\n\
                 prints p50/p99 latency and throughput of both, with their ratio."
            );
            std::process::exit(2);
        }
    }
}

struct Options {
    seconds: u64,
    connections: usize,
}

fn parse(args: &[String]) -> anyhow::Result<Options> {
    let mut o = Options {
        seconds: 5,
        connections: 16,
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let v = it.next().context("missing value")?;
        match a.as_str() {
            "--seconds" => o.seconds = v.parse()?,
            "--connections" => o.connections = v.parse()?,
            other => bail!("unknown option {other}"),
        }
    }
    Ok(o)
}

/// Kills the child when dropped, so a failed run leaves no server behind.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Starts a process and returns it with the first stdout line that starts with `prefix`.
fn start(cmd: &mut Command, prefix: &str) -> anyhow::Result<(Guard, String)> {
    let mut child = cmd.stdout(Stdio::piped()).spawn().context("spawning")?;
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let guard = Guard(child);
    loop {
        let line = lines.next().context("process exited early")??;
        if let Some(rest) = line.strip_prefix(prefix) {
            std::thread::spawn(move || for _ in lines {});
            return Ok((guard, rest.trim().to_string()));
        }
    }
}

fn bench_invoke(args: &[String]) -> anyhow::Result<()> {
    let opts = parse(args)?;
    let root = root();
    let status = Command::new(env!("CARGO"))
        .args(["build", "--release", "-p", "nimbus"])
        .current_dir(&root)
        .status()?;
    if !status.success() {
        bail!("building nimbus failed");
    }
    let nimbus = root.join("target/release/nimbus");
    let data = std::env::temp_dir().join(format!("nimbus-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&data);

    let (_server, endpoint) = start(
        Command::new(&nimbus)
            .args(["server", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(&data)
            .env("NIMBUS_LOG", "warn"),
        "nimbus listening on ",
    )?;
    let deployed = Command::new(&nimbus)
        .args(["deploy"])
        .arg(root.join("bench/noop"))
        .env("NIMBUS_ENDPOINT", &endpoint)
        .env("NIMBUS_DATA_DIR", &data)
        .status()?;
    if !deployed.success() {
        bail!("deploying the no-op function failed");
    }
    let token = std::fs::read_to_string(data.join("admin.token"))?
        .trim()
        .to_string();
    let python = ["/usr/bin/python3", "/usr/local/bin/python3"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .unwrap_or("python3");
    let (_baseline, port) = start(
        Command::new(python).arg(root.join("bench/baseline_server.py")),
        "listening on ",
    )?;

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let nimbus_target = Target {
        name: "nimbus (python no-op)",
        addr: endpoint.trim_start_matches("http://").to_string(),
        path: "/v1/functions/noop/invocations".into(),
        token: Some(token),
    };
    let baseline_target = Target {
        name: "asyncio baseline",
        addr: format!("127.0.0.1:{port}"),
        path: "/".into(),
        token: None,
    };
    println!(
        "{:<24} {:>5} {:>9} {:>10} {:>8} {:>8}",
        "target", "conns", "requests", "req/s", "p50_ms", "p99_ms"
    );
    for conns in [1, opts.connections] {
        let duration = Duration::from_secs(opts.seconds);
        // Alternate the two targets so drift on the machine hits both alike.
        let base = rt.block_on(run(&baseline_target, conns, duration))?;
        let nim = rt.block_on(run(&nimbus_target, conns, duration))?;
        base.print(baseline_target.name, conns);
        nim.print(nimbus_target.name, conns);
        println!(
            "  -> at {conns} conn(s): p50 nimbus/baseline = {:.2}x ({:+.3} ms), throughput = {:.2}x",
            nim.p50_ms / base.p50_ms,
            nim.p50_ms - base.p50_ms,
            nim.rps / base.rps
        );
    }
    let _ = std::fs::remove_dir_all(&data);
    Ok(())
}

struct Target {
    name: &'static str,
    addr: String,
    path: String,
    token: Option<String>,
}

struct Stats {
    requests: usize,
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
}

impl Stats {
    fn print(&self, name: &str, conns: usize) {
        println!(
            "{:<24} {:>5} {:>9} {:>10.0} {:>8.3} {:>8.3}",
            name, conns, self.requests, self.rps, self.p50_ms, self.p99_ms
        );
    }
}

/// Runs `conns` keep-alive connections, each sending requests back to back, for `duration`
/// after a one-second warm-up; returns latency percentiles and throughput.
async fn run(target: &Target, conns: usize, duration: Duration) -> anyhow::Result<Stats> {
    let warmup = Duration::from_secs(1);
    let mut tasks = Vec::new();
    for _ in 0..conns {
        let addr = target.addr.clone();
        let path = target.path.clone();
        let token = target.token.clone();
        tasks.push(tokio::spawn(async move {
            let tcp = tokio::net::TcpStream::connect(&addr).await?;
            tcp.set_nodelay(true)?;
            let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
            tokio::spawn(conn);
            let mut latencies = Vec::with_capacity(100_000);
            let start = Instant::now();
            let mut measure_start = None;
            while start.elapsed() < warmup + duration {
                let mut req = Request::post(&path)
                    .header("host", &addr)
                    .header("content-type", "application/json");
                if let Some(t) = &token {
                    req = req.header("authorization", format!("Bearer {t}"));
                }
                let req = req.body(Full::new(Bytes::from_static(b"{}")))?;
                let t0 = Instant::now();
                let res = send.send_request(req).await?;
                let status = res.status();
                let body = res.into_body().collect().await?.to_bytes();
                if !status.is_success() || &body[..] != b"null" {
                    bail!("unexpected answer {status}: {body:?}");
                }
                if start.elapsed() >= warmup {
                    measure_start.get_or_insert_with(Instant::now);
                    latencies.push(t0.elapsed());
                }
            }
            let measured = measure_start.map(|s| s.elapsed()).unwrap_or_default();
            anyhow::Ok((latencies, measured))
        }));
    }
    let mut all = Vec::new();
    let mut wall = Duration::ZERO;
    for t in tasks {
        let (lat, measured) = t.await??;
        all.extend(lat);
        wall = wall.max(measured);
    }
    all.sort_unstable();
    let pct =
        |p: f64| all[((all.len() as f64 * p) as usize).min(all.len() - 1)].as_secs_f64() * 1000.0;
    Ok(Stats {
        requests: all.len(),
        rps: all.len() as f64 / wall.as_secs_f64(),
        p50_ms: pct(0.50),
        p99_ms: pct(0.99),
    })
}
