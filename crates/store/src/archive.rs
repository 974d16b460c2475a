//! Safe unpacking of code archives (zip), and their deterministic packing.
//!
//! An archive comes from a user and is unpacked on the server, so every entry is checked
//! before it touches the disk: no absolute paths, no `..`, no symlink that leads out of the
//! tree, no more than the configured unpacked size (counted on the bytes actually written,
//! not the sizes the archive claims), and a bounded number of entries. Symlinks are created
//! last, so no file is ever written through a link the archive made.

use std::io::{Read, Write};
use std::path::{Component, Path, PathBuf};

use model::limits;

/// Why an archive was refused. Each message names the entry at fault.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("not a valid zip archive: {0}")]
    Malformed(String),
    #[error("entry `{0}` has an absolute path; archive paths must be relative")]
    AbsolutePath(String),
    #[error("entry `{0}` contains `..`; archive paths must stay inside the archive")]
    ParentDir(String),
    #[error("symlink `{entry}` points to `{target}`, outside the archive")]
    SymlinkEscapes { entry: String, target: String },
    #[error("archive unpacks to more than {limit_bytes} bytes")]
    TooLarge { limit_bytes: u64 },
    #[error("archive has more than {limit} entries")]
    TooManyEntries { limit: usize },
    #[error("entry `{0}` appears twice or collides with a directory")]
    Collision(String),
    #[error("unpacking: {0}")]
    Io(#[from] std::io::Error),
}

/// What an accepted archive holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArchiveInfo {
    pub files: usize,
    pub unpacked_bytes: u64,
}

/// Zips the tree at `dir`, deterministically: entries sorted, timestamps fixed, modes
/// reduced to 0644/0755, so the same tree gives the same bytes (and the same sha256).
/// `skip(relative_path, is_dir)` leaves entries out.
pub fn zip_dir(dir: &Path, skip: &dyn Fn(&Path, bool) -> bool) -> std::io::Result<Vec<u8>> {
    let mut writer = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    add_dir(&mut writer, dir, Path::new(""), skip)?;
    Ok(writer.finish().map_err(std::io::Error::other)?.into_inner())
}

fn add_dir(
    w: &mut zip::ZipWriter<std::io::Cursor<Vec<u8>>>,
    dir: &Path,
    prefix: &Path,
    skip: &dyn Fn(&Path, bool) -> bool,
) -> std::io::Result<()> {
    use zip::write::SimpleFileOptions;
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .map_err(|e| std::io::Error::new(e.kind(), format!("reading {}: {e}", dir.display())))?
        .collect::<Result<_, _>>()?;
    entries.sort_by_key(|e| e.file_name());
    let base = SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated)
        .last_modified_time(zip::DateTime::default());
    for entry in entries {
        let name = entry.file_name();
        let Some(name) = name.to_str() else {
            return Err(std::io::Error::other(format!(
                "{}: file names must be UTF-8",
                entry.path().display()
            )));
        };
        let rel = prefix.join(name);
        let rel_text = rel.to_string_lossy();
        let meta = std::fs::symlink_metadata(entry.path())?;
        if skip(&rel, meta.is_dir()) {
            continue;
        }
        if meta.file_type().is_symlink() {
            let target = std::fs::read_link(entry.path())?;
            w.add_symlink(rel_text, target.to_string_lossy(), base)
                .map_err(std::io::Error::other)?;
        } else if meta.is_dir() {
            w.add_directory(format!("{rel_text}/"), base.unix_permissions(0o755))
                .map_err(std::io::Error::other)?;
            add_dir(w, &entry.path(), &rel, skip)?;
        } else if meta.is_file() {
            use std::os::unix::fs::PermissionsExt;
            let mode = if meta.permissions().mode() & 0o111 != 0 {
                0o755
            } else {
                0o644
            };
            w.start_file(rel_text, base.unix_permissions(mode))
                .map_err(std::io::Error::other)?;
            let data = std::fs::read(entry.path()).map_err(|e| {
                std::io::Error::new(e.kind(), format!("reading {}: {e}", entry.path().display()))
            })?;
            w.write_all(&data)?;
        }
    }
    Ok(())
}

/// Unpacks `zip` into `dest` (which must not exist yet) after checking every entry.
/// On error `dest` may hold a partial tree; the caller removes it.
pub fn extract(zip: &[u8], dest: &Path, unpacked_max: u64) -> Result<ArchiveInfo, ArchiveError> {
    let mut archive = zip::ZipArchive::new(std::io::Cursor::new(zip))
        .map_err(|e| ArchiveError::Malformed(e.to_string()))?;
    if archive.len() > limits::ARCHIVE_ENTRIES_MAX {
        return Err(ArchiveError::TooManyEntries {
            limit: limits::ARCHIVE_ENTRIES_MAX,
        });
    }
    // The zip crate keeps one entry per name, so two entries of one name would pass
    // unseen (and which one wins is up to the reader): count the central directory's own.
    if let Some(declared) = declared_entries(zip)
        && declared != archive.len()
    {
        return Err(ArchiveError::Malformed(format!(
            "the archive lists {declared} entries but only {} distinct names: an entry name appears twice",
            archive.len()
        )));
    }
    std::fs::create_dir(dest)?;
    let mut written: u64 = 0;
    let mut files = 0;
    let mut symlinks: Vec<(PathBuf, String, String)> = Vec::new();
    for i in 0..archive.len() {
        let mut entry = archive
            .by_index(i)
            .map_err(|e| ArchiveError::Malformed(e.to_string()))?;
        let name = entry
            .name()
            .map_err(|e| ArchiveError::Malformed(format!("entry {i}: {e}")))?
            .to_string();
        if name.contains('\0') {
            return Err(ArchiveError::Malformed(format!(
                "entry {i}: its name contains a NUL byte"
            )));
        }
        let rel = checked_relative(&name)?;
        if rel.as_os_str().is_empty() {
            continue;
        }
        let path = dest.join(&rel);
        if entry.is_dir() {
            std::fs::create_dir_all(&path)?;
            continue;
        }
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        if entry.is_symlink() {
            let mut target = String::new();
            (&mut entry)
                .take(4096)
                .read_to_string(&mut target)
                .map_err(|e| ArchiveError::Malformed(format!("symlink `{name}`: {e}")))?;
            symlinks.push((rel, name, target));
            continue;
        }
        let executable = entry.unix_mode().is_some_and(|m| m & 0o111 != 0);
        let mut out = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::AlreadyExists => ArchiveError::Collision(name.clone()),
                _ => e.into(),
            })?;
        // Read at most one byte past the budget so an over-long entry is detected without
        // trusting the size the archive declares.
        let budget = unpacked_max - written;
        let copied = copy_entry(&mut (&mut entry).take(budget + 1), &mut out, &name)?;
        if copied > budget {
            return Err(ArchiveError::TooLarge {
                limit_bytes: unpacked_max,
            });
        }
        written += copied;
        out.flush()?;
        if executable {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
        }
        files += 1;
    }
    for (rel, name, target) in symlinks {
        check_symlink(&rel, &name, &target)?;
        std::os::unix::fs::symlink(&target, dest.join(&rel)).map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => ArchiveError::Collision(name.clone()),
            _ => e.into(),
        })?;
    }
    // A link that is lexically inside may still leave the tree through another link
    // (`a -> b/..` with `b -> ..`); resolving every link on the real tree settles it.
    verify_links_inside(dest)?;
    Ok(ArchiveInfo {
        files,
        unpacked_bytes: written,
    })
}

/// Copies an entry's bytes into its file. A failed read is the archive's fault (its data
/// does not decompress); a failed write is the server's (a full disk), so the two are told
/// apart here, where it is still known which side failed.
fn copy_entry(from: &mut impl Read, to: &mut impl Write, name: &str) -> Result<u64, ArchiveError> {
    let mut buf = vec![0; 64 * 1024];
    let mut copied = 0;
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => return Ok(copied),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(ArchiveError::Malformed(format!("entry `{name}`: {e}"))),
        };
        to.write_all(&buf[..n])?;
        copied += n as u64;
    }
}

/// The number of entries the end-of-central-directory record declares, when the archive
/// has one that fits the 16-bit count (the entry limit is far below 65,535).
fn declared_entries(zip: &[u8]) -> Option<usize> {
    const EOCD: [u8; 4] = [0x50, 0x4b, 0x05, 0x06];
    const EOCD_LEN: usize = 22;
    // The record is at the end, followed by a comment of at most 65,535 bytes.
    let earliest = zip.len().saturating_sub(EOCD_LEN + 65_535);
    let at = (earliest..=zip.len().checked_sub(EOCD_LEN)?)
        .rev()
        .find(|&i| zip[i..i + 4] == EOCD)?;
    let total = u16::from_le_bytes([zip[at + 10], zip[at + 11]]);
    (total != u16::MAX).then_some(total as usize)
}

/// The entry name as a relative path with only normal components.
fn checked_relative(name: &str) -> Result<PathBuf, ArchiveError> {
    if name.starts_with('/') || name.starts_with('\\') || name.contains(":\\") {
        return Err(ArchiveError::AbsolutePath(name.into()));
    }
    let mut rel = PathBuf::new();
    for component in Path::new(name).components() {
        match component {
            Component::Normal(part) => rel.push(part),
            Component::CurDir => {}
            Component::ParentDir => return Err(ArchiveError::ParentDir(name.into())),
            Component::RootDir | Component::Prefix(_) => {
                return Err(ArchiveError::AbsolutePath(name.into()));
            }
        }
    }
    if name.split(['/', '\\']).any(|p| p == "..") {
        return Err(ArchiveError::ParentDir(name.into()));
    }
    Ok(rel)
}

/// A symlink's target, resolved lexically from the link's directory, must stay in the tree.
fn check_symlink(rel: &Path, name: &str, target: &str) -> Result<(), ArchiveError> {
    let escapes = || ArchiveError::SymlinkEscapes {
        entry: name.into(),
        target: target.into(),
    };
    if target.is_empty() || target.starts_with('/') || target.contains('\0') {
        return Err(escapes());
    }
    let mut depth: i64 = rel.components().count() as i64 - 1;
    for component in Path::new(target).components() {
        match component {
            Component::Normal(_) => depth += 1,
            Component::CurDir => {}
            Component::ParentDir => depth -= 1,
            Component::RootDir | Component::Prefix(_) => return Err(escapes()),
        }
        if depth < 0 {
            return Err(escapes());
        }
    }
    Ok(())
}

fn verify_links_inside(root: &Path) -> Result<(), ArchiveError> {
    let canonical_root = root.canonicalize()?;
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let entry = entry?;
            let kind = entry.file_type()?;
            let path = entry.path();
            if kind.is_symlink() {
                // A dangling link resolves to nothing and so reaches nothing; only links that
                // resolve are checked.
                if let Ok(resolved) = path.canonicalize()
                    && !resolved.starts_with(&canonical_root)
                {
                    let rel = path.strip_prefix(root).unwrap_or(&path);
                    return Err(ArchiveError::SymlinkEscapes {
                        entry: rel.display().to_string(),
                        target: std::fs::read_link(&path)?.display().to_string(),
                    });
                }
            } else if kind.is_dir() {
                stack.push(path);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use zip::write::SimpleFileOptions;

    enum E<'a> {
        File(&'a str, &'a [u8]),
        Dir(&'a str),
        Link(&'a str, &'a str),
    }

    fn zip_of(entries: &[E]) -> Vec<u8> {
        let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        let opts = SimpleFileOptions::default();
        for e in entries {
            match e {
                E::File(name, data) => {
                    w.start_file(*name, opts).unwrap();
                    w.write_all(data).unwrap();
                }
                E::Dir(name) => w.add_directory(*name, opts).unwrap(),
                E::Link(name, target) => w.add_symlink(*name, *target, opts).unwrap(),
            }
        }
        w.finish().unwrap().into_inner()
    }

    fn run(entries: &[E], max: u64) -> (tempfile::TempDir, Result<ArchiveInfo, ArchiveError>) {
        let tmp = tempfile::tempdir().unwrap();
        let r = extract(&zip_of(entries), &tmp.path().join("out"), max);
        (tmp, r)
    }

    /// A zip of `a.py` and `b.py` whose second name is rewritten to `name` (4 bytes) in
    /// every header: what a writer that allows it would make.
    fn renamed_second(name: &[u8; 4]) -> Vec<u8> {
        let mut zip = zip_of(&[E::File("a.py", b"1"), E::File("b.py", b"2")]);
        let mut at = 0;
        while let Some(i) = zip[at..].windows(4).position(|w| w == b"b.py") {
            zip[at + i..at + i + 4].copy_from_slice(name);
            at += i + 4;
        }
        zip
    }

    #[test]
    fn two_entries_of_one_name_or_a_nul_in_a_name_are_refused() {
        for (name, why) in [(b"a.py", "appears twice"), (b"b\0py", "NUL")] {
            let tmp = tempfile::tempdir().unwrap();
            let err =
                extract(&renamed_second(name), &tmp.path().join("out"), 1000).expect_err("refused");
            assert!(matches!(err, ArchiveError::Malformed(_)), "{err}");
            assert!(err.to_string().contains(why), "{err}");
        }
        // Unchanged, the same archive is fine.
        let tmp = tempfile::tempdir().unwrap();
        extract(&renamed_second(b"b.py"), &tmp.path().join("out"), 1000).unwrap();
    }

    #[test]
    fn extracts_files_dirs_and_inside_links() {
        let (tmp, r) = run(
            &[
                E::Dir("lib/"),
                E::File("main.py", b"print(1)"),
                E::File("lib/util.py", b"x = 1"),
                E::Link("node_modules/.bin/tool", "../../lib/util.py"),
            ],
            1000,
        );
        assert_eq!(
            r.unwrap(),
            ArchiveInfo {
                files: 2,
                unpacked_bytes: 13
            }
        );
        let out = tmp.path().join("out");
        assert_eq!(std::fs::read(out.join("lib/util.py")).unwrap(), b"x = 1");
        assert_eq!(
            std::fs::read(out.join("node_modules/.bin/tool")).unwrap(),
            b"x = 1"
        );
    }

    #[test]
    fn refuses_unsafe_archives() {
        let cases: Vec<(Vec<E>, &str)> = vec![
            (vec![E::File("../evil.py", b"x")], "contains `..`"),
            (vec![E::File("a/../../evil.py", b"x")], "contains `..`"),
            (vec![E::File("/etc/evil", b"x")], "absolute path"),
            (vec![E::Link("l", "/etc/passwd")], "outside the archive"),
            (vec![E::Link("a/l", "../../x")], "outside the archive"),
            (
                vec![E::Link("b", ".."), E::Link("a", "b/..")],
                "outside the archive",
            ),
            (vec![E::File("big", &[0u8; 2000])], "more than 1000 bytes"),
            (
                vec![E::File("a", &[0u8; 600]), E::File("b", &[0u8; 600])],
                "more than 1000 bytes",
            ),
            (vec![E::File("a", b"1"), E::File("a/b", b"2")], "unpacking"),
        ];
        for (entries, expect) in cases {
            let (_tmp, r) = run(&entries, 1000);
            let msg = r.unwrap_err().to_string();
            assert!(msg.contains(expect), "expected `{expect}` in `{msg}`");
        }
    }

    #[test]
    fn refuses_garbage() {
        let tmp = tempfile::tempdir().unwrap();
        let err = extract(b"not a zip", &tmp.path().join("o"), 100).unwrap_err();
        assert!(matches!(err, ArchiveError::Malformed(_)), "{err}");
    }
}
