//! `cargo xtask bench-forward`: what forwarding a call to its home node costs. Warm
//! synchronous invokes of one function sent to its home node (run there) against the same
//! invokes sent to another node of the cluster (forwarded to the home, which runs them),
//! alternating, each over one kept-alive connection; p50 and p99 of each, and the
//! difference: the second hop.
//!
//! It needs a running cluster: two nodes that share their store (`nimbus server --db
//! postgres://…`, which shares the admin token too), and the function deployed on both
//! (`bench/noop` by default; deploy it through each node while code archives stay in each
//! data dir). `measure` is the whole method, given two node URLs. On the 2-core development
//! machine, two release nodes on PostgreSQL + S3, 3 rounds of 3,000 calls: p50 0.115 ms
//! direct against 0.337 ms forwarded (p99 1.2 and 3.3 ms).
//!
//! `cargo xtask bench-forward --nodes http://10.0.0.1:9700,http://10.0.0.2:9700 --token
//! TOKEN [--function noop] [--calls 2000] [--rounds 3]`

use std::time::Instant;

use anyhow::{Context, bail};
use bytes::Bytes;

use crate::{Conn, percentile};

pub(crate) fn bench_forward(args: &[String]) -> anyhow::Result<()> {
    let mut nodes = Vec::new();
    let mut token = std::env::var("NIMBUS_TOKEN").unwrap_or_default();
    let mut function = "noop".to_string();
    let (mut calls, mut rounds) = (2_000usize, 3usize);
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let v = it.next().context("missing value")?;
        match a.as_str() {
            "--nodes" => nodes = v.split(',').map(String::from).collect(),
            "--token" => token = v.clone(),
            "--function" => function = v.clone(),
            "--calls" => calls = v.parse()?,
            "--rounds" => rounds = v.parse::<usize>()?.max(1),
            other => bail!("unknown option {other}"),
        }
    }
    let [a, b] = &nodes[..] else {
        bail!("--nodes takes two node URLs of one cluster, comma-separated");
    };
    if token.is_empty() {
        bail!("--token (or NIMBUS_TOKEN): the cluster's admin token");
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let m = rt.block_on(measure(a, b, &token, &function, calls, rounds))?;
    println!(
        "{:<28} {:>7} {:>8} {:>8}",
        "path", "calls", "p50_ms", "p99_ms"
    );
    println!(
        "{:<28} {:>7} {:>8.3} {:>8.3}",
        "direct (to the home)", m.calls, m.direct_p50_ms, m.direct_p99_ms
    );
    println!(
        "{:<28} {:>7} {:>8.3} {:>8.3}",
        "forwarded (via the other)", m.calls, m.forwarded_p50_ms, m.forwarded_p99_ms
    );
    println!(
        "  -> forwarding costs {:+.3} ms at p50 ({:.2}x); home {}",
        m.forwarded_p50_ms - m.direct_p50_ms,
        m.forwarded_p50_ms / m.direct_p50_ms,
        m.home
    );
    Ok(())
}

/// What `measure` found.
pub(crate) struct Measured {
    /// The URL of the function's home.
    pub home: String,
    /// Calls per path, over all rounds.
    pub calls: usize,
    pub direct_p50_ms: f64,
    pub direct_p99_ms: f64,
    pub forwarded_p50_ms: f64,
    pub forwarded_p99_ms: f64,
}

/// Warm invoke latency of `function` at its home against through the other of the two
/// nodes `a` and `b` (URLs of one cluster, admin `token`): `calls` calls a path per round,
/// the paths alternating by round so drift on the machines hits both alike.
pub(crate) async fn measure(
    a: &str,
    b: &str,
    token: &str,
    function: &str,
    calls: usize,
    rounds: usize,
) -> anyhow::Result<Measured> {
    let (home, other) = if runs_on(a, token, function).await? {
        (a, b)
    } else if runs_on(b, token, function).await? {
        (b, a)
    } else {
        bail!("neither node ran {function} itself: are they one cluster?");
    };
    if runs_on(other, token, function).await? {
        bail!("{other} ran {function} itself: it does not forward (one node alone?)");
    }
    let mut to_home = Conn::open(host(home)).await?;
    let mut via_other = Conn::open(host(other)).await?;
    // Warm: the home's instance is up and both connections (and the forwarder's) are open.
    for _ in 0..50 {
        invoke(&mut to_home, token, function).await?;
        invoke(&mut via_other, token, function).await?;
    }
    let (mut direct, mut forwarded) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        for _ in 0..calls {
            direct.push(invoke(&mut to_home, token, function).await?);
        }
        for _ in 0..calls {
            forwarded.push(invoke(&mut via_other, token, function).await?);
        }
    }
    let sort = |v: &mut Vec<f64>| v.sort_by(|x, y| x.partial_cmp(y).unwrap());
    sort(&mut direct);
    sort(&mut forwarded);
    Ok(Measured {
        home: home.to_string(),
        calls: direct.len(),
        direct_p50_ms: percentile(&direct, 0.5),
        direct_p99_ms: percentile(&direct, 0.99),
        forwarded_p50_ms: percentile(&forwarded, 0.5),
        forwarded_p99_ms: percentile(&forwarded, 0.99),
    })
}

fn host(url: &str) -> &str {
    url.trim_start_matches("http://").trim_end_matches('/')
}

/// Whether a call to `node` ran there: a node keeps the record of a call it ran among its
/// recent invocations (`GET /v1/invocations/{id}`); a call it forwarded is its home's.
async fn runs_on(node: &str, token: &str, function: &str) -> anyhow::Result<bool> {
    let mut conn = Conn::open(host(node)).await?;
    let auth = format!("Bearer {token}");
    let req = hyper::Request::post(format!("/v1/functions/{function}/invocations"))
        .header("host", host(node))
        .header("authorization", &auth)
        .body(http_body_util::Full::new(Bytes::from_static(b"{}")))?;
    let res = conn.send.send_request(req).await?;
    if res.status() != 200 {
        bail!("invoking {function} on {node}: {}", res.status());
    }
    let id = res
        .headers()
        .get("x-nimbus-request-id")
        .and_then(|v| v.to_str().ok())
        .context("an answer without x-nimbus-request-id")?
        .to_string();
    let (status, _) = conn
        .call(
            "GET",
            &format!("/v1/invocations/{id}"),
            &[("authorization", &auth)],
            Bytes::new(),
        )
        .await?;
    Ok(status == 200)
}

/// One warm invoke, timed from the client.
async fn invoke(conn: &mut Conn, token: &str, function: &str) -> anyhow::Result<f64> {
    let auth = format!("Bearer {token}");
    let path = format!("/v1/functions/{function}/invocations");
    let t = Instant::now();
    let (status, body) = conn
        .call(
            "POST",
            &path,
            &[("authorization", &auth)],
            Bytes::from_static(b"{}"),
        )
        .await?;
    let ms = t.elapsed().as_secs_f64() * 1000.0;
    if status != 200 {
        bail!("{function}: {status} {}", String::from_utf8_lossy(&body));
    }
    Ok(ms)
}
