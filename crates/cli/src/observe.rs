//! The commands that show what happened: `logs` (with `--follow`), `events`, `stats` (a
//! table and sparklines), `usage` and `invocation ls`.

use std::io::Write;
use std::process::ExitCode;

use anyhow::Context;
use futures_util::StreamExt;
use reqwest::Method;
use serde_json::Value;

use crate::Output;
use crate::client::Client;

/// What `nimbus logs` asks for.
pub struct LogsArgs<'a> {
    pub function: &'a str,
    pub since: Option<&'a str>,
    pub until: Option<&'a str>,
    pub level: Option<&'a str>,
    pub grep: Option<&'a str>,
    pub regex: Option<&'a str>,
    pub request_id: Option<&'a str>,
    pub limit: u32,
    /// A page's `next_cursor`.
    pub before: Option<&'a str>,
    pub follow: bool,
}

/// `(name, value)` pairs of the options that are set, for a query string.
fn query(pairs: &[(&str, Option<String>)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .filter_map(|(k, v)| v.clone().map(|v| (k.to_string(), v)))
        .collect()
}

/// `2026-12-01T17:03:04.123Z` of a Unix millisecond.
fn time_of(ms: i64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_millis(t).to_string()
}

/// Prints a log line; with `node`, the node that ran its call (its id's first block, as for
/// the request id).
fn print_line(out: &mut impl Write, l: &Value, node: bool) -> std::io::Result<()> {
    let id = l["request_id"].as_str().unwrap_or("");
    writeln!(
        out,
        "{} {:<6} {}{} {}",
        time_of(l["time_ms"].as_i64().unwrap_or(0)),
        l["level"].as_str().unwrap_or(""),
        l["node"]
            .as_str()
            .filter(|_| node)
            .map(|n| format!("{} ", n.split('-').next().unwrap_or(n)))
            .unwrap_or_default(),
        // The first block of a uuid is enough to tell calls apart on one screen.
        id.split('-').next().unwrap_or(id),
        l["message"].as_str().unwrap_or("")
    )
}

/// Whether `rows` come from more than one node: only then are nodes worth a column.
fn several_nodes(rows: &[Value]) -> bool {
    let mut nodes = rows.iter().filter_map(|r| r["node"].as_str());
    let first = nodes.next();
    nodes.any(|n| Some(n) != first)
}

/// Says which nodes of a cluster did not answer, and so are missing from what was shown.
fn warn_unreachable(page: &Value) {
    let nodes: Vec<&str> = page["unreachable_nodes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    if !nodes.is_empty() {
        eprintln!(
            "(no answer from node{} {}: what they recorded is missing)",
            if nodes.len() == 1 { "" } else { "s" },
            nodes.join(", ")
        );
    }
}

/// The cursor of the next page: `next_cursor`, or `next_before` of an older server.
fn next_page(page: &Value) -> Option<String> {
    page["next_cursor"]
        .as_str()
        .map(str::to_string)
        .or_else(|| page["next_before"].as_i64().map(|b| b.to_string()))
}

pub async fn logs(client: &Client, a: LogsArgs<'_>, output: Output) -> anyhow::Result<ExitCode> {
    let mut q = query(&[
        ("since", a.since.map(str::to_string)),
        ("until", a.until.map(str::to_string)),
        ("level", a.level.map(str::to_string)),
        ("q", a.grep.map(str::to_string)),
        ("regex", a.regex.map(str::to_string)),
        ("request_id", a.request_id.map(str::to_string)),
        ("before", a.before.map(str::to_string)),
        ("limit", Some(a.limit.to_string())),
    ]);
    let path = format!("/v1/functions/{}/logs", a.function);
    if a.follow {
        q.push(("follow".into(), "true".into()));
        return follow(client, &path, &q, output).await;
    }
    let page: Value = client
        .json(client.request(Method::GET, &path).query(&q))
        .await?;
    if output == Output::Json {
        println!("{}", serde_json::to_string_pretty(&page)?);
        return Ok(ExitCode::SUCCESS);
    }
    let mut out = std::io::stdout().lock();
    // Newest first from the API; printed oldest first, as a log is read.
    let lines = page["lines"].as_array().cloned().unwrap_or_default();
    let node = several_nodes(&lines);
    for l in lines.iter().rev() {
        print_line(&mut out, l, node)?;
    }
    warn_unreachable(&page);
    if let Some(before) = next_page(&page) {
        eprintln!("(older lines: add --before {before})");
    }
    if let Some(n) = page["dropped_lines"].as_u64().filter(|n| *n > 0) {
        eprintln!("({n} older lines were dropped to keep this function under its log cap)");
    }
    Ok(ExitCode::SUCCESS)
}

/// Prints lines as the server streams them (server-sent events) until interrupted: as
/// text, or with `-o json` one object per line (JSON Lines), `{"missed": N}` when this
/// follower fell behind and the server skipped N lines.
pub(crate) async fn follow(
    client: &Client,
    path: &str,
    q: &[(String, String)],
    output: Output,
) -> anyhow::Result<ExitCode> {
    let res = client
        .send(
            client
                .request(Method::GET, path)
                .query(q)
                .header("accept", "text/event-stream"),
        )
        .await?;
    let mut body = res.bytes_stream();
    let mut buf = Vec::new();
    while let Some(chunk) = body.next().await {
        buf.extend_from_slice(&chunk.context("reading the log stream")?);
        // Events end with a blank line.
        while let Some(end) = buf.windows(2).position(|w| w == b"\n\n") {
            let event: Vec<u8> = buf.drain(..end + 2).collect();
            let text = String::from_utf8_lossy(&event);
            let mut kind = "message";
            let mut data = String::new();
            for line in text.lines() {
                if let Some(k) = line.strip_prefix("event:") {
                    kind = if k.trim() == "missed" {
                        "missed"
                    } else {
                        "message"
                    };
                } else if let Some(d) = line.strip_prefix("data:") {
                    data.push_str(d.trim_start());
                }
            }
            if data.is_empty() {
                continue; // a keep-alive comment
            }
            let mut out = std::io::stdout().lock();
            match (kind, output) {
                // A program reading the lines learns of the gap in the stream itself.
                ("missed", Output::Json) => {
                    let n: u64 = data.trim().parse().unwrap_or(0);
                    writeln!(out, "{}", serde_json::json!({ "missed": n }))?;
                }
                ("missed", Output::Text) => {
                    eprintln!("({data} lines were missed: this follower fell behind)");
                }
                // Parsed and written again, so that each line is exactly one compact
                // object whatever the stream's framing.
                (_, Output::Json) => {
                    if let Ok(line) = serde_json::from_str::<Value>(&data) {
                        writeln!(out, "{line}")?;
                    }
                }
                (_, Output::Text) => {
                    if let Ok(line) = serde_json::from_str::<Value>(&data) {
                        print_line(&mut out, &line, false)?;
                    }
                }
            }
            out.flush()?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub struct EventsArgs<'a> {
    pub function: Option<&'a str>,
    pub event: Option<&'a str>,
    pub since: Option<&'a str>,
    pub grep: Option<&'a str>,
    pub limit: u32,
}

pub async fn events(
    client: &Client,
    a: EventsArgs<'_>,
    output: Output,
) -> anyhow::Result<ExitCode> {
    let q = query(&[
        ("function", a.function.map(str::to_string)),
        ("event", a.event.map(str::to_string)),
        ("since", a.since.map(str::to_string)),
        ("q", a.grep.map(str::to_string)),
        ("limit", Some(a.limit.to_string())),
    ]);
    let list: Value = client
        .json(client.request(Method::GET, "/v1/events").query(&q))
        .await?;
    if output == Output::Json {
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<24} {:<20} {:>8} {:<12} REASON",
        "TIME", "FUNCTION", "INSTANCE", "EVENT"
    );
    let events = list["events"].as_array().cloned().unwrap_or_default();
    for e in events.iter().rev() {
        println!(
            "{:<24} {:<20} {:>8} {:<12} {}",
            time_of(e["time_ms"].as_i64().unwrap_or(0)),
            e["function"].as_str().unwrap_or(""),
            e["instance_id"],
            e["event"].as_str().unwrap_or(""),
            e["reason"].as_str().unwrap_or("")
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Columns a sparkline takes at most; longer series are summed (or maxed) into groups.
const SPARK_WIDTH: usize = 60;

/// A one-line chart of `values`: ▁ for zero up to █ for the largest.
pub fn sparkline(values: &[f64]) -> String {
    const BARS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
    let max = values.iter().cloned().fold(0.0, f64::max);
    values
        .iter()
        .map(|v| {
            if max <= 0.0 || *v <= 0.0 {
                BARS[0]
            } else {
                BARS[((v / max) * 7.0).round().clamp(1.0, 7.0) as usize]
            }
        })
        .collect()
}

/// Fits a series into `SPARK_WIDTH` columns, combining neighbours with `combine`.
fn fit(values: Vec<f64>, combine: fn(f64, f64) -> f64) -> Vec<f64> {
    if values.len() <= SPARK_WIDTH {
        return values;
    }
    let group = values.len().div_ceil(SPARK_WIDTH);
    values
        .chunks(group)
        .map(|c| c.iter().cloned().fold(0.0, combine))
        .collect()
}

fn ms(v: &Value) -> String {
    v.as_f64()
        .map(|m| format!("{m:.1} ms"))
        .unwrap_or_else(|| "-".into())
}

pub async fn stats(
    client: &Client,
    function: &str,
    window: &str,
    step: &str,
    output: Output,
) -> anyhow::Result<ExitCode> {
    let v: Value = client
        .json(
            client
                .request(Method::GET, &format!("/v1/functions/{function}/stats"))
                .query(&[("window", window), ("step", step)]),
        )
        .await?;
    if output == Output::Json {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(ExitCode::SUCCESS);
    }
    let t = &v["totals"];
    let n = t["invocations"].as_u64().unwrap_or(0);
    let errors = t["errors"].as_u64().unwrap_or(0);
    println!("{function}: the last {window} in steps of {step}");
    println!(
        "  invocations {n:<8} errors {errors} ({:.1}%)   throttles {}   retries {}   cold starts {}",
        if n > 0 {
            errors as f64 * 100.0 / n as f64
        } else {
            0.0
        },
        t["throttles"],
        t["retries"],
        t["cold_starts"]
    );
    println!(
        "  duration    avg {}   p50 {}   p95 {}   p99 {}   instances max {}",
        ms(&t["duration_avg_ms"]),
        ms(&t["duration_p50_ms"]),
        ms(&t["duration_p95_ms"]),
        ms(&t["duration_p99_ms"]),
        t["instances_max"]
    );
    let series = v["series"].as_array().cloned().unwrap_or_default();
    let column = |key: &str| -> Vec<f64> {
        series
            .iter()
            .map(|p| p[key].as_f64().unwrap_or(0.0))
            .collect()
    };
    let add = |a: f64, b: f64| a + b;
    let max = |a: f64, b: f64| a.max(b);
    for (label, values) in [
        ("calls", fit(column("invocations"), add)),
        ("errors", fit(column("errors"), add)),
        ("throttles", fit(column("throttles"), add)),
        ("p99 ms", fit(column("duration_p99_ms"), max)),
        ("instances", fit(column("instances_max"), max)),
    ] {
        let peak = values.iter().cloned().fold(0.0, f64::max);
        println!("  {label:<10} {} max {peak:.0}", sparkline(&values));
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn usage(
    client: &Client,
    since: &str,
    until: Option<&str>,
    by: &str,
    output: Output,
) -> anyhow::Result<ExitCode> {
    let q = query(&[
        ("since", Some(since.to_string())),
        ("until", until.map(str::to_string)),
        ("by", Some(by.to_string())),
    ]);
    let v: Value = client
        .json(client.request(Method::GET, "/v1/usage").query(&q))
        .await?;
    if output == Output::Json {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<20} {:>10} {:>12} {:>14} {:>16} {:>12}",
        by.to_uppercase(),
        "REQUESTS",
        "BILLED_S",
        "GB_S",
        "PROVISIONED_GB_S",
        "COST"
    );
    let row = |key: &str, f: &Value| {
        println!(
            "{:<20} {:>10} {:>12.3} {:>14.6} {:>16.3} {:>12.6}",
            key,
            f["requests"],
            f["billed_ms"].as_f64().unwrap_or(0.0) / 1000.0,
            f["gb_seconds"].as_f64().unwrap_or(0.0),
            f["provisioned_gb_seconds"].as_f64().unwrap_or(0.0),
            f["cost_total"].as_f64().unwrap_or(0.0)
        );
    };
    for r in v["rows"].as_array().into_iter().flatten() {
        row(r["key"].as_str().unwrap_or(""), r);
    }
    row("TOTAL", &v["total"]);
    let p = &v["prices"];
    println!(
        "prices: {} per million requests, {} per GB-s, {} per provisioned GB-s; billed in \
         steps of {} ms",
        p["per_million_requests"],
        p["per_gb_second"],
        p["per_provisioned_gb_second"],
        v["billing_granularity_ms"]
    );
    Ok(ExitCode::SUCCESS)
}

/// Which invocation records to list.
pub struct RecordFilter<'a> {
    pub since: Option<&'a str>,
    pub trace_id: Option<&'a str>,
    pub limit: u32,
    /// A page's `next_cursor`.
    pub before: Option<&'a str>,
}

pub async fn invocations(
    client: &Client,
    function: &str,
    filter: RecordFilter<'_>,
    output: Output,
) -> anyhow::Result<ExitCode> {
    let q = query(&[
        ("since", filter.since.map(str::to_string)),
        ("trace_id", filter.trace_id.map(str::to_string)),
        ("limit", Some(filter.limit.to_string())),
        ("before", filter.before.map(str::to_string)),
    ]);
    let v: Value = client
        .json(
            client
                .request(
                    Method::GET,
                    &format!("/v1/functions/{function}/invocations"),
                )
                .query(&q),
        )
        .await?;
    if output == Output::Json {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(ExitCode::SUCCESS);
    }
    let rows = v["invocations"].as_array().cloned().unwrap_or_default();
    let node = several_nodes(&rows);
    // Trimmed: without a node column, rows end with COLD as they always did.
    let header = format!(
        "{:<24} {:<36} {:<8} {:<6} {:<10} {:>10} {:>8} {:>6} {:<5} {}",
        "STARTED",
        "REQUEST_ID",
        "VERSION",
        "TRIG",
        "STATUS",
        "HANDLER",
        "BILLED",
        "MB",
        "COLD",
        if node { "NODE" } else { "" }
    );
    println!("{}", header.trim_end());
    for r in &rows {
        let row = format!(
            "{:<24} {:<36} {:<8} {:<6} {:<10} {:>10} {:>8} {:>6} {:<5} {}",
            time_of(r["started_at_ms"].as_i64().unwrap_or(0)),
            r["request_id"].as_str().unwrap_or(""),
            r["version"].as_str().unwrap_or(""),
            r["trigger"].as_str().unwrap_or(""),
            r["status"].as_str().unwrap_or(""),
            ms(&r["handler_ms"]),
            r["billed_ms"],
            r["memory_mb"],
            r["cold_start"],
            r["node"].as_str().filter(|_| node).unwrap_or("")
        );
        println!("{}", row.trim_end());
    }
    warn_unreachable(&v);
    if let Some(before) = next_page(&v) {
        eprintln!("(older records: add --before {before})");
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sparklines_scale_to_the_peak() {
        assert_eq!(sparkline(&[0.0, 1.0, 2.0, 4.0]), "▁▃▅█");
        assert_eq!(sparkline(&[0.0, 0.0]), "▁▁");
        let long: Vec<f64> = (0..120).map(|i| i as f64).collect();
        assert_eq!(fit(long, |a, b| a + b).len(), 60);
    }
}
