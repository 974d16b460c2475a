use super::*;
use serde_json::json;

fn refused(def: Value) -> String {
    Definition::parse(&def)
        .expect_err("the definition is refused")
        .to_string()
}

fn pass() -> Value {
    json!({"Type": "Pass", "End": true})
}

#[test]
fn a_complete_definition_parses_into_numbered_machines() {
    let def = Definition::parse(&json!({
        "Comment": "all states", "StartAt": "P", "TimeoutSeconds": 60,
        "States": {
            "P": {"Type": "Parallel", "Next": "M", "Branches": [{"StartAt": "A", "States": {"A": pass()}}]},
            "M": {"Type": "Map", "ItemProcessor": {"ProcessorConfig": {"Mode": "INLINE"}, "StartAt": "B", "States": {"B": pass()}}, "Next": "T"},
            "T": {"Type": "Task", "Resource": "arn:aws:lambda:eu-west-1:1:function:charge:live", "Next": "C",
                  "Retry": [{"ErrorEquals": ["A"]}, {"ErrorEquals": ["States.ALL"]}], "Catch": [{"ErrorEquals": ["States.ALL"], "Next": "F"}]},
            "C": {"Type": "Choice", "Choices": [{"Variable": "$.x", "IsPresent": true, "Next": "W"}], "Default": "S"},
            "W": {"Type": "Wait", "Seconds": 1, "Next": "S"},
            "S": {"Type": "Succeed"},
            "F": {"Type": "Fail", "Error": "E"}
        }
    }))
    .unwrap();
    assert_eq!(def.machines.len(), 3);
    assert_eq!(def.timeout_seconds, Some(60));
    let Kind::Task(t) = &def.root().states["T"].kind else {
        panic!("a task")
    };
    assert_eq!(
        t.resource,
        Resource::Function {
            name: "charge".into(),
            qualifier: Some("live".into())
        }
    );
    assert_eq!(t.retry[0].max_attempts, 3);
    assert_eq!(t.retry[0].backoff_rate, 2.0);
    assert_eq!(
        def.functions().into_iter().collect::<Vec<_>>(),
        vec!["charge".to_string()]
    );
}

#[test]
fn errors_name_the_state_and_the_field() {
    let cases = [
        (
            json!({"StartAt": "X", "States": {"A": pass()}}),
            "StartAt: 'X' is not a state",
        ),
        (
            json!({"StartAt": "A", "States": {"A": {"Type": "Pass", "Next": "Nope"}}}),
            "States.A.Next: 'Nope' is not a state",
        ),
        (
            json!({"StartAt": "A", "States": {"A": {"Type": "Pass"}}}),
            "States.A.Next: is required",
        ),
        (
            json!({"StartAt": "A", "States": {"A": pass(), "B": pass()}}),
            "States.B: cannot be reached from StartAt",
        ),
        (
            json!({"StartAt": "A", "States": {"A": {"Type": "Sleep", "End": true}}}),
            "States.A.Type: 'Sleep' is not a state type",
        ),
        (
            json!({"StartAt": "A", "States": {"A": {"Type": "Pass", "End": true, "Seconds": 1}}}),
            "States.A.Seconds: is not a field of a Pass state",
        ),
        (
            json!({"StartAt": "A", "States": {"A": {"Type": "Pass", "End": true, "InputPath": "x"}}}),
            "States.A.InputPath: 'x' is not a path",
        ),
        (
            json!({"StartAt": "A", "States": {"A": {"Type": "Pass", "End": true, "ResultPath": "$.a[*]"}}}),
            "States.A.ResultPath: '$.a[*]' is not a reference path",
        ),
        (
            json!({"StartAt": "A", "States": {"A": {"Type": "Pass", "End": true, "Parameters": {"x.$": "nope"}}}}),
            "States.A: Parameters.x.$: 'nope' is not a path",
        ),
        (
            json!({"StartAt": "A", "States": {"A": {"Type": "Task", "Resource": "nimbus:function:f", "End": true,
            "Retry": [{"ErrorEquals": ["States.ALL"]}, {"ErrorEquals": ["B"]}]}}}),
            "States.A.Retry[0].ErrorEquals: States.ALL must be in the last",
        ),
        (
            json!({"StartAt": "A", "States": {"A": {"Type": "Task", "Resource": "nimbus:function:f", "End": true,
            "Catch": [{"ErrorEquals": ["States.ALL", "B"], "Next": "A"}]}}}),
            "States.A.Catch[0].ErrorEquals: States.ALL must appear alone",
        ),
        (
            json!({"StartAt": "A", "States": {"A": {"Type": "Task", "Resource": "arn:aws:sqs:::queue", "End": true}}}),
            "States.A.Resource: 'arn:aws:sqs:::queue' is not a resource",
        ),
        (
            json!({"StartAt": "A", "States": {"A": {"Type": "Task", "Resource": "arn:aws:states:::lambda:invoke", "End": true}}}),
            "States.A.Parameters: arn:aws:states:::lambda:invoke needs Parameters.FunctionName",
        ),
        (
            json!({"StartAt": "A", "States": {"A": {"Type": "Task", "Resource": "arn:aws:states:::lambda:invoke.waitForTaskToken", "Parameters": {"FunctionName": "f"}, "End": true}}}),
            "must pass $$.Task.Token",
        ),
        (
            json!({"StartAt": "A", "States": {"A": {"Type": "Task", "Resource": "nimbus:function:f", "TimeoutSeconds": 5, "HeartbeatSeconds": 5, "End": true}}}),
            "States.A.HeartbeatSeconds: must be less than TimeoutSeconds",
        ),
        (
            json!({"StartAt": "A", "States": {"A": {"Type": "Wait", "End": true}}}),
            "States.A: a Wait state needs exactly one of",
        ),
        (
            json!({"StartAt": "A", "States": {"A": {"Type": "Wait", "Timestamp": "tomorrow", "End": true}}}),
            "States.A.Timestamp: 'tomorrow' is not an RFC 3339 timestamp",
        ),
        (
            json!({"StartAt": "A", "States": {"A": {"Type": "Choice", "Choices": []}}}),
            "States.A.Choices: is required",
        ),
        (
            json!({"StartAt": "A", "States": {"A": {"Type": "Choice", "Choices": [{"Variable": "$.x", "StringEq": "a", "Next": "A"}]}}}),
            "States.A: Choices[0]",
        ),
        (
            json!({"StartAt": "A", "States": {"A": {"Type": "Parallel", "End": true, "Branches": [{"StartAt": "B", "States": {"B": {"Type": "Pass", "Next": "A"}}}]}}}),
            "States.A.Branches[0].States.B.Next: 'A' is not a state here",
        ),
        (
            json!({"StartAt": "A", "States": {"A": {"Type": "Map", "End": true, "ItemProcessor": {"ProcessorConfig": {"Mode": "DISTRIBUTED"}, "StartAt": "B", "States": {"B": pass()}}}}}),
            "only INLINE Maps run here",
        ),
        (
            json!({"StartAt": "A", "States": {"A": {"Type": "Map", "End": true, "ItemReader": {}, "ItemProcessor": {"StartAt": "B", "States": {"B": pass()}}}}}),
            "States.A.ItemReader: belongs to a distributed Map",
        ),
        (
            json!({"StartAt": "A", "States": {"A": {"Type": "Map", "End": true}}}),
            "States.A.ItemProcessor: is required",
        ),
        (
            json!({"StartAt": "A", "States": {"A": {"Type": "Pass", "Next": "B", "End": true}, "B": pass()}}),
            "States.A: has both Next and End",
        ),
        (
            json!({"QueryLanguage": "JSONata", "StartAt": "A", "States": {"A": pass()}}),
            "QueryLanguage: 'JSONata' is not supported",
        ),
        (
            json!({"StartAt": "A", "States": {}}),
            "States: has no states",
        ),
        (
            json!({"StartAt": "A", "States": {"A": pass()}, "Extra": 1}),
            "Extra: is not a field here",
        ),
    ];
    for (def, expected) in cases {
        let message = refused(def.clone());
        assert!(
            message.contains(expected),
            "{def}\n  gave: {message}\n  want: {expected}"
        );
    }
}

#[test]
fn nesting_and_size_are_bounded() {
    let mut inner = json!({"StartAt": "L", "States": {"L": pass()}});
    for _ in 0..=limits::FLOW_NESTING_MAX {
        inner = json!({"StartAt": "P", "States": {"P": {"Type": "Parallel", "End": true, "Branches": [inner]}}});
    }
    assert!(refused(inner).contains("nest deeper than"));
    let big = format!(
        "{{\"Comment\": \"{}\"}}",
        "x".repeat(limits::FLOW_DEFINITION_BYTES_MAX)
    );
    assert!(
        Definition::parse_json(&big)
            .unwrap_err()
            .to_string()
            .contains("bytes; the limit is")
    );
    assert!(
        Definition::parse_json("{")
            .unwrap_err()
            .to_string()
            .contains("not valid JSON")
    );
}

#[test]
fn function_names_are_read_from_every_resource_form() {
    assert_eq!(function_ref("f"), ("f".into(), None));
    assert_eq!(function_ref("f:live"), ("f".into(), Some("live".into())));
    assert_eq!(
        function_ref("arn:aws:lambda:us-east-1:1:function:f:2"),
        ("f".into(), Some("2".into()))
    );
    assert_eq!(function_ref("123:function:f"), ("f".into(), None));
    assert!(
        parse_resource("nimbus:function:bad name")
            .unwrap_err()
            .contains("bad name")
    );
    assert_eq!(
        parse_resource("arn:aws:states:::lambda:invoke.waitForTaskToken").unwrap(),
        Resource::LambdaInvoke {
            wait_for_token: true
        }
    );
}
