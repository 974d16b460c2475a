//! The engine driven by a test driver: functions are closures, the clock is fake, and the
//! snapshot goes through JSON after every step as a store would keep it.

use super::*;
use std::collections::BTreeMap;

type Func = Box<dyn FnMut(&str, &Value) -> Result<Value, Failure>>;

/// A driver that runs a definition to its end: calls answer at once through `func`, timers
/// fire in due order with the clock jumping to them.
struct Driver {
    def: Definition,
    exec: Execution,
    now: i64,
    func: Func,
    timers: BTreeMap<String, i64>,
    calls: Vec<(String, Value)>,
    /// Calls made but not answered (tokens, or held back by `hold`).
    held: Vec<Invoke>,
    hold: bool,
    history: Vec<HistoryEvent>,
    transitions: u64,
    /// Most tasks in flight at once.
    peak: usize,
}

impl Driver {
    fn new(def: Value, input: Value, func: Func) -> Driver {
        let def = Definition::parse(&def).expect("definition is valid");
        let exec = Execution::new("exec-1", "run", "flow", input, 1_000_000, "secret");
        Driver {
            def,
            exec,
            now: 1_000_000,
            func,
            timers: BTreeMap::new(),
            calls: Vec::new(),
            held: Vec::new(),
            hold: false,
            history: Vec::new(),
            transitions: 0,
            peak: 0,
        }
    }

    /// Feeds one event; the snapshot is written and read back as the store would.
    fn feed(&mut self, event: Event) -> Vec<Invoke> {
        let step = step(&mut self.exec, &self.def, event, self.now);
        let text = serde_json::to_string(&self.exec).unwrap();
        self.exec = serde_json::from_str(&text).unwrap();
        self.history.extend(step.history);
        self.transitions += u64::from(step.transitions);
        let mut invokes = Vec::new();
        for e in step.effects {
            match e {
                Effect::Invoke(i) => invokes.push(i),
                Effect::Timer { id, due_ms } => {
                    self.timers.insert(id, due_ms);
                }
                Effect::CancelTimer { id } => {
                    self.timers.remove(&id);
                }
            }
        }
        invokes
    }

    /// Runs until the execution ends or nothing is left to do.
    fn run(&mut self) -> &Execution {
        let mut ready: VecDeque<Invoke> = self.feed(Event::Start).into();
        loop {
            self.peak = self.peak.max(self.exec.tasks.len());
            if let Some(call) = ready.pop_front() {
                self.calls
                    .push((call.function.clone(), call.payload.clone()));
                if self.hold
                    || call
                        .payload
                        .to_string()
                        .contains(&format!("exec-1:{}:", call.task))
                {
                    let answer = (self.func)(&call.function, &call.payload);
                    let event = match answer {
                        Ok(output) => Event::TaskSucceeded {
                            task: call.task.clone(),
                            output,
                            executed_version: Some("1".into()),
                        },
                        Err(failure) => Event::TaskFailed {
                            task: call.task.clone(),
                            failure,
                        },
                    };
                    self.held.push(call);
                    ready.extend(self.feed(event));
                    continue;
                }
                let event = match (self.func)(&call.function, &call.payload) {
                    Ok(output) => Event::TaskSucceeded {
                        task: call.task,
                        output,
                        executed_version: Some("1".into()),
                    },
                    Err(failure) => Event::TaskFailed {
                        task: call.task,
                        failure,
                    },
                };
                ready.extend(self.feed(event));
                continue;
            }
            if self.exec.status != Status::Running {
                return &self.exec;
            }
            let Some((id, due)) = self
                .timers
                .iter()
                .filter(|(id, _)| *id != "execution-timeout")
                .min_by_key(|(_, d)| **d)
                .map(|(i, d)| (i.clone(), *d))
            else {
                return &self.exec;
            };
            if self.hold && !self.held.is_empty() && id.starts_with('h') {
                // A token task with a heartbeat is left to time out.
            }
            self.timers.remove(&id);
            self.now = self.now.max(due);
            ready.extend(self.feed(Event::TimerFired { timer: id }));
        }
    }

    fn kinds(&self) -> Vec<&str> {
        self.history.iter().map(|h| h.kind.as_str()).collect()
    }
}

fn ok_echo() -> Func {
    Box::new(|_, p| Ok(p.clone()))
}

fn run(def: Value, input: Value, func: Func) -> Driver {
    let mut d = Driver::new(def, input, func);
    d.run();
    d
}

fn failure(error: &str) -> Failure {
    Failure::new(error, format!("{error} happened"))
}

#[test]
fn pass_states_shape_data_with_every_path_field() {
    let d = run(
        json!({"StartAt": "A", "States": {
            "A": {"Type": "Pass", "Result": {"x": 1}, "ResultPath": "$.a", "Next": "B"},
            "B": {"Type": "Pass", "InputPath": "$.a", "Parameters": {"y.$": "$.x", "name.$": "$$.Execution.Name", "fixed": [1, 2]}, "ResultPath": "$.b", "Next": "C"},
            "C": {"Type": "Pass", "ResultPath": null, "OutputPath": "$.b", "Next": "D"},
            "D": {"Type": "Pass", "InputPath": null, "End": true}
        }}),
        json!({"in": true}),
        ok_echo(),
    );
    assert_eq!(d.exec.status, Status::Succeeded, "{:?}", d.exec.failure);
    assert_eq!(d.exec.output, Some(json!({})));
    assert_eq!(d.transitions, 4);
    let exited: Vec<Value> = d
        .history
        .iter()
        .filter(|h| h.kind == "PassStateExited")
        .map(|h| serde_json::from_str(h.details["output"].as_str().unwrap()).unwrap())
        .collect();
    assert_eq!(exited[0], json!({"in": true, "a": {"x": 1}}));
    // ResultPath writes into the state's raw input, not what InputPath selected.
    assert_eq!(
        exited[1],
        json!({"in": true, "a": {"x": 1}, "b": {"y": 1, "name": "run", "fixed": [1, 2]}})
    );
    assert_eq!(exited[2], json!({"y": 1, "name": "run", "fixed": [1, 2]}));
    assert_eq!(d.kinds().first(), Some(&"ExecutionStarted"));
    assert_eq!(d.kinds().last(), Some(&"ExecutionSucceeded"));
}

#[test]
fn tasks_call_functions_the_aws_ways() {
    let d = run(
        json!({"StartAt": "Direct", "States": {
            "Direct": {"Type": "Task", "Resource": "arn:aws:lambda:us-east-1:123456789012:function:double:live", "ResultPath": "$.direct", "Next": "Optimized"},
            "Optimized": {"Type": "Task", "Resource": "arn:aws:states:::lambda:invoke",
                "Parameters": {"FunctionName": "arn:aws:lambda:us-east-1:123:function:double", "Payload": {"n.$": "$.direct.n"}},
                "ResultSelector": {"n.$": "$.Payload.n", "code.$": "$.StatusCode"}, "ResultPath": "$.optimized", "Next": "Native"},
            "Native": {"Type": "Task", "Resource": "nimbus:function:double", "InputPath": "$.optimized", "End": true}
        }}),
        json!({"n": 1}),
        Box::new(|f, p| {
            assert_eq!(f, "double");
            Ok(json!({"n": p["n"].as_i64().unwrap() * 2}))
        }),
    );
    assert_eq!(d.exec.status, Status::Succeeded, "{:?}", d.exec.failure);
    assert_eq!(d.exec.output, Some(json!({"n": 8})));
    assert_eq!(d.calls.len(), 3);
    assert!(d.kinds().contains(&"TaskScheduled"));
    assert!(d.kinds().contains(&"TaskSucceeded"));
}

#[test]
fn a_functions_error_fails_the_execution_with_its_error_type() {
    let d = run(
        json!({"StartAt": "T", "States": {"T": {"Type": "Task", "Resource": "nimbus:function:f", "End": true}}}),
        json!({}),
        Box::new(|_, _| Err(Failure::new("ValueError", "{\"errorMessage\":\"bad\"}"))),
    );
    assert_eq!(d.exec.status, Status::Failed);
    assert_eq!(d.exec.failure.as_ref().unwrap().error, "ValueError");
    assert_eq!(d.kinds().last(), Some(&"ExecutionFailed"));
}

#[test]
fn choice_routes_by_rules_default_and_fails_when_nothing_matches() {
    let def = json!({"StartAt": "C", "States": {
        "C": {"Type": "Choice", "Choices": [
            {"Variable": "$.n", "NumericGreaterThan": 10, "Next": "Big"},
            {"And": [{"Variable": "$.n", "NumericGreaterThan": 0}, {"Variable": "$.kind", "StringEquals": "x"}], "Next": "SmallX"}
        ], "Default": "Other"},
        "Big": {"Type": "Pass", "Result": "big", "End": true},
        "SmallX": {"Type": "Pass", "Result": "smallx", "End": true},
        "Other": {"Type": "Pass", "Result": "other", "End": true}
    }});
    assert_eq!(
        run(def.clone(), json!({"n": 11}), ok_echo()).exec.output,
        Some(json!("big"))
    );
    assert_eq!(
        run(def.clone(), json!({"n": 1, "kind": "x"}), ok_echo())
            .exec
            .output,
        Some(json!("smallx"))
    );
    assert_eq!(
        run(def, json!({"n": 1, "kind": "y"}), ok_echo())
            .exec
            .output,
        Some(json!("other"))
    );
    let no_default = json!({"StartAt": "C", "States": {
        "C": {"Type": "Choice", "Choices": [{"Variable": "$.n", "NumericEquals": 1, "Next": "Done"}]},
        "Done": {"Type": "Succeed"}
    }});
    let d = run(no_default, json!({"n": 2}), ok_echo());
    assert_eq!(
        d.exec.failure.as_ref().unwrap().error,
        "States.NoChoiceMatched"
    );
}

#[test]
fn waits_are_timers_at_the_right_times() {
    let d = run(
        json!({"StartAt": "S", "States": {
            "S": {"Type": "Wait", "Seconds": 5, "Next": "SP"},
            "SP": {"Type": "Wait", "SecondsPath": "$.delay", "Next": "T"},
            "T": {"Type": "Wait", "Timestamp": "1970-01-01T00:30:00Z", "Next": "TP"},
            "TP": {"Type": "Wait", "TimestampPath": "$.at", "End": true}
        }}),
        json!({"delay": 10, "at": "1970-01-01T01:00:00Z"}),
        ok_echo(),
    );
    assert_eq!(d.exec.status, Status::Succeeded, "{:?}", d.exec.failure);
    let exits: Vec<i64> = d
        .history
        .iter()
        .filter(|h| h.kind == "WaitStateExited")
        .map(|h| h.timestamp_ms)
        .collect();
    assert_eq!(exits, vec![1_005_000, 1_015_000, 1_800_000, 3_600_000]);
    let bad = run(
        json!({"StartAt": "W", "States": {"W": {"Type": "Wait", "TimestampPath": "$.at", "End": true}}}),
        json!({"at": "soon"}),
        ok_echo(),
    );
    assert_eq!(bad.exec.failure.as_ref().unwrap().error, "States.Runtime");
}

#[test]
fn succeed_and_fail_states_end_the_execution() {
    let d = run(
        json!({"StartAt": "S", "States": {"S": {"Type": "Succeed", "OutputPath": "$.keep"}}}),
        json!({"keep": 1, "drop": 2}),
        ok_echo(),
    );
    assert_eq!(d.exec.output, Some(json!(1)));
    let d = run(
        json!({"StartAt": "F", "States": {"F": {"Type": "Fail", "ErrorPath": "$.code", "CausePath": "States.Format('order {} failed', $.id)"}}}),
        json!({"code": "OrderFailed", "id": 7}),
        ok_echo(),
    );
    assert_eq!(d.exec.status, Status::Failed);
    assert_eq!(d.exec.failure.as_ref().unwrap().error, "OrderFailed");
}

#[test]
fn parallel_gathers_branch_outputs_in_order() {
    let d = run(
        json!({"StartAt": "P", "States": {"P": {"Type": "Parallel", "ResultPath": "$.both", "End": true, "Branches": [
            {"StartAt": "A", "States": {"A": {"Type": "Task", "Resource": "nimbus:function:a", "End": true}}},
            {"StartAt": "B", "States": {"B": {"Type": "Pass", "Result": "b", "End": true}}}
        ]}}}),
        json!({"v": 1}),
        Box::new(|_, _| Ok(json!("a"))),
    );
    assert_eq!(d.exec.status, Status::Succeeded, "{:?}", d.exec.failure);
    assert_eq!(d.exec.output, Some(json!({"v": 1, "both": ["a", "b"]})));
    assert!(d.kinds().contains(&"ParallelStateStarted"));
    assert!(d.kinds().contains(&"ParallelStateSucceeded"));
}

#[test]
fn a_failing_branch_fails_the_parallel_state_with_its_own_error() {
    let d = run(
        json!({"StartAt": "P", "States": {
            "P": {"Type": "Parallel", "Next": "Done", "Branches": [
                {"StartAt": "Slow", "States": {"Slow": {"Type": "Wait", "Seconds": 100, "End": true}}},
                {"StartAt": "Boom", "States": {"Boom": {"Type": "Fail", "Error": "Branch.Boom", "Cause": "second branch"}}}
            ], "Catch": [{"ErrorEquals": ["Branch.Boom"], "ResultPath": "$.error", "Next": "Caught"}]},
            "Done": {"Type": "Succeed"},
            "Caught": {"Type": "Pass", "End": true}
        }}),
        json!({"v": 1}),
        ok_echo(),
    );
    assert_eq!(d.exec.status, Status::Succeeded, "{:?}", d.exec.failure);
    assert_eq!(
        d.exec.output,
        Some(json!({"v": 1, "error": {"Error": "Branch.Boom", "Cause": "second branch"}}))
    );
    // The other branch's Wait was cancelled, not left to fire.
    assert!(
        d.timers.keys().all(|t| t == "execution-timeout"),
        "{:?}",
        d.timers
    );
    assert!(d.kinds().contains(&"ParallelStateFailed"));
    assert!(!d.kinds().contains(&"WaitStateExited"));
}

#[test]
fn map_of_a_thousand_items_runs_forty_at_a_time_and_keeps_order() {
    let items: Vec<Value> = (0..1000).map(|n| json!({"n": n})).collect();
    let mut d = Driver::new(
        json!({"StartAt": "M", "States": {"M": {"Type": "Map", "ItemsPath": "$.items", "MaxConcurrency": 40,
            "ItemSelector": {"n.$": "$$.Map.Item.Value.n", "index.$": "$$.Map.Item.Index", "tag.$": "$.tag"},
            "ItemProcessor": {"StartAt": "Double", "States": {"Double": {"Type": "Task", "Resource": "nimbus:function:double", "End": true}}},
            "End": true}}}),
        json!({"items": items, "tag": "t"}),
        Box::new(|_, p| {
            Ok(json!(
                p["n"].as_i64().unwrap() * 2 + p["index"].as_i64().unwrap()
                    - p["n"].as_i64().unwrap()
            ))
        }),
    );
    // Hold every call: answer them in a batch each round, so concurrency shows.
    let mut ready: Vec<Invoke> = d.feed(Event::Start);
    let mut peak = 0;
    while !ready.is_empty() {
        peak = peak.max(ready.len()).max(d.exec.tasks.len());
        let mut next = Vec::new();
        for call in std::mem::take(&mut ready) {
            let out = (d.func)(&call.function, &call.payload).unwrap();
            d.calls.push((call.function.clone(), call.payload.clone()));
            next.extend(d.feed(Event::TaskSucceeded {
                task: call.task,
                output: out,
                executed_version: None,
            }));
        }
        ready = next;
    }
    assert_eq!(d.exec.status, Status::Succeeded, "{:?}", d.exec.failure);
    assert_eq!(peak, 40);
    let out = d.exec.output.clone().unwrap();
    let expected: Vec<Value> = (0..1000).map(|n| json!(2 * n)).collect();
    assert_eq!(out, Value::Array(expected));
    assert_eq!(d.calls.len(), 1000);
    assert_eq!(d.calls[5].1, json!({"n": 5, "index": 5, "tag": "t"}));
}

#[test]
fn map_with_the_older_iterator_and_parameters_and_empty_input() {
    let d = run(
        json!({"StartAt": "M", "States": {"M": {"Type": "Map", "Parameters": {"v.$": "$$.Map.Item.Value"},
            "Iterator": {"StartAt": "P", "States": {"P": {"Type": "Pass", "End": true}}}, "End": true}}}),
        json!([1, 2]),
        ok_echo(),
    );
    assert_eq!(d.exec.output, Some(json!([{"v": 1}, {"v": 2}])));
    let empty = run(
        json!({"StartAt": "M", "States": {"M": {"Type": "Map", "ItemProcessor": {"StartAt": "P", "States": {"P": {"Type": "Pass", "End": true}}}, "End": true}}}),
        json!([]),
        ok_echo(),
    );
    assert_eq!(empty.exec.output, Some(json!([])));
    let not_array = run(
        json!({"StartAt": "M", "States": {"M": {"Type": "Map", "ItemsPath": "$.x", "ItemProcessor": {"StartAt": "P", "States": {"P": {"Type": "Pass", "End": true}}}, "End": true}}}),
        json!({"x": 3}),
        ok_echo(),
    );
    assert_eq!(
        not_array.exec.failure.as_ref().unwrap().error,
        "States.Runtime"
    );
}

/// A function failing with the errors in `script` one after another, then succeeding.
fn scripted(script: Vec<&'static str>) -> Func {
    let mut left: VecDeque<&str> = script.into();
    Box::new(move |_, _| match left.pop_front() {
        Some(e) => Err(failure(e)),
        None => Ok(json!("ok")),
    })
}

fn retry_def(retry: Value, catch: Value) -> Value {
    let mut def = json!({"StartAt": "T", "States": {
        "T": {"Type": "Task", "Resource": "nimbus:function:f", "Retry": retry, "Catch": catch, "End": true},
        "Caught": {"Type": "Pass", "End": true}
    }});
    if def["States"]["T"]["Catch"] == json!([]) {
        def["States"].as_object_mut().unwrap().remove("Caught");
    }
    def
}

#[test]
fn retry_uses_defaults_and_backs_off() {
    let d = run(
        retry_def(json!([{"ErrorEquals": ["Flaky"]}]), json!([])),
        json!({}),
        scripted(vec!["Flaky", "Flaky", "Flaky"]),
    );
    assert_eq!(d.exec.status, Status::Succeeded);
    assert_eq!(d.calls.len(), 4);
    let scheduled: Vec<i64> = d
        .history
        .iter()
        .filter(|h| h.kind == "TaskScheduled")
        .map(|h| h.timestamp_ms - 1_000_000)
        .collect();
    // 1 s, then ×2: 1 s, 3 s, 7 s after the start.
    assert_eq!(scheduled, vec![0, 1000, 3000, 7000]);
    let d = run(
        retry_def(json!([{"ErrorEquals": ["Flaky"]}]), json!([])),
        json!({}),
        scripted(vec!["Flaky"; 4]),
    );
    assert_eq!(
        d.exec.status,
        Status::Failed,
        "three retries, then the fourth failure ends it"
    );
}

#[test]
fn a_retriers_budget_is_shared_by_the_errors_it_matches() {
    let retry = json!([{"ErrorEquals": ["A", "B"], "MaxAttempts": 2, "IntervalSeconds": 1}, {"ErrorEquals": ["B"], "MaxAttempts": 5}]);
    let d = run(
        retry_def(
            retry,
            json!([{"ErrorEquals": ["States.ALL"], "Next": "Caught"}]),
        ),
        json!({}),
        scripted(vec!["A", "B", "B", "B"]),
    );
    // A (retry 1), B (retry 2), B: the first matching retrier is spent; the second is never
    // consulted, so the catcher takes it.
    assert_eq!(d.calls.len(), 3);
    assert_eq!(
        d.exec.output,
        Some(json!({"Error": "B", "Cause": "B happened"}))
    );
}

#[test]
fn max_attempts_zero_never_retries_and_blocks_later_retriers() {
    let retry = json!([{"ErrorEquals": ["A"], "MaxAttempts": 0}, {"ErrorEquals": ["States.ALL"], "MaxAttempts": 3}]);
    let d = run(retry_def(retry, json!([])), json!({}), scripted(vec!["A"]));
    assert_eq!(d.calls.len(), 1);
    assert_eq!(d.exec.status, Status::Failed);
}

#[test]
fn max_delay_caps_the_backoff_and_full_jitter_stays_below_it() {
    let retry = json!([{"ErrorEquals": ["A"], "MaxAttempts": 4, "IntervalSeconds": 2, "BackoffRate": 10, "MaxDelaySeconds": 30}]);
    let d = run(
        retry_def(retry, json!([])),
        json!({}),
        scripted(vec!["A"; 4]),
    );
    let scheduled: Vec<i64> = d
        .history
        .iter()
        .filter(|h| h.kind == "TaskScheduled")
        .map(|h| h.timestamp_ms - 1_000_000)
        .collect();
    assert_eq!(scheduled, vec![0, 2000, 22_000, 52_000, 82_000]);

    let r = Retrier {
        error_equals: vec!["A".into()],
        interval_seconds: 3.0,
        max_attempts: 10,
        backoff_rate: 2.0,
        max_delay_seconds: Some(20.0),
        jitter_full: true,
    };
    let mut rng = Rng::new(42);
    let mut seen = Vec::new();
    for n in 1..=6 {
        for _ in 0..200 {
            let d = retry_delay_ms(&r, n, &mut rng);
            let cap = (3000.0 * 2f64.powi(n as i32 - 1)).min(20_000.0) as i64;
            assert!((0..=cap).contains(&d), "retry {n}: {d} not in 0..={cap}");
            seen.push(d);
        }
    }
    // Uniform below the cap: small and large delays both occur.
    assert!(seen.iter().any(|d| *d < 1000) && seen.iter().any(|d| *d > 15_000));
}

#[test]
fn runtime_errors_are_never_retried_nor_caught_by_states_all() {
    let def = json!({"StartAt": "T", "States": {
        "T": {"Type": "Task", "Resource": "nimbus:function:f", "OutputPath": "$.missing",
              "Retry": [{"ErrorEquals": ["States.ALL"]}], "Catch": [{"ErrorEquals": ["States.ALL"], "Next": "Caught"}], "End": true},
        "Caught": {"Type": "Pass", "End": true}
    }});
    let d = run(def, json!({}), ok_echo());
    assert_eq!(d.calls.len(), 1);
    assert_eq!(d.exec.failure.as_ref().unwrap().error, "States.Runtime");
}

#[test]
fn catch_result_path_keeps_the_input_beside_the_error() {
    let catch = json!([{"ErrorEquals": ["NotThis"], "Next": "Caught"}, {"ErrorEquals": ["States.TaskFailed"], "ResultPath": "$.err", "Next": "Caught"}]);
    let d = run(
        retry_def(json!([]), catch),
        json!({"order": 1}),
        scripted(vec!["Boom"]),
    );
    assert_eq!(
        d.exec.output,
        Some(json!({"order": 1, "err": {"Error": "Boom", "Cause": "Boom happened"}}))
    );
    let discard = json!([{"ErrorEquals": ["States.ALL"], "ResultPath": null, "Next": "Caught"}]);
    let d = run(
        retry_def(json!([]), discard),
        json!({"order": 1}),
        scripted(vec!["Boom"]),
    );
    assert_eq!(d.exec.output, Some(json!({"order": 1})));
}

#[test]
fn task_timeout_fails_with_states_timeout_and_a_late_answer_is_stale() {
    let def = Definition::parse(&json!({"StartAt": "T", "States": {"T": {"Type": "Task", "Resource": "nimbus:function:slow", "TimeoutSeconds": 5, "End": true}}})).unwrap();
    let mut exec = Execution::new("e", "n", "f", json!({}), 0, "s");
    let s = step(&mut exec, &def, Event::Start, 0);
    let task = match &s
        .effects
        .iter()
        .find(|e| matches!(e, Effect::Invoke(_)))
        .unwrap()
    {
        Effect::Invoke(i) => i.task.clone(),
        _ => unreachable!(),
    };
    assert!(s.effects.contains(&Effect::Timer {
        id: format!("t:{task}"),
        due_ms: 5000
    }));
    let fired = step(
        &mut exec,
        &def,
        Event::TimerFired {
            timer: format!("t:{task}"),
        },
        5000,
    );
    assert!(!fired.stale);
    assert_eq!(exec.status, Status::Failed);
    assert_eq!(exec.failure.as_ref().unwrap().error, "States.Timeout");
    let late = step(
        &mut exec,
        &def,
        Event::TaskSucceeded {
            task,
            output: json!(1),
            executed_version: None,
        },
        6000,
    );
    assert!(late.stale);
}

fn token_def(heartbeat: Option<u64>) -> Definition {
    let mut task = json!({"Type": "Task", "Resource": "arn:aws:states:::lambda:invoke.waitForTaskToken",
        "Parameters": {"FunctionName": "approver", "Payload": {"token.$": "$$.Task.Token", "order.$": "$.order"}}, "End": true});
    if let Some(h) = heartbeat {
        task["HeartbeatSeconds"] = json!(h);
    }
    Definition::parse(&json!({"StartAt": "Approve", "States": {"Approve": task}})).unwrap()
}

fn start_token_task(def: &Definition) -> (Execution, Invoke) {
    let mut exec = Execution::new("e", "n", "f", json!({"order": 7}), 0, "s3cret");
    let s = step(&mut exec, def, Event::Start, 0);
    let call = s
        .effects
        .into_iter()
        .find_map(|e| {
            if let Effect::Invoke(i) = e {
                Some(i)
            } else {
                None
            }
        })
        .unwrap();
    (exec, call)
}

#[test]
fn wait_for_task_token_success_and_failure() {
    let def = token_def(None);
    let (mut exec, call) = start_token_task(&def);
    let token = call.payload["token"].as_str().unwrap().to_string();
    assert_eq!(call.payload["order"], json!(7));
    // The function returning does not end the task.
    let s = step(
        &mut exec,
        &def,
        Event::TaskSucceeded {
            task: call.task.clone(),
            output: Value::Null,
            executed_version: None,
        },
        10,
    );
    assert_eq!(s.history[0].kind, "TaskSubmitted");
    assert_eq!(exec.status, Status::Running);
    // A forged token does nothing.
    let forged = format!("{}:{}:{}", "e", call.task, "0".repeat(32));
    assert!(
        step(
            &mut exec,
            &def,
            Event::TokenSucceeded {
                token: forged,
                output: json!(1)
            },
            20
        )
        .stale
    );
    step(
        &mut exec,
        &def,
        Event::TokenSucceeded {
            token: token.clone(),
            output: json!({"approved": true}),
        },
        30,
    );
    assert_eq!(exec.status, Status::Succeeded);
    assert_eq!(exec.output, Some(json!({"approved": true})));
    assert!(
        step(
            &mut exec,
            &def,
            Event::TokenSucceeded {
                token,
                output: json!(1)
            },
            40
        )
        .stale
    );

    let (mut exec, call) = start_token_task(&def);
    let token = call.payload["token"].as_str().unwrap().to_string();
    step(
        &mut exec,
        &def,
        Event::TokenFailed {
            token,
            failure: Failure::new("Rejected", "no"),
        },
        30,
    );
    assert_eq!(exec.failure, Some(Failure::new("Rejected", "no")));
}

#[test]
fn a_token_task_without_heartbeats_times_out() {
    let def = token_def(Some(60));
    let (mut exec, call) = start_token_task(&def);
    let token = call.payload["token"].as_str().unwrap().to_string();
    let hb = step(
        &mut exec,
        &def,
        Event::TokenHeartbeat {
            token: token.clone(),
        },
        50_000,
    );
    let rearmed = hb
        .effects
        .iter()
        .find_map(|e| {
            if let Effect::Timer { id, due_ms } = e {
                Some((id.clone(), *due_ms))
            } else {
                None
            }
        })
        .unwrap();
    assert_eq!(rearmed.1, 110_000);
    // The first heartbeat timer was cancelled: firing it is stale.
    assert!(
        step(
            &mut exec,
            &def,
            Event::TimerFired {
                timer: format!("h:{}:0", call.task)
            },
            60_000
        )
        .stale
    );
    step(
        &mut exec,
        &def,
        Event::TimerFired { timer: rearmed.0 },
        110_000,
    );
    assert_eq!(exec.status, Status::Failed);
    assert_eq!(
        exec.failure.as_ref().unwrap().error,
        "States.HeartbeatTimeout"
    );
}

#[test]
fn an_event_fed_twice_changes_nothing_the_second_time() {
    let def = Definition::parse(&json!({"StartAt": "T", "States": {
        "T": {"Type": "Task", "Resource": "nimbus:function:f", "Next": "U"},
        "U": {"Type": "Task", "Resource": "nimbus:function:f", "End": true}}}))
    .unwrap();
    let mut exec = Execution::new("e", "n", "f", json!({}), 0, "s");
    let s = step(&mut exec, &def, Event::Start, 0);
    assert!(step(&mut exec, &def, Event::Start, 0).stale);
    let Effect::Invoke(first) = s
        .effects
        .iter()
        .find(|e| matches!(e, Effect::Invoke(_)))
        .unwrap()
        .clone()
    else {
        unreachable!()
    };
    let done = Event::TaskSucceeded {
        task: first.task.clone(),
        output: json!(1),
        executed_version: None,
    };
    let s = step(&mut exec, &def, done.clone(), 1);
    assert_eq!(
        s.effects
            .iter()
            .filter(|e| matches!(e, Effect::Invoke(_)))
            .count(),
        1
    );
    let again = step(&mut exec, &def, done, 2);
    assert!(again.stale);
    assert!(again.effects.is_empty() && again.history.is_empty());
}

#[test]
fn stop_and_execution_timeout_end_a_running_execution() {
    let def = Definition::parse(&json!({"TimeoutSeconds": 30, "StartAt": "W", "States": {"W": {"Type": "Wait", "Seconds": 100, "End": true}}})).unwrap();
    let mut exec = Execution::new("e", "n", "f", json!({}), 0, "s");
    let s = step(&mut exec, &def, Event::Start, 0);
    assert!(s.effects.contains(&Effect::Timer {
        id: "execution-timeout".into(),
        due_ms: 30_000
    }));
    let t = step(
        &mut exec,
        &def,
        Event::TimerFired {
            timer: "execution-timeout".into(),
        },
        30_000,
    );
    assert_eq!(exec.status, Status::TimedOut);
    assert!(
        t.effects
            .iter()
            .any(|e| matches!(e, Effect::CancelTimer { id } if id.starts_with("w:")))
    );

    let mut exec = Execution::new("e", "n", "f", json!({}), 0, "s");
    step(&mut exec, &def, Event::Start, 0);
    step(
        &mut exec,
        &def,
        Event::Stop {
            error: Some("Cancelled".into()),
            cause: None,
        },
        5,
    );
    assert_eq!(exec.status, Status::Aborted);
    assert_eq!(exec.failure.as_ref().unwrap().error, "Cancelled");
}

#[test]
fn data_past_the_limit_fails_with_data_limit_exceeded() {
    let big = "x".repeat(limits::FLOW_DATA_BYTES_MAX);
    let d = run(
        json!({"StartAt": "T", "States": {"T": {"Type": "Task", "Resource": "nimbus:function:f", "End": true}}}),
        json!({}),
        Box::new(move |_, _| Ok(json!(big))),
    );
    assert_eq!(
        d.exec.failure.as_ref().unwrap().error,
        "States.DataLimitExceeded"
    );
}

#[test]
fn a_loop_stops_at_the_history_limit() {
    let d = run(
        json!({"StartAt": "A", "States": {"A": {"Type": "Pass", "Next": "B"}, "B": {"Type": "Pass", "Next": "A"}}}),
        json!({}),
        ok_echo(),
    );
    assert_eq!(d.exec.status, Status::Failed);
    assert!(
        d.exec
            .failure
            .as_ref()
            .unwrap()
            .cause
            .contains("history events")
    );
    assert!(d.exec.events <= limits::FLOW_HISTORY_EVENTS_MAX);
}

#[test]
fn history_events_have_step_functions_shape() {
    let d = run(
        json!({"StartAt": "P", "States": {"P": {"Type": "Pass", "End": true}}}),
        json!({"a": 1}),
        ok_echo(),
    );
    let first = d.history[0].to_json();
    assert_eq!(first["type"], "ExecutionStarted");
    assert_eq!(first["id"], 1);
    assert_eq!(first["executionStartedEventDetails"]["input"], "{\"a\":1}");
    let entered = d.history[1].to_json();
    assert_eq!(entered["stateEnteredEventDetails"]["name"], "P");
    assert_eq!(entered["previousEventId"], 1);
    assert!(first["timestamp"].as_str().unwrap().ends_with('Z'));
}
