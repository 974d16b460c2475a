//! `nimbus dev`: deploy, watch, redeploy on change, follow the logs.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};

use crate::harness::{NIMBUS, Server, project};

/// Collects a child's output lines into a shared buffer as they come.
fn collect(
    stream: impl AsyncRead + Unpin + Send + 'static,
) -> std::sync::Arc<std::sync::Mutex<String>> {
    let text = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let sink = text.clone();
    tokio::spawn(async move {
        let mut lines = BufReader::new(stream).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            let mut t = sink.lock().unwrap();
            t.push_str(&line);
            t.push('\n');
        }
    });
    text
}

async fn wait_for(text: &std::sync::Mutex<String>, needle: &str, within: Duration) {
    let start = Instant::now();
    while !text.lock().unwrap().contains(needle) {
        assert!(
            start.elapsed() < within,
            "no `{needle}` within {within:?}:\n{}",
            text.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn interrupt(child: &tokio::process::Child) {
    let pid = rustix::process::Pid::from_raw(child.id().unwrap() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::INT).unwrap();
}

fn handler_project(root: &Path) -> std::path::PathBuf {
    project(
        root,
        "devproj",
        "functions:\n  devf:\n    runtime: python3\n    handler: main.handler\n",
        &[
            (
                "main.py",
                "import six\ndef handler(event, context):\n    print('serving v1')\n    return 'v1'\n",
            ),
            ("requirements.txt", "six==1.16.0\n"),
        ],
    )
}

/// Against a running server: the project is deployed, an edit is live within a second or
/// two without installing the dependencies again, the function's logs are followed, and
/// Ctrl-C ends it.
#[tokio::test]
async fn dev_redeploys_a_changed_file_and_follows_the_logs() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("data"));
    let dir = handler_project(tmp.path());
    let mut dev = tokio::process::Command::new(NIMBUS)
        .arg("dev")
        .arg(&dir)
        .env("NIMBUS_ENDPOINT", &server.endpoint)
        .env("NIMBUS_DATA_DIR", &server.data_dir)
        .env_remove("NIMBUS_TOKEN")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let out = collect(dev.stdout.take().unwrap());
    let err = collect(dev.stderr.take().unwrap());
    wait_for(&err, "watching", Duration::from_secs(60)).await;
    assert!(err.lock().unwrap().contains("Successfully installed six"));
    let res = server.invoke("devf", "{}").await;
    assert_eq!(res.text().await.unwrap(), "v1");
    wait_for(&out, "serving v1", Duration::from_secs(10)).await;

    std::fs::write(
        dir.join("main.py"),
        "import six\ndef handler(event, context):\n    print('serving v2')\n    return 'v2'\n",
    )
    .unwrap();
    let edited = Instant::now();
    loop {
        let res = server.invoke("devf", "{}").await;
        if res.text().await.unwrap() == "v2" {
            break;
        }
        assert!(
            edited.elapsed() < Duration::from_secs(5),
            "{}",
            err.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    wait_for(&out, "serving v2", Duration::from_secs(10)).await;
    let err_text = err.lock().unwrap().clone();
    assert_eq!(err_text.matches("Collecting six").count(), 1, "{err_text}");
    assert!(
        err_text.contains("dependencies unchanged, built before"),
        "{err_text}"
    );
    assert!(
        out.lock().unwrap().contains("updated devf"),
        "{}",
        out.lock().unwrap()
    );

    interrupt(&dev);
    let status = tokio::time::timeout(Duration::from_secs(10), dev.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "{status}");
}

/// With no server to talk to, dev starts one on a temporary data dir, and stops it on
/// Ctrl-C.
#[tokio::test]
async fn dev_starts_its_own_server_and_stops_it() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = project(
        tmp.path(),
        "solo",
        "functions:\n  solo:\n    runtime: python3\n    handler: main.handler\n    url: {auth: anonymous}\n",
        &[(
            "main.py",
            "def handler(event, context):\n    return 'solo'\n",
        )],
    );
    let unused = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", unused.local_addr().unwrap());
    drop(unused);
    let mut dev = tokio::process::Command::new(NIMBUS)
        .arg("dev")
        .arg(&dir)
        .env("NIMBUS_ENDPOINT", &endpoint)
        .env("NIMBUS_DATA_DIR", tmp.path().join("none"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let _out = collect(dev.stdout.take().unwrap());
    let err = collect(dev.stderr.take().unwrap());
    wait_for(&err, "watching", Duration::from_secs(60)).await;
    let text = err.lock().unwrap().clone();
    let url = text
        .split("started a server at ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .unwrap_or_else(|| panic!("{text}"))
        .to_string();
    let client = reqwest::Client::new();
    let res = client.get(format!("{url}/fn/solo/")).send().await.unwrap();
    assert_eq!(res.text().await.unwrap(), "solo");
    interrupt(&dev);
    let status = tokio::time::timeout(Duration::from_secs(10), dev.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "{status}");
    // Its server is gone with it.
    let start = Instant::now();
    while client.get(format!("{url}/healthz")).send().await.is_ok() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the server outlived dev"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
