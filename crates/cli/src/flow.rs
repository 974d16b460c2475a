//! `nimbus flow ...`: workflows on the server (list, remove), their executions (start,
//! list, describe, history, stop), the answers to `.waitForTaskToken` tasks, and the PUT
//! of a manifest's flows that `nimbus deploy` makes once its functions are live.

use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, anyhow};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::client::Client;
use crate::manifest::PlannedFlow;
use crate::{FlowCommand, Output};

/// What `history` keeps of an event's detail (a state's name, an error and its cause).
const DETAIL_CHARS_MAX: usize = 60;

pub async fn run(client: &Client, cmd: &FlowCommand, output: Output) -> anyhow::Result<ExitCode> {
    match cmd {
        FlowCommand::Ls => ls(client, output).await,
        FlowCommand::Rm { name } => {
            client
                .send(client.request(Method::DELETE, &path(&["v1", "flows", name])))
                .await?;
            if output == Output::Json {
                print_json(&json!({"flow": name, "deleted": true}))?;
            } else {
                println!("deleted flow {name}");
            }
            Ok(ExitCode::SUCCESS)
        }
        FlowCommand::Start {
            flow,
            input,
            input_file,
            name,
            sync,
            wait_ms,
        } => {
            let input = read_input(input.as_deref(), input_file.as_deref())?;
            let start = Start {
                input,
                name: name.clone(),
                sync: *sync,
                wait_ms: *wait_ms,
            };
            start_execution(client, flow, &start, output).await
        }
        FlowCommand::Executions {
            flow,
            status,
            limit,
        } => executions(client, flow, status.as_deref(), *limit, output).await,
        FlowCommand::Describe { id } => {
            let view: Value = client
                .json(client.request(Method::GET, &path(&["v1", "executions", id])))
                .await?;
            if output == Output::Json {
                print_json(&view)?;
            } else {
                print!("{}", describe_text(&view));
            }
            Ok(ExitCode::SUCCESS)
        }
        FlowCommand::History { id } => {
            let history: Value = client
                .json(client.request(Method::GET, &path(&["v1", "executions", id, "history"])))
                .await?;
            if output == Output::Json {
                print_json(&history)?;
            } else {
                print_table(
                    &["ID", "TYPE", "TIMESTAMP", "DETAIL"],
                    &history_rows(&history),
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        FlowCommand::Stop { id, error, cause } => {
            let body = error_body(error.as_deref(), cause.as_deref());
            let view: Value = client
                .json(
                    client
                        .request(Method::POST, &path(&["v1", "executions", id, "stop"]))
                        .json(&body),
                )
                .await?;
            if output == Output::Json {
                print_json(&view)?;
            } else {
                println!("{}  {}", text(&view["id"]), text(&view["status"]));
            }
            Ok(ExitCode::SUCCESS)
        }
        FlowCommand::SendSuccess {
            task_token: token,
            task_output,
        } => {
            let result: Value = serde_json::from_str(task_output)
                .map_err(|e| anyhow!("--task-output is not valid JSON: {e}"))?;
            let body = json!({"task_token": token, "output": result});
            send_task(client, "success", &body, output).await
        }
        FlowCommand::SendFailure {
            task_token: token,
            error,
            cause,
        } => {
            let mut body = error_body(error.as_deref(), cause.as_deref());
            body["task_token"] = token.as_str().into();
            send_task(client, "failure", &body, output).await
        }
        FlowCommand::Heartbeat { task_token: token } => {
            send_task(client, "heartbeat", &json!({"task_token": token}), output).await
        }
    }
}

/// Deploys each flow of the manifest (their functions are live by now, so the server can
/// check that the functions a definition names exist); what each PUT did, for `-o json`.
pub(crate) async fn deploy(
    client: &Client,
    flows: &[PlannedFlow],
    text: bool,
) -> anyhow::Result<Vec<Value>> {
    let mut deployed = Vec::new();
    for flow in flows {
        let body = json!({
            "definition": flow.definition,
            "description": flow.description,
            "triggers": flow.triggers,
        });
        let res = client
            .send(
                client
                    .request(Method::PUT, &path(&["v1", "flows", &flow.name]))
                    .json(&body),
            )
            .await
            // The server's message names the state; this names the flow and its file.
            .with_context(|| format!("flow {} ({})", flow.name, flow.path.display()))?;
        let change = change_of(
            res.status(),
            res.headers()
                .get("x-nimbus-change")
                .and_then(|v| v.to_str().ok()),
        );
        let view: Value = res
            .json()
            .await
            .with_context(|| format!("reading the server's answer for flow {}", flow.name))?;
        let functions: Vec<&str> = view["functions"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        if text {
            println!("{change} flow {} revision {}", flow.name, view["revision"]);
            if !functions.is_empty() {
                println!("  calls {}", functions.join(", "));
            }
        }
        deployed.push(json!({
            "name": flow.name,
            "change": change,
            "revision": view["revision"],
            "functions": functions,
        }));
    }
    Ok(deployed)
}

/// What a flow's PUT did: the server's word when it says (`x-nimbus-change`, as for
/// functions), else what the status tells (200 is either an update or no change at all).
fn change_of(status: StatusCode, header: Option<&str>) -> String {
    match (header, status) {
        (Some(change), _) => change.to_string(),
        (None, StatusCode::CREATED) => "created".into(),
        (None, _) => "deployed".into(),
    }
}

/// A path of the API with each segment percent-encoded (names are checked, execution ids
/// and tokens are the server's, but neither is trusted to be a single segment).
fn path(segments: &[&str]) -> String {
    let mut url = reqwest::Url::parse("http://nimbus/").expect("a valid base");
    url.path_segments_mut()
        .expect("an http URL has segments")
        .extend(segments);
    url.path().to_string()
}

fn print_json(value: &Value) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// A string field as text, `-` when absent or null (timestamps of running executions).
fn text(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// `{"error": E, "cause": C}` with only what was given.
fn error_body(error: Option<&str>, cause: Option<&str>) -> Value {
    let mut body = json!({});
    if let Some(e) = error {
        body["error"] = e.into();
    }
    if let Some(c) = cause {
        body["cause"] = c.into();
    }
    body
}

/// The execution's input: `--input`, `--input-file` (`-` for stdin), else `{}`; JSON either
/// way, checked here so a typo is one line rather than the server's 400.
fn read_input(input: Option<&str>, file: Option<&Path>) -> anyhow::Result<Value> {
    match (input, file) {
        (Some(text), _) => {
            serde_json::from_str(text).map_err(|e| anyhow!("--input is not valid JSON: {e}"))
        }
        (None, Some(p)) => {
            let text = if p == Path::new("-") {
                std::io::read_to_string(std::io::stdin()).context("reading the input from stdin")?
            } else {
                std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?
            };
            serde_json::from_str(&text)
                .map_err(|e| anyhow!("{} is not valid JSON: {e}", p.display()))
        }
        (None, None) => Ok(json!({})),
    }
}

/// What `flow start` asks for.
struct Start {
    input: Value,
    name: Option<String>,
    sync: bool,
    wait_ms: Option<u64>,
}

impl Start {
    /// The body of `POST /v1/flows/{flow}/executions`; unset options are left out, so the
    /// server's defaults apply.
    fn body(&self) -> Value {
        let mut body = json!({"input": self.input, "sync": self.sync});
        if let Some(name) = &self.name {
            body["name"] = name.as_str().into();
        }
        if let Some(ms) = self.wait_ms {
            body["wait_ms"] = ms.into();
        }
        body
    }
}

async fn start_execution(
    client: &Client,
    flow: &str,
    start: &Start,
    output: Output,
) -> anyhow::Result<ExitCode> {
    let res = client
        .send(
            client
                .request(Method::POST, &path(&["v1", "flows", flow, "executions"]))
                .json(&start.body()),
        )
        .await?;
    // 200 rather than 201: an execution of this name and input was there already.
    let existed = res.status() == StatusCode::OK;
    let view: Value = res.json().await.context("reading the server's answer")?;
    let id = text(&view["id"]);
    let status = view["status"].as_str().unwrap_or("");
    if output == Output::Json {
        print_json(&view)?;
    } else if !start.sync {
        println!("{id}");
    } else {
        println!("{id}  {status}");
        if status == "SUCCEEDED" {
            println!("{}", serde_json::to_string_pretty(&view["output"])?);
        }
    }
    if existed && output == Output::Text {
        eprintln!("(an execution named so with this input was started before: this is it)");
    }
    if !start.sync {
        return Ok(ExitCode::SUCCESS);
    }
    Ok(match failure_line(&view) {
        None => ExitCode::SUCCESS,
        Some(line) => {
            eprintln!("{line}");
            ExitCode::FAILURE
        }
    })
}

/// The one line a synchronous start leaves on stderr when the execution did not succeed
/// (and so exits 1): its error and cause, or that it is still running.
fn failure_line(view: &Value) -> Option<String> {
    let id = text(&view["id"]);
    match view["status"].as_str().unwrap_or("") {
        "SUCCEEDED" => None,
        "RUNNING" => Some(format!(
            "execution {id} is still running after the wait; `nimbus flow describe {id}` tells how it ends"
        )),
        status => {
            let error = view["error"].as_str().unwrap_or(status);
            Some(match view["cause"].as_str() {
                Some(cause) if !cause.is_empty() => {
                    format!("{error}: {}", cause.lines().next().unwrap_or(""))
                }
                _ => error.to_string(),
            })
        }
    }
}

async fn ls(client: &Client, output: Output) -> anyhow::Result<ExitCode> {
    let list: Value = client
        .json(client.request(Method::GET, "/v1/flows"))
        .await?;
    if output == Output::Json {
        print_json(&list)?;
        return Ok(ExitCode::SUCCESS);
    }
    let flows = list["flows"].as_array().cloned().unwrap_or_default();
    if flows.is_empty() {
        println!("no flows; declare them under `flows:` in nimbus.yaml and `nimbus deploy`");
        return Ok(ExitCode::SUCCESS);
    }
    let rows: Vec<Vec<String>> = flows
        .iter()
        .map(|f| {
            vec![
                text(&f["name"]),
                text(&f["revision"]),
                f["description"].as_str().unwrap_or("").to_string(),
                text(&f["updated_at"]),
            ]
        })
        .collect();
    print_table(&["NAME", "REVISION", "DESCRIPTION", "UPDATED"], &rows);
    Ok(ExitCode::SUCCESS)
}

async fn executions(
    client: &Client,
    flow: &str,
    status: Option<&str>,
    limit: Option<u32>,
    output: Output,
) -> anyhow::Result<ExitCode> {
    let mut q: Vec<(&str, String)> = Vec::new();
    if let Some(s) = status {
        // Accepted in any case on the command line; the API's statuses are upper case.
        q.push(("status", s.to_ascii_uppercase()));
    }
    if let Some(n) = limit {
        q.push(("limit", n.to_string()));
    }
    let list: Value = client
        .json(
            client
                .request(Method::GET, &path(&["v1", "flows", flow, "executions"]))
                .query(&q),
        )
        .await?;
    if output == Output::Json {
        print_json(&list)?;
        return Ok(ExitCode::SUCCESS);
    }
    let rows: Vec<Vec<String>> = list["executions"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            vec![
                text(&e["id"]),
                text(&e["name"]),
                text(&e["status"]),
                text(&e["started_at"]),
                text(&e["stopped_at"]),
            ]
        })
        .collect();
    print_table(&["ID", "NAME", "STATUS", "STARTED", "STOPPED"], &rows);
    Ok(ExitCode::SUCCESS)
}

async fn send_task(
    client: &Client,
    what: &str,
    body: &Value,
    output: Output,
) -> anyhow::Result<ExitCode> {
    client
        .send(
            client
                .request(Method::POST, &path(&["v1", "tasks", what]))
                .json(body),
        )
        .await?;
    if output == Output::Json {
        print_json(&json!({"task_token": body["task_token"], "sent": what}))?;
    } else {
        println!("sent task {what}");
    }
    Ok(ExitCode::SUCCESS)
}

/// `describe`'s text: a `key: value` line per field, the output last, pretty.
fn describe_text(view: &Value) -> String {
    let mut out = String::new();
    let mut line = |key: &str, value: String| out.push_str(&format!("{key:<12} {value}\n"));
    line("id:", text(&view["id"]));
    line("flow:", text(&view["flow"]));
    line("revision:", text(&view["revision"]));
    line("name:", text(&view["name"]));
    line("status:", text(&view["status"]));
    line("started:", text(&view["started_at"]));
    line("stopped:", text(&view["stopped_at"]));
    line("transitions:", text(&view["transitions"]));
    for key in ["error", "cause"] {
        if let Some(v) = view[key].as_str() {
            line(&format!("{key}:"), v.to_string());
        }
    }
    // The input on one line: it is what was sent, and usually short.
    line("input:", view["input"].to_string());
    if !view["output"].is_null() {
        let pretty = serde_json::to_string_pretty(&view["output"]).unwrap_or_default();
        out.push_str(&format!("output:\n{pretty}\n"));
    }
    out
}

/// `history`'s rows: id, type, time, and what the event is about.
fn history_rows(history: &Value) -> Vec<Vec<String>> {
    history["events"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            vec![
                text(&e["id"]),
                text(&e["type"]),
                timestamp(&e["timestamp"]),
                shorten(&detail(e), DETAIL_CHARS_MAX),
            ]
        })
        .collect()
}

/// What an event is about, from its one `...EventDetails` object: the state's name, else
/// the error (and its cause), else nothing.
fn detail(event: &Value) -> String {
    let Some(details) = event.as_object().and_then(|o| {
        o.iter()
            .find(|(k, v)| k.ends_with("EventDetails") && v.is_object())
            .map(|(_, v)| v)
    }) else {
        return String::new();
    };
    if let Some(name) = details["name"].as_str() {
        return name.to_string();
    }
    match (details["error"].as_str(), details["cause"].as_str()) {
        (Some(e), Some(c)) if !c.is_empty() => format!("{e}: {c}"),
        (Some(e), _) => e.to_string(),
        (None, Some(c)) => c.to_string(),
        (None, None) => String::new(),
    }
}

/// An event's time as RFC 3339: as sent when it is text; a number is read as Step
/// Functions' epoch seconds, or milliseconds when it is too large to be seconds.
fn timestamp(v: &Value) -> String {
    let Some(n) = v.as_f64() else {
        return text(v);
    };
    // 1e11 seconds is the year 5138; 1e11 milliseconds is 1973.
    let ms = if n.abs() >= 1e11 { n } else { n * 1000.0 };
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0.0) as u64);
    humantime::format_rfc3339_millis(t).to_string()
}

/// `text` on one line and at most `max` characters, `…` marking a cut.
fn shorten(text: &str, max: usize) -> String {
    let one_line = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if one_line.chars().count() <= max {
        return one_line;
    }
    let mut cut: String = one_line.chars().take(max.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

/// Prints rows under headers, each column as wide as its widest cell (ids and times are
/// the server's, so no width is fixed in advance); the last column is not padded.
fn print_table(headers: &[&str], rows: &[Vec<String>]) {
    print!("{}", table(headers, rows));
}

fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let last = cells.len().saturating_sub(1);
        let mut s = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i == last {
                s.push_str(cell);
            } else {
                s.push_str(&format!("{cell:<w$}  "));
            }
        }
        s.trim_end().to_string() + "\n"
    };
    let mut out = line(headers.to_vec());
    for row in rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_start_sends_only_what_was_given() {
        let start = Start {
            input: json!({"card": "ok"}),
            name: None,
            sync: false,
            wait_ms: None,
        };
        assert_eq!(
            start.body(),
            json!({"input": {"card": "ok"}, "sync": false})
        );
        let start = Start {
            name: Some("order-7".into()),
            sync: true,
            wait_ms: Some(5000),
            ..start
        };
        assert_eq!(
            start.body(),
            json!({"input": {"card": "ok"}, "name": "order-7", "sync": true, "wait_ms": 5000})
        );
    }

    #[test]
    fn input_is_json_or_one_line_error() {
        assert_eq!(read_input(None, None).unwrap(), json!({}));
        assert_eq!(read_input(Some("[1, 2]"), None).unwrap(), json!([1, 2]));
        let err = read_input(Some("{card: x}"), None).unwrap_err().to_string();
        assert!(
            err.starts_with("--input is not valid JSON: key must be a string"),
            "{err}"
        );
        assert_eq!(err.lines().count(), 1);
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("in.json");
        std::fs::write(&file, r#"{"a": 1}"#).unwrap();
        assert_eq!(read_input(None, Some(&file)).unwrap(), json!({"a": 1}));
        std::fs::write(&file, "nope").unwrap();
        let err = read_input(None, Some(&file)).unwrap_err().to_string();
        assert!(err.contains("in.json is not valid JSON"), "{err}");
    }

    #[test]
    fn a_sync_start_fails_unless_it_succeeded() {
        let view = |status: &str, error: Value, cause: Value| json!({"id": "e1", "status": status, "error": error, "cause": cause});
        assert_eq!(
            failure_line(&view("SUCCEEDED", Value::Null, Value::Null)),
            None
        );
        assert_eq!(
            failure_line(&view(
                "FAILED",
                "OrderFailed".into(),
                "payment declined\nmore".into()
            ))
            .unwrap(),
            "OrderFailed: payment declined"
        );
        assert_eq!(
            failure_line(&view("TIMED_OUT", "States.Timeout".into(), Value::Null)).unwrap(),
            "States.Timeout"
        );
        assert_eq!(
            failure_line(&view("ABORTED", Value::Null, Value::Null)).unwrap(),
            "ABORTED"
        );
        let running = failure_line(&view("RUNNING", Value::Null, Value::Null)).unwrap();
        assert!(running.contains("still running"), "{running}");
    }

    #[test]
    fn history_shows_state_names_and_errors_shortly() {
        let history = json!({"events": [
            {"id": 1, "previousEventId": 0, "timestamp": 1_700_000_000.5, "type": "ExecutionStarted",
             "executionStartedEventDetails": {"input": "{}", "roleArn": ""}},
            {"id": 2, "previousEventId": 1, "timestamp": 1_700_000_000_600_i64, "type": "TaskStateEntered",
             "stateEnteredEventDetails": {"name": "Charge", "input": "{}"}},
            {"id": 3, "previousEventId": 2, "timestamp": "2026-01-02T03:04:05.006Z", "type": "LambdaFunctionFailed",
             "lambdaFunctionFailedEventDetails": {"error": "PaymentDeclined",
              "cause": "{\"errorMessage\": \"the card was declined by the bank, which said nothing more about it\"}"}},
            {"id": 4, "previousEventId": 3, "timestamp": null, "type": "ExecutionSucceeded"}
        ]});
        let rows = history_rows(&history);
        assert_eq!(
            rows[0],
            ["1", "ExecutionStarted", "2023-11-14T22:13:20.500Z", ""]
        );
        assert_eq!(
            rows[1],
            [
                "2",
                "TaskStateEntered",
                "2023-11-14T22:13:20.600Z",
                "Charge"
            ]
        );
        assert_eq!(rows[2][2], "2026-01-02T03:04:05.006Z");
        assert_eq!(rows[2][3].chars().count(), DETAIL_CHARS_MAX);
        assert!(
            rows[2][3].starts_with("PaymentDeclined: {\"errorMessage\"")
                && rows[2][3].ends_with('…'),
            "{}",
            rows[2][3]
        );
        assert_eq!(rows[3], ["4", "ExecutionSucceeded", "-", ""]);
    }

    #[test]
    fn tables_fit_their_widest_cell() {
        let rows = vec![
            vec!["order".to_string(), "12".into(), "Places an order".into()],
            vec!["resize-all".to_string(), "1".into(), String::new()],
        ];
        assert_eq!(
            table(&["NAME", "REVISION", "DESCRIPTION"], &rows),
            "NAME        REVISION  DESCRIPTION\n\
             order       12        Places an order\n\
             resize-all  1\n"
        );
    }

    #[test]
    fn describe_prints_fields_then_the_output() {
        let view = json!({"id": "e1", "flow": "order", "name": "n1", "revision": 2,
            "status": "SUCCEEDED", "input": {"card": "ok"}, "output": {"shipment": {"id": 7}},
            "error": null, "cause": null, "started_at": "2026-01-01T00:00:00Z",
            "stopped_at": null, "transitions": 9});
        let text = describe_text(&view);
        assert!(
            text.starts_with("id:          e1\nflow:        order\n"),
            "{text}"
        );
        assert!(text.contains("stopped:     -\n"), "{text}");
        assert!(!text.contains("error:"), "{text}");
        assert!(text.contains("input:       {\"card\":\"ok\"}\n"), "{text}");
        assert!(
            text.ends_with("output:\n{\n  \"shipment\": {\n    \"id\": 7\n  }\n}\n"),
            "{text}"
        );
    }

    #[test]
    fn paths_encode_each_segment() {
        assert_eq!(path(&["v1", "flows", "order"]), "/v1/flows/order");
        assert_eq!(
            path(&["v1", "executions", "a/b c", "history"]),
            "/v1/executions/a%2Fb%20c/history"
        );
    }

    #[test]
    fn a_put_says_what_changed() {
        assert_eq!(change_of(StatusCode::CREATED, None), "created");
        assert_eq!(change_of(StatusCode::OK, None), "deployed");
        assert_eq!(change_of(StatusCode::OK, Some("unchanged")), "unchanged");
    }

    #[test]
    fn the_command_line_parses() {
        let parse = |args: &[&str]| {
            let matches = crate::cli_command(&|_| false).try_get_matches_from(args)?;
            <crate::Cli as clap::FromArgMatches>::from_arg_matches(&matches)
        };
        let cli = parse(&[
            "nimbus",
            "flow",
            "start",
            "order",
            "--input",
            "{}",
            "--sync",
            "--wait-ms",
            "500",
            "-o",
            "json",
        ])
        .unwrap();
        assert_eq!(cli.output, Output::Json);
        let crate::Command::Flow(FlowCommand::Start { sync, wait_ms, .. }) = cli.command else {
            panic!("not a start");
        };
        assert_eq!((sync, wait_ms), (true, Some(500)));
        // A task's output is `--task-output`: `--output` stays the format of every command.
        let cli = parse(&[
            "nimbus",
            "flow",
            "send-success",
            "tok",
            "--task-output",
            "[1]",
            "--output",
            "json",
        ])
        .unwrap();
        assert_eq!(cli.output, Output::Json);
        let cli = parse(&[
            "nimbus",
            "flow",
            "executions",
            "order",
            "--status",
            "failed",
        ])
        .unwrap();
        let crate::Command::Flow(FlowCommand::Executions { status, .. }) = cli.command else {
            panic!("not executions");
        };
        assert_eq!(status.unwrap().to_ascii_uppercase(), "FAILED");
        for wrong in [
            &["nimbus", "flow", "start", "order", "--wait-ms", "5"][..],
            &[
                "nimbus",
                "flow",
                "start",
                "order",
                "--input",
                "{}",
                "--input-file",
                "x",
            ],
            &["nimbus", "flow", "executions", "order", "--status", "DONE"],
        ] {
            assert!(parse(wrong).is_err(), "{wrong:?}");
        }
    }

    /// A stand-in for the server's side of the contract: a definition whose StartAt is
    /// `Bad` is refused as the server refuses one; an execution ends as its input asks.
    async fn fake_server() -> Client {
        use axum::Json;
        use axum::extract::Path as UrlPath;
        use axum::routing::{post, put};
        async fn put_flow(
            UrlPath(name): UrlPath<String>,
            Json(body): Json<Value>,
        ) -> axum::response::Response {
            use axum::response::IntoResponse;
            if body["definition"]["StartAt"] == "Bad" {
                let e = json!({"code": "invalid_definition",
                               "message": "States.Charge.Next: 'Ship2' is not a state here"});
                return (StatusCode::BAD_REQUEST, Json(e)).into_response();
            }
            let view = json!({"name": name, "revision": 1, "description": body["description"],
                "definition": body["definition"], "functions": ["charge_payment"],
                "created_at": "2026-01-01T00:00:00Z", "updated_at": "2026-01-01T00:00:00Z"});
            (StatusCode::CREATED, Json(view)).into_response()
        }
        async fn start(Json(body): Json<Value>) -> (StatusCode, Json<Value>) {
            let status = body["input"]["want"]
                .as_str()
                .unwrap_or("RUNNING")
                .to_string();
            let view = json!({"id": "exec-1", "flow": "order", "name": "n", "revision": 1,
                "status": status, "input": body["input"], "output": {"ok": true},
                "error": null, "cause": null, "started_at": "2026-01-01T00:00:00Z",
                "stopped_at": null, "transitions": 3});
            (StatusCode::CREATED, Json(view))
        }
        let app = axum::Router::new()
            .route("/v1/flows/{name}", put(put_flow))
            .route("/v1/flows/{name}/executions", post(start));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        // As `main` does: reqwest is built without a default crypto provider.
        let _ = rustls::crypto::ring::default_provider().install_default();
        Client::with(&format!("http://{addr}"), "t").unwrap()
    }

    #[tokio::test]
    async fn deploy_and_start_against_the_contract() {
        let client = fake_server().await;
        let flow = |name: &str, start_at: &str| PlannedFlow {
            name: name.into(),
            definition: json!({"StartAt": start_at, "States": {}}),
            description: "d".into(),
            triggers: vec![],
            path: "flows/x.asl.json".into(),
        };
        let deployed = deploy(&client, &[flow("order", "Reserve")], false)
            .await
            .unwrap();
        assert_eq!(
            deployed,
            [json!({"name": "order", "change": "created", "revision": 1,
                    "functions": ["charge_payment"]})]
        );
        let err = deploy(
            &client,
            &[flow("order", "Reserve"), flow("broken", "Bad")],
            false,
        )
        .await
        .unwrap_err();
        assert_eq!(
            format!("{err:#}"),
            "flow broken (flows/x.asl.json): States.Charge.Next: 'Ship2' is not a state here \
             (invalid_definition)"
        );
        let start = |want: &str, sync: bool| Start {
            input: json!({"want": want}),
            name: None,
            sync,
            wait_ms: None,
        };
        let code = |want, sync| {
            let client = client.clone();
            async move {
                let code = start_execution(&client, "order", &start(want, sync), Output::Json)
                    .await
                    .unwrap();
                format!("{code:?}")
            }
        };
        let ok = format!("{:?}", ExitCode::SUCCESS);
        let failed = format!("{:?}", ExitCode::FAILURE);
        assert_eq!(code("SUCCEEDED", true).await, ok);
        assert_eq!(code("FAILED", true).await, failed);
        assert_eq!(code("RUNNING", true).await, failed);
        // Without --sync the start is what succeeded, whatever the run does next.
        assert_eq!(code("RUNNING", false).await, ok);
    }
}
