//! `nimbus local invoke`: runs a function of the project directory with no server. The
//! same core runs it as on a server, in this process: the platform on a data dir of the
//! project's own (`.nimbus/local`, never shipped), the same build of its dependencies, the
//! same shim, events, context and environment; a `--route` request goes through the same
//! gateway, handed over without a socket. Instances run as plain processes of the user
//! (no jail), as with `nimbus server --no-sandbox`.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, bail};
use bytes::Bytes;
use model::trigger::TriggerKind;
use platform::Platform;
use sandbox::Outcome;
use store::PutMode;
use tower::ServiceExt;

use crate::{manifest, package};

/// A platform in this process over the project's local data dir.
pub struct LocalPlatform {
    pub platform: Arc<Platform>,
    pub gateway: Arc<api::Gateway>,
    pool: Arc<sandbox::Pool>,
    blobs: Arc<dyn store::BlobStore>,
}

impl LocalPlatform {
    /// Opens (or makes) the platform of the project at `dir`.
    pub async fn open(dir: &Path) -> anyhow::Result<LocalPlatform> {
        let data = dir.join(".nimbus/local");
        std::fs::create_dir_all(&data).with_context(|| format!("creating {}", data.display()))?;
        let meta = Arc::new(
            store::SqliteStore::open(&data.join("meta.db"))
                .await
                .with_context(|| format!("opening the database in {}", data.display()))?,
        );
        let blobs: Arc<dyn store::BlobStore> =
            Arc::new(store::FsBlobStore::new(data.join("blobs")));
        let code = store::CodeCache::new(
            data.join("code"),
            blobs.clone(),
            model::limits::UNPACKED_BYTES_MAX_DEFAULT,
        );
        let runtimes = sandbox::Runtimes::install(&data.join("runtime"), None, None)
            .context("installing the runtime shims")?;
        let pool = sandbox::Pool::new(
            runtimes,
            sandbox::PoolConfig {
                // One call: nothing to prewarm.
                prewarm: 0,
                ..sandbox::PoolConfig::default()
            },
        );
        let platform = Arc::new(Platform::new(meta, blobs.clone(), code, pool.clone()));
        platform.enable_builds(platform::BuildConfig {
            scratch_dir: data.join("builds"),
            node_id: "local".into(),
            timeout_ms: model::limits::BUILD_TIMEOUT_MS,
            memory_mb: model::limits::BUILD_MEMORY_MB,
        });
        let gateway = api::Gateway::new();
        platform.add_trigger(gateway.clone());
        platform
            .load()
            .await
            .map_err(|e| anyhow::anyhow!("loading the local functions: {e}"))?;
        platform
            .start_triggers()
            .await
            .map_err(|e| anyhow::anyhow!("starting the local gateway: {e}"))?;
        Ok(LocalPlatform {
            platform,
            gateway,
            pool,
            blobs,
        })
    }

    /// Packs, builds and deploys the function `name` of the project at `dir` (without the
    /// deploy's check: the call shows a load error as it is). Build output goes to stderr.
    pub async fn deploy(&self, dir: &Path, name: &str) -> anyhow::Result<()> {
        let plan = manifest::load(dir).map_err(anyhow::Error::msg)?;
        let names: Vec<String> = plan.iter().map(|p| p.spec.name.clone()).collect();
        let Some(planned) = plan.into_iter().find(|p| p.spec.name == name) else {
            bail!(
                "no function `{name}` in {}; it has {}",
                dir.join(manifest::FILE_NAME).display(),
                names.join(", ")
            );
        };
        let mut spec = planned.spec;
        let packed = package::pack(
            &planned.code_dir,
            &planned.exclude,
            spec.build && spec.runtime != model::Runtime::Custom,
        )?;
        for warning in &packed.warnings {
            eprintln!("{name}: {warning}");
        }
        let (sha, _) = self
            .platform
            .upload_code(packed.zip)
            .await
            .map_err(|e| anyhow::anyhow!("{name}: {}", e.message))?;
        spec.code_sha256 = sha;
        for (layer, layer_dir) in &planned.layers {
            let packed = package::pack(layer_dir, &[], false)?;
            let (sha, _) = self
                .platform
                .upload_code(packed.zip)
                .await
                .map_err(|e| anyhow::anyhow!("layer {layer}: {}", e.message))?;
            spec.layers.push(model::Layer {
                name: layer.clone(),
                sha256: sha,
            });
        }
        self.prepare_showing(&mut spec).await?;
        self.platform
            .deploy(spec, PutMode::Upsert, false)
            .await
            .map_err(|e| anyhow::anyhow!("{name}: {} ({})", e.message, e.code.as_str()))?;
        Ok(())
    }

    /// Installs the dependencies that the code archive `zip` declares for `spec`'s runtime
    /// here, on this machine (`nimbus deploy --build local`), and returns the archive of
    /// the result, to upload with the function; `None` when the code declares none. Built
    /// once per dependency set, like on a server.
    pub async fn build(
        &self,
        spec: &model::FunctionSpec,
        zip: Vec<u8>,
    ) -> anyhow::Result<Option<(String, Vec<u8>)>> {
        let name = &spec.name;
        let (sha, _) = self
            .platform
            .upload_code(zip)
            .await
            .map_err(|e| anyhow::anyhow!("{name}: {}", e.message))?;
        let mut local = spec.clone();
        local.code_sha256 = sha;
        local.deps_sha256.clear();
        let outcome = self.prepare_showing(&mut local).await?;
        let Some(deps) = outcome.deps_sha256() else {
            return Ok(None);
        };
        let bytes = self
            .blobs
            .get(deps)
            .await
            .map_err(|e| anyhow::anyhow!("{name}: reading the local build: {e}"))?;
        Ok(Some((deps.to_string(), bytes)))
    }

    /// Installs `spec`'s dependencies (`Platform::prepare_deps`), showing the tool's output
    /// on stderr as it comes.
    async fn prepare_showing(
        &self,
        spec: &mut model::FunctionSpec,
    ) -> anyhow::Result<platform::DepsOutcome> {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<String>(1024);
        let printer = tokio::spawn(async move {
            while let Some(line) = rx.recv().await {
                eprintln!("  | {line}");
            }
        });
        let built = self.platform.prepare_deps(spec, Some(tx)).await;
        let _ = printer.await;
        built.map_err(|e| {
            anyhow::anyhow!(
                "{}: {} ({})",
                spec.name,
                e.message.trim_end(),
                e.code.as_str()
            )
        })
    }

    /// Sends `request` through the gateway, as a client's request from loopback.
    pub async fn route(
        &self,
        mut request: axum::http::Request<axum::body::Body>,
    ) -> axum::response::Response {
        // No control API here: a token nobody has.
        let token = uuid_token();
        let app = api::router(api::AppState {
            platform: self.platform.clone(),
            gateway: self.gateway.clone(),
            bus: platform::bus::EventBus::new(),
            bus_limits: Default::default(),
            fanout: std::sync::Arc::new(api::fanout::Fanout::new(&token)),
            token: token.into(),
            prices: api::observe::Prices::default(),
            objects: None,
        });
        request
            .extensions_mut()
            .insert(axum::extract::ConnectInfo(SocketAddr::from((
                [127, 0, 0, 1],
                0,
            ))));
        app.oneshot(request).await.unwrap_or_else(|e| match e {})
    }

    pub async fn shutdown(&self) {
        self.pool.shutdown().await;
    }
}

fn uuid_token() -> String {
    format!("{:032x}", rand::random::<u128>())
}

/// What `local invoke` sends.
pub enum LocalEvent {
    /// An event, as `nimbus invoke` sends it.
    Event(Vec<u8>),
    /// An HTTP request through the function's routes: method, path (with query), body.
    Route {
        method: String,
        path: String,
        body: Vec<u8>,
    },
}

/// Runs `name` of the project at `dir` once with `event`, printing its logs (stderr) and
/// its result (stdout); a failure exits non-zero, as `nimbus invoke` does.
pub async fn invoke(dir: &Path, name: &str, event: LocalEvent) -> anyhow::Result<ExitCode> {
    let dir = project_dir(dir)?;
    let local = LocalPlatform::open(&dir).await?;
    let result = run(&local, &dir, name, event).await;
    local.shutdown().await;
    result
}

async fn run(
    local: &LocalPlatform,
    dir: &Path,
    name: &str,
    event: LocalEvent,
) -> anyhow::Result<ExitCode> {
    local.deploy(dir, name).await?;
    match event {
        LocalEvent::Event(event) => {
            let call = platform::Call::new(name, TriggerKind::Api, platform::trace::child_of(None));
            let invoked = local
                .platform
                .invoke(call, Bytes::from(event))
                .await
                .map_err(|e| anyhow::anyhow!("{} ({})", e.message, e.code.as_str()))?;
            for line in &invoked.record.logs.lines {
                eprintln!("{} {}", line.stream, line.message.trim_end());
            }
            match &invoked.outcome {
                Outcome::Success { body, .. } => {
                    let mut out = std::io::stdout().lock();
                    out.write_all(body)?;
                    if !body.ends_with(b"\n") {
                        out.write_all(b"\n")?;
                    }
                    Ok(ExitCode::SUCCESS)
                }
                Outcome::Error(e) => {
                    eprintln!(
                        "error: function {name} failed: {}: {}",
                        e.error_type, e.error_message
                    );
                    for line in &e.stack_trace {
                        eprintln!("  {}", line.trim_end());
                    }
                    Ok(ExitCode::FAILURE)
                }
            }
        }
        LocalEvent::Route { method, path, body } => {
            let method: axum::http::Method = method
                .parse()
                .map_err(|_| anyhow::anyhow!("`{method}` is not an HTTP method"))?;
            if !path.starts_with('/') {
                bail!("the route's path must start with `/`, not `{path}`");
            }
            let request = axum::http::Request::builder()
                .method(method)
                .uri(&path)
                .header("host", "localhost")
                .body(axum::body::Body::from(body))
                .with_context(|| format!("`{path}` is not a valid request path"))?;
            let res = local.route(request).await;
            let status = res.status();
            eprintln!("HTTP {status}");
            for (k, v) in res.headers() {
                eprintln!("{k}: {}", String::from_utf8_lossy(v.as_bytes()));
            }
            let body = axum::body::to_bytes(res.into_body(), model::limits::PAYLOAD_BYTES_MAX * 2)
                .await
                .context("reading the response")?;
            let mut out = std::io::stdout().lock();
            out.write_all(&body)?;
            if !body.is_empty() && !body.ends_with(b"\n") {
                out.write_all(b"\n")?;
            }
            Ok(if status.is_server_error() {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            })
        }
    }
}

/// The project directory of `path`: itself, or the directory of a manifest file.
pub fn project_dir(path: &Path) -> anyhow::Result<PathBuf> {
    let path = if path.is_file() {
        path.parent().map(Path::to_path_buf).unwrap_or_default()
    } else {
        path.to_path_buf()
    };
    std::fs::canonicalize(&path).with_context(|| format!("no project directory {}", path.display()))
}
