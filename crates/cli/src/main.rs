//! The `nimbus` binary: `nimbus server` runs the platform; every other subcommand is a
//! client of its control API.

mod client;
mod commands;
mod manifest;
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
    /// Deploy every function of DIR/nimbus.yaml (create or update).
    Deploy {
        /// Project directory holding nimbus.yaml.
        #[arg(default_value = ".")]
        dir: PathBuf,
    },
    /// Invoke a function synchronously and print its result.
    Invoke {
        name: String,
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
    /// Show lifecycle events of instances (started, stopped, throttled), newest first.
    Events {
        /// Only this function's events.
        function: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    /// Manage invoke keys for HTTP routes with `auth: key`.
    #[command(subcommand)]
    Keys(KeysCommand),
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
