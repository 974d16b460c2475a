//! Zips a function's code directory, deterministically: entries sorted, timestamps fixed,
//! so unchanged code gives the same archive, the same sha256, and no upload at all.

use std::path::Path;

use anyhow::Context;

/// Directory entries never packaged: version control, caches, the local data dir.
const SKIPPED: &[&str] = &[".git", ".hg", ".svn", ".nimbus", "__pycache__", ".DS_Store"];

pub fn zip_dir(dir: &Path) -> anyhow::Result<Vec<u8>> {
    let skip = |rel: &Path, _is_dir: bool| {
        let name = rel.file_name().and_then(|n| n.to_str()).unwrap_or("");
        SKIPPED.contains(&name) || name.ends_with(".pyc")
    };
    store::archive::zip_dir(dir, &skip).with_context(|| format!("packaging {}", dir.display()))
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
