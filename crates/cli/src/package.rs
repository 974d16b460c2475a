//! Zips a function's code directory, deterministically: entries sorted, timestamps fixed,
//! so unchanged code gives the same archive, the same sha256, and no upload at all.

use std::io::Write;
use std::path::Path;

use anyhow::Context;
use zip::write::SimpleFileOptions;

/// Directory entries never packaged: version control, caches, the local data dir.
const SKIPPED: &[&str] = &[".git", ".hg", ".svn", ".nimbus", "__pycache__", ".DS_Store"];

pub fn zip_dir(dir: &Path) -> anyhow::Result<Vec<u8>> {
    let mut writer = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    add_dir(&mut writer, dir, "")?;
    Ok(writer.finish()?.into_inner())
}

fn add_dir(
    w: &mut zip::ZipWriter<std::io::Cursor<Vec<u8>>>,
    dir: &Path,
    prefix: &str,
) -> anyhow::Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .collect::<Result<_, _>>()?;
    entries.sort_by_key(|e| e.file_name());
    let base = SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated)
        .last_modified_time(zip::DateTime::default());
    for entry in entries {
        let name = entry.file_name();
        let Some(name) = name.to_str() else {
            anyhow::bail!("{}: file names must be UTF-8", entry.path().display());
        };
        if SKIPPED.contains(&name) || name.ends_with(".pyc") {
            continue;
        }
        let rel = format!("{prefix}{name}");
        let meta = std::fs::symlink_metadata(entry.path())?;
        if meta.file_type().is_symlink() {
            let target = std::fs::read_link(entry.path())?;
            w.add_symlink(&rel, target.to_string_lossy(), base)?;
        } else if meta.is_dir() {
            w.add_directory(format!("{rel}/"), base.unix_permissions(0o755))?;
            add_dir(w, &entry.path(), &format!("{rel}/"))?;
        } else if meta.is_file() {
            use std::os::unix::fs::PermissionsExt;
            let mode = if meta.permissions().mode() & 0o111 != 0 {
                0o755
            } else {
                0o644
            };
            w.start_file(&rel, base.unix_permissions(mode))?;
            let data = std::fs::read(entry.path())
                .with_context(|| format!("reading {}", entry.path().display()))?;
            w.write_all(&data)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_tree_same_bytes_and_caches_skipped() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join("main.py"), "x = 1").unwrap();
        std::fs::create_dir(tmp.path().join("__pycache__")).unwrap();
        std::fs::write(tmp.path().join("__pycache__/main.pyc"), "junk").unwrap();
        let a = zip_dir(tmp.path()).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(10));
        std::fs::write(tmp.path().join("main.py"), "x = 1").unwrap();
        assert_eq!(a, zip_dir(tmp.path()).unwrap());
        let archive = zip::ZipArchive::new(std::io::Cursor::new(a)).unwrap();
        let names: Vec<String> = archive
            .file_names()
            .map(|n| n.unwrap().to_string())
            .collect();
        assert_eq!(names, ["main.py"]);
    }
}
