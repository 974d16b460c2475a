//! Test harness: the real `nimbus` binary as a server on a free port with a temporary data
//! dir, an HTTP client for its API, and a runner for CLI commands against it.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub const NIMBUS: &str = env!("CARGO_BIN_EXE_nimbus");

/// A running `nimbus server`. Dropping it kills the server.
pub struct Server {
    pub child: Child,
    pub endpoint: String,
    /// The S3 API's endpoint (`http://127.0.0.1:PORT`).
    pub s3_endpoint: String,
    pub data_dir: PathBuf,
    pub token: String,
    pub http: reqwest::Client,
}

/// Output of one CLI run.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Server {
    /// Starts a server on a free port with `data_dir`, waiting until it listens.
    pub fn start(data_dir: &Path) -> Server {
        Server::start_with_env(data_dir, &[])
    }

    pub fn start_with_env(data_dir: &Path, env: &[(&str, &str)]) -> Server {
        Server::start_with(data_dir, &[], env)
    }

    /// Starts a server with extra `nimbus server` arguments and environment.
    pub fn start_with(data_dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Server {
        Server::start_through(&[], data_dir, args, env)
    }

    /// Starts a server through `wrapper` (a command that runs the rest of its arguments,
    /// such as `setpriv` to run it as another user).
    pub fn start_through(
        wrapper: &[&str],
        data_dir: &Path,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Server {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let (program, wrapper_args) = match wrapper.split_first() {
            Some((program, rest)) => (*program, [rest, &[NIMBUS]].concat()),
            None => (NIMBUS, Vec::new()),
        };
        let mut child = Command::new(program)
            .args(wrapper_args)
            .args([
                "server",
                "--listen",
                "127.0.0.1:0",
                "--s3-listen",
                "127.0.0.1:0",
                "--data-dir",
            ])
            .arg(data_dir)
            .args(args)
            .envs(env.iter().copied())
            .env("NIMBUS_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("starting nimbus server");
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let mut s3_endpoint = String::new();
        let endpoint = loop {
            let line = lines
                .next()
                .expect("server exited before listening")
                .expect("reading server output");
            if let Some(url) = line.strip_prefix("nimbus S3 API listening on ") {
                s3_endpoint = url.to_string();
            }
            if let Some(url) = line.strip_prefix("nimbus listening on ") {
                break url.to_string();
            }
        };
        // Keep draining stdout so the server never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        let token = std::fs::read_to_string(data_dir.join("admin.token"))
            .unwrap()
            .trim()
            .to_string();
        Server {
            child,
            endpoint,
            s3_endpoint,
            data_dir: data_dir.to_path_buf(),
            token,
            http: reqwest::Client::new(),
        }
    }

    /// A request to the gateway, without the admin token.
    pub fn get(&self, path: &str) -> reqwest::RequestBuilder {
        self.http.get(self.url(path))
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.endpoint)
    }

    /// An authenticated request builder.
    pub fn req(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, self.url(path))
            .bearer_auth(&self.token)
    }

    /// Waits (bounded) until the asynchronous invocation `id` is final and returns it.
    pub async fn settled(&self, id: &str, within: Duration) -> serde_json::Value {
        let deadline = std::time::Instant::now() + within;
        loop {
            let v = self.get_json(&format!("/v1/invocations/{id}")).await;
            let status = v["status"].as_str().unwrap_or_default();
            if !["queued", "running", "retrying"].contains(&status) {
                return v;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "not settled in {within:?}: {v}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// An authenticated GET of the control API, as JSON.
    pub async fn get_json(&self, path: &str) -> serde_json::Value {
        self.req(reqwest::Method::GET, path)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// Invokes `name` over HTTP and returns the response.
    pub async fn invoke(&self, name: &str, event: &str) -> reqwest::Response {
        self.req(
            reqwest::Method::POST,
            &format!("/v1/functions/{name}/invocations"),
        )
        .body(event.to_string())
        .send()
        .await
        .unwrap()
    }

    /// Invokes `name` once per event, all at once; the answers come back in order.
    pub async fn invoke_all(
        &self,
        name: &str,
        events: Vec<serde_json::Value>,
    ) -> Vec<reqwest::Response> {
        // Spawned, so the requests are really in flight together (a request future does
        // nothing until polled).
        let calls: Vec<_> = events
            .into_iter()
            .map(|event| {
                tokio::spawn(
                    self.req(
                        reqwest::Method::POST,
                        &format!("/v1/functions/{name}/invocations"),
                    )
                    .body(event.to_string())
                    .send(),
                )
            })
            .collect();
        let mut out = Vec::new();
        for c in calls {
            out.push(c.await.unwrap().unwrap());
        }
        out
    }

    /// Runs the CLI against this server.
    pub async fn cli(&self, args: &[&str]) -> Run {
        let out = tokio::process::Command::new(NIMBUS)
            .args(args)
            .env("NIMBUS_ENDPOINT", &self.endpoint)
            .env("NIMBUS_DATA_DIR", &self.data_dir)
            .env_remove("NIMBUS_TOKEN")
            .output()
            .await
            .unwrap();
        Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Deploys a project directory with the CLI, asserting success.
    pub async fn deploy(&self, dir: &Path) {
        let run = self.cli(&["deploy", dir.to_str().unwrap()]).await;
        assert_eq!(run.code, 0, "deploy failed: {}{}", run.stdout, run.stderr);
    }

    /// Deploys a project whose handler is meant not to load (`--no-check`: the deploy's
    /// check would refuse it), asserting success.
    pub async fn deploy_unchecked(&self, dir: &Path) {
        let run = self
            .cli(&["deploy", dir.to_str().unwrap(), "--no-check"])
            .await;
        assert_eq!(run.code, 0, "deploy failed: {}{}", run.stdout, run.stderr);
    }

    /// SIGKILLs the server (no goodbye) and waits for it to be gone.
    pub fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// Sends SIGTERM and waits (bounded) for the server to exit.
    pub fn stop(mut self) -> std::process::ExitStatus {
        let pid = rustix::process::Pid::from_raw(self.child.id() as i32).unwrap();
        rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
        for _ in 0..400 {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("server did not stop within 20 s of SIGTERM");
    }
}

/// A server a test did not stop (it ended early, or needs no stop check) is stopped
/// gracefully all the same: killed, it would leave its cgroups for its successor on the
/// data dir, and a test's data dir has none.
impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let pid = rustix::process::Pid::from_raw(self.child.id() as i32).unwrap();
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
            for _ in 0..400 {
                if !matches!(self.child.try_wait(), Ok(None)) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Writes a project: `nimbus.yaml` plus code files, in a new directory under `root`.
pub fn project(root: &Path, name: &str, manifest: &str, files: &[(&str, &str)]) -> PathBuf {
    let dir = root.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("nimbus.yaml"), manifest).unwrap();
    for (file, text) in files {
        let path = dir.join(file);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }
    dir
}

/// A one-function Python project with handler `main.handler`.
pub fn python_project(root: &Path, name: &str, timeout_ms: u32, code: &str) -> PathBuf {
    project(
        root,
        name,
        &format!(
            "functions:\n  {name}:\n    runtime: python3\n    handler: main.handler\n    timeout_ms: {timeout_ms}\n"
        ),
        &[("main.py", code)],
    )
}

/// The repository's examples directory.
pub fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples")
}

pub fn header<'a>(res: &'a reqwest::Response, name: &str) -> &'a str {
    res.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

/// What the tests install into their virtualenv (pinned; `.ci/run` installs the same
/// file). Functions get their packages from builds at deploy, not from here.
const TEST_PACKAGES: &str = include_str!("test-packages.txt");

/// A Python with `TEST_PACKAGES` installed: a virtualenv in `target/test-venv`, made here
/// from the package registry if `.ci/run` has not made it. The list is copied into the
/// virtualenv, which is remade when the list changes.
pub fn test_python() -> PathBuf {
    static PYTHON: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    PYTHON
        .get_or_init(|| {
            let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/test-venv");
            let python = venv.join("bin/python3");
            let ready = |py: &Path| {
                std::fs::read_to_string(venv.join("test-packages.txt"))
                    .is_ok_and(|l| l == TEST_PACKAGES)
                    && py.exists()
            };
            if ready(&python) {
                return python;
            }
            // Built aside and renamed into place, so a concurrent test process never sees a
            // half-installed environment.
            let staging = venv.with_extension(format!("staging-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&staging);
            let base = if Path::new("/usr/bin/python3").exists() {
                "/usr/bin/python3"
            } else {
                "python3"
            };
            let made = Command::new(base)
                .args(["-m", "venv"])
                .arg(&staging)
                .status()
                .unwrap();
            assert!(made.success(), "python3 -m venv failed");
            let list = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/it/test-packages.txt");
            let pip = Command::new(staging.join("bin/python3"))
                .args(["-m", "pip", "install", "-q", "-r"])
                .arg(&list)
                .status()
                .unwrap();
            assert!(pip.success(), "installing {} failed", list.display());
            std::fs::write(staging.join("test-packages.txt"), TEST_PACKAGES).unwrap();
            // An outdated environment goes; another test process may have just put a
            // current one in place, which the rename then leaves alone.
            if !ready(&python) {
                let _ = std::fs::remove_dir_all(&venv);
            }
            if std::fs::rename(&staging, &venv).is_err() {
                let _ = std::fs::remove_dir_all(&staging);
            }
            assert!(
                ready(&python),
                "the test virtualenv lacks the packages of test-packages.txt"
            );
            python
        })
        .clone()
}

/// Each delivered event of `function` by its trigger (`event:NAME`, `timer:NAME`).
pub async fn delivered(server: &Server, function: &str, trigger: &str) -> Vec<serde_json::Value> {
    let records = server
        .get_json(&format!("/v1/functions/{function}/invocations?limit=1000"))
        .await;
    let mut out = Vec::new();
    for r in records["invocations"].as_array().into_iter().flatten() {
        if r["trigger"] == trigger {
            let id = r["request_id"].as_str().unwrap();
            out.push(server.get_json(&format!("/v1/invocations/{id}")).await);
        }
    }
    out
}

/// The environment the AWS tools get: the server's credentials file and nothing of the
/// machine's own AWS configuration.
pub fn aws_env(cmd: &mut std::process::Command, data_dir: &Path) {
    cmd.env(
        "AWS_SHARED_CREDENTIALS_FILE",
        data_dir.join("aws.credentials"),
    )
    .env("AWS_CONFIG_FILE", "/dev/null")
    .env_remove("AWS_ACCESS_KEY_ID")
    .env_remove("AWS_SECRET_ACCESS_KEY")
    .env_remove("AWS_PROFILE")
    .env("AWS_EC2_METADATA_DISABLED", "true");
}
