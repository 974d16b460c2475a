//! The language runtimes of this node: which interpreter runs each, and the bootstrap shims
//! (shipped inside the binary) that turn an interpreter into a function instance.

use std::path::{Path, PathBuf};

use model::Runtime;
use sha2::{Digest, Sha256};

const PYTHON_SHIM: &str = include_str!("shims/bootstrap.py");
const NODE_SHIM: &str = include_str!("shims/bootstrap.js");

/// Interpreters and installed shims, resolved once at server start.
#[derive(Clone, Debug)]
pub struct Runtimes {
    python3: Option<PathBuf>,
    nodejs: Option<PathBuf>,
    shim_dir: PathBuf,
}

/// How to start one instance of a runtime.
#[derive(Clone)]
pub(crate) struct Launch {
    pub program: PathBuf,
    pub args: Vec<std::ffi::OsString>,
    /// The directory of the runtime shim the arguments name (none for custom runtimes).
    pub shim_dir: Option<PathBuf>,
}

impl Runtimes {
    /// Finds the interpreters and writes the shims under `dir/<hash>/`, a directory named by
    /// the shims' content so that servers of different versions never share one.
    ///
    /// `python3` and `node` may be given explicitly; otherwise the system interpreters are
    /// preferred over whatever comes first on PATH, because version-manager shims (pyenv) add
    /// tens of milliseconds to every cold start.
    pub fn install(
        dir: &Path,
        python3: Option<PathBuf>,
        nodejs: Option<PathBuf>,
    ) -> std::io::Result<Runtimes> {
        let mut hash = Sha256::new();
        hash.update(PYTHON_SHIM);
        hash.update(NODE_SHIM);
        let shim_dir = dir.join(&hex::encode(hash.finalize())[..16]);
        std::fs::create_dir_all(&shim_dir)?;
        for (name, text) in [("bootstrap.py", PYTHON_SHIM), ("bootstrap.js", NODE_SHIM)] {
            let path = shim_dir.join(name);
            if std::fs::read_to_string(&path).ok().as_deref() != Some(text) {
                // Not the pid: a server that is pid 1 of its namespace has the same one
                // at every start.
                let tmp = shim_dir.join(format!(".{name}.{:016x}", rand::random::<u64>()));
                std::fs::write(&tmp, text)?;
                std::fs::rename(&tmp, &path)?;
            }
        }
        Ok(Runtimes {
            python3: python3
                .or_else(|| find("python3", &["/usr/bin/python3", "/usr/local/bin/python3"])),
            nodejs: nodejs.or_else(|| find("node", &["/usr/bin/node", "/usr/local/bin/node"])),
            shim_dir,
        })
    }

    /// The interpreter of `runtime`, if this node has it.
    /// A custom runtime brings its own program and always has one.
    pub fn interpreter(&self, runtime: Runtime) -> Option<&Path> {
        match runtime {
            Runtime::Python3 => self.python3.as_deref(),
            Runtime::Nodejs => self.nodejs.as_deref(),
            Runtime::Custom => Some(Path::new("(the function's command)")),
            Runtime::Provided => Some(Path::new("(the code's bootstrap)")),
        }
    }

    pub(crate) fn launch(&self, config: &crate::InstanceConfig) -> Option<Launch> {
        let runtime = config.runtime;
        if runtime == Runtime::Provided && config.command.is_empty() {
            // Lambda's order: the code's `bootstrap`, else a layer's.
            let in_code = config.code_dir.join("bootstrap");
            let program = match &config.opt_dir {
                Some(opt) if !in_code.exists() && opt.join("bootstrap").exists() => {
                    opt.join("bootstrap")
                }
                _ => in_code,
            };
            return Some(Launch {
                program,
                args: Vec::new(),
                shim_dir: None,
            });
        }
        if !runtime.has_shim() {
            let (program, args) = config.command.split_first()?;
            return Some(Launch {
                program: crate::instance::resolve_program(&config.code_dir, program),
                args: args.iter().map(Into::into).collect(),
                shim_dir: None,
            });
        }
        self.interpreter_launch(runtime)
    }

    /// How to start `runtime`'s interpreter with its shim; none for custom runtimes, which
    /// bring their own program.
    pub(crate) fn interpreter_launch(&self, runtime: Runtime) -> Option<Launch> {
        if !runtime.has_shim() {
            return None;
        }
        let program = self.interpreter(runtime)?.to_path_buf();
        let args = match runtime {
            // -I: ignore PYTHON* variables and the user site; -B: never write .pyc files
            // into the (read-only, shared) code tree; faulthandler prints a traceback on a
            // segfault, which ends up in the crash report.
            Runtime::Python3 => vec![
                "-I".into(),
                "-B".into(),
                "-X".into(),
                "faulthandler".into(),
                self.shim_dir.join("bootstrap.py").into(),
            ],
            Runtime::Nodejs => vec![self.shim_dir.join("bootstrap.js").into()],
            Runtime::Custom | Runtime::Provided => unreachable!("handled above"),
        };
        Some(Launch {
            program,
            args,
            shim_dir: Some(self.shim_dir.clone()),
        })
    }
}

fn find(name: &str, preferred: &[&str]) -> Option<PathBuf> {
    let is_exec = |p: &Path| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    preferred
        .iter()
        .map(PathBuf::from)
        .find(|p| is_exec(p))
        .or_else(|| {
            std::env::split_paths(&std::env::var_os("PATH")?)
                .map(|d| d.join(name))
                .find(|p| is_exec(p))
        })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use model::Runtime;

    use crate::{FunctionError, InstanceConfig, Outcome, Pool, PoolConfig, Runtimes};

    #[test]
    fn the_shims_refuse_results_past_the_platforms_payload_limit() {
        let limit = model::limits::PAYLOAD_BYTES_MAX.to_string();
        assert!(
            super::PYTHON_SHIM.contains(&format!("_RESPONSE_MAX_BYTES = {limit}\n")),
            "bootstrap.py's limit differs from PAYLOAD_BYTES_MAX ({limit})"
        );
        assert!(
            super::NODE_SHIM.contains(&format!("const RESPONSE_MAX_BYTES = {limit};")),
            "bootstrap.js's limit differs from PAYLOAD_BYTES_MAX ({limit})"
        );
    }

    /// A pool on this machine's interpreters, with `files` as the function's code.
    fn setup(files: &[(&str, &str)]) -> (tempfile::TempDir, Arc<Pool>) {
        let tmp = tempfile::tempdir().unwrap();
        let code = tmp.path().join("code");
        for (name, text) in files {
            let path = code.join(name);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        }
        std::fs::create_dir_all(&code).unwrap();
        let runtimes = Runtimes::install(&tmp.path().join("rt"), None, None).unwrap();
        (tmp, Pool::new(runtimes, PoolConfig::default()))
    }

    fn node(tmp: &tempfile::TempDir, handler: &str) -> InstanceConfig {
        InstanceConfig {
            timeout_ms: 2000,
            ..InstanceConfig::for_test("f", Runtime::Nodejs, handler, tmp.path().join("code"))
        }
    }

    /// The load error of `handler`: the outcome of calling it, which must be an error.
    async fn load_error(pool: &Arc<Pool>, tmp: &tempfile::TempDir, handler: &str) -> FunctionError {
        let inv = pool.invoke(&node(tmp, handler), "r", b"{}").await.unwrap();
        match inv.outcome {
            Outcome::Error(e) => e,
            other => panic!("{handler}: expected a load error, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn node_load_errors_name_the_missing_module_or_the_place_of_the_syntax_error() {
        let (tmp, pool) = setup(&[
            (
                "index.js",
                "const _ = require('lodash');\nexports.handler = async () => _.VERSION;\n",
            ),
            (
                "chain.js",
                "require('./lib/db');\nexports.handler = async () => 1;\n",
            ),
            ("lib/db.js", "module.exports = require('pg');\n"),
            (
                "broken.js",
                "exports.handler = async () => {\n  return {;\n};\n",
            ),
            (
                "parses.js",
                "const config = JSON.parse('{');\nexports.handler = async () => config;\n",
            ),
        ]);

        // A dependency without node_modules: the message names it and the file that
        // required it, not the handler module as if that were missing.
        let e = load_error(&pool, &tmp, "index.handler").await;
        assert_eq!(e.error_type, "Runtime.ImportModuleError", "{e:?}");
        assert!(
            e.error_message.contains("Cannot find module 'lodash'"),
            "{e:?}"
        );
        assert!(e.error_message.contains("required by index.js"), "{e:?}");
        assert!(
            !e.error_message.contains("Cannot find module 'index'"),
            "{e:?}"
        );

        // A dependency of a dependency: the chain of the user's files, innermost first.
        let e = load_error(&pool, &tmp, "chain.handler").await;
        assert_eq!(e.error_type, "Runtime.ImportModuleError", "{e:?}");
        assert!(
            e.error_message
                .contains("Cannot find module 'pg' (required by lib/db.js, required by chain.js)"),
            "{e:?}"
        );

        // The handler's own file missing names the handler module.
        let e = load_error(&pool, &tmp, "nope.handler").await;
        assert_eq!(e.error_type, "Runtime.ImportModuleError", "{e:?}");
        assert!(
            e.error_message.contains("Cannot find module 'nope'"),
            "{e:?}"
        );

        // A syntax error names the file, line and column.
        let e = load_error(&pool, &tmp, "broken.handler").await;
        assert_eq!(e.error_type, "Runtime.UserCodeSyntaxError", "{e:?}");
        assert!(e.error_message.contains("Unexpected token ';'"), "{e:?}");
        assert!(e.error_message.contains("(broken.js:2:11)"), "{e:?}");

        // A SyntaxError thrown by code run at load time names the line that threw it.
        let e = load_error(&pool, &tmp, "parses.handler").await;
        assert_eq!(e.error_type, "Runtime.UserCodeSyntaxError", "{e:?}");
        assert!(e.error_message.contains("(parses.js:1:"), "{e:?}");

        assert_eq!(pool.live_instances(), 0);
    }
}
