//! What a deploy ships, zipped deterministically (entries sorted, timestamps fixed, so
//! unchanged code gives the same archive, the same sha256, and no upload at all).
//!
//! Left out: `.nimbusignore` and `.gitignore` patterns (gitignore syntax, at any level, as
//! git reads them, in a git checkout or not), the manifest's `exclude:` patterns, version
//! control and caches, and with a warning what the server makes itself: a virtualenv, and
//! `node_modules` when `package.json` declares the dependencies it holds.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use anyhow::Context;

/// Never packaged: version control, caches, the local data dir.
const SKIPPED: &[&str] = &[".git", ".hg", ".svn", ".nimbus", "__pycache__", ".DS_Store"];

/// The archive of a code directory and what the packing has to say about it.
pub struct Packed {
    pub zip: Vec<u8>,
    /// One line each: what was left out that a user might have meant to ship.
    pub warnings: Vec<String>,
}

/// Zips `dir` as a deploy ships it. `exclude` holds gitignore-syntax patterns relative to
/// `dir`; `server_builds` says the server installs the declared dependencies (so a local
/// `node_modules` is not shipped).
pub fn pack(dir: &Path, exclude: &[String], server_builds: bool) -> anyhow::Result<Packed> {
    let (shipped, warnings) = shipped(dir, exclude, server_builds)?;
    let skip = |rel: &Path, _is_dir: bool| !shipped.contains(rel);
    let zip = store::archive::zip_dir(dir, &skip)
        .with_context(|| format!("packaging {}", dir.display()))?;
    Ok(Packed { zip, warnings })
}

/// The paths under `dir` (relative, directories too) that a deploy ships, and the
/// warnings about what it leaves out.
fn shipped(
    dir: &Path,
    exclude: &[String],
    server_builds: bool,
) -> anyhow::Result<(BTreeSet<PathBuf>, Vec<String>)> {
    let mut warnings = Vec::new();
    let mut excludes = ignore::gitignore::GitignoreBuilder::new(dir);
    for pattern in exclude {
        excludes
            .add_line(None, pattern)
            .with_context(|| format!("exclude: `{pattern}` is not a valid pattern"))?;
    }
    let excludes = excludes.build().context("exclude patterns")?;
    let declares_npm = server_builds && package_declares_dependencies(dir);
    // Pruned while walking (a virtualenv or node_modules can hold tens of thousands of
    // files); the filter runs on the walker's threads, hence the shared list.
    let pruned = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let (root, notes) = (dir.to_path_buf(), pruned.clone());
    let mut walk = ignore::WalkBuilder::new(dir);
    walk.hidden(false)
        .parents(false)
        .git_global(false)
        .git_exclude(false)
        .require_git(false)
        .follow_links(false)
        .add_custom_ignore_filename(".nimbusignore")
        .filter_entry(move |entry| {
            let Ok(rel) = entry.path().strip_prefix(&root) else {
                return true;
            };
            let is_dir = entry.file_type().is_some_and(|t| t.is_dir());
            let name = rel.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if SKIPPED.contains(&name) || name.ends_with(".pyc") {
                return false;
            }
            if !rel.as_os_str().is_empty()
                && excludes
                    .matched_path_or_any_parents(rel, is_dir)
                    .is_ignore()
            {
                return false;
            }
            if is_dir && entry.path().join("pyvenv.cfg").is_file() {
                notes.lock().unwrap().push(format!(
                    "left out {} (a virtualenv: the server installs requirements.txt itself)",
                    rel.display()
                ));
                return false;
            }
            if is_dir
                && name == "node_modules"
                && declares_npm
                && rel.parent() == Some(Path::new(""))
            {
                notes.lock().unwrap().push(format!(
                    "left out {} (the server installs what package.json declares)",
                    rel.display()
                ));
                return false;
            }
            true
        });
    let mut shipped: BTreeSet<PathBuf> = BTreeSet::new();
    for entry in walk.build() {
        let entry = entry.context("listing the code")?;
        if let Ok(rel) = entry.path().strip_prefix(dir)
            && !rel.as_os_str().is_empty()
        {
            shipped.insert(rel.to_path_buf());
        }
    }
    warnings.extend(pruned.lock().unwrap().drain(..));
    warnings.sort();
    Ok((shipped, warnings))
}

/// The files (relative paths) a deploy of `dir` ships, for `nimbus dev` to watch.
pub fn files(dir: &Path, exclude: &[String]) -> anyhow::Result<Vec<PathBuf>> {
    let (shipped, _) = shipped(dir, exclude, true)?;
    Ok(shipped
        .into_iter()
        .filter(|p| !dir.join(p).is_dir())
        .collect())
}

fn package_declares_dependencies(dir: &Path) -> bool {
    std::fs::read(dir.join("package.json"))
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .is_some_and(|v| v["dependencies"].as_object().is_some_and(|d| !d.is_empty()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(zip: &[u8]) -> Vec<String> {
        let archive = zip::ZipArchive::new(std::io::Cursor::new(zip.to_vec())).unwrap();
        archive
            .file_names()
            .map(|n| n.unwrap().to_string())
            .filter(|n| !n.ends_with('/'))
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect()
    }

    fn tree(files: &[(&str, &str)]) -> tempfile::TempDir {
        let tmp = tempfile::tempdir().unwrap();
        for (name, text) in files {
            let path = tmp.path().join(name);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        }
        tmp
    }

    #[test]
    fn same_tree_same_bytes_and_caches_skipped() {
        let tmp = tree(&[("main.py", "x = 1"), ("__pycache__/main.pyc", "junk")]);
        let a = pack(tmp.path(), &[], true).unwrap().zip;
        std::thread::sleep(std::time::Duration::from_millis(10));
        std::fs::write(tmp.path().join("main.py"), "x = 1").unwrap();
        assert_eq!(a, pack(tmp.path(), &[], true).unwrap().zip);
        assert_eq!(names(&a), ["main.py"]);
    }

    #[test]
    fn ignore_files_and_excludes_leave_things_out() {
        let tmp = tree(&[
            ("main.py", ""),
            (".nimbusignore", "tests/\n*.log\n!keep.log\n"),
            (".gitignore", "secret.env\n"),
            ("tests/test_main.py", ""),
            ("debug.log", ""),
            ("keep.log", ""),
            ("secret.env", ""),
            ("data/big.bin", ""),
            ("data/small.txt", ""),
            ("lib/.gitignore", "generated.py\n"),
            ("lib/generated.py", ""),
            ("lib/util.py", ""),
        ]);
        let packed = pack(tmp.path(), &["data/*.bin".into()], true).unwrap();
        assert_eq!(
            names(&packed.zip),
            [
                ".gitignore",
                ".nimbusignore",
                "data/small.txt",
                "keep.log",
                "lib/.gitignore",
                "lib/util.py",
                "main.py"
            ]
        );
        assert!(packed.warnings.is_empty());
    }

    #[test]
    fn virtualenvs_and_built_node_modules_are_left_out_with_a_warning() {
        let tmp = tree(&[
            ("main.py", ""),
            (".venv/pyvenv.cfg", "home = /usr/bin"),
            (".venv/lib/site.py", ""),
            ("package.json", r#"{"dependencies": {"left-pad": "1.3.0"}}"#),
            ("node_modules/left-pad/index.js", ""),
        ]);
        std::os::unix::fs::symlink("/usr/bin/python3", tmp.path().join(".venv/python")).unwrap();
        let packed = pack(tmp.path(), &[], true).unwrap();
        assert_eq!(names(&packed.zip), ["main.py", "package.json"]);
        assert_eq!(packed.warnings.len(), 2, "{:?}", packed.warnings);
        assert!(
            packed.warnings[0].contains("left out .venv"),
            "{:?}",
            packed.warnings
        );
        assert!(
            packed.warnings[1].contains("left out node_modules"),
            "{:?}",
            packed.warnings
        );
        // Without a server build (`build: false`), node_modules is the dependencies.
        let packed = pack(tmp.path(), &[], false).unwrap();
        assert!(names(&packed.zip).contains(&"node_modules/left-pad/index.js".into()));
    }
}
