//! Step Functions' own API end to end, with the real clients from PyPI: boto3's
//! `stepfunctions` client through a state machine's life, a human-approval flow whose
//! function answers its task token with boto3 and no endpoint of its own, the AWS CLI,
//! refused signatures and scopes, and a user's route on `/` that still answers.

use std::process::Command;

use serde_json::{Value, json};

use crate::harness::{Server, aws_env, project, test_python};

/// Runs a Python script with boto3 against the server, the admin's credentials and
/// `ENDPOINT` in its environment; answers its last line of output as JSON.
fn python(server: &Server, script: &str, env: &[(&str, &str)]) -> Value {
    let mut cmd = Command::new(test_python());
    cmd.args(["-c", script]).env("ENDPOINT", &server.endpoint);
    aws_env(&mut cmd, &server.data_dir);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the script failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(stdout.trim().lines().last().unwrap_or("null")).unwrap()
}

/// A boto3 `stepfunctions` client for the server. StartSyncExecution's model has the host
/// prefix `sync-`, which an address cannot take; functions get the same setting from their
/// environment (`AWS_DISABLE_HOST_PREFIX_INJECTION`).
const CLIENT: &str = "\
import boto3, json, os, time, datetime
from botocore.config import Config
sfn = boto3.client('stepfunctions', endpoint_url=os.environ['ENDPOINT'], region_name='us-east-1',
                   config=Config(inject_host_prefix=False, retries={'max_attempts': 1}))
def until_done(arn):
    for _ in range(300):
        d = sfn.describe_execution(executionArn=arn)
        if d['status'] != 'RUNNING':
            return d
        time.sleep(0.1)
    raise AssertionError('still running: %s' % arn)
def refused(exc, call, **kw):
    try:
        call(**kw)
    except exc as e:
        return e.response['Error']['Message']
    raise AssertionError('not refused: %s' % exc)
";

const LIFECYCLE: &str = "\
pass_def = {'StartAt': 'Hello', 'States': {'Hello': {'Type': 'Pass', 'Parameters': {'greeting.$': \"States.Format('hello {}', $.who)\"}, 'End': True}}}
made = sfn.create_state_machine(name='hello', definition=json.dumps(pass_def), roleArn='arn:aws:iam::000000000000:role/x')
arn = made['stateMachineArn']
assert arn == 'arn:aws:states:us-east-1:000000000000:stateMachine:hello', arn
assert isinstance(made['creationDate'], datetime.datetime), made
# The same definition again is the same state machine; another is refused.
assert sfn.create_state_machine(name='hello', definition=json.dumps(pass_def), roleArn='r')['stateMachineArn'] == arn
refused(sfn.exceptions.StateMachineAlreadyExists, sfn.create_state_machine, name='hello', definition=json.dumps({'StartAt': 'X', 'States': {'X': {'Type': 'Succeed'}}}), roleArn='r')
d = sfn.describe_state_machine(stateMachineArn=arn)
assert d['name'] == 'hello' and json.loads(d['definition']) == pass_def and d['status'] == 'ACTIVE', d
assert any(m['stateMachineArn'] == arn for m in sfn.list_state_machines()['stateMachines'])

started = sfn.start_execution(stateMachineArn=arn, name='first', input=json.dumps({'who': 'sfn'}))
ex = started['executionArn']
assert ex.startswith('arn:aws:states:us-east-1:000000000000:execution:hello:'), ex
done = until_done(ex)
assert done['status'] == 'SUCCEEDED', done
assert json.loads(done['output']) == {'greeting': 'hello sfn'}, done
assert done['name'] == 'first' and done['stateMachineArn'] == arn and done['stopDate'] >= done['startDate']
# The same name and input is the same execution; another input is refused.
assert sfn.start_execution(stateMachineArn=arn, name='first', input=json.dumps({'who': 'sfn'}))['executionArn'] == ex
refused(sfn.exceptions.ExecutionAlreadyExists, sfn.start_execution, stateMachineArn=arn, name='first', input='{\"who\": 2}')

events = sfn.get_execution_history(executionArn=ex)['events']
types = [e['type'] for e in events]
assert types[0] == 'ExecutionStarted' and types[-1] == 'ExecutionSucceeded', types
assert all(isinstance(e['timestamp'], datetime.datetime) for e in events)
assert abs(events[0]['timestamp'].timestamp() - time.time()) < 120, events[0]
assert json.loads(events[0]['executionStartedEventDetails']['input']) == {'who': 'sfn'}
page = sfn.get_execution_history(executionArn=ex, maxResults=2)
assert len(page['events']) == 2 and 'nextToken' in page
rest = sfn.get_execution_history(executionArn=ex, maxResults=100, nextToken=page['nextToken'])['events']
assert [e['id'] for e in page['events'] + rest] == [e['id'] for e in events]
newest = sfn.get_execution_history(executionArn=ex, reverseOrder=True, maxResults=1)['events']
assert newest[0]['type'] == 'ExecutionSucceeded', newest

sync = sfn.start_sync_execution(stateMachineArn=arn, input=json.dumps({'who': 'sync'}))
assert sync['status'] == 'SUCCEEDED' and json.loads(sync['output']) == {'greeting': 'hello sync'}, sync

wait_def = {'StartAt': 'Nap', 'States': {'Nap': {'Type': 'Wait', 'Seconds': 600, 'End': True}}}
napper = sfn.create_state_machine(name='napper', definition=json.dumps(wait_def), roleArn='r')['stateMachineArn']
long = sfn.start_execution(stateMachineArn=napper)['executionArn']
running = sfn.list_executions(stateMachineArn=napper, statusFilter='RUNNING')['executions']
assert [e['executionArn'] for e in running] == [long], running
stopped = sfn.stop_execution(executionArn=long, error='Bored', cause='no time')
assert isinstance(stopped['stopDate'], datetime.datetime)
d = sfn.describe_execution(executionArn=long)
assert d['status'] == 'ABORTED' and d['error'] == 'Bored', d
assert sfn.list_executions(stateMachineArn=napper, statusFilter='RUNNING')['executions'] == []
succeeded = sfn.list_executions(stateMachineArn=arn, statusFilter='SUCCEEDED')['executions']
assert len(succeeded) == 2, succeeded
one = sfn.list_executions(stateMachineArn=arn, maxResults=1)
two = sfn.list_executions(stateMachineArn=arn, maxResults=1, nextToken=one['nextToken'])
assert {e['executionArn'] for e in one['executions'] + two['executions']} == {e['executionArn'] for e in succeeded}
assert 'nextToken' not in two, two

# Updated, the next execution runs the new definition.
sfn.update_state_machine(stateMachineArn=arn, definition=json.dumps({'StartAt': 'Done', 'States': {'Done': {'Type': 'Pass', 'Result': 'v2', 'End': True}}}))
assert json.loads(sfn.start_sync_execution(stateMachineArn=arn)['output']) == 'v2'

missing = 'arn:aws:states:us-east-1:000000000000:stateMachine:nope'
m = refused(sfn.exceptions.StateMachineDoesNotExist, sfn.describe_state_machine, stateMachineArn=missing)
assert 'nope' in m, m
refused(sfn.exceptions.StateMachineDoesNotExist, sfn.start_execution, stateMachineArn=missing)
refused(sfn.exceptions.ExecutionDoesNotExist, sfn.describe_execution, executionArn='arn:aws:states:us-east-1:000000000000:execution:hello:0123')
refused(sfn.exceptions.InvalidArn, sfn.describe_execution, executionArn='hello')
m = refused(sfn.exceptions.InvalidDefinition, sfn.create_state_machine, name='broken', roleArn='r',
            definition=json.dumps({'StartAt': 'Broken', 'States': {'Broken': {'Type': 'Pass', 'Next': 'Nowhere'}}}))
assert 'States.Broken.Next' in m, m
refused(sfn.exceptions.InvalidDefinition, sfn.create_state_machine, name='broken', roleArn='r', definition='{not json')
refused(sfn.exceptions.InvalidExecutionInput, sfn.start_execution, stateMachineArn=arn, input='{not json')
refused(sfn.exceptions.InvalidToken, sfn.send_task_success, taskToken='nonsense', output='{}')
sfn.delete_state_machine(stateMachineArn=napper)
refused(sfn.exceptions.StateMachineDoesNotExist, sfn.describe_state_machine, stateMachineArn=napper)
sfn.delete_state_machine(stateMachineArn=napper)
print(json.dumps({'ok': True}))
";

#[tokio::test]
async fn boto3_runs_state_machines_through_their_life_and_gets_their_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("data"));
    let seen = python(&server, &format!("{CLIENT}{LIFECYCLE}"), &[]);
    assert_eq!(seen["ok"], true);
}

/// Waits for a human: the function is handed the task token and approves at once with
/// boto3, configured by nothing but its environment.
const APPROVER: &str = "\
import json, boto3
sfn = boto3.client('stepfunctions')
def handler(event, context):
    sfn.send_task_success(taskToken=event['token'], output=json.dumps({'approved': True, 'order': event['order']}))
    return {'sent': True}
";

#[tokio::test]
async fn a_function_answers_its_task_token_with_boto3_and_the_execution_succeeds() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("data"));
    let definition = json!({
        "StartAt": "Approve",
        "States": {
            "Approve": {
                "Type": "Task",
                "Resource": "arn:aws:states:::lambda:invoke.waitForTaskToken",
                "Parameters": {"FunctionName": "approver", "Payload": {"token.$": "$$.Task.Token", "order.$": "$.order"}},
                "TimeoutSeconds": 120,
                "ResultPath": "$.approval",
                "End": true
            }
        }
    });
    let dir = project(
        tmp.path(),
        "approval",
        "functions:\n  approver:\n    runtime: python3\n    handler: main.handler\n    timeout_ms: 30000\nflows:\n  - name: approval\n    definition: approval.asl.json\n",
        &[
            ("main.py", APPROVER),
            ("requirements.txt", "boto3==1.44.18\n"),
            ("approval.asl.json", &definition.to_string()),
        ],
    );
    server.deploy(&dir).await;
    let seen = python(
        &server,
        &format!(
            "{CLIENT}\
arn = 'arn:aws:states:us-east-1:000000000000:stateMachine:approval'
ex = sfn.start_execution(stateMachineArn=arn, input=json.dumps({{'order': 7}}))['executionArn']
done = until_done(ex)
types = [e['type'] for e in sfn.get_execution_history(executionArn=ex)['events']]
print(json.dumps({{'status': done['status'], 'output': done.get('output'), 'cause': done.get('cause'), 'types': types}}))
"
        ),
        &[],
    );
    assert_eq!(seen["status"], "SUCCEEDED", "{seen}");
    let output: Value = serde_json::from_str(seen["output"].as_str().unwrap()).unwrap();
    assert_eq!(
        output,
        json!({"order": 7, "approval": {"approved": true, "order": 7}})
    );
    let types: Vec<&str> = seen["types"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    assert!(types.contains(&"TaskSucceeded"), "{types:?}");
}

#[tokio::test]
async fn the_aws_cli_lists_state_machines() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("data"));
    python(
        &server,
        &format!(
            "{CLIENT}sfn.create_state_machine(name='listed', roleArn='r', definition=json.dumps({{'StartAt': 'S', 'States': {{'S': {{'Type': 'Succeed'}}}}}}))\nprint('{{}}')\n"
        ),
        &[],
    );
    let mut cli = Command::new(test_python());
    cli.args(["-m", "awscli", "stepfunctions", "list-state-machines"])
        .args(["--endpoint-url", &server.endpoint, "--region", "us-east-1"]);
    aws_env(&mut cli, &server.data_dir);
    let out = cli.output().unwrap();
    assert!(
        out.status.success(),
        "aws stepfunctions list-state-machines: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listed: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        listed["stateMachines"][0]["stateMachineArn"],
        "arn:aws:states:us-east-1:000000000000:stateMachine:listed",
        "{listed}"
    );

    let mut missing = Command::new(test_python());
    missing
        .args(["-m", "awscli", "stepfunctions", "describe-state-machine"])
        .args([
            "--state-machine-arn",
            "arn:aws:states:us-east-1:000000000000:stateMachine:nope",
        ])
        .args(["--endpoint-url", &server.endpoint, "--region", "us-east-1"]);
    aws_env(&mut missing, &server.data_dir);
    let out = missing.output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("StateMachineDoesNotExist"), "{err}");
}

/// Sends a Step Functions request signed as an SDK would, with `(key id, secret)` and for
/// `service`; answers the status, the `__type` and the message.
async fn call(
    server: &Server,
    key: (&str, &str),
    service: &str,
    operation: &str,
    body: &str,
) -> (u16, String, String) {
    let host = server.endpoint.trim_start_matches("http://").to_string();
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let date = lambda::sigv4::amz_date(now_ms);
    let target = format!("AWSStepFunctions.{operation}");
    let headers: Vec<(String, String)> = vec![
        ("host".into(), host),
        ("x-amz-date".into(), date.clone()),
        ("x-amz-target".into(), target),
        ("content-type".into(), "application/x-amz-json-1.0".into()),
    ];
    let request = lambda::sigv4::Signed {
        method: "POST",
        path: "/",
        query: "",
        headers: &headers,
        body: body.as_bytes(),
    };
    let credential = lambda::sigv4::Credential {
        access_key_id: key.0.into(),
        date: date[..8].to_string(),
        region: "us-east-1".into(),
        service: service.into(),
    };
    let authorization = lambda::sigv4::authorization(&request, &credential, key.1);
    let mut req = server
        .http
        .post(server.url("/"))
        .header("authorization", authorization);
    for (n, v) in &headers[1..] {
        req = req.header(n.as_str(), v.as_str());
    }
    answer(req.body(body.to_string()).send().await.unwrap()).await
}

async fn answer(res: reqwest::Response) -> (u16, String, String) {
    let status = res.status().as_u16();
    let header = crate::harness::header(&res, "x-amzn-errortype").to_string();
    let v: Value = res.json().await.unwrap_or(Value::Null);
    let kind = v["__type"].as_str().unwrap_or_default().to_string();
    assert_eq!(header, kind, "x-amzn-errortype and __type agree: {v}");
    (
        status,
        kind,
        v["message"].as_str().unwrap_or_default().to_string(),
    )
}

fn admin_key(server: &Server) -> (String, String) {
    let creds = std::fs::read_to_string(server.data_dir.join("aws.credentials")).unwrap();
    let field = |name: &str| {
        creds
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim_start_matches([' ', '=']).trim().to_string())
            .unwrap()
    };
    (field("aws_access_key_id"), field("aws_secret_access_key"))
}

#[tokio::test]
async fn unsigned_wrongly_signed_and_out_of_scope_requests_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("data"));
    let (id, secret) = admin_key(&server);
    let list = "{}";

    let unsigned = server
        .http
        .post(server.url("/"))
        .header("x-amz-target", "AWSStepFunctions.ListStateMachines")
        .header("content-type", "application/x-amz-json-1.0")
        .body(list)
        .send()
        .await
        .unwrap();
    let (status, kind, message) = answer(unsigned).await;
    assert_eq!(
        (status, kind.as_str()),
        (400, "MissingAuthenticationTokenException")
    );
    assert!(message.contains("aws.credentials"), "{message}");

    let wrong = "0".repeat(40);
    let (status, kind, _) = call(&server, (&id, &wrong), "states", "ListStateMachines", list).await;
    assert_eq!((status, kind.as_str()), (400, "InvalidSignatureException"));
    let (status, kind, _) = call(
        &server,
        ("NKIANOTAKEY000000000", &secret),
        "states",
        "ListStateMachines",
        list,
    )
    .await;
    assert_eq!(
        (status, kind.as_str()),
        (400, "UnrecognizedClientException")
    );
    let (_, kind, message) =
        call(&server, (&id, &secret), "lambda", "ListStateMachines", list).await;
    assert_eq!(kind, "InvalidSignatureException");
    assert!(message.contains("`lambda`"), "{message}");

    // Signed right: answered, and an operation Nimbus lacks is named.
    let (status, kind, _) =
        call(&server, (&id, &secret), "states", "ListStateMachines", list).await;
    assert_eq!((status, kind.as_str()), (200, ""));
    let (status, kind, message) =
        call(&server, (&id, &secret), "states", "ListActivities", list).await;
    assert_eq!((status, kind.as_str()), (400, "UnknownOperationException"));
    assert!(message.contains("ListActivities"), "{message}");
    let (_, kind, _) = call(
        &server,
        (&id, &secret),
        "states",
        "DescribeExecution",
        "[1]",
    )
    .await;
    assert_eq!(kind, "ValidationException");

    // A key of scope invoke runs flows (a token's answer gets as far as the token) but
    // does not change them.
    let made = server
        .cli(&[
            "-o", "json", "keys", "create", "app", "--aws", "--scope", "invoke",
        ])
        .await;
    assert_eq!(made.code, 0, "{}", made.stderr);
    let key: Value = serde_json::from_str(&made.stdout).unwrap();
    let invoke = (
        key["access_key_id"].as_str().unwrap(),
        key["secret_access_key"].as_str().unwrap(),
    );
    let (_, kind, message) = call(
        &server,
        invoke,
        "states",
        "CreateStateMachine",
        r#"{"name": "x", "definition": "{}", "roleArn": "r"}"#,
    )
    .await;
    assert_eq!(kind, "AccessDeniedException");
    assert!(message.contains("admin key"), "{message}");
    let (_, kind, _) = call(
        &server,
        invoke,
        "states",
        "SendTaskSuccess",
        r#"{"taskToken": "nonsense", "output": "{}"}"#,
    )
    .await;
    assert_eq!(kind, "InvalidToken");
}

#[tokio::test]
async fn a_users_route_on_the_root_still_answers_posts() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("data"));
    let dir = project(
        tmp.path(),
        "root",
        "functions:\n  root:\n    runtime: python3\n    handler: main.handler\n    triggers:\n      - http: {path: /, methods: [POST], auth: anonymous}\n",
        &[(
            "main.py",
            "def handler(event, context):\n    return {'statusCode': 200, 'body': 'root got ' + event.get('body', '')}\n",
        )],
    );
    server.deploy(&dir).await;
    // A plain POST, and one carrying another service's target, reach the route.
    for target in [None, Some("DynamoDB_20120810.GetItem")] {
        let mut req = server.http.post(server.url("/")).body("hello");
        if let Some(t) = target {
            req = req.header("x-amz-target", t);
        }
        let res = req.send().await.unwrap();
        assert_eq!(res.status(), 200, "{target:?}");
        assert_eq!(res.text().await.unwrap(), "root got hello", "{target:?}");
    }
    // Step Functions' target is the API's, not the route's, even with the route there.
    let res = server
        .http
        .post(server.url("/"))
        .header("x-amz-target", "AWSStepFunctions.ListStateMachines")
        .body("{}")
        .send()
        .await
        .unwrap();
    let (status, kind, _) = answer(res).await;
    assert_eq!(
        (status, kind.as_str()),
        (400, "MissingAuthenticationTokenException")
    );
}
