//! The S3 API against the real server with the tools people use: boto3 through a whole
//! scenario (`s3/boto3_scenario.py`), the AWS CLI (`aws s3` and `aws s3api`), s3cmd, and a
//! crash in the middle of an upload.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use crate::harness::{Server, aws_env, test_python};

pub(crate) fn ok(out: Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `aws ARGS --endpoint-url S3` (the AWS CLI v1 from the test virtualenv).
pub(crate) fn aws(server: &Server, args: &[&str]) -> Output {
    let mut cmd = Command::new(test_python());
    cmd.args(["-m", "awscli"]).args(args).args([
        "--endpoint-url",
        &server.s3_endpoint,
        "--region",
        "us-east-1",
    ]);
    aws_env(&mut cmd, &server.data_dir);
    cmd.output().unwrap()
}

/// Bytes on disk under `<data-dir>/objects/{blobs,tmp}`: what the store holds.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            if e.path().is_dir() {
                stack.push(e.path());
            } else {
                out.push(e.path());
            }
        }
    }
    out
}

#[tokio::test]
async fn boto3_uses_the_object_store_and_every_refusal_has_s3s_code() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let server = Server::start(&data);
    assert!(
        server.s3_endpoint.starts_with("http://127.0.0.1:"),
        "{}",
        server.s3_endpoint
    );
    let made = server
        .cli(&[
            "-o", "json", "keys", "create", "app", "--aws", "--scope", "invoke",
        ])
        .await;
    assert_eq!(made.code, 0, "{}", made.stderr);
    let key: serde_json::Value = serde_json::from_str(&made.stdout).unwrap();

    let work = tmp.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    let mut cmd = Command::new(test_python());
    cmd.arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/it/s3/boto3_scenario.py"))
        .arg(&server.s3_endpoint)
        .arg(&work)
        .env("INVOKE_KEY_ID", key["access_key_id"].as_str().unwrap())
        .env("INVOKE_SECRET", key["secret_access_key"].as_str().unwrap());
    aws_env(&mut cmd, &data);
    let stdout = ok(cmd.output().unwrap(), "the boto3 scenario");
    let seen: serde_json::Value =
        serde_json::from_str(stdout.trim().lines().last().unwrap()).unwrap();
    // boto3 sends a CRC32 by default; it was checked, kept and given back.
    assert!(seen["checksum_crc32"].is_string(), "{seen}");
    assert!(
        seen["expired"].as_str().unwrap().contains("AccessDenied"),
        "{seen}"
    );

    // After all those replacements, copies, aborts and deletes, the disk holds exactly the
    // objects' bytes: nothing released was left behind.
    let listed = aws(&server, &["s3api", "list-objects-v2", "--bucket", "photos"]);
    let listed: serde_json::Value = serde_json::from_str(&ok(listed, "list-objects-v2")).unwrap();
    let objects = listed["Contents"].as_array().unwrap().len();
    let on_disk = files_under(&data.join("objects/blobs")).len();
    assert_eq!(on_disk, objects, "blobs on disk against objects listed");
    assert!(files_under(&data.join("objects/tmp")).is_empty());
}

#[tokio::test]
async fn the_aws_cli_and_s3cmd_work_unchanged() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let server = Server::start(&data);
    ok(aws(&server, &["s3", "mb", "s3://site"]), "aws s3 mb");
    ok(
        aws(&server, &["s3api", "head-bucket", "--bucket", "site"]),
        "aws s3api head-bucket",
    );

    // `aws s3 sync` up, then down into an empty directory: the same tree.
    let src = tmp.path().join("src");
    for (path, body) in [
        ("index.html", "<h1>hi</h1>".to_string()),
        ("css/site.css", "body{}".to_string()),
        ("img/deep/pic.bin", "p".repeat(9 * 1024 * 1024)),
    ] {
        let p = src.join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, body).unwrap();
    }
    ok(
        aws(
            &server,
            &["s3", "sync", src.to_str().unwrap(), "s3://site/www"],
        ),
        "aws s3 sync up",
    );
    let ls = ok(
        aws(&server, &["s3", "ls", "--recursive", "s3://site/www/"]),
        "aws s3 ls",
    );
    assert_eq!(ls.lines().count(), 3, "{ls}");
    // A second sync finds nothing to do.
    let again = ok(
        aws(
            &server,
            &["s3", "sync", src.to_str().unwrap(), "s3://site/www"],
        ),
        "aws s3 sync again",
    );
    assert!(!again.contains("upload:"), "{again}");
    let dst = tmp.path().join("dst");
    ok(
        aws(
            &server,
            &["s3", "sync", "s3://site/www", dst.to_str().unwrap()],
        ),
        "aws s3 sync down",
    );
    for path in ["index.html", "css/site.css", "img/deep/pic.bin"] {
        assert_eq!(
            std::fs::read(src.join(path)).unwrap(),
            std::fs::read(dst.join(path)).unwrap(),
            "{path}"
        );
    }
    let head = ok(
        aws(
            &server,
            &[
                "s3api",
                "head-object",
                "--bucket",
                "site",
                "--key",
                "www/index.html",
            ],
        ),
        "aws s3api head-object",
    );
    assert!(head.contains("\"ContentType\": \"text/html\""), "{head}");
    let missing = aws(
        &server,
        &[
            "s3api",
            "get-object",
            "--bucket",
            "site",
            "--key",
            "nope",
            "/dev/null",
        ],
    );
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("NoSuchKey"));
    let not_empty = aws(&server, &["s3", "rb", "s3://site"]);
    assert!(String::from_utf8_lossy(&not_empty.stderr).contains("BucketNotEmpty"));

    // s3cmd: its own signing and path handling.
    let creds = std::fs::read_to_string(data.join("aws.credentials")).unwrap();
    let field = |name: &str| {
        creds
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name} = ")))
            .unwrap()
            .to_string()
    };
    let host = server.s3_endpoint.trim_start_matches("http://").to_string();
    let config = tmp.path().join("s3cfg");
    std::fs::write(
        &config,
        format!(
            "[default]\naccess_key = {}\nsecret_key = {}\nhost_base = {host}\nhost_bucket = {host}\nuse_https = False\nsignature_v2 = False\nbucket_location = us-east-1\n",
            field("aws_access_key_id"),
            field("aws_secret_access_key")
        ),
    )
    .unwrap();
    let s3cmd = |args: &[&str]| {
        let venv_bin = test_python().parent().unwrap().to_path_buf();
        Command::new(test_python())
            .arg(venv_bin.join("s3cmd"))
            .arg("-c")
            .arg(&config)
            .args(args)
            .output()
            .unwrap()
    };
    let local = tmp.path().join("note.txt");
    std::fs::write(&local, "from s3cmd").unwrap();
    ok(s3cmd(&["mb", "s3://tools"]), "s3cmd mb");
    ok(
        s3cmd(&["put", local.to_str().unwrap(), "s3://tools/dir/note.txt"]),
        "s3cmd put",
    );
    let listed = ok(s3cmd(&["ls", "s3://tools/dir/"]), "s3cmd ls");
    assert!(listed.contains("s3://tools/dir/note.txt"), "{listed}");
    let back = tmp.path().join("back.txt");
    ok(
        s3cmd(&["get", "s3://tools/dir/note.txt", back.to_str().unwrap()]),
        "s3cmd get",
    );
    assert_eq!(std::fs::read_to_string(&back).unwrap(), "from s3cmd");
    ok(s3cmd(&["del", "s3://tools/dir/note.txt"]), "s3cmd del");
    let empty = ok(s3cmd(&["ls", "s3://tools/dir/"]), "s3cmd ls after del");
    assert!(!empty.contains("note.txt"), "{empty}");
    ok(s3cmd(&["rb", "s3://tools"]), "s3cmd rb");
}

/// SIGKILL in the middle of an upload: after the restart nothing of it is visible and
/// nothing of it is left on disk; what was stored before is whole.
#[tokio::test]
async fn a_crash_mid_upload_leaves_nothing_visible_and_no_garbage() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let server = Server::start(&data);
    ok(aws(&server, &["s3", "mb", "s3://keep"]), "mb");
    let small = tmp.path().join("small");
    std::fs::write(&small, "kept").unwrap();
    ok(
        aws(
            &server,
            &["s3", "cp", small.to_str().unwrap(), "s3://keep/kept"],
        ),
        "cp",
    );

    // A PUT that announces 64 MB and sends 8 MB, then stalls: the server is killed while
    // the bytes are on their way to disk.
    let signed = {
        let script = r#"
import sys, boto3
s3 = boto3.client("s3", endpoint_url=sys.argv[1], region_name="us-east-1")
print(s3.generate_presigned_url("put_object", Params={"Bucket": "keep", "Key": "partial"}, ExpiresIn=300))
"#;
        let mut cmd = Command::new(test_python());
        cmd.args(["-c", script, &server.s3_endpoint]);
        aws_env(&mut cmd, &data);
        ok(cmd.output().unwrap(), "presigning").trim().to_string()
    };
    let path_and_query = signed.split_once("://").unwrap().1;
    let path_and_query = &path_and_query[path_and_query.find('/').unwrap()..];
    let addr = server.s3_endpoint.trim_start_matches("http://").to_string();
    let mut sock = tokio::net::TcpStream::connect(&addr).await.unwrap();
    use tokio::io::AsyncWriteExt;
    sock.write_all(
        format!(
            "PUT {path_and_query} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}\r\n\r\n",
            64 * 1024 * 1024
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let chunk = vec![b'z'; 1024 * 1024];
    for _ in 0..8 {
        sock.write_all(&chunk).await.unwrap();
    }
    // The bytes reach the temporary file.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let staged: u64 = files_under(&data.join("objects/tmp"))
            .iter()
            .filter_map(|p| std::fs::metadata(p).ok())
            .map(|m| m.len())
            .sum();
        if staged >= 4 * 1024 * 1024 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the upload never reached the disk"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let blobs_before = files_under(&data.join("objects/blobs")).len();
    server.kill();
    drop(sock);
    assert!(
        !files_under(&data.join("objects/tmp")).is_empty(),
        "the crash left its temporary file"
    );

    let server = Server::start(&data);
    assert!(
        files_under(&data.join("objects/tmp")).is_empty(),
        "the restart swept the temporary file"
    );
    assert_eq!(files_under(&data.join("objects/blobs")).len(), blobs_before);
    let missing = aws(
        &server,
        &[
            "s3api",
            "head-object",
            "--bucket",
            "keep",
            "--key",
            "partial",
        ],
    );
    assert!(
        !missing.status.success(),
        "the partial object is not visible"
    );
    let got = tmp.path().join("got");
    ok(
        aws(
            &server,
            &["s3", "cp", "s3://keep/kept", got.to_str().unwrap()],
        ),
        "cp back",
    );
    assert_eq!(std::fs::read_to_string(got).unwrap(), "kept");

    // Bytes whose row never committed (a crash between the rename and the commit) are
    // collected at the next start too.
    let orphan = data.join("objects/blobs/ab/cdef0123456789abcdef0123456789");
    std::fs::write(&orphan, "orphan").unwrap();
    server.stop();
    let _server = Server::start(&data);
    assert!(!orphan.exists(), "the unreferenced blob was collected");
}
