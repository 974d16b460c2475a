//! Control groups of instances: a memory limit, a process limit and a CPU share for each,
//! out-of-memory detection, freezing, and cleanup. Both cgroup v1 (separate memory, pids
//! and cpu hierarchies, and the freezer's when the host mounts it) and v2 (one unified
//! hierarchy) are handled.
//!
//! Written against the cgroup files directly: Nimbus needs five files per controller, and
//! cgroups-rs, the maintained crate, pulls in D-Bus (zbus) and an old nix, about 170 crates,
//! for systemd support Nimbus does not use.

use std::path::{Path, PathBuf};

use model::limits;

/// Where instance cgroups are created on this host.
#[derive(Debug)]
pub(crate) enum Cgroups {
    /// One directory in the unified hierarchy, with memory, pids and cpu enabled below it.
    V2 { base: PathBuf },
    /// One directory per controller hierarchy.
    V1 {
        memory: PathBuf,
        pids: PathBuf,
        cpu: PathBuf,
        /// The freezer hierarchy's directory, when the host mounts one; without it idle
        /// instances are stopped with signals instead (see `freeze`).
        freezer: Option<PathBuf>,
    },
}

/// One instance's cgroups. Dropping it kills what is left in them and removes them.
#[derive(Debug)]
pub(crate) struct InstanceCgroup {
    dirs: Vec<PathBuf>,
    /// The directory whose files report memory events.
    memory: PathBuf,
    /// What freezes and thaws every process of the instance.
    freeze: Option<FreezeFile>,
    v2: bool,
}

/// The file that freezes and thaws the processes of one instance's cgroup: v1's
/// `freezer.state`, v2's `cgroup.freeze`.
#[derive(Clone, Debug)]
pub(crate) struct FreezeFile {
    file: PathBuf,
    v2: bool,
}

impl FreezeFile {
    /// Freezes (`true`) or thaws every process of the instance. Freezing takes effect
    /// shortly after the write (v1 passes through FREEZING); thawing is done when the
    /// write returns, and a thaw after a freeze that has not finished cancels it.
    pub fn set(&self, frozen: bool) -> std::io::Result<()> {
        let value = match (self.v2, frozen) {
            (true, true) => "1",
            (true, false) => "0",
            (false, true) => "FROZEN",
            (false, false) => "THAWED",
        };
        std::fs::write(&self.file, value)
    }
}

/// What one instance may use.
pub(crate) struct Limits {
    pub memory_mb: u32,
    pub cpu_millicores: u32,
}

/// Lambda and Function Compute give one full core at 1,769 MB; shares follow that ratio.
const MB_PER_CORE: u64 = 1_769;
const CPU_PERIOD_US: u64 = 100_000;

impl Cgroups {
    /// Finds the hierarchies this server may create cgroups in, below its own cgroup, and
    /// makes its directory `nimbus-<node id>-<pid>` there; an error says why cgroups cannot
    /// be used. `node_id` is the data dir's: the server holds the data dir's lock, so a
    /// directory named with it belongs to a predecessor that is gone (killed, it could not
    /// clean up), and is removed first.
    pub fn detect(node_id: &str) -> Result<Cgroups, String> {
        let own = std::fs::read_to_string("/proc/self/cgroup")
            .map_err(|e| format!("cannot read /proc/self/cgroup: {e}"))?;
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")
            .map_err(|e| format!("cannot read /proc/self/mountinfo: {e}"))?;
        let name = format!("nimbus-{node_id}-{}", std::process::id());
        // (the hierarchy's mount point, this server's directory in it)
        let v1 = |controller: &str| -> Option<(PathBuf, PathBuf)> {
            let mount = mountinfo.lines().find_map(|l| {
                let (left, right) = l.split_once(" - ")?;
                let mut right = right.split(' ');
                if right.next()? != "cgroup" {
                    return None;
                }
                let options = right.nth(1)?;
                options
                    .split(',')
                    .any(|o| o == controller)
                    .then(|| left.split(' ').nth(4).map(PathBuf::from))?
            })?;
            let path = own.lines().find_map(|l| {
                let mut parts = l.splitn(3, ':');
                let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
                controllers
                    .split(',')
                    .any(|c| c == controller)
                    .then(|| path.to_string())
            })?;
            let dir = mount.join(path.trim_start_matches('/')).join(&name);
            Some((mount, dir))
        };
        if let (Some(memory), Some(pids), Some(cpu)) = (v1("memory"), v1("pids"), v1("cpu")) {
            for (mount, dir) in [&memory, &pids, &cpu] {
                remove_stale_siblings(dir, node_id, dir.parent() != Some(mount.as_path()));
                std::fs::create_dir_all(dir)
                    .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
            }
            // The freezer is optional: without it, idle instances are stopped by signal.
            let freezer = v1("freezer").and_then(|(mount, dir)| {
                remove_stale_siblings(&dir, node_id, dir.parent() != Some(mount.as_path()));
                match std::fs::create_dir_all(&dir) {
                    Ok(()) => Some(dir),
                    Err(e) => {
                        tracing::warn!(cgroup = %dir.display(), error = %e, "the freezer cgroup cannot be used; idle instances are stopped by signal");
                        None
                    }
                }
            });
            return Ok(Cgroups::V1 {
                memory: memory.1,
                pids: pids.1,
                cpu: cpu.1,
                freezer,
            });
        }
        Self::detect_v2(&own, &mountinfo, &name, node_id)
    }

    fn detect_v2(own: &str, mountinfo: &str, name: &str, node_id: &str) -> Result<Cgroups, String> {
        let mount = mountinfo
            .lines()
            .find_map(|l| {
                let (left, right) = l.split_once(" - ")?;
                (right.split(' ').next()? == "cgroup2").then(|| left.split(' ').nth(4))?
            })
            .ok_or("no cgroup hierarchy with the memory, pids and cpu controllers is mounted")?;
        let mount = PathBuf::from(mount);
        let available =
            std::fs::read_to_string(mount.join("cgroup.controllers")).unwrap_or_default();
        for c in ["memory", "pids", "cpu"] {
            if !available.split_whitespace().any(|a| a == c) {
                return Err(format!(
                    "the cgroup2 hierarchy at {} lacks the {c} controller",
                    mount.display()
                ));
            }
        }
        let path = own
            .lines()
            .find_map(|l| l.strip_prefix("0::"))
            .ok_or("this process is in no cgroup2 cgroup")?;
        let server = mount.join(path.trim_start_matches('/'));
        // A v2 cgroup with processes cannot hand controllers to children: the server moves
        // into a leaf of its own first, then enables them for its siblings.
        let leaf = server.join("nimbus-server");
        let io = |what: &str, r: std::io::Result<()>| {
            r.map_err(|e| format!("cannot set up cgroups ({what}): {e}"))
        };
        if server != mount {
            io("create", std::fs::create_dir_all(&leaf))?;
            io(
                "move the server",
                std::fs::write(leaf.join("cgroup.procs"), std::process::id().to_string()),
            )?;
        }
        io(
            "enable controllers",
            std::fs::write(server.join("cgroup.subtree_control"), "+memory +pids +cpu"),
        )?;
        let base = server.join(name);
        remove_stale_siblings(&base, node_id, server != mount);
        io("create", std::fs::create_dir_all(&base))?;
        io(
            "enable controllers",
            std::fs::write(base.join("cgroup.subtree_control"), "+memory +pids +cpu"),
        )?;
        Ok(Cgroups::V2 { base })
    }

    pub fn describe(&self) -> String {
        match self {
            Cgroups::V2 { base } => {
                format!("cgroup v2 (memory, pids, cpu) under {}", base.display())
            }
            Cgroups::V1 {
                memory, freezer, ..
            } => {
                let freezer = if freezer.is_some() { ", freezer" } else { "" };
                format!(
                    "cgroup v1 (memory, pids, cpu{freezer}) under {}",
                    memory.display()
                )
            }
        }
    }

    /// Creates the cgroups of one instance (or of a stem, which becomes one) with `limits`.
    pub fn create(&self, limits: &Limits) -> std::io::Result<InstanceCgroup> {
        static CREATED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let name = format!(
            "i{}",
            CREATED.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        let pids = limits::PROCESSES_PER_INSTANCE_MAX.to_string();
        let cgroup = match self {
            Cgroups::V2 { base } => {
                let dir = base.join(&name);
                std::fs::create_dir(&dir)?;
                let cgroup = InstanceCgroup {
                    dirs: vec![dir.clone()],
                    memory: dir.clone(),
                    freeze: Some(FreezeFile {
                        file: dir.join("cgroup.freeze"),
                        v2: true,
                    }),
                    v2: true,
                };
                // Swap would let an instance exceed its memory; not every host has the file.
                let _ = write(&dir, "memory.swap.max", "0");
                write(&dir, "pids.max", &pids)?;
                cgroup
            }
            Cgroups::V1 {
                memory,
                pids: p,
                cpu,
                freezer,
            } => {
                let (m, p, c) = (memory.join(&name), p.join(&name), cpu.join(&name));
                // The freezer's directory comes last: `limit` finds memory and cpu by index.
                let f = freezer.as_ref().map(|f| f.join(&name));
                let mut dirs = vec![m.clone(), p.clone(), c.clone()];
                dirs.extend(f.clone());
                let cgroup = InstanceCgroup {
                    dirs,
                    memory: m.clone(),
                    freeze: f.map(|f| FreezeFile {
                        file: f.join("freezer.state"),
                        v2: false,
                    }),
                    v2: false,
                };
                for dir in &cgroup.dirs {
                    std::fs::create_dir(dir)?;
                }
                write(&p, "pids.max", &pids)?;
                cgroup
            }
        };
        cgroup.limit(limits)?;
        Ok(cgroup)
    }
}

impl InstanceCgroup {
    /// Sets the memory limit and the CPU share or quota. A stem gets its function's limits
    /// this way when it is specialized: moving a process between cgroups takes 5-15 ms on
    /// cgroup v1 (an RCU grace period), writing a limit microseconds.
    pub fn limit(&self, limits: &Limits) -> std::io::Result<()> {
        let memory_bytes = (limits.memory_mb as u64 * 1024 * 1024).to_string();
        let share = (limits.memory_mb as u64 * 1024 / MB_PER_CORE).max(2);
        let quota = (limits.cpu_millicores != 0)
            .then(|| limits.cpu_millicores as u64 * CPU_PERIOD_US / 1000);
        let dir = &self.dirs[0];
        if self.v2 {
            write(dir, "memory.max", &memory_bytes)?;
            // cpu.weight runs 1..=10000 with 100 as the default (a core's worth).
            let weight = (share * 100 / 1024).clamp(1, 10_000);
            write(dir, "cpu.weight", &weight.to_string())?;
            let max = quota.map_or("max".to_string(), |q| q.to_string());
            write(dir, "cpu.max", &format!("{max} {CPU_PERIOD_US}"))?;
            return Ok(());
        }
        let (m, c) = (&self.dirs[0], &self.dirs[2]);
        // memory+swap (with swap accounting) gets the same limit, so nothing swaps out; it
        // may never be below the memory limit, so the order of the two writes depends on
        // whether the limit goes up or down.
        let memsw = m.join("memory.memsw.limit_in_bytes").exists();
        if memsw && write(m, "memory.memsw.limit_in_bytes", &memory_bytes).is_ok() {
            write(m, "memory.limit_in_bytes", &memory_bytes)?;
        } else {
            write(m, "memory.limit_in_bytes", &memory_bytes)?;
            if memsw {
                write(m, "memory.memsw.limit_in_bytes", &memory_bytes)?;
            }
        }
        write(c, "cpu.shares", &share.to_string())?;
        write(c, "cpu.cfs_period_us", &CPU_PERIOD_US.to_string())?;
        let quota = quota.map_or("-1".to_string(), |q| q.to_string());
        write(c, "cpu.cfs_quota_us", &quota)?;
        Ok(())
    }
}

impl Cgroups {
    /// Removes this server's directories, killing what still runs in them or in instance
    /// cgroups left in them (their own removal runs on threads that die with the server).
    /// Every hierarchy is tried each time: one that is still busy must not keep the others
    /// from going. Returns the directories that remain, with why.
    pub fn remove(&self) -> Vec<String> {
        let dirs: Vec<&PathBuf> = match self {
            Cgroups::V2 { base } => vec![base],
            Cgroups::V1 {
                memory,
                pids,
                cpu,
                freezer,
            } => [memory, pids, cpu].into_iter().chain(freezer).collect(),
        };
        let mut left = Vec::new();
        for dir in dirs {
            if !dir.exists() {
                continue;
            }
            for path in subdirs(dir) {
                kill_members(&path);
                if let Err(e) = std::fs::remove_dir(&path) {
                    left.push(describe_busy(&path, &e));
                }
            }
            kill_members(dir);
            if let Err(e) = std::fs::remove_dir(dir)
                && dir.exists()
            {
                left.push(describe_busy(dir, &e));
            }
        }
        left
    }
}

/// A cgroup directory that could not be removed, with the error and the processes in it.
fn describe_busy(dir: &Path, error: &std::io::Error) -> String {
    let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
    let procs: Vec<&str> = procs.split_whitespace().collect();
    format!("{}: {error} (processes: {procs:?})", dir.display())
}

/// Removes the cgroups a killed server left next to `dir`, with whatever still runs in them:
/// nothing of a dead server may keep running. Those named with this node's id are always a
/// predecessor's (the data dir's lock keeps a second server off it). Other servers'
/// (`nimbus-<id>-<pid>` of a pid that is gone) are removed only inside this server's own
/// cgroup (`own_cgroup`): at a hierarchy's root, shared with other containers, a pid that
/// is gone here may be a live server elsewhere.
fn remove_stale_siblings(dir: &Path, node_id: &str, own_cgroup: bool) {
    let Some(parent) = dir.parent() else { return };
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    let ours = format!("nimbus-{node_id}-");
    let own = dir.file_name();
    for entry in entries.filter_map(|e| e.ok()) {
        let name = entry.file_name();
        // This server's own directory, made already where hierarchies are mounted together.
        if Some(name.as_os_str()) == own {
            continue;
        }
        let Some(name) = name.to_str() else { continue };
        let stale = if name.starts_with(&ours) {
            true
        } else if own_cgroup {
            // The pid is the name's last part.
            name.strip_prefix("nimbus-")
                .and_then(|rest| rest.rsplit('-').next())
                .and_then(|p| p.parse::<u32>().ok())
                .is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists())
        } else {
            false
        };
        if !stale {
            continue;
        }
        let stale = entry.path();
        tracing::info!(cgroup = %stale.display(), "removing the cgroups of a server that is gone");
        // A killed process leaves its cgroup a moment later, and one may fork while it
        // dies: each round kills again what is there and removes what is empty, for up to
        // 10 s, in the background (start-up does not wait for it).
        std::thread::spawn(move || {
            for _ in 0..500 {
                if std::fs::write(stale.join("cgroup.kill"), "1").is_err() {
                    kill_members(&stale);
                }
                for dir in subdirs(&stale) {
                    kill_members(&dir);
                    let _ = std::fs::remove_dir(&dir);
                }
                if std::fs::remove_dir(&stale).is_ok() || !stale.exists() {
                    return;
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            tracing::warn!(cgroup = %stale.display(), "the cgroup of a server that is gone could not be removed");
        });
    }
}

/// The directories (child cgroups) in `dir`.
fn subdirs(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default()
}

/// SIGKILLs every process of the cgroup `dir`, and thaws it if it is frozen: a frozen
/// process does not act on SIGKILL until it is thawed, and until it has ended, its cgroup
/// cannot be removed.
fn kill_members(dir: &Path) {
    let Ok(procs) = std::fs::read_to_string(dir.join("cgroup.procs")) else {
        return;
    };
    for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
        if let Some(pid) = rustix::process::Pid::from_raw(pid) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
        }
    }
    for (file, thawed) in [("freezer.state", "THAWED"), ("cgroup.freeze", "0")] {
        let file = dir.join(file);
        // Checked first: a write to a missing file would try to create it.
        if file.exists() {
            let _ = std::fs::write(file, thawed);
        }
    }
}

fn write(dir: &Path, file: &str, value: &str) -> std::io::Result<()> {
    std::fs::write(dir.join(file), value)
        .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", dir.join(file).display())))
}

impl InstanceCgroup {
    /// The `cgroup.procs` files a process writes its pid to, to join.
    pub fn procs_files(&self) -> Vec<PathBuf> {
        self.dirs.iter().map(|d| d.join("cgroup.procs")).collect()
    }

    /// Whether the kernel killed a process of this instance for running out of memory.
    pub fn oom_killed(&self) -> bool {
        let (file, key) = if self.v2 {
            ("memory.events", "oom_kill")
        } else {
            ("memory.oom_control", "oom_kill")
        };
        std::fs::read_to_string(self.memory.join(file))
            .ok()
            .and_then(|text| {
                text.lines().find_map(|l| {
                    let (k, v) = l.split_once(' ')?;
                    (k == key).then(|| v.trim().parse::<u64>().ok())?
                })
            })
            .is_some_and(|n| n > 0)
    }

    /// What freezes the instance's processes, when its cgroups include a freezer.
    pub fn freezer(&self) -> Option<FreezeFile> {
        self.freeze.clone()
    }

    /// Kills every process still in the cgroups.
    fn kill_all(&self) {
        if self.v2 && std::fs::write(self.memory.join("cgroup.kill"), "1").is_ok() {
            return;
        }
        for dir in &self.dirs {
            kill_members(dir);
        }
    }
}

impl Drop for InstanceCgroup {
    fn drop(&mut self) {
        self.kill_all();
        // A cgroup can be removed once its last process is gone, which takes a moment after
        // SIGKILL; try briefly, then leave the rest to a background thread.
        let dirs = std::mem::take(&mut self.dirs);
        let remove = move || {
            for attempt in 0..100 {
                if dirs
                    .iter()
                    .all(|d| std::fs::remove_dir(d).is_ok() || !d.exists())
                {
                    return;
                }
                std::thread::sleep(std::time::Duration::from_millis(if attempt < 10 {
                    1
                } else {
                    20
                }));
            }
            tracing::warn!(?dirs, "an instance cgroup could not be removed");
        };
        std::thread::spawn(remove);
    }
}
