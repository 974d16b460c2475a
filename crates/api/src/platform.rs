//! The platform's operations, free of HTTP: deploy code, manage functions, invoke them.
//!
//! `Platform` is what the HTTP handlers (and, later, triggers) call. It keeps an in-memory
//! cache of resolved functions so the invoke path reads no database: a function is loaded
//! from the store once, its code unpacked once, and the cache is updated by every write
//! that goes through this node.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use bytes::Bytes;
use model::{ErrorCode, Function, FunctionSpec, limits};
use sandbox::{FunctionError, InstanceConfig, Logs, Outcome, Pool};
use store::{ArchiveInfo, BlobStore, CodeCache, KeyRecord, MetaStore, PutMode, PutOutcome};

use crate::ApiError;
use crate::gateway::table::RouteTable;

/// A function ready to invoke: its record and the instance configuration derived from it.
pub(crate) struct Resolved {
    pub function: Function,
    pub instance: InstanceConfig,
}

/// One finished invocation, kept in memory for `GET /v1/invocations/{id}`. It holds no
/// result body: results go to the caller and are not retained.
pub struct InvocationRecord {
    pub request_id: String,
    pub function: String,
    pub started_at_ms: i64,
    pub cold_start: bool,
    pub init_ms: Option<f64>,
    pub duration_ms: f64,
    pub instance_id: u64,
    pub error: Option<FunctionError>,
    pub logs: Logs,
    pub timings: sandbox::Timings,
}

/// The most recent invocations of this node, oldest dropped first.
#[derive(Default)]
struct Recent {
    order: VecDeque<String>,
    by_id: HashMap<String, Arc<InvocationRecord>>,
}

/// Node-wide platform state and operations.
pub struct Platform {
    meta: Arc<dyn MetaStore>,
    blobs: Arc<dyn BlobStore>,
    code: CodeCache,
    pool: Arc<Pool>,
    functions: RwLock<HashMap<String, Arc<Resolved>>>,
    /// Bumped by every write; a cache fill that raced with a write is discarded.
    epoch: AtomicU64,
    recent: Mutex<Recent>,
    /// The gateway's routes, rebuilt after every function write.
    routes: RwLock<Arc<RouteTable>>,
    /// sha256 (hex) of every invoke key, for the gateway's key check.
    keys: RwLock<HashSet<String>>,
    /// Serializes function writes, so a route conflict check and the write it guards are
    /// not interleaved with another deploy.
    writes: tokio::sync::Mutex<()>,
}

impl Platform {
    pub fn new(
        meta: Arc<dyn MetaStore>,
        blobs: Arc<dyn BlobStore>,
        code: CodeCache,
        pool: Arc<Pool>,
    ) -> Platform {
        Platform {
            meta,
            blobs,
            code,
            pool,
            functions: RwLock::new(HashMap::new()),
            epoch: AtomicU64::new(0),
            recent: Mutex::new(Recent::default()),
            routes: RwLock::new(Arc::new(RouteTable::default())),
            keys: RwLock::new(HashSet::new()),
            writes: tokio::sync::Mutex::new(()),
        }
    }

    /// Loads what the gateway needs from the store: routes and invoke keys. Called once at
    /// start; writes through this node keep both current afterwards.
    pub async fn load(&self) -> Result<(), ApiError> {
        self.rebuild_routes().await?;
        for f in self.meta.list_functions().await? {
            if f.spec.min_instances > 0 {
                self.provision(&f.spec.name).await?;
            }
        }
        let keys = self.meta.list_keys().await?;
        *self.keys.write().unwrap() = keys.into_iter().map(|k| k.sha256).collect();
        Ok(())
    }

    async fn rebuild_routes(&self) -> Result<(), ApiError> {
        let functions = self.meta.list_functions().await?;
        let table = RouteTable::build(&functions).unwrap_or_else(|e| {
            // Deploys refuse conflicts, so this only happens to data written around them.
            tracing::error!(error = %e, "stored routes conflict; the gateway serves none of them");
            RouteTable::default()
        });
        *self.routes.write().unwrap() = Arc::new(table);
        Ok(())
    }

    /// The current route table.
    pub fn routes(&self) -> Arc<RouteTable> {
        self.routes.read().unwrap().clone()
    }

    /// Creates an invoke key. The key is returned once; only its hash is stored.
    pub async fn create_key(&self, name: &str) -> Result<(KeyRecord, String), ApiError> {
        if name.is_empty() || name.len() > limits::NAME_LEN_MAX {
            return Err(ApiError::invalid(format!(
                "name: must be 1 to {} characters",
                limits::NAME_LEN_MAX
            )));
        }
        if self.keys.read().unwrap().len() >= limits::INVOKE_KEYS_MAX {
            return Err(ApiError::invalid(format!(
                "there are already {} invoke keys; delete unused ones first",
                limits::INVOKE_KEYS_MAX
            )));
        }
        let secret = format!(
            "nk_{}{}",
            uuid::Uuid::new_v4().simple(),
            uuid::Uuid::new_v4().simple()
        );
        let record = KeyRecord {
            id: format!("key_{}", &uuid::Uuid::new_v4().simple().to_string()[..12]),
            name: name.to_string(),
            sha256: hash_key(&secret),
            created_at_ms: now_ms(),
        };
        self.meta.create_key(&record).await?;
        self.keys.write().unwrap().insert(record.sha256.clone());
        Ok((record, secret))
    }

    pub async fn list_keys(&self) -> Result<Vec<KeyRecord>, ApiError> {
        Ok(self.meta.list_keys().await?)
    }

    pub async fn delete_key(&self, id: &str) -> Result<(), ApiError> {
        let keys = self.meta.list_keys().await?;
        self.meta.delete_key(id).await.map_err(|e| match e {
            store::StoreError::KeyNotFound(id) => ApiError::new(
                ErrorCode::KeyNotFound,
                format!("invoke key `{id}` does not exist; `nimbus keys ls` lists them"),
            ),
            other => other.into(),
        })?;
        if let Some(k) = keys.iter().find(|k| k.id == id) {
            self.keys.write().unwrap().remove(&k.sha256);
        }
        Ok(())
    }

    /// Whether `key` is a valid invoke key.
    pub fn key_is_valid(&self, key: &str) -> bool {
        self.keys.read().unwrap().contains(&hash_key(key))
    }

    pub fn pool(&self) -> &Arc<Pool> {
        &self.pool
    }

    /// Checks and stores an uploaded code archive.
    pub async fn upload_code(&self, zip: Vec<u8>) -> Result<(String, ArchiveInfo), ApiError> {
        Ok(self.code.accept(zip).await?)
    }

    pub async fn code_exists(&self, sha256: &str) -> Result<bool, ApiError> {
        Ok(self.blobs.exists(sha256).await?)
    }

    /// Creates or replaces a function after validating it against its code.
    pub async fn put_function(
        &self,
        spec: FunctionSpec,
        mode: PutMode,
    ) -> Result<(Function, PutOutcome), ApiError> {
        let errors = spec.validate();
        if !errors.is_empty() {
            let all: Vec<String> = errors.iter().map(ToString::to_string).collect();
            return Err(ApiError::invalid(all.join("; ")));
        }
        if !self.blobs.exists(&spec.code_sha256).await? {
            return Err(store::StoreError::BlobNotFound(spec.code_sha256.clone()).into());
        }
        let _write = self.writes.lock().await;
        // The routes as they would be after this write must not conflict.
        let mut functions = self.meta.list_functions().await?;
        functions.retain(|f| f.spec.name != spec.name);
        functions.push(Function {
            spec: spec.clone(),
            revision: 0,
            created_at_ms: 0,
            updated_at_ms: 0,
        });
        if let Err(conflict) = RouteTable::build(&functions) {
            return Err(ApiError::new(ErrorCode::RouteConflict, conflict));
        }
        let (function, outcome) = self.meta.put_function(&spec, mode, now_ms()).await?;
        if outcome != PutOutcome::Unchanged {
            self.forget(&spec.name, false);
            self.rebuild_routes().await?;
            self.provision(&spec.name).await?;
        }
        Ok((function, outcome))
    }

    pub async fn get_function(&self, name: &str) -> Result<Function, ApiError> {
        Ok(self.meta.get_function(name).await?)
    }

    pub async fn list_functions(&self) -> Result<Vec<Function>, ApiError> {
        Ok(self.meta.list_functions().await?)
    }

    pub async fn delete_function(&self, name: &str) -> Result<(), ApiError> {
        let _write = self.writes.lock().await;
        self.meta.delete_function(name).await?;
        self.forget(name, true);
        self.rebuild_routes().await
    }

    /// Drops the cached resolution and the instances of `name` (as their calls finish).
    fn forget(&self, name: &str, deleted: bool) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
        self.functions.write().unwrap().remove(name);
        self.pool.evict(name, deleted);
    }

    /// Tells the pool a function's latest configuration, so it keeps `min_instances` ready.
    async fn provision(&self, name: &str) -> Result<(), ApiError> {
        let resolved = self.resolve(name).await?;
        self.pool.provision(&resolved.instance);
        Ok(())
    }

    /// Recent lifecycle events of this node's instances, newest first.
    pub fn events(&self, function: Option<&str>, limit: usize) -> Vec<sandbox::LifecycleEvent> {
        self.pool.events(function, limit)
    }

    /// Invokes `name` synchronously with `event`. A function failure is in the returned
    /// record's outcome; `Err` means the platform could not run it.
    pub async fn invoke(
        &self,
        name: &str,
        event: Bytes,
        request_id: String,
    ) -> Result<(Arc<InvocationRecord>, Outcome), ApiError> {
        if event.len() > limits::PAYLOAD_BYTES_MAX {
            return Err(ApiError::new(
                ErrorCode::PayloadTooLarge,
                format!(
                    "the event is {} bytes; the limit is {}",
                    event.len(),
                    limits::PAYLOAD_BYTES_MAX
                ),
            ));
        }
        let resolved = self.resolve(name).await?;
        let started_at_ms = now_ms();
        // The invocation runs in its own task: a caller that disconnects does not cancel a
        // function midway (it completes, as on Lambda), and its instance stays warm.
        let pool = self.pool.clone();
        let id = request_id.clone();
        let run = resolved.clone();
        let invocation = tokio::spawn(async move { pool.invoke(&run.instance, &id, &event).await })
            .await
            .map_err(|e| {
                tracing::error!(error = %e, "invocation task failed");
                ApiError::new(
                    ErrorCode::Internal,
                    "the invocation task failed; the server log has details",
                )
            })??;
        let record = Arc::new(InvocationRecord {
            request_id,
            function: resolved.function.spec.name.clone(),
            started_at_ms,
            cold_start: invocation.cold_start,
            init_ms: invocation.init_ms,
            duration_ms: invocation.duration_ms,
            instance_id: invocation.instance_id,
            error: match &invocation.outcome {
                Outcome::Error(e) => Some(e.clone()),
                Outcome::Success { .. } => None,
            },
            logs: invocation.logs,
            timings: invocation.timings,
        });
        self.remember(record.clone());
        Ok((record, invocation.outcome))
    }

    /// A recent invocation of this node.
    pub fn recent_invocation(&self, request_id: &str) -> Option<Arc<InvocationRecord>> {
        self.recent.lock().unwrap().by_id.get(request_id).cloned()
    }

    pub(crate) fn remember(&self, record: Arc<InvocationRecord>) {
        let mut recent = self.recent.lock().unwrap();
        if recent.order.len() >= limits::RECENT_INVOCATIONS_MAX
            && let Some(old) = recent.order.pop_front()
        {
            recent.by_id.remove(&old);
        }
        recent.order.push_back(record.request_id.clone());
        recent.by_id.insert(record.request_id.clone(), record);
    }

    pub(crate) async fn resolve(&self, name: &str) -> Result<Arc<Resolved>, ApiError> {
        if let Some(r) = self.functions.read().unwrap().get(name) {
            return Ok(r.clone());
        }
        let epoch = self.epoch.load(Ordering::Acquire);
        let function = self.meta.get_function(name).await?;
        let code_dir = self.code.ensure(&function.spec.code_sha256).await?;
        let spec = &function.spec;
        let instance = InstanceConfig {
            function: spec.name.clone(),
            runtime: spec.runtime,
            handler: spec.handler.clone(),
            code_dir,
            env: spec.env.clone(),
            memory_mb: spec.memory_mb,
            timeout_ms: spec.timeout_ms,
            kind: spec.kind,
            command: spec.command.clone(),
            concurrency: spec.concurrency,
            initializer: spec.initializer.clone(),
            initializer_timeout_ms: spec.initializer_timeout_ms,
            pre_stop: spec.pre_stop.clone(),
            pre_stop_timeout_ms: spec.pre_stop_timeout_ms,
            policy: sandbox::Policy {
                min_instances: spec.min_instances,
                max_instances: spec.max_instances,
                idle_timeout_ms: spec.idle_timeout_ms,
                queue_timeout_ms: spec.queue_timeout_ms,
            },
        };
        let resolved = Arc::new(Resolved { function, instance });
        let mut cache = self.functions.write().unwrap();
        // Only cache what no write has overtaken since it was read.
        if self.epoch.load(Ordering::Acquire) == epoch {
            cache
                .entry(name.to_string())
                .or_insert_with(|| resolved.clone());
        }
        Ok(resolved)
    }
}

pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// The stored form of an invoke key.
fn hash_key(key: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(key.as_bytes()))
}
