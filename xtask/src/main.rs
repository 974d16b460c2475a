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

mod bucket_events;
mod cluster;
mod fanout;
mod flow;
mod forward;
mod queue;
mod s3;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("bench-invoke") => bench_invoke(&args[1..]),
        Some("bench-gateway") => bench_gateway(&args[1..]),
        Some("bench-cold") => bench_cold(&args[1..]),
        Some("bench-async") => bench_async(&args[1..]),
        Some("bench-telemetry") => bench_telemetry(&args[1..]),
        Some("bench-keepalive") => bench_keepalive(&args[1..]),
        Some("bench-deploy") => bench_deploy(&args[1..]),
        Some("bench-lambda-api") => bench_lambda_api(&args[1..]),
        Some("bench-runtime-api") => bench_runtime_api(&args[1..]),
        Some("bench-patterns") => bench_patterns(&args[1..]),
        Some("bench-timers") => bench_timers(&args[1..]),
        Some("bench-bus") => bench_bus(&args[1..]),
        Some("bench-s3") => s3::bench_s3(&args[1..]),
        Some("bench-bucket-events") => bucket_events::bench_bucket_events(&args[1..]),
        Some("bench-queue") => queue::bench_queue(&args[1..]),
        Some("bench-flow") => flow::bench_flow(&args[1..]),
        Some("bench-cluster") => cluster::bench_cluster(&args[1..]),
        Some("bench-forward") => forward::bench_forward(&args[1..]),
        Some("bench-fanout") => fanout::bench_fanout(&args[1..]),
        _ => {
            eprintln!(
                "usage: cargo xtask bench-invoke [--seconds N] [--connections N]\n\
                 \x20      cargo xtask bench-gateway [--seconds N] [--connections N]\n\
                 \x20      cargo xtask bench-cold [--seconds N]\n\
                 \x20      cargo xtask bench-async [--connections N]\n\
                 \x20      cargo xtask bench-telemetry [--seconds N] [--connections N] [--rounds N]\n\
                 \x20      cargo xtask bench-keepalive [--rounds N]\n\
                 \x20      cargo xtask bench-deploy [--rounds N]\n\
                 \x20      cargo xtask bench-lambda-api [--seconds N] [--connections N] [--rounds N]\n\
                 \x20      cargo xtask bench-runtime-api [--seconds N] [--connections N] [--rounds N]\n\
                 \x20      cargo xtask bench-patterns [--rounds N]\n\
                 \x20      cargo xtask bench-timers [--seconds N]\n\
                 \x20      cargo xtask bench-bus [--seconds N] [--connections N]\n\
                 \x20      cargo xtask bench-s3 [--seconds N] [--connections N] [--rounds N]\n\
                 \x20      cargo xtask bench-bucket-events [--seconds N] [--rate N]\n\
                 \x20      cargo xtask bench-cluster [--seconds N] [--connections N] [--rounds N]\n\
                 \x20      cargo xtask bench-forward --nodes URL,URL --token TOKEN [--function F] [--calls N] [--rounds N]\n\
                 \x20      cargo xtask bench-fanout [--rounds N]\n\n\
                 bench-invoke: warm sync-invoke latency and throughput of a no-op Python\n\
                 function against a minimal asyncio server. bench-gateway: wrk against routes\n\
                 through the gateway and against the same servers run directly."
            );
            std::process::exit(2);
        }
    }
}

struct Options {
    seconds: u64,
    connections: usize,
    /// Times each comparison is repeated; medians are reported.
    rounds: usize,
}

fn parse(args: &[String]) -> anyhow::Result<Options> {
    let mut o = Options {
        seconds: 5,
        connections: 16,
        rounds: 3,
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let v = it.next().context("missing value")?;
        match a.as_str() {
            "--seconds" => o.seconds = v.parse()?,
            "--connections" => o.connections = v.parse()?,
            "--rounds" => o.rounds = v.parse::<usize>()?.max(1),
            other => bail!("unknown option {other}"),
        }
    }
    Ok(o)
}

/// The admin's access key (id, secret) from a server's `<data-dir>/aws.credentials`.
fn aws_credentials(data: &Path) -> anyhow::Result<(String, String)> {
    let creds = std::fs::read_to_string(data.join("aws.credentials"))?;
    let field = |name: &str| {
        creds
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim_start_matches([' ', '=']).trim().to_string())
            .context("aws.credentials lacks a field")
    };
    Ok((field("aws_access_key_id")?, field("aws_secret_access_key")?))
}

/// Kills the child when dropped, so a failed run leaves no server behind.
struct Guard(Child);

/// A release `nimbus server` started for a benchmark, on a free port.
struct Nimbus {
    _process: Guard,
    binary: PathBuf,
    data: PathBuf,
    endpoint: String,
    token: String,
}

impl Nimbus {
    /// Starts `binary` as a server on the data dir `data` with extra `flags` (the S3 API
    /// on a free port unless they name one).
    fn start(binary: &Path, data: &Path, flags: &[std::ffi::OsString]) -> anyhow::Result<Nimbus> {
        std::fs::create_dir_all(data)?;
        let s3_default: &[&str] = if flags.iter().any(|f| f == "--s3-listen") {
            &[]
        } else {
            &["--s3-listen", "127.0.0.1:0"]
        };
        let (process, endpoint) = start(
            Command::new(binary)
                .args(["server", "--listen", "127.0.0.1:0"])
                .args(s3_default)
                .args(flags)
                .arg("--data-dir")
                .arg(data)
                // `NIMBUS_BENCH_LOG` (a `NIMBUS_LOG` filter) shows what the server did.
                .env(
                    "NIMBUS_LOG",
                    std::env::var("NIMBUS_BENCH_LOG").unwrap_or_else(|_| "warn".into()),
                ),
            "nimbus listening on ",
        )?;
        let token = std::fs::read_to_string(data.join("admin.token"))?
            .trim()
            .to_string();
        Ok(Nimbus {
            _process: process,
            binary: binary.to_path_buf(),
            data: data.to_path_buf(),
            endpoint,
            token,
        })
    }

    /// Deploys the project in `dir` with the CLI.
    fn deploy(&self, dir: &Path) -> anyhow::Result<()> {
        let deployed = Command::new(&self.binary)
            .arg("deploy")
            .arg(dir)
            .env("NIMBUS_ENDPOINT", &self.endpoint)
            .env("NIMBUS_DATA_DIR", &self.data)
            .stdout(Stdio::null())
            .status()?;
        if !deployed.success() {
            bail!("deploying {} failed", dir.display());
        }
        Ok(())
    }
}

/// Stops the process with SIGTERM, and SIGKILL only if it is still there after 10 s: a
/// Nimbus server killed outright leaves its cgroups behind.
impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(pid) = rustix::process::Pid::from_raw(self.0.id() as i32)
            && rustix::process::kill_process(pid, rustix::process::Signal::TERM).is_ok()
        {
            for _ in 0..200 {
                if !matches!(self.0.try_wait(), Ok(None)) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
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
    build_nimbus(&root)?;
    let nimbus = root.join("target/release/nimbus");
    let data = std::env::temp_dir().join(format!("nimbus-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&data);

    let server = Nimbus::start(&nimbus, &data, &[])?;
    server.deploy(&root.join("bench/noop"))?;
    let (endpoint, token) = (server.endpoint.clone(), server.token.clone());
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
        auth: Auth::Bearer(token),
    };
    let baseline_target = Target {
        name: "asyncio baseline",
        addr: format!("127.0.0.1:{port}"),
        path: "/".into(),
        auth: Auth::None,
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

/// The Lambda API against `/v1` for the same warm no-op function in the same run: what
/// SigV4 (the client signs, the server verifies every request), AWS's shapes and the second
/// router cost per call. The targets alternate, each round; medians of the rounds.
fn bench_lambda_api(args: &[String]) -> anyhow::Result<()> {
    let opts = parse(args)?;
    let root = root();
    build_nimbus(&root)?;
    let data = std::env::temp_dir().join(format!("nimbus-bench-lapi-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&data);
    let server = Nimbus::start(&root.join("target/release/nimbus"), &data, &[])?;
    server.deploy(&root.join("bench/noop"))?;
    let (key_id, secret) = aws_credentials(&data)?;
    let addr = server.endpoint.trim_start_matches("http://").to_string();
    let v1 = Target {
        name: "/v1 (bearer token)",
        addr: addr.clone(),
        path: "/v1/functions/noop/invocations".into(),
        auth: Auth::Bearer(server.token.clone()),
    };
    let lapi = Target {
        name: "Lambda API (SigV4)",
        addr,
        path: "/2015-03-31/functions/noop/invocations".into(),
        auth: Auth::SigV4 { key_id, secret },
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    println!(
        "{:<24} {:>5} {:>9} {:>10} {:>8} {:>8}",
        "target", "conns", "requests", "req/s", "p50_ms", "p99_ms"
    );
    for conns in [1, opts.connections] {
        let duration = Duration::from_secs(opts.seconds);
        let (mut p50, mut rps) = (Vec::new(), Vec::new());
        for _ in 0..opts.rounds {
            let a = rt.block_on(run(&v1, conns, duration))?;
            let b = rt.block_on(run(&lapi, conns, duration))?;
            a.print(v1.name, conns);
            b.print(lapi.name, conns);
            p50.push(b.p50_ms / a.p50_ms);
            rps.push(b.rps / a.rps);
        }
        let (p50, _) = median_ms(&mut p50);
        let (rps, _) = median_ms(&mut rps);
        println!(
            "  -> at {conns} conn(s), median of {} rounds: p50 Lambda API / v1 = {p50:.3}x, throughput = {rps:.3}x",
            opts.rounds
        );
    }
    drop(server);
    let _ = std::fs::remove_dir_all(&data);
    Ok(())
}

/// Warm invoke latency and throughput of the same no-op through the Lambda Runtime API
/// (`runtime: provided`: a minimal Python bootstrap, and AWS's `awslambdaric`) against
/// the native Python shim, on one server in the same run.
fn bench_runtime_api(args: &[String]) -> anyhow::Result<()> {
    let opts = parse(args)?;
    let root = root();
    build_nimbus(&root)?;
    let nimbus = root.join("target/release/nimbus");
    let data = std::env::temp_dir().join(format!("nimbus-bench-rapi-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&data);
    let server = Nimbus::start(&nimbus, &data, &[])?;
    server.deploy(&root.join("bench/noop"))?;
    server.deploy(&root.join("bench/runtime-api/minimal"))?;
    server.deploy(&root.join("bench/runtime-api/ric"))?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let target = |name: &'static str, function: &str| Target {
        name,
        addr: server.endpoint.trim_start_matches("http://").to_string(),
        path: format!("/v1/functions/{function}/invocations"),
        auth: Auth::Bearer(server.token.clone()),
    };
    let targets = [
        target("python shim", "noop"),
        target("rapi minimal", "rapi-noop"),
        target("rapi awslambdaric", "ric-noop"),
    ];
    println!(
        "{:<24} {:>5} {:>9} {:>10} {:>8} {:>8}",
        "target", "conns", "requests", "req/s", "p50_ms", "p99_ms"
    );
    for conns in [1, opts.connections] {
        let duration = Duration::from_secs(opts.seconds);
        // Each round runs every target, so drift on the machine hits them alike.
        let mut stats: Vec<Vec<Stats>> = targets.iter().map(|_| Vec::new()).collect();
        for _ in 0..opts.rounds {
            for (i, t) in targets.iter().enumerate() {
                stats[i].push(rt.block_on(run(t, conns, duration))?);
            }
        }
        let medians: Vec<Stats> = stats
            .into_iter()
            .map(|mut rounds| {
                rounds.sort_by(|a, b| a.p50_ms.total_cmp(&b.p50_ms));
                rounds.swap_remove(rounds.len() / 2)
            })
            .collect();
        for (t, s) in targets.iter().zip(&medians) {
            s.print(t.name, conns);
        }
        for (t, s) in targets.iter().zip(&medians).skip(1) {
            println!(
                "  -> at {conns} conn(s): {} / python shim: p50 {:.2}x ({:+.3} ms), throughput {:.2}x",
                t.name,
                s.p50_ms / medians[0].p50_ms,
                s.p50_ms - medians[0].p50_ms,
                s.rps / medians[0].rps
            );
        }
    }
    drop(server);
    let _ = std::fs::remove_dir_all(&data);
    Ok(())
}

/// Warm throughput of a silent and a logging-heavy function with telemetry on and off (and
/// on with spans exported over OTLP to a collector that takes and discards them), and the
/// server's CPU per call at a fixed 1,000 calls/s: what records, logs, metrics and spans
/// cost.
fn bench_telemetry(args: &[String]) -> anyhow::Result<()> {
    let opts = parse(args)?;
    let root = root();
    build_nimbus(&root)?;
    let nimbus = root.join("target/release/nimbus");
    let base = std::env::temp_dir().join(format!("nimbus-bench-tel-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let collector = rt.block_on(async {
        // A collector reads the whole body (one that answers first closes the connection).
        let sink = axum::Router::new()
            .route(
                "/v1/traces",
                axum::routing::post(|body: axum::body::Bytes| async move {
                    std::hint::black_box(body.len());
                    "{}"
                }),
            )
            .layer(axum::extract::DefaultBodyLimit::max(64 << 20));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        tokio::spawn(async move { axum::serve(listener, sink).await });
        anyhow::Ok(format!("http://{addr}"))
    })?;
    let modes: [(&'static str, Vec<std::ffi::OsString>); 3] = [
        ("telemetry on", Vec::new()),
        ("telemetry off", vec!["--no-telemetry".into()]),
        (
            "on + otlp",
            vec!["--otlp-endpoint".into(), collector.into()],
        ),
    ];
    let mut servers = Vec::new();
    for (i, (_, flags)) in modes.iter().enumerate() {
        let server = Nimbus::start(&nimbus, &base.join(i.to_string()), flags)?;
        server.deploy(&root.join("bench/noop"))?;
        server.deploy(&root.join("bench/chatty"))?;
        servers.push(server);
    }
    let duration = Duration::from_secs(opts.seconds);
    println!(
        "{:<14} {:<8} {:<22} {:>9} {:>8} {:>8} {:>12}",
        "server", "function", "load", "req/s", "p50_ms", "p99_ms", "cpu_us/call"
    );
    // results[(function, load, mode)] = every round's (rps, cpu µs per call)
    let mut results: std::collections::BTreeMap<_, Vec<(f64, f64)>> = Default::default();
    for round in 0..opts.rounds {
        for function in ["noop", "chatty"] {
            for load in ["1000/s", "max"] {
                // Rotate the servers so drift on the machine hits them alike.
                let mut order: Vec<usize> = (0..modes.len()).collect();
                order.rotate_left(round % modes.len());
                for i in order {
                    let (mode, server) = (modes[i].0, &servers[i]);
                    let target = Target {
                        name: "",
                        addr: server.endpoint.trim_start_matches("http://").to_string(),
                        path: format!("/v1/functions/{function}/invocations"),
                        auth: Auth::Bearer(server.token.clone()),
                    };
                    // What the last run left to write must not count against this one: a
                    // log query waits for the recorder to catch up (the server without
                    // telemetry answers it at once), then the machine settles a second.
                    let _ = std::process::Command::new(&nimbus)
                        .args(["logs", function, "--limit", "1"])
                        .env("NIMBUS_ENDPOINT", &server.endpoint)
                        .env("NIMBUS_TOKEN", &server.token)
                        .output()?;
                    std::thread::sleep(Duration::from_secs(1));
                    let pid = server._process.0.id();
                    let cpu_before = cpu_ms(pid)?;
                    let stats = match load {
                        "max" => rt.block_on(run(&target, opts.connections, duration))?,
                        _ => rt.block_on(run_paced(&target, 8, duration, Some(1_000.0)))?,
                    };
                    // `run` warms up for a second before it measures; the CPU counts it too.
                    let calls = stats.requests as f64 * (1.0 + 1.0 / opts.seconds as f64);
                    let cpu_us = (cpu_ms(pid)? - cpu_before) * 1000.0 / calls;
                    println!(
                        "{:<14} {:<8} {:<22} {:>9.0} {:>8.3} {:>8.3} {:>12.1}",
                        mode,
                        function,
                        if load == "max" {
                            format!("closed loop, {} conns", opts.connections)
                        } else {
                            "1,000 calls/s, 8 conns".to_string()
                        },
                        stats.rps,
                        stats.p50_ms,
                        stats.p99_ms,
                        cpu_us
                    );
                    results
                        .entry((function, load, mode))
                        .or_default()
                        .push((stats.rps, cpu_us));
                }
            }
        }
    }
    let median = |v: &Vec<(f64, f64)>| {
        let mut rps: Vec<f64> = v.iter().map(|r| r.0).collect();
        let mut cpu: Vec<f64> = v.iter().map(|r| r.1).collect();
        rps.sort_by(f64::total_cmp);
        cpu.sort_by(f64::total_cmp);
        (rps[rps.len() / 2], cpu[cpu.len() / 2])
    };
    let results: std::collections::BTreeMap<_, (f64, f64)> =
        results.iter().map(|(k, v)| (*k, median(v))).collect();
    println!("\nmedians of {} rounds:", opts.rounds);
    for function in ["noop", "chatty"] {
        let on = results[&(function, "max", "telemetry on")];
        let off = results[&(function, "max", "telemetry off")];
        let on_r = results[&(function, "1000/s", "telemetry on")];
        let off_r = results[&(function, "1000/s", "telemetry off")];
        println!(
            "{function}: max throughput on/off = {:.3} ({:+.1}%); at 1,000/s the server spends \
             {:.0} vs {:.0} µs CPU per call: telemetry costs {:.1}% of a core = {:.1}% of the \
             server's CPU",
            on.0 / off.0,
            (on.0 / off.0 - 1.0) * 100.0,
            on_r.1,
            off_r.1,
            (on_r.1 - off_r.1) * 1000.0 / 1e6 * 100.0,
            (on_r.1 / off_r.1 - 1.0) * 100.0
        );
        let otlp = results[&(function, "max", "on + otlp")];
        let otlp_r = results[&(function, "1000/s", "on + otlp")];
        println!(
            "{function}: exporting spans: max throughput with/without = {:.3}; at 1,000/s {:.0}              vs {:.0} µs CPU per call: {:.1}% of a core",
            otlp.0 / on.0,
            otlp_r.1,
            on_r.1,
            (otlp_r.1 - on_r.1) * 1000.0 / 1e6 * 100.0
        );
    }
    drop(servers);
    let _ = std::fs::remove_dir_all(&base);
    Ok(())
}

/// CPU time (user + system) a process has used, in milliseconds.
fn cpu_ms(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat.rsplit_once(") ").context("reading /proc stat")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = fields[11].parse::<f64>()? + fields[12].parse::<f64>()?;
    // /proc counts in USER_HZ, which Linux fixes at 100 for user space.
    Ok(ticks * 10.0)
}

struct Target {
    name: &'static str,
    addr: String,
    path: String,
    auth: Auth,
}

/// How a benchmark client authenticates each request.
#[derive(Clone)]
enum Auth {
    None,
    /// The admin token of the control API.
    Bearer(String),
    /// An access key of the Lambda API: every request signed with SigV4, as an SDK does.
    SigV4 {
        key_id: String,
        secret: String,
    },
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

/// Asynchronous invocation: how many events per second are durably accepted, and how fast a
/// no-op function drains them; next to synchronous invokes over the same connections.
fn bench_async(args: &[String]) -> anyhow::Result<()> {
    let opts = parse(args)?;
    let root = root();
    build_nimbus(&root)?;
    let nimbus = root.join("target/release/nimbus");
    let data = std::env::temp_dir().join(format!("nimbus-bench-async-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&data);
    let server = Nimbus::start(&nimbus, &data, &[])?;
    server.deploy(&root.join("bench/noop"))?;
    let (endpoint, token) = (server.endpoint.clone(), server.token.clone());
    let addr = endpoint.trim_start_matches("http://").to_string();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    const EVENTS: usize = 20_000;
    let conns = opts.connections;
    let sync = rt.block_on(run(
        &Target {
            name: "sync invoke (same no-op)",
            addr: addr.clone(),
            path: "/v1/functions/noop/invocations".into(),
            auth: Auth::Bearer(token.clone()),
        },
        conns,
        Duration::from_secs(3),
    ))?;
    let (accepted, accept_time, drain_time) = rt.block_on(async {
        let started = Instant::now();
        let lasts = submit_async(&addr, &token, EVENTS, conns).await?;
        let accept_time = started.elapsed();
        wait_succeeded(&addr, &token, &lasts).await?;
        anyhow::Ok((conns * (EVENTS / conns), accept_time, started.elapsed()))
    })?;
    println!("{:<40} {:>12}", "measure", "value");
    println!(
        "{:<40} {:>12.0} req/s",
        format!("sync invoke, {conns} connections"),
        sync.rps
    );
    let accept_rate = accepted as f64 / accept_time.as_secs_f64();
    println!(
        "{:<40} {:>12.0} events/s ({accepted} in {:.2} s)",
        format!("async accept (durable), {conns} connections"),
        accept_rate,
        accept_time.as_secs_f64()
    );
    println!(
        "{:<40} {:>12.0} events/s (all done {:.2} s after the first submission)",
        "async drain, no-op python",
        accepted as f64 / drain_time.as_secs_f64(),
        drain_time.as_secs_f64()
    );
    println!(
        "  -> accept / sync invoke throughput = {:.2}x",
        accept_rate / sync.rps
    );
    let _ = std::fs::remove_dir_all(&data);
    Ok(())
}

/// Submits `events` asynchronous calls of `noop` over `conns` keep-alive connections, as
/// fast as each connection is answered; returns each connection's last request id.
pub(crate) async fn submit_async(
    addr: &str,
    token: &str,
    events: usize,
    conns: usize,
) -> anyhow::Result<Vec<String>> {
    let mut tasks = Vec::new();
    for _ in 0..conns {
        let (addr, token) = (addr.to_string(), token.to_string());
        tasks.push(tokio::spawn(async move {
            let tcp = tokio::net::TcpStream::connect(&addr).await?;
            tcp.set_nodelay(true)?;
            let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
            tokio::spawn(conn);
            let mut last = String::new();
            for _ in 0..events / conns {
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
                let text = String::from_utf8_lossy(&body);
                last = text
                    .split("\"request_id\":\"")
                    .nth(1)
                    .and_then(|t| t.split('"').next())
                    .unwrap_or_default()
                    .to_string();
            }
            anyhow::Ok(last)
        }));
    }
    let mut lasts = Vec::new();
    for t in tasks {
        lasts.push(t.await??);
    }
    Ok(lasts)
}

/// Waits until each of `ids` has succeeded. Each connection's last event is among the last
/// dispatched (arrival order), so this is when all that came before are done too.
pub(crate) async fn wait_succeeded(addr: &str, token: &str, ids: &[String]) -> anyhow::Result<()> {
    for id in ids {
        loop {
            // A connection per poll: polls are few, and each stands alone.
            let tcp = tokio::net::TcpStream::connect(addr).await?;
            let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
            tokio::spawn(conn);
            let req = Request::get(format!("/v1/invocations/{id}"))
                .header("host", addr)
                .header("authorization", format!("Bearer {token}"))
                .body(Full::new(Bytes::new()))?;
            let res = send.send_request(req).await?;
            let body = res.into_body().collect().await?.to_bytes();
            let text = String::from_utf8_lossy(&body);
            if text.contains("\"status\":\"succeeded\"") {
                break;
            }
            if text.contains("\"status\":\"dead_lettered\"") {
                bail!("an event failed: {text}");
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    Ok(())
}

/// Runs `conns` keep-alive connections, each sending requests back to back, for `duration`
/// after a one-second warm-up; returns latency percentiles and throughput.
async fn run(target: &Target, conns: usize, duration: Duration) -> anyhow::Result<Stats> {
    run_paced(target, conns, duration, None).await
}

/// As `run`; with `rate`, the connections together send that many calls a second on a
/// fixed schedule (open loop: a slow answer does not slow the schedule down).
async fn run_paced(
    target: &Target,
    conns: usize,
    duration: Duration,
    rate: Option<f64>,
) -> anyhow::Result<Stats> {
    let warmup = Duration::from_secs(1);
    let mut tasks = Vec::new();
    for _ in 0..conns {
        let addr = target.addr.clone();
        let path = target.path.clone();
        let auth = target.auth.clone();
        let mut tick = rate.map(|r| {
            let mut t = tokio::time::interval(Duration::from_secs_f64(conns as f64 / r));
            t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            t
        });
        tasks.push(tokio::spawn(async move {
            let tcp = tokio::net::TcpStream::connect(&addr).await?;
            tcp.set_nodelay(true)?;
            let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
            tokio::spawn(conn);
            let mut latencies = Vec::with_capacity(100_000);
            let mut signed: Option<(i64, String, String)> = None;
            let start = Instant::now();
            let mut measure_start = None;
            while start.elapsed() < warmup + duration {
                if let Some(t) = tick.as_mut() {
                    t.tick().await;
                }
                let mut req = Request::post(&path)
                    .header("host", &addr)
                    .header("content-type", "application/json");
                match &auth {
                    Auth::None => {}
                    Auth::Bearer(t) => {
                        req = req.header("authorization", format!("Bearer {t}"));
                    }
                    Auth::SigV4 { key_id, secret } => {
                        // Signed once a minute and the signature reused: what is measured is
                        // the server's check, not the client's signing (the SDKs sign each
                        // request on the caller's CPU). A minute stays well inside the
                        // 15 minutes of allowed skew.
                        let now_ms = std::time::SystemTime::now()
                            .duration_since(std::time::UNIX_EPOCH)?
                            .as_millis() as i64;
                        if signed
                            .as_ref()
                            .is_none_or(|(at, _, _)| now_ms - at > 60_000)
                        {
                            let date = lambda::sigv4::amz_date(now_ms);
                            let headers = [
                                ("host".to_string(), addr.clone()),
                                ("x-amz-date".to_string(), date.clone()),
                            ];
                            let request = lambda::sigv4::Signed {
                                method: "POST",
                                path: &path,
                                query: "",
                                headers: &headers,
                                body: b"{}",
                            };
                            let credential = lambda::sigv4::Credential {
                                access_key_id: key_id.clone(),
                                date: date[..8].to_string(),
                                region: "us-east-1".into(),
                                service: "lambda".into(),
                            };
                            let authorization =
                                lambda::sigv4::authorization(&request, &credential, secret);
                            signed = Some((now_ms, date, authorization));
                        }
                        let (_, date, authorization) = signed.as_ref().expect("signed above");
                        req = req
                            .header("x-amz-date", date)
                            .header("authorization", authorization);
                    }
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

/// What wrk measured.
struct Wrk {
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
}

/// Runs wrk (from Debian's `wrk` package) and reads its summary.
fn wrk(url: &str, connections: usize, seconds: u64) -> anyhow::Result<Wrk> {
    let threads = connections.clamp(1, 2);
    let out = Command::new("wrk")
        .args([
            "--latency",
            "-t",
            &threads.to_string(),
            "-c",
            &connections.to_string(),
        ])
        .args(["-d", &format!("{seconds}s"), url])
        .output()
        .context("running wrk (apt-get install wrk)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let field = |prefix: &str| -> Option<&str> {
        text.lines()
            .map(str::trim)
            .find_map(|l| l.strip_prefix(prefix))
            .map(str::trim)
    };
    let ms = |v: &str| -> f64 {
        let (num, unit) = v.split_at(v.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(v.len()));
        let n: f64 = num.parse().unwrap_or(f64::NAN);
        match unit {
            "us" => n / 1000.0,
            "ms" => n,
            "s" => n * 1000.0,
            _ => f64::NAN,
        }
    };
    if text.contains("Non-2xx") {
        bail!("{url} answered errors under load:\n{text}");
    }
    Ok(Wrk {
        rps: field("Requests/sec:")
            .context("no Requests/sec in wrk output")?
            .parse()?,
        p50_ms: ms(field("50%").context("no p50")?),
        p99_ms: ms(field("99%").context("no p99")?),
    })
}

/// Waits until something accepts connections on `port`.
fn wait_port(port: u16) -> anyhow::Result<()> {
    for _ in 0..300 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("nothing listens on {port}")
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Gateway throughput and p99 against the same servers run directly.
fn bench_gateway(args: &[String]) -> anyhow::Result<()> {
    let opts = parse(args)?;
    let root = root();
    build_nimbus(&root)?;
    // Flask and gunicorn in a virtualenv of the benchmark's own.
    let venv = bench_venv(&root, &["flask", "gunicorn"], "import flask, gunicorn")?;
    let python = venv.join("bin/python3");
    let nimbus = root.join("target/release/nimbus");
    let data = std::env::temp_dir().join(format!("nimbus-bench-gw-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&data);
    let server = Nimbus::start(&nimbus, &data, &["--python3".into(), python.clone().into()])?;
    for project in [
        "bench/gateway-noop",
        "examples/flask-app",
        "examples/custom-java",
    ] {
        server.deploy(&root.join(project))?;
    }
    let endpoint = server.endpoint.clone();
    // The same Flask app under gunicorn (4 sync workers on 2 cores), the same Java server.
    let gunicorn_port = free_port()?;
    let _gunicorn = Guard(
        Command::new(venv.join("bin/gunicorn"))
            .args([
                "-w",
                "4",
                "-b",
                &format!("127.0.0.1:{gunicorn_port}"),
                "app:app",
            ])
            .current_dir(root.join("examples/flask-app"))
            .stderr(Stdio::null())
            .spawn()?,
    );
    let java_port = free_port()?;
    let _java = Guard(
        Command::new("java")
            .args([
                "-Dsun.net.httpserver.nodelay=true",
                "-XX:TieredStopAtLevel=1",
                "Server.java",
            ])
            .arg(java_port.to_string())
            .current_dir(root.join("examples/custom-java"))
            .stdout(Stdio::null())
            .spawn()?,
    );
    wait_port(gunicorn_port)?;
    wait_port(java_port)?;

    let cases = [
        ("no-op python route", format!("{endpoint}/noop"), None),
        (
            "flask hello",
            format!("{endpoint}/hello/bench"),
            Some(format!("http://127.0.0.1:{gunicorn_port}/hello/bench")),
        ),
        (
            "java custom runtime",
            format!("{endpoint}/java/bench"),
            Some(format!("http://127.0.0.1:{java_port}/java/bench")),
        ),
    ];
    println!(
        "{:<22} {:<9} {:>5} {:>10} {:>8} {:>8}",
        "case", "via", "conns", "req/s", "p50_ms", "p99_ms"
    );
    for conns in [1, opts.connections] {
        for (name, through, direct) in &cases {
            // A short warm-up starts the instances the measured run will use.
            wrk(through, conns, 2)?;
            let via = wrk(through, conns, opts.seconds)?;
            println!(
                "{name:<22} {:<9} {conns:>5} {:>10.0} {:>8.3} {:>8.3}",
                "nimbus", via.rps, via.p50_ms, via.p99_ms
            );
            if let Some(direct) = direct {
                wrk(direct, conns, 2)?;
                let d = wrk(direct, conns, opts.seconds)?;
                println!(
                    "{name:<22} {:<9} {conns:>5} {:>10.0} {:>8.3} {:>8.3}",
                    "direct", d.rps, d.p50_ms, d.p99_ms
                );
                println!(
                    "  -> {name} at {conns} conn(s): nimbus/direct throughput {:.2}x, p99 {:+.3} ms",
                    via.rps / d.rps,
                    via.p99_ms - d.p99_ms
                );
            }
        }
    }
    let _ = std::fs::remove_dir_all(&data);
    Ok(())
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
}

fn median_ms(samples: &mut [f64]) -> (f64, f64) {
    samples.sort_by(|a, b| a.partial_cmp(b).unwrap());
    (percentile(samples, 0.5), percentile(samples, 0.99))
}

/// Times a command from start to exit, `runs` times; returns the median in ms.
fn start_time_ms(program: &str, args: &[&str], runs: usize) -> anyhow::Result<f64> {
    let mut samples = Vec::new();
    for _ in 0..runs {
        let t = Instant::now();
        let status = Command::new(program)
            .args(args)
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .status()?;
        if !status.success() {
            bail!("{program} failed");
        }
        samples.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    Ok(median_ms(&mut samples).0)
}

/// One invoke through the API, timed from the client.
fn invoke_ms(endpoint: &str, token: &str, function: &str, body: &str) -> anyhow::Result<f64> {
    Ok(invoke_timed(endpoint, token, function, body)?.0)
}

/// One invoke through the API: the client-timed milliseconds and whether it started cold.
fn invoke_timed(
    endpoint: &str,
    token: &str,
    function: &str,
    body: &str,
) -> anyhow::Result<(f64, bool)> {
    let addr = endpoint.trim_start_matches("http://");
    let t = Instant::now();
    let mut stream = std::net::TcpStream::connect(addr)?;
    stream.set_nodelay(true)?;
    use std::io::{Read, Write};
    write!(
        stream,
        "POST /v1/functions/{function}/invocations HTTP/1.1\r\nhost: {addr}\r\nauthorization: Bearer {token}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer)?;
    let ms = t.elapsed().as_secs_f64() * 1000.0;
    if !answer.starts_with("HTTP/1.1 200") || answer.contains("x-nimbus-error-type") {
        bail!("{function} failed: {answer}");
    }
    Ok((ms, answer.contains("x-nimbus-cold-start: true")))
}

/// Calls arriving every 1.5 s at two no-op Python functions with a 1 s idle timeout, one
/// with adaptive keep-alive: how many calls start cold, and their latency.
fn bench_keepalive(args: &[String]) -> anyhow::Result<()> {
    let mut opts = parse(args)?;
    if !args.iter().any(|a| a == "--rounds") {
        opts.rounds = 20;
    }
    let root = root();
    build_nimbus(&root)?;
    let nimbus = root.join("target/release/nimbus");
    let data = std::env::temp_dir().join(format!("nimbus-bench-ka-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&data);
    let server = Nimbus::start(&nimbus, &data, &[])?;
    let code = root.join("bench/cold/py");
    let projects = data.join("projects");
    std::fs::create_dir_all(&projects)?;
    let function = |name: &str, extra: &str| {
        format!(
            "  {name}:\n    runtime: python3\n    handler: main.handler\n    code: {}\n    idle_timeout_ms: 1000\n{extra}",
            code.display()
        )
    };
    std::fs::write(
        projects.join("nimbus.yaml"),
        format!(
            "functions:\n{}{}",
            function("fixed", ""),
            function("adaptive", "    keep_alive_max_ms: 10000\n")
        ),
    )?;
    server.deploy(&projects)?;
    const PERIOD: Duration = Duration::from_millis(1500);
    let mut results: Vec<(&str, Vec<f64>, usize)> =
        vec![("fixed", Vec::new(), 0), ("adaptive", Vec::new(), 0)];
    for _ in 0..opts.rounds {
        let started = Instant::now();
        for (function, ms, cold) in &mut results {
            let (t, c) = invoke_timed(&server.endpoint, &server.token, function, "{}")?;
            ms.push(t);
            *cold += c as usize;
        }
        std::thread::sleep(PERIOD.saturating_sub(started.elapsed()));
    }
    println!(
        "{} calls each, one every {} ms, idle_timeout_ms 1000:",
        opts.rounds,
        PERIOD.as_millis()
    );
    println!(
        "{:<36} {:>6} {:>10} {:>10}",
        "function", "cold", "p50_ms", "mean_ms"
    );
    for (function, ms, cold) in &mut results {
        let mean = ms.iter().sum::<f64>() / ms.len() as f64;
        let (p50, _) = median_ms(ms);
        let label = if *function == "adaptive" {
            "adaptive (keep_alive_max_ms 10000)"
        } else {
            "fixed"
        };
        println!("{label:<36} {cold:>6} {p50:>10.2} {mean:>10.2}");
    }
    drop(server);
    let _ = std::fs::remove_dir_all(&data);
    Ok(())
}

/// Cold and warm starts, throughput and bursts of no-op Python and Node.js functions, next
/// to Google's functions-framework and the interpreters' own start times.
fn bench_cold(args: &[String]) -> anyhow::Result<()> {
    let opts = parse(args)?;
    let root = root();
    build_nimbus(&root)?;
    let venv = bench_venv(
        &root,
        &["functions-framework"],
        "import functions_framework",
    )?;
    let nimbus = root.join("target/release/nimbus");
    let data = std::env::temp_dir().join(format!("nimbus-bench-cold-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&data);
    let server = Nimbus::start(&nimbus, &data, &[])?;
    let (endpoint, token) = (server.endpoint.clone(), server.token.clone());
    // Many functions over the same code: each one's first call is a cold start.
    const COLD_FUNCTIONS: usize = 20;
    let projects = data.join("projects");
    let mut manifest = String::from("functions:\n");
    for (runtime, handler, code) in [
        ("python3", "main.handler", "py"),
        ("nodejs", "index.handler", "node"),
    ] {
        let code = root.join("bench/cold").join(code);
        for i in 0..COLD_FUNCTIONS {
            manifest.push_str(&format!(
                "  {runtime}-cold-{i}:\n    runtime: {runtime}\n    handler: {handler}\n    code: {}\n",
                code.display()
            ));
        }
        manifest.push_str(&format!(
            "  {runtime}-idle:\n    runtime: {runtime}\n    handler: {handler}\n    code: {}\n    idle_timeout_ms: 1000\n",
            code.display()
        ));
        manifest.push_str(&format!(
            "  {runtime}-warm:\n    runtime: {runtime}\n    handler: {handler}\n    code: {}\n    max_instances: 64\n    triggers:\n      - http: {{path: /{runtime}-noop, methods: [GET], auth: anonymous}}\n",
            code.display()
        ));
        manifest.push_str(&format!(
            "  {runtime}-burst:\n    runtime: {runtime}\n    handler: {handler}\n    code: {}\n    max_instances: 32\n    queue_timeout_ms: 30000\n",
            code.display()
        ));
    }
    std::fs::create_dir_all(&projects)?;
    std::fs::write(projects.join("nimbus.yaml"), manifest)?;
    server.deploy(&projects)?;
    println!("{:<34} {:>10} {:>10}", "measure", "p50_ms", "p99_ms");
    let row = |name: &str, (p50, p99): (f64, f64)| println!("{name:<34} {p50:>10.2} {p99:>10.2}");
    for runtime in ["python3", "nodejs"] {
        // Cold: the first call of each fresh function, a little apart (as traffic arrives).
        let mut cold = Vec::new();
        for i in 0..COLD_FUNCTIONS {
            cold.push(invoke_ms(
                &endpoint,
                &token,
                &format!("{runtime}-cold-{i}"),
                "{}",
            )?);
            std::thread::sleep(Duration::from_millis(150));
        }
        row(
            &format!("{runtime} cold (first call)"),
            median_ms(&mut cold),
        );
        // After scale to zero: idle past the timeout, then called again.
        let mut rezero = Vec::new();
        for _ in 0..5 {
            rezero.push(invoke_ms(
                &endpoint,
                &token,
                &format!("{runtime}-idle"),
                "{}",
            )?);
            std::thread::sleep(Duration::from_millis(1800));
        }
        row(
            &format!("{runtime} cold (after scale to zero)"),
            median_ms(&mut rezero),
        );
        let mut warm = Vec::new();
        invoke_ms(&endpoint, &token, &format!("{runtime}-warm"), "{}")?;
        for _ in 0..200 {
            warm.push(invoke_ms(
                &endpoint,
                &token,
                &format!("{runtime}-warm"),
                "{}",
            )?);
        }
        row(
            &format!("{runtime} warm (new connection)"),
            median_ms(&mut warm),
        );
        burst(
            &endpoint,
            &token,
            &format!("{runtime}-burst"),
            &format!("{runtime} burst from zero"),
        )?;
    }
    // The same cold starts and bursts without the sandbox, and without the fork server
    // (which the sandbox does not use yet), each on a server of its own in this run.
    for (label, flags) in [
        ("no sandbox", &["--no-sandbox"][..]),
        (
            "no sandbox, no fork server",
            &["--no-sandbox", "--no-fork-server"][..],
        ),
    ] {
        let flags: Vec<std::ffi::OsString> = flags.iter().map(Into::into).collect();
        let other = Nimbus::start(&nimbus, &data.join(label.replace([' ', ','], "-")), &flags)?;
        other.deploy(&projects)?;
        let (endpoint, token) = (other.endpoint.clone(), other.token.clone());
        for runtime in ["python3", "nodejs"] {
            let mut cold = Vec::new();
            for i in 0..COLD_FUNCTIONS {
                cold.push(invoke_ms(
                    &endpoint,
                    &token,
                    &format!("{runtime}-cold-{i}"),
                    "{}",
                )?);
                std::thread::sleep(Duration::from_millis(150));
            }
            row(&format!("{runtime} cold, {label}"), median_ms(&mut cold));
            burst(
                &endpoint,
                &token,
                &format!("{runtime}-burst"),
                &format!("{runtime} burst, {label}"),
            )?;
        }
    }
    println!();
    println!(
        "{:<34} {:>6} {:>10} {:>8} {:>8}",
        "route throughput", "conns", "req/s", "p50_ms", "p99_ms"
    );
    let ff_port = free_port()?;
    let ff_started = Instant::now();
    let _ff = Guard(
        Command::new(venv.join("bin/functions-framework"))
            .args(["--target", "noop", "--source"])
            .arg(root.join("bench/cold/ff/main.py"))
            .args(["--port", &ff_port.to_string(), "--host", "127.0.0.1"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?,
    );
    let ff_url = format!("http://127.0.0.1:{ff_port}/");
    let ff_cold_ms = loop {
        if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", ff_port)) {
            use std::io::{Read, Write};
            let _ = write!(s, "GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n");
            let mut out = String::new();
            if s.read_to_string(&mut out).is_ok() && out.starts_with("HTTP/1.1 200") {
                break ff_started.elapsed().as_secs_f64() * 1000.0;
            }
        }
        if ff_started.elapsed() > Duration::from_secs(30) {
            bail!("functions-framework did not answer");
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    for conns in [1, 16, 64] {
        for (name, url) in [
            (
                "python3 via nimbus route",
                format!("{endpoint}/python3-noop"),
            ),
            ("nodejs via nimbus route", format!("{endpoint}/nodejs-noop")),
            ("functions-framework (python)", ff_url.clone()),
        ] {
            wrk(&url, conns, 2)?;
            let w = wrk(&url, conns, opts.seconds)?;
            println!(
                "{name:<34} {conns:>6} {:>10.0} {:>8.3} {:>8.3}",
                w.rps, w.p50_ms, w.p99_ms
            );
        }
    }
    println!();
    println!("start-up floors and references (median of 10, ms):");
    println!(
        "  /usr/bin/python3 -c pass            {:>8.1}",
        start_time_ms("/usr/bin/python3", &["-c", "pass"], 10)?
    );
    println!(
        "  node -e 0 (clean environment)       {:>8.1}",
        start_time_ms("node", &["-e", "0"], 10)?
    );
    println!("  functions-framework start to answer {ff_cold_ms:>8.1}");
    let _ = std::fs::remove_dir_all(&data);
    Ok(())
}

/// A burst from zero: 32 calls of 0.5 s at once need 32 instances; prints how many
/// instances per second the server started.
fn burst(endpoint: &str, token: &str, function: &str, label: &str) -> anyhow::Result<()> {
    let t = Instant::now();
    let calls: Vec<_> = (0..32)
        .map(|_| {
            let (e, k, f) = (
                endpoint.to_string(),
                token.to_string(),
                function.to_string(),
            );
            std::thread::spawn(move || invoke_ms(&e, &k, &f, r#"{"sleep": 0.5}"#))
        })
        .collect();
    for c in calls {
        c.join().expect("a burst call panicked")?;
    }
    let spent = t.elapsed().as_secs_f64() - 0.5;
    println!(
        "{label:<34} {:>10.0} instances/s (32 in {:.0} ms)",
        32.0 / spent,
        spent * 1000.0
    );
    Ok(())
}

/// Builds the release binary the benchmarks run.
fn build_nimbus(root: &Path) -> anyhow::Result<()> {
    let status = Command::new(env!("CARGO"))
        .args(["build", "--release", "-p", "nimbus"])
        .current_dir(root)
        .status()?;
    if !status.success() {
        bail!("building nimbus failed");
    }
    Ok(())
}

/// The benchmarks' own virtualenv (`target/bench-venv`), with `packages` installed from
/// PyPI unless `check` already imports.
fn bench_venv(root: &Path, packages: &[&str], check: &str) -> anyhow::Result<PathBuf> {
    let venv = root.join("target/bench-venv");
    let python = venv.join("bin/python3");
    let ready = Command::new(&python)
        .args(["-c", check])
        .status()
        .is_ok_and(|s| s.success());
    if ready {
        return Ok(venv);
    }
    if !python.exists() {
        let base = if Path::new("/usr/bin/python3").exists() {
            "/usr/bin/python3"
        } else {
            "python3"
        };
        Command::new(base)
            .args(["-m", "venv"])
            .arg(&venv)
            .status()?;
    }
    let ok = Command::new(&python)
        .args(["-m", "pip", "install", "-q"])
        .args(packages)
        .status()?;
    if !ok.success() {
        bail!("installing {} failed", packages.join(", "));
    }
    Ok(venv)
}

/// A Flask app whose answer carries `marker`, with its requirements.
fn flask_project(dir: &Path, marker: &str) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(
        dir.join("nimbus.yaml"),
        "functions:\n  flaskbench:\n    runtime: python3\n    type: wsgi\n    handler: app:app\n    \
         triggers:\n      - http: {path: /bench, methods: [GET], auth: anonymous}\n",
    )?;
    std::fs::write(dir.join("requirements.txt"), "flask==3.0.3\n")?;
    std::fs::write(
        dir.join("app.py"),
        format!(
            "from flask import Flask\napp = Flask(__name__)\n\n@app.get('/bench')\ndef bench():\n    return '{marker}'\n"
        ),
    )?;
    Ok(())
}

/// GET `url` and its body, over a fresh connection.
fn get_body(url: &str) -> anyhow::Result<String> {
    let rest = url.trim_start_matches("http://");
    let (addr, path) = rest.split_once('/').unwrap_or((rest, ""));
    let mut stream = std::net::TcpStream::connect(addr)?;
    use std::io::{Read, Write};
    write!(
        stream,
        "GET /{path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\r\n"
    )?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer)?;
    Ok(answer
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default())
}

/// Deploys of a Flask app with `requirements.txt`: the first (building: pip runs in the
/// build jail), the second (cached: nothing changed), and a code-only change (the
/// dependencies' archive reused, a new tree linked), against `pip install --target` of
/// the same requirements run directly; then `nimbus dev`'s loop, from a file saved to the
/// new revision answering its route, over 20 edits, against a plain `nimbus deploy` of
/// the same edit.
fn bench_deploy(args: &[String]) -> anyhow::Result<()> {
    let mut opts = parse(args)?;
    if !args.iter().any(|a| a == "--rounds") {
        opts.rounds = 3;
    }
    let root = root();
    build_nimbus(&root)?;
    let nimbus = root.join("target/release/nimbus");
    let work = std::env::temp_dir().join(format!("nimbus-bench-deploy-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    let timed = |f: &mut dyn FnMut() -> anyhow::Result<()>| -> anyhow::Result<f64> {
        let t = Instant::now();
        f()?;
        Ok(t.elapsed().as_secs_f64() * 1000.0)
    };
    let (mut first, mut cached, mut code_only, mut pip) = (vec![], vec![], vec![], vec![]);
    for round in 0..opts.rounds {
        let dir = work.join(format!("round{round}"));
        let project = dir.join("app");
        flask_project(&project, "one")?;
        let server = Nimbus::start(&nimbus, &dir.join("data"), &[])?;
        first.push(timed(&mut || server.deploy(&project))?);
        cached.push(timed(&mut || server.deploy(&project))?);
        flask_project(&project, "two")?;
        code_only.push(timed(&mut || server.deploy(&project))?);
        let answer = get_body(&format!("{}/bench", server.endpoint))?;
        if answer != "two" {
            bail!("the code-only deploy answers `{answer}`");
        }
        let target = dir.join("pip-target");
        pip.push(timed(&mut || {
            let ok = Command::new("/usr/bin/python3")
                .args(["-m", "pip", "install", "-q", "--no-input", "--target"])
                .arg(&target)
                .arg("-r")
                .arg(project.join("requirements.txt"))
                .env("PIP_ROOT_USER_ACTION", "ignore")
                .status()?;
            if !ok.success() {
                bail!("pip install failed");
            }
            Ok(())
        })?);
    }
    let (first_p50, _) = median_ms(&mut first);
    let (cached_p50, _) = median_ms(&mut cached);
    let (code_p50, _) = median_ms(&mut code_only);
    let (pip_p50, _) = median_ms(&mut pip);
    println!(
        "deploy of a Flask app with requirements.txt, medians of {} rounds:",
        opts.rounds
    );
    println!("  first deploy (pip in the build jail):  {first_p50:8.0} ms");
    println!(
        "  pip install --target, run directly:    {pip_p50:8.0} ms  (first/pip {:.2}x)",
        first_p50 / pip_p50
    );
    println!("  second deploy (nothing changed):       {cached_p50:8.0} ms");
    println!("  code-only change (dependencies reused): {code_p50:7.0} ms");

    // The dev loop: 20 edits, each timed from the write to the route answering it.
    let dir = work.join("dev");
    let project = dir.join("app");
    flask_project(&project, "edit0")?;
    let server = Nimbus::start(&nimbus, &dir.join("data"), &[])?;
    server.deploy(&project)?;
    let url = format!("{}/bench", server.endpoint);
    let mut dev = Guard(
        Command::new(&nimbus)
            .arg("dev")
            .arg(&project)
            .env("NIMBUS_ENDPOINT", &server.endpoint)
            .env("NIMBUS_DATA_DIR", &server.data)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?,
    );
    // Let it settle on the first deploy.
    std::thread::sleep(Duration::from_secs(2));
    let live = |marker: &str| -> anyhow::Result<f64> {
        let t = Instant::now();
        loop {
            if get_body(&url)? == marker {
                return Ok(t.elapsed().as_secs_f64() * 1000.0);
            }
            if t.elapsed() > Duration::from_secs(30) {
                bail!("`{marker}` never answered");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    };
    let mut loop_ms = Vec::new();
    for i in 1..=20 {
        let marker = format!("edit{i}");
        flask_project(&project, &marker)?;
        loop_ms.push(live(&marker)?);
        std::thread::sleep(Duration::from_millis(300));
    }
    let _ = dev.0.kill();
    let _ = dev.0.wait();
    let mut deploy_ms = Vec::new();
    for i in 21..=40 {
        let marker = format!("edit{i}");
        flask_project(&project, &marker)?;
        let t = Instant::now();
        server.deploy(&project)?;
        live(&marker)?;
        deploy_ms.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    let mut sorted = loop_ms.clone();
    sorted.sort_by(f64::total_cmp);
    let (dev_p50, _) = median_ms(&mut loop_ms);
    let (deploy_p50, _) = median_ms(&mut deploy_ms);
    println!("nimbus dev, file saved -> new revision answering, 20 edits:");
    println!(
        "  p50 {dev_p50:.0} ms, p90 {:.0} ms, max {:.0} ms",
        percentile(&sorted, 0.9),
        sorted.last().copied().unwrap_or(0.0)
    );
    println!("  nimbus deploy of the same edit, by hand: p50 {deploy_p50:.0} ms");
    let _ = std::fs::remove_dir_all(&work);
    Ok(())
}

/// The event bus's matching (issue 16): 1,000 rules, 800 filed by `source` and 200 of
/// prefixes and numeric ranges on `detail` fields, against an event three rules match and
/// one none does. Reports the median ns per event over the rounds, beside the same rules
/// checked one by one (what the index saves). No server: the matcher is pure code.
fn bench_patterns(args: &[String]) -> anyhow::Result<()> {
    use platform::bus::{Pattern, RuleId, Rules};
    use serde_json::json;
    use std::hint::black_box;

    let rounds = parse(args)?.rounds.max(5);
    let mut patterns = Vec::new();
    for i in 0..800 {
        patterns
            .push(json!({"source": [format!("app.service{i}")], "detail-type": ["OrderPlaced"]}));
    }
    for i in 0..200 {
        patterns.push(if i % 2 == 0 {
            json!({"detail": {"customer": [{"prefix": format!("tenant{i}-")}]}})
        } else {
            json!({"detail": {"amount": [{"numeric": [">=", i * 10, "<", i * 10 + 10]}]}})
        });
    }
    let compiled = patterns
        .iter()
        .enumerate()
        .map(|(i, p)| Ok((RuleId(i as u32), Pattern::parse(p)?)))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let rules = Rules::new(compiled.clone());
    let hit = json!({
        "version": "0", "id": "6a7e8feb-b491-4cf7-a9f1-bf3703467718", "account": "111122223333",
        "source": "app.service417", "detail-type": "OrderPlaced", "region": "local",
        "time": "2017-12-22T18:43:48Z", "resources": [],
        "detail": {"customer": "tenant42-acme", "amount": 1515, "items": [{"sku": "a", "qty": 2}]}
    });
    let miss = json!({
        "version": "0", "id": "6a7e8feb-b491-4cf7-a9f1-bf3703467718", "account": "111122223333",
        "source": "other.app", "detail-type": "OrderPlaced", "region": "local",
        "time": "2017-12-22T18:43:48Z", "resources": [],
        "detail": {"customer": "nobody", "amount": -1, "items": [{"sku": "a", "qty": 2}]}
    });
    anyhow::ensure!(rules.matching(&hit) == [RuleId(417), RuleId(842), RuleId(951)]);
    anyhow::ensure!(rules.matching(&miss).is_empty());

    const EVENTS: u32 = 20_000;
    let ns_per_event = |f: &dyn Fn(&serde_json::Value) -> usize, event: &serde_json::Value| {
        let mut samples: Vec<f64> = (0..rounds)
            .map(|_| {
                let started = Instant::now();
                for _ in 0..EVENTS {
                    black_box(f(black_box(event)));
                }
                started.elapsed().as_nanos() as f64 / f64::from(EVENTS)
            })
            .collect();
        samples.sort_by(f64::total_cmp);
        samples[samples.len() / 2]
    };
    let indexed = |event: &serde_json::Value| {
        let mut n = 0;
        rules.for_each_match(event, |_| n += 1);
        n
    };
    let one_by_one =
        |event: &serde_json::Value| compiled.iter().filter(|(_, p)| p.matches(event)).count();
    println!(
        "bench-patterns: 1,000 rules (800 by source, 200 prefix/numeric on detail), median of {rounds} rounds of {EVENTS} events"
    );
    for (label, event) in [
        ("matching event (3 rules)", &hit),
        ("non-matching event", &miss),
    ] {
        println!(
            "  {label:<26} Rules: {:>7.0} ns/event   each pattern in turn: {:>7.0} ns/event",
            ns_per_event(&indexed, event),
            ns_per_event(&one_by_one, event)
        );
    }
    Ok(())
}

/// One keep-alive HTTP/1.1 connection of a benchmark client (bench-timers, bench-bus).
struct Conn {
    addr: String,
    send: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
}

impl Conn {
    async fn open(addr: &str) -> anyhow::Result<Conn> {
        let tcp = tokio::net::TcpStream::connect(addr).await?;
        tcp.set_nodelay(true)?;
        let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
        tokio::spawn(conn);
        Ok(Conn {
            addr: addr.to_string(),
            send,
        })
    }

    /// Sends one request; answers its status and body.
    async fn call(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Bytes,
    ) -> anyhow::Result<(u16, Bytes)> {
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", &self.addr);
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        // A server may close a kept-alive connection between requests: open another.
        if self.send.ready().await.is_err() {
            *self = Conn::open(&self.addr).await?;
        }
        let res = self.send.send_request(req.body(Full::new(body))?).await?;
        let status = res.status().as_u16();
        Ok((status, res.into_body().collect().await?.to_bytes()))
    }

    /// GETs `path` with the admin token; answers the parsed JSON.
    async fn get_json(&mut self, path: &str, token: &str) -> anyhow::Result<serde_json::Value> {
        let auth = format!("Bearer {token}");
        let (status, body) = self
            .call("GET", path, &[("authorization", &auth)], Bytes::new())
            .await?;
        if status != 200 {
            bail!("GET {path}: {status} {}", String::from_utf8_lossy(&body));
        }
        Ok(serde_json::from_slice(&body)?)
    }
}

/// Timers' fire latency (issue 16): 1,000 timers firing every second (63 functions with up
/// to 16 timers each, `model::limits::TRIGGERS_MAX`), from each fire's scheduled time to
/// its handler's start (the handler answers `time.time()`, first thing), over `--seconds`
/// (10 by default); and whether every scheduled time in the window fired exactly once.
/// The stages between come from the control API: the queue's record (when the fire was
/// submitted) and the invocation record (when the call began).
fn bench_timers(args: &[String]) -> anyhow::Result<()> {
    use serde_json::Value;
    use std::collections::{BTreeMap, HashMap};

    const TIMERS: usize = 1_000;
    const PER_FUNCTION: usize = 16;
    let mut opts = parse(args)?;
    if !args.iter().any(|a| a == "--seconds") {
        opts.seconds = 10;
    }
    let functions = TIMERS.div_ceil(PER_FUNCTION);
    let root = root();
    build_nimbus(&root)?;
    let nimbus = root.join("target/release/nimbus");
    let data = std::env::temp_dir().join(format!("nimbus-bench-timers-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&data);
    // One instance per function takes its 16 fires of a second at once (concurrency 16):
    // 63 instances, more than the node's default cap of 64 leaves beside the prewarmed.
    let flags: Vec<std::ffi::OsString> = vec!["--instances-max".into(), "128".into()];
    let server = Nimbus::start(&nimbus, &data, &flags)?;
    let code = root.join("bench/timers");
    let projects = data.join("projects");
    std::fs::create_dir_all(&projects)?;
    let manifest = |timers: bool| {
        let mut m = String::from("functions:\n");
        for f in 0..functions {
            m.push_str(&format!(
                "  tick-{f}:\n    runtime: python3\n    handler: main.handler\n    code: {}\n    \
                 memory_mb: 128\n    concurrency: {PER_FUNCTION}\n    max_instances: 1\n",
                code.display()
            ));
            if timers {
                m.push_str("    triggers:\n");
                for t in 0..PER_FUNCTION.min(TIMERS - f * PER_FUNCTION) {
                    m.push_str(&format!("      - timer: {{name: t{t}, every: 1s}}\n"));
                }
            }
        }
        m
    };
    let unix_ms = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("the clock is past 1970")
            .as_millis() as i64
    };
    let sleep_until_ms = |at: i64| {
        let now = unix_ms();
        if at > now {
            std::thread::sleep(Duration::from_millis((at - now) as u64));
        }
    };
    std::fs::write(projects.join("nimbus.yaml"), manifest(true))?;
    server.deploy(&projects)?;
    // A few seconds to start the instances, then the measured window of whole seconds.
    let first = unix_ms() / 1000 + 4;
    let end = first + opts.seconds as i64;
    let pid = server._process.0.id();
    sleep_until_ms(first * 1000);
    let cpu_before = cpu_ms(pid)?;
    sleep_until_ms(end * 1000);
    let cpu_window = cpu_ms(pid)? - cpu_before;
    // Two more seconds of fires, then the timers go (the same functions without
    // triggers) and what was queued finishes.
    sleep_until_ms((end + 2) * 1000);
    std::fs::write(projects.join("nimbus.yaml"), manifest(false))?;
    server.deploy(&projects)?;
    std::thread::sleep(Duration::from_secs(2));

    /// Unix seconds of an RFC 3339 UTC time of whole seconds (`2026-12-06T15:00:00Z`).
    fn unix_seconds(t: &str) -> Option<i64> {
        let n = |r: std::ops::Range<usize>| t.get(r)?.parse::<i64>().ok();
        let (y, m, d) = (n(0..4)?, n(5..7)?, n(8..10)?);
        let (hh, mm, ss) = (n(11..13)?, n(14..16)?, n(17..19)?);
        // Days from the civil date (Howard Hinnant's algorithm).
        let y = if m <= 2 { y - 1 } else { y };
        let era = y.div_euclid(400);
        let yoe = y - era * 400;
        let doy = (153 * ((m + 9) % 12) + 2) / 5 + d - 1;
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
        let days = era * 146_097 + doe - 719_468;
        Some(days * 86_400 + hh * 3_600 + mm * 60 + ss)
    }

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let addr = server.endpoint.trim_start_matches("http://").to_string();
    let token = server.token.clone();
    // Every timer call's request id, with when its first attempt began.
    let (started, attempts_seen) = rt.block_on(async {
        let mut conn = Conn::open(&addr).await?;
        let mut started: HashMap<String, i64> = HashMap::new();
        let mut attempts = 0usize;
        for f in 0..functions {
            let mut before: Option<i64> = None;
            loop {
                let mut path = format!(
                    "/v1/functions/tick-{f}/invocations?limit=1000&since={}",
                    (first - 3) * 1000
                );
                if let Some(b) = before {
                    path.push_str(&format!("&before={b}"));
                }
                let page = conn.get_json(&path, &token).await?;
                for r in page["invocations"].as_array().context("no invocations")? {
                    let id = r["request_id"].as_str().context("no request id")?;
                    let at = r["started_at_ms"].as_i64().context("no started_at_ms")?;
                    attempts += 1;
                    let e = started.entry(id.to_string()).or_insert(at);
                    *e = (*e).min(at);
                }
                match page["next_before"].as_i64() {
                    Some(b) => before = Some(b),
                    None => break,
                }
            }
        }
        anyhow::Ok((started, attempts))
    })?;
    // Each one's queue record: the event (scheduled time, timer), when it was submitted,
    // its status and attempts, and the handler's start.
    let ids: Vec<(String, i64)> = started.into_iter().collect();
    let records: Vec<(i64, Value)> = rt.block_on(async {
        let mut tasks = Vec::new();
        for chunk in ids.chunks(ids.len().div_ceil(8).max(1)) {
            let (chunk, addr, token) = (chunk.to_vec(), addr.clone(), token.clone());
            tasks.push(tokio::spawn(async move {
                let mut conn = Conn::open(&addr).await?;
                let mut out = Vec::new();
                for (id, at) in chunk {
                    out.push((
                        at,
                        conn.get_json(&format!("/v1/invocations/{id}"), &token)
                            .await?,
                    ));
                }
                anyhow::Ok(out)
            }));
        }
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await??);
        }
        anyhow::Ok(all)
    })?;
    drop(server);
    let _ = std::fs::remove_dir_all(&data);

    let mut fires: BTreeMap<(String, i64), usize> = BTreeMap::new();
    let (mut unfinished, mut rerun) = (0, 0);
    let (mut total, mut submit, mut dispatch, mut handler) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for (started_ms, r) in &records {
        let event = &r["payload"];
        let timer = event["resources"][0].as_str().context("no resources")?;
        let scheduled = unix_seconds(event["time"].as_str().context("no time")?)
            .context("a time that does not parse")?;
        if !(first..end).contains(&scheduled) {
            continue;
        }
        *fires.entry((timer.to_string(), scheduled)).or_insert(0) += 1;
        if r["attempts"].as_u64() != Some(1) {
            rerun += 1;
        }
        let (Some(t), Some(enqueued)) = (r["result"].as_f64(), r["enqueued_at_ms"].as_i64()) else {
            unfinished += 1;
            continue;
        };
        let scheduled_ms = (scheduled * 1000) as f64;
        total.push(t * 1000.0 - scheduled_ms);
        submit.push(enqueued as f64 - scheduled_ms);
        dispatch.push((started_ms - enqueued) as f64);
        handler.push(t * 1000.0 - *started_ms as f64);
    }
    let expected = TIMERS * opts.seconds as usize;
    let timers_seen = fires
        .keys()
        .map(|(t, _)| t)
        .collect::<std::collections::HashSet<_>>()
        .len();
    let doubled: usize = fires.values().map(|n| n - 1).sum();
    println!(
        "bench-timers: {TIMERS} timers (`every: 1s`, {functions} functions, concurrency \
         {PER_FUNCTION}, one instance each), {} s window",
        opts.seconds
    );
    println!(
        "fires expected {expected}, happened {} ({timers_seen} timers), lost {}, doubled \
         {doubled}, with more than one attempt {rerun}, unfinished {unfinished}; {} invocation \
         records",
        fires.len(),
        expected.saturating_sub(fires.len()),
        attempts_seen
    );
    println!(
        "server CPU during the window: {:.0}% of one core ({:.0} µs per fire)",
        cpu_window / (opts.seconds as f64 * 10.0),
        cpu_window * 1000.0 / expected as f64
    );
    println!(
        "{:<44} {:>8} {:>8} {:>8}",
        "stage (ms)", "p50", "p99", "max"
    );
    for (name, samples) in [
        ("scheduled -> submitted to the queue", &mut submit),
        ("submitted -> call began (dispatch)", &mut dispatch),
        ("call began -> handler started", &mut handler),
        ("scheduled -> handler started (fire latency)", &mut total),
    ] {
        if samples.is_empty() {
            bail!("no fire finished in the window");
        }
        samples.sort_by(f64::total_cmp);
        println!(
            "{name:<44} {:>8.1} {:>8.1} {:>8.1}",
            percentile(samples, 0.5),
            percentile(samples, 0.99),
            samples[samples.len() - 1]
        );
    }
    Ok(())
}

/// Bus ingestion (issue 16): structured CloudEvents, one per `POST /v1/events` with an
/// invoke key, over `--connections` keep-alive connections (16) for `--seconds` (5), with
/// 1,000 event rules deployed (63 functions with up to 16 rules each; 800 match a `source`
/// exactly, 100 a `data` prefix and 100 a `data` numeric range) and each event matching
/// exactly one, so each 202 commits one delivery. Then, as the baseline in the same run,
/// as many plain asynchronous submissions (`x-nimbus-invocation-type: async`) of the same
/// bytes to the same functions: the difference is what parsing and matching cost. The
/// rules' function takes a second per event, one at a time, so deliveries drain slowly
/// and the machine's two cores go to ingestion (`bench-async` measures the drain).
fn bench_bus(args: &[String]) -> anyhow::Result<()> {
    const RULES: usize = 1_000;
    const PER_FUNCTION: usize = 16;
    let opts = parse(args)?;
    let functions = RULES.div_ceil(PER_FUNCTION);
    let root = root();
    build_nimbus(&root)?;
    let nimbus = root.join("target/release/nimbus");
    let data = std::env::temp_dir().join(format!("nimbus-bench-bus-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&data);
    let flags: Vec<std::ffi::OsString> = vec!["--instances-max".into(), "128".into()];
    let server = Nimbus::start(&nimbus, &data, &flags)?;
    let code = root.join("bench/bus");
    let projects = data.join("projects");
    std::fs::create_dir_all(&projects)?;
    let mut manifest = String::from("functions:\n");
    for f in 0..functions {
        manifest.push_str(&format!(
            "  sink-{f}:\n    runtime: python3\n    handler: main.handler\n    code: {}\n    \
             memory_mb: 128\n    timeout_ms: 5000\n    max_instances: 1\n    triggers:\n",
            code.display()
        ));
        for k in f * PER_FUNCTION..((f + 1) * PER_FUNCTION).min(RULES) {
            let pattern = if k < RULES * 8 / 10 {
                format!("{{source: [bench.s{k}]}}")
            } else if k.is_multiple_of(2) {
                format!("{{data: {{customer: [{{prefix: tenant{k}-}}]}}}}")
            } else {
                format!(
                    "{{data: {{amount: [{{numeric: [\">=\", {}, \"<\", {}]}}]}}}}",
                    k * 10,
                    k * 10 + 10
                )
            };
            manifest.push_str(&format!(
                "      - event: {{name: r{k}, pattern: {pattern}}}\n"
            ));
        }
    }
    std::fs::write(projects.join("nimbus.yaml"), manifest)?;
    server.deploy(&projects)?;
    let addr = server.endpoint.trim_start_matches("http://").to_string();
    let token = server.token.clone();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let key = rt.block_on(async {
        let mut conn = Conn::open(&addr).await?;
        let auth = format!("Bearer {token}");
        let (status, body) = conn
            .call(
                "POST",
                "/v1/keys",
                &[
                    ("authorization", &auth),
                    ("content-type", "application/json"),
                ],
                Bytes::from_static(br#"{"name": "bench-bus"}"#),
            )
            .await?;
        if status != 201 {
            bail!(
                "creating a key: {status} {}",
                String::from_utf8_lossy(&body)
            );
        }
        let v: serde_json::Value = serde_json::from_slice(&body)?;
        anyhow::Ok(v["key"].as_str().context("no key")?.to_string())
    })?;

    #[derive(Clone, Copy, PartialEq)]
    enum Via {
        Bus,
        Async,
        /// With an idempotency key as long as the bus's (`event:RULE:SHA256`).
        AsyncKeyed,
    }
    /// The event matching rule `k` alone.
    fn event(k: usize, id: &str) -> Bytes {
        let (source, data) = if k < RULES * 8 / 10 {
            (
                format!("bench.s{k}"),
                r#"{"customer":"nobody","amount":-1}"#.to_string(),
            )
        } else if k.is_multiple_of(2) {
            (
                "bench.data".to_string(),
                format!(r#"{{"customer":"tenant{k}-acme","amount":-1}}"#),
            )
        } else {
            (
                "bench.data".to_string(),
                format!(r#"{{"customer":"nobody","amount":{}}}"#, k * 10 + 5),
            )
        };
        Bytes::from(format!(
            r#"{{"specversion":"1.0","id":"{id}","source":"{source}","type":"bench.event","datacontenttype":"application/json","data":{data}}}"#
        ))
    }
    /// `conns` connections sending back to back for `seconds`, or `count` requests in all;
    /// answers each request's latency and the wall time.
    async fn drive(
        via: Via,
        tag: &'static str,
        addr: &str,
        credential: &str,
        conns: usize,
        seconds: Option<f64>,
        count: usize,
    ) -> anyhow::Result<(Vec<Duration>, Duration)> {
        let started = Instant::now();
        let mut tasks = Vec::new();
        for c in 0..conns {
            let (addr, credential) = (addr.to_string(), credential.to_string());
            let mine = count / conns + usize::from(c < count % conns);
            tasks.push(tokio::spawn(async move {
                let mut conn = Conn::open(&addr).await?;
                let auth = format!("Bearer {credential}");
                let mut latencies = Vec::with_capacity(100_000);
                let mut n = 0;
                loop {
                    match seconds {
                        Some(s) if started.elapsed().as_secs_f64() >= s => break,
                        None if n >= mine => break,
                        _ => {}
                    }
                    let k = (c + n * conns) % RULES;
                    let body = event(k, &format!("{tag}-{c}-{n}"));
                    let t0 = Instant::now();
                    let (status, answer) = match via {
                        Via::Bus => {
                            conn.call(
                                "POST",
                                "/v1/events",
                                &[
                                    ("x-nimbus-key", &credential),
                                    ("content-type", "application/cloudevents+json"),
                                ],
                                body,
                            )
                            .await?
                        }
                        Via::Async | Via::AsyncKeyed => {
                            let key = format!("event:r{k}:{:0>64}", format!("{tag}-{c}-{n}"));
                            let mut headers = vec![
                                ("authorization", auth.as_str()),
                                ("content-type", "application/json"),
                                ("x-nimbus-invocation-type", "async"),
                            ];
                            if via == Via::AsyncKeyed {
                                headers.push(("x-nimbus-idempotency-key", &key));
                            }
                            conn.call(
                                "POST",
                                &format!("/v1/functions/sink-{}/invocations", k / PER_FUNCTION),
                                &headers,
                                body,
                            )
                            .await?
                        }
                    };
                    latencies.push(t0.elapsed());
                    if status != 202 {
                        bail!("unexpected answer {status}: {answer:?}");
                    }
                    if via == Via::Bus {
                        let v: serde_json::Value = serde_json::from_slice(&answer)?;
                        if v["deliveries"] != 1 {
                            bail!("event for rule {k} made {} deliveries", v["deliveries"]);
                        }
                    }
                    n += 1;
                }
                anyhow::Ok(latencies)
            }));
        }
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await??);
        }
        Ok((all, started.elapsed()))
    }

    let pid = server._process.0.id();
    let conns = opts.connections;
    let mut rows = Vec::new();
    // A second of each first (warm-up, not counted).
    rt.block_on(drive(Via::Bus, "w", &addr, &key, conns, Some(1.0), 0))?;
    rt.block_on(drive(Via::Async, "w", &addr, &token, conns, Some(1.0), 0))?;
    let mut count = 0;
    for (via, label) in [
        (Via::Bus, "POST /v1/events (1,000 rules)"),
        (Via::Async, "async submit (baseline)"),
        (Via::AsyncKeyed, "async submit + idempotency key"),
    ] {
        let cpu_before = cpu_ms(pid)?;
        let (mut latencies, wall) = match via {
            Via::Bus => rt.block_on(drive(
                via,
                "m",
                &addr,
                &key,
                conns,
                Some(opts.seconds as f64),
                0,
            ))?,
            Via::Async | Via::AsyncKeyed => {
                let tag = if via == Via::Async { "m" } else { "k" };
                rt.block_on(drive(via, tag, &addr, &token, conns, None, count))?
            }
        };
        let cpu = cpu_ms(pid)? - cpu_before;
        count = count.max(latencies.len());
        latencies.sort_unstable();
        let pct = |p: f64| {
            latencies[((latencies.len() as f64 * p) as usize).min(latencies.len() - 1)]
                .as_secs_f64()
                * 1000.0
        };
        rows.push((
            label,
            count,
            count as f64 / wall.as_secs_f64(),
            pct(0.5),
            pct(0.99),
            cpu * 1000.0 / count as f64,
        ));
    }
    drop(server);
    let _ = std::fs::remove_dir_all(&data);
    println!(
        "bench-bus: structured CloudEvents, one per request, {conns} connections, each \
         event matching one of {RULES} rules ({functions} functions)"
    );
    println!(
        "{:<32} {:>8} {:>10} {:>8} {:>8} {:>14}",
        "path", "events", "events/s", "p50_ms", "p99_ms", "server_cpu_us"
    );
    for (label, n, rate, p50, p99, cpu) in &rows {
        println!("{label:<32} {n:>8} {rate:>10.0} {p50:>8.3} {p99:>8.3} {cpu:>14.1}");
    }
    for base in &rows[1..] {
        println!(
            "  -> bus / {}: throughput {:.2}x, p50 {:+.3} ms, server CPU {:+.1} µs per event",
            base.0,
            rows[0].2 / base.2,
            rows[0].3 - base.3,
            rows[0].5 - base.5
        );
    }
    Ok(())
}
