//! Which protections this node gives instances, found out once at start-up, and how a
//! sandboxed instance is launched (through the `nimbus __jail` helper, see `jail`).

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use crate::InstanceConfig;
use crate::cgroup::{Cgroups, InstanceCgroup, Limits};
use crate::jail::{JailSpec, RUNTIME_ROOT, Specialization, TASK_ROOT};
use crate::runtimes::Launch;

/// How to set up isolation on this node.
#[derive(Clone, Debug)]
pub struct IsolationConfig {
    /// The `nimbus` binary, started as `nimbus __jail` for every sandboxed instance.
    pub helper: PathBuf,
    /// The server's data dir; the jail's mount point is made in it.
    pub data_dir: PathBuf,
    /// The data dir's node id; it names this server's cgroups (see `Cgroups::detect`).
    pub node_id: String,
    /// New at every start (random); it names this server's cgroups with the node id, so a
    /// restarted server never meets its predecessor's names, even with its pid (pid 1 in a
    /// container).
    pub start_token: String,
    /// The file this server holds an exclusive `flock` on for its life (the data dir's
    /// lock): other servers tell from it whether this one is alive (see `owner`).
    pub server_lock: PathBuf,
    /// Where servers record which lock owns which cgroups: `CGROUP_RECORDS`.
    pub cgroup_records: PathBuf,
    /// The directory of unpacked code trees (`CodeCache`), one per code hash.
    pub code_root: PathBuf,
    /// Per-function uids are `uid_base .. uid_base + uid_count` (when running as root).
    pub uid_base: u32,
    pub uid_count: u32,
    /// The runtimes' interpreters; one installed outside the system directories (in a
    /// virtualenv, by pyenv) has its prefix shown read-only in every jail.
    pub interpreters: Vec<PathBuf>,
}

/// The protections in force on this node.
#[derive(Debug)]
pub struct Isolation {
    config: IsolationConfig,
    root_dir: PathBuf,
    /// Namespaces and the private root work (the helper ran a probe successfully).
    namespaces: Result<(), String>,
    /// The runtime's seccomp filter and empty capability bounding set are in force (a
    /// jailed probe saw them in its `/proc/self/status`).
    seccomp: Result<(), String>,
    /// Running as root: instances get per-function uids.
    identity: Result<(), String>,
    cgroups: Result<Cgroups, String>,
}

/// One protection and whether it is active, for the start-up report.
pub struct Protection {
    pub name: &'static str,
    pub active: bool,
    pub detail: String,
}

impl Isolation {
    /// Finds out what works here: creates the jail mount point, runs the helper once on
    /// `/bin/true`, and sets up this server's cgroups.
    pub fn probe(config: IsolationConfig) -> Isolation {
        let root_dir = config.data_dir.join("jail-root");
        let identity = if rustix::process::geteuid().is_root() {
            Ok(())
        } else {
            Err(
                "the server does not run as root: instances run as its uid, in a user namespace"
                    .to_string(),
            )
        };
        // Stems mount the code root before any function is deployed.
        let _ = std::fs::create_dir_all(&config.code_root);
        let namespaces = match std::fs::create_dir_all(&root_dir) {
            Err(e) => Err(format!("cannot create {}: {e}", root_dir.display())),
            Ok(()) => probe_jail(&config, &root_dir, "/bin/true", &[]),
        };
        // The helper refuses to start a runtime without its filter, so working jails have
        // it; this shows it from inside one, as a function would see it.
        let seccomp = match &namespaces {
            Err(_) => Err("needs namespaces (the jail installs it)".to_string()),
            Ok(()) => probe_jail(&config, &root_dir, "/bin/sh", &["-c", SECCOMP_PROBE]),
        };
        let cgroups = if identity.is_ok() {
            Cgroups::detect(&crate::cgroup::Identity {
                node_id: &config.node_id,
                start_token: &config.start_token,
                lock: &config.server_lock,
                records: &config.cgroup_records,
            })
        } else {
            Err("cgroups need root".to_string())
        };
        Isolation {
            config,
            root_dir,
            namespaces,
            seccomp,
            identity,
            cgroups,
        }
    }

    /// What is active and what is not, with the reason.
    pub fn report(&self) -> Vec<Protection> {
        let row = |name, r: &Result<String, String>| Protection {
            name,
            active: r.is_ok(),
            detail: match r {
                Ok(s) | Err(s) => s.clone(),
            },
        };
        vec![
            row(
                "namespaces",
                &self.namespaces.clone().map(|()| {
                    let user = if self.identity.is_ok() { "" } else { "user, " };
                    format!("{user}mount, pid, ipc, uts, and net for network: none; private root, read-only code, size-limited /tmp")
                }),
            ),
            row(
                "seccomp",
                &self.seccomp.clone().map(|()| {
                    format!(
                        "{}; no capabilities (empty bounding, ambient and inheritable sets)",
                        crate::seccomp::describe()
                    )
                }),
            ),
            row(
                "identity",
                &self.identity.clone().map(|()| {
                    format!(
                        "a uid per function from {}..{}",
                        self.config.uid_base,
                        self.config.uid_base as u64 + self.config.uid_count as u64
                    )
                }),
            ),
            row(
                "resources",
                &self
                    .cgroups
                    .as_ref()
                    .map(|c| c.describe())
                    .map_err(Clone::clone),
            ),
        ]
    }

    /// Whether every protection is active.
    pub fn complete(&self) -> bool {
        self.namespaces.is_ok()
            && self.seccomp.is_ok()
            && self.identity.is_ok()
            && self.cgroups.is_ok()
    }

    /// Whether instances run in jails at all (namespaces work).
    pub fn jails(&self) -> bool {
        self.namespaces.is_ok()
    }

    /// The uid (and gid) of a function's instances: stable for a name on every node.
    pub(crate) fn uid_of(&self, function: &str) -> Option<u32> {
        self.identity.as_ref().ok()?;
        let hash = model::hash::stable_hash(&[function.as_bytes()]);
        Some(self.config.uid_base + (hash % self.config.uid_count.max(1) as u64) as u32)
    }

    /// The instance's cgroups, when cgroups work here.
    pub(crate) fn cgroup(
        &self,
        config: &InstanceConfig,
    ) -> std::io::Result<Option<InstanceCgroup>> {
        let Ok(cgroups) = &self.cgroups else {
            return Ok(None);
        };
        cgroups.create(&limits_of(config)).map(Some)
    }

    /// A stem's cgroups: a bound on the bare runtime until it gets its function's limits.
    pub(crate) fn stem_cgroup(&self) -> std::io::Result<Option<InstanceCgroup>> {
        let Ok(cgroups) = &self.cgroups else {
            return Ok(None);
        };
        let limits = Limits {
            memory_mb: STEM_MEMORY_MB,
            cpu_millicores: 0,
        };
        cgroups.create(&limits).map(Some)
    }

    /// Directories the runtimes need beyond the system ones.
    fn extra_dirs(&self) -> Vec<PathBuf> {
        let mut extra_dirs: Vec<PathBuf> = self
            .config
            .interpreters
            .iter()
            .filter_map(|p| outside_system_dirs(p))
            .collect();
        extra_dirs.sort();
        extra_dirs.dedup();
        extra_dirs
    }

    /// Wraps an interpreter launch for a stem: a jail with the runtime but no code and no
    /// uid yet (see `specialization`), in `cgroup`.
    pub(crate) fn wrap_stem(
        &self,
        launch: &Launch,
        network: model::Network,
        cgroup: Option<&InstanceCgroup>,
    ) -> Launch {
        let spec = JailSpec {
            root_dir: self.root_dir.clone(),
            code_dir: None,
            code_root: Some(self.config.code_root.clone()),
            shim_dir: launch.shim_dir.clone().unwrap_or_default(),
            extra_dirs: self.extra_dirs(),
            uid: None,
            gid: None,
            tmp_mb: model::limits::EPHEMERAL_STORAGE_MB_MIN,
            network: network == model::Network::Outbound,
            cgroup_procs: cgroup.map(|c| c.procs_files()).unwrap_or_default(),
            code_writable: false,
            opt_dir: None,
        };
        helper_launch(&self.config.helper, &spec, launch, |arg| {
            let path = Path::new(arg);
            match &launch.shim_dir {
                Some(shim) => match path.strip_prefix(shim) {
                    Ok(rest) => Path::new(RUNTIME_ROOT).join(rest).into(),
                    Err(_) => arg.clone(),
                },
                None => arg.clone(),
            }
        })
    }

    /// What a jailed stem's helper is told to make it an instance of `config`, and the uid
    /// the runtime then drops to; none when the code is not in the code root.
    pub(crate) fn specialization(
        &self,
        config: &InstanceConfig,
    ) -> Option<(Specialization, Option<u32>)> {
        if config.code_dir.parent() != Some(self.config.code_root.as_path()) {
            return None;
        }
        let code = config.code_dir.file_name()?.to_str()?.to_string();
        let opt = match &config.opt_dir {
            Some(dir) if dir.parent() == Some(self.config.code_root.as_path()) => {
                Some(dir.file_name()?.to_str()?.to_string())
            }
            Some(_) => return None,
            None => None,
        };
        Some((
            Specialization {
                code,
                opt,
                tmp_mb: config.ephemeral_storage_mb,
            },
            self.uid_of(&config.function),
        ))
    }

    /// Wraps `launch` in the helper: the program and arguments it gets, with host paths of
    /// the code and the shim replaced by where they appear inside the jail.
    pub(crate) fn wrap(
        &self,
        launch: &Launch,
        config: &InstanceConfig,
        cgroup: Option<&InstanceCgroup>,
    ) -> Launch {
        let uid = self.uid_of(&config.function);
        let extra_dirs = self.extra_dirs();
        let spec = JailSpec {
            root_dir: self.root_dir.clone(),
            code_dir: Some(config.code_dir.clone()),
            code_root: None,
            shim_dir: launch
                .shim_dir
                .clone()
                .unwrap_or_else(|| config.code_dir.clone()),
            extra_dirs,
            uid,
            gid: uid,
            tmp_mb: config.ephemeral_storage_mb,
            network: config.network == model::Network::Outbound,
            cgroup_procs: cgroup.map(|c| c.procs_files()).unwrap_or_default(),
            code_writable: false,
            opt_dir: config.opt_dir.clone(),
        };
        let inside = |arg: &OsString| -> OsString {
            let path = Path::new(arg);
            if let Ok(rest) = path.strip_prefix(&config.code_dir) {
                return Path::new(TASK_ROOT).join(rest).into();
            }
            if let Some(shim) = &launch.shim_dir
                && let Ok(rest) = path.strip_prefix(shim)
            {
                return Path::new(RUNTIME_ROOT).join(rest).into();
            }
            // A layer's program (a `provided` function's `/opt/bootstrap`).
            if let Some(opt) = &config.opt_dir
                && let Ok(rest) = path.strip_prefix(opt)
            {
                return Path::new(crate::jail::OPT_ROOT).join(rest).into();
            }
            arg.clone()
        };
        helper_launch(&self.config.helper, &spec, launch, inside)
    }

    /// A dependency build's cgroups, with `memory_mb`, when cgroups work here.
    pub(crate) fn build_cgroup(&self, memory_mb: u32) -> std::io::Result<Option<InstanceCgroup>> {
        let Ok(cgroups) = &self.cgroups else {
            return Ok(None);
        };
        cgroups
            .create(&Limits {
                memory_mb,
                cpu_millicores: 0,
            })
            .map(Some)
    }

    /// Wraps a dependency build's tool in the helper: `dir` writable at `/var/task`, owned
    /// by the builds' uid, the network on, `find_links` (a local wheel directory pip is
    /// configured with) shown read-only.
    pub(crate) fn wrap_build(
        &self,
        launch: &Launch,
        dir: &Path,
        cgroup: Option<&InstanceCgroup>,
        find_links: Option<PathBuf>,
    ) -> Result<Launch, crate::SandboxError> {
        // A name no function can have (names start with a letter): builds share one uid of
        // the range, never root's.
        let uid = self.uid_of("@build");
        if let Some(uid) = uid {
            chown_tree(dir, uid)
                .map_err(|e| crate::SandboxError::Spawn(format!("preparing the build: {e}")))?;
        }
        let mut extra_dirs = self.extra_dirs();
        extra_dirs.extend(find_links);
        let spec = JailSpec {
            root_dir: self.root_dir.clone(),
            code_dir: Some(dir.to_path_buf()),
            code_root: None,
            shim_dir: dir.to_path_buf(),
            extra_dirs,
            uid,
            gid: uid,
            tmp_mb: 64,
            network: true,
            cgroup_procs: cgroup.map(|c| c.procs_files()).unwrap_or_default(),
            code_writable: true,
            opt_dir: None,
        };
        Ok(helper_launch(&self.config.helper, &spec, launch, |a| {
            a.clone()
        }))
    }

    /// Removes this server's cgroup directories once the instances' are gone.
    pub fn shutdown(&self) {
        if let Ok(c) = &self.cgroups {
            // Instance cgroups are removed in the background right after their processes
            // die; give them a moment before the parent directories go. A removed child
            // goes offline asynchronously (after an RCU grace period), and until then its
            // parent is busy: on a loaded host that can take a while.
            // Bounded: 10 s for the last processes to die and their cgroups to go.
            let mut left = Vec::new();
            for _ in 0..500 {
                left = c.remove();
                if left.is_empty() {
                    return;
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            tracing::warn!(
                ?left,
                "the server's cgroup directories could not be removed"
            );
        }
    }
}

/// Memory a stem may use before it is specialized (a bare Node.js takes about 40 MB).
const STEM_MEMORY_MB: u32 = 256;

/// The cgroup limits of an instance of `config`.
pub(crate) fn limits_of(config: &InstanceConfig) -> Limits {
    Limits {
        memory_mb: config.memory_mb,
        cpu_millicores: config.cpu_millicores,
    }
}

/// `helper __jail SPEC PROGRAM ARGS...`, with `inside` mapping host paths to jail paths.
fn helper_launch(
    helper: &Path,
    spec: &JailSpec,
    launch: &Launch,
    inside: impl Fn(&OsString) -> OsString,
) -> Launch {
    let mut args: Vec<OsString> = vec![
        crate::JAIL_HELPER_ARG.into(),
        serde_json::to_string(spec)
            .expect("a jail spec serializes")
            .into(),
        inside(&launch.program.clone().into_os_string()),
    ];
    args.extend(launch.args.iter().map(inside));
    Launch {
        program: helper.to_path_buf(),
        args,
        shim_dir: None,
    }
}

/// Gives `dir` and everything in it to `uid` (and its group), without following links.
fn chown_tree(dir: &Path, uid: u32) -> std::io::Result<()> {
    let id = Some(rustix::process::Uid::from_raw(uid));
    let gid = Some(rustix::process::Gid::from_raw(uid));
    rustix::fs::chownat(
        rustix::fs::CWD,
        dir,
        id,
        gid,
        rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
    )?;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            chown_tree(&entry.path(), uid)?;
        } else {
            rustix::fs::chownat(
                rustix::fs::CWD,
                entry.path(),
                id,
                gid,
                rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
            )?;
        }
    }
    Ok(())
}

/// The installation prefix of an interpreter outside the system directories (`/x/venv`
/// for `/x/venv/bin/python`), which the jail must show for it to run.
fn outside_system_dirs(program: &Path) -> Option<PathBuf> {
    let system = ["/usr/", "/bin/", "/sbin/", "/lib/", "/lib64/", "/etc/"];
    let text = program.to_str()?;
    if system.iter().any(|s| text.starts_with(s)) {
        return None;
    }
    let bin = program.parent()?;
    let prefix = if bin.file_name().is_some_and(|n| n == "bin") {
        bin.parent()?
    } else {
        bin
    };
    Some(prefix.to_path_buf())
}

/// Succeeds inside a jail whose runtime has a seccomp filter and an empty capability
/// bounding set (`Seccomp: 2` is filter mode).
const SECCOMP_PROBE: &str = "grep -Eq '^Seccomp:[[:space:]]+2$' /proc/self/status \
    && grep -Eq '^CapBnd:[[:space:]]+0+$' /proc/self/status";

/// Runs the helper once on `program`: namespaces, mounts and pivot_root must all work, and
/// the program must succeed inside.
fn probe_jail(
    config: &IsolationConfig,
    root_dir: &Path,
    program: &str,
    args: &[&str],
) -> Result<(), String> {
    let scratch = root_dir.with_file_name("jail-probe");
    std::fs::create_dir_all(&scratch).map_err(|e| e.to_string())?;
    let spec = JailSpec {
        root_dir: root_dir.to_path_buf(),
        code_dir: Some(scratch.clone()),
        code_root: None,
        shim_dir: scratch,
        extra_dirs: Vec::new(),
        uid: None,
        gid: None,
        tmp_mb: 1,
        network: false,
        cgroup_procs: Vec::new(),
        code_writable: false,
        opt_dir: None,
    };
    let out = std::process::Command::new(&config.helper)
        .arg(crate::JAIL_HELPER_ARG)
        .arg(serde_json::to_string(&spec).expect("a jail spec serializes"))
        .arg(program)
        .args(args)
        .output()
        .map_err(|e| format!("cannot run {}: {e}", config.helper.display()))?;
    if out.status.success() {
        Ok(())
    } else {
        let why = String::from_utf8_lossy(&out.stderr);
        Err(why
            .lines()
            .last()
            .map(str::to_string)
            .unwrap_or_else(|| format!("{program} in a jail failed: {}", out.status)))
    }
}
