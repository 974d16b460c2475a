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
