//! A small disk for tests: a tmpfs mounted on a temporary directory, so a test can fill it
//! up, see the store fail with a full disk, free space, and check that the store recovers.
//!
//! Mounting needs root (CAP_SYS_ADMIN). The tests that use it are about recovering from a
//! full disk, which cannot be faked by a smaller file, so they fail loudly when the mount is
//! refused instead of passing without having run.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A tmpfs of a fixed size, unmounted (lazily) when dropped.
pub(crate) struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    pub(crate) fn mount(size_kb: u64) -> SmallDisk {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size_kb}k"), "tmpfs"])
            .arg(dir.path())
            .output()
            .expect("running mount(8)");
        assert!(
            out.status.success(),
            "mounting a {size_kb} KB tmpfs on {} failed ({}): this test needs root to fill \
             a real disk; it does not pass without running",
            dir.path().display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
        SmallDisk { dir }
    }

    pub(crate) fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Writes a file of `bytes` zeros (or as much of it as fits), taking that much space
    /// until it is removed.
    pub(crate) fn ballast(&self, bytes: usize) -> PathBuf {
        use std::io::Write;
        let path = self.path().join("ballast");
        let mut f = std::fs::File::create(&path).expect("creating the ballast");
        let _ = f.write_all(&vec![0; bytes]);
        path
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        // Lazily: connections of the store under test may still hold files open for a moment
        // after the store is dropped (sqlx closes them on worker threads).
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// Whether `e` says the disk is full.
pub(crate) fn is_full(e: &crate::StoreError) -> bool {
    e.is_storage_full()
}
