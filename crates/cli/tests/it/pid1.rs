//! A server that is pid 1 of its pid namespace, as in a container: SIGKILLed and started
//! again, it is pid 1 again. Its cgroups must not be named by that pid (the restart would
//! meet its predecessor's leftovers and fail with `File exists`), and whether other
//! servers are alive must not be judged by pids it cannot see (it would remove a live
//! server's cgroups).

use std::path::Path;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;

use crate::harness::{Server, header, python_project};
use crate::{cgroups_named, last_cgroup_name};

/// Runs the server as pid 1 of a new pid namespace, with its own `/proc`; `--kill-child`
/// takes the namespace down with `unshare` (the kernel kills every process of a pid
/// namespace whose pid 1 dies).
const AS_PID_1: [&str; 5] = ["unshare", "--pid", "--fork", "--mount-proc", "--kill-child"];

const CODE: &str = "import os, random\nSTARTED = random.random()\n\
def handler(event, context):\n    return {'pid': os.getpid(), 'started': STARTED}\n";

#[tokio::test]
async fn a_server_that_is_pid_1_restarts_and_leaves_other_servers_alone() {
    if !rustix::process::geteuid().is_root() {
        println!("skipped: cgroups and pid namespaces need root");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();

    // Another server, started the ordinary way, with a warm instance.
    let other_data = tmp.path().join("other");
    let other = Server::start_with(&other_data, &["--require-sandbox"], &[]);
    other
        .deploy(&python_project(tmp.path(), "steady", 30_000, CODE))
        .await;
    let warm = call(&other, "steady").await;
    let other_name = last_cgroup_name(&other_data);
    let other_cgroups = cgroups_named(&other_name);
    assert!(!other_cgroups.is_empty(), "{other_name}");
    assert!(record(&other_name).exists());

    // The server as pid 1, with an instance (so a cgroup of it exists).
    let data = tmp.path().join("pid1");
    let first = Server::start_through(&AS_PID_1, &data, &["--require-sandbox"], &[]);
    assert_eq!(
        holder_pid(&data),
        "1",
        "the server is pid 1 of its namespace"
    );
    first
        .deploy(&python_project(tmp.path(), "hello", 30_000, CODE))
        .await;
    call(&first, "hello").await;
    let killed = last_cgroup_name(&data);
    let killed_cgroups = cgroups_named(&killed);
    assert!(
        killed_cgroups.iter().any(|d| has_subdir(Path::new(d))),
        "an instance cgroup of the first server: {killed_cgroups:?}"
    );

    // Killed, it leaves its cgroups behind; started again, it is pid 1 again.
    kill_namespace(first);
    wait_for_free_lock(&data);
    assert!(
        cgroups_named(&killed)
            .iter()
            .any(|d| has_subdir(Path::new(d))),
        "the killed server's leftovers"
    );
    let second = Server::start_through(&AS_PID_1, &data, &["--require-sandbox"], &[]);
    assert_eq!(holder_pid(&data), "1");
    let restarted = last_cgroup_name(&data);
    assert_ne!(restarted, killed);
    // Cold starts make instance cgroups again: no `File exists`.
    for _ in 0..3 {
        call(&second, "hello").await;
    }
    let burst = second
        .invoke_all("hello", vec![Value::Null, Value::Null, Value::Null])
        .await;
    for res in burst {
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(header(&res, "x-nimbus-error-type"), "");
    }
    assert!(!cgroups_named(&restarted).is_empty());
    // The predecessor's leftovers go (the data dir's lock proves it dead), with its record.
    let gone = (0..500).any(|_| {
        std::thread::sleep(Duration::from_millis(20));
        cgroups_named(&killed).is_empty() && !record(&killed).exists()
    });
    assert!(gone, "{:?}", cgroups_named(&killed));

    // The other server's cgroups were not taken for a dead server's: all still there, its
    // warm instance still running, and new instances still made in them.
    assert_eq!(cgroups_named(&other_name), other_cgroups);
    assert!(record(&other_name).exists());
    let again = call(&other, "steady").await;
    assert_eq!(
        again, warm,
        "the warm instance of the other server survived"
    );
    let burst = other
        .invoke_all("steady", vec![Value::Null, Value::Null, Value::Null])
        .await;
    for res in burst {
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(header(&res, "x-nimbus-error-type"), "");
    }

    // Stopped gracefully, both leave nothing.
    stop_namespace(second);
    assert!(cgroups_named(&restarted).is_empty());
    assert!(!record(&restarted).exists());
    assert!(other.stop().success());
    assert!(cgroups_named(&other_name).is_empty());
    assert!(!record(&other_name).exists());
}

/// Calls `name`, expecting success, and returns the instance's answer.
async fn call(server: &Server, name: &str) -> Value {
    let res = server.invoke(name, "{}").await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(header(&res, "x-nimbus-error-type"), "");
    res.json().await.unwrap()
}

/// The pid the data dir's lock names (the first line of `server.lock`).
fn holder_pid(data: &Path) -> String {
    let text = std::fs::read_to_string(data.join("server.lock")).unwrap();
    text.lines().next().unwrap_or("").to_string()
}

/// The record that tells other servers whose cgroups `name` are.
fn record(name: &str) -> std::path::PathBuf {
    Path::new("/run/nimbus/cgroups").join(name)
}

/// Whether `dir` holds a directory (instance cgroups inside a server's).
fn has_subdir(dir: &Path) -> bool {
    std::fs::read_dir(dir)
        .is_ok_and(|mut d| d.any(|e| e.is_ok_and(|e| e.file_type().is_ok_and(|t| t.is_dir()))))
}

/// The host pid of the server: `unshare`'s child, pid 1 of the new namespace.
fn namespace_init(server: &Server) -> rustix::process::Pid {
    let parent = server.child.id();
    for _ in 0..250 {
        let child = std::fs::read_dir("/proc")
            .unwrap()
            .filter_map(|e| e.ok())
            .find_map(|e| {
                let pid: i32 = e.file_name().to_str()?.parse().ok()?;
                let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
                // After the command's name: the state, then the parent's pid.
                let (_, rest) = stat.rsplit_once(')')?;
                let ppid: u32 = rest.split_whitespace().nth(1)?.parse().ok()?;
                (ppid == parent).then_some(pid)
            });
        if let Some(pid) = child {
            return rustix::process::Pid::from_raw(pid).unwrap();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("unshare {parent} has no child");
}

/// SIGKILLs the server, pid 1 of its namespace, and with it the namespace.
fn kill_namespace(server: Server) {
    let init = namespace_init(&server);
    rustix::process::kill_process(init, rustix::process::Signal::KILL).unwrap();
    server.kill();
}

/// Waits until the killed server's lock is free: the kernel lets it go when the process
/// is gone, a moment after `unshare` has been reaped.
fn wait_for_free_lock(data: &Path) {
    use rustix::fs::{FlockOperation, flock};
    let file = std::fs::File::open(data.join("server.lock")).unwrap();
    for _ in 0..500 {
        if flock(&file, FlockOperation::NonBlockingLockExclusive).is_ok() {
            flock(&file, FlockOperation::Unlock).unwrap();
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("the killed server's lock is still held");
}

/// Stops the server gracefully: SIGTERM to it (pid 1 of its namespace takes the signals it
/// handles from outside), then waits for `unshare` to end with it.
fn stop_namespace(mut server: Server) {
    let init = namespace_init(&server);
    rustix::process::kill_process(init, rustix::process::Signal::TERM).unwrap();
    for _ in 0..400 {
        if let Some(status) = server.child.try_wait().unwrap() {
            assert!(status.success(), "{status:?}");
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("the server did not stop within 20 s of SIGTERM");
}
