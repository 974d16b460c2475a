//! Hard limits: every size, count and duration the platform accepts has a bound here.
//!
//! The numbers follow AWS Lambda where a user would compare (payload 6 MB, unpacked code
//! 250 MB, env 4 KB, timeout 15 min) so that functions moved from there fit here.

/// Largest synchronous invocation payload, request or response (Lambda's 6 MB).
pub const PAYLOAD_BYTES_MAX: usize = 6 * 1024 * 1024;

/// Largest code archive accepted for upload, compressed.
pub const ARCHIVE_BYTES_MAX: usize = 64 * 1024 * 1024;

/// Default bound on the unpacked size of a code archive; the server can lower or raise it.
pub const UNPACKED_BYTES_MAX_DEFAULT: u64 = 250 * 1024 * 1024;

/// Most entries in one code archive; bounds extraction work and inode use.
pub const ARCHIVE_ENTRIES_MAX: usize = 20_000;

/// Function names: 1..=64 chars of `[A-Za-z0-9_-]`, starting with a letter.
pub const NAME_LEN_MAX: usize = 64;

/// Handler strings such as `main.handler`.
pub const HANDLER_LEN_MAX: usize = 128;

/// Free-text description of a function.
pub const DESCRIPTION_LEN_MAX: usize = 256;

/// Memory a function may ask for; the sandbox enforces it with cgroups (issue 5).
pub const MEMORY_MB_MIN: u32 = 64;
pub const MEMORY_MB_MAX: u32 = 10_240;
pub const MEMORY_MB_DEFAULT: u32 = 128;

/// Wall-clock limit of one invocation.
pub const TIMEOUT_MS_MIN: u32 = 1;
pub const TIMEOUT_MS_MAX: u32 = 900_000;
pub const TIMEOUT_MS_DEFAULT: u32 = 3_000;

/// Total size of a function's environment (keys + values), as on Lambda.
pub const ENV_BYTES_MAX: usize = 4 * 1024;

/// Most environment variables of one function.
pub const ENV_VARS_MAX: usize = 64;

/// How long a new instance may take to load its code before it counts as failed.
pub const INSTANCE_START_MS_MAX: u64 = 10_000;

/// Log bytes kept per invocation in memory; the rest is dropped and counted.
pub const INVOCATION_LOG_BYTES_MAX: usize = 256 * 1024;

/// Invocations whose record and logs are kept in memory on a node (the oldest are dropped
/// first); with `INVOCATION_LOG_BYTES_MAX` this bounds that memory to 64 MB.
pub const RECENT_INVOCATIONS_MAX: usize = 256;

/// Largest single frame on the instance channel: a payload plus its metadata.
pub const FRAME_BYTES_MAX: usize = PAYLOAD_BYTES_MAX + 64 * 1024;
