//! `cargo xtask bench-bucket-events`: the time from a PUT's answer to the start of the
//! handler its bucket event calls. 4 KiB objects are PUT one at a time at a steady rate
//! (`--rate`, 50/s) for `--seconds` (10) into a bucket one function's object rule takes;
//! each handler returns the time it started, and each PUT's answer time is kept by key.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;

use crate::{Conn, Nimbus, build_nimbus, free_port, parse, percentile, root};

pub(crate) fn bench_bucket_events(args: &[String]) -> anyhow::Result<()> {
    // `--rate N` is this benchmark's own; the rest are the common options.
    let mut rate = 50.0_f64;
    let mut rest = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if a == "--rate" {
            rate = it.next().context("--rate needs a value")?.parse()?;
        } else {
            rest.push(a.clone());
        }
    }
    let mut opts = parse(&rest)?;
    if !rest.iter().any(|a| a == "--seconds") {
        opts.seconds = 10;
    }
    let root = root();
    build_nimbus(&root)?;
    let nimbus = root.join("target/release/nimbus");
    let data = std::env::temp_dir().join(format!("nimbus-bench-events-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&data);
    let s3_port = free_port()?;
    let flags: Vec<std::ffi::OsString> =
        vec!["--s3-listen".into(), format!("127.0.0.1:{s3_port}").into()];
    let server = Nimbus::start(&nimbus, &data, &flags)?;
    let projects = data.join("projects");
    std::fs::create_dir_all(&projects)?;
    std::fs::write(
        projects.join("nimbus.yaml"),
        format!(
            "functions:\n  sink:\n    runtime: python3\n    handler: main.handler\n    code: {}\n    \
             memory_mb: 128\n    triggers:\n      - object: {{bucket: bench}}\n",
            root.join("bench/bucket-events").display()
        ),
    )?;
    server.deploy(&projects)?;
    let target = crate::s3::Target::of_nimbus(&data, format!("127.0.0.1:{s3_port}"))?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let unix_ms = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("the clock is past 1970")
            .as_secs_f64()
            * 1000.0
    };
    let count = (opts.seconds as f64 * rate) as usize;
    let answered: HashMap<String, f64> = rt.block_on(async {
        let mut send = crate::s3::connect(&target.addr).await?;
        let (status, _) =
            crate::s3::request(&mut send, &target, "PUT", "/bench", Bytes::new()).await?;
        if !status.is_success() {
            bail!("creating the bucket answered {status}");
        }
        // A few to warm the function's instance up, not counted.
        for i in 0..5 {
            crate::s3::request(
                &mut send,
                &target,
                "PUT",
                &format!("/bench/warm-{i}"),
                Bytes::from(vec![b'w'; 4096]),
            )
            .await?;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        let body = Bytes::from(vec![b'n'; 4096]);
        let mut answered = HashMap::new();
        let started = Instant::now();
        for i in 0..count {
            let due = started + Duration::from_secs_f64(i as f64 / rate);
            tokio::time::sleep_until(due.into()).await;
            let key = format!("o-{i}");
            let (status, _) = crate::s3::request(
                &mut send,
                &target,
                "PUT",
                &format!("/bench/{key}"),
                body.clone(),
            )
            .await?;
            if !status.is_success() {
                bail!("PUT answered {status}");
            }
            answered.insert(key, unix_ms());
        }
        anyhow::Ok(answered)
    })?;
    std::thread::sleep(Duration::from_secs(3));
    let addr = server.endpoint.trim_start_matches("http://").to_string();
    let token = server.token.clone();
    let started: Vec<(String, f64)> = rt.block_on(async {
        let mut conn = Conn::open(&addr).await?;
        let mut ids = Vec::new();
        let mut before: Option<i64> = None;
        loop {
            let mut path = "/v1/functions/sink/invocations?limit=1000".to_string();
            if let Some(b) = before {
                path.push_str(&format!("&before={b}"));
            }
            let page = conn.get_json(&path, &token).await?;
            for r in page["invocations"].as_array().context("no invocations")? {
                ids.push(r["request_id"].as_str().context("no id")?.to_string());
            }
            match page["next_before"].as_i64() {
                Some(b) => before = Some(b),
                None => break,
            }
        }
        let mut out = Vec::new();
        for id in ids {
            let r = conn
                .get_json(&format!("/v1/invocations/{id}"), &token)
                .await?;
            let key = r["payload"]["Records"][0]["s3"]["object"]["key"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            if let Some(t) = r["result"].as_f64() {
                out.push((key, t * 1000.0));
            }
        }
        anyhow::Ok(out)
    })?;
    drop(server);
    let _ = std::fs::remove_dir_all(&data);
    let mut latency: Vec<f64> = started
        .iter()
        .filter_map(|(key, t)| answered.get(key).map(|a| t - a))
        .collect();
    let delivered = latency.len();
    if delivered == 0 {
        bail!("no event was delivered");
    }
    latency.sort_by(f64::total_cmp);
    println!(
        "bench-bucket-events: {count} PUTs of 4 KiB at {rate}/s, one connection; events delivered {delivered} (lost {})",
        count.saturating_sub(delivered)
    );
    println!(
        "PUT answered -> handler started (ms): p50 {:.1}  p99 {:.1}  max {:.1}",
        percentile(&latency, 0.5),
        percentile(&latency, 0.99),
        latency[latency.len() - 1]
    );
    Ok(())
}
