//! Builds at deploy: a function whose code declares dependencies (`requirements.txt`,
//! `pyproject.toml`, `package.json`) gets them installed by the server, once per
//! dependency set.
//!
//! A build is keyed by what it installs: the runtime, the interpreter (path and version:
//! native wheels and modules are built for one) and the dependency files' bytes. Its result
//! is an archive stored like code; `FunctionSpec::deps_sha256` names it, and instances run
//! the tree of the code laid over it (`CodeCache::tree`). Claims are in the store, so on
//! several nodes one builds and the others wait for its archive; an unchanged dependency set
//! is never built twice, and functions with the same one share it.
//!
//! Only `sandbox` runs the tool (pip, npm), in a jail; this module decides what to build and
//! keeps the result.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use model::{ErrorCode, FunctionSpec, Runtime, limits};
use sandbox::{BuildJob, BuildStatus, Builder};
use sha2::{Digest, Sha256};
use store::{BlobStore, BuildClaim, CodeCache, MetaStore};
use tokio::sync::mpsc;

use crate::Error;

/// How builds run on this node.
#[derive(Clone, Debug)]
pub struct BuildConfig {
    /// Where build scratch directories are made (on the data dir's filesystem).
    pub scratch_dir: PathBuf,
    /// This node, as it claims builds in the store.
    pub node_id: String,
    pub timeout_ms: u64,
    pub memory_mb: u32,
}

/// What a deploy got for its dependencies.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DepsOutcome {
    /// The code declares none (or the build is off, or the client sent its own).
    Nothing,
    /// Built now.
    Built {
        deps_sha256: String,
        duration_ms: u64,
    },
    /// Built before (here or on another node).
    Cached { deps_sha256: String },
}

impl DepsOutcome {
    pub fn deps_sha256(&self) -> Option<&str> {
        match self {
            DepsOutcome::Nothing => None,
            DepsOutcome::Built { deps_sha256, .. } | DepsOutcome::Cached { deps_sha256 } => {
                Some(deps_sha256)
            }
        }
    }
}

/// What a code tree asks to install.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Declared {
    runtime: Runtime,
    /// The files the build job gets, as (name, bytes), sorted by name.
    files: Vec<(String, Vec<u8>)>,
    /// `npm ci` from a lock file rather than `npm install`.
    locked: bool,
}

/// Finds what the code at `dir` declares for `runtime`; `None` when nothing is to be
/// installed. A `pyproject.toml` counts by its `[project] dependencies`, written out as a
/// requirements file (the project itself is the code, not a package to install).
pub(crate) fn declared(runtime: Runtime, dir: &Path) -> Result<Option<Declared>, Error> {
    let read = |name: &str| -> Result<Option<Vec<u8>>, Error> {
        let path = dir.join(name);
        match std::fs::metadata(&path) {
            Ok(m) if m.is_file() && m.len() > limits::DEPS_FILE_BYTES_MAX => {
                Err(Error::invalid(format!(
                    "{name} is {} bytes; the limit is {}",
                    m.len(),
                    limits::DEPS_FILE_BYTES_MAX
                )))
            }
            Ok(m) if m.is_file() => std::fs::read(&path)
                .map(Some)
                .map_err(|e| Error::new(ErrorCode::StorageError, format!("reading {name}: {e}"))),
            _ => Ok(None),
        }
    };
    match runtime {
        Runtime::Python3 => {
            let requirements = match read("requirements.txt")? {
                Some(r) => r,
                None => match read("pyproject.toml")? {
                    Some(p) => pyproject_requirements(&p)?.into_bytes(),
                    None => return Ok(None),
                },
            };
            let any = String::from_utf8_lossy(&requirements).lines().any(|l| {
                let l = l.trim();
                !l.is_empty() && !l.starts_with('#')
            });
            Ok(any.then(|| Declared {
                runtime,
                files: vec![("requirements.txt".into(), requirements)],
                locked: false,
            }))
        }
        Runtime::Nodejs => {
            // Code that ships its own node_modules is taken as it is.
            if dir.join("node_modules").is_dir() {
                return Ok(None);
            }
            let Some(package) = read("package.json")? else {
                return Ok(None);
            };
            let parsed: serde_json::Value = serde_json::from_slice(&package)
                .map_err(|e| Error::invalid(format!("package.json is not valid JSON: {e}")))?;
            if parsed["dependencies"]
                .as_object()
                .is_none_or(|deps| deps.is_empty())
            {
                return Ok(None);
            }
            let mut files = vec![("package.json".to_string(), package)];
            let mut locked = false;
            for lock in ["npm-shrinkwrap.json", "package-lock.json"] {
                if let Some(bytes) = read(lock)? {
                    files.push((lock.into(), bytes));
                    locked = true;
                    break;
                }
            }
            files.sort();
            Ok(Some(Declared {
                runtime,
                files,
                locked,
            }))
        }
        Runtime::Custom => Ok(None),
        // A `provided` function brings its own runtime, often Python's or Node's (the
        // AWS runtime interface clients): what it declares is built for that language.
        Runtime::Provided => match declared(Runtime::Python3, dir)? {
            Some(python) => Ok(Some(python)),
            None => declared(Runtime::Nodejs, dir),
        },
    }
}

/// `[project] dependencies` of a `pyproject.toml`, one requirement per line.
fn pyproject_requirements(bytes: &[u8]) -> Result<String, Error> {
    let text =
        std::str::from_utf8(bytes).map_err(|_| Error::invalid("pyproject.toml is not UTF-8"))?;
    let doc: toml::Table = text
        .parse()
        .map_err(|e| Error::invalid(format!("pyproject.toml: {e}")))?;
    let deps = doc
        .get("project")
        .and_then(|p| p.get("dependencies"))
        .and_then(|d| d.as_array())
        .map(|a| a.iter().filter_map(|v| v.as_str()).collect::<Vec<_>>())
        .unwrap_or_default();
    Ok(deps.iter().map(|d| format!("{d}\n")).collect())
}

/// The cache key of a build.
fn key_of(declared: &Declared, interpreter: &str) -> String {
    let mut h = Sha256::new();
    for part in [
        "nimbus-build-1".as_bytes(),
        declared.runtime.to_string().as_bytes(),
        interpreter.as_bytes(),
    ] {
        h.update(part);
        h.update([0]);
    }
    for (name, bytes) in &declared.files {
        h.update(name.as_bytes());
        h.update([0]);
        h.update((bytes.len() as u64).to_le_bytes());
        h.update(bytes);
    }
    hex::encode(h.finalize())
}

/// Runs and remembers builds.
pub(crate) struct Builds {
    pub config: BuildConfig,
    builder: Builder,
    /// One build per key at a time on this node; a second deploy of the same dependencies
    /// waits for the first and takes its archive.
    running: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Builds running at once on this node (`limits::BUILDS_AT_ONCE`): each may take its
    /// memory bound and its disk bound.
    slots: tokio::sync::Semaphore,
}

/// How often a node polls for a build another node runs.
const FOREIGN_BUILD_POLL: Duration = Duration::from_millis(500);

impl Builds {
    pub fn new(config: BuildConfig, builder: Builder) -> Builds {
        Builds {
            config,
            builder,
            running: Mutex::default(),
            slots: tokio::sync::Semaphore::new(limits::BUILDS_AT_ONCE),
        }
    }

    /// The archive of the dependencies `spec`'s code declares, built now or before.
    /// `progress` gets the tool's output lines as they come.
    pub async fn prepare(
        &self,
        meta: &dyn MetaStore,
        blobs: &dyn BlobStore,
        code: &CodeCache,
        spec: &FunctionSpec,
        progress: Option<mpsc::Sender<String>>,
    ) -> Result<DepsOutcome, Error> {
        if !spec.build || !spec.deps_sha256.is_empty() {
            return Ok(DepsOutcome::Nothing);
        }
        let dir = code.ensure(&spec.code_sha256).await?;
        let runtime = spec.runtime;
        let Some(declared) = tokio::task::spawn_blocking(move || declared(runtime, &dir))
            .await
            .expect("reading dependency files panicked")?
        else {
            return Ok(DepsOutcome::Nothing);
        };
        let interpreter = self.builder.interpreter_id(declared.runtime).await?;
        let key = key_of(&declared, &interpreter);
        let lock = self
            .running
            .lock()
            .unwrap()
            .entry(key.clone())
            .or_default()
            .clone();
        let _one = lock.lock().await;
        let node = &self.config.node_id;
        // A lease past the build's own bound: a node that is alive never loses its claim.
        let lease_ms = self.config.timeout_ms as i64 + 60_000;
        let waited_since = crate::now_ms();
        loop {
            let now = crate::now_ms();
            match meta.claim_build(&key, node, now, now + lease_ms).await? {
                BuildClaim::Done { deps_sha256 } if blobs.exists(&deps_sha256).await? => {
                    return Ok(DepsOutcome::Cached { deps_sha256 });
                }
                // Built once, but its archive was collected since: build it again.
                BuildClaim::Done { .. } => meta.forget_build(&key).await?,
                BuildClaim::Claimed => break,
                BuildClaim::Running { node } => {
                    if now - waited_since > lease_ms {
                        return Err(Error::new(
                            ErrorCode::BuildFailed,
                            format!(
                                "node {node} has been building these dependencies for too long"
                            ),
                        ));
                    }
                    if let Some(p) = &progress {
                        let _ = p.try_send(format!("(node {node} is building these dependencies)"));
                    }
                    tokio::time::sleep(FOREIGN_BUILD_POLL).await;
                }
            }
        }
        let built = self.build(code, &declared, progress).await;
        let finished = crate::now_ms();
        meta.finish_build(
            &key,
            node,
            built.as_ref().ok().map(|(s, _)| s.as_str()),
            finished,
        )
        .await?;
        let (deps_sha256, duration_ms) = built?;
        Ok(DepsOutcome::Built {
            deps_sha256,
            duration_ms,
        })
    }

    /// Runs one build in a scratch directory and stores its result; (archive, duration).
    async fn build(
        &self,
        code: &CodeCache,
        declared: &Declared,
        progress: Option<mpsc::Sender<String>>,
    ) -> Result<(String, u64), Error> {
        let _slot = self
            .slots
            .acquire()
            .await
            .map_err(|_| Error::new(ErrorCode::Internal, "the build slots are closed"))?;
        let scratch = Scratch::new(&self.config.scratch_dir)?;
        for (name, bytes) in &declared.files {
            std::fs::write(scratch.0.join(name), bytes).map_err(|e| {
                Error::new(ErrorCode::StorageError, format!("preparing the build: {e}"))
            })?;
        }
        let job = BuildJob {
            runtime: declared.runtime,
            dir: scratch.0.clone(),
            locked: declared.locked,
            timeout_ms: self.config.timeout_ms,
            memory_mb: self.config.memory_mb,
            output_max_bytes: limits::BUILD_OUTPUT_BYTES_MAX,
            disk_max_mb: limits::BUILD_DISK_MB_MAX,
        };
        let report = self.builder.run(&job, progress).await?;
        if let BuildStatus::Failed { reason } = report.status {
            return Err(Error::new(
                ErrorCode::BuildFailed,
                format!(
                    "installing the dependencies failed: {reason}\n{}",
                    tail(&report.output, 8 * 1024)
                ),
            ));
        }
        let result = scratch.0.join(job.result_dir());
        // Measured before it is packed (in this process's memory): what would not unpack
        // as a function's tree is refused here.
        let (max_bytes, max_files) = (code.unpacked_max(), limits::ARCHIVE_ENTRIES_MAX);
        let measured = result.clone();
        let (bytes, files) =
            tokio::task::spawn_blocking(move || sandbox::tree_size(&measured, u64::MAX))
                .await
                .expect("measuring the build panicked");
        if bytes > max_bytes || files > max_files {
            return Err(Error::new(
                ErrorCode::BuildFailed,
                format!(
                    "the installed dependencies are {} MB in {files} files; a function's code and dependencies may unpack to at most {} MB in {max_files} files",
                    bytes / (1024 * 1024),
                    max_bytes / (1024 * 1024)
                ),
            ));
        }
        let zip = tokio::task::spawn_blocking(move || {
            // Python's result is a `--target` tree, laid at the code's root; npm's is
            // `node_modules` itself.
            match declared_layout(&result) {
                Layout::Contents => store::archive::zip_dir(&result, &|_, _| false),
                Layout::Itself => {
                    let parent = result.parent().expect("a scratch child").to_path_buf();
                    store::archive::zip_dir(&parent, &|rel, _| !rel.starts_with("node_modules"))
                }
            }
        })
        .await
        .expect("packing the build panicked")
        .map_err(|e| {
            if matches!(
                e.kind(),
                std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
            ) {
                Error::new(ErrorCode::StorageFull, format!("packing the build: {e}"))
            } else {
                // A name that is not UTF-8, a file it cannot read: the build's making.
                Error::new(
                    ErrorCode::BuildFailed,
                    format!("packing the installed dependencies: {e}"),
                )
            }
        })?;
        let (deps_sha256, _) = code.accept(zip).await.map_err(|e| match e {
            store::StoreError::Archive(a) => Error::new(
                ErrorCode::BuildFailed,
                format!("the installed dependencies are not deployable: {a}"),
            ),
            other => other.into(),
        })?;
        Ok((deps_sha256, report.duration_ms))
    }
}

enum Layout {
    /// The directory's contents go at the tree's root.
    Contents,
    /// The directory goes at the tree's root under its own name.
    Itself,
}

fn declared_layout(result: &Path) -> Layout {
    if result.file_name().is_some_and(|n| n == "node_modules") {
        Layout::Itself
    } else {
        Layout::Contents
    }
}

/// The last `max` bytes of `text`, from a line start.
fn tail(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut start = text.len() - max;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    let cut = &text[start..];
    cut.find('\n').map_or(cut, |i| &cut[i + 1..])
}

/// A build's scratch directory, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(root: &Path) -> Result<Scratch, Error> {
        let dir = root.join(format!("b-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).map_err(|e| {
            Error::new(
                ErrorCode::StorageError,
                format!("creating {}: {e}", dir.display()),
            )
        })?;
        Ok(Scratch(dir))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        // Tens of thousands of files: off the async workers when there are any.
        let dir = std::mem::take(&mut self.0);
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn_blocking(move || std::fs::remove_dir_all(&dir));
            }
            Err(_) => {
                let _ = std::fs::remove_dir_all(&dir);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (name, text) in files {
            std::fs::write(dir.path().join(name), text).unwrap();
        }
        dir
    }

    #[test]
    fn what_code_declares() {
        let py = tree(&[("requirements.txt", "# none yet\n\n")]);
        assert_eq!(declared(Runtime::Python3, py.path()).unwrap(), None);
        let py = tree(&[("requirements.txt", "flask==3.0.0\n")]);
        let d = declared(Runtime::Python3, py.path()).unwrap().unwrap();
        assert_eq!(
            d.files,
            [("requirements.txt".into(), b"flask==3.0.0\n".to_vec())]
        );
        let py = tree(&[(
            "pyproject.toml",
            "[project]\nname = \"app\"\ndependencies = [\"requests>=2\", \"six\"]\n",
        )]);
        let d = declared(Runtime::Python3, py.path()).unwrap().unwrap();
        assert_eq!(d.files[0].1, b"requests>=2\nsix\n");
        let bad = tree(&[("pyproject.toml", "[project\n")]);
        assert!(declared(Runtime::Python3, bad.path()).is_err());

        let js = tree(&[("package.json", r#"{"name": "x"}"#)]);
        assert_eq!(declared(Runtime::Nodejs, js.path()).unwrap(), None);
        let js = tree(&[
            ("package.json", r#"{"dependencies": {"left-pad": "1.3.0"}}"#),
            ("package-lock.json", "{}"),
        ]);
        let d = declared(Runtime::Nodejs, js.path()).unwrap().unwrap();
        assert!(d.locked);
        assert_eq!(d.files.len(), 2);
        std::fs::create_dir(js.path().join("node_modules")).unwrap();
        assert_eq!(declared(Runtime::Nodejs, js.path()).unwrap(), None);
        let custom = tree(&[("requirements.txt", "flask\n")]);
        assert_eq!(declared(Runtime::Custom, custom.path()).unwrap(), None);
    }

    #[test]
    fn the_key_follows_the_files_and_the_interpreter() {
        let a = tree(&[("requirements.txt", "six\n")]);
        let b = tree(&[("requirements.txt", "six\n"), ("main.py", "x = 1")]);
        let c = tree(&[("requirements.txt", "six==1.16.0\n")]);
        let key = |t: &tempfile::TempDir, i: &str| {
            key_of(&declared(Runtime::Python3, t.path()).unwrap().unwrap(), i)
        };
        assert_eq!(key(&a, "py 3.11"), key(&b, "py 3.11"));
        assert_ne!(key(&a, "py 3.11"), key(&c, "py 3.11"));
        assert_ne!(key(&a, "py 3.11"), key(&a, "py 3.12"));
    }

    #[test]
    fn tails_start_at_a_line() {
        assert_eq!(tail("a\nbb\ncc\n", 100), "a\nbb\ncc\n");
        assert_eq!(tail("a\nbb\ncc\n", 5), "cc\n");
    }
}
