//! Whose cgroups these are, and whether that server is still alive.
//!
//! A server's cgroup directories are named `nimbus-<node id>-<start token>`: the node id is
//! its data dir's, the start token is new at every start. A pid would not do: a server that
//! runs as pid 1 of its pid namespace (in a container) is pid 1 again after a restart, and
//! a pid says nothing about a process of another pid namespace.
//!
//! Whether the server that made a directory is alive is told by its data dir's lock: a
//! server holds an exclusive `flock` on `<data-dir>/server.lock` for its life, and the
//! kernel drops it when the process dies, even by SIGKILL. Since nothing but directories
//! can be made in a cgroup hierarchy, every server leaves a record beside the hierarchies,
//! one file per cgroup name in a records directory (`/run/nimbus/cgroups`), naming its lock
//! file with the file's device and inode. Another server takes that lock without blocking
//! and lets go at once: if it could take it, the owner is dead and its cgroups may go. A
//! lock that is held, a record that is missing or unreadable, or a lock path that now names
//! another file (another mount namespace, a data dir made again) all mean "maybe alive",
//! and maybe-alive cgroups are left alone.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Where servers leave their records unless told otherwise: `/run` is a tmpfs emptied at
/// boot, as the cgroup hierarchies are, so a record never outlives the cgroups it speaks of
/// by a reboot.
pub const CGROUP_RECORDS: &str = "/run/nimbus/cgroups";

/// The name of a server's cgroup directories.
pub(crate) fn cgroup_name(node_id: &str, start_token: &str) -> String {
    format!("nimbus-{node_id}-{start_token}")
}

/// The prefix of every cgroup name of a node.
pub(crate) fn node_prefix(node_id: &str) -> String {
    format!("nimbus-{node_id}-")
}

/// What is known of the server that owns a cgroup name.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Liveness {
    /// Its lock is held: it runs.
    Alive,
    /// Its lock could be taken: it is gone.
    Dead,
    /// It cannot be told (the reason says why); it must be taken for alive.
    Unknown(String),
}

/// The record of a cgroup name: the lock file of the server that owns it, and which file
/// that was when the record was written.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Record {
    pub lock: PathBuf,
    pub dev: u64,
    pub ino: u64,
}

impl Record {
    /// The record of `lock`, which must exist.
    pub fn of(lock: &Path) -> std::io::Result<Record> {
        let meta = std::fs::metadata(lock)?;
        Ok(Record {
            lock: lock.to_path_buf(),
            dev: meta.dev(),
            ino: meta.ino(),
        })
    }

    /// Writes the record of `name` in `dir`, whole or not at all (written aside and renamed):
    /// a reader must never take half a record for a complete one. The first line holds the
    /// device and inode, the rest of the file is the lock's path, byte for byte.
    pub fn write(&self, dir: &Path, name: &str) -> std::io::Result<PathBuf> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join(name);
        // The name is unique to one start of one server, so the temporary name is too.
        let tmp = dir.join(format!(".{name}.tmp"));
        let mut text = format!("{} {}\n", self.dev, self.ino).into_bytes();
        text.extend_from_slice(self.lock.as_os_str().as_bytes());
        std::fs::write(&tmp, text)?;
        std::fs::rename(&tmp, &path)?;
        Ok(path)
    }

    /// Reads the record of `name` in `dir`.
    pub fn read(dir: &Path, name: &str) -> Result<Record, String> {
        let path = dir.join(name);
        let text = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let bad = || format!("{} is not a record", path.display());
        let newline = text.iter().position(|&b| b == b'\n').ok_or_else(bad)?;
        let first = std::str::from_utf8(&text[..newline]).map_err(|_| bad())?;
        let (dev, ino) = first.split_once(' ').ok_or_else(bad)?;
        let lock = PathBuf::from(OsStr::from_bytes(&text[newline + 1..]));
        if !lock.is_absolute() {
            return Err(bad());
        }
        Ok(Record {
            lock,
            dev: dev.parse().map_err(|_| bad())?,
            ino: ino.parse().map_err(|_| bad())?,
        })
    }

    /// Whether the server holding this record's lock is alive. The lock is taken without
    /// blocking and let go at once; a server starting on that data dir in that instant
    /// finds it taken, and waits a moment for it (see the cli's `lock_data_dir`).
    pub fn liveness(&self) -> Liveness {
        let file = match std::fs::File::open(&self.lock) {
            Ok(file) => file,
            Err(e) => return Liveness::Unknown(format!("{}: {e}", self.lock.display())),
        };
        match file.metadata() {
            Ok(meta) if (meta.dev(), meta.ino()) == (self.dev, self.ino) => {}
            Ok(_) => {
                return Liveness::Unknown(format!(
                    "{} is not the file it was (another mount namespace, or made again)",
                    self.lock.display()
                ));
            }
            Err(e) => return Liveness::Unknown(format!("{}: {e}", self.lock.display())),
        }
        use rustix::fs::{FlockOperation, flock};
        match flock(&file, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => {
                let _ = flock(&file, FlockOperation::Unlock);
                Liveness::Dead
            }
            Err(rustix::io::Errno::WOULDBLOCK) => Liveness::Alive,
            Err(e) => Liveness::Unknown(format!("locking {}: {e}", self.lock.display())),
        }
    }
}

/// Whether the cgroup directories named `name` are a dead server's and may be removed,
/// with whatever still runs in them. Those named with this node's id are a predecessor's:
/// this server holds the data dir's lock, so no other server of this node runs. Others
/// are dead only if their record says so (see `Record::liveness`).
pub(crate) fn is_dead(name: &str, node_id: &str, records: Option<&Path>) -> bool {
    if name.starts_with(&node_prefix(node_id)) {
        return true;
    }
    let Some(records) = records else { return false };
    match Record::read(records, name) {
        Ok(record) => record.liveness() == Liveness::Dead,
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustix::fs::{FlockOperation, flock};

    /// A lock file held as a running server holds its own.
    fn held(path: &Path) -> std::fs::File {
        let file = std::fs::File::create(path).unwrap();
        flock(&file, FlockOperation::NonBlockingLockExclusive).unwrap();
        file
    }

    #[test]
    fn names_carry_the_node_and_the_start() {
        assert_eq!(cgroup_name("00ff", "1a2b"), "nimbus-00ff-1a2b");
        assert!(cgroup_name("00ff", "1a2b").starts_with(&node_prefix("00ff")));
        // A node id that extends another is not taken for it.
        assert!(!cgroup_name("00ff1", "1a2b").starts_with(&node_prefix("00ff")));
    }

    #[test]
    fn a_record_reads_back_as_written() {
        let tmp = tempfile::tempdir().unwrap();
        let lock = tmp.path().join("data dir\nwith a newline/server.lock");
        std::fs::create_dir_all(lock.parent().unwrap()).unwrap();
        std::fs::write(&lock, "").unwrap();
        let record = Record::of(&lock).unwrap();
        let records = tmp.path().join("records");
        let path = record.write(&records, "nimbus-a-b").unwrap();
        assert_eq!(path, records.join("nimbus-a-b"));
        assert_eq!(Record::read(&records, "nimbus-a-b").unwrap(), record);
        // Nothing is left aside.
        assert_eq!(std::fs::read_dir(&records).unwrap().count(), 1);
        assert!(Record::read(&records, "nimbus-a-c").is_err());
        std::fs::write(records.join("nimbus-a-d"), "12 x\n/l").unwrap();
        assert!(Record::read(&records, "nimbus-a-d").is_err());
        std::fs::write(records.join("nimbus-a-e"), "12 13\nrelative").unwrap();
        assert!(Record::read(&records, "nimbus-a-e").is_err());
    }

    #[test]
    fn a_held_lock_is_alive_and_a_free_one_dead() {
        let tmp = tempfile::tempdir().unwrap();
        let lock = tmp.path().join("server.lock");
        let server = held(&lock);
        let record = Record::of(&lock).unwrap();
        assert_eq!(record.liveness(), Liveness::Alive);
        // Asking did not take the lock from its holder.
        assert_eq!(record.liveness(), Liveness::Alive);
        drop(server);
        assert_eq!(record.liveness(), Liveness::Dead);
        // Asking let go of it at once: a server can start on the data dir.
        let _next = held(&lock);
        assert_eq!(record.liveness(), Liveness::Alive);
    }

    #[test]
    fn what_cannot_be_told_is_unknown() {
        let tmp = tempfile::tempdir().unwrap();
        let lock = tmp.path().join("server.lock");
        std::fs::write(&lock, "").unwrap();
        let record = Record::of(&lock).unwrap();
        // The path now names another file, free: it says nothing of the old one's holder.
        // (Made while the first still exists, so its inode is another.)
        let other = tmp.path().join("other");
        std::fs::write(&other, "").unwrap();
        std::fs::rename(&other, &lock).unwrap();
        assert!(matches!(record.liveness(), Liveness::Unknown(_)));
        std::fs::remove_file(&lock).unwrap();
        assert!(matches!(record.liveness(), Liveness::Unknown(_)));
    }

    #[test]
    fn only_what_is_known_dead_is_removed() {
        let tmp = tempfile::tempdir().unwrap();
        let records = tmp.path().join("records");
        let record_of = |name: &str, lock: &Path| {
            Record::of(lock).unwrap().write(&records, name).unwrap();
        };
        let live_lock = tmp.path().join("live.lock");
        let _live = held(&live_lock);
        record_of("nimbus-b-1", &live_lock);
        let dead_lock = tmp.path().join("dead.lock");
        drop(held(&dead_lock));
        record_of("nimbus-c-1", &dead_lock);
        let records = Some(records.as_path());
        // This node's own leftovers are a predecessor's, whatever their record says.
        assert!(is_dead("nimbus-a-1", "a", records));
        assert!(is_dead("nimbus-a-1", "a", None));
        assert!(!is_dead("nimbus-b-1", "a", records));
        assert!(is_dead("nimbus-c-1", "a", records));
        // No record (a server of an older version, or one that could not write it), or
        // no records at all: maybe alive.
        assert!(!is_dead("nimbus-d-1", "a", records));
        assert!(!is_dead("nimbus-c-1", "a", None));
    }
}
