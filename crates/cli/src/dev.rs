//! `nimbus dev`: the inner loop. Deploys the project to a local server (one started on a
//! temporary data dir when none answers), redeploys it whenever a file that ships changes,
//! and follows every function's logs, until Ctrl-C.
//!
//! Changes are found by polling the tree a deploy would ship (paths, sizes and modification
//! times, under the same ignore rules) every `POLL`: no watch limits to run into (inotify's
//! per-user count), editors' save-by-rename seen like any write, and the tree is small
//! because virtualenvs and `node_modules` are not walked. A redeploy of code alone costs an
//! upload and a deploy: an unchanged dependency set is not built again (builds are cached
//! by their dependency files), and functions whose code did not change stay as they are.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::time::{Duration, SystemTime};

use anyhow::{Context, bail};
use tokio::io::AsyncBufReadExt;

use crate::client::Client;
use crate::{Output, manifest};

/// How often the tree is looked at.
const POLL: Duration = Duration::from_millis(100);
/// How long the tree must stay unchanged before a redeploy: an editor's save (write,
/// rename, touch) lands as one change.
const SETTLE: Duration = Duration::from_millis(50);

/// A server `dev` started itself.
struct OwnServer {
    child: tokio::process::Child,
    _data: tempfile::TempDir,
}

/// How long the server gets to stop its instances before it is killed.
const SERVER_STOP_GRACE: Duration = Duration::from_secs(15);

impl OwnServer {
    /// Stops the server as an operator would (SIGTERM: it stops its instances and removes
    /// their cgroups), and kills it only if it is not gone within the grace period; then
    /// its data dir goes.
    async fn stop(mut self) {
        if let Some(pid) = self.child.id()
            && let Some(pid) = rustix::process::Pid::from_raw(pid as i32)
        {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
        if tokio::time::timeout(SERVER_STOP_GRACE, self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }
}

/// Starts `nimbus server` on a free port and a temporary data dir; its log goes to a file
/// there.
async fn start_server() -> anyhow::Result<(OwnServer, Client)> {
    let data = tempfile::Builder::new()
        .prefix("nimbus-dev-")
        .tempdir()
        .context("making a data dir")?;
    let log = std::fs::File::create(data.path().join("server.log")).context("server.log")?;
    let mut child = tokio::process::Command::new(std::env::current_exe()?)
        .args([
            "server",
            "--listen",
            "127.0.0.1:0",
            "--s3-listen",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(data.path())
        .stdout(Stdio::piped())
        .stderr(log)
        // Not killed on drop: `stop` ends it gracefully (a killed server leaves its
        // instances' cgroups behind). A dev that is itself killed leaves it running.
        .spawn()
        .context("starting nimbus server")?;
    let stdout = child.stdout.take().expect("piped");
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let endpoint = loop {
        let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .context("the server did not start within 30 s")??;
        match line {
            Some(l) => {
                if let Some(url) = l.strip_prefix("nimbus listening on ") {
                    break url.trim().to_string();
                }
            }
            None => bail!(
                "the server exited at start; see {}",
                data.path().join("server.log").display()
            ),
        }
    };
    // The rest of its stdout is not needed, but must be read for it not to block.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    let token = std::fs::read_to_string(data.path().join("admin.token"))
        .context("reading the server's token")?;
    let client = Client::with(&endpoint, token.trim())?;
    eprintln!(
        "started a server at {endpoint} (data dir {}, log server.log there)",
        data.path().display()
    );
    Ok((OwnServer { child, _data: data }, client))
}

/// What the tree that ships looks like now: every file's size and modification time.
fn fingerprint(dirs: &[(PathBuf, Vec<String>)]) -> BTreeMap<PathBuf, (u64, SystemTime)> {
    let mut out = BTreeMap::new();
    for (dir, exclude) in dirs {
        let Ok(files) = crate::package::files(dir, exclude) else {
            continue;
        };
        for rel in files {
            let path = dir.join(&rel);
            if let Ok(m) = std::fs::symlink_metadata(&path) {
                out.insert(
                    path,
                    (m.len(), m.modified().unwrap_or(SystemTime::UNIX_EPOCH)),
                );
            }
        }
    }
    out
}

/// The code directories of the project and their exclude patterns, and its manifest.
fn watched(dir: &Path) -> Vec<(PathBuf, Vec<String>)> {
    let mut dirs = match manifest::load(dir) {
        Ok(plan) => plan
            .into_iter()
            .map(|p| (p.code_dir, p.exclude))
            .collect::<Vec<_>>(),
        Err(_) => Vec::new(),
    };
    // The manifest itself, whatever it says.
    dirs.push((dir.to_path_buf(), Vec::new()));
    dirs
}

pub async fn run(default: Option<Client>, dir: &Path) -> anyhow::Result<ExitCode> {
    let dir = crate::local::project_dir(dir)?;
    let running = match default {
        Some(c) if c.reachable().await => Some(c),
        _ => None,
    };
    let (own, client) = if let Some(c) = running {
        (None, c)
    } else {
        let (own, client) = start_server().await?;
        (Some(own), client)
    };
    let mut followed: BTreeMap<String, tokio::task::JoinHandle<()>> = BTreeMap::new();
    let mut last = fingerprint(&watched(&dir));
    let deployed = redeploy(&client, &dir, &mut followed).await;
    if let Err(e) = deployed {
        eprintln!("error: {e:#}");
    }
    eprintln!("watching {} for changes; Ctrl-C stops", dir.display());
    // Ctrl-C, or a polite kill: either way the server this started is stopped with it.
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("listening for SIGTERM")?;
    let stop = async move {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = terminate.recv() => {}
        }
    };
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => break,
            _ = tokio::time::sleep(POLL) => {}
        }
        let now = fingerprint(&watched(&dir));
        if now == last {
            continue;
        }
        // Wait for the tree to settle, then deploy what it is.
        let mut settled = now;
        loop {
            tokio::time::sleep(SETTLE).await;
            let again = fingerprint(&watched(&dir));
            if again == settled {
                break;
            }
            settled = again;
        }
        last = settled;
        if let Err(e) = redeploy(&client, &dir, &mut followed).await {
            eprintln!("error: {e:#}");
        }
    }
    for (_, follower) in followed {
        follower.abort();
    }
    if let Some(own) = own {
        own.stop().await;
    }
    Ok(ExitCode::SUCCESS)
}

/// Deploys the project and follows the logs of functions not followed yet.
async fn redeploy(
    client: &Client,
    dir: &Path,
    followed: &mut BTreeMap<String, tokio::task::JoinHandle<()>>,
) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    crate::commands::deploy(client, dir, false, true, Output::Text).await?;
    eprintln!("deployed in {} ms", started.elapsed().as_millis());
    let plan = manifest::load(dir).map_err(anyhow::Error::msg)?;
    for planned in plan {
        let name = planned.spec.name;
        if followed.get(&name).is_some_and(|f| !f.is_finished()) {
            continue;
        }
        let client = client.clone();
        let path = format!("/v1/functions/{name}/logs");
        let follower = tokio::spawn(async move {
            let q = vec![("follow".to_string(), "true".to_string())];
            let _ = crate::observe::follow(&client, &path, &q, Output::Text).await;
        });
        followed.insert(name, follower);
    }
    Ok(())
}
