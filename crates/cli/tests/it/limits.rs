//! Exact limits, black-box: the 6 MB result limit to the byte, for both runtimes, with the
//! instance kept after an oversize answer (as Lambda does).

use reqwest::StatusCode;

use crate::harness::{Server, header, project};

#[tokio::test]
async fn results_are_limited_to_6_mb_to_the_byte_and_the_instance_stays() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("data"));
    let dir = project(
        tmp.path(),
        "big",
        "functions:\n  big-py:\n    runtime: python3\n    handler: main.handler\n  big-node:\n    runtime: nodejs\n    handler: index.handler\n",
        &[
            (
                "main.py",
                "def handler(event, context):\n    return 'x' * event['n']\n",
            ),
            (
                "index.js",
                "exports.handler = async (event) => 'x'.repeat(event.n);\n",
            ),
        ],
    );
    server.deploy(&dir).await;
    let limit = 6 * 1024 * 1024;
    for name in ["big-py", "big-node"] {
        let res = server.invoke(name, &format!(r#"{{"n": {limit}}}"#)).await;
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(
            header(&res, "x-nimbus-error-type"),
            "",
            "{name} at the limit"
        );
        assert_eq!(res.bytes().await.unwrap().len(), limit, "{name}");

        let res = server
            .invoke(name, &format!(r#"{{"n": {}}}"#, limit + 1))
            .await;
        assert_eq!(
            header(&res, "x-nimbus-error-type"),
            "Function.ResponseSizeTooLarge",
            "{name} one byte over"
        );
        let body: serde_json::Value = res.json().await.unwrap();
        assert!(
            body["errorMessage"]
                .as_str()
                .unwrap()
                .contains(&format!("({} bytes)", limit + 1)),
            "{body}"
        );
        // The instance was not broken by it: the next call is warm.
        let res = server.invoke(name, r#"{"n": 3}"#).await;
        assert_eq!(header(&res, "x-nimbus-cold-start"), "false", "{name}");
        assert_eq!(res.text().await.unwrap(), "xxx");
    }
}
