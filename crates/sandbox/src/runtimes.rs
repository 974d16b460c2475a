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
                let tmp = shim_dir.join(format!(".{name}.{}", std::process::id()));
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
        }
    }

    pub(crate) fn launch(&self, config: &crate::InstanceConfig) -> Option<Launch> {
        let runtime = config.runtime;
        if runtime == Runtime::Custom {
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
        if runtime == Runtime::Custom {
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
            Runtime::Custom => unreachable!("handled above"),
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
