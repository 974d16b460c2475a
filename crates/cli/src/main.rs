//! The `nimbus` binary: `nimbus server` runs the platform; every other subcommand is a
//! client of its control API.

mod bucket;
mod client;
mod commands;
mod describe;
mod dev;
mod flow;
mod init;
mod local;
mod manifest;
mod observe;
mod package;
mod server;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};

/// Where a server listens, and a client looks for it, unless told otherwise.
pub const DEFAULT_ENDPOINT: &str = "http://127.0.0.1:9700";
pub const DEFAULT_LISTEN: &str = "127.0.0.1:9700";
/// Where the S3 API listens unless told otherwise.
pub const DEFAULT_S3_LISTEN: &str = "127.0.0.1:9702";

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
    /// Output format: text, or json (one JSON object per command).
    #[arg(long, short, global = true, value_enum, default_value_t = Output::Text)]
    pub output: Output,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum BuildAt {
    Server,
    Local,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Text,
    Json,
}

#[derive(Subcommand)]
pub enum LocalCommand {
    /// Run FUNCTION of the project once, as the server would (same shim, events, context,
    /// environment, dependency build), and print its logs and result.
    Invoke {
        function: String,
        /// The project directory (or its nimbus.yaml).
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        /// The event (usually JSON); with --route, the request body.
        #[arg(long, short, conflicts_with = "data_file")]
        data: Option<String>,
        /// Read the event from a file (`-` for stdin).
        #[arg(long)]
        data_file: Option<PathBuf>,
        /// Send an HTTP request through the function's routes instead: `"GET /items/7"`.
        #[arg(long)]
        route: Option<String>,
    },
}

#[derive(Subcommand)]
pub enum Command {
    /// Run the Nimbus server (control API and function instances).
    Server(Box<server::ServerArgs>),
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
        /// Project directory holding nimbus.yaml (or nimbus.yml), or the manifest itself.
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
        /// Where dependencies are installed: on the server (default), or here, with this
        /// machine's interpreter and package index, then uploaded.
        #[arg(long, value_enum, default_value_t = BuildAt::Server)]
        build: BuildAt,
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
    /// Invoke a function (`NAME`, `NAME:VERSION` or `NAME:ALIAS`) and print its result;
    /// a failed call exits 1.
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
    /// Deploy the project to a local server (started on a temporary data dir if none
    /// answers), redeploy it on every change, and follow its logs, until Ctrl-C.
    Dev {
        /// Project directory holding nimbus.yaml.
        #[arg(default_value = ".")]
        dir: PathBuf,
    },
    /// Run a function of a project on this machine, with no server.
    #[command(subcommand)]
    Local(LocalCommand),
    /// List functions.
    Ls,
    /// Show one function: its settings in human units, routes and URL, the names of its
    /// environment variables (never their values), its versions and aliases.
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
        /// Older lines than this cursor (printed after a full page; in a cluster it names
        /// every node's place).
        #[arg(long)]
        before: Option<String>,
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
    /// Triggers and their state; pause and resume timers, event rules and routes.
    #[command(subcommand)]
    Triggers(TriggersCommand),
    /// The object store's buckets: make, list, remove, serve as a website (objects go
    /// through the S3 tools).
    #[command(subcommand)]
    Bucket(BucketCommand),
    /// Workflows (Amazon States Language, deployed from `flows:` in nimbus.yaml): start
    /// and follow executions, answer the tokens of `.waitForTaskToken` tasks.
    #[command(subcommand)]
    Flow(FlowCommand),
    /// The nodes sharing this server's store (one without a cluster).
    #[command(subcommand)]
    Nodes(NodesCommand),
}

#[derive(Subcommand)]
pub enum NodesCommand {
    /// List nodes: id, address, alive or dead, when started and last seen.
    Ls,
}

/// The statuses of an execution, as the API spells them.
const EXECUTION_STATUSES: [&str; 5] = ["RUNNING", "SUCCEEDED", "FAILED", "TIMED_OUT", "ABORTED"];

#[derive(Subcommand)]
pub enum FlowCommand {
    /// List flows.
    Ls,
    /// Delete a flow.
    Rm { name: String },
    /// Start an execution of FLOW and print its id; with --sync, wait for its end and
    /// print its output (a run that does not succeed exits 1).
    Start {
        flow: String,
        /// The execution's input, JSON; `{}` when not given.
        #[arg(long, conflicts_with = "input_file")]
        input: Option<String>,
        /// Read the input from a file (`-` for stdin).
        #[arg(long)]
        input_file: Option<std::path::PathBuf>,
        /// The execution's name: starting the same name with the same input again answers
        /// the execution already started.
        #[arg(long)]
        name: Option<String>,
        /// Wait for the execution to end (at most --wait-ms, else the server's bound).
        #[arg(long)]
        sync: bool,
        /// With --sync: how long to wait before answering with the execution still running.
        #[arg(long, requires = "sync")]
        wait_ms: Option<u64>,
    },
    /// List a flow's executions.
    Executions {
        flow: String,
        /// Only executions with this status.
        #[arg(long, value_parser = EXECUTION_STATUSES, ignore_case = true)]
        status: Option<String>,
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1000))]
        limit: Option<u32>,
    },
    /// Show an execution: status, input, output or error.
    Describe { id: String },
    /// Show an execution's events (Step Functions' history: states entered and exited,
    /// tasks, retries, failures).
    History { id: String },
    /// Stop a running execution (it ends ABORTED).
    Stop {
        id: String,
        #[arg(long)]
        error: Option<String>,
        #[arg(long)]
        cause: Option<String>,
    },
    /// Complete a `.waitForTaskToken` task with its output.
    SendSuccess {
        /// The task token (named apart from the global `--token`, the bearer token).
        #[arg(value_name = "TASK_TOKEN")]
        task_token: String,
        /// The task's output, JSON (`--output` is the command's output format).
        #[arg(long, default_value = "{}")]
        task_output: String,
    },
    /// Fail a `.waitForTaskToken` task (its Retry and Catch apply).
    SendFailure {
        #[arg(value_name = "TASK_TOKEN")]
        task_token: String,
        #[arg(long)]
        error: Option<String>,
        #[arg(long)]
        cause: Option<String>,
    },
    /// Tell a waiting task that its worker is still at it (resets its HeartbeatSeconds).
    Heartbeat {
        #[arg(value_name = "TASK_TOKEN")]
        task_token: String,
    },
}

#[derive(Subcommand)]
pub enum BucketCommand {
    /// Make a bucket (S3's names: 3 to 63 of a-z, 0-9, `.` and `-`).
    Create { name: String },
    /// List buckets, or (with NAME) a bucket's objects.
    Ls {
        name: Option<String>,
        /// Only keys that begin with this.
        #[arg(long, requires = "name")]
        prefix: Option<String>,
    },
    /// Remove an empty bucket; `--force` deletes its objects first.
    Rm {
        name: String,
        #[arg(long)]
        force: bool,
    },
    /// Serve the bucket as a static website at `NAME.<--website-domain>`, or stop (`--off`).
    Website {
        name: String,
        /// Served for `/` and `dir/` (S3's index document suffix).
        #[arg(long, required_unless_present = "off", conflicts_with = "off")]
        index: Option<String>,
        /// Served with status 404 for a key that does not exist.
        #[arg(long, requires = "index")]
        error: Option<String>,
        #[arg(long)]
        off: bool,
    },
}

#[derive(Subcommand)]
pub enum TriggersCommand {
    /// List triggers (of one function, or all): kind, name, state, last and next fire.
    Ls { function: Option<String> },
    /// Pause a timer or event rule (by name) or a route (by path): it fires, takes or
    /// serves nothing until resumed, across restarts; a paused route answers 503.
    Pause { function: String, name: String },
    /// Resume a trigger from now; what a timer missed while paused does not fire.
    Resume { function: String, name: String },
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
        /// Older records than this cursor (printed after a full page).
        #[arg(long)]
        before: Option<String>,
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
        /// An AWS access key (id and secret) for the Lambda API and the AWS SDKs and CLI,
        /// instead of an invoke key for routes.
        #[arg(long)]
        aws: bool,
        /// What an access key may do: `admin` (everything) or `invoke` (invocations only).
        #[arg(long, requires = "aws", value_parser = ["admin", "invoke"])]
        scope: Option<String>,
    },
    /// List keys (without the keys themselves).
    Ls,
    /// Delete a key by id (or access key id); it is refused at once.
    Rm { id: String },
}

/// The client's options, which mean nothing to `nimbus server` and stay out of its help.
const CLIENT_ONLY_ARGS: [&str; 3] = ["endpoint", "token", "output"];

/// The command line as clap parses it, with two adjustments the derive cannot express: an
/// environment variable set to the empty string counts as unset (`NIMBUS_TOKEN=` in a
/// script means "no token", not "the empty token"), and `nimbus server --help` shows the
/// server's options only. `is_empty_env` tells whether a variable is set but empty.
fn cli_command(is_empty_env: &dyn Fn(&std::ffi::OsStr) -> bool) -> clap::Command {
    fn unset_empty(
        cmd: clap::Command,
        is_empty_env: &dyn Fn(&std::ffi::OsStr) -> bool,
    ) -> clap::Command {
        let subcommands: Vec<String> = cmd
            .get_subcommands()
            .map(|s| s.get_name().to_string())
            .collect();
        let mut cmd = cmd.mut_args(|a| {
            if a.get_env().is_some_and(is_empty_env) {
                a.env(None)
            } else {
                a
            }
        });
        for name in subcommands {
            cmd = cmd.mut_subcommand(name, |s| unset_empty(s, is_empty_env));
        }
        cmd
    }
    let cmd = unset_empty(Cli::command(), is_empty_env);
    // Building copies each global option into every subcommand that lacks one of that id,
    // so giving the server hidden copies of its own keeps the visible ones out. (Hiding
    // them after a build is not possible: clap's index of option names goes stale.)
    let hidden: Vec<clap::Arg> = cmd
        .get_arguments()
        .filter(|a| CLIENT_ONLY_ARGS.contains(&a.get_id().as_str()))
        .map(|a| a.clone().global(false).hide(true))
        .collect();
    cmd.mut_subcommand("server", |s| s.args(hidden))
}

/// Parses the process's arguments (exiting with clap's message when they are wrong).
fn parse_cli() -> Cli {
    let is_empty_env =
        |name: &std::ffi::OsStr| std::env::var_os(name).is_some_and(|v| v.is_empty());
    let matches = cli_command(&is_empty_env).get_matches();
    Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
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
    let cli = parse_cli();
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
            Command::Local(ref local) => commands::local(local).await,
            // Without a token for the default server, dev starts one of its own.
            Command::Dev { ref dir } => dev::run(client::Client::new(&cli).ok(), dir).await,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn help_of(cmd: &mut clap::Command, path: &[&str]) -> String {
        let mut cmd = cmd.clone();
        // Global options reach the subcommands when the command is built.
        cmd.build();
        for name in path {
            cmd = cmd.find_subcommand(name).unwrap().clone();
        }
        cmd.render_long_help().to_string()
    }

    #[test]
    fn the_server_help_shows_server_options_only() {
        let mut cmd = cli_command(&|_| false);
        let server = help_of(&mut cmd, &["server"]);
        assert!(server.contains("--listen"), "{server}");
        assert!(server.contains("--data-dir"), "{server}");
        for client in ["--endpoint", "--token", "--output"] {
            assert!(!server.contains(client), "{client} in {server}");
        }
        // The client commands keep them, before or after the subcommand.
        let ls = help_of(&mut cmd, &["ls"]);
        assert!(ls.contains("--endpoint") && ls.contains("--output"), "{ls}");
        let parse = |args: &[&str]| {
            let matches = cli_command(&|_| false).try_get_matches_from(args).unwrap();
            Cli::from_arg_matches(&matches).unwrap()
        };
        let cli = parse(&["nimbus", "ls", "-o", "json", "--endpoint", "http://x"]);
        assert_eq!(
            (cli.output, cli.endpoint.as_str()),
            (Output::Json, "http://x")
        );
        let cli = parse(&[
            "nimbus",
            "server",
            "--data-dir",
            "/d",
            "--listen",
            "127.0.0.1:1",
        ]);
        assert!(matches!(cli.command, Command::Server(_)));
        assert_eq!(cli.data_dir, Some(PathBuf::from("/d")));
        let err = cli_command(&|_| false)
            .try_get_matches_from(["nimbus", "server", "-h"])
            .unwrap_err();
        assert_eq!(err.kind(), clap::error::ErrorKind::DisplayHelp);
        assert!(!err.to_string().contains("--endpoint"), "{err}");
    }

    #[test]
    fn an_empty_environment_variable_is_unset() {
        let empty = |name: &std::ffi::OsStr| name == "NIMBUS_TOKEN" || name == "NIMBUS_LISTEN";
        let cmd = cli_command(&empty);
        let token = cmd.get_arguments().find(|a| a.get_id() == "token").unwrap();
        assert_eq!(token.get_env(), None);
        let endpoint = cmd
            .get_arguments()
            .find(|a| a.get_id() == "endpoint")
            .unwrap();
        assert_eq!(
            endpoint.get_env(),
            Some(std::ffi::OsStr::new("NIMBUS_ENDPOINT"))
        );
        let server = cmd.find_subcommand("server").unwrap();
        let listen = server
            .get_arguments()
            .find(|a| a.get_id() == "listen")
            .unwrap();
        assert_eq!(listen.get_env(), None);
        let token = server
            .get_arguments()
            .find(|a| a.get_id() == "token")
            .unwrap();
        assert_eq!(token.get_env(), None);
    }
}
