//! Bucket events end to end: uploads through boto3 reach exactly the functions whose
//! object rules take them, with S3's record; overlapping rules are refused at deploy; an
//! event committed before a SIGKILL is delivered after the restart; a function that writes
//! back into its own trigger's prefix (boto3 inside the function, with nothing configured)
//! is stopped at hop 16.

use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::harness::{Server, aws_env, project, test_python};

/// Each delivered bucket event of `function` (its payload), by trigger `object:NAME`.
async fn delivered(server: &Server, function: &str, trigger: &str) -> Vec<Value> {
    crate::harness::delivered(server, function, trigger)
        .await
        .into_iter()
        .map(|r| r["payload"].clone())
        .collect()
}

async fn wait_delivered(server: &Server, function: &str, trigger: &str, n: usize) -> Vec<Value> {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let d = delivered(server, function, trigger).await;
        if d.len() >= n || std::time::Instant::now() > deadline {
            return d;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Runs a boto3 script against the server's S3 API with the admin's credentials.
fn boto3(server: &Server, script: &str) {
    let mut cmd = Command::new(test_python());
    cmd.args(["-c", script]).env("S3", &server.s3_endpoint);
    aws_env(&mut cmd, &server.data_dir);
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

const CLIENT: &str = "import boto3, os\ns3 = boto3.client('s3', endpoint_url=os.environ['S3'], region_name='us-east-1')\n";

const ECHO: &str = "def handler(event, context):\n    return event\n";

#[tokio::test]
async fn uploads_reach_the_matching_rule_with_s3s_record_and_overlaps_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("data"));
    boto3(
        &server,
        &format!("{CLIENT}s3.create_bucket(Bucket='photos')\n"),
    );
    let dir = project(
        tmp.path(),
        "thumbs",
        "functions:\n  thumbs:\n    runtime: python3\n    handler: main.handler\n    triggers:\n      - object: {bucket: photos, prefix: in/, suffix: .jpg}\n  gone:\n    runtime: python3\n    handler: main.handler\n    triggers:\n      - object: {name: removed, bucket: photos, events: [\"s3:ObjectRemoved:*\"], format: cloudevent}\n",
        &[("main.py", ECHO)],
    );
    server.deploy(&dir).await;
    boto3(
        &server,
        &format!(
            "{CLIENT}s3.put_object(Bucket='photos', Key='in/my cat.jpg', Body=b'12345')\n\
             s3.put_object(Bucket='photos', Key='in/notes.txt', Body=b'x')\n\
             s3.put_object(Bucket='photos', Key='out/a.jpg', Body=b'x')\n\
             s3.copy_object(Bucket='photos', Key='in/copy.jpg', CopySource={{'Bucket': 'photos', 'Key': 'out/a.jpg'}})\n\
             s3.delete_object(Bucket='photos', Key='out/a.jpg')\n\
             s3.delete_object(Bucket='photos', Key='never-there')\n"
        ),
    );
    let events = wait_delivered(&server, "thumbs", "object:photos", 2).await;
    assert_eq!(events.len(), 2, "{events:?}");
    let put = events
        .iter()
        .map(|e| &e["Records"][0])
        .find(|r| r["eventName"] == "ObjectCreated:Put")
        .expect("the put's record");
    assert_eq!(put["eventVersion"], "2.1");
    assert_eq!(put["eventSource"], "aws:s3");
    assert_eq!(put["awsRegion"], "us-east-1");
    assert_eq!(put["s3"]["bucket"]["name"], "photos");
    assert_eq!(put["s3"]["bucket"]["arn"], "arn:aws:s3:::photos");
    assert_eq!(put["s3"]["object"]["key"], "in/my+cat.jpg");
    assert_eq!(put["s3"]["object"]["size"], 5);
    assert_eq!(
        put["s3"]["object"]["eTag"],
        "827ccb0eea8a706c4c34a16891f84e7b"
    );
    assert!(put["s3"]["object"]["sequencer"].as_str().unwrap().len() >= 16);
    assert!(put["eventTime"].as_str().unwrap().ends_with('Z'));
    assert!(
        events
            .iter()
            .any(|e| e["Records"][0]["eventName"] == "ObjectCreated:Copy"
                && e["Records"][0]["s3"]["object"]["key"] == "in/copy.jpg")
    );
    // The delete of an object that was there, as a CloudEvent; nothing for a key that was not.
    let removed = wait_delivered(&server, "gone", "object:removed", 1).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let removed_now = delivered(&server, "gone", "object:removed").await;
    assert_eq!(removed_now.len(), 1, "{removed_now:?}");
    assert_eq!(removed[0]["specversion"], "1.0");
    assert_eq!(removed[0]["type"], "com.amazonaws.s3.ObjectRemoved:Delete");
    assert_eq!(removed[0]["source"], "arn:aws:s3:::photos");
    assert_eq!(removed[0]["subject"], "out/a.jpg");
    assert_eq!(removed[0]["data"]["s3"]["object"]["key"], "out/a.jpg");
    // Nothing more reached `thumbs`: the text file, out/ and the deletes are not its.
    assert_eq!(delivered(&server, "thumbs", "object:photos").await.len(), 2);
    // A paused rule takes nothing while paused; resumed, it takes the next change.
    let run = server.cli(&["triggers", "pause", "gone", "removed"]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    boto3(
        &server,
        &format!("{CLIENT}s3.delete_object(Bucket='photos', Key='in/notes.txt')\n"),
    );
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert_eq!(delivered(&server, "gone", "object:removed").await.len(), 1);
    let run = server.cli(&["triggers", "resume", "gone", "removed"]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    boto3(
        &server,
        &format!("{CLIENT}s3.delete_object(Bucket='photos', Key='in/copy.jpg')\n"),
    );
    let removed = wait_delivered(&server, "gone", "object:removed", 2).await;
    assert_eq!(removed.len(), 2, "{removed:?}");
    assert!(removed.iter().any(|e| e["subject"] == "in/copy.jpg"));

    // A rule that one change could match along with another is refused, naming both.
    let overlapping = project(
        tmp.path(),
        "overlap",
        "functions:\n  other:\n    runtime: python3\n    handler: main.handler\n    triggers:\n      - object: {bucket: photos, prefix: in/raw/}\n",
        &[("main.py", ECHO)],
    );
    let run = server.cli(&["deploy", overlapping.to_str().unwrap()]).await;
    assert_ne!(run.code, 0);
    assert!(
        run.stderr.contains("overlaps") && run.stderr.contains("thumbs"),
        "{}",
        run.stderr
    );
    // A bad event name is refused naming the field.
    let bad = project(
        tmp.path(),
        "bad",
        "functions:\n  bad:\n    runtime: python3\n    handler: main.handler\n    triggers:\n      - object: {bucket: photos, events: [\"s3:ObjectCreated:Get\"]}\n",
        &[("main.py", ECHO)],
    );
    let run = server.cli(&["deploy", bad.to_str().unwrap()]).await;
    assert_ne!(run.code, 0);
    assert!(
        run.stderr.contains("triggers[0].object.events[0]"),
        "{}",
        run.stderr
    );
}

#[tokio::test]
async fn an_event_committed_before_a_sigkill_is_delivered_after_the_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    // One queued event per function at most: the second upload's event cannot be queued
    // and stays in the outbox, committed with its object.
    let server = Server::start_with(&data, &["--async-queue-per-function-max", "1"], &[]);
    boto3(
        &server,
        &format!("{CLIENT}s3.create_bucket(Bucket='inbox')\n"),
    );
    let dir = project(
        tmp.path(),
        "slow",
        "functions:\n  slow:\n    runtime: python3\n    handler: main.handler\n    timeout_ms: 60000\n    triggers:\n      - object: {bucket: inbox}\n",
        &[(
            "main.py",
            "import time\ndef handler(event, context):\n    time.sleep(3)\n    return event\n",
        )],
    );
    server.deploy(&dir).await;
    boto3(
        &server,
        &format!("{CLIENT}s3.put_object(Bucket='inbox', Key='first', Body=b'1')\n"),
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    boto3(
        &server,
        &format!("{CLIENT}s3.put_object(Bucket='inbox', Key='second', Body=b'2')\n"),
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.kill();
    let server = Server::start(&data);
    let events = wait_delivered(&server, "slow", "object:inbox", 2).await;
    let keys: Vec<&str> = events
        .iter()
        .map(|e| e["Records"][0]["s3"]["object"]["key"].as_str().unwrap())
        .collect();
    assert!(keys.contains(&"second"), "{keys:?}");
}

#[tokio::test]
async fn a_function_writing_into_its_own_trigger_is_stopped_at_hop_16() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("data"));
    boto3(
        &server,
        &format!("{CLIENT}s3.create_bucket(Bucket='echo')\n"),
    );
    // boto3 inside the function finds the store and its credentials in the environment.
    let looper = concat!(
        "import boto3\n",
        "s3 = boto3.client('s3')\n",
        "def handler(event, context):\n",
        "    key = event['Records'][0]['s3']['object']['key']\n",
        "    n = int(key.split('/')[1]) + 1\n",
        "    s3.put_object(Bucket='echo', Key='loop/%d' % n, Body=b'again')\n",
        "    return n\n",
    );
    let dir = project(
        tmp.path(),
        "looper",
        "functions:\n  looper:\n    runtime: python3\n    handler: main.handler\n    timeout_ms: 30000\n    triggers:\n      - object: {bucket: echo, prefix: loop/}\n",
        &[
            ("main.py", looper),
            ("requirements.txt", "boto3==1.44.18\n"),
        ],
    );
    server.deploy(&dir).await;
    boto3(
        &server,
        &format!("{CLIENT}s3.put_object(Bucket='echo', Key='loop/0', Body=b'go')\n"),
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let stopped = loop {
        let events = server.get_json("/v1/events?function=looper").await;
        let found = events["events"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|e| e["event"] == "loop_stopped")
            .cloned();
        if found.is_some() || std::time::Instant::now() > deadline {
            break found;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    let stopped = stopped.expect("a loop_stopped event");
    assert!(
        stopped["reason"].as_str().unwrap().contains("bucket echo"),
        "{stopped}"
    );
    // Hops 1..=16 ran, writing loop/1..loop/16; the event of loop/16 was not delivered.
    let runs = delivered(&server, "looper", "object:echo").await;
    assert_eq!(runs.len(), 16, "{}", runs.len());
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(delivered(&server, "looper", "object:echo").await.len(), 16);
    let metrics = server
        .req(reqwest::Method::GET, "/metrics")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("nimbus_recursive_loops_stopped_total{function=\"looper\"} 1"),
        "{metrics}"
    );
}

/// The thumbnail example (`examples/thumbnail`), as its README tour runs it: an upload
/// under `uploads/` comes back as a 128 px thumbnail and a watermarked copy.
#[tokio::test]
async fn the_thumbnail_example_makes_a_thumbnail_of_an_upload() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("data"));
    server
        .deploy(&crate::harness::examples().join("thumbnail"))
        .await;
    let photo = crate::harness::examples().join("thumbnail/photo.jpg");
    boto3(
        &server,
        &format!(
            "{CLIENT}s3.create_bucket(Bucket='photos')\n\
             s3.upload_file({photo:?}, 'photos', 'uploads/photo.jpg')\n\
             wait = {{'Delay': 1, 'MaxAttempts': 90}}\n\
             s3.get_waiter('object_exists').wait(Bucket='photos', Key='thumbnails/photo.jpg', WaiterConfig=wait)\n\
             s3.get_waiter('object_exists').wait(Bucket='photos', Key='watermarked/photo.jpg', WaiterConfig=wait)\n\
             thumb = s3.get_object(Bucket='photos', Key='thumbnails/photo.jpg')\n\
             assert thumb['ContentType'] == 'image/jpeg', thumb['ContentType']\n\
             data = thumb['Body'].read()\n\
             # The frame header (SOF0) holds the size: no imaging library needed to read it.\n\
             at = data.index(b'\\xff\\xc0')\n\
             height, width = int.from_bytes(data[at+5:at+7], 'big'), int.from_bytes(data[at+7:at+9], 'big')\n\
             assert (width, height) == (128, 96), (width, height)\n\
             keys = sorted(o['Key'] for o in s3.list_objects_v2(Bucket='photos')['Contents'])\n\
             assert keys == ['thumbnails/photo.jpg', 'uploads/photo.jpg', 'watermarked/photo.jpg'], keys\n"
        ),
    );
    // One call: the function's own writes are outside its trigger's prefix.
    assert_eq!(
        delivered(&server, "thumbnail", "object:photos").await.len(),
        1
    );
}

/// The AWS way: `PutBucketNotificationConfiguration` naming a function's ARN, read back
/// by `GetBucketNotificationConfiguration`; an overlap with a declared rule and an unknown
/// function are refused with S3's InvalidArgument.
#[tokio::test]
async fn a_notification_configuration_set_through_boto3_delivers_too() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("data"));
    let dir = project(
        tmp.path(),
        "sinks",
        "functions:\n  sink:\n    runtime: python3\n    handler: main.handler\n  declared:\n    runtime: python3\n    handler: main.handler\n    triggers:\n      - object: {bucket: docs, prefix: yaml/}\n",
        &[("main.py", ECHO)],
    );
    server.deploy(&dir).await;
    boto3(
        &server,
        &format!(
            "{CLIENT}import botocore\n\
             s3.create_bucket(Bucket='docs')\n\
             arn = 'arn:aws:lambda:us-east-1:000000000000:function:sink'\n\
             rule = lambda prefix, fn=arn: {{'Id': 'aws-way', 'LambdaFunctionArn': fn, 'Events': ['s3:ObjectCreated:*'], 'Filter': {{'Key': {{'FilterRules': [{{'Name': 'prefix', 'Value': prefix}}]}}}}}}\n\
             def refused(config, why):\n\
             \x20   try:\n\
             \x20       s3.put_bucket_notification_configuration(Bucket='docs', NotificationConfiguration=config)\n\
             \x20   except botocore.exceptions.ClientError as e:\n\
             \x20       assert e.response['Error']['Code'] == 'InvalidArgument', e.response\n\
             \x20       assert why in e.response['Error']['Message'], e.response\n\
             \x20   else:\n\
             \x20       raise AssertionError('accepted: %r' % config)\n\
             refused({{'LambdaFunctionConfigurations': [rule('yaml/deep/')]}}, 'overlap')\n\
             refused({{'LambdaFunctionConfigurations': [rule('x/', arn.replace('sink', 'nope'))]}}, 'nope')\n\
             s3.put_bucket_notification_configuration(Bucket='docs', NotificationConfiguration={{'LambdaFunctionConfigurations': [rule('in/')]}})\n\
             got = s3.get_bucket_notification_configuration(Bucket='docs')['LambdaFunctionConfigurations']\n\
             assert got[0]['Id'] == 'aws-way' and got[0]['LambdaFunctionArn'] == arn, got\n\
             assert got[0]['Filter']['Key']['FilterRules'][0]['Value'] == 'in/', got\n\
             s3.put_object(Bucket='docs', Key='in/report.pdf', Body=b'%PDF')\n\
             s3.put_object(Bucket='docs', Key='yaml/a', Body=b'a')\n"
        ),
    );
    let events = wait_delivered(&server, "sink", "object:aws-way", 1).await;
    assert_eq!(
        events[0]["Records"][0]["s3"]["object"]["key"], "in/report.pdf",
        "{events:?}"
    );
    assert_eq!(events[0]["Records"][0]["s3"]["configurationId"], "aws-way");
    assert_eq!(
        wait_delivered(&server, "declared", "object:docs", 1)
            .await
            .len(),
        1
    );
    // The configuration survives a restart (it is the bucket's, in the store).
    let data = server.data_dir.clone();
    server.stop();
    let server = Server::start(&data);
    boto3(
        &server,
        &format!("{CLIENT}s3.put_object(Bucket='docs', Key='in/second.pdf', Body=b'%PDF')\n"),
    );
    assert_eq!(
        wait_delivered(&server, "sink", "object:aws-way", 2)
            .await
            .len(),
        2
    );
}
