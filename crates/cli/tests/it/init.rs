//! `nimbus init`: every template deploys as it is written and answers at once (invoked,
//! or over its route and function URL), and its own tests pass on this machine.

use std::path::Path;
use std::process::Command;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::harness::Server;

/// Runs a Python template's `test_*` functions the way pytest would (no pytest here),
/// with `extra_path` (installed dependencies) importable.
const PY_TEST_RUNNER: &str = r#"
import importlib, pathlib, sys
ran = 0
for f in sorted(pathlib.Path('.').glob('test_*.py')):
    m = importlib.import_module(f.stem)
    for name in dir(m):
        if name.startswith('test_'):
            getattr(m, name)()
            ran += 1
assert ran, 'no tests found'
print(f'{ran} passed')
"#;

/// Inits `template` into a directory whose name needs sanitizing, deploys it unchanged,
/// and returns the server, the project and the function's name.
async fn init_and_deploy(root: &Path, template: &str) -> (Server, std::path::PathBuf, String) {
    let server = Server::start(&root.join("data"));
    let dir = root.join(format!("{template} demo"));
    let name = format!("{template}-demo");
    let run = server
        .cli(&["init", dir.to_str().unwrap(), "--template", template])
        .await;
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    assert!(
        run.stdout.contains(&format!("created {name} ({template})")),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout
            .contains(&format!("nimbus deploy '{}'", dir.display())),
        "{}",
        run.stdout
    );
    server.deploy(&dir).await;
    (server, dir, name)
}

/// A handler template answers an invocation through the CLI.
async fn check_invoke(server: &Server, name: &str) {
    let run = server
        .cli(&["invoke", name, "--data", r#"{"name": "Ada"}"#])
        .await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let v: Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(v, json!({"message": "Hello, Ada!"}));
}

/// A web template answers on its route and its function URL, without a key.
async fn check_web(server: &Server, name: &str) {
    for path in [format!("/{name}"), format!("/fn/{name}/")] {
        let res = server.get(&path).send().await.unwrap();
        assert_eq!(res.status(), StatusCode::OK, "{path}");
        let v: Value = res.json().await.unwrap();
        assert_eq!(v["message"], format!("Hello from {name}!"), "{path}: {v}");
    }
}

/// Runs the template's Python tests with `deps` (a `--target` install, if any) importable.
fn run_python_tests(dir: &Path, deps: Option<&Path>) {
    let mut cmd = Command::new("/usr/bin/python3");
    cmd.args(["-B", "-c", PY_TEST_RUNNER]).current_dir(dir);
    if let Some(deps) = deps {
        cmd.env("PYTHONPATH", deps);
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Installs a Python template's requirements outside the project, as a user's virtualenv
/// would hold them, and returns where.
fn install_requirements(dir: &Path, root: &Path) -> std::path::PathBuf {
    let deps = root.join("local-deps");
    let out = Command::new("/usr/bin/python3")
        .args(["-m", "pip", "install", "-q", "--target"])
        .arg(&deps)
        .arg("-r")
        .arg(dir.join("requirements.txt"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    deps
}

/// `node --test` in `dir` (it finds `*.test.js`).
fn run_node_tests(dir: &Path) {
    let out = Command::new("node")
        .args(["--test"])
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn the_python_template_deploys_and_answers() {
    let tmp = tempfile::tempdir().unwrap();
    let (server, dir, name) = init_and_deploy(tmp.path(), "python").await;
    check_invoke(&server, &name).await;
    run_python_tests(&dir, None);
}

#[tokio::test]
async fn the_node_template_deploys_and_answers() {
    let tmp = tempfile::tempdir().unwrap();
    let (server, dir, name) = init_and_deploy(tmp.path(), "node").await;
    check_invoke(&server, &name).await;
    run_node_tests(&dir);
}

#[tokio::test]
async fn the_flask_template_deploys_and_answers() {
    let tmp = tempfile::tempdir().unwrap();
    let (server, dir, name) = init_and_deploy(tmp.path(), "flask").await;
    check_web(&server, &name).await;
    let deps = install_requirements(&dir, tmp.path());
    run_python_tests(&dir, Some(&deps));
}

#[tokio::test]
async fn the_fastapi_template_deploys_and_answers() {
    let tmp = tempfile::tempdir().unwrap();
    let (server, dir, name) = init_and_deploy(tmp.path(), "fastapi").await;
    check_web(&server, &name).await;
    let deps = install_requirements(&dir, tmp.path());
    run_python_tests(&dir, Some(&deps));
}

#[tokio::test]
async fn the_express_template_deploys_and_answers() {
    let tmp = tempfile::tempdir().unwrap();
    let (server, dir, name) = init_and_deploy(tmp.path(), "express").await;
    check_web(&server, &name).await;
    let out = Command::new("npm")
        .args(["install", "--no-audit", "--no-fund", "--silent"])
        .current_dir(&dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    run_node_tests(&dir);
}

#[tokio::test]
async fn the_custom_template_deploys_and_answers() {
    let tmp = tempfile::tempdir().unwrap();
    let (server, dir, name) = init_and_deploy(tmp.path(), "custom").await;
    check_web(&server, &name).await;
    run_python_tests(&dir, None);
}

/// `init` lists its templates, names them on an unknown one, and refuses to write over
/// files: one line on stderr and a non-zero exit, with nothing changed.
#[tokio::test]
async fn init_lists_templates_and_refuses_to_overwrite() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("data"));
    let list = server.cli(&["init", "--list"]).await;
    assert_eq!(list.code, 0, "{}", list.stderr);
    for t in ["python", "node", "flask", "fastapi", "express", "custom"] {
        assert!(
            list.stdout.lines().any(|l| l.starts_with(t)),
            "{}",
            list.stdout
        );
    }
    let dir = tmp.path().join("svc");
    let dir_arg = dir.to_str().unwrap();
    let unknown = server.cli(&["init", dir_arg, "--template", "rust"]).await;
    assert_ne!(unknown.code, 0);
    assert_eq!(
        unknown.stderr.trim(),
        "error: unknown template `rust`; choose one of python, node, flask, fastapi, express, custom"
    );
    assert!(!dir.exists());

    let first = server.cli(&["init", dir_arg, "-o", "json"]).await;
    assert_eq!(first.code, 0, "{}", first.stderr);
    let created: Value = serde_json::from_str(&first.stdout).unwrap();
    assert_eq!(created["name"], "svc");
    assert_eq!(created["template"], "python");
    std::fs::write(dir.join("main.py"), "# mine\n").unwrap();
    let again = server.cli(&["init", dir_arg, "--template", "python"]).await;
    assert_ne!(again.code, 0);
    assert_eq!(again.stderr.trim().lines().count(), 1, "{}", again.stderr);
    assert!(
        again
            .stderr
            .contains("already has nimbus.yaml, main.py, test_main.py, .nimbusignore"),
        "{}",
        again.stderr
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("main.py")).unwrap(),
        "# mine\n"
    );
}
