//! `nimbus describe NAME`: one function as a person reads it (human units, routes with
//! their URLs, the names of its environment variables but never their values, its
//! versions and aliases), or, with `-o json`, the API's answers in one object.

use std::process::ExitCode;

use reqwest::Method;
use serde_json::Value;

use crate::Output;
use crate::client::Client;

/// Width of the label column, the longest label (`dependencies`) and a space.
const LABEL: usize = 13;

/// Characters of a sha256 shown: enough to tell archives apart on one screen.
const SHA_SHORT: usize = 12;

pub async fn describe(client: &Client, name: &str, output: Output) -> anyhow::Result<ExitCode> {
    let get = |path: String| client.json::<Value>(client.request(Method::GET, &path));
    // The function first, alone: when it does not exist, its 404 is the one error shown.
    let function = get(format!("/v1/functions/{name}")).await?;
    let (versions, aliases) = tokio::try_join!(
        get(format!("/v1/functions/{name}/versions")),
        get(format!("/v1/functions/{name}/aliases")),
    )?;
    if output == Output::Json {
        // The function object is the API's, env values included. Whoever can run this
        // command holds a token that reads the same object from `GET /v1/functions/NAME`,
        // so leaving the values out would protect nothing; and JSON is for programs that
        // compare or copy a configuration, which a redacted copy would mislead. The text
        // form is the one that lands on screens and in CI logs, and it shows names only.
        let v = serde_json::json!({
            "function": function,
            "versions": versions,
            "aliases": aliases,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(ExitCode::SUCCESS);
    }
    print!(
        "{}",
        text(&function, &versions, &aliases, client.base(), now_ms())
    );
    Ok(ExitCode::SUCCESS)
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// The text form of a function (`f`, as the API answers it), its versions and aliases,
/// with URLs against `base` and times relative to `now_ms`.
fn text(f: &Value, versions: &Value, aliases: &Value, base: &str, now_ms: i64) -> String {
    let mut out = String::new();
    let mut row = |label: &str, value: &str| {
        out.push_str(&format!("{label:<LABEL$}{value}\n"));
    };
    let s = |key: &str| f[key].as_str().unwrap_or("").to_string();
    let n = |key: &str| f[key].as_u64().unwrap_or(0);
    let name = s("name");
    row("name", &name);
    if !s("description").is_empty() {
        row("description", &s("description"));
    }
    row("runtime", &s("runtime"));
    row("type", &s("type"));
    row("handler", &s("handler"));
    if let Some(command) = f["command"].as_array().filter(|c| !c.is_empty()) {
        let words: Vec<&str> = command.iter().filter_map(Value::as_str).collect();
        row("command", &words.join(" "));
    }
    row("memory", &memory(n("memory_mb")));
    row("timeout", &duration(n("timeout_ms")));
    let concurrency = n("concurrency");
    row(
        "concurrency",
        &format!(
            "{concurrency} call{} per instance",
            if concurrency == 1 { "" } else { "s" }
        ),
    );
    row(
        "instances",
        &format!(
            "{} to {} (idle ones stop after {}; a call waits {} for one)",
            n("min_instances"),
            n("max_instances"),
            duration(n("idle_timeout_ms")),
            duration(n("queue_timeout_ms")),
        ),
    );
    match f["url"].as_object() {
        Some(url) => row(
            "url",
            &format!(
                "{base}/fn/{name}/ ({})",
                url.get("auth").and_then(Value::as_str).unwrap_or("key")
            ),
        ),
        None => row("url", "off"),
    }
    let triggers: Vec<&Value> = f["triggers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| t.get("http"))
        .collect();
    if triggers.is_empty() {
        row("triggers", "none");
    } else {
        row("triggers", "");
        let routes = crate::commands::routes_of(f, base);
        for (route, trigger) in routes.iter().zip(&triggers) {
            let mut line = format!("  {}", crate::commands::route_text(route));
            if let Some(q) = trigger["qualifier"].as_str() {
                line.push_str(&format!(" -> {name}:{q}"));
            }
            row(&line, "");
        }
    }
    // Names only: a value is a secret as often as not, and this text ends up on screens
    // and in CI logs.
    let env: Vec<&str> = f["env"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, _)| k.as_str())
        .collect();
    if env.is_empty() {
        row("env", "none");
    } else {
        row(
            "env",
            &format!("{} (values not shown; -o json has them)", env.join(", ")),
        );
    }
    let layers: Vec<String> = f["layers"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|l| {
            format!(
                "{} ({})",
                l["name"].as_str().unwrap_or(""),
                short(l["sha256"].as_str().unwrap_or(""))
            )
        })
        .collect();
    row(
        "layers",
        &if layers.is_empty() {
            "none".to_string()
        } else {
            layers.join(", ")
        },
    );
    let deps = s("deps_sha256");
    row(
        "dependencies",
        &if deps.is_empty() {
            "none".to_string()
        } else {
            short(&deps).to_string()
        },
    );
    row("code", short(&s("code_sha256")));
    row("revision", &n("revision").to_string());
    let updated = f["updated_at_ms"].as_i64().unwrap_or(0);
    row(
        "updated",
        &format!("{} ({})", time_of(updated), ago(now_ms, updated)),
    );
    let versions = versions.as_array().cloned().unwrap_or_default();
    if versions.is_empty() {
        row(
            "versions",
            &format!("none (`nimbus publish {name}` makes one)"),
        );
    } else {
        row("versions", "");
        for v in &versions {
            let mut line = format!(
                "  {:<4} code {}  {}",
                // Padded as a string: a JSON value's Display ignores the width.
                v["version"].to_string(),
                short(v["code_sha256"].as_str().unwrap_or("")),
                time_of(v["created_at_ms"].as_i64().unwrap_or(0))
            );
            if let Some(d) = v["description"].as_str().filter(|d| !d.is_empty()) {
                line.push_str(&format!("  {d}"));
            }
            row(&line, "");
        }
    }
    let aliases = aliases.as_array().cloned().unwrap_or_default();
    if aliases.is_empty() {
        row("aliases", "none");
    } else {
        row("aliases", "");
        for a in &aliases {
            let line = format!(
                "  {} -> {}",
                a["name"].as_str().unwrap_or(""),
                crate::commands::alias_target(a)
            );
            row(&line, "");
        }
    }
    // A row with an empty value leaves the label's padding behind.
    out.lines().map(|l| format!("{}\n", l.trim_end())).collect()
}

/// The first `SHA_SHORT` characters of a sha256.
fn short(sha: &str) -> &str {
    sha.get(..SHA_SHORT).unwrap_or(sha)
}

/// `128 MB`, and whole gigabytes as `2 GB`.
fn memory(mb: u64) -> String {
    if mb >= 1024 && mb.is_multiple_of(1024) {
        format!("{} GB", mb / 1024)
    } else {
        format!("{mb} MB")
    }
}

/// A duration as it is said: `250 ms`, `3 s`, `1.5 s`, `15 min`, `2 h`.
fn duration(ms: u64) -> String {
    const MIN: u64 = 60_000;
    const HOUR: u64 = 60 * MIN;
    match ms {
        0 => "0 s".to_string(),
        ms if ms.is_multiple_of(HOUR) => format!("{} h", ms / HOUR),
        ms if ms.is_multiple_of(MIN) => format!("{} min", ms / MIN),
        ms if ms.is_multiple_of(1000) => format!("{} s", ms / 1000),
        ms if ms < 1000 => format!("{ms} ms"),
        ms => format!("{} s", ms as f64 / 1000.0),
    }
}

/// `2026-01-02T03:04:05Z` of a Unix millisecond.
pub(crate) fn time_of(ms: i64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_seconds(t).to_string()
}

/// How long before `now` the time `then` was, in its largest whole unit.
fn ago(now: i64, then: i64) -> String {
    let s = (now - then).max(0) / 1000;
    match s {
        0..60 => "just now".to_string(),
        60..3600 => format!("{} min ago", s / 60),
        3600..86_400 => format!("{} h ago", s / 3600),
        _ => format!("{} days ago", s / 86_400),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_are_the_ones_people_say() {
        assert_eq!(memory(128), "128 MB");
        assert_eq!(memory(1536), "1536 MB");
        assert_eq!(memory(2048), "2 GB");
        assert_eq!(duration(3000), "3 s");
        assert_eq!(duration(900_000), "15 min");
        assert_eq!(duration(250), "250 ms");
        assert_eq!(duration(1500), "1.5 s");
        assert_eq!(duration(90_000), "90 s");
        assert_eq!(duration(7_200_000), "2 h");
        assert_eq!(duration(0), "0 s");
        assert_eq!(ago(100_000, 99_000), "just now");
        assert_eq!(ago(10 * 60_000, 0), "10 min ago");
        assert_eq!(ago(3 * 86_400_000, 0), "3 days ago");
    }

    #[test]
    fn the_text_names_env_variables_without_their_values() {
        let f = serde_json::json!({
            "name": "api", "runtime": "python3", "type": "handler", "handler": "main.handler",
            "memory_mb": 256, "timeout_ms": 900_000, "concurrency": 4, "min_instances": 1,
            "max_instances": 10, "idle_timeout_ms": 600_000, "queue_timeout_ms": 1000,
            "env": {"DB_PASSWORD": "hunter2", "GREETING": "Hello"},
            "code_sha256": "a".repeat(64), "revision": 3, "updated_at_ms": 0,
            "url": {"auth": "anonymous"},
            "triggers": [{"http": {"path": "/items/{id}", "methods": ["GET"], "auth": "key",
                                   "qualifier": "prod"}}],
            "layers": [{"name": "common", "sha256": "b".repeat(64)}],
        });
        let versions = serde_json::json!([{"version": 1, "code_sha256": "c".repeat(64),
            "created_at_ms": 0, "description": "first"}]);
        let aliases = serde_json::json!([{"name": "prod", "version": 1, "canary": null}]);
        let t = text(&f, &versions, &aliases, "http://h", 120_000);
        for want in [
            "memory       256 MB\n",
            "timeout      15 min\n",
            "concurrency  4 calls per instance\n",
            "instances    1 to 10 (idle ones stop after 10 min; a call waits 1 s for one)\n",
            "url          http://h/fn/api/ (anonymous)\n",
            "  route GET /items/{id} (key): http://h/items/{id} -> api:prod\n",
            "env          DB_PASSWORD, GREETING (values not shown",
            "layers       common (bbbbbbbbbbbb)\n",
            "dependencies none\n",
            "code         aaaaaaaaaaaa\n",
            "updated      1970-01-01T00:00:00Z (2 min ago)\n",
            "  1    code cccccccccccc  1970-01-01T00:00:00Z  first\n",
            "  prod -> version 1\n",
        ] {
            assert!(t.contains(want), "{want:?} not in\n{t}");
        }
        assert!(!t.contains("hunter2") && !t.contains("Hello"), "{t}");
        assert!(t.lines().all(|l| l == l.trim_end()), "{t:?}");
    }
}
