//! The `nimbus` binary: `nimbus server` runs the platform; every other subcommand is a
//! client of its control API.

mod client;
mod commands;
mod init;
mod manifest;
mod observe;
mod package;
mod server;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

/// Where a server listens, and a client looks for it, unless told otherwise.
pub const DEFAULT_ENDPOINT: &str = "http://127.0.0.1:9700";
pub const DEFAULT_LISTEN: &str = "127.0.0.1:9700";

/// Nimbus: function compute in one binary. `nimbus server` runs the platform; the other
/// commands deploy, invoke and manage functions on it.
#[derive(Parser)]
#[command(name = "nimbus", version)]
pub struct Cli {
    /// URL of the Nimbus server.
    #[arg(long, global = true, env = "NIMBUS_ENDPOINT", default_value = DEFAULT_ENDPOINT)]
    pub endpoint: String,
    /// Bearer token; defaults to the admin token in the data dir when the server is local.
    #[arg(long, global = true, env = "NIMBUS_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Data directory of the server (the client reads `admin.token` from it).
    #[arg(long, global = true, env = "NIMBUS_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Output format of the read commands.
    #[arg(long, short, global = true, value_enum, default_value_t = Output::Text)]
    pub output: Output,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Text,
    Json,
}

#[derive(Subcommand)]
pub enum Command {
    /// Run the Nimbus server (control API and function instances).
    Server(server::ServerArgs),
    /// Start a project in DIR from a template: nimbus.yaml, the code, a test.
    Init {
        /// Directory to write the project into (made if missing).
        #[arg(default_value = ".")]
        dir: PathBuf,
        /// The template (see --list).
        #[arg(long, short, default_value = "python")]
        template: String,
        /// The function's name; the directory's name by default.
        #[arg(long)]
        name: Option<String>,
        /// List the templates and write nothing.
        #[arg(long)]
        list: bool,
    },
    /// Deploy every function of DIR/nimbus.yaml (create or update).
    Deploy {
        /// Project directory holding nimbus.yaml.
        #[arg(default_value = ".")]
        dir: PathBuf,
        /// Also publish each function as a version and move the aliases its manifest
        /// declares to it.
        #[arg(long)]
        publish: bool,
        /// Skip loading each changed function's handler once before it goes live (the
        /// check fails the deploy on a missing module or handler or a syntax error).
        #[arg(long)]
        no_check: bool,
    },
    /// Publish a function's current code and configuration as a new, immutable version.
    Publish {
        name: String,
        #[arg(long, default_value = "")]
        description: String,
    },
    /// List a function's versions, or show one.
    Versions {
        name: String,
        /// Show this version's full configuration.
        version: Option<u32>,
    },
    /// Delete a version (refused while an alias or route points at it).
    #[command(name = "version-rm")]
    VersionRm { name: String, version: u32 },
    /// Manage aliases: names that point at a version, with an optional canary.
    #[command(subcommand)]
    Alias(AliasCommand),
    /// Invoke a function (`NAME`, `NAME:VERSION` or `NAME:ALIAS`) and print its result.
    Invoke {
        name: String,
        /// Through an alias with a canary, the same key always gets the same version.
        #[arg(long)]
        affinity: Option<String>,
        /// Queue the event durably and return at once with its request id
        /// (`nimbus invocation show ID` tells how it went).
        #[arg(long = "async")]
        is_async: bool,
        /// With --async: submissions with the same key run once.
        #[arg(long, requires = "is_async")]
        idempotency_key: Option<String>,
        /// The event, usually JSON.
        #[arg(long, short, conflicts_with = "data_file")]
        data: Option<String>,
        /// Read the event from a file (`-` for stdin).
        #[arg(long)]
        data_file: Option<PathBuf>,
        /// Also print the invocation's log lines (on stderr).
        #[arg(long)]
        logs: bool,
    },
    /// List functions.
    Ls,
    /// Show one function.
    Describe { name: String },
    /// Delete a function.
    Rm { name: String },
    /// Show lifecycle events (instances started and stopped, throttles, deploys, releases).
    Events {
        /// Only this function's events.
        function: Option<String>,
        /// Only this kind (started, stopped, throttled, created, updated, deleted,
        /// published, alias_moved, rolled_back).
        #[arg(long)]
        event: Option<String>,
        /// From this time: 15m, 2h, 7d (before now), RFC 3339, or Unix ms.
        #[arg(long)]
        since: Option<String>,
        /// Only events whose reason contains this text.
        #[arg(long)]
        grep: Option<String>,
        #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=1000))]
        limit: u32,
    },
    /// Show a function's log lines (oldest first, the newest `--limit`); `--follow` streams
    /// new ones.
    Logs {
        function: String,
        /// From this time: 15m, 2h, 7d (before now), RFC 3339, or Unix ms.
        #[arg(long)]
        since: Option<String>,
        /// Before this time, in the same forms.
        #[arg(long)]
        until: Option<String>,
        /// This level and above: debug, info, warn, error, fatal.
        #[arg(long)]
        level: Option<String>,
        /// Lines containing this text.
        #[arg(long)]
        grep: Option<String>,
        /// Lines matching this regular expression (`(?i)` for any case).
        #[arg(long)]
        regex: Option<String>,
        /// Only this call's lines.
        #[arg(long)]
        request_id: Option<String>,
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=1000))]
        limit: u32,
        /// Older lines than this cursor (printed after a full page).
        #[arg(long)]
        before: Option<i64>,
        /// Keep printing new lines as they are written.
        #[arg(long, short)]
        follow: bool,
    },
    /// Show a function's statistics: totals and sparklines over a window.
    Stats {
        function: String,
        #[arg(long, default_value = "1h")]
        window: String,
        #[arg(long, default_value = "1m")]
        step: String,
    },
    /// Show metered usage (requests, GB-seconds, provisioned time) and an estimated cost.
    Usage {
        /// From this time: 30d, 12h (before now), RFC 3339, or Unix ms.
        #[arg(long, default_value = "30d")]
        since: String,
        #[arg(long)]
        until: Option<String>,
        /// Group by `function` or `day`.
        #[arg(long, default_value = "function", value_parser = ["function", "day"])]
        by: String,
    },
    /// Show an invocation: an asynchronous one's status, attempts and result or error.
    Invocation {
        #[command(subcommand)]
        cmd: InvocationCommand,
    },
    /// The dead-letter queue of asynchronous invocations that failed for good.
    #[command(subcommand)]
    Dlq(DlqCommand),
    /// Manage invoke keys for HTTP routes with `auth: key`.
    #[command(subcommand)]
    Keys(KeysCommand),
}

#[derive(Subcommand)]
pub enum InvocationCommand {
    /// Show one invocation by request id.
    Show { id: String },
    /// List a function's invocation records, newest first.
    Ls {
        function: String,
        #[arg(long)]
        since: Option<String>,
        /// Only the calls of this W3C trace (the 32 hex digits of a traceparent).
        #[arg(long)]
        trace_id: Option<String>,
        #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=1000))]
        limit: u32,
    },
}

#[derive(Subcommand)]
pub enum DlqCommand {
    /// List dead letters, oldest first.
    Ls {
        /// Only this function's.
        function: Option<String>,
    },
    /// Show one dead letter (its event, attempts and last error).
    Show { id: String },
    /// Queue dead letters again: by id, or all of a function's.
    Redrive {
        ids: Vec<String>,
        #[arg(long, conflicts_with = "ids")]
        function: Option<String>,
    },
}

#[derive(Subcommand)]
pub enum AliasCommand {
    /// Point ALIAS of NAME at VERSION; `--canary 3=10` sends 10% of calls to version 3.
    Set {
        name: String,
        alias: String,
        version: u32,
        /// VERSION=PERCENT: a second version and its share of calls.
        #[arg(long)]
        canary: Option<String>,
        /// Roll the canary back when more than this share of its calls fail (0 to 1).
        #[arg(long)]
        max_error_rate: Option<f64>,
        /// The window the error rate is measured over.
        #[arg(long, default_value_t = 60_000)]
        window_ms: u32,
        /// Calls in the window before the error rate counts.
        #[arg(long, default_value_t = 20)]
        min_calls: u32,
    },
    /// List a function's aliases.
    Ls { name: String },
    /// Delete an alias.
    Rm { name: String, alias: String },
}

#[derive(Subcommand)]
pub enum KeysCommand {
    /// Create a key; it is printed once and cannot be shown again.
    Create {
        /// What the key is for.
        #[arg(default_value = "default")]
        name: String,
    },
    /// List keys (without the keys themselves).
    Ls,
    /// Delete a key by id; routes refuse it at once.
    Rm { id: String },
}

/// The data dir when none is given: the user's data directory, else `./.nimbus`.
pub fn default_data_dir() -> PathBuf {
    dirs::data_dir()
        .map(|d| d.join("nimbus"))
        .unwrap_or_else(|| PathBuf::from(".nimbus"))
}

fn main() -> ExitCode {
    // The sandbox helper runs before anything else (no threads, no async runtime): the
    // server starts each jailed instance through `nimbus __jail`.
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if args.get(1).is_some_and(|a| a == sandbox::JAIL_HELPER_ARG) {
        sandbox::jail::helper_main(&args[2..]);
    }
    let cli = Cli::parse();
    // reqwest is built without a default crypto provider (see DEPENDENCIES.md): pick ring.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Server(ref args) => server::run(args, cli.data_dir.clone()).await,
            _ => commands::run(cli).await,
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
