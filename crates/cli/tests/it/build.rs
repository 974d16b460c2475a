//! Builds at deploy: dependencies declared in the code are installed by the server (pip,
//! npm from the machine's package index, in a jailed build job), once per dependency set.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::harness::{Server, project};

const FLASK_APP: &str = "from flask import Flask\napp = Flask(__name__)\n\n\
@app.get('/deps/hello')\ndef hello():\n    return {'hello': 'flask'}\n";

fn flask_manifest(name: &str, path: &str) -> String {
    format!(
        "functions:\n  {name}:\n    runtime: python3\n    type: wsgi\n    handler: app:app\n    \
         triggers:\n      - http: {{path: {path}, methods: [GET], auth: anonymous}}\n"
    )
}

/// A Flask app with `requirements.txt` answers through its route with nothing vendored; a
/// second deploy of the same requirements, and another function with them, reuse the build
/// (no pip run: the build answers `cached`); a broken requirement fails the deploy with
/// pip's message, and the revision before keeps answering.
#[tokio::test]
async fn requirements_are_installed_once_and_a_broken_one_fails_the_deploy() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("data"));
    let files = [
        ("app.py", FLASK_APP),
        ("requirements.txt", "flask==3.0.3\n"),
    ];
    let dir = project(
        tmp.path(),
        "web",
        &flask_manifest("web", "/deps/hello"),
        &files,
    );
    let first = server.cli(&["deploy", dir.to_str().unwrap()]).await;
    assert_eq!(first.code, 0, "{}{}", first.stdout, first.stderr);
    assert!(
        first.stderr.contains("Successfully installed"),
        "{}",
        first.stderr
    );
    assert!(
        first.stderr.contains("web: dependencies installed in"),
        "{}",
        first.stderr
    );
    let client = reqwest::Client::new();
    let hello = || client.get(server.url("/deps/hello")).send();
    let res = hello().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(
        res.json::<Value>().await.unwrap(),
        json!({"hello": "flask"})
    );
    let web = server.get_json("/v1/functions/web").await;
    let deps = web["deps_sha256"].as_str().unwrap().to_string();
    assert_eq!(deps.len(), 64, "{web}");

    let again = server.cli(&["deploy", dir.to_str().unwrap()]).await;
    assert_eq!(again.code, 0, "{}", again.stderr);
    assert!(
        again
            .stderr
            .contains("dependencies unchanged, built before"),
        "{}",
        again.stderr
    );
    assert!(
        !again.stderr.contains("Collecting"),
        "pip ran again: {}",
        again.stderr
    );
    assert!(
        again.stdout.starts_with("unchanged web"),
        "{}",
        again.stdout
    );

    // Another function with the same requirements shares the build.
    let other = project(
        tmp.path(),
        "other",
        &flask_manifest("other", "/deps/other"),
        &[
            ("app.py", &FLASK_APP.replace("/deps/hello", "/deps/other")),
            files[1],
        ],
    );
    let run = server.cli(&["deploy", other.to_str().unwrap()]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.stderr.contains("built before"), "{}", run.stderr);
    let other_fn = server.get_json("/v1/functions/other").await;
    assert_eq!(other_fn["deps_sha256"], deps.as_str());

    std::fs::write(
        dir.join("requirements.txt"),
        "flask==3.0.3\nnimbus-no-such-package-zz==1.0\n",
    )
    .unwrap();
    let broken = server.cli(&["deploy", dir.to_str().unwrap()]).await;
    assert_eq!(broken.code, 1, "{}{}", broken.stdout, broken.stderr);
    assert!(
        broken
            .stderr
            .contains("No matching distribution found for nimbus-no-such-package-zz"),
        "{}",
        broken.stderr
    );
    assert!(
        broken.stderr.contains("(build_failed)"),
        "{}",
        broken.stderr
    );
    assert!(
        broken.stderr.contains("the function was not changed"),
        "{}",
        broken.stderr
    );
    let res = hello().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(server.get_json("/v1/functions/web").await["revision"], 1);

    // Deployed through the API alone (no build call first), the server builds by itself,
    // and a failure is the same 422.
    let code = server.get_json("/v1/functions/web").await["code_sha256"].clone();
    let res = server
        .req(reqwest::Method::PUT, "/v1/functions/web")
        .json(&json!({"runtime": "python3", "type": "wsgi", "handler": "app:app", "code_sha256": code}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(
        res.json::<Value>().await.unwrap()["deps_sha256"],
        deps.as_str()
    );
}

/// A Node function requires a package from the npm registry named in `package.json`.
#[tokio::test]
async fn a_node_function_gets_its_registry_packages() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("data"));
    let dir = project(
        tmp.path(),
        "pad",
        "functions:\n  pad:\n    runtime: nodejs\n    handler: index.handler\n",
        &[
            (
                "index.js",
                "const leftPad = require('left-pad');\n\
                 exports.handler = async (event) => leftPad(event.s, 5, '*');\n",
            ),
            (
                "package.json",
                r#"{"name": "pad", "dependencies": {"left-pad": "1.3.0"}}"#,
            ),
        ],
    );
    server.deploy(&dir).await;
    let res = server.invoke("pad", r#"{"s": "ab"}"#).await;
    assert_eq!(crate::harness::header(&res, "x-nimbus-error-type"), "");
    // A string result is the body as it is.
    assert_eq!(res.text().await.unwrap(), "***ab");
}

/// `build: false` installs nothing: the import fails as it would have.
#[tokio::test]
async fn build_false_installs_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("data"));
    let dir = project(
        tmp.path(),
        "nobuild",
        "functions:\n  nobuild:\n    runtime: python3\n    handler: main.handler\n    build: false\n",
        &[
            (
                "main.py",
                "import tabulate\ndef handler(event, context):\n    return 1\n",
            ),
            ("requirements.txt", "tabulate==0.9.0\n"),
        ],
    );
    let run = server
        .cli(&["deploy", dir.to_str().unwrap(), "--no-check"])
        .await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(!run.stderr.contains("dependencies"), "{}", run.stderr);
    let res = server.invoke("nobuild", "{}").await;
    assert_eq!(
        crate::harness::header(&res, "x-nimbus-error-type"),
        "Runtime.ImportModuleError"
    );
}

/// `.nimbusignore`, `.gitignore` and `exclude:` leave files out of what ships; a virtualenv
/// in the project (with its links to the system's Python) is left out with a warning
/// instead of failing the deploy.
#[tokio::test]
async fn ignored_files_and_virtualenvs_do_not_ship() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("data"));
    let code = "import os\ndef handler(event, context):\n    \
                return sorted(f for f in os.listdir('.') if not f.startswith('.'))\n";
    let dir = project(
        tmp.path(),
        "shipped",
        "functions:\n  shipped:\n    runtime: python3\n    handler: main.handler\n    \
         exclude: [\"*.csv\"]\n",
        &[
            ("main.py", code),
            (".nimbusignore", "tests/\n"),
            (".gitignore", "secret.env\n"),
            ("tests/test_main.py", ""),
            ("secret.env", "KEY=1"),
            ("data.csv", "a,b"),
            ("util.py", ""),
            (".venv/pyvenv.cfg", "home = /usr/bin\n"),
        ],
    );
    std::os::unix::fs::symlink("/usr/bin/python3", dir.join(".venv/python3")).unwrap();
    let run = server.cli(&["deploy", dir.to_str().unwrap()]).await;
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    assert!(
        run.stderr.contains("shipped: left out .venv (a virtualenv"),
        "{}",
        run.stderr
    );
    let res = server.invoke("shipped", "{}").await;
    assert_eq!(
        res.json::<Value>().await.unwrap(),
        json!(["main.py", "nimbus.yaml", "util.py"])
    );
}

/// The deploy loads a changed handler once: a missing module, a missing handler and a
/// syntax error each fail the deploy with the error the first call would have given, and
/// the revision before keeps answering; `--no-check` deploys anyway.
#[tokio::test]
async fn the_deploy_check_refuses_handlers_that_do_not_load() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("data"));
    let manifest = "functions:\n  checked:\n    runtime: python3\n    handler: main.handler\n";
    let good = "def handler(event, context):\n    return 'good'\n";
    let dir = project(tmp.path(), "checked", manifest, &[("main.py", good)]);
    server.deploy(&dir).await;
    for (code, expected) in [
        (
            "import nimbus_missing_module\ndef handler(event, context):\n    return 1\n",
            "Runtime.ImportModuleError: Unable to import module 'main': No module named 'nimbus_missing_module'",
        ),
        (
            "def other(event, context):\n    return 1\n",
            "Runtime.HandlerNotFound",
        ),
        (
            "def handler(event, context)\n    return 1\n",
            "Runtime.UserCodeSyntaxError",
        ),
    ] {
        std::fs::write(dir.join("main.py"), code).unwrap();
        let run = server.cli(&["deploy", dir.to_str().unwrap()]).await;
        assert_eq!(run.code, 1, "{}{}", run.stdout, run.stderr);
        assert!(
            run.stderr.contains("the handler does not load"),
            "{}",
            run.stderr
        );
        assert!(run.stderr.contains(expected), "{}", run.stderr);
        assert!(run.stderr.contains("(handler_failed)"), "{}", run.stderr);
        let res = server.invoke("checked", "{}").await;
        assert_eq!(res.text().await.unwrap(), "good");
    }
    let run = server
        .cli(&["deploy", dir.to_str().unwrap(), "--no-check"])
        .await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let res = server.invoke("checked", "{}").await;
    assert_eq!(
        crate::harness::header(&res, "x-nimbus-error-type"),
        "Runtime.UserCodeSyntaxError"
    );
}

/// A layer declared once is shown read-only at `/opt` to the two functions that name it,
/// as on Lambda: its `python/` importable, its `nodejs/node_modules` requirable, its
/// `bin/` on `PATH`.
#[tokio::test]
async fn a_layer_is_shared_by_two_functions_at_opt() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("data"));
    let py = "import os, subprocess, greet\n\
def handler(event, context):\n    \
tool = subprocess.run(['layer-tool'], capture_output=True, text=True).stdout.strip()\n    \
return {'greet': greet.greet('py'), 'tool': tool, 'opt': os.path.isfile('/opt/python/greet.py')}\n";
    let dir = project(
        tmp.path(),
        "layered",
        "layers:\n  common: {path: common}\n\
functions:\n  pyf:\n    runtime: python3\n    handler: main.handler\n    code: pyf\n    layers: [common]\n  \
nodef:\n    runtime: nodejs\n    handler: index.handler\n    code: nodef\n    layers: [common]\n",
        &[
            (
                "common/python/greet.py",
                "def greet(n):\n    return 'hello ' + n + ' from a layer'\n",
            ),
            (
                "common/nodejs/node_modules/greet/index.js",
                "module.exports = (n) => 'hello ' + n + ' from a layer';\n",
            ),
            ("common/bin/layer-tool", "#!/bin/sh\necho tool-output\n"),
            ("pyf/main.py", py),
            (
                "nodef/index.js",
                "const greet = require('greet');\nexports.handler = async () => greet('node');\n",
            ),
        ],
    );
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(
        dir.join("common/bin/layer-tool"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    server.deploy(&dir).await;
    let res = server.invoke("pyf", "{}").await;
    assert_eq!(
        res.json::<Value>().await.unwrap(),
        json!({"greet": "hello py from a layer", "tool": "tool-output", "opt": true})
    );
    let res = server.invoke("nodef", "{}").await;
    assert_eq!(res.text().await.unwrap(), "hello node from a layer");
    let pyf = server.get_json("/v1/functions/pyf").await;
    let nodef = server.get_json("/v1/functions/nodef").await;
    assert_eq!(pyf["layers"][0]["name"], "common");
    assert_eq!(pyf["layers"], nodef["layers"]);

    // An undeclared layer is a manifest error naming what is declared.
    let bad = project(
        tmp.path(),
        "badlayer",
        "functions:\n  f:\n    runtime: python3\n    handler: main.handler\n    layers: [nope]\n",
        &[("main.py", "def handler(e, c):\n    return 1\n")],
    );
    let run = server.cli(&["deploy", bad.to_str().unwrap()]).await;
    assert_eq!(run.code, 1);
    assert!(
        run.stderr
            .contains("f.layers: `nope` is not declared under `layers:` (declared: none)"),
        "{}",
        run.stderr
    );
}

/// `--build local` installs the dependencies on the client and uploads them: the server
/// builds nothing, and the function imports them.
#[tokio::test]
async fn build_local_installs_on_the_client() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("data"));
    let dir = project(
        tmp.path(),
        "clientbuilt",
        "functions:\n  clientbuilt:\n    runtime: python3\n    handler: main.handler\n",
        &[
            (
                "main.py",
                "import tabulate\ndef handler(event, context):\n    return tabulate.__version__\n",
            ),
            ("requirements.txt", "tabulate==0.9.0\n"),
        ],
    );
    let run = server
        .cli(&["deploy", dir.to_str().unwrap(), "--build", "local"])
        .await;
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    assert!(
        run.stderr.contains("Successfully installed tabulate"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr
            .contains("clientbuilt: dependencies installed here"),
        "{}",
        run.stderr
    );
    // The server ran no build (the CLI would have shown its result).
    assert!(
        !run.stderr.contains("dependencies installed in"),
        "{}",
        run.stderr
    );
    let res = server.invoke("clientbuilt", "{}").await;
    assert_eq!(res.text().await.unwrap(), "0.9.0");
    let f = server.get_json("/v1/functions/clientbuilt").await;
    assert_eq!(f["deps_sha256"].as_str().unwrap().len(), 64);
}

/// A function read from the API and written back with new code keeps no stale
/// dependencies: the server works them out for the new code.
#[tokio::test]
async fn new_code_written_back_with_old_dependencies_is_built_again() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("data"));
    let dir = project(
        tmp.path(),
        "rmw",
        "functions:\n  rmw:\n    runtime: python3\n    handler: main.handler\n",
        &[
            (
                "main.py",
                "import six\ndef handler(e, c):\n    return 'six'\n",
            ),
            ("requirements.txt", "six==1.16.0\n"),
        ],
    );
    server.deploy(&dir).await;
    let before = server.get_json("/v1/functions/rmw").await;
    // New code needing another package, uploaded as a client of the API would.
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    for (name, text) in [
        (
            "main.py",
            "import tabulate\ndef handler(e, c):\n    return tabulate.__version__\n",
        ),
        ("requirements.txt", "tabulate==0.9.0\n"),
    ] {
        zip.start_file(name, zip::write::SimpleFileOptions::default())
            .unwrap();
        std::io::Write::write_all(&mut zip, text.as_bytes()).unwrap();
    }
    let zip = zip.finish().unwrap().into_inner();
    let res = server
        .req(reqwest::Method::POST, "/v1/code")
        .header("content-type", "application/zip")
        .body(zip)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
    let code: Value = res.json().await.unwrap();
    let mut body = before.clone();
    let o = body.as_object_mut().unwrap();
    for k in ["name", "revision", "created_at_ms", "updated_at_ms"] {
        o.remove(k);
    }
    o.insert("code_sha256".into(), code["code_sha256"].clone());
    let res = server
        .req(reqwest::Method::PUT, "/v1/functions/rmw")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(
        res.status(),
        StatusCode::OK,
        "{}",
        res.text().await.unwrap()
    );
    let after: Value = res.json().await.unwrap();
    assert_ne!(after["deps_sha256"], before["deps_sha256"]);
    assert_eq!(
        server.invoke("rmw", "{}").await.text().await.unwrap(),
        "0.9.0"
    );
}
