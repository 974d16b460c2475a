//! Freezing a process instance while it has no call in flight, so that nothing it left
//! running after `return` (a spinning thread, a busy child process) takes CPU between
//! calls, as Lambda freezes its execution environments between invocations.
//!
//! With a freezer cgroup (v1 `freezer.state`, v2 `cgroup.freeze`, when the instance is
//! sandboxed and the host has one) every process of the instance is frozen wherever it is
//! in the tree: the jail's helper, the runtime that is pid 1 of its own pid namespace, and
//! whatever it forked, even into a session of its own. A frozen process cannot tell, and
//! receives no signal for it. Without one, the instance's process group is sent SIGSTOP
//! and SIGCONT: every instance leads its own group (spawned with `process_group(0)`, or a
//! fork-server child that made its own session), which holds the jail's helper and the
//! runtime (a signal from the parent pid namespace reaches the namespace's pid 1, and
//! SIGSTOP cannot be caught). A process that moved itself to another group escapes that;
//! the cgroup freezer is the complete mechanism, signals the fallback.
//!
//! Stopping the jail's helper with its runtime does no harm: by the time an instance is
//! in the pool and can be frozen, its helper has served the stem's specialization on its
//! control socket and only waits for the runtime to end, and a stopped wait resumes on
//! SIGCONT.

use std::sync::atomic::{AtomicU8, Ordering};

use crate::cgroup::FreezeFile;

/// Not frozen.
const THAWED: u8 = 0;
/// Frozen through the cgroup freezer.
const BY_CGROUP: u8 = 1;
/// Stopped with SIGSTOP.
const BY_SIGNAL: u8 = 2;

/// Freezes and thaws one instance's processes; both are idempotent.
pub(crate) struct Freezer {
    /// The instance's process group (the pid of its leader).
    group: i32,
    cgroup: Option<FreezeFile>,
    /// How the instance is frozen now (`THAWED`, `BY_CGROUP`, `BY_SIGNAL`), so a thaw
    /// undoes what the freeze did and costs one atomic operation when there is nothing to
    /// undo (the warm call path).
    state: AtomicU8,
}

impl Freezer {
    pub fn new(group: i32, cgroup: Option<FreezeFile>) -> Freezer {
        Freezer {
            group,
            cgroup,
            state: AtomicU8::new(THAWED),
        }
    }

    /// Freezes every process of the instance, unless it is frozen already.
    pub fn freeze(&self) {
        if self.state.load(Ordering::Acquire) != THAWED {
            return;
        }
        // A cgroup write that fails (the cgroup is going away) falls back to signals.
        let how = match &self.cgroup {
            Some(f) if f.set(true).is_ok() => BY_CGROUP,
            _ => {
                signal_group(self.group, rustix::process::Signal::STOP);
                BY_SIGNAL
            }
        };
        self.state.store(how, Ordering::Release);
    }

    /// Lets a frozen instance run again. When this returns the instance is runnable: a
    /// frame sent afterwards is read, whether or not its processes ran yet.
    pub fn thaw(&self) {
        match self.state.swap(THAWED, Ordering::AcqRel) {
            THAWED => {}
            BY_CGROUP => {
                let thawed = self.cgroup.as_ref().is_some_and(|f| f.set(false).is_ok());
                if !thawed {
                    tracing::warn!(group = self.group, "thawing an instance cgroup failed");
                }
            }
            _ => signal_group(self.group, rustix::process::Signal::CONT),
        }
    }
}

/// Sends `signal` to process group `group`. ESRCH (the instance is gone) is expected.
fn signal_group(group: i32, signal: rustix::process::Signal) {
    if let Some(pid) = rustix::process::Pid::from_raw(group) {
        let _ = rustix::process::kill_process_group(pid, signal);
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::path::{Path, PathBuf};
    use std::process::{Command, Stdio};
    use std::time::Duration;

    /// CPU seconds (user and system) that process `pid` has used, all its threads.
    pub(crate) fn cpu_seconds(pid: i32) -> f64 {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        // Fields after the command name, which ends at the last ')': state is the 3rd
        // field, utime and stime the 14th and 15th, in clock ticks (USER_HZ, 100).
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .unwrap()
            .1
            .split_whitespace()
            .collect();
        let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
        ticks as f64 / 100.0
    }

    /// A cgroup made for one test, with whatever the test mounted for it; dropping it kills
    /// the processes left in it and removes it.
    struct TestCgroup {
        dir: PathBuf,
        pids: Vec<i32>,
        mounted: Option<tempfile::TempDir>,
    }

    impl Drop for TestCgroup {
        fn drop(&mut self) {
            for pid in &self.pids {
                if let Some(pid) = rustix::process::Pid::from_raw(*pid) {
                    let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
                }
            }
            // Killed processes leave the cgroup once reaped; frozen ones die only thawed.
            let _ = std::fs::write(self.dir.join("cgroup.freeze"), "0");
            let _ = std::fs::write(self.dir.join("freezer.state"), "THAWED");
            for _ in 0..100 {
                if std::fs::remove_dir(&self.dir).is_ok() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            if let Some(m) = &self.mounted {
                let _ = Command::new("umount").arg(m.path()).status();
            }
        }
    }

    /// A v2 cgroup on a cgroup2 hierarchy mounted for the test (the freezer is part of the
    /// v2 core: it needs no controller, so this works on a host whose controllers are all
    /// bound to v1, as this project's test machines are).
    fn v2_cgroup(name: &str) -> TestCgroup {
        let mount = tempfile::tempdir().unwrap();
        let status = Command::new("mount")
            .args(["-t", "cgroup2", "none"])
            .arg(mount.path())
            .status()
            .unwrap();
        assert!(
            status.success(),
            "cannot mount cgroup2 (the tests run as root)"
        );
        let dir = mount.path().join(name);
        std::fs::create_dir(&dir).unwrap();
        TestCgroup {
            dir,
            pids: vec![],
            mounted: Some(mount),
        }
    }

    /// A v1 cgroup in the host's freezer hierarchy, which `Cgroups::detect` uses on such a
    /// host; `None` when the host mounts none.
    fn v1_cgroup(name: &str) -> Option<TestCgroup> {
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let mount = mountinfo.lines().find_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            let right: Vec<&str> = right.split(' ').collect();
            (right.first() == Some(&"cgroup") && right.get(2)?.split(',').any(|o| o == "freezer"))
                .then(|| left.split(' ').nth(4).map(PathBuf::from))?
        })?;
        let dir = mount.join(name);
        std::fs::create_dir(&dir).unwrap();
        Some(TestCgroup {
            dir,
            pids: vec![],
            mounted: None,
        })
    }

    /// Starts a process that spins, with a child that made a session of its own and spins
    /// too (out of reach of a signal to the group), both in the cgroup at `dir`; returns
    /// their pids.
    fn spin_in(dir: &Path) -> Vec<i32> {
        let script = "import os\nr, w = os.pipe()\nif os.fork() == 0:\n    os.setsid()\n    \
                      os.write(w, b'%d\\n' % os.getpid())\n    while True: pass\n\
                      print(os.getpid(), os.read(r, 32).decode().strip(), flush=True)\n\
                      while True: pass\n";
        let mut child = Command::new("python3")
            .args(["-c", script])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        // Put in the cgroup before it forks: the fork's child is born in the cgroup too.
        let pid = child.id() as i32;
        let procs = if dir.join("cgroup.procs").exists() {
            "cgroup.procs"
        } else {
            "tasks"
        };
        std::fs::write(dir.join(procs), pid.to_string()).unwrap();
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(child.stdout.take().unwrap()),
            &mut line,
        )
        .unwrap();
        // The child process is reaped by the TestCgroup's kill; not waiting for it here
        // leaves a zombie only until the test process ends.
        std::mem::forget(child);
        line.split_whitespace()
            .map(|p| p.parse().unwrap())
            .collect()
    }

    fn cpu_in(pids: &[i32], d: Duration) -> Vec<f64> {
        let before: Vec<f64> = pids.iter().map(|p| cpu_seconds(*p)).collect();
        std::thread::sleep(d);
        pids.iter()
            .zip(before)
            .map(|(p, b)| cpu_seconds(*p) - b)
            .collect()
    }

    /// The cgroup freezer (v1 and v2) stops every process of an instance, even one in a
    /// session of its own that a group signal would miss, and a thaw lets them all run.
    #[test]
    fn the_cgroup_freezer_stops_the_whole_tree_and_thaws_it() {
        let name = format!("nimbus-freeze-test-{}", std::process::id());
        let mut cases = vec![(true, v2_cgroup(&name))];
        cases.extend(v1_cgroup(&name).map(|c| (false, c)));
        for (v2, mut cgroup) in cases {
            let pids = spin_in(&cgroup.dir);
            cgroup.pids = pids.clone();
            assert_eq!(pids.len(), 2, "{pids:?}");
            // The group the instance would be signalled by: the parent's, not the child's.
            let freezer = Freezer::new(
                pids[0],
                Some(crate::cgroup::FreezeFile::at(&cgroup.dir, v2)),
            );
            assert!(
                cpu_in(&pids, Duration::from_millis(300))
                    .iter()
                    .all(|u| *u >= 0.05)
            );

            freezer.freeze();
            assert_eq!(freezer.state.load(Ordering::Acquire), BY_CGROUP);
            // v1 passes through FREEZING; both settle well within this.
            std::thread::sleep(Duration::from_millis(200));
            let used = cpu_in(&pids, Duration::from_secs(1));
            assert!(
                used.iter().all(|u| *u <= 0.02),
                "v2 {v2}: frozen, yet used {used:?} s"
            );
            freezer.freeze();

            freezer.thaw();
            let used = cpu_in(&pids, Duration::from_millis(300));
            assert!(
                used.iter().all(|u| *u >= 0.05),
                "v2 {v2}: thawed, yet used {used:?} s"
            );
            freezer.thaw();
        }
    }
}
