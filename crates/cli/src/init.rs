//! `nimbus init`: a new project from a template embedded in the binary.
//!
//! The templates live in `crates/cli/templates/<name>/` and are compiled in with
//! `include_str!`, so `init` needs no network and no installation beyond the binary. Each
//! writes a `nimbus.yaml`, the code, its dependency file if it has dependencies, a test
//! that runs without a server, and a `.nimbusignore` that keeps the tests from shipping.
//! `{{name}}` in any file becomes the function's name.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

/// A project template: what it is for and the files it writes.
#[derive(Debug)]
pub struct Template {
    pub name: &'static str,
    pub about: &'static str,
    /// Web templates answer on a route and their function URL; the others are invoked.
    pub web: bool,
    /// The command that runs the template's tests on the user's machine.
    pub test_command: &'static str,
    pub files: &'static [(&'static str, &'static str)],
}

/// `(path, contents)` of a template's file, embedded at build time.
macro_rules! embed {
    ($template:literal, $file:literal) => {
        (
            $file,
            include_str!(concat!("../templates/", $template, "/", $file)),
        )
    };
}

/// Every template, in the order `--list` shows them.
pub const TEMPLATES: &[Template] = &[
    Template {
        name: "python",
        about: "a Python function: def handler(event, context)",
        web: false,
        test_command: "python3 -m pytest",
        files: &[
            embed!("python", "nimbus.yaml"),
            embed!("python", "main.py"),
            embed!("python", "test_main.py"),
            embed!("python", ".nimbusignore"),
        ],
    },
    Template {
        name: "node",
        about: "a Node.js function: exports.handler = async (event, context) => ...",
        web: false,
        test_command: "node --test",
        files: &[
            embed!("node", "nimbus.yaml"),
            embed!("node", "index.js"),
            embed!("node", "index.test.js"),
            embed!("node", ".nimbusignore"),
        ],
    },
    Template {
        name: "flask",
        about: "a Flask app (WSGI) on an HTTP route",
        web: true,
        test_command: "python3 -m pytest",
        files: &[
            embed!("flask", "nimbus.yaml"),
            embed!("flask", "app.py"),
            embed!("flask", "requirements.txt"),
            embed!("flask", "test_app.py"),
            embed!("flask", ".nimbusignore"),
        ],
    },
    Template {
        name: "fastapi",
        about: "a FastAPI app (ASGI) on an HTTP route",
        web: true,
        test_command: "python3 -m pytest",
        files: &[
            embed!("fastapi", "nimbus.yaml"),
            embed!("fastapi", "main.py"),
            embed!("fastapi", "requirements.txt"),
            embed!("fastapi", "test_main.py"),
            embed!("fastapi", ".nimbusignore"),
        ],
    },
    Template {
        name: "express",
        about: "an Express app (Node.js, type: http) on an HTTP route",
        web: true,
        test_command: "npm install && node --test",
        files: &[
            embed!("express", "nimbus.yaml"),
            embed!("express", "app.js"),
            embed!("express", "package.json"),
            embed!("express", "app.test.js"),
            embed!("express", ".nimbusignore"),
        ],
    },
    Template {
        name: "custom",
        about: "a custom runtime: a single-file HTTP server (Python's http.server) on $PORT",
        web: true,
        test_command: "python3 -m pytest",
        files: &[
            embed!("custom", "nimbus.yaml"),
            embed!("custom", "server.py"),
            embed!("custom", "test_server.py"),
            embed!("custom", ".nimbusignore"),
        ],
    },
];

/// The placeholder every template file uses for the function's name.
const NAME_PLACEHOLDER: &str = "{{name}}";

/// The name a function gets when nothing better is known (a directory named `123`).
const FALLBACK_NAME: &str = "function";

/// What `init` wrote.
pub struct Created {
    pub name: String,
    pub template: &'static Template,
    pub files: Vec<&'static str>,
}

/// The template called `name`, or a one-line error that lists them all.
pub fn template(name: &str) -> anyhow::Result<&'static Template> {
    TEMPLATES
        .iter()
        .find(|t| t.name == name)
        .ok_or_else(|| anyhow::anyhow!("unknown template `{name}`; choose one of {}", names()))
}

/// `python, node, ...`: the templates' names, for messages.
pub fn names() -> String {
    TEMPLATES
        .iter()
        .map(|t| t.name)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Turns a directory's name into a function name: `[A-Za-z][A-Za-z0-9_-]{0,63}`. Anything
/// else becomes `-` (runs of them one), leading characters that are not letters go, and
/// a name with no letter at all becomes `function`.
pub fn sanitize_name(raw: &str) -> String {
    let mut name = String::new();
    for c in raw.chars() {
        let c = if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
            c
        } else {
            '-'
        };
        // A name starts with a letter; what comes before the first one is dropped.
        if name.is_empty() && !c.is_ascii_alphabetic() {
            continue;
        }
        if c == '-' && name.ends_with('-') {
            continue;
        }
        name.push(c);
    }
    name.truncate(model::limits::NAME_LEN_MAX);
    let name = name.trim_end_matches('-');
    if name.is_empty() {
        FALLBACK_NAME.to_string()
    } else {
        name.to_string()
    }
}

/// Writes `template` into `dir` (made if missing) for the function `name` (else the
/// directory's name, sanitized). Nothing is written when any of the files exists.
pub fn init(
    dir: &Path,
    template: &'static Template,
    name: Option<&str>,
) -> anyhow::Result<Created> {
    let name = match name {
        Some(n) => {
            model::validate_name(n).map_err(|e| anyhow::anyhow!("--name `{n}`: {e}"))?;
            n.to_string()
        }
        None => sanitize_name(&dir_name(dir)?),
    };
    let existing = existing_files(dir, template);
    if !existing.is_empty() {
        bail!(
            "{} already has {}; init writes no file over another (use a new or empty directory)",
            dir.display(),
            existing.join(", ")
        );
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut files = Vec::new();
    for (path, text) in template.files {
        let target = dir.join(path);
        // `create_new`, so a file that appeared since the check above is not overwritten.
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&target)
            .with_context(|| format!("creating {}", target.display()))?;
        file.write_all(text.replace(NAME_PLACEHOLDER, &name).as_bytes())
            .with_context(|| format!("writing {}", target.display()))?;
        files.push(*path);
    }
    Ok(Created {
        name,
        template,
        files,
    })
}

/// The files of `template` that are already in `dir`.
fn existing_files(dir: &Path, template: &Template) -> Vec<&'static str> {
    template
        .files
        .iter()
        .map(|(path, _)| *path)
        .filter(|path| dir.join(path).symlink_metadata().is_ok())
        .collect()
}

/// The last component of `dir` as the user means it (`.` is the current directory's name).
fn dir_name(dir: &Path) -> anyhow::Result<String> {
    let absolute: PathBuf =
        std::path::absolute(dir).with_context(|| format!("resolving {}", dir.display()))?;
    // `..` or a symlink has no name of its own until resolved; a directory that does not
    // exist yet has no links to resolve.
    let resolved = absolute.canonicalize().unwrap_or(absolute);
    Ok(resolved
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default())
}

/// What to run next, as shell commands, for a project written to `dir`.
pub fn next_steps(created: &Created, dir: &Path, endpoint: &str) -> Vec<String> {
    let dir = shell_quote(&dir.display().to_string());
    let name = &created.name;
    let endpoint = endpoint.trim_end_matches('/');
    let mut steps = vec![format!("nimbus deploy {dir}")];
    if created.template.web {
        steps.push(format!("curl {endpoint}/{name}"));
        steps.push(format!("curl {endpoint}/fn/{name}/"));
    } else {
        steps.push(format!(
            r#"nimbus invoke {name} --data '{{"name": "Ada"}}'"#
        ));
    }
    steps.push(format!("cd {dir} && {}", created.template.test_command));
    steps
}

/// `text` as one shell word: as it is when it is plain, else in single quotes.
fn shell_quote(text: &str) -> String {
    let plain = !text.is_empty()
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-+=:@,".contains(c));
    if plain {
        text.to_string()
    } else {
        format!("'{}'", text.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_sanitized_to_function_names() {
        let cases = [
            ("hello", "hello"),
            ("my app", "my-app"),
            ("my  app!", "my-app"),
            ("2024-report", "report"),
            ("_private", "private"),
            ("api.v2", "api-v2"),
            ("Café_Menu", "Caf-_Menu"),
            ("snake_case-ok", "snake_case-ok"),
            ("123", FALLBACK_NAME),
            ("", FALLBACK_NAME),
            ("---", FALLBACK_NAME),
        ];
        for (raw, expect) in cases {
            let got = sanitize_name(raw);
            assert_eq!(got, expect, "{raw:?}");
            model::validate_name(&got).unwrap();
        }
        let long = sanitize_name(&"a".repeat(200));
        assert_eq!(long.len(), model::limits::NAME_LEN_MAX);
        // A cut that ends in a separator does not leave it dangling.
        let cut = sanitize_name(&format!("{}-b", "a".repeat(63)));
        assert_eq!(cut, "a".repeat(63));
    }

    #[test]
    fn every_template_is_complete_and_named_in_its_manifest() {
        for t in TEMPLATES {
            let paths: Vec<&str> = t.files.iter().map(|(p, _)| *p).collect();
            assert!(paths.contains(&"nimbus.yaml"), "{}", t.name);
            assert!(paths.contains(&".nimbusignore"), "{}", t.name);
            assert!(
                paths
                    .iter()
                    .any(|p| p.starts_with("test_") || p.ends_with(".test.js")),
                "{} has no test",
                t.name
            );
            let manifest = t.files[0].1;
            assert!(
                manifest.contains("  {{name}}:\n"),
                "{}: the manifest does not name the function",
                t.name
            );
            assert_eq!(t.web, manifest.contains("auth: anonymous"), "{}", t.name);
        }
        assert!(template("nope").unwrap_err().to_string().contains(
            "unknown template `nope`; choose one of python, node, flask, fastapi, express, custom"
        ));
    }

    #[test]
    fn init_names_the_function_after_the_directory() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("My Service");
        let created = init(&dir, template("python").unwrap(), None).unwrap();
        assert_eq!(created.name, "My-Service");
        let manifest = std::fs::read_to_string(dir.join("nimbus.yaml")).unwrap();
        assert!(manifest.contains("\n  My-Service:\n"), "{manifest}");
        assert!(!manifest.contains(NAME_PLACEHOLDER), "{manifest}");
        let steps = next_steps(&created, &dir, "http://127.0.0.1:9700/");
        assert_eq!(
            steps[0],
            format!("nimbus deploy '{}'", dir.display()),
            "{steps:?}"
        );
        assert!(
            steps[1].starts_with("nimbus invoke My-Service "),
            "{steps:?}"
        );
    }

    #[test]
    fn init_refuses_to_overwrite_and_writes_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("svc");
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("main.py"), "mine").unwrap();
        std::fs::write(dir.join(".nimbusignore"), "mine").unwrap();
        std::fs::write(dir.join("notes.txt"), "unrelated").unwrap();
        let err = init(&dir, template("python").unwrap(), None)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("already has main.py, .nimbusignore;"), "{err}");
        assert!(!err.contains('\n'), "{err}");
        assert_eq!(
            std::fs::read_to_string(dir.join("main.py")).unwrap(),
            "mine"
        );
        assert!(!dir.join("nimbus.yaml").exists());
        // Unrelated files are no obstacle: once the clash is gone, a template fits next to
        // them.
        std::fs::remove_file(dir.join(".nimbusignore")).unwrap();
        let created = init(&dir, template("node").unwrap(), Some("other")).unwrap();
        assert_eq!(created.files.len(), 4);
        assert!(
            init(&dir, template("node").unwrap(), Some("9bad"))
                .err()
                .unwrap()
                .to_string()
                .contains("--name `9bad`: must start with a letter")
        );
    }
}
