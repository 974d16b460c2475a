//! The client subcommands: deploy, invoke, ls, describe, rm.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, bail};
use base64::Engine as _;
use futures_util::StreamExt;
use reqwest::{Method, StatusCode};
use serde_json::Value;

use crate::client::Client;
use crate::{Cli, Command, KeysCommand, Output, manifest, package};

/// Archives larger than this get a progress bar while uploading.
const PROGRESS_BYTES_MIN: usize = 1024 * 1024;

pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let client = Client::new(&cli)?;
    match &cli.command {
        Command::Deploy { dir } => deploy(&client, dir).await,
        Command::Invoke {
            name,
            data,
            data_file,
            logs,
        } => invoke(&client, name, data.as_deref(), data_file.as_deref(), *logs).await,
        Command::Ls => ls(&client, cli.output).await,
        Command::Describe { name } => describe(&client, name, cli.output).await,
        Command::Rm { name } => {
            client
                .send(client.request(Method::DELETE, &format!("/v1/functions/{name}")))
                .await?;
            println!("deleted {name}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Keys(k) => keys(&client, k, cli.output).await,
        Command::Events { function, limit } => {
            events(&client, function.as_deref(), *limit, cli.output).await
        }
        Command::Server(_) => unreachable!("the server is not a client command"),
    }
}

async fn deploy(client: &Client, dir: &Path) -> anyhow::Result<ExitCode> {
    let plan = manifest::load(dir).map_err(anyhow::Error::msg)?;
    for planned in plan {
        let mut spec = planned.spec;
        let zip = package::zip_dir(&planned.code_dir)
            .with_context(|| format!("packaging {}", planned.code_dir.display()))?;
        if zip.len() > model::limits::ARCHIVE_BYTES_MAX {
            bail!(
                "the code of {} zips to {} bytes; the limit is {} (leave out what the function does not need)",
                spec.name,
                zip.len(),
                model::limits::ARCHIVE_BYTES_MAX
            );
        }
        spec.code_sha256 = store::sha256_hex(&zip);
        upload_if_missing(client, &spec.code_sha256, zip).await?;
        // The resolved spec is the request: every setting explicit, the name in the path.
        let mut body = serde_json::to_value(&spec)?;
        if let Some(o) = body.as_object_mut() {
            o.remove("name");
        }
        let res = client
            .send(
                client
                    .request(Method::PUT, &format!("/v1/functions/{}", spec.name))
                    .json(&body),
            )
            .await?;
        let change = res
            .headers()
            .get("x-nimbus-change")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("deployed")
            .to_string();
        let f: Value = res.json().await?;
        println!(
            "{change} {} ({}, {}) revision {}",
            spec.name,
            f["runtime"].as_str().unwrap_or(""),
            f["handler"].as_str().unwrap_or(""),
            f["revision"]
        );
    }
    Ok(ExitCode::SUCCESS)
}

async fn upload_if_missing(client: &Client, sha: &str, zip: Vec<u8>) -> anyhow::Result<()> {
    let res = client
        .request(Method::HEAD, &format!("/v1/code/{sha}"))
        .send()
        .await
        .map_err(|e| client.connect_error(e))?;
    if res.status() == StatusCode::OK {
        return Ok(());
    }
    if res.status() != StatusCode::NOT_FOUND {
        return Err(crate::client::api_error(res).await);
    }
    let total = zip.len();
    let req = client
        .request(Method::POST, "/v1/code")
        .header("content-type", "application/zip");
    let req = if total >= PROGRESS_BYTES_MIN {
        let bar = indicatif::ProgressBar::new(total as u64);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "uploading {bytes}/{total_bytes} {wide_bar} {eta}",
            )
            .expect("a valid template"),
        );
        let chunks: Vec<bytes::Bytes> = bytes::Bytes::from(zip)
            .chunks(64 * 1024)
            .map(bytes::Bytes::copy_from_slice)
            .collect();
        let stream = futures_util::stream::iter(chunks).map(move |c| {
            bar.inc(c.len() as u64);
            if bar.position() >= bar.length().unwrap_or(0) {
                bar.finish_and_clear();
            }
            Ok::<_, std::io::Error>(c)
        });
        req.header("content-length", total)
            .body(reqwest::Body::wrap_stream(stream))
    } else {
        req.body(zip)
    };
    client.send(req).await?;
    Ok(())
}

async fn invoke(
    client: &Client,
    name: &str,
    data: Option<&str>,
    data_file: Option<&Path>,
    show_logs: bool,
) -> anyhow::Result<ExitCode> {
    let event: Vec<u8> = match (data, data_file) {
        (Some(d), _) => d.as_bytes().to_vec(),
        (None, Some(p)) if p == Path::new("-") => {
            let mut buf = Vec::new();
            std::io::Read::read_to_end(&mut std::io::stdin(), &mut buf)?;
            buf
        }
        (None, Some(p)) => std::fs::read(p).with_context(|| format!("reading {}", p.display()))?,
        (None, None) => Vec::new(),
    };
    let mut req = client
        .request(Method::POST, &format!("/v1/functions/{name}/invocations"))
        .body(event);
    if show_logs {
        req = req.header("x-nimbus-log-type", "tail");
    }
    let res = client.send(req).await?;
    let error_type = res
        .headers()
        .get("x-nimbus-error-type")
        .and_then(|v| v.to_str().ok())
        .map(String::from);
    let log_tail = res
        .headers()
        .get("x-nimbus-log-result")
        .and_then(|v| v.to_str().ok())
        .map(String::from);
    let body = res.bytes().await.context("reading the result")?;
    if let Some(tail) = log_tail
        && let Ok(text) = base64::engine::general_purpose::STANDARD.decode(tail)
    {
        eprint!("{}", String::from_utf8_lossy(&text));
    }
    if let Some(error_type) = error_type {
        let err: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        eprintln!(
            "error: function {name} failed: {error_type}: {}",
            err["errorMessage"].as_str().unwrap_or("")
        );
        if let Some(trace) = err["stackTrace"].as_array() {
            for line in trace.iter().filter_map(Value::as_str) {
                eprintln!("  {}", line.trim_end());
            }
        }
        return Ok(ExitCode::FAILURE);
    }
    let mut out = std::io::stdout().lock();
    out.write_all(&body)?;
    if !body.ends_with(b"\n") {
        out.write_all(b"\n")?;
    }
    Ok(ExitCode::SUCCESS)
}

async fn ls(client: &Client, output: Output) -> anyhow::Result<ExitCode> {
    let list: Value = client
        .json(client.request(Method::GET, "/v1/functions"))
        .await?;
    if output == Output::Json {
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(ExitCode::SUCCESS);
    }
    let functions = list["functions"].as_array().cloned().unwrap_or_default();
    if functions.is_empty() {
        println!("no functions; deploy one with `nimbus deploy DIR`");
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<24} {:<8} {:<24} {:>7} {:>8} {:>4}",
        "NAME", "RUNTIME", "HANDLER", "MEMORY", "TIMEOUT", "REV"
    );
    for f in functions {
        println!(
            "{:<24} {:<8} {:<24} {:>5}MB {:>6}ms {:>4}",
            f["name"].as_str().unwrap_or(""),
            f["runtime"].as_str().unwrap_or(""),
            f["handler"].as_str().unwrap_or(""),
            f["memory_mb"],
            f["timeout_ms"],
            f["revision"],
        );
    }
    Ok(ExitCode::SUCCESS)
}

async fn describe(client: &Client, name: &str, output: Output) -> anyhow::Result<ExitCode> {
    let f: Value = client
        .json(client.request(Method::GET, &format!("/v1/functions/{name}")))
        .await?;
    if output == Output::Json {
        println!("{}", serde_json::to_string_pretty(&f)?);
        return Ok(ExitCode::SUCCESS);
    }
    for key in [
        "name",
        "runtime",
        "handler",
        "memory_mb",
        "timeout_ms",
        "description",
        "code_sha256",
        "revision",
        "created_at_ms",
        "updated_at_ms",
    ] {
        let v = &f[key];
        println!(
            "{key:<14} {}",
            v.as_str()
                .map(String::from)
                .unwrap_or_else(|| v.to_string())
        );
    }
    if let Some(env) = f["env"].as_object().filter(|e| !e.is_empty()) {
        println!("env");
        for (k, v) in env {
            println!("  {k}={}", v.as_str().unwrap_or(""));
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn keys(client: &Client, command: &KeysCommand, output: Output) -> anyhow::Result<ExitCode> {
    match command {
        KeysCommand::Create { name } => {
            let created: Value = client
                .json(
                    client
                        .request(Method::POST, "/v1/keys")
                        .json(&serde_json::json!({ "name": name })),
                )
                .await?;
            if output == Output::Json {
                println!("{}", serde_json::to_string_pretty(&created)?);
            } else {
                println!("{}", created["key"].as_str().unwrap_or(""));
                eprintln!(
                    "created invoke key {} ({name}); send it in the x-nimbus-key header. It is not shown again.",
                    created["id"].as_str().unwrap_or("")
                );
            }
        }
        KeysCommand::Ls => {
            let list: Value = client.json(client.request(Method::GET, "/v1/keys")).await?;
            if output == Output::Json {
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else {
                println!("{:<18} {:<24} {:>14}", "ID", "NAME", "CREATED_AT_MS");
                for k in list["keys"].as_array().into_iter().flatten() {
                    println!(
                        "{:<18} {:<24} {:>14}",
                        k["id"].as_str().unwrap_or(""),
                        k["name"].as_str().unwrap_or(""),
                        k["created_at_ms"]
                    );
                }
            }
        }
        KeysCommand::Rm { id } => {
            client
                .send(client.request(Method::DELETE, &format!("/v1/keys/{id}")))
                .await?;
            println!("deleted invoke key {id}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn events(
    client: &Client,
    function: Option<&str>,
    limit: usize,
    output: Output,
) -> anyhow::Result<ExitCode> {
    let mut path = format!("/v1/events?limit={limit}");
    if let Some(f) = function {
        // Function names are [A-Za-z0-9_-]: nothing to escape.
        path.push_str(&format!("&function={f}"));
    }
    let req = client.request(Method::GET, &path);
    let list: Value = client.json(req).await?;
    if output == Output::Json {
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<14} {:<20} {:>8} {:<10} REASON",
        "TIME_MS", "FUNCTION", "INSTANCE", "EVENT"
    );
    for e in list["events"].as_array().into_iter().flatten() {
        println!(
            "{:<14} {:<20} {:>8} {:<10} {}",
            e["time_ms"],
            e["function"].as_str().unwrap_or(""),
            e["instance_id"],
            e["event"].as_str().unwrap_or(""),
            e["reason"].as_str().unwrap_or("")
        );
    }
    Ok(ExitCode::SUCCESS)
}
