//! The process sandbox ("jail") of one instance: namespaces, a minimal read-only root, an
//! unprivileged identity. Runs in the `nimbus __jail` helper, never in the server.
//!
//! The server spawns the helper with the instance's environment and stdio; the helper (a
//! fresh, single-threaded process) joins the instance's cgroups, enters new mount, pid, IPC,
//! UTS and (for `network: none`) network namespaces, builds the root the function sees
//! (system directories read-only and without setuid, its code at `/var/task`, the runtime
//! shim at `/var/runtime`, a size-limited `/tmp`, a minimal `/dev`), pivots into it and
//! starts the runtime as pid 1 of the new pid namespace, as the function's uid, without
//! capabilities and under a seccomp filter (`seccomp`) that denies mounts, namespaces and
//! the kernel's privileged interfaces. It stays outside as the runtime's parent and exits
//! with its status, so the server sees the same exit statuses as without a jail. When pid 1 of a pid namespace dies, the kernel kills
//! everything else in it: killing an instance kills its whole tree.
//!
//! This is the only module with code that runs between fork and exec; that is sound here
//! because the helper has a single thread, which `sys::SingleThreaded` checks.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use std::io::IoSliceMut;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, OwnedFd};

use rustix::mount::{MountFlags, MountPropagationFlags, UnmountFlags};
use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendFlags};
use rustix::thread::CapabilitySet;
use serde::{Deserialize, Serialize};

use crate::seccomp::Filter;
use crate::sys::SingleThreaded;

/// Where the function's code appears inside the jail (Lambda's path, so code that looks
/// for `LAMBDA_TASK_ROOT` finds it).
pub const TASK_ROOT: &str = "/var/task";
/// Where a function's layers are, as on Lambda.
pub const OPT_ROOT: &str = "/opt";
/// Where the runtime shim appears inside the jail.
pub const RUNTIME_ROOT: &str = "/var/runtime";
/// Where a stem's jail keeps every code tree until it is specialized (root-only, and only
/// our shim runs until then).
const STEM_CODE_ROOT: &str = "/.nimbus-code";

/// What the server tells a stem's helper when the stem becomes an instance.
#[derive(Debug, Serialize, Deserialize)]
pub struct Specialization {
    /// The name of the code tree under `code_root`.
    pub code: String,
    /// The name of the layers' tree under `code_root`, shown at `/opt`.
    #[serde(default)]
    pub opt: Option<String>,
    pub tmp_mb: u32,
}

/// Host directories every runtime needs, shown read-only. `/etc` is included for the
/// resolver, certificates and alternatives; its secrets are root-only files that the
/// function's uid cannot read.
const SYSTEM_DIRS: [&str; 8] = [
    "/usr", "/bin", "/sbin", "/lib", "/lib64", "/lib32", "/libx32", "/etc",
];
/// Devices a runtime expects; everything else in `/dev` is absent.
const DEVICES: [&str; 6] = ["null", "zero", "full", "random", "urandom", "tty"];

/// What the helper needs to build one jail; passed as JSON in its arguments.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct JailSpec {
    /// An empty directory the jail's root is mounted on (in the jail's own mount namespace,
    /// so it stays empty for everyone else).
    pub root_dir: PathBuf,
    /// The function's code, shown at `/var/task`; none for a stem, which gets it later.
    pub code_dir: Option<PathBuf>,
    /// For a stem: the directory holding every function's code tree, kept hidden in the
    /// jail until the stem is specialized, when one tree is mounted at `/var/task` from it
    /// and the rest is unmounted.
    pub code_root: Option<PathBuf>,
    pub shim_dir: PathBuf,
    /// Other host directories to show read-only at the same path (an interpreter installed
    /// outside the system directories).
    pub extra_dirs: Vec<PathBuf>,
    /// The identity to run as; `None` keeps the helper's (when it is not root).
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub tmp_mb: u32,
    /// `false`: an empty network namespace (loopback down, no route anywhere).
    pub network: bool,
    /// `cgroup.procs` files to join before anything else, one per controller hierarchy.
    pub cgroup_procs: Vec<PathBuf>,
    /// `code_dir` is shown writable: a dependency build writes its result there.
    #[serde(default)]
    pub code_writable: bool,
    /// The function's layers, shown read-only at `/opt`.
    #[serde(default)]
    pub opt_dir: Option<PathBuf>,
}

/// Why the jail could not be built; printed by the helper, which then exits with status 125.
#[derive(Debug, thiserror::Error)]
#[error("sandbox: {what}: {source}")]
pub struct JailError {
    what: String,
    source: std::io::Error,
}

trait Context<T> {
    fn at(self, what: impl FnOnce() -> String) -> Result<T, JailError>;
}

impl<T, E: Into<std::io::Error>> Context<T> for Result<T, E> {
    fn at(self, what: impl FnOnce() -> String) -> Result<T, JailError> {
        self.map_err(|e| JailError {
            what: what(),
            source: e.into(),
        })
    }
}

/// The helper's entry point: `nimbus __jail SPEC_JSON PROGRAM ARGS...`. Never returns.
pub fn helper_main(args: &[OsString]) -> ! {
    let code = match helper(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("{e}");
            125
        }
    };
    std::process::exit(code)
}

fn helper(args: &[OsString]) -> Result<i32, JailError> {
    let [spec, program, rest @ ..] = args else {
        return Err(JailError {
            what: "usage".into(),
            source: std::io::Error::other("nimbus __jail SPEC_JSON PROGRAM [ARGS...]"),
        });
    };
    let one = SingleThreaded::check().ok_or_else(|| JailError {
        what: "starting".into(),
        source: std::io::Error::other("the helper must have a single thread"),
    })?;
    let spec: JailSpec = serde_json::from_str(&spec.to_string_lossy())
        .map_err(std::io::Error::other)
        .at(|| "reading the jail specification".into())?;
    for procs in &spec.cgroup_procs {
        std::fs::write(procs, std::process::id().to_string())
            .at(|| format!("joining cgroup {}", procs.display()))?;
    }
    let mut namespaces = rustix::thread::UnshareFlags::NEWNS
        | rustix::thread::UnshareFlags::NEWPID
        | rustix::thread::UnshareFlags::NEWIPC
        | rustix::thread::UnshareFlags::NEWUTS;
    if !spec.network {
        namespaces |= rustix::thread::UnshareFlags::NEWNET;
    }
    // A stem's helper gets a control socket as stdin, and the runtime's channel as the
    // first message on it.
    let control = if spec.code_dir.is_none() {
        let control = std::io::stdin()
            .as_fd()
            .try_clone_to_owned()
            .at(|| "taking the control socket".into())?;
        let channel = receive_channel(&control)?;
        Some((control, channel))
    } else {
        None
    };
    if !rustix::process::geteuid().is_root() {
        // Not root: a user namespace gives the helper the privileges to build the jail,
        // mapping only the server's own uid and gid (no one else's files become ours).
        enter_user_namespace(&one)?;
    }
    one.unshare(namespaces)
        .at(|| "creating namespaces".into())?;
    build_root(&spec)?;
    // The helper stays outside the jail; once the runtime has pivoted and detached the old
    // root, paths like /proc/PID/root no longer resolve for it, so it keeps a handle on the
    // jail's root to specialize a stem through.
    let jail_root = rustix::fs::open(
        &spec.root_dir,
        rustix::fs::OFlags::PATH | rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )
    .at(|| "holding the jail root".into())?;
    let _ = rustix::system::sethostname(b"nimbus");

    let mut cmd = std::process::Command::new(program);
    cmd.args(rest);
    let root_dir = std::ffi::CString::new(spec.root_dir.as_os_str().as_encoded_bytes())
        .map_err(std::io::Error::other)
        .at(|| "naming the jail root".into())?;
    if let Some((_, channel)) = &control {
        let channel = channel.try_clone().at(|| "passing the channel on".into())?;
        cmd.stdin(std::process::Stdio::from(channel));
    }
    let (uid, gid) = (spec.uid, spec.gid);
    // Compiled here, before the fork, so the runtime only installs it. A jail without its
    // filter is not started at all (the helper fails, and with it the probe at start-up).
    let filter = Filter::compile()
        .map_err(std::io::Error::other)
        .at(|| "compiling the seccomp filter".into())?;
    // A stem runs as root until it is specialized, and must still be able to drop to the
    // function's uid and gid then; every other runtime keeps no capability at all.
    let keep = if control.is_some() {
        CapabilitySet::SETUID | CapabilitySet::SETGID
    } else {
        CapabilitySet::empty()
    };
    one.pre_exec(&mut cmd, move || {
        // The child is pid 1 of the new pid namespace; its /proc shows only that. It is
        // mounted before the pivot, while the host's /proc is still in view (a user
        // namespace may only mount a procfs when one is fully visible).
        rustix::process::chdir(root_dir.as_c_str())?;
        rustix::mount::mount(
            "proc",
            "proc",
            "proc",
            MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC,
            None,
        )?;
        // pivot_root(".", ".") stacks the old root under the new one; detaching it
        // leaves only the new root (the approach runc takes, needing no directory for
        // the old root). The helper keeps its view of the old one.
        rustix::process::pivot_root(".", ".")?;
        rustix::mount::unmount(".", UnmountFlags::DETACH)?;
        rustix::process::chdir("/")?;
        // The root itself becomes read-only: only /tmp and /dev/shm take writes.
        rustix::mount::mount_remount(
            "/",
            MountFlags::RDONLY | MountFlags::NOSUID | MountFlags::NODEV,
            "",
        )?;
        rustix::process::chdir(TASK_ROOT)?;
        // Before the uid drop, which takes the permitted capabilities that dropping from
        // the bounding set needs (CAP_SETPCAP).
        drop_capabilities(keep)?;
        if let (Some(uid), Some(gid)) = (uid, gid) {
            let gid = rustix::process::Gid::from_raw(gid);
            rustix::thread::set_thread_groups(&[])?;
            rustix::thread::set_thread_res_gid(gid, gid, gid)?;
            let uid = rustix::process::Uid::from_raw(uid);
            rustix::thread::set_thread_res_uid(uid, uid, uid)?;
        }
        // No setuid binary can give privileges back (they are also mounted nosuid).
        rustix::thread::set_no_new_privs(true)?;
        // The runtime never outlives its helper (whose single thread is the parent the
        // signal is tied to), so killing the helper always ends the jail.
        rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL))?;
        // Last: the steps above need mount, pivot_root and umount2, which it denies. From
        // here on, only the exec of the interpreter runs before its own code.
        filter.install()?;
        Ok(())
    });
    let mut child = cmd
        .spawn()
        .at(|| format!("starting {}", program.to_string_lossy()))?;
    if let Some((control, channel)) = control {
        drop(channel);
        // No second thread is possible after leaving the pid namespace, so one poll waits
        // for both the specialization and the runtime's end.
        let runtime = rustix::process::Pid::from_child(&child);
        let exited = rustix::process::pidfd_open(runtime, rustix::process::PidfdFlags::empty())
            .at(|| "watching the runtime".into())?;
        loop {
            let mut fds = [
                rustix::event::PollFd::new(&control, rustix::event::PollFlags::IN),
                rustix::event::PollFd::new(&exited, rustix::event::PollFlags::IN),
            ];
            match rustix::event::poll(&mut fds, None) {
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => return Err(e).at(|| "waiting for the specialization".into()),
                Ok(_) => {}
            }
            if !fds[1].revents().is_empty() {
                break;
            }
            if !fds[0].revents().is_empty() {
                serve_specialization(&control, &jail_root);
                break;
            }
        }
    }
    let status = child.wait().at(|| "waiting for the runtime".into())?;
    use std::os::unix::process::ExitStatusExt;
    if let Some(signal) = status.signal() {
        // Die the same way, so the server reports the runtime's signal, without a core.
        let _ = rustix::process::setrlimit(
            rustix::process::Resource::Core,
            rustix::process::Rlimit {
                current: Some(0),
                maximum: Some(0),
            },
        );
        if let Some(sig) = rustix::process::Signal::from_named_raw(signal) {
            one.reset_signal(signal);
            let _ = rustix::process::kill_process(rustix::process::getpid(), sig);
        }
        return Ok(128 + signal);
    }
    Ok(status.code().unwrap_or(1))
}

/// Empties the capability bounding set except for `keep`, and the ambient and inheritable
/// sets. The bounding set limits what any later `execve` can grant: with it empty, even a
/// root runtime gets no capability from exec, and no file capability or setuid binary
/// can add one. The permitted and effective sets are left for the uid drop, which clears
/// them (a change from uid 0 to another uid does, without `SECBIT_KEEP_CAPS`).
fn drop_capabilities(keep: CapabilitySet) -> std::io::Result<()> {
    for cap in 0..u64::BITS {
        let one = CapabilitySet::from_bits_retain(1 << cap);
        if keep.contains(one) {
            continue;
        }
        match rustix::thread::remove_capability_from_bounding_set(one) {
            Ok(()) => {}
            // Past the kernel's last capability.
            Err(rustix::io::Errno::INVAL) => break,
            Err(e) => return Err(e.into()),
        }
    }
    rustix::thread::clear_ambient_capability_set()?;
    let mut sets = rustix::thread::capabilities(None)?;
    sets.inheritable = CapabilitySet::empty();
    rustix::thread::set_capabilities(None, sets)?;
    Ok(())
}

/// Receives the runtime's channel, the first message on a stem helper's control socket.
fn receive_channel(control: &OwnedFd) -> Result<OwnedFd, JailError> {
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut ancillary = RecvAncillaryBuffer::new(&mut space);
    let mut byte = [0u8; 16];
    rustix::net::recvmsg(
        control,
        &mut [IoSliceMut::new(&mut byte)],
        &mut ancillary,
        RecvFlags::CMSG_CLOEXEC,
    )
    .at(|| "receiving the runtime's channel".into())?;
    ancillary
        .drain()
        .find_map(|m| match m {
            RecvAncillaryMessage::ScmRights(mut fds) => fds.next(),
            _ => None,
        })
        .ok_or_else(|| JailError {
            what: "receiving the runtime's channel".into(),
            source: std::io::Error::other("no descriptor came with the first message"),
        })
}

/// Answers the server's one specialization request: mounts the function's code at
/// `/var/task` (and hides every other tree) and sizes `/tmp`. The runtime drops to the
/// function's uid itself.
fn serve_specialization(control: &OwnedFd, jail_root: &OwnedFd) {
    let mut buf = vec![0u8; 64 * 1024];
    let Ok((n, _)) = rustix::net::recv(control, &mut buf[..], RecvFlags::empty()) else {
        return;
    };
    if n == 0 {
        return;
    }
    let answer = match serde_json::from_slice::<Specialization>(&buf[..n])
        .map_err(|e| JailError {
            what: "reading the specialization".into(),
            source: std::io::Error::other(e),
        })
        .and_then(|s| specialize(&s, jail_root))
    {
        Ok(()) => "ok".to_string(),
        Err(e) => e.to_string(),
    };
    let _ = rustix::net::send(control, answer.as_bytes(), SendFlags::NOSIGNAL);
}

fn specialize(s: &Specialization, jail_root: &OwnedFd) -> Result<(), JailError> {
    let named = |t: &str| !t.is_empty() && !t.contains('/') && !t.starts_with('.');
    if !named(&s.code) || s.opt.as_deref().is_some_and(|o| !named(o)) {
        return Err(JailError {
            what: "specializing".into(),
            source: std::io::Error::other(format!("`{}` is not a code tree name", s.code)),
        });
    }
    // Paths from here on are relative to the jail's root, the helper's working directory.
    rustix::process::fchdir(jail_root).at(|| "entering the jail root".into())?;
    let root = Path::new(".");
    let (task, hidden) = (
        under(root, Path::new(TASK_ROOT)),
        under(root, Path::new(STEM_CODE_ROOT)),
    );
    rustix::mount::mount_bind_recursive(hidden.join(&s.code), &task)
        .at(|| format!("mounting code {}", s.code))?;
    rustix::mount::mount_remount(
        &task,
        MountFlags::BIND | MountFlags::RDONLY | MountFlags::NOSUID | MountFlags::NODEV,
        "",
    )
    .at(|| "making the code read-only".into())?;
    if let Some(opt) = &s.opt {
        let at = under(root, Path::new(OPT_ROOT));
        rustix::mount::mount_bind_recursive(hidden.join(opt), &at)
            .at(|| format!("mounting layers {opt}"))?;
        rustix::mount::mount_remount(
            &at,
            MountFlags::BIND | MountFlags::RDONLY | MountFlags::NOSUID | MountFlags::NODEV,
            "",
        )
        .at(|| "making the layers read-only".into())?;
    }
    rustix::mount::unmount(&hidden, UnmountFlags::DETACH)
        .at(|| "hiding the other code trees".into())?;
    let size = std::ffi::CString::new(format!("size={}m", s.tmp_mb)).expect("no NUL");
    rustix::mount::mount_remount(
        under(root, Path::new("/tmp")),
        MountFlags::NOSUID | MountFlags::NODEV,
        size.as_c_str(),
    )
    .at(|| "sizing /tmp".into())?;
    Ok(())
}

/// Enters a new user namespace in which this process is root, mapped to the uid and gid it
/// had outside. The privileges it gains there apply only to namespaces it then creates.
fn enter_user_namespace(one: &SingleThreaded) -> Result<(), JailError> {
    let (uid, gid) = (
        rustix::process::geteuid().as_raw(),
        rustix::process::getegid().as_raw(),
    );
    one.unshare(rustix::thread::UnshareFlags::NEWUSER)
        .at(|| "creating a user namespace".into())?;
    // Unprivileged, setgroups must be off before a gid map may be written.
    std::fs::write("/proc/self/setgroups", "deny").at(|| "denying setgroups".into())?;
    std::fs::write("/proc/self/uid_map", format!("{uid} {uid} 1"))
        .at(|| "mapping the uid".into())?;
    std::fs::write("/proc/self/gid_map", format!("{gid} {gid} 1"))
        .at(|| "mapping the gid".into())?;
    Ok(())
}

/// Mounts the jail's root on `spec.root_dir`; the runtime pivots into it.
fn build_root(spec: &JailSpec) -> Result<(), JailError> {
    let root = &spec.root_dir;
    // Nothing mounted from here on reaches the host's mount namespace.
    rustix::mount::mount_change(
        "/",
        MountPropagationFlags::REC | MountPropagationFlags::PRIVATE,
    )
    .at(|| "making mounts private".into())?;
    mount_tmpfs(
        root,
        "size=1m,mode=0755",
        MountFlags::NOSUID | MountFlags::NODEV,
    )?;
    for dir in SYSTEM_DIRS {
        let host = Path::new(dir);
        let Ok(meta) = std::fs::symlink_metadata(host) else {
            continue;
        };
        let inside = under(root, host);
        if meta.file_type().is_symlink() {
            // Merged /usr: /bin -> usr/bin and the like stay links.
            let target = std::fs::read_link(host).at(|| format!("reading {dir}"))?;
            std::os::unix::fs::symlink(&target, &inside).at(|| format!("linking {dir}"))?;
        } else if meta.is_dir() {
            bind_read_only(host, &inside)?;
        }
    }
    match (&spec.code_dir, &spec.code_root) {
        (Some(code), _) if spec.code_writable => {
            bind_writable(code, &under(root, Path::new(TASK_ROOT)))?
        }
        (Some(code), _) => bind_read_only(code, &under(root, Path::new(TASK_ROOT)))?,
        (None, Some(all)) => {
            mkdir(&under(root, Path::new(TASK_ROOT)))?;
            // The mount point stays behind once the trees are unmounted: root-only.
            let hidden = under(root, Path::new(STEM_CODE_ROOT));
            mkdir(&hidden)?;
            std::fs::set_permissions(&hidden, std::os::unix::fs::PermissionsExt::from_mode(0o700))
                .at(|| "protecting the code root".into())?;
            bind_read_only(all, &hidden)?;
        }
        (None, None) => mkdir(&under(root, Path::new(TASK_ROOT)))?,
    }
    bind_read_only(&spec.shim_dir, &under(root, Path::new(RUNTIME_ROOT)))?;
    // The mount point of layers, in every jail: a stem learns its function's layers later.
    match &spec.opt_dir {
        Some(opt) => bind_read_only(opt, &under(root, Path::new(OPT_ROOT)))?,
        None => mkdir(&under(root, Path::new(OPT_ROOT)))?,
    }
    let tmp = root.join("tmp");
    mkdir(&tmp)?;
    mount_tmpfs(
        &tmp,
        &format!("size={}m,mode=1777", spec.tmp_mb),
        MountFlags::NOSUID | MountFlags::NODEV,
    )?;
    let dev = root.join("dev");
    mkdir(&dev)?;
    mount_tmpfs(
        &dev,
        "size=64k,mode=0755",
        MountFlags::NOSUID | MountFlags::NOEXEC,
    )?;
    for name in DEVICES {
        let host = Path::new("/dev").join(name);
        if !host.exists() {
            continue;
        }
        let inside = dev.join(name);
        std::fs::File::create(&inside).at(|| format!("creating {}", inside.display()))?;
        rustix::mount::mount_bind(&host, &inside).at(|| format!("binding {}", host.display()))?;
    }
    for (name, target) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        std::os::unix::fs::symlink(target, dev.join(name)).at(|| format!("linking /dev/{name}"))?;
    }
    let shm = dev.join("shm");
    mkdir(&shm)?;
    mount_tmpfs(
        &shm,
        "size=64m,mode=1777",
        MountFlags::NOSUID | MountFlags::NODEV,
    )?;
    mkdir(&root.join("proc"))?;
    // Last, so that an interpreter under /tmp (a virtualenv in a checkout there) is not
    // hidden by the jail's own /tmp.
    for dir in &spec.extra_dirs {
        bind_read_only(dir, &under(root, dir))?;
    }

    Ok(())
}

/// `path` (absolute) placed under `root`.
fn under(root: &Path, path: &Path) -> PathBuf {
    root.join(path.strip_prefix("/").unwrap_or(path))
}

fn mkdir(path: &Path) -> Result<(), JailError> {
    std::fs::create_dir_all(path).at(|| format!("creating {}", path.display()))
}

fn mount_tmpfs(target: &Path, options: &str, flags: MountFlags) -> Result<(), JailError> {
    let options = std::ffi::CString::new(options).expect("mount options have no NUL");
    rustix::mount::mount("nimbus", target, "tmpfs", flags, options.as_c_str())
        .at(|| format!("mounting a tmpfs on {}", target.display()))
}

/// Shows `host` at `inside`, writable, without setuid and devices.
fn bind_writable(host: &Path, inside: &Path) -> Result<(), JailError> {
    mkdir(inside)?;
    rustix::mount::mount_bind_recursive(host, inside)
        .at(|| format!("binding {}", host.display()))?;
    rustix::mount::mount_remount(
        inside,
        MountFlags::BIND | MountFlags::NOSUID | MountFlags::NODEV,
        "",
    )
    .at(|| format!("remounting {}", host.display()))
}

/// Shows `host` at `inside`, read-only, without setuid and devices.
fn bind_read_only(host: &Path, inside: &Path) -> Result<(), JailError> {
    mkdir(inside)?;
    rustix::mount::mount_bind_recursive(host, inside)
        .at(|| format!("binding {}", host.display()))?;
    rustix::mount::mount_remount(
        inside,
        MountFlags::BIND | MountFlags::RDONLY | MountFlags::NOSUID | MountFlags::NODEV,
        "",
    )
    .at(|| format!("making {} read-only", host.display()))
}
