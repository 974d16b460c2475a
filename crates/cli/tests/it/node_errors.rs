//! Node.js functions whose code cannot be loaded: the error a user sees names what is wrong
//! (the missing dependency, the place of a syntax error), not the handler module.

use reqwest::StatusCode;
use serde_json::Value;

use crate::harness::{Server, header, project};

#[tokio::test]
async fn node_load_errors_name_the_missing_dependency_and_the_syntax_error() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("data"));
    // `index.js` needs lodash, but the project has no node_modules.
    let dir = project(
        tmp.path(),
        "node-errors",
        "functions:\n  needs-lodash:\n    runtime: nodejs\n    handler: index.handler\n  broken-js:\n    runtime: nodejs\n    handler: broken.handler\n",
        &[
            (
                "index.js",
                "const _ = require('lodash');\nexports.handler = async () => _.VERSION;\n",
            ),
            (
                "broken.js",
                "exports.handler = async () => {\n  return {;\n};\n",
            ),
        ],
    );
    server.deploy_unchecked(&dir).await;

    // Through the CLI: a failed call exits non-zero and names the missing module.
    let run = server.cli(&["invoke", "needs-lodash"]).await;
    let output = format!("{}{}", run.stdout, run.stderr);
    assert_ne!(run.code, 0, "{output}");
    assert!(output.contains("Runtime.ImportModuleError"), "{output}");
    assert!(output.contains("Cannot find module 'lodash'"), "{output}");
    assert!(output.contains("index.js"), "{output}");
    // The old message blamed the handler module, which does exist.
    assert!(!output.contains("Cannot find module 'index'"), "{output}");

    // Over HTTP: the load failure is an outcome (200) with its type and message.
    let res = server.invoke("needs-lodash", "{}").await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(
        header(&res, "x-nimbus-error-type"),
        "Runtime.ImportModuleError"
    );
    let body: Value = res.json().await.unwrap();
    let message = body["errorMessage"].as_str().unwrap();
    assert!(message.contains("Cannot find module 'lodash'"), "{body}");

    // A syntax error names the file, line and column.
    let run = server.cli(&["invoke", "broken-js"]).await;
    let output = format!("{}{}", run.stdout, run.stderr);
    assert_ne!(run.code, 0, "{output}");
    assert!(output.contains("Runtime.UserCodeSyntaxError"), "{output}");
    assert!(output.contains("broken.js:2:11"), "{output}");
}
