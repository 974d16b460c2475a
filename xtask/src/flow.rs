//! `cargo xtask bench-flow`: workflow state transitions per second, durable (a release
//! `nimbus server`, every step committed to its SQLite store) for a chain of Pass states
//! and a chain of no-op function tasks, and the engine's own time per transition
//! (`flow::engine::step` in this process, without the store).
//!
//! Durable: `--executions` (200) executions of each flow are started at once over 8
//! connections; the rate is the transitions of all of them (states entered, as Step
//! Functions counts them) over the time from the first start to the last end. The Pass
//! chain has 50 states (one step commits them all: states that wait for nothing run in the
//! step that reached them); the task chain has 10 tasks of `bench/noop` (one committed step
//! per task answer, one function call each).
//!
//! Beside them, the baseline in the same run: the same no-op function invoked directly
//! (plain synchronous invokes), as many at once as the task chain has executions (each
//! execution has one task under way at a time) and as many in all as it has tasks, so the
//! report can set tasks/s against invokes/s. The server's CPU time per task (per
//! transition for the Pass chain, per call for the invokes) is read from `/proc`.

use std::time::{Duration, Instant};

use anyhow::bail;
use bytes::Bytes;
use flow::engine::{self, Effect, Event, Execution};
use serde_json::{Value, json};

use crate::{Conn, Nimbus, build_nimbus, cpu_ms, percentile, root};

const PASS_CHAIN: usize = 50;
const TASK_CHAIN: usize = 10;

fn chain(kind: &str, n: usize) -> Value {
    let mut states = serde_json::Map::new();
    for i in 0..n {
        let mut s = match kind {
            "pass" => json!({"Type": "Pass", "Result": {"i": i}, "ResultPath": "$.last"}),
            _ => {
                json!({"Type": "Task", "Resource": "nimbus:function:noop", "ResultPath": "$.last"})
            }
        };
        if i + 1 == n {
            s["End"] = json!(true);
        } else {
            s["Next"] = json!(format!("S{}", i + 1));
        }
        states.insert(format!("S{i}"), s);
    }
    json!({"StartAt": "S0", "States": states})
}

/// The engine alone: microseconds per transition, p50 over many steps.
fn engine_only() -> anyhow::Result<()> {
    let input = json!({"order": {"id": "o-1", "items": [{"sku": "tea", "qty": 2}]}});
    for (kind, n) in [("pass", PASS_CHAIN), ("task", TASK_CHAIN)] {
        let def = flow::Definition::parse(&chain(kind, n))?;
        let mut per_transition_us = Vec::new();
        let mut with_snapshot_us = Vec::new();
        for run in 0..2_000 {
            let mut exec = Execution::new(&format!("e{run}"), "n", "f", input.clone(), 0, "secret");
            let t = Instant::now();
            let mut step = engine::step(&mut exec, &def, Event::Start, 0);
            let mut transitions = step.transitions;
            let mut elapsed = t.elapsed();
            let mut serialized = serde_json::to_string(&exec)?.len();
            let mut steps = 1;
            // A task chain: answer each call at once, timing each step by itself.
            while let Some(Effect::Invoke(call)) = step
                .effects
                .iter()
                .find(|e| matches!(e, Effect::Invoke(_)))
                .cloned()
            {
                let t = Instant::now();
                step = engine::step(
                    &mut exec,
                    &def,
                    Event::TaskSucceeded {
                        task: call.task,
                        output: json!({"ok": true}),
                        executed_version: None,
                    },
                    0,
                );
                let one = t.elapsed();
                elapsed += one;
                transitions += step.transitions.max(1);
                let t = Instant::now();
                serialized = serde_json::to_string(&exec)?.len();
                with_snapshot_us.push((one + t.elapsed()).as_secs_f64() * 1e6);
                per_transition_us.push(one.as_secs_f64() * 1e6);
                steps += 1;
            }
            if exec.status != engine::Status::Succeeded {
                bail!("the {kind} chain did not succeed: {:?}", exec.failure);
            }
            if kind == "pass" {
                per_transition_us.push(elapsed.as_secs_f64() * 1e6 / f64::from(transitions));
            }
            let _ = (serialized, steps);
        }
        per_transition_us.sort_by(|a, b| a.partial_cmp(b).unwrap());
        print!(
            "engine, {kind} chain of {n}: p50 {:.2} µs / transition (p99 {:.2})",
            percentile(&per_transition_us, 0.5),
            percentile(&per_transition_us, 0.99)
        );
        if !with_snapshot_us.is_empty() {
            with_snapshot_us.sort_by(|a, b| a.partial_cmp(b).unwrap());
            print!(
                "; with the snapshot serialized: p50 {:.2} µs",
                percentile(&with_snapshot_us, 0.5)
            );
        }
        println!();
    }
    Ok(())
}

pub fn bench_flow(args: &[String]) -> anyhow::Result<()> {
    let mut executions = 200usize;
    // `--binary` runs another build of the server (an earlier commit's, kept aside) in
    // place of this tree's, so two builds compare on one machine under the same load.
    let mut binary = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--executions" => executions = it.next().map(|v| v.parse()).transpose()?.unwrap_or(200),
            "--binary" => binary = it.next().map(std::path::PathBuf::from),
            other => bail!("unknown argument {other}; use --executions N, --binary PATH"),
        }
    }
    engine_only()?;

    let root = root();
    let binary = match binary {
        Some(b) => b,
        None => {
            build_nimbus(&root)?;
            root.join("target/release/nimbus")
        }
    };
    let data = std::env::temp_dir().join(format!("nimbus-bench-flow-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&data);
    let server = Nimbus::start(&binary, &data, &[])?;
    let project = data.join("project");
    std::fs::create_dir_all(&project)?;
    std::fs::write(
        project.join("pass.asl.json"),
        chain("pass", PASS_CHAIN).to_string(),
    )?;
    std::fs::write(
        project.join("task.asl.json"),
        chain("task", TASK_CHAIN).to_string(),
    )?;
    std::fs::write(
        project.join("nimbus.yaml"),
        format!(
            "functions:\n  noop:\n    runtime: python3\n    handler: main.handler\n    code: {}\n    concurrency: 8\n    max_instances: 4\n\
             flows:\n  - name: pass-chain\n    definition: pass.asl.json\n  - name: task-chain\n    definition: task.asl.json\n",
            root.join("bench/noop").display()
        ),
    )?;
    server.deploy(&project)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let addr = server.endpoint.trim_start_matches("http://").to_string();
    let pid = server._process.0.id();
    let mut tasks_per_s = 0.0;
    for flow in ["pass-chain", "task-chain"] {
        // A warm-up execution starts the function's instances.
        rt.block_on(run_executions(&addr, &server.token, flow, 8))?;
        let cpu_before = cpu_ms(pid)?;
        let (transitions, elapsed) =
            rt.block_on(run_executions(&addr, &server.token, flow, executions))?;
        let cpu = cpu_ms(pid)? - cpu_before;
        let rate = transitions as f64 / elapsed.as_secs_f64();
        let (unit, count) = if flow == "task-chain" {
            tasks_per_s = (executions * TASK_CHAIN) as f64 / elapsed.as_secs_f64();
            ("task", executions * TASK_CHAIN)
        } else {
            ("transition", transitions as usize)
        };
        println!(
            "durable, {flow}: {executions} executions, {transitions} transitions in {:.2} s: {rate:.0} transitions/s; server CPU {:.0} µs / {unit}",
            elapsed.as_secs_f64(),
            cpu * 1000.0 / count as f64
        );
    }
    // The baseline: the same function and calls without the workflow around them.
    let calls = executions * TASK_CHAIN;
    rt.block_on(invoke_directly(&addr, &server.token, 8, 8 * TASK_CHAIN))?;
    let cpu_before = cpu_ms(pid)?;
    let elapsed = rt.block_on(invoke_directly(&addr, &server.token, executions, calls))?;
    let cpu = cpu_ms(pid)? - cpu_before;
    let invokes_per_s = calls as f64 / elapsed.as_secs_f64();
    println!(
        "baseline, noop invoked directly: {calls} invokes over {executions} connections in {:.2} s: {invokes_per_s:.0} invokes/s; server CPU {:.0} µs / invoke",
        elapsed.as_secs_f64(),
        cpu * 1000.0 / calls as f64
    );
    println!(
        "task chain against the baseline: {tasks_per_s:.0} tasks/s / {invokes_per_s:.0} invokes/s = {:.2}",
        tasks_per_s / invokes_per_s
    );
    drop(server);
    let _ = std::fs::remove_dir_all(&data);
    Ok(())
}

/// Invokes `noop` `calls` times over `connections` connections at once (plain synchronous
/// invokes, the payload a task's); answers the time they took.
async fn invoke_directly(
    addr: &str,
    token: &str,
    connections: usize,
    calls: usize,
) -> anyhow::Result<Duration> {
    let auth = format!("Bearer {token}");
    let started = Instant::now();
    let mut clients = Vec::new();
    for c in 0..connections {
        let (addr, auth) = (addr.to_string(), auth.clone());
        clients.push(tokio::spawn(async move {
            let mut conn = Conn::open(&addr).await?;
            for i in (c..calls).step_by(connections) {
                let body = Bytes::from(json!({"n": i}).to_string());
                loop {
                    let (status, answer) = conn
                        .call(
                            "POST",
                            "/v1/functions/noop/invocations",
                            &[
                                ("authorization", &auth),
                                ("content-type", "application/json"),
                            ],
                            body.clone(),
                        )
                        .await?;
                    // Many more callers than the function has room for wait in its queue
                    // for a second at most; one refused then tries again after a pause,
                    // as a workflow's task does.
                    if status == 429 {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    }
                    if status != 200 {
                        bail!("invoke: {status} {}", String::from_utf8_lossy(&answer));
                    }
                    break;
                }
            }
            anyhow::Ok(())
        }));
    }
    for c in clients {
        c.await??;
    }
    Ok(started.elapsed())
}

/// Starts `n` executions of `flow` over 8 connections and waits for all to end; answers
/// their transitions and the time from the first start to the last end.
async fn run_executions(
    addr: &str,
    token: &str,
    flow: &str,
    n: usize,
) -> anyhow::Result<(i64, Duration)> {
    let auth = format!("Bearer {token}");
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..8 {
        let (addr, auth, flow) = (addr.to_string(), auth.clone(), flow.to_string());
        tasks.push(tokio::spawn(async move {
            let mut conn = Conn::open(&addr).await?;
            let mut ids = Vec::new();
            for i in (c..n).step_by(8) {
                let body = json!({"input": {"n": i}}).to_string();
                let (status, answer) = conn
                    .call(
                        "POST",
                        &format!("/v1/flows/{flow}/executions"),
                        &[
                            ("authorization", &auth),
                            ("content-type", "application/json"),
                        ],
                        Bytes::from(body),
                    )
                    .await?;
                if status != 201 {
                    bail!("start: {status} {}", String::from_utf8_lossy(&answer));
                }
                let v: Value = serde_json::from_slice(&answer)?;
                ids.push(v["id"].as_str().unwrap_or_default().to_string());
            }
            anyhow::Ok(ids)
        }));
    }
    let mut ids = Vec::new();
    for t in tasks {
        ids.extend(t.await??);
    }
    // Done when none is running; then the executions' own times (the server's clock)
    // give the span from the first start to the last end.
    let mut conn = Conn::open(addr).await?;
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let running = conn
            .get_json(
                &format!("/v1/flows/{flow}/executions?status=RUNNING&limit=1"),
                token,
            )
            .await?;
        if running["executions"]
            .as_array()
            .is_none_or(|a| a.is_empty())
        {
            break;
        }
        if Instant::now() > deadline {
            bail!("executions still running after 300 s");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let ours: std::collections::HashSet<String> = ids.into_iter().collect();
    let list = conn
        .get_json(&format!("/v1/flows/{flow}/executions?limit=1000"), token)
        .await?;
    let (mut transitions, mut first, mut last) = (0, i64::MAX, i64::MIN);
    let mut seen = 0;
    for e in list["executions"].as_array().into_iter().flatten() {
        if !ours.contains(e["id"].as_str().unwrap_or_default()) {
            continue;
        }
        if e["status"] != "SUCCEEDED" {
            bail!("an execution ended {}: {e}", e["status"]);
        }
        seen += 1;
        transitions += e["transitions"].as_i64().unwrap_or(0);
        let ms = |f: &str| e[f].as_str().and_then(flow::time::parse_ms).unwrap_or(0);
        first = first.min(ms("started_at"));
        last = last.max(ms("stopped_at"));
    }
    if seen != ours.len() {
        bail!("{} of {} executions listed", seen, ours.len());
    }
    let _ = started;
    Ok((
        transitions,
        Duration::from_millis((last - first).max(1) as u64),
    ))
}
