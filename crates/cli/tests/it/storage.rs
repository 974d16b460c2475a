//! Storage faults, black-box: the real server with its data dir on a small disk that fills
//! up and is freed, and what a crash leaves in the data dir.

use std::process::Command;

use reqwest::{Method, StatusCode};
use serde_json::Value;

use crate::harness::{Server, python_project};

/// A tmpfs of `size_mb` on a new directory, unmounted when dropped. Mounting needs root,
/// which these tests require: a full disk cannot be faked by a smaller file.
struct SmallDisk(tempfile::TempDir);

impl SmallDisk {
    fn mount(size_mb: u64) -> SmallDisk {
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size_mb}m"), "tmpfs"])
            .arg(dir.path())
            .output()
            .expect("running mount(8)");
        assert!(
            out.status.success(),
            "mounting a tmpfs failed ({}): this test needs root",
            String::from_utf8_lossy(&out.stderr).trim()
        );
        SmallDisk(dir)
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(self.0.path()).status();
    }
}

/// Fills the disk holding `dir` with a file there; returns its path.
fn fill(dir: &std::path::Path) -> std::path::PathBuf {
    use std::io::Write;
    let path = dir.join("ballast");
    let mut f = std::fs::File::create(&path).unwrap();
    let block = vec![0u8; 64 * 1024];
    while f.write_all(&block).is_ok() {}
    let _ = f.flush();
    path
}

async fn submit(server: &Server) -> reqwest::Response {
    server
        .req(Method::POST, "/v1/functions/full/invocations")
        .header("x-nimbus-invocation-type", "async")
        .body("{}")
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_full_disk_is_507_and_the_server_recovers_once_space_is_freed() {
    let disk = SmallDisk::mount(48);
    let tmp = tempfile::tempdir().unwrap();
    let data = disk.0.path().join("data");
    let server = Server::start(&data);
    let dir = python_project(
        tmp.path(),
        "full",
        3000,
        "def handler(event, context):\n    print('ran')\n    return 1\n",
    );
    server.deploy(&dir).await;
    assert_eq!(server.invoke("full", "{}").await.status(), StatusCode::OK);

    let ballast = fill(disk.0.path());
    // Accepting an event needs a durable write: refused as the server's fault, 507.
    let mut full = None;
    for _ in 0..20 {
        let res = submit(&server).await;
        if res.status() != StatusCode::ACCEPTED {
            full = Some(res);
            break;
        }
    }
    let res = full.expect("a submission was refused on a full disk");
    assert_eq!(res.status(), StatusCode::INSUFFICIENT_STORAGE);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["code"], "storage_full", "{body}");
    // An upload is not the client's fault either.
    let res = server
        .req(Method::POST, "/v1/code")
        .body(zip_of_one_file())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::INSUFFICIENT_STORAGE);
    // Synchronous calls keep working: they write nothing on their path.
    assert_eq!(server.invoke("full", "{}").await.status(), StatusCode::OK);

    // Space comes back: everything works again without a restart.
    std::fs::remove_file(&ballast).unwrap();
    let res = submit(&server).await;
    assert_eq!(res.status(), StatusCode::ACCEPTED);
    let id = crate::harness::header(&res, "x-nimbus-request-id").to_string();
    let settled = server.settled(&id, std::time::Duration::from_secs(5)).await;
    assert_eq!(settled["status"], "succeeded", "{settled}");
    let res = server
        .req(Method::POST, "/v1/code")
        .body(zip_of_one_file())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
    // Telemetry writes again: the calls after the disk was freed are in the logs.
    let logs = server.cli(&["logs", "full", "--output", "json"]).await;
    assert_eq!(logs.code, 0, "{}", logs.stderr);
    assert!(logs.stdout.contains("ran"), "{}", logs.stdout);
    drop(server);
}

fn zip_of_one_file() -> Vec<u8> {
    use std::io::Write;
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    w.start_file("main.py", zip::write::SimpleFileOptions::default())
        .unwrap();
    w.write_all(b"def handler(e, c):\n    return 2\n").unwrap();
    w.finish().unwrap().into_inner()
}

#[tokio::test]
async fn staging_left_by_a_crash_is_removed_at_start() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    drop(Server::start(&data));
    let leftover = data.join("code/.staging-crashed");
    std::fs::create_dir_all(leftover.join("pkg")).unwrap();
    std::fs::write(leftover.join("pkg/big.bin"), vec![0u8; 1024 * 1024]).unwrap();
    let _server = Server::start(&data);
    assert!(!leftover.exists(), "{} is still there", leftover.display());
}
