//! The seccomp filter of a jailed runtime: the system calls a function never needs and
//! that would let it out of its jail or at the kernel's privileged interfaces.
//!
//! It is a denylist, modelled on Docker's default profile: everything is allowed except
//! the calls below, which fail with `EPERM` (not a kill), so that an interpreter reports a
//! clear `PermissionError` and carries on. An allowlist would be tighter but has to follow
//! every system call that Python, Node.js, their C extensions and glibc may make.
//!
//! The filter is compiled by the helper before it forks (`Filter::compile`, with the
//! pure-Rust `seccompiler`) and installed by the runtime process itself as the last step
//! before it execs the interpreter (`jail.rs`): after its own mounts, its pivot into the
//! jail and its uid drop, which need several of the denied calls. The helper, which mounts
//! a stem's code later, is never filtered. A filter is inherited by every child and kept
//! across `execve`, and cannot be removed, so it covers the whole runtime tree.

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch, sock_filter,
};

/// System calls denied whatever their arguments, with their names for the start-up
/// report and tests.
const DENIED: &[(libc::c_long, &str)] = &[
    // Namespaces: entering another one is never needed (creating one is checked by flags
    // below).
    (libc::SYS_setns, "setns"),
    // Mounts: the jail's mount table is built before the filter and stays as it is.
    (libc::SYS_mount, "mount"),
    (libc::SYS_umount2, "umount2"),
    (libc::SYS_pivot_root, "pivot_root"),
    (libc::SYS_move_mount, "move_mount"),
    (libc::SYS_open_tree, "open_tree"),
    (libc::SYS_fsopen, "fsopen"),
    (libc::SYS_fsconfig, "fsconfig"),
    (libc::SYS_fsmount, "fsmount"),
    (libc::SYS_fspick, "fspick"),
    (libc::SYS_mount_setattr, "mount_setattr"),
    // The kernel's big attack surfaces that no function needs.
    (libc::SYS_bpf, "bpf"),
    (libc::SYS_perf_event_open, "perf_event_open"),
    (libc::SYS_userfaultfd, "userfaultfd"),
    (libc::SYS_io_uring_setup, "io_uring_setup"),
    (libc::SYS_io_uring_enter, "io_uring_enter"),
    (libc::SYS_io_uring_register, "io_uring_register"),
    // Keyrings are not namespaced: keys would be shared with the host.
    (libc::SYS_keyctl, "keyctl"),
    (libc::SYS_add_key, "add_key"),
    (libc::SYS_request_key, "request_key"),
    // Reading or writing other processes (the runtime's own tree included).
    (libc::SYS_ptrace, "ptrace"),
    (libc::SYS_process_vm_readv, "process_vm_readv"),
    (libc::SYS_process_vm_writev, "process_vm_writev"),
    (libc::SYS_pidfd_getfd, "pidfd_getfd"),
    // The machine's administration: modules, reboot, swap, accounting, clocks, quotas,
    // the kernel log, handles that bypass path permissions.
    (libc::SYS_init_module, "init_module"),
    (libc::SYS_finit_module, "finit_module"),
    (libc::SYS_delete_module, "delete_module"),
    (libc::SYS_kexec_load, "kexec_load"),
    (libc::SYS_kexec_file_load, "kexec_file_load"),
    (libc::SYS_reboot, "reboot"),
    (libc::SYS_swapon, "swapon"),
    (libc::SYS_swapoff, "swapoff"),
    (libc::SYS_acct, "acct"),
    (libc::SYS_settimeofday, "settimeofday"),
    (libc::SYS_clock_settime, "clock_settime"),
    (libc::SYS_clock_adjtime, "clock_adjtime"),
    (libc::SYS_quotactl, "quotactl"),
    (libc::SYS_quotactl_fd, "quotactl_fd"),
    (libc::SYS_lookup_dcookie, "lookup_dcookie"),
    (libc::SYS_syslog, "syslog"),
    (libc::SYS_open_by_handle_at, "open_by_handle_at"),
    (libc::SYS_name_to_handle_at, "name_to_handle_at"),
    // Port IO (x86 only; vm86 exists only for 32-bit x86, whose calls the architecture
    // check refuses anyway).
    #[cfg(target_arch = "x86_64")]
    (libc::SYS_iopl, "iopl"),
    #[cfg(target_arch = "x86_64")]
    (libc::SYS_ioperm, "ioperm"),
];

/// The namespace flags of `clone` and `unshare`: creating any namespace is denied, and
/// with it the user namespace that would give the function root's capabilities over
/// namespaces of its own (and so `mount`, without the filter).
const NAMESPACE_FLAGS: [libc::c_int; 8] = [
    libc::CLONE_NEWUSER,
    libc::CLONE_NEWNS,
    libc::CLONE_NEWPID,
    libc::CLONE_NEWNET,
    libc::CLONE_NEWUTS,
    libc::CLONE_NEWIPC,
    libc::CLONE_NEWCGROUP,
    libc::CLONE_NEWTIME,
];

/// The `personality` values Docker allows: the Linux default, 32-bit and uname-2.6
/// emulation, and the query (`0xffffffff`). Others (`READ_IMPLIES_EXEC`,
/// `ADDR_NO_RANDOMIZE`) weaken the process's own protections.
const PERSONALITIES: [u64; 5] = [0, 0x0008, 0x20000, 0x20008, 0xffff_ffff];

/// The error of every denied call.
const DENY: SeccompAction = SeccompAction::Errno(libc::EPERM as u32);

/// A compiled filter, ready to install.
#[derive(Debug)]
pub(crate) struct Filter(BpfProgram);

impl Filter {
    /// Compiles the filter for this machine's architecture.
    pub(crate) fn compile() -> Result<Filter, String> {
        let arch = TargetArch::try_from(std::env::consts::ARCH).map_err(|e| e.to_string())?;
        let mut rules: BTreeMap<i64, Vec<SeccompRule>> =
            DENIED.iter().map(|(nr, _)| (*nr, Vec::new())).collect();
        // clone(2) takes its flags first on every architecture seccompiler supports. Each
        // rule matches one flag; the call is denied when any rule matches.
        let with_namespace = |arg: u8| -> Result<Vec<SeccompRule>, String> {
            NAMESPACE_FLAGS
                .iter()
                .map(|flag| {
                    let flag = *flag as u32 as u64;
                    condition(arg, SeccompCmpOp::MaskedEq(flag), flag)
                        .and_then(|c| SeccompRule::new(vec![c]).map_err(|e| e.to_string()))
                })
                .collect()
        };
        rules.insert(libc::SYS_clone, with_namespace(0)?);
        rules.insert(libc::SYS_unshare, with_namespace(0)?);
        // One rule whose conditions must all hold: the value is none of the allowed ones.
        let other_personality = PERSONALITIES
            .iter()
            .map(|p| condition(0, SeccompCmpOp::Ne, *p))
            .collect::<Result<Vec<_>, _>>()?;
        rules.insert(
            libc::SYS_personality,
            vec![SeccompRule::new(other_personality).map_err(|e| e.to_string())?],
        );
        let filter = SeccompFilter::new(rules, SeccompAction::Allow, DENY, arch)
            .map_err(|e| e.to_string())?;
        let program = BpfProgram::try_from(filter).map_err(|e| e.to_string())?;
        // clone3 passes its flags in memory, which a filter cannot read: it fails with
        // ENOSYS, as under Docker, and glibc falls back to clone, whose flags are checked.
        let mut guarded = prefix();
        guarded.extend(program);
        Ok(Filter(guarded))
    }

    /// Installs the filter on the calling thread (and `no_new_privs`, which an
    /// unprivileged filter requires and the jail sets anyway).
    pub(crate) fn install(&self) -> std::io::Result<()> {
        seccompiler::apply_filter(&self.0).map_err(|e| match e {
            seccompiler::Error::Seccomp(e) | seccompiler::Error::Prctl(e) => e,
            other => std::io::Error::other(other.to_string()),
        })
    }

    /// How many BPF instructions the filter has.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.0.len()
    }
}

/// A one-line description of what the filter denies, for the start-up report.
pub(crate) fn describe() -> String {
    format!(
        "{} system calls fail with EPERM (mount, setns, bpf, keyrings, ptrace, modules, \
         clocks, io_uring, ...), and so do clone and unshare with namespace flags and \
         personality beyond the safe values; clone3 fails with ENOSYS",
        DENIED.len()
    )
}

/// The names of the calls denied whatever their arguments.
#[cfg(test)]
pub(crate) fn denied_names() -> impl Iterator<Item = &'static str> {
    DENIED.iter().map(|(_, name)| *name)
}

/// A condition on the low 32 bits of argument `arg`: every flag and personality value
/// checked here fits in them, and the kernel reads `personality`'s argument as 32 bits.
fn condition(arg: u8, op: SeccompCmpOp, value: u64) -> Result<SeccompCondition, String> {
    SeccompCondition::new(arg, SeccompCmpArgLen::Dword, op, value).map_err(|e| e.to_string())
}

/// BPF instructions ahead of seccompiler's program, for what its rules cannot say:
/// `clone3` fails with ENOSYS, and on x86-64 so does every x32 call (numbers with bit 30
/// set, which share the x86-64 architecture value and would otherwise slip past rules
/// written for the x86-64 numbers; no runtime here uses x32).
fn prefix() -> Vec<sock_filter> {
    const BPF_LD_W_ABS: u16 = (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16;
    const BPF_JEQ_K: u16 = (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16;
    const BPF_RET_K: u16 = (libc::BPF_RET | libc::BPF_K) as u16;
    // Offsets in `struct seccomp_data`: the call's number, then the architecture.
    const NR: u32 = 0;
    const ARCH: u32 = 4;
    let enosys = libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32;
    let stmt = |code, k| sock_filter {
        code,
        jt: 0,
        jf: 0,
        k,
    };
    let jump = |code, k, jt, jf| sock_filter { code, jt, jf, k };
    // Architecture first: the numbers below mean what they say only for this one (any
    // other is killed by seccompiler's own check, which comes next).
    #[allow(unused_mut)] // Only x86-64 adds to it.
    let mut out = vec![
        stmt(BPF_LD_W_ABS, ARCH),
        jump(BPF_JEQ_K, audit_arch(), 0, x32_len() + 3),
        stmt(BPF_LD_W_ABS, NR),
        jump(BPF_JEQ_K, libc::SYS_clone3 as u32, 0, 1),
        stmt(BPF_RET_K, enosys),
    ];
    #[cfg(target_arch = "x86_64")]
    {
        const BPF_JGE_K: u16 = (libc::BPF_JMP | libc::BPF_JGE | libc::BPF_K) as u16;
        const X32_SYSCALL_BIT: u32 = 0x4000_0000;
        out.push(jump(BPF_JGE_K, X32_SYSCALL_BIT, 0, 1));
        out.push(stmt(BPF_RET_K, enosys));
    }
    out
}

/// How many instructions the x32 check adds to `prefix`.
fn x32_len() -> u8 {
    if cfg!(target_arch = "x86_64") { 2 } else { 0 }
}

/// The kernel's `AUDIT_ARCH_*` value of this architecture (`linux/audit.h`).
fn audit_arch() -> u32 {
    const EM_X86_64: u32 = 62;
    const EM_AARCH64: u32 = 183;
    const EM_RISCV: u32 = 243;
    const ARCH_64BIT: u32 = 0x8000_0000;
    const ARCH_LE: u32 = 0x4000_0000;
    let machine = match std::env::consts::ARCH {
        "aarch64" => EM_AARCH64,
        "riscv64" => EM_RISCV,
        _ => EM_X86_64,
    };
    machine | ARCH_64BIT | ARCH_LE
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    /// What a filtered Python sees; printed as JSON. Python 3.11 has no `os.unshare`, so the
    /// calls go through ctypes and report errno (0 for success).
    const PROBE: &str = r#"
import ctypes, json, os, socket, subprocess, tempfile, threading
libc = ctypes.CDLL(None, use_errno=True)
def errno_of(rc):
    return 0 if rc != -1 else ctypes.get_errno()
out = {
    "unshare_user": errno_of(libc.unshare(0x10000000)),
    "unshare_mount": errno_of(libc.unshare(0x00020000)),
    # A missing target: without the filter, the kernel answers ENOENT before it checks
    # privileges, so EPERM can only come from the filter.
    "mount": errno_of(libc.mount(b"none", b"/nonexistent-nimbus", b"tmpfs", 0, None)),
    "umount2": errno_of(libc.umount2(b"/nonexistent-nimbus", 0)),
    "bpf": errno_of(libc.syscall(321, 0, None, 0)),
    "keyctl": errno_of(libc.syscall(250, 0, 0, 0, 0, 0)),
    "clone3": errno_of(libc.syscall(435, None, 0)),
    "personality_query": errno_of(libc.personality(0xffffffff)),
    "personality_no_aslr": errno_of(libc.personality(0x0040000)),
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
out["seccomp"] = [l.split()[1] for l in open("/proc/self/status") if l.startswith("Seccomp:")][0]
print(json.dumps(out))
"#;

    /// Nanoseconds per iteration of two system calls (one cached by the kernel's seccomp
    /// cache, one path lookup), best of five rounds.
    const CALL_LOOP: &str = r#"
import os, time
best = None
for _ in range(5):
    t = time.perf_counter_ns()
    for _ in range(100000):
        os.getppid(); os.stat('/')
    n = (time.perf_counter_ns() - t) / 100000
    best = n if best is None else min(best, n)
print(round(best))
"#;

    fn python() -> Option<&'static str> {
        ["/usr/bin/python3", "/usr/local/bin/python3"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
    }

    /// Runs `f` on a thread of its own with the filter installed: a filter applies to the
    /// thread that installs it (and its children), so the test process is unaffected.
    fn filtered<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
        std::thread::spawn(move || {
            Filter::compile().unwrap().install().unwrap();
            f()
        })
        .join()
        .unwrap()
    }

    #[test]
    fn the_filter_compiles_and_names_what_it_denies() {
        let filter = Filter::compile().unwrap();
        // The kernel takes at most 4096 instructions.
        assert!(filter.len() < 1024, "{}", filter.len());
        let names: Vec<_> = denied_names().collect();
        for name in ["mount", "pivot_root", "setns", "bpf", "keyctl", "ptrace"] {
            assert!(names.contains(&name), "{name}");
        }
    }

    #[test]
    fn denied_calls_fail_with_eperm_and_ordinary_work_goes_on() {
        let Some(python) = python() else {
            eprintln!("no python3: skipped");
            return;
        };
        let out = filtered(move || {
            std::process::Command::new(python)
                .args(["-I", "-c", PROBE])
                .output()
                .unwrap()
        });
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let eperm = libc::EPERM;
        assert_eq!(v["unshare_user"], eperm, "{v}");
        assert_eq!(v["unshare_mount"], eperm, "{v}");
        assert_eq!(v["mount"], eperm, "{v}");
        assert_eq!(v["umount2"], eperm, "{v}");
        if cfg!(target_arch = "x86_64") {
            // The raw numbers in PROBE are x86-64's.
            assert_eq!(v["bpf"], eperm, "{v}");
            assert_eq!(v["keyctl"], eperm, "{v}");
            assert_eq!(v["clone3"], libc::ENOSYS, "{v}");
        }
        assert_eq!(v["personality_query"], 0, "{v}");
        assert_eq!(v["personality_no_aslr"], eperm, "{v}");
        // Threads (clone3 falls back to clone), processes, files and sockets still work.
        assert_eq!(v["thread"], true, "{v}");
        assert_eq!(v["subprocess"], 0, "{v}");
        assert_eq!(v["file"], "x", "{v}");
        assert_eq!(v["socketpair"], "hi", "{v}");
        assert_eq!(v["seccomp"], "2", "{v}");
    }

    /// The cost of the filter at a cold start: compiling and installing it (once per
    /// instance, in the helper and the runtime), and running it on every system call of an
    /// interpreter's start. Printed, not asserted (`--nocapture` shows it).
    #[test]
    fn cost_of_the_filter() {
        let runs = 20;
        let t = Instant::now();
        for _ in 0..runs {
            std::hint::black_box(Filter::compile().unwrap());
        }
        let compile = t.elapsed() / runs;
        let install = filtered(|| {
            let filter = Filter::compile().unwrap();
            let t = Instant::now();
            filter.install().unwrap();
            t.elapsed()
        });
        eprintln!("seccomp: compile {compile:?}, install {install:?}");
        let Some(python) = python() else {
            return;
        };
        let start = move || {
            let t = Instant::now();
            let ok = std::process::Command::new(python)
                .args(["-I", "-c", "import asyncio, json, uuid"])
                .status()
                .unwrap()
                .success();
            assert!(ok);
            t.elapsed()
        };
        let median = |mut v: Vec<Duration>| {
            v.sort();
            v[v.len() / 2]
        };
        // Interleaved, so that a busy moment of the machine weighs on both.
        let (mut plain, mut with) = (Vec::new(), Vec::new());
        for _ in 0..runs {
            plain.push(std::thread::spawn(start).join().unwrap());
            with.push(filtered(start));
        }
        eprintln!(
            "seccomp: python3 start (asyncio, json, uuid) median {:?} without the filter, {:?} with it ({runs} each)",
            median(plain),
            median(with)
        );
        // One cheap call many times: what the filter adds to each call it lets through
        // (the kernel caches calls that are always allowed, so mostly nothing).
        let per_call = move || {
            let out = std::process::Command::new(python)
                .args(["-I", "-c", CALL_LOOP])
                .output()
                .unwrap();
            String::from_utf8_lossy(&out.stdout).trim().to_string()
        };
        let plain = std::thread::spawn(per_call).join().unwrap();
        let with = filtered(per_call);
        eprintln!(
            "seccomp: os.getppid() + os.stat() {plain} ns without the filter, {with} ns with it"
        );
    }
}
