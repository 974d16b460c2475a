//! Persistence for Nimbus: function metadata, code blobs, the unpacked-code cache, the
//! asynchronous queue, telemetry (invocation records, logs, events), and the object
//! store's metadata (`objects`) and bytes (`object_bytes`, on the local disk `object_files`).
//!
//! Each concern sits behind a trait (`MetaStore`, `BlobStore`, `ObjectBytes`) with the embedded backend
//! (SQLite in WAL mode, the local filesystem) implemented here; the cluster backends
//! (PostgreSQL, S3) implement the same traits. Code archives are checked by `archive` before
//! anything is stored, so a stored blob is always safe to unpack.

pub mod archive;
mod blobs;
mod cluster;
mod code_cache;
mod error;
pub mod flows;
mod gc;
mod meta;
pub mod object_bytes;
pub mod object_files;
pub mod objects;
mod queue;
pub mod telemetry;
#[cfg(test)]
mod testfs;
#[cfg(any(test, feature = "testkit"))]
pub mod testkit;

pub use archive::{ArchiveError, ArchiveInfo};
pub use blobs::{BlobInfo, BlobStore, FsBlobStore, sha256_hex};
pub use cluster::{Change, ChangeFeed, ChangesAfter, ClusterStore, NodeRecord};
pub use code_cache::{CodeCache, layers_id, tree_id};
pub use error::{DatabaseFault, StoreError};
pub use flows::{Created, ExecutionRecord, FlowRecord, FlowStore, StepCommit, Stepped, WorkItem};
pub use gc::{CodeCollector, CollectReport};
pub use meta::{
    AwsKeyRecord, BuildClaim, KeyRecord, MetaStore, PutMode, PutOutcome, SqliteStore,
    TimerProgress, TimerState,
};
pub use object_bytes::{BlobSink, ByteStream, ObjectBytes};
pub use object_files::ObjectFiles;
pub use objects::{ObjectError, ObjectMeta};
pub use queue::{Accepted, AsyncQueue, AsyncRecord, AsyncStatus, Finish, Lease, NewEvent};
pub use telemetry::{SqliteTelemetry, TelemetryStore};

/// A random name part for temporary files and directories. Not the pid: a server restarted
/// as pid 1 of a fresh namespace has the same pid every time, and would meet its previous
/// life's leftovers under the same names.
pub(crate) fn random_suffix() -> String {
    format!("{:016x}", rand::random::<u64>())
}
