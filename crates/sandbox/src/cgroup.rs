//! Control groups of instances: a memory limit, a process limit and a CPU share for each,
//! out-of-memory detection, freezing, and cleanup. Both cgroup v1 (separate memory, pids
//! and cpu hierarchies, and the freezer's when the host mounts it) and v2 (one unified
//! hierarchy) are handled.
//!
//! Written against the cgroup files directly: Nimbus needs five files per controller, and
//! cgroups-rs, the maintained crate, pulls in D-Bus (zbus) and an old nix, about 170 crates,
//! for systemd support Nimbus does not use.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use model::limits;

use crate::owner::{self, Liveness, Record};

/// This server's cgroups.
#[derive(Debug)]
pub(crate) struct Cgroups {
    layout: Layout,
    /// This server's record (see `owner`), removed with its directories; `None` when it
    /// could not be written, and then other servers leave these cgroups alone.
    record: Option<PathBuf>,
}

/// Who this server is, to name its cgroups and to let other servers tell whether it lives.
pub(crate) struct Identity<'a> {
    /// The data dir's node id.
    pub node_id: &'a str,
    /// New at every start: a restarted server never takes the name of its predecessor,
    /// even with the same pid (pid 1 of a container).
    pub start_token: &'a str,
    /// The file this server holds the data dir's lock on for its life.
    pub lock: &'a Path,
    /// Where servers leave the records of their cgroups (see `owner`).
    pub records: &'a Path,
}

/// Where instance cgroups are created on this host.
#[derive(Debug)]
enum Layout {
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

    /// The freeze file of the cgroup at `dir`, for tests of the freezer alone.
    #[cfg(test)]
    pub fn at(dir: &std::path::Path, v2: bool) -> FreezeFile {
        let file = if v2 { "cgroup.freeze" } else { "freezer.state" };
        FreezeFile {
            file: dir.join(file),
            v2,
        }
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
    /// makes its directory `nimbus-<node id>-<start token>` there; an error says why cgroups
    /// cannot be used. Its record is written first, so that no other server ever sees the
    /// directory without it. Then what dead servers left beside it goes (see `sweep`):
    /// killed, they could not clean up.
    pub fn detect(who: &Identity) -> Result<Cgroups, String> {
        let own = std::fs::read_to_string("/proc/self/cgroup")
            .map_err(|e| format!("cannot read /proc/self/cgroup: {e}"))?;
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")
            .map_err(|e| format!("cannot read /proc/self/mountinfo: {e}"))?;
        let name = owner::cgroup_name(who.node_id, who.start_token);
        // This server's directory in the hierarchy of `controller`.
        let v1 = |controller: &str| -> Option<PathBuf> {
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
            Some(mount.join(path.trim_start_matches('/')).join(&name))
        };
        let layout = if let (Some(memory), Some(pids), Some(cpu)) =
            (v1("memory"), v1("pids"), v1("cpu"))
        {
            // The freezer is optional: without it, idle instances are stopped by signal.
            let freezer = v1("freezer").filter(|dir| match std::fs::create_dir_all(dir) {
                    Ok(()) => true,
                    Err(e) => {
                        tracing::warn!(cgroup = %dir.display(), error = %e, "the freezer cgroup cannot be used; idle instances are stopped by signal");
                        false
                    }
                });
            Layout::V1 {
                memory,
                pids,
                cpu,
                freezer,
            }
        } else {
            Layout::detect_v2(&own, &mountinfo, &name)?
        };
        let record = write_record(who, &name);
        let cgroups = Cgroups { layout, record };
        let made = cgroups.layout.dirs().into_iter().try_for_each(|dir| {
            std::fs::create_dir_all(dir)
                .map_err(|e| format!("cannot set up cgroups (create {}): {e}", dir.display()))
        });
        let made = made.and_then(|()| match &cgroups.layout {
            Layout::V2 { base } => {
                std::fs::write(base.join("cgroup.subtree_control"), "+memory +pids +cpu")
                    .map_err(|e| format!("cannot set up cgroups (enable controllers): {e}"))
            }
            Layout::V1 { .. } => Ok(()),
        });
        if let Err(e) = made {
            // Whatever was made goes, and with it the record.
            cgroups.remove();
            return Err(e);
        }
        let dirs: Vec<PathBuf> = cgroups.layout.dirs().into_iter().cloned().collect();
        sweep(&dirs, who.node_id, Some(who.records));
        Ok(cgroups)
    }
}

/// Writes this server's record (see `owner`) and returns its path; `None`, with a warning,
/// when it cannot be written or the lock it would name is not held (then it would tell
/// others this server is dead, or nothing).
fn write_record(who: &Identity, name: &str) -> Option<PathBuf> {
    let written = Record::of(who.lock)
        .map_err(|e| format!("{}: {e}", who.lock.display()))
        .and_then(|record| match record.liveness() {
            Liveness::Alive => Ok(record),
            Liveness::Dead => Err(format!("{} is not locked", who.lock.display())),
            Liveness::Unknown(why) => Err(why),
        })
        .and_then(|record| {
            record
                .write(who.records, name)
                .map_err(|e| format!("{}: {e}", who.records.display()))
        });
    match written {
        Ok(path) => Some(path),
        Err(why) => {
            tracing::warn!(
                "cannot record who owns this server's cgroups ({why}): if it is killed, only \
                 its successor on the same data dir will remove them"
            );
            None
        }
    }
}

impl Layout {
    fn dirs(&self) -> Vec<&PathBuf> {
        match self {
            Layout::V2 { base } => vec![base],
            Layout::V1 {
                memory,
                pids,
                cpu,
                freezer,
            } => [memory, pids, cpu].into_iter().chain(freezer).collect(),
        }
    }

    /// Finds the unified hierarchy and readies the server's cgroup for children; the
    /// server's directory, `name`, is made by the caller.
    fn detect_v2(own: &str, mountinfo: &str, name: &str) -> Result<Layout, String> {
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
        Ok(Layout::V2 {
            base: server.join(name),
        })
    }
}

impl Cgroups {
    pub fn describe(&self) -> String {
        match &self.layout {
            Layout::V2 { base } => {
                format!("cgroup v2 (memory, pids, cpu) under {}", base.display())
            }
            Layout::V1 {
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
        let cgroup = match &self.layout {
            Layout::V2 { base } => {
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
            Layout::V1 {
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
    /// Once they are all gone, so is this server's record.
    pub fn remove(&self) -> Vec<String> {
        let mut left = Vec::new();
        for dir in self.layout.dirs() {
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
        if left.is_empty()
            && let Some(record) = &self.record
        {
            let _ = std::fs::remove_file(record);
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

/// Removes the cgroups dead servers left beside this server's directories `dirs` (one per
/// hierarchy), with whatever still runs in them: nothing of a dead server may keep running.
/// Those named with this node's id are always a predecessor's (the data dir's lock keeps a
/// second server off it); other servers' only when their record shows their lock free
/// (`owner::is_dead`), never on a pid: a pid says nothing across pid namespaces. Records
/// of this node's predecessors go too. The removal runs in the background (start-up does
/// not wait for it), a thread per name; the handles are for tests.
fn sweep(
    dirs: &[PathBuf],
    node_id: &str,
    records: Option<&Path>,
) -> Vec<std::thread::JoinHandle<()>> {
    let mut dead: BTreeMap<String, bool> = BTreeMap::new();
    let mut stale: BTreeMap<String, Vec<PathBuf>> = BTreeMap::new();
    for dir in dirs {
        let (Some(parent), Some(own)) = (dir.parent(), dir.file_name()) else {
            continue;
        };
        let Ok(entries) = std::fs::read_dir(parent) else {
            continue;
        };
        for entry in entries.filter_map(|e| e.ok()) {
            let name = entry.file_name();
            // This server's own directory, made already.
            if name == own {
                continue;
            }
            let Some(name) = name.to_str() else { continue };
            if !name.starts_with("nimbus-") || !entry.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            let is_dead = *dead
                .entry(name.to_string())
                .or_insert_with(|| owner::is_dead(name, node_id, records));
            if is_dead {
                stale
                    .entry(name.to_string())
                    .or_default()
                    .push(entry.path());
            }
        }
    }
    // A predecessor's record whose directories are not found here (made below another
    // cgroup) is of no use any more: only this node's servers could have removed them.
    let own = dirs.first().and_then(|d| d.file_name());
    if let Some(records) = records
        && let Ok(entries) = std::fs::read_dir(records)
    {
        let prefix = owner::node_prefix(node_id);
        for entry in entries.filter_map(|e| e.ok()) {
            let name = entry.file_name();
            let Some(text) = name.to_str() else { continue };
            let ours = text.starts_with(&prefix) || text.starts_with(&format!(".{prefix}"));
            if ours && Some(name.as_os_str()) != own && !stale.contains_key(text) {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
    let records = records.map(Path::to_path_buf);
    stale
        .into_iter()
        .map(|(name, dirs)| {
            tracing::info!(cgroup = %name, ?dirs, "removing the cgroups of a server that is gone");
            let record = records.as_ref().map(|r| r.join(&name));
            // A killed process leaves its cgroup a moment later, and one may fork while it
            // dies: each round kills again what is there and removes what is empty, for up
            // to 10 s. The record goes last, so a sweep that gives up leaves it for the next.
            std::thread::spawn(move || {
                for _ in 0..500 {
                    let mut gone = true;
                    for stale in &dirs {
                        if kill_v2(stale).is_err() {
                            kill_members(stale);
                        }
                        for dir in subdirs(stale) {
                            kill_members(&dir);
                            let _ = std::fs::remove_dir(&dir);
                        }
                        gone &= std::fs::remove_dir(stale).is_ok() || !stale.exists();
                    }
                    if gone {
                        if let Some(record) = &record {
                            let _ = std::fs::remove_file(record);
                        }
                        return;
                    }
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                tracing::warn!(
                    ?dirs,
                    "the cgroups of a server that is gone could not be removed"
                );
            })
        })
        .collect()
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

/// SIGKILLs every process of the v2 cgroup `dir` and its children at once, through its
/// `cgroup.kill` (Linux 5.14 and later); an error where there is no such file. The file is
/// never made: a write that made it would be outside a cgroup hierarchy.
fn kill_v2(dir: &Path) -> std::io::Result<()> {
    use std::io::Write;
    std::fs::OpenOptions::new()
        .write(true)
        .open(dir.join("cgroup.kill"))?
        .write_all(b"1")
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
        if self.v2 && kill_v2(&self.memory).is_ok() {
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

#[cfg(test)]
mod tests {
    use super::*;
    use rustix::fs::{FlockOperation, flock};

    /// The sweep on plain directories standing for one hierarchy: the servers' directories
    /// with an instance directory in each, and their records.
    #[test]
    fn the_sweep_removes_only_what_dead_servers_left() {
        let tmp = tempfile::tempdir().unwrap();
        let (hierarchy, records) = (tmp.path().join("memory"), tmp.path().join("records"));
        let lock = |name: &str, held: bool| {
            let path = tmp.path().join(format!("{name}.lock"));
            let file = std::fs::File::create(&path).unwrap();
            flock(&file, FlockOperation::NonBlockingLockExclusive).unwrap();
            Record::of(&path).unwrap().write(&records, name).unwrap();
            held.then_some(file)
        };
        for name in [
            "nimbus-me-now",
            "nimbus-me-before",
            "nimbus-live-1",
            "nimbus-dead-1",
            "nimbus-old-1",
        ] {
            std::fs::create_dir_all(hierarchy.join(name).join("i0")).unwrap();
        }
        std::fs::create_dir_all(hierarchy.join("not-ours")).unwrap();
        let _me = lock("nimbus-me-now", true);
        let _before = lock("nimbus-me-before", true);
        let _live = lock("nimbus-live-1", true);
        let _dead = lock("nimbus-dead-1", false);
        // A predecessor's record whose directories are elsewhere.
        let _elsewhere = lock("nimbus-me-elsewhere", false);
        let swept = sweep(&[hierarchy.join("nimbus-me-now")], "me", Some(&records));
        assert_eq!(swept.len(), 2);
        for thread in swept {
            thread.join().unwrap();
        }
        let mut left: Vec<String> = std::fs::read_dir(&hierarchy)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        // The predecessor goes even though its lock is held (a held lock on this node's
        // data dir is this server's); a live server's directory and one without a record
        // stay.
        assert_eq!(
            left,
            ["nimbus-live-1", "nimbus-me-now", "nimbus-old-1", "not-ours"]
        );
        assert!(hierarchy.join("nimbus-live-1/i0").exists());
        let mut records: Vec<String> = std::fs::read_dir(&records)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        records.sort();
        assert_eq!(records, ["nimbus-live-1", "nimbus-me-now"]);
    }
}
