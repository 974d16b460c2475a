//! The Python fork server ("zygote"): one interpreter that has imported the shim forks a
//! child for each new instance.
//!
//! Starting a Python interpreter and importing the shim costs about 13 ms of CPU; a fork of
//! a process that already has costs about one. On two cores that is the difference between
//! fifty and several hundred new instances per second in a burst. The zygote is a child of
//! the server; its children are not, so the zygote reports their exit statuses.
//!
//! The control socket is a `SOCK_SEQPACKET` pair, so every message keeps its boundary and
//! the descriptors sent with it. A request is a 4-byte token with three descriptors (the
//! instance's end of its channel, its stdout and its stderr); the zygote answers
//! `(FORKED, token, pid)` and later `(EXITED, pid, wait status)`. The server keeps no copy
//! of the descriptors it hands over, so an instance's pipes close when it exits.

use std::collections::HashMap;
use std::io::IoSlice;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::process::Stdio;
use std::sync::{Arc, Mutex};

use rustix::net::{
    AddressFamily, RecvFlags, SendAncillaryBuffer, SendAncillaryMessage, SendFlags, SocketFlags,
    SocketType,
};
use tokio::io::unix::AsyncFd;
use tokio::sync::oneshot;

use crate::instance::BASE_ENV;
use crate::runtimes::Launch;

const FORKED: u32 = 1;
const EXITED: u32 = 2;
/// One report: kind, token or pid, pid or wait status, in native byte order.
const REPORT_BYTES: usize = 12;

/// A running fork server. Dropping it kills the zygote; its children live on until their
/// channels close or their instances kill them.
pub(crate) struct Zygote {
    control: Arc<AsyncFd<OwnedFd>>,
    table: Arc<Mutex<Table>>,
    _process: tokio::process::Child,
}

/// Forks asked for and children alive, keyed by token and by pid.
#[derive(Default)]
struct Table {
    next_token: u32,
    forks: HashMap<u32, Asked>,
    exits: HashMap<i32, oneshot::Sender<i32>>,
    closed: bool,
}

struct Asked {
    pid: oneshot::Sender<i32>,
    status: oneshot::Sender<i32>,
}

/// A child the zygote is forking: its pid once forked, its wait status once it exited, and
/// the read ends of its output pipes. Both receivers fail if the zygote dies first.
pub(crate) struct Forked {
    pub pid: oneshot::Receiver<i32>,
    pub status: oneshot::Receiver<i32>,
    pub stdout: OwnedFd,
    pub stderr: OwnedFd,
}

impl Zygote {
    /// Starts the fork server of the interpreter `launch` runs (Python's).
    pub fn spawn(launch: &Launch) -> std::io::Result<Zygote> {
        let (host, guest) = rustix::net::socketpair(
            AddressFamily::UNIX,
            SocketType::SEQPACKET,
            SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
            None,
        )?;
        // The zygote blocks on its end; only the server's end is non-blocking.
        rustix::io::ioctl_fionbio(&guest, false)?;
        let mut process = tokio::process::Command::new(&launch.program)
            .args(&launch.args)
            .env_clear()
            .envs(BASE_ENV.iter().copied())
            .env("NIMBUS_ZYGOTE", "1")
            .current_dir("/")
            .stdin(Stdio::from(guest))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true)
            .spawn()?;
        let control = Arc::new(crate::sys::async_fd(
            host,
            tokio::io::Interest::READABLE | tokio::io::Interest::WRITABLE,
        )?);
        let table = Arc::new(Mutex::new(Table::default()));
        tokio::spawn(read_reports(control.clone(), table.clone()));
        if let Some(stderr) = process.stderr.take() {
            tokio::spawn(log_stderr(stderr));
        }
        Ok(Zygote {
            control,
            table,
            _process: process,
        })
    }

    /// Whether the zygote still answers; a dead one must be replaced.
    pub fn alive(&self) -> bool {
        !self.table.lock().unwrap().closed
    }

    /// Asks for a new child; returns the server's end of the child's channel at once. The
    /// message is small and the socket non-blocking, so this never waits; a full socket
    /// (a zygote that stopped reading) is an error and the caller spawns instead.
    pub fn fork(&self) -> std::io::Result<(UnixStream, Forked)> {
        let (host, guest) = UnixStream::pair()?;
        let (stdout, stdout_w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?;
        let (stderr, stderr_w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?;
        let (pid_tx, pid) = oneshot::channel();
        let (status_tx, status) = oneshot::channel();
        let token = {
            let mut table = self.table.lock().unwrap();
            if table.closed {
                return Err(std::io::Error::other("the fork server has exited"));
            }
            table.next_token = table.next_token.wrapping_add(1);
            let token = table.next_token;
            table.forks.insert(
                token,
                Asked {
                    pid: pid_tx,
                    status: status_tx,
                },
            );
            token
        };
        let fds = [guest.as_fd(), stdout_w.as_fd(), stderr_w.as_fd()];
        let sent = send_with_fds(self.control.get_ref(), &token.to_ne_bytes(), &fds);
        if let Err(e) = sent {
            self.table.lock().unwrap().forks.remove(&token);
            return Err(e);
        }
        Ok((
            host,
            Forked {
                pid,
                status,
                stdout,
                stderr,
            },
        ))
    }
}

/// Sends one message with descriptors attached (at most three).
pub(crate) fn send_with_fds(
    socket: impl AsFd,
    bytes: &[u8],
    fds: &[std::os::fd::BorrowedFd<'_>],
) -> std::io::Result<()> {
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(3))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !control.push(SendAncillaryMessage::ScmRights(fds)) {
        return Err(std::io::Error::other(
            "too many descriptors for one message",
        ));
    }
    rustix::net::sendmsg(
        socket,
        &[IoSlice::new(bytes)],
        &mut control,
        SendFlags::NOSIGNAL,
    )?;
    Ok(())
}

/// Waits until a forked child whose fork server died has exited. It was reparented, so its
/// status is lost, but a pidfd still says when it ends; until then it keeps serving.
pub(crate) async fn orphan_exit(pid: i32) {
    let Some(pid) = rustix::process::Pid::from_raw(pid) else {
        return;
    };
    // ESRCH: it is gone already.
    let Ok(pidfd) = rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()) else {
        return;
    };
    let Ok(watch) = crate::sys::async_fd(pidfd, tokio::io::Interest::READABLE) else {
        return;
    };
    // A pidfd turns readable when its process exits.
    let _ = watch.readable().await;
}

/// Routes the zygote's reports to the children they name, until the zygote goes away;
/// then every waiting receiver learns it.
async fn read_reports(control: Arc<AsyncFd<OwnedFd>>, table: Arc<Mutex<Table>>) {
    let mut buf = [0u8; REPORT_BYTES];
    loop {
        let received = match control.readable().await {
            Ok(mut guard) => {
                match guard.try_io(|fd| {
                    rustix::net::recv(fd.get_ref(), &mut buf[..], RecvFlags::empty())
                        .map_err(Into::into)
                }) {
                    Ok(result) => result,
                    Err(_would_block) => continue,
                }
            }
            Err(e) => Err(e),
        };
        let n = match received {
            Ok((n, _)) => n,
            Err(e) => {
                tracing::warn!(error = %e, "reading the fork server's reports failed");
                0
            }
        };
        if n != REPORT_BYTES {
            break;
        }
        let word = |i: usize| u32::from_ne_bytes(buf[i..i + 4].try_into().expect("4 bytes"));
        let (kind, a, b) = (word(0), word(4), word(8) as i32);
        let mut table = table.lock().unwrap();
        match kind {
            FORKED => {
                if let Some(asked) = table.forks.remove(&a) {
                    // The receiver may be gone (a stem dropped meanwhile); the child then
                    // finds its channel closed and exits, and its report clears the entry.
                    let _ = asked.pid.send(b);
                    table.exits.insert(b, asked.status);
                }
            }
            EXITED => {
                if let Some(status) = table.exits.remove(&(a as i32)) {
                    let _ = status.send(b);
                }
            }
            _ => tracing::warn!(kind, "the fork server sent an unknown report"),
        }
    }
    let mut table = table.lock().unwrap();
    table.closed = true;
    table.forks.clear();
    table.exits.clear();
    tracing::warn!("the Python fork server exited; instances start by spawning until it is back");
}

/// The zygote's own complaints (a failed fork, a bug in the shim) go to the server log.
async fn log_stderr(stderr: tokio::process::ChildStderr) {
    use tokio::io::AsyncBufReadExt;
    let mut lines = tokio::io::BufReader::new(stderr).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        tracing::warn!(%line, "fork server");
    }
}
