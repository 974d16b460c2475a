//! Every `unsafe` call of the crate, each behind a safe function that states the condition
//! that makes it sound.
//!
//! The workspace denies `unsafe_code` (`[workspace.lints.rust]` in the root Cargo.toml) and
//! this module is the one exception: keeping every unsafe call here, behind a small safe
//! interface, means an audit of the crate's soundness reads one file. The allow below is
//! the only one in the workspace; an `unsafe` block anywhere else fails the build.
#![allow(unsafe_code)]

use std::os::fd::OwnedFd;
use std::os::unix::process::CommandExt;

use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

/// Registers a descriptor with the tokio reactor.
pub(crate) fn async_fd(fd: OwnedFd, interest: Interest) -> std::io::Result<AsyncFd<OwnedFd>> {
    // SAFETY: an `OwnedFd` keeps its descriptor open and unchanged for as long as it is
    // owned, and the `AsyncFd` owns it until it is dropped.
    unsafe { AsyncFd::register_with_interest(fd, interest) }.map_err(Into::into)
}

/// Evidence that the process has a single thread, which makes namespace changes and code
/// between fork and exec sound. Only the `nimbus __jail` helper has it: it starts no thread.
pub(crate) struct SingleThreaded(());

impl SingleThreaded {
    /// Checks the kernel's thread count of this process.
    pub(crate) fn check() -> Option<SingleThreaded> {
        let status = std::fs::read_to_string("/proc/self/status").ok()?;
        let threads = status.lines().find_map(|l| l.strip_prefix("Threads:"))?;
        (threads.trim() == "1").then_some(SingleThreaded(()))
    }

    /// unshare(2). rustix marks it unsafe because other threads would not see the change.
    pub(crate) fn unshare(&self, flags: rustix::thread::UnshareFlags) -> rustix::io::Result<()> {
        // SAFETY: there are no other threads (see the type).
        unsafe { rustix::thread::unshare_unsafe(flags) }
    }

    /// Runs `f` in the child between fork and exec of `cmd`.
    pub(crate) fn pre_exec<F>(&self, cmd: &mut std::process::Command, f: F)
    where
        F: FnMut() -> std::io::Result<()> + Send + Sync + 'static,
    {
        // SAFETY: with a single thread in the parent, no lock (the allocator's included)
        // can be held by another thread at the fork, so the child may run any code.
        unsafe {
            cmd.pre_exec(f);
        }
    }

    /// Restores the default action of `signum` (Rust's runtime ignores SIGPIPE and handles
    /// SIGSEGV for stack overflows), so that re-raising it ends the process.
    pub(crate) fn reset_signal(&self, signum: i32) {
        unsafe extern "C" {
            fn signal(signum: i32, handler: usize) -> usize;
        }
        // SAFETY: SIG_DFL (0) is a valid disposition for any catchable signal and installs
        // no handler code; std offers no API for it.
        unsafe { signal(signum, 0) };
    }
}
