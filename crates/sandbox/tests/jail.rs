//! Jailed instances through the public `Pool`, with this test binary as the `nimbus __jail`
//! helper: the seccomp filter and the empty capability bounding set as a function sees them,
//! for instances spawned in a jail and for jailed stems specialized later, and what a
//! jailed cold start costs.
//!
//! The binary has no libtest harness (`harness = false` in Cargo.toml): the helper must be
//! a single-threaded process, so `main` hands `__jail` invocations to the helper before
//! anything else, and otherwise runs the tests in order. `NIMBUS_TEST_JAIL_HELPER` names
//! another helper binary (a `nimbus` built without the filter) to compare cold starts.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use model::{FunctionType, Network, Runtime};
use sandbox::{
    BuildJob, BuildStatus, InstanceConfig, Isolation, IsolationConfig, Outcome, Policy, Pool,
    PoolConfig, Runtimes,
};
use serde_json::Value;

/// What a jailed Python function can and cannot do. Python 3.11 has no `os.unshare`, so
/// calls go through ctypes and report errno (0 for success).
const PROBE_PY: &str = r#"
import ctypes, os, platform, socket, subprocess, tempfile, threading
libc = ctypes.CDLL(None, use_errno=True)

PIVOT_ROOT = {"x86_64": 155, "aarch64": 41, "riscv64": 41}[platform.machine()]

def errno_of(rc):
    return 0 if rc != -1 else ctypes.get_errno()

def status():
    return dict(l.split(":", 1) for l in open("/proc/self/status").read().splitlines())

def handler(event, context):
    out = {
        "unshare_user": errno_of(libc.unshare(0x10000000)),
        "unshare_net": errno_of(libc.unshare(0x40000000)),
        # A missing target: without the filter, the kernel answers ENOENT before it
        # checks privileges, so EPERM can only come from the filter.
        "mount": errno_of(libc.mount(b"none", b"/nonexistent-nimbus", b"tmpfs", 0, None)),
        "mount_tmp": errno_of(libc.mount(b"none", b"/tmp", b"tmpfs", 0, None)),
        "pivot_root": errno_of(libc.syscall(PIVOT_ROOT, b"/tmp", b"/tmp")),
        "ptrace": errno_of(libc.ptrace(16, 1, None, None)),
        "uid": os.getuid(),
    }
    seen = []
    t = threading.Thread(target=lambda: seen.append(1))
    t.start(); t.join()
    out["thread"] = seen == [1]
    out["subprocess"] = subprocess.run(["/bin/true"]).returncode
    with tempfile.TemporaryDirectory() as d:
        with open(os.path.join(d, "f"), "w") as f:
            f.write("x")
        out["file"] = open(os.path.join(d, "f")).read()
    a, b = socket.socketpair()
    a.sendall(b"hi")
    out["socketpair"] = b.recv(2).decode()
    server = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(server.getsockname())
    conn, _ = server.accept()
    client.sendall(b"tcp")
    out["tcp"] = conn.recv(3).decode()
    for key in ["Seccomp", "NoNewPrivs", "CapBnd", "CapEff", "CapPrm", "CapInh", "CapAmb"]:
        out[key] = status()[key].strip()
    return out
"#;

const PROBE_JS: &str = r#"
const fs = require('fs');
exports.handler = async () => {
  const status = Object.fromEntries(fs.readFileSync('/proc/self/status', 'utf8')
    .split('\n').filter(l => l.includes(':')).map(l => [l.split(':')[0], l.split(':')[1].trim()]));
  return { version: process.version, Seccomp: status.Seccomp, CapBnd: status.CapBnd,
           CapEff: status.CapEff };
};
"#;

const QUICK_PY: &str = "def handler(event, context):\n    return 'ok'\n";

fn main() {
    let args: Vec<OsString> = std::env::args_os().collect();
    if args.get(1).is_some_and(|a| a == sandbox::JAIL_HELPER_ARG) {
        sandbox::jail::helper_main(&args[2..]);
    }
    // `cargo test -- FILTER` passes arguments meant for libtest; a filter that names none
    // of these tests skips them.
    let filter: Vec<String> = args[1..]
        .iter()
        .filter_map(|a| a.to_str())
        .filter(|a| !a.starts_with('-'))
        .map(str::to_string)
        .collect();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    type Test = fn(&Node) -> std::pin::Pin<Box<dyn Future<Output = ()> + '_>>;
    let tests: [(&str, Test); 6] = [
        (
            "a_spawned_python_instance_is_filtered_and_has_no_capabilities",
            |n| Box::pin(spawned_python(n)),
        ),
        (
            "a_specialized_stem_is_filtered_and_has_no_capabilities",
            |n| Box::pin(specialized_stem(n)),
        ),
        ("node_starts_under_the_filter", |n| Box::pin(node(n))),
        ("cold_start_cost", |n| Box::pin(cold_start_cost(n))),
        ("a_jailed_pip_build_installs_and_reports_failures", |n| {
            Box::pin(pip_build(n))
        }),
        ("a_jailed_npm_build_installs_from_the_registry", |n| {
            Box::pin(npm_build(n))
        }),
    ];
    // Another helper is only for comparing cold starts.
    let compare = std::env::var_os("NIMBUS_TEST_JAIL_HELPER").is_some();
    let chosen: Vec<_> = tests
        .iter()
        .filter(|(name, _)| filter.is_empty() || filter.iter().any(|f| name.contains(f)))
        .filter(|(name, _)| !compare || *name == "cold_start_cost")
        .collect();
    if chosen.is_empty() {
        return;
    }
    let Some(node) = Node::new() else {
        return;
    };
    let count = chosen.len();
    for (name, test) in chosen {
        println!("test {name} ...");
        runtime.block_on(test(&node));
        println!("test {name} ... ok");
    }
    runtime.block_on(node.stop());
    // The closing line test runners and CI read (a failed test panicked before it).
    println!("{count} passed, 0 failed");
}

/// A data dir with a probed isolation, and what the tests need to make pools on it.
struct Node {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    isolation: Arc<Isolation>,
    root: bool,
    pools: std::sync::Mutex<Vec<Arc<Pool>>>,
    /// The data dir's lock, held as a server holds it: it tells other servers that this
    /// node's cgroups are in use.
    _lock: std::fs::File,
}

impl Node {
    /// `None` (the tests are skipped) when jails cannot work here: not root and no user
    /// namespaces. As root they must.
    fn new() -> Option<Node> {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        let helper = match std::env::var_os("NIMBUS_TEST_JAIL_HELPER") {
            Some(h) => PathBuf::from(h),
            None => std::env::current_exe().unwrap(),
        };
        let runtimes = runtimes(&dir);
        let interpreters = [Runtime::Python3, Runtime::Nodejs]
            .into_iter()
            .filter_map(|r| runtimes.interpreter(r).map(Path::to_path_buf))
            .collect();
        std::fs::create_dir_all(dir.join("data")).unwrap();
        let server_lock = dir.join("data/server.lock");
        let lock = std::fs::File::create(&server_lock).unwrap();
        rustix::fs::flock(&lock, rustix::fs::FlockOperation::NonBlockingLockExclusive).unwrap();
        let isolation = Isolation::probe(IsolationConfig {
            helper,
            data_dir: dir.join("data"),
            node_id: format!("jailtest{}", std::process::id()),
            start_token: format!("{:016x}", rand::random::<u64>()),
            server_lock,
            cgroup_records: dir.join("cgroup-records"),
            code_root: dir.join("data/code"),
            uid_base: 100_000,
            uid_count: 50_000,
            interpreters,
        });
        let root = rustix::process::geteuid().is_root();
        for p in isolation.report() {
            println!("protection {}: {} ({})", p.name, p.active, p.detail);
        }
        if !isolation.jails() {
            assert!(!root, "jails must work as root");
            println!("jails do not work here: skipped");
            return None;
        }
        let seccomp = isolation.report().into_iter().find(|p| p.name == "seccomp");
        if std::env::var_os("NIMBUS_TEST_JAIL_HELPER").is_none() {
            assert!(
                seccomp.is_some_and(|p| p.active),
                "the report shows seccomp"
            );
        }
        Some(Node {
            _tmp: tmp,
            dir,
            isolation: Arc::new(isolation),
            root,
            pools: Default::default(),
            _lock: lock,
        })
    }

    /// A pool with `prewarm` stems per runtime.
    fn pool(&self, prewarm: usize) -> Arc<Pool> {
        let pool = Pool::new(
            runtimes(&self.dir),
            PoolConfig {
                prewarm,
                isolation: Some(self.isolation.clone()),
                ..PoolConfig::default()
            },
        );
        self.pools.lock().unwrap().push(pool.clone());
        pool
    }

    /// A function `name` with one file, its code in the code root (as deployed code is,
    /// which a stem can be specialized to).
    fn function(&self, name: &str, runtime: Runtime, file: &str, text: &str) -> InstanceConfig {
        let code = self.dir.join("data/code").join(name);
        std::fs::create_dir_all(&code).unwrap();
        std::fs::write(code.join(file), text).unwrap();
        InstanceConfig {
            function: name.into(),
            version: "$LATEST".into(),
            runtime,
            handler: format!("{}.handler", file.split('.').next().unwrap()),
            code_dir: code,
            opt_dir: None,
            conventions: model::Conventions::Lambda,
            env: BTreeMap::new(),
            memory_mb: 256,
            timeout_ms: 10_000,
            kind: FunctionType::Handler,
            command: Vec::new(),
            concurrency: 1,
            initializer: String::new(),
            initializer_timeout_ms: 1000,
            pre_stop: String::new(),
            pre_stop_timeout_ms: 1000,
            network: Network::Outbound,
            ephemeral_storage_mb: 64,
            cpu_millicores: 0,
            policy: Policy::default(),
        }
    }

    async fn stop(&self) {
        let pools: Vec<_> = self.pools.lock().unwrap().drain(..).collect();
        for pool in pools {
            pool.shutdown().await;
        }
        self.isolation.shutdown();
    }
}

fn runtimes(dir: &Path) -> Runtimes {
    Runtimes::install(&dir.join("rt"), None, None).unwrap()
}

/// The function's JSON answer, or a panic with its error.
async fn call(pool: &Arc<Pool>, config: &InstanceConfig) -> Value {
    let inv = pool.invoke(config, "r", b"{}").await.unwrap();
    match &inv.outcome {
        Outcome::Success { body, .. } => serde_json::from_slice(body).unwrap(),
        Outcome::Error(e) => panic!("{} failed: {e:?}", config.function),
    }
}

/// How the last instance of `function` was started, from its lifecycle event.
fn how_started(pool: &Pool, function: &str) -> String {
    pool.events(Some(function), 10)
        .into_iter()
        .find(|e| e.event == "started")
        .map(|e| e.reason)
        .unwrap_or_default()
}

/// What every jailed Python instance must show.
fn assert_confined(v: &Value, root: bool) {
    let eperm = 1;
    for call in [
        "unshare_user",
        "unshare_net",
        "mount",
        "mount_tmp",
        "pivot_root",
        "ptrace",
    ] {
        assert_eq!(v[call], eperm, "{call}: {v}");
    }
    assert_eq!(v["Seccomp"], "2", "{v}");
    assert_eq!(v["NoNewPrivs"], "1", "{v}");
    for set in ["CapEff", "CapPrm", "CapInh", "CapAmb"] {
        assert_eq!(v[set], "0000000000000000", "{set}: {v}");
    }
    if root {
        assert_ne!(v["uid"], 0, "{v}");
    }
    assert_eq!(v["thread"], true, "{v}");
    assert_eq!(v["subprocess"], 0, "{v}");
    assert_eq!(v["file"], "x", "{v}");
    assert_eq!(v["socketpair"], "hi", "{v}");
    assert_eq!(v["tcp"], "tcp", "{v}");
}

async fn spawned_python(node: &Node) {
    let pool = node.pool(0);
    let config = node.function("probe-spawned", Runtime::Python3, "main.py", PROBE_PY);
    let v = call(&pool, &config).await;
    assert!(
        how_started(&pool, "probe-spawned").contains("spawned"),
        "{:?}",
        pool.events(None, 10)
    );
    assert_confined(&v, node.root);
    assert_eq!(v["CapBnd"], "0000000000000000", "{v}");
}

async fn specialized_stem(node: &Node) {
    let pool = node.pool(1);
    let config = node.function("probe-stem", Runtime::Python3, "main.py", PROBE_PY);
    // The stem starts with the pool; give it time to boot.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let v = call(&pool, &config).await;
    assert!(
        how_started(&pool, "probe-stem").contains("prewarmed"),
        "{:?}",
        pool.events(None, 10)
    );
    assert_confined(&v, node.root);
    // A stem keeps CAP_SETUID and CAP_SETGID in its bounding set to drop to the function's
    // uid when it is specialized; after the drop it has no capability left to use them.
    let bounding = u64::from_str_radix(v["CapBnd"].as_str().unwrap(), 16).unwrap();
    let (setgid, setuid) = (1 << 6, 1 << 7);
    assert_eq!(bounding & !(setgid | setuid), 0, "{v}");
}

async fn node(node: &Node) {
    let pool = node.pool(0);
    let config = node.function("probe-node", Runtime::Nodejs, "index.js", PROBE_JS);
    if pool.invoke(&config, "r", b"{}").await.is_err() {
        println!("no node here: skipped");
        return;
    }
    let v = call(&pool, &config).await;
    assert!(v["version"].as_str().unwrap().starts_with('v'), "{v}");
    assert_eq!(v["Seccomp"], "2", "{v}");
    assert_eq!(v["CapBnd"], "0000000000000000", "{v}");
    assert_eq!(v["CapEff"], "0000000000000000", "{v}");
}

/// Cold starts of a trivial Python function in a jail, spawned (no stems); printed, not
/// asserted. Run once more with `NIMBUS_TEST_JAIL_HELPER` naming a helper without the
/// filter to see what the filter adds.
async fn cold_start_cost(node: &Node) {
    let pool = node.pool(0);
    let runs = 15;
    let mut times = Vec::new();
    for i in 0..runs {
        let config = node.function(&format!("cold-{i}"), Runtime::Python3, "main.py", QUICK_PY);
        let t = Instant::now();
        let inv = pool.invoke(&config, "r", b"{}").await.unwrap();
        assert!(matches!(inv.outcome, Outcome::Success { .. }));
        times.push(t.elapsed());
    }
    times.sort();
    println!(
        "jailed python cold start, spawned: median {:?}, min {:?}, max {:?} ({runs} starts)",
        times[runs / 2],
        times[0],
        times[runs - 1]
    );
}

/// A build job over a fresh scratch directory holding `files`.
fn build_job(node: &Node, runtime: Runtime, files: &[(&str, &str)], timeout_ms: u64) -> BuildJob {
    let dir = node
        .dir
        .join(format!("build-{:016x}", rand::random::<u64>()));
    std::fs::create_dir_all(&dir).unwrap();
    for (name, text) in files {
        std::fs::write(dir.join(name), text).unwrap();
    }
    BuildJob {
        runtime,
        dir,
        locked: false,
        timeout_ms,
        memory_mb: 1024,
        output_max_bytes: 64 * 1024,
        disk_max_mb: 1024,
    }
}

/// pip runs in the jail as the builds' uid, installs into the scratch directory, streams
/// its output; a requirement that does not exist fails with pip's own message; a build
/// over its time is stopped.
async fn pip_build(node: &Node) {
    let builder = node.pool(0).builder();
    let id = builder.interpreter_id(Runtime::Python3).await.unwrap();
    assert!(id.contains("Python 3."), "{id}");
    let job = build_job(
        node,
        Runtime::Python3,
        &[("requirements.txt", "six==1.16.0\n")],
        120_000,
    );
    let (tx, mut rx) = tokio::sync::mpsc::channel(1024);
    let report = builder.run(&job, Some(tx)).await.unwrap();
    assert_eq!(report.status, BuildStatus::Succeeded, "{}", report.output);
    assert!(
        report.output.contains("Successfully installed six"),
        "{}",
        report.output
    );
    let mut streamed = Vec::new();
    while let Ok(line) = rx.try_recv() {
        streamed.push(line);
    }
    assert!(streamed.iter().any(|l| l.contains("six")), "{streamed:?}");
    let six = job.dir.join("out/six.py");
    assert!(six.is_file(), "no {}", six.display());
    // Its bytecode is there, valid whatever the sources' times (PEP 552 flags: 1 is an
    // unchecked hash), so instances of the read-only tree never compile it again.
    let cache = std::fs::read_dir(job.dir.join("out/__pycache__"))
        .unwrap()
        .flatten()
        .find(|e| e.file_name().to_string_lossy().starts_with("six."))
        .expect("six's .pyc");
    let header = std::fs::read(cache.path()).unwrap();
    assert_eq!(&header[4..8], &[1, 0, 0, 0], "{}", cache.path().display());
    if node.root {
        use std::os::unix::fs::MetadataExt;
        let uid = std::fs::metadata(&six).unwrap().uid();
        assert!((100_000..150_000).contains(&uid), "written as uid {uid}");
    }

    let job = build_job(
        node,
        Runtime::Python3,
        &[("requirements.txt", "nimbus-no-such-package-zz==1.0\n")],
        120_000,
    );
    let report = builder.run(&job, None).await.unwrap();
    assert_eq!(
        report.status,
        BuildStatus::Failed {
            reason: "pip exited with status 1".into()
        },
        "{}",
        report.output
    );
    assert!(
        report
            .output
            .contains("No matching distribution found for nimbus-no-such-package-zz"),
        "{}",
        report.output
    );

    let job = build_job(
        node,
        Runtime::Python3,
        &[("requirements.txt", "six==1.16.0\n")],
        50,
    );
    let report = builder.run(&job, None).await.unwrap();
    assert_eq!(
        report.status,
        BuildStatus::Failed {
            reason: "the build took longer than 50 ms".into()
        }
    );
}

/// npm installs a registry package into `node_modules` of the scratch directory.
async fn npm_build(node: &Node) {
    let builder = node.pool(0).builder();
    let job = build_job(
        node,
        Runtime::Nodejs,
        &[("package.json", r#"{"dependencies": {"left-pad": "1.3.0"}}"#)],
        120_000,
    );
    let report = builder.run(&job, None).await.unwrap();
    assert_eq!(report.status, BuildStatus::Succeeded, "{}", report.output);
    assert!(
        job.dir.join("node_modules/left-pad/index.js").is_file(),
        "{}",
        report.output
    );
}
