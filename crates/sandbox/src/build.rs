//! Dependency builds: `pip install --target` or `npm ci`/`npm install` run over a scratch
//! directory, in a jail of their own when the node has one, bounded in time, memory and
//! output.
//!
//! The platform decides whether a function needs a build and what it is keyed by; this
//! module only runs one. A build is the first place where code the user did not write runs
//! (a package's `setup.py`, an npm `postinstall`), so it is sandboxed as an instance is: its
//! own pid, mount and IPC namespaces, the seccomp filter, no capabilities, a uid of the
//! function range, a memory cgroup. Unlike an instance it sees its scratch directory
//! writable at `/var/task` and always has the network (it must reach the package index).
//!
//! The package index is the machine's: pip's and npm's configuration under `/etc` is
//! visible in the jail, and the server passes on the variables that configure them
//! (`PIP_*`, `npm_config_*`, proxies, CA bundles); a local `PIP_FIND_LINKS` directory is
//! shown read-only.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use model::Runtime;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::sync::mpsc;

use crate::isolation::Isolation;
use crate::runtimes::{Launch, Runtimes};
use crate::{SandboxError, jail};

/// One build: the dependency files are at the root of `dir`; the result is left in
/// `dir/out` (Python: a `--target` tree, importable as it is) or `dir/node_modules`.
#[derive(Clone, Debug)]
pub struct BuildJob {
    pub runtime: Runtime,
    /// A scratch directory of the caller's, removed by the caller.
    pub dir: PathBuf,
    /// Whether `npm ci` (a lock file is there) rather than `npm install`.
    pub locked: bool,
    pub timeout_ms: u64,
    pub memory_mb: u32,
    /// Output kept at most: the first half and the last half of it (a tool's error is at
    /// the end), the middle counted, not kept. Every line is passed on as it comes.
    pub output_max_bytes: usize,
    /// What the build may write into its scratch directory (downloads, unpacked wheels,
    /// the result), in MB: past it, it is stopped, so one build cannot fill the disk.
    pub disk_max_mb: u64,
}

impl BuildJob {
    /// Where the result is, relative to `dir`.
    pub fn result_dir(&self) -> &'static str {
        match self.runtime {
            Runtime::Nodejs => "node_modules",
            _ => "out",
        }
    }
}

/// How a build ended.
#[derive(Clone, Debug, PartialEq)]
pub enum BuildStatus {
    Succeeded,
    /// The tool failed (its output says why), ran out of time or memory.
    Failed {
        reason: String,
    },
}

#[derive(Clone, Debug)]
pub struct BuildReport {
    pub status: BuildStatus,
    /// The tool's output (stdout and stderr, in the order read), at most
    /// `output_max_bytes`, with a last line saying how much was dropped.
    pub output: String,
    pub duration_ms: u64,
}

/// Runs builds on this node.
#[derive(Clone)]
pub struct Builder {
    runtimes: Runtimes,
    isolation: Option<Arc<Isolation>>,
    ids: Arc<tokio::sync::Mutex<std::collections::HashMap<Runtime, String>>>,
}

/// Variables of the server's environment that configure package tools, passed on.
fn passed_on(name: &str) -> bool {
    let upper = name.to_ascii_uppercase();
    upper.starts_with("PIP_")
        || upper.starts_with("NPM_CONFIG_")
        || matches!(
            upper.as_str(),
            "HTTP_PROXY"
                | "HTTPS_PROXY"
                | "NO_PROXY"
                | "ALL_PROXY"
                | "SSL_CERT_FILE"
                | "SSL_CERT_DIR"
                | "REQUESTS_CA_BUNDLE"
                | "NODE_EXTRA_CA_CERTS"
        )
}

impl Builder {
    pub(crate) fn new(runtimes: Runtimes, isolation: Option<Arc<Isolation>>) -> Builder {
        Builder {
            runtimes,
            isolation,
            ids: Default::default(),
        }
    }

    /// What identifies the runtime's interpreter for a build cache: its path and the
    /// version it reports (`Python 3.11.2`), since native wheels and modules are built for
    /// one. Asked once per runtime.
    pub async fn interpreter_id(&self, runtime: Runtime) -> Result<String, SandboxError> {
        let mut ids = self.ids.lock().await;
        if let Some(id) = ids.get(&runtime) {
            return Ok(id.clone());
        }
        let program = self
            .runtimes
            .interpreter(runtime)
            .filter(|_| runtime.has_shim())
            .ok_or(SandboxError::RuntimeUnavailable(runtime))?
            .to_path_buf();
        let flag = if runtime == Runtime::Python3 {
            "-VV"
        } else {
            "--version"
        };
        let out = tokio::process::Command::new(&program)
            .arg(flag)
            .env_clear()
            .output()
            .await
            .map_err(|e| SandboxError::Spawn(format!("{}: {e}", program.display())))?;
        let version = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let id = format!("{} {version}", program.display());
        ids.insert(runtime, id.clone());
        Ok(id)
    }

    /// Runs `job`, sending each line of output to `lines` as it comes (while it has room:
    /// a slow reader loses lines, never stalls the build).
    pub async fn run(
        &self,
        job: &BuildJob,
        lines: Option<mpsc::Sender<String>>,
    ) -> Result<BuildReport, SandboxError> {
        let started = Instant::now();
        let jailed = self.isolation.as_deref().filter(|i| i.jails());
        let root: PathBuf = if jailed.is_some() {
            PathBuf::from(jail::TASK_ROOT)
        } else {
            job.dir.clone()
        };
        let launch = self.launch(job, &root)?;
        for dir in [".home", ".tmp"] {
            std::fs::create_dir_all(job.dir.join(dir))
                .map_err(|e| SandboxError::Spawn(format!("preparing the build: {e}")))?;
        }
        let mut env: Vec<(OsString, OsString)> = std::env::vars_os()
            .filter(|(k, _)| k.to_str().is_some_and(passed_on))
            .collect();
        let path = match launch.program.parent() {
            Some(bin) => format!("{}:/usr/local/bin:/usr/bin:/bin", bin.display()),
            None => "/usr/local/bin:/usr/bin:/bin".into(),
        };
        for (k, v) in [
            ("PATH", path),
            ("HOME", root.join(".home").display().to_string()),
            ("TMPDIR", root.join(".tmp").display().to_string()),
            ("LANG", "C.UTF-8".into()),
            ("PIP_NO_INPUT", "1".into()),
            ("PIP_DISABLE_PIP_VERSION_CHECK", "1".into()),
            // Local builds run as the user, who may be root; the advice is not for them.
            ("PIP_ROOT_USER_ACTION", "ignore".into()),
            ("npm_config_update_notifier", "false".into()),
            ("npm_config_fund", "false".into()),
            ("npm_config_audit", "false".into()),
        ] {
            env.push((k.into(), v.into()));
        }
        // node-gyp builds a native module against the headers of the node that runs it,
        // which Debian's and Node's own packages ship in `<prefix>/include/node`; without
        // this it downloads them from nodejs.org, which a build may not reach
        // (`aws-lambda-ric` is such a module).
        let headers = self
            .runtimes
            .interpreter(Runtime::Nodejs)
            .and_then(|node| node.parent()?.parent())
            .filter(|prefix| prefix.join("include/node/node.h").is_file());
        if job.runtime == Runtime::Nodejs
            && let Some(prefix) = headers
            && !env
                .iter()
                .any(|(k, _)| k.eq_ignore_ascii_case("npm_config_nodedir"))
        {
            env.push(("npm_config_nodedir".into(), prefix.into()));
        }
        let mut cgroup = None;
        let (program, args) = match jailed {
            Some(isolation) => {
                cgroup = isolation
                    .build_cgroup(job.memory_mb)
                    .map_err(|e| SandboxError::Spawn(format!("the build's cgroup: {e}")))?;
                let find_links = std::env::var_os("PIP_FIND_LINKS")
                    .map(PathBuf::from)
                    .filter(|p| p.is_absolute() && p.is_dir());
                let wrapped =
                    isolation.wrap_build(&launch, &job.dir, cgroup.as_ref(), find_links)?;
                (wrapped.program, wrapped.args)
            }
            None => (launch.program, launch.args),
        };
        let mut child = tokio::process::Command::new(&program)
            .args(&args)
            .env_clear()
            .envs(env)
            .current_dir(&job.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| SandboxError::Spawn(format!("{}: {e}", program.display())))?;
        let group = child.id().map(|p| p as i32);
        let (tx, mut rx) = mpsc::channel::<String>(256);
        for stream in [
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Send + Unpin>),
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Send + Unpin>),
        ]
        .into_iter()
        .flatten()
        {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut reader = BufReader::new(stream);
                let mut line = Vec::new();
                // Bounded lines: a tool that prints no newline cannot grow this forever.
                loop {
                    line.clear();
                    match (&mut reader)
                        .take(64 * 1024)
                        .read_until(b'\n', &mut line)
                        .await
                    {
                        Ok(0) | Err(_) => break,
                        Ok(_) => {
                            let text = String::from_utf8_lossy(&line);
                            // Progress bars redraw with `\r`: only the last state counts.
                            let text = text.trim_end().rsplit('\r').next().unwrap_or("");
                            if tx.send(text.to_string()).await.is_err() {
                                break;
                            }
                        }
                    }
                }
            });
        }
        drop(tx);
        let mut output = Output::new(job.output_max_bytes);
        let collect = async {
            while let Some(line) = rx.recv().await {
                if let Some(lines) = &lines {
                    let _ = lines.try_send(line.clone());
                }
                output.push(line);
            }
            child.wait().await
        };
        // The scratch directory's size, looked at while the build runs.
        let disk_max = job.disk_max_mb * 1024 * 1024;
        let watched = job.dir.clone();
        let over_disk = async move {
            loop {
                tokio::time::sleep(DISK_CHECK_EVERY).await;
                let dir = watched.clone();
                let used = tokio::task::spawn_blocking(move || tree_size(&dir, disk_max).0)
                    .await
                    .unwrap_or(0);
                if used > disk_max {
                    return used;
                }
            }
        };
        let waited = tokio::select! {
            w = tokio::time::timeout(Duration::from_millis(job.timeout_ms), collect) => w.map_err(|_| None),
            used = over_disk => Err(Some(used)),
        };
        // Stopped before its end: its whole process group goes (the child is not reaped
        // yet, so its group id is still its own). Jailed, its cgroup takes the rest.
        if waited.is_err()
            && let Some(group) = group
        {
            crate::instance::kill_group(group);
        }
        let status = match waited {
            Err(None) => BuildStatus::Failed {
                reason: format!("the build took longer than {} ms", job.timeout_ms),
            },
            Err(Some(_)) => BuildStatus::Failed {
                reason: format!(
                    "the build wrote more than {} MB (downloads and installed files)",
                    job.disk_max_mb
                ),
            },
            Ok(Err(e)) => BuildStatus::Failed {
                reason: format!("waiting for the build failed: {e}"),
            },
            Ok(Ok(_)) if cgroup.as_ref().is_some_and(|c| c.oom_killed()) => BuildStatus::Failed {
                reason: format!("the build ran out of memory ({} MB)", job.memory_mb),
            },
            Ok(Ok(s)) if s.success() => BuildStatus::Succeeded,
            Ok(Ok(s)) => BuildStatus::Failed {
                reason: match s.code() {
                    // The jail's helper exits 125 when it cannot build the jail.
                    Some(125) if jailed.is_some() => {
                        "the build's sandbox could not be set up".into()
                    }
                    Some(code) => format!("{} exited with status {code}", tool(job.runtime)),
                    None => format!("{} was killed by a signal", tool(job.runtime)),
                },
            },
        };
        Ok(BuildReport {
            status,
            output: output.text(),
            duration_ms: started.elapsed().as_millis() as u64,
        })
    }

    /// The tool's command line, with paths as the build sees them (`root` is the scratch
    /// directory there).
    fn launch(&self, job: &BuildJob, root: &Path) -> Result<Launch, SandboxError> {
        let interpreter = self
            .runtimes
            .interpreter(job.runtime)
            .filter(|_| job.runtime.has_shim())
            .ok_or(SandboxError::RuntimeUnavailable(job.runtime))?
            .to_path_buf();
        let (program, args): (PathBuf, Vec<OsString>) = match job.runtime {
            Runtime::Python3 => (
                interpreter,
                vec![
                    "-c".into(),
                    PIP_AND_COMPILE.into(),
                    root.join("out").into(),
                    root.join("requirements.txt").into(),
                ],
            ),
            _ => {
                // npm is a script run by the node it sits beside.
                let npm = interpreter.with_file_name("npm");
                let npm = if npm.exists() {
                    npm
                } else {
                    PathBuf::from("/usr/bin/npm")
                };
                let verb = if job.locked { "ci" } else { "install" };
                let mut args: Vec<OsString> = vec![verb.into(), "--omit=dev".into()];
                if !job.locked {
                    args.push("--no-package-lock".into());
                }
                args.extend([
                    "--no-audit".into(),
                    "--no-fund".into(),
                    "--loglevel=http".into(),
                ]);
                (npm, args)
            }
        };
        Ok(Launch {
            program,
            args,
            shim_dir: None,
        })
    }
}

/// The Python build: pip installs into the target without compiling, then the tree is
/// compiled to bytecode checked by nothing (PEP 552's unchecked hash). pip's own `.pyc`
/// files record the sources' modification times, which unpacking the stored archive does
/// not keep: every cold start would find them stale and, the tree being read-only,
/// compile the dependencies from source again. pip's exit status is the build's.
const PIP_AND_COMPILE: &str = "\
import compileall, py_compile, subprocess, sys
out, requirements = sys.argv[1], sys.argv[2]
status = subprocess.call([sys.executable, '-m', 'pip', 'install', '--no-input',
    '--progress-bar', 'off', '--no-compile', '--target', out, '-r', requirements])
if status:
    sys.exit(status)
ok = compileall.compile_dir(out, quiet=1,
    invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH)
sys.exit(0 if ok else 3)
";

/// How often a running build's scratch directory is measured.
const DISK_CHECK_EVERY: Duration = Duration::from_millis(1_000);

/// The bytes of the files under `dir` and the number of its entries (links not
/// followed); counting stops once the bytes pass `stop_past`.
pub fn tree_size(dir: &Path, stop_past: u64) -> (u64, usize) {
    let (mut bytes, mut entries) = (0, 0);
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(list) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in list.flatten() {
            let Ok(meta) = entry.path().symlink_metadata() else {
                continue;
            };
            entries += 1;
            if meta.is_dir() {
                stack.push(entry.path());
            } else {
                bytes += meta.len();
                if bytes > stop_past {
                    return (bytes, entries);
                }
            }
        }
    }
    (bytes, entries)
}

/// A build's output as kept: its first and last lines up to a byte bound, and how much
/// of the middle was dropped.
struct Output {
    max: usize,
    head: String,
    tail: std::collections::VecDeque<String>,
    tail_bytes: usize,
    dropped: usize,
}

impl Output {
    fn new(max: usize) -> Output {
        Output {
            max,
            head: String::new(),
            tail: Default::default(),
            tail_bytes: 0,
            dropped: 0,
        }
    }

    fn push(&mut self, line: String) {
        if self.dropped == 0 && self.tail.is_empty() && self.head.len() + line.len() < self.max / 2
        {
            self.head.push_str(&line);
            self.head.push('\n');
            return;
        }
        self.tail_bytes += line.len() + 1;
        self.tail.push_back(line);
        while self.tail_bytes > self.max / 2 {
            let Some(old) = self.tail.pop_front() else {
                break;
            };
            self.tail_bytes -= old.len() + 1;
            self.dropped += old.len() + 1;
        }
    }

    fn text(self) -> String {
        let mut text = self.head;
        if self.dropped > 0 {
            text.push_str(&format!(
                "[... {} bytes of output dropped ...]\n",
                self.dropped
            ));
        }
        for line in self.tail {
            text.push_str(&line);
            text.push('\n');
        }
        text
    }
}

fn tool(runtime: Runtime) -> &'static str {
    match runtime {
        Runtime::Nodejs => "npm",
        _ => "pip",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_keeps_its_head_and_its_tail() {
        let mut out = Output::new(40);
        for i in 0..100 {
            out.push(format!("line {i:03}"));
        }
        let text = out.text();
        assert!(text.starts_with("line 000\nline 001\n"), "{text}");
        assert!(text.ends_with("line 098\nline 099\n"), "{text}");
        assert!(text.contains("bytes of output dropped"), "{text}");
        let mut small = Output::new(1000);
        small.push("only".into());
        assert_eq!(small.text(), "only\n");
    }

    #[test]
    fn trees_are_measured_until_the_bound() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir(tmp.path().join("a")).unwrap();
        std::fs::write(tmp.path().join("a/x"), vec![0; 1000]).unwrap();
        std::fs::write(tmp.path().join("y"), vec![0; 500]).unwrap();
        assert_eq!(tree_size(tmp.path(), u64::MAX), (1500, 3));
        assert!(tree_size(tmp.path(), 100).0 > 100);
    }
}
