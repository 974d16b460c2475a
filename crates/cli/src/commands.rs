//! The client subcommands: deploy, publish, versions and aliases, invoke, ls, rm, keys.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use base64::Engine as _;
use futures_util::StreamExt;
use reqwest::{Method, StatusCode};
use serde_json::Value;

use crate::client::Client;
use crate::observe;
use crate::{
    AliasCommand, Cli, Command, DlqCommand, InvocationCommand, KeysCommand, NodesCommand, Output,
    TriggersCommand, manifest, package,
};

/// Archives larger than this get a progress bar while uploading.
const PROGRESS_BYTES_MIN: usize = 1024 * 1024;

pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    // `init` talks to no server, so it needs no token.
    if let Command::Init {
        dir,
        template,
        name,
        list,
    } = &cli.command
    {
        return init(
            dir,
            template,
            name.as_deref(),
            *list,
            &cli.endpoint,
            cli.output,
        );
    }
    let client = Client::new(&cli)?;
    match &cli.command {
        Command::Deploy {
            dir,
            publish,
            no_check,
            build,
        } => {
            let local = match build {
                crate::BuildAt::Server => None,
                crate::BuildAt::Local => {
                    Some(crate::local::LocalPlatform::open(&crate::local::project_dir(dir)?).await?)
                }
            };
            let deployed = deploy_with(
                &client,
                dir,
                *publish,
                !*no_check,
                cli.output,
                local.as_ref(),
            )
            .await;
            if let Some(local) = local {
                local.shutdown().await;
            }
            deployed
        }
        Command::Publish { name, description } => {
            let v = publish(&client, name, description).await?;
            if cli.output == Output::Json {
                print_json(&v)?;
            } else {
                println!("{}", describe_version(name, &v));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Versions { name, version } => versions(&client, name, *version, cli.output).await,
        Command::VersionRm { name, version } => {
            client
                .send(client.request(
                    Method::DELETE,
                    &format!("/v1/functions/{name}/versions/{version}"),
                ))
                .await?;
            if cli.output == Output::Json {
                print_json(
                    &serde_json::json!({"function": name, "version": version, "deleted": true}),
                )?;
            } else {
                println!("deleted version {version} of {name}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Alias(a) => alias(&client, a, cli.output).await,
        Command::Invoke {
            name,
            affinity,
            is_async,
            idempotency_key,
            data,
            data_file,
            logs,
        } => {
            let event = Event {
                data: data.as_deref(),
                file: data_file.as_deref(),
            };
            if *is_async {
                return submit(&client, name, event, idempotency_key.as_deref(), cli.output).await;
            }
            invoke(&client, name, affinity.as_deref(), event, *logs, cli.output).await
        }
        Command::Invocation {
            cmd: InvocationCommand::Show { id },
        }
        | Command::Dlq(DlqCommand::Show { id }) => {
            let v: Value = client
                .json(client.request(Method::GET, &format!("/v1/invocations/{id}")))
                .await?;
            println!("{}", serde_json::to_string_pretty(&v)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Dlq(DlqCommand::Ls { function }) => {
            let path = match function {
                Some(f) => format!("/v1/dlq?function={f}"),
                None => "/v1/dlq".to_string(),
            };
            let list: Value = client.json(client.request(Method::GET, &path)).await?;
            if cli.output == Output::Json {
                print_json(&serde_json::json!({ "dead_letters": list }))?;
            } else {
                println!(
                    "{:<38} {:<24} {:<8} ERROR",
                    "REQUEST_ID", "FUNCTION", "ATTEMPTS"
                );
                for a in list.as_array().into_iter().flatten() {
                    println!(
                        "{:<38} {:<24} {:<8} {}",
                        a["request_id"].as_str().unwrap_or(""),
                        a["function"].as_str().unwrap_or(""),
                        a["attempts"],
                        a["error"]["errorType"].as_str().unwrap_or("")
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Dlq(DlqCommand::Redrive { ids, function }) => {
            let body = match function {
                Some(f) => serde_json::json!({ "function": f }),
                None if ids.is_empty() => bail!("name the dead letters to redrive, or --function"),
                None => serde_json::json!({ "ids": ids }),
            };
            let r: Value = client
                .json(client.request(Method::POST, "/v1/dlq/redrive").json(&body))
                .await?;
            if cli.output == Output::Json {
                print_json(&r)?;
            } else {
                println!("redrove {}", r["redriven"]);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Ls => ls(&client, cli.output).await,
        Command::Describe { name } => crate::describe::describe(&client, name, cli.output).await,
        Command::Rm { name } => {
            client
                .send(client.request(Method::DELETE, &format!("/v1/functions/{name}")))
                .await?;
            if cli.output == Output::Json {
                print_json(&serde_json::json!({"function": name, "deleted": true}))?;
            } else {
                println!("deleted {name}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Keys(k) => keys(&client, k, cli.output).await,
        Command::Triggers(t) => triggers(&client, t, cli.output).await,
        Command::Bucket(b) => crate::bucket::bucket(&client, b, cli.output).await,
        Command::Flow(f) => crate::flow::run(&client, f, cli.output).await,
        Command::Nodes(NodesCommand::Ls) => nodes(&client, cli.output).await,
        Command::Events {
            function,
            event,
            since,
            grep,
            limit,
        } => {
            let a = observe::EventsArgs {
                function: function.as_deref(),
                event: event.as_deref(),
                since: since.as_deref(),
                grep: grep.as_deref(),
                limit: *limit,
            };
            observe::events(&client, a, cli.output).await
        }
        Command::Logs {
            function,
            since,
            until,
            level,
            grep,
            regex,
            request_id,
            limit,
            before,
            follow,
        } => {
            let a = observe::LogsArgs {
                function,
                since: since.as_deref(),
                until: until.as_deref(),
                level: level.as_deref(),
                grep: grep.as_deref(),
                regex: regex.as_deref(),
                request_id: request_id.as_deref(),
                limit: *limit,
                before: before.as_deref(),
                follow: *follow,
            };
            observe::logs(&client, a, cli.output).await
        }
        Command::Stats {
            function,
            window,
            step,
        } => observe::stats(&client, function, window, step, cli.output).await,
        Command::Usage { since, until, by } => {
            observe::usage(&client, since, until.as_deref(), by, cli.output).await
        }
        Command::Invocation {
            cmd:
                InvocationCommand::Ls {
                    function,
                    since,
                    trace_id,
                    limit,
                    before,
                },
        } => {
            let filter = observe::RecordFilter {
                since: since.as_deref(),
                trace_id: trace_id.as_deref(),
                limit: *limit,
                before: before.as_deref(),
            };
            observe::invocations(&client, function, filter, cli.output).await
        }
        Command::Server(_) | Command::Local(_) | Command::Dev { .. } => {
            unreachable!("the server and local runs are not client commands")
        }
        Command::Init { .. } => unreachable!("init is handled before the client is made"),
    }
}

/// `nimbus init`: lists the templates, or writes one and says what to do next.
fn init(
    dir: &Path,
    template: &str,
    name: Option<&str>,
    list: bool,
    endpoint: &str,
    output: Output,
) -> anyhow::Result<ExitCode> {
    if list {
        if output == Output::Json {
            let templates: Vec<Value> = crate::init::TEMPLATES
                .iter()
                .map(|t| serde_json::json!({"name": t.name, "about": t.about, "web": t.web}))
                .collect();
            println!(
                "{}",
                serde_json::to_string_pretty(&serde_json::json!({ "templates": templates }))?
            );
        } else {
            for t in crate::init::TEMPLATES {
                println!("{:<10} {}", t.name, t.about);
            }
        }
        return Ok(ExitCode::SUCCESS);
    }
    let template = crate::init::template(template)?;
    let created = crate::init::init(dir, template, name)?;
    let steps = crate::init::next_steps(&created, dir, endpoint);
    if output == Output::Json {
        let v = serde_json::json!({
            "name": created.name,
            "template": template.name,
            "dir": dir,
            "files": created.files,
            "next": steps,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        println!(
            "created {} ({}) in {}: {}",
            created.name,
            template.name,
            dir.display(),
            created.files.join(", ")
        );
        println!("next:");
        for step in steps {
            println!("  {step}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Prints `value` as the one JSON object a command answers with.
fn print_json(value: &Value) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// A deployed function's routes as `deploy` reports them: each trigger's path, methods,
/// auth and full URL.
pub(crate) fn routes_of(f: &Value, base: &str) -> Vec<Value> {
    f["triggers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| t.get("http"))
        .map(|h| {
            let path = h["path"].as_str().unwrap_or("");
            serde_json::json!({
                "path": path,
                "methods": h.get("methods").cloned().unwrap_or_else(|| serde_json::json!([])),
                "auth": h.get("auth").cloned().unwrap_or_else(|| "admin".into()),
                "url": format!("{base}{path}"),
            })
        })
        .collect()
}

/// One route of `routes_of` as a line: `route GET,POST /items (key): http://…/items`.
pub(crate) fn route_text(r: &Value) -> String {
    let methods: Vec<&str> = r["methods"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    let methods = if methods.is_empty() {
        "ANY".to_string()
    } else {
        methods.join(",")
    };
    format!(
        "route {methods} {} ({}): {}",
        r["path"].as_str().unwrap_or(""),
        r["auth"].as_str().unwrap_or(""),
        r["url"].as_str().unwrap_or("")
    )
}

pub(crate) async fn deploy(
    client: &Client,
    dir: &Path,
    publish_too: bool,
    check: bool,
    output: Output,
) -> anyhow::Result<ExitCode> {
    deploy_with(client, dir, publish_too, check, output, None).await
}

/// Deploys, with the dependencies built by `local` on this machine when given.
async fn deploy_with(
    client: &Client,
    dir: &Path,
    publish_too: bool,
    check: bool,
    output: Output,
    local: Option<&crate::local::LocalPlatform>,
) -> anyhow::Result<ExitCode> {
    let project = manifest::load_project(dir).map_err(anyhow::Error::msg)?;
    let plan = project.functions;
    let text = output == Output::Text;
    let mut deployed = Vec::new();
    // Each layer is packed and uploaded once, however many functions use it.
    let mut layers: std::collections::HashMap<PathBuf, String> = Default::default();
    for planned in plan {
        let aliases = planned.aliases.clone();
        let mut spec = planned.spec;
        let packed = package::pack(
            &planned.code_dir,
            &planned.exclude,
            spec.build && spec.runtime != model::Runtime::Custom,
        )
        .with_context(|| format!("packaging {}", planned.code_dir.display()))?;
        for warning in &packed.warnings {
            eprintln!("{}: {warning}", spec.name);
        }
        let zip = packed.zip;
        if zip.len() > model::limits::ARCHIVE_BYTES_MAX {
            bail!(
                "the code of {} zips to {} bytes; the limit is {} (leave out what the function does not need)",
                spec.name,
                zip.len(),
                model::limits::ARCHIVE_BYTES_MAX
            );
        }
        spec.code_sha256 = store::sha256_hex(&zip);
        let built_here = match local {
            Some(local) if spec.build && spec.runtime != model::Runtime::Custom => {
                local.build(&spec, zip.clone()).await?
            }
            _ => None,
        };
        upload_if_missing(client, &spec.code_sha256, zip).await?;
        if let Some((deps, bytes)) = built_here {
            upload_if_missing(client, &deps, bytes).await?;
            eprintln!("{}: dependencies installed here", spec.name);
            spec.deps_sha256 = deps;
        }
        for (name, layer_dir) in &planned.layers {
            let sha = match layers.get(layer_dir) {
                Some(sha) => sha.clone(),
                None => {
                    let packed = package::pack(layer_dir, &[], false)
                        .with_context(|| format!("packaging layer {name}"))?;
                    let sha = store::sha256_hex(&packed.zip);
                    upload_if_missing(client, &sha, packed.zip).await?;
                    layers.insert(layer_dir.clone(), sha.clone());
                    sha
                }
            };
            spec.layers.push(model::Layer {
                name: name.clone(),
                sha256: sha,
            });
        }
        if spec.build
            && spec.runtime != model::Runtime::Custom
            && spec.deps_sha256.is_empty()
            && let Some(deps) = build_deps(client, &spec).await?
        {
            spec.deps_sha256 = deps;
        }
        // The resolved spec is the request: every setting explicit, the name in the path.
        let mut body = serde_json::to_value(&spec)?;
        if let Some(o) = body.as_object_mut() {
            o.remove("name");
        }
        let res = client
            .send(
                client
                    .request(
                        Method::PUT,
                        &format!("/v1/functions/{}?check={check}", spec.name),
                    )
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
        let routes = routes_of(&f, client.base());
        let url = match &f["url"] {
            Value::Null => Value::Null,
            _ => format!("{}/fn/{}/", client.base(), spec.name).into(),
        };
        if text {
            println!(
                "{change} {} ({}, {}) revision {}",
                spec.name,
                f["runtime"].as_str().unwrap_or(""),
                f["handler"].as_str().unwrap_or(""),
                f["revision"]
            );
            for r in &routes {
                println!("  {}", route_text(r));
            }
            if let Some(u) = url.as_str() {
                println!(
                    "  url   {u} ({})",
                    f["url"]["auth"].as_str().unwrap_or("admin")
                );
            }
        }
        let mut entry = serde_json::json!({
            "name": spec.name,
            "change": change,
            "revision": f["revision"],
            "runtime": f["runtime"],
            "routes": routes,
            "url": url,
        });
        if publish_too {
            let v = publish(client, &spec.name, "").await?;
            if text {
                println!("{}", describe_version(&spec.name, &v));
            }
            let version = v["version"].as_u64().unwrap_or(0) as u32;
            let mut moved = Vec::new();
            for (alias, how) in &aliases {
                moved.push(move_alias(client, &spec.name, alias, version, how, text).await?);
            }
            entry["published"] = serde_json::json!({
                "version": v["version"],
                "created": v["created"],
                "aliases": moved,
            });
        } else if !aliases.is_empty() && text {
            println!(
                "(aliases of {} move with `nimbus deploy --publish`)",
                spec.name
            );
        }
        deployed.push(entry);
    }
    // After the functions: a flow may call a function this deploy has just created.
    let flows = crate::flow::deploy(client, &project.flows, text).await?;
    if !text {
        print_json(&serde_json::json!({ "functions": deployed, "flows": flows }))?;
    }
    Ok(ExitCode::SUCCESS)
}

async fn publish(client: &Client, name: &str, description: &str) -> anyhow::Result<Value> {
    let res = client
        .send(
            client
                .request(Method::POST, &format!("/v1/functions/{name}/versions"))
                .json(&serde_json::json!({ "description": description })),
        )
        .await?;
    let created = res.status() == StatusCode::CREATED;
    let mut v: Value = res.json().await?;
    v["function"] = name.into();
    v["created"] = Value::Bool(created);
    Ok(v)
}

fn describe_version(name: &str, v: &Value) -> String {
    if v["created"] == Value::Bool(true) {
        format!("published {name}:{}", v["version"])
    } else {
        format!("{name} is unchanged since version {}", v["version"])
    }
}

/// Moves `alias` to `version` as the manifest says: fully, or as a canary next to the
/// version it has now; the alias as written (printed too with `text`).
async fn move_alias(
    client: &Client,
    name: &str,
    alias: &str,
    version: u32,
    how: &manifest::AliasEntry,
    text: bool,
) -> anyhow::Result<Value> {
    let path = format!("/v1/functions/{name}/aliases/{alias}");
    let current = client.request(Method::GET, &path).send().await;
    let current: Option<Value> = match current {
        Ok(res) if res.status() == StatusCode::OK => Some(res.json().await?),
        _ => None,
    };
    let main = current
        .as_ref()
        .and_then(|c| c["version"].as_u64())
        .map(|v| v as u32);
    let body = match (how.canary_percent, main) {
        (Some(percent), Some(main)) if main != version => serde_json::json!({
            "version": main,
            "canary": {"version": version, "percent": percent, "guard": how.guard},
        }),
        _ => serde_json::json!({ "version": version }),
    };
    client
        .send(client.request(Method::PUT, &path).json(&body))
        .await?;
    if text {
        match &body["canary"] {
            Value::Null => println!("alias {name}:{alias} -> version {version}"),
            c => println!(
                "alias {name}:{alias} -> version {} with version {version} at {}%",
                body["version"], c["percent"]
            ),
        }
    }
    let mut moved = body;
    moved["alias"] = alias.into();
    Ok(moved)
}

async fn versions(
    client: &Client,
    name: &str,
    version: Option<u32>,
    output: Output,
) -> anyhow::Result<ExitCode> {
    let path = match version {
        Some(v) => format!("/v1/functions/{name}/versions/{v}"),
        None => format!("/v1/functions/{name}/versions"),
    };
    let value: Value = client.json(client.request(Method::GET, &path)).await?;
    if version.is_some() {
        print_json(&value)?;
        return Ok(ExitCode::SUCCESS);
    }
    if output == Output::Json {
        print_json(&serde_json::json!({"function": name, "versions": value}))?;
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<8} {:<14} {:<16} DESCRIPTION",
        "VERSION", "CODE", "CREATED_MS"
    );
    for v in value.as_array().into_iter().flatten() {
        println!(
            "{:<8} {:<14} {:<16} {}",
            v["version"],
            v["code_sha256"]
                .as_str()
                .unwrap_or("")
                .get(..12)
                .unwrap_or(""),
            v["created_at_ms"],
            v["description"].as_str().unwrap_or("")
        );
    }
    Ok(ExitCode::SUCCESS)
}

async fn alias(client: &Client, cmd: &AliasCommand, output: Output) -> anyhow::Result<ExitCode> {
    match cmd {
        AliasCommand::Set {
            name,
            alias,
            version,
            canary,
            max_error_rate,
            window_ms,
            min_calls,
        } => {
            let canary = match canary {
                None => Value::Null,
                Some(text) => {
                    let (v, p) = text.split_once('=').ok_or_else(|| {
                        anyhow::anyhow!("--canary takes VERSION=PERCENT, e.g. 3=10; got `{text}`")
                    })?;
                    let v: u32 = v
                        .parse()
                        .map_err(|_| anyhow::anyhow!("--canary: `{v}` is not a version number"))?;
                    let p: f64 = p
                        .trim_end_matches('%')
                        .parse()
                        .map_err(|_| anyhow::anyhow!("--canary: `{p}` is not a percent"))?;
                    let guard = max_error_rate.map(|rate| {
                        serde_json::json!({"max_error_rate": rate, "window_ms": window_ms, "min_calls": min_calls})
                    });
                    serde_json::json!({"version": v, "percent": p, "guard": guard})
                }
            };
            if max_error_rate.is_some() && canary.is_null() {
                bail!("--max-error-rate guards a canary; add --canary VERSION=PERCENT");
            }
            let body = serde_json::json!({"version": version, "canary": canary});
            let a: Value = client
                .json(
                    client
                        .request(
                            Method::PUT,
                            &format!("/v1/functions/{name}/aliases/{alias}"),
                        )
                        .json(&body),
                )
                .await?;
            if output == Output::Json {
                print_json(&a)?;
            } else {
                println!("alias {name}:{alias} -> {}", alias_target(&a));
            }
        }
        AliasCommand::Ls { name } => {
            let list: Value = client
                .json(client.request(Method::GET, &format!("/v1/functions/{name}/aliases")))
                .await?;
            if output == Output::Json {
                print_json(&serde_json::json!({"function": name, "aliases": list}))?;
            } else {
                println!("{:<20} TARGET", "ALIAS");
                for a in list.as_array().into_iter().flatten() {
                    println!(
                        "{:<20} {}",
                        a["name"].as_str().unwrap_or(""),
                        alias_target(a)
                    );
                }
            }
        }
        AliasCommand::Rm { name, alias } => {
            client
                .send(client.request(
                    Method::DELETE,
                    &format!("/v1/functions/{name}/aliases/{alias}"),
                ))
                .await?;
            if output == Output::Json {
                print_json(
                    &serde_json::json!({"function": name, "alias": alias, "deleted": true}),
                )?;
            } else {
                println!("deleted alias {name}:{alias}");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `version 1`, or `version 1, canary 2 at 10%` (with a rollback's reason).
pub(crate) fn alias_target(a: &Value) -> String {
    let mut text = format!("version {}", a["version"]);
    if let Some(c) = a["canary"].as_object() {
        text.push_str(&format!(", canary {} at {}%", c["version"], c["percent"]));
        if let Some(why) = c.get("rolled_back").and_then(Value::as_str) {
            text.push_str(&format!(" ({why})"));
        }
    }
    text
}

/// Has the server install the dependencies the uploaded code declares, showing the tool's
/// output as it comes (on stderr, indented); the archive to deploy with, if any.
async fn build_deps(client: &Client, spec: &model::FunctionSpec) -> anyhow::Result<Option<String>> {
    let mut res = client
        .send(
            client
                .request(Method::POST, "/v1/builds?follow=true")
                .json(&serde_json::json!({
                    "runtime": spec.runtime.to_string(),
                    "code_sha256": spec.code_sha256,
                })),
        )
        .await?;
    let mut pending = Vec::new();
    let mut last = Value::Null;
    while let Some(chunk) = res.chunk().await.context("reading the build's output")? {
        pending.extend_from_slice(&chunk);
        while let Some(end) = pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = pending.drain(..=end).collect();
            let Ok(v) = serde_json::from_slice::<Value>(&line) else {
                continue;
            };
            match v["line"].as_str() {
                Some(text) => eprintln!("  | {text}"),
                None => last = v,
            }
        }
    }
    if let Some(code) = last["code"].as_str() {
        bail!(
            "{}: {} ({code}); the function was not changed",
            spec.name,
            last["message"].as_str().unwrap_or("").trim_end()
        );
    }
    let deps = last["deps_sha256"].as_str().map(str::to_string);
    match last["status"].as_str() {
        Some("built") => eprintln!(
            "{}: dependencies installed in {:.1} s",
            spec.name,
            last["duration_ms"].as_f64().unwrap_or(0.0) / 1000.0
        ),
        Some("cached") => eprintln!("{}: dependencies unchanged, built before", spec.name),
        Some(_) => {}
        None => bail!("{}: the build ended without a result", spec.name),
    }
    Ok(deps)
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

/// Where `nimbus invoke` takes its event from.
struct Event<'a> {
    data: Option<&'a str>,
    file: Option<&'a Path>,
}

/// `nimbus invoke --async`: stores the event and prints its request id.
async fn submit(
    client: &Client,
    name: &str,
    event: Event<'_>,
    idempotency_key: Option<&str>,
    output: Output,
) -> anyhow::Result<ExitCode> {
    let body = read_event(&event)?;
    let mut req = client
        .request(Method::POST, &format!("/v1/functions/{name}/invocations"))
        .header("x-nimbus-invocation-type", "async")
        .body(body);
    if let Some(key) = idempotency_key {
        req = req.header("x-nimbus-idempotency-key", key);
    }
    let v: Value = client.json(req).await?;
    if output == Output::Json {
        // The API's 202 answer is already the one object: `{request_id, duplicate}`.
        print_json(&v)?;
        return Ok(ExitCode::SUCCESS);
    }
    let id = v["request_id"].as_str().unwrap_or_default();
    if v["duplicate"] == Value::Bool(true) {
        println!("{id} (already submitted with this idempotency key)");
    } else {
        println!("{id}");
    }
    Ok(ExitCode::SUCCESS)
}

/// `nimbus local ...`: runs with no server, so no client either.
pub async fn local(cmd: &crate::LocalCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        crate::LocalCommand::Invoke {
            function,
            dir,
            data,
            data_file,
            route,
        } => {
            let body = read_event(&Event {
                data: data.as_deref(),
                file: data_file.as_deref(),
            })?;
            let event = match route {
                None => crate::local::LocalEvent::Event(body),
                Some(route) => {
                    let Some((method, path)) = route.trim().split_once(' ') else {
                        bail!("--route takes a method and a path: \"GET /items/7\", not `{route}`");
                    };
                    crate::local::LocalEvent::Route {
                        method: method.to_string(),
                        path: path.trim().to_string(),
                        body,
                    }
                }
            };
            crate::local::invoke(dir, function, event).await
        }
    }
}

fn read_event(event: &Event<'_>) -> anyhow::Result<Vec<u8>> {
    Ok(match (event.data, event.file) {
        (Some(d), _) => d.as_bytes().to_vec(),
        (None, Some(p)) if p == Path::new("-") => {
            let mut buf = Vec::new();
            std::io::Read::read_to_end(&mut std::io::stdin(), &mut buf)?;
            buf
        }
        (None, Some(p)) => std::fs::read(p).with_context(|| format!("reading {}", p.display()))?,
        (None, None) => Vec::new(),
    })
}

async fn invoke(
    client: &Client,
    name: &str,
    affinity: Option<&str>,
    event: Event<'_>,
    show_logs: bool,
    output: Output,
) -> anyhow::Result<ExitCode> {
    let event = read_event(&event)?;
    let mut req = client
        .request(Method::POST, &format!("/v1/functions/{name}/invocations"))
        .body(event);
    if show_logs {
        req = req.header("x-nimbus-log-type", "tail");
    }
    if let Some(key) = affinity {
        req = req.header("x-nimbus-affinity", key);
    }
    let res = client.send(req).await?;
    let header = |key: &str| {
        res.headers()
            .get(key)
            .and_then(|v| v.to_str().ok())
            .map(String::from)
    };
    let answer = Answer {
        request_id: header("x-nimbus-request-id").unwrap_or_default(),
        version: header("x-nimbus-version"),
        error_type: header("x-nimbus-error-type"),
        content_type: header("content-type").unwrap_or_default(),
        duration_ms: header("x-nimbus-duration-ms").and_then(|d| d.parse().ok()),
        cold_start: header("x-nimbus-cold-start").as_deref() == Some("true"),
        logs: header("x-nimbus-log-result").map(|tail| {
            let text = base64::engine::general_purpose::STANDARD
                .decode(tail)
                .unwrap_or_default();
            String::from_utf8_lossy(&text).into_owned()
        }),
        body: res.bytes().await.context("reading the result")?.to_vec(),
    };
    let failed = answer.error_type.is_some();
    if output == Output::Json {
        let v = answer.to_json();
        print_json(&v)?;
        if let Some(error_type) = &answer.error_type {
            // The object on stdout says it all; stderr keeps the one line every failing
            // command leaves (the message's first line: the stack is in the object).
            let message = v["error"]["errorMessage"].as_str().unwrap_or("");
            eprintln!(
                "error: function {name} failed: {error_type}: {}",
                message.lines().next().unwrap_or("")
            );
        }
    } else {
        if let Some(logs) = &answer.logs {
            eprint!("{logs}");
        }
        if let Some(error_type) = &answer.error_type {
            let err: Value = serde_json::from_slice(&answer.body).unwrap_or(Value::Null);
            eprintln!(
                "error: function {name} failed: {error_type}: {}",
                err["errorMessage"].as_str().unwrap_or("")
            );
            if let Some(trace) = err["stackTrace"].as_array() {
                for line in trace.iter().filter_map(Value::as_str) {
                    eprintln!("  {}", line.trim_end());
                }
            }
        } else {
            let mut out = std::io::stdout().lock();
            out.write_all(&answer.body)?;
            if !answer.body.ends_with(b"\n") {
                out.write_all(b"\n")?;
            }
        }
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// What a synchronous invocation answered: the body and what its headers say.
struct Answer {
    request_id: String,
    /// The version that ran (`$LATEST` or its number).
    version: Option<String>,
    /// Set when the function failed; the body is then `{errorType, errorMessage, stackTrace}`.
    error_type: Option<String>,
    content_type: String,
    duration_ms: Option<f64>,
    cold_start: bool,
    /// The call's log tail (its last 4 KB), when asked for.
    logs: Option<String>,
    body: Vec<u8>,
}

impl Answer {
    /// The one object `invoke -o json` prints. The result is the body parsed when the
    /// function answered JSON, else its text; a body that is not UTF-8 is base64'd (and
    /// `result_base64` says so) rather than mangled.
    fn to_json(&self) -> Value {
        let mut v = serde_json::json!({
            "request_id": self.request_id,
            "status": if self.error_type.is_some() { "failed" } else { "succeeded" },
            "result": Value::Null,
            "error": Value::Null,
            "duration_ms": self.duration_ms,
            "cold_start": self.cold_start,
            "version": self.version,
        });
        match &self.error_type {
            Some(error_type) => {
                let mut error: Value = serde_json::from_slice(&self.body).unwrap_or(Value::Null);
                if !error.is_object() {
                    error = serde_json::json!({
                        "errorType": error_type,
                        "errorMessage": String::from_utf8_lossy(&self.body),
                        "stackTrace": [],
                    });
                }
                v["error"] = error;
            }
            None => {
                let json = self.content_type.starts_with("application/json");
                v["result"] = match (json, std::str::from_utf8(&self.body)) {
                    (true, Ok(text)) => serde_json::from_str(text).unwrap_or_else(|_| text.into()),
                    (false, Ok(text)) => text.into(),
                    (_, Err(_)) => {
                        v["result_base64"] = Value::Bool(true);
                        base64::engine::general_purpose::STANDARD
                            .encode(&self.body)
                            .into()
                    }
                };
            }
        }
        if let Some(logs) = &self.logs {
            v["logs"] = logs.lines().collect::<Vec<_>>().into();
        }
        v
    }
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

async fn keys(client: &Client, command: &KeysCommand, output: Output) -> anyhow::Result<ExitCode> {
    match command {
        KeysCommand::Create { name, aws, scope } => {
            let mut body = serde_json::json!({ "name": name });
            if *aws {
                body["aws"] = true.into();
                body["scope"] = scope.as_deref().unwrap_or("admin").into();
            }
            let created: Value = client
                .json(client.request(Method::POST, "/v1/keys").json(&body))
                .await?;
            let text = |k: &str| created[k].as_str().unwrap_or("").to_string();
            if output == Output::Json {
                println!("{}", serde_json::to_string_pretty(&created)?);
            } else if *aws {
                // The shared credentials format, ready for ~/.aws/credentials.
                println!(
                    "[{name}]\naws_access_key_id = {}\naws_secret_access_key = {}",
                    text("access_key_id"),
                    text("secret_access_key")
                );
                eprintln!(
                    "created access key {} ({name}, scope {}); sign with SigV4 against {}. The secret is not shown again.",
                    text("access_key_id"),
                    text("scope"),
                    client.endpoint()
                );
            } else {
                println!("{}", text("key"));
                eprintln!(
                    "created invoke key {} ({name}); send it in the x-nimbus-key header. It is not shown again.",
                    text("id")
                );
            }
        }
        KeysCommand::Ls => {
            let list: Value = client.json(client.request(Method::GET, "/v1/keys")).await?;
            if output == Output::Json {
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else {
                println!(
                    "{:<22} {:<24} {:<14} {:>14}",
                    "ID", "NAME", "KIND", "CREATED_AT_MS"
                );
                for k in list["keys"].as_array().into_iter().flatten() {
                    let kind = match (k["kind"].as_str(), k["scope"].as_str()) {
                        (Some(kind), Some(scope)) => format!("{kind}/{scope}"),
                        (kind, _) => kind.unwrap_or("").to_string(),
                    };
                    println!(
                        "{:<22} {:<24} {:<14} {:>14}",
                        k["id"].as_str().unwrap_or(""),
                        k["name"].as_str().unwrap_or(""),
                        kind,
                        k["created_at_ms"]
                    );
                }
            }
        }
        KeysCommand::Rm { id } => {
            client
                .send(client.request(Method::DELETE, &format!("/v1/keys/{id}")))
                .await?;
            if output == Output::Json {
                print_json(&serde_json::json!({"id": id, "deleted": true}))?;
            } else {
                println!("deleted key {id}");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn triggers(
    client: &Client,
    command: &TriggersCommand,
    output: Output,
) -> anyhow::Result<ExitCode> {
    match command {
        TriggersCommand::Ls { function } => {
            let mut req = client.request(Method::GET, "/v1/triggers");
            if let Some(f) = function {
                req = req.query(&[("function", f)]);
            }
            let list: Value = client.json(req).await?;
            if output == Output::Json {
                println!("{}", serde_json::to_string_pretty(&list)?);
                return Ok(ExitCode::SUCCESS);
            }
            println!(
                "{:<20} {:<6} {:<24} {:<7} {:<21} {:<21} LAST RESULT",
                "FUNCTION", "KIND", "NAME", "STATE", "LAST FIRE", "NEXT FIRE"
            );
            let time = |v: &Value| {
                v.as_i64()
                    .map(crate::describe::time_of)
                    .unwrap_or_else(|| "-".into())
            };
            for t in list["triggers"].as_array().into_iter().flatten() {
                let result = match t["connection"].as_str() {
                    // A queue trigger: its connection, what it delivered, why it is down.
                    Some(connection) => {
                        let mut s = connection.to_string();
                        if let Some(lag) = t["lag"].as_u64() {
                            s.push_str(&format!(", lag {lag}"));
                        }
                        s.push_str(&format!(
                            ", delivered {}, dead-lettered {}, throttled {}",
                            t["delivered"].as_u64().unwrap_or(0),
                            t["dead_lettered"].as_u64().unwrap_or(0),
                            t["throttled"].as_u64().unwrap_or(0)
                        ));
                        if let Some(e) = t["error"].as_str() {
                            s.push_str(&format!("; error: {e}"));
                        }
                        s
                    }
                    None => match (t["last_result"].as_str(), t["error"].as_str()) {
                        (_, Some(e)) => format!("error: {e}"),
                        (Some(r), None) => r.to_string(),
                        (None, None) => "-".into(),
                    },
                };
                println!(
                    "{:<20} {:<6} {:<24} {:<7} {:<21} {:<21} {result}",
                    t["function"].as_str().unwrap_or(""),
                    t["kind"].as_str().unwrap_or(""),
                    t["name"].as_str().unwrap_or(""),
                    t["state"].as_str().unwrap_or(""),
                    time(&t["last_scheduled_ms"]),
                    time(&t["next_fire_ms"]),
                );
            }
        }
        TriggersCommand::Pause { function, name } | TriggersCommand::Resume { function, name } => {
            let verb = if matches!(command, TriggersCommand::Pause { .. }) {
                "pause"
            } else {
                "resume"
            };
            // A route is named by its path: its slashes are encoded into one segment.
            let mut url = reqwest::Url::parse("http://nimbus/").expect("a valid base");
            url.path_segments_mut()
                .expect("an http URL has segments")
                .extend(["v1", "functions", function, "triggers", name, verb]);
            client
                .send(client.request(Method::POST, url.path()))
                .await?;
            if output == Output::Json {
                print_json(&serde_json::json!({
                    "function": function, "trigger": name, "state": if verb == "pause" { "paused" } else { "active" }
                }))?;
            } else {
                println!("{verb}d trigger {name} of {function}");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `nimbus nodes ls`.
async fn nodes(client: &Client, output: Output) -> anyhow::Result<ExitCode> {
    let list: Value = client
        .json(client.request(Method::GET, "/v1/nodes"))
        .await?;
    if output == Output::Json {
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<34} {:<28} {:<6} {:<25} LAST SEEN",
        "ID", "ADDRESS", "STATE", "STARTED"
    );
    for n in list["nodes"].as_array().into_iter().flatten() {
        let id = n["id"].as_str().unwrap_or("");
        let mark = if n["this"] == true { " *" } else { "" };
        println!(
            "{:<34} {:<28} {:<6} {:<25} {}",
            format!("{id}{mark}"),
            n["address"].as_str().unwrap_or(""),
            n["state"].as_str().unwrap_or(""),
            n["started_at"].as_str().unwrap_or(""),
            n["last_seen"].as_str().unwrap_or(""),
        );
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(content_type: &str, error_type: Option<&str>, body: &[u8]) -> Answer {
        Answer {
            request_id: "r".into(),
            version: Some("$LATEST".into()),
            error_type: error_type.map(String::from),
            content_type: content_type.into(),
            duration_ms: Some(1.5),
            cold_start: false,
            logs: None,
            body: body.to_vec(),
        }
    }

    #[test]
    fn an_invoke_answer_keeps_what_the_function_returned() {
        // JSON is parsed; text that looks like JSON stays the text the function returned.
        let v = answer("application/json", None, br#"{"a": 1}"#).to_json();
        assert_eq!(v["result"], serde_json::json!({"a": 1}));
        assert_eq!(v["status"], "succeeded");
        let v = answer("text/plain; charset=utf-8", None, br#"{"a": 1}"#).to_json();
        assert_eq!(v["result"], r#"{"a": 1}"#);
        assert!(v.get("result_base64").is_none(), "{v}");
        // Bytes that are not UTF-8 are base64'd, and say so.
        let v = answer("application/octet-stream", None, &[0xff, 0x00]).to_json();
        assert_eq!(
            (&v["result"], &v["result_base64"]),
            (&"/wA=".into(), &true.into())
        );
        // A failure whose body is not the usual object still answers one.
        let v = answer("text/plain", Some("Runtime.ExitError"), b"gone").to_json();
        assert_eq!(v["status"], "failed");
        assert_eq!(v["result"], Value::Null);
        assert_eq!(
            v["error"],
            serde_json::json!({"errorType": "Runtime.ExitError", "errorMessage": "gone",
                               "stackTrace": []})
        );
    }
}
