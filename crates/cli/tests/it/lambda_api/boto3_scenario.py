"""The Lambda API as boto3 sees it: a whole life cycle against a real Nimbus server.

Run by `it::lambda_api`: argv[1] is the endpoint; the admin's credentials come from
AWS_SHARED_CREDENTIALS_FILE (the server's aws.credentials); INVOKE_KEY_ID/INVOKE_SECRET are
an access key of scope `invoke`. Prints one JSON object of what the Rust side checks
further (request ids); any failed expectation raises.
"""
import base64, hashlib, io, json, sys, zipfile

import boto3
import botocore.exceptions
from botocore.config import Config

endpoint = sys.argv[1]
# One attempt: a throttle or a fault must show, not be retried away.
config = Config(retries={"total_max_attempts": 1})
lam = boto3.client("lambda", endpoint_url=endpoint, region_name="us-east-1", config=config)


def zipped(source):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("app.py", source)
    return buf.getvalue()


APP = '''
def handler(event, context):
    print("hello from logs")
    cc = context.client_context
    return {"echo": event, "fn": context.function_name, "version": "%s",
            "arn": context.invoked_function_arn,
            "custom": cc.custom if cc else None}

def fail(event, context):
    raise ValueError("bad input")
'''

runtime = "python3.%d" % sys.version_info[1]
code = zipped(APP % "v1")
f = lam.create_function(
    FunctionName="lapi", Runtime=runtime, Role="arn:aws:iam::000000000000:role/any",
    Handler="app.handler", Code={"ZipFile": code}, Timeout=10, MemorySize=256,
    Environment={"Variables": {"GREETING": "hi"}}, Description="made by boto3",
)
assert f["FunctionName"] == "lapi", f
assert f["FunctionArn"] == "arn:aws:lambda:us-east-1:000000000000:function:lapi", f
assert f["State"] == "Active" and f["Version"] == "$LATEST", f
assert f["Runtime"] == runtime and f["Timeout"] == 10 and f["MemorySize"] == 256, f
assert f["CodeSha256"] == base64.b64encode(hashlib.sha256(code).digest()).decode(), f
assert f["CodeSize"] == len(code), f
lam.get_waiter("function_active_v2").wait(FunctionName="lapi")

try:
    lam.create_function(FunctionName="lapi", Runtime=runtime, Role="r",
                        Handler="app.handler", Code={"ZipFile": code})
    raise AssertionError("a second create succeeded")
except lam.exceptions.ResourceConflictException:
    pass

# Synchronous, with the function's value as the payload.
r = lam.invoke(FunctionName="lapi", Payload=json.dumps({"a": 1}))
assert r["StatusCode"] == 200 and "FunctionError" not in r, r
assert r["ExecutedVersion"] == "$LATEST", r
body = json.loads(r["Payload"].read())
assert body["echo"] == {"a": 1} and body["fn"] == "lapi", body
assert body["arn"] == "arn:aws:lambda:us-east-1:000000000000:function:lapi", body

# The log's tail, and the client context on the handler's context.
cc = base64.b64encode(json.dumps({"custom": {"user": "u1"}}).encode()).decode()
r = lam.invoke(FunctionName="lapi", LogType="Tail", ClientContext=cc, Payload=b"{}")
log = base64.b64decode(r["LogResult"]).decode()
assert "START RequestId: " in log and "hello from logs" in log and "REPORT RequestId" in log, log
assert json.loads(r["Payload"].read())["custom"] == {"user": "u1"}

# Asynchronous: 202, then the queue runs it.
r = lam.invoke(FunctionName="lapi", InvocationType="Event", Payload=b'{"async": true}')
assert r["StatusCode"] == 202, r
async_id = r["ResponseMetadata"]["RequestId"]
r = lam.invoke(FunctionName="lapi", InvocationType="DryRun")
assert r["StatusCode"] == 204, r

# A failure is the function's: 200 with FunctionError and Lambda's error document.
lam.update_function_configuration(FunctionName="lapi", Handler="app.fail")
r = lam.invoke(FunctionName="lapi", Payload=b"{}")
assert r["StatusCode"] == 200 and r["FunctionError"] == "Unhandled", r
err = json.loads(r["Payload"].read())
assert err["errorType"] == "ValueError" and err["errorMessage"] == "bad input", err
c = lam.update_function_configuration(FunctionName="lapi", Handler="app.handler", Timeout=5)
assert c["Timeout"] == 5 and c["Environment"]["Variables"] == {"GREETING": "hi"}, c
assert lam.get_function_configuration(FunctionName="lapi")["Handler"] == "app.handler"

# Versions and an alias with weights.
v1 = lam.publish_version(FunctionName="lapi", Description="first")
assert v1["Version"] == "1" and v1["FunctionArn"].endswith(":lapi:1"), v1
lam.update_function_code(FunctionName="lapi", ZipFile=zipped(APP % "v2"))
v2 = lam.publish_version(FunctionName="lapi")
assert v2["Version"] == "2", v2
versions = [v["Version"] for v in lam.list_versions_by_function(FunctionName="lapi")["Versions"]]
assert versions == ["$LATEST", "1", "2"], versions
a = lam.create_alias(FunctionName="lapi", Name="live", FunctionVersion="1",
                     RoutingConfig={"AdditionalVersionWeights": {"2": 0.5}})
assert a["AliasArn"].endswith(":lapi:live") and a["FunctionVersion"] == "1", a
assert a["RoutingConfig"]["AdditionalVersionWeights"] == {"2": 0.5}, a
seen = set()
for _ in range(40):
    r = lam.invoke(FunctionName="lapi", Qualifier="live", Payload=b"{}")
    seen.add((r["ExecutedVersion"], json.loads(r["Payload"].read())["version"]))
assert seen == {("1", "v1"), ("2", "v2")}, seen
r = lam.invoke(FunctionName="lapi:live", Payload=b"{}")
assert json.loads(r["Payload"].read())["arn"].endswith(":function:lapi:live")
lam.update_alias(FunctionName="lapi", Name="live", FunctionVersion="2", RoutingConfig={})
a = lam.get_alias(FunctionName="lapi", Name="live")
assert a["FunctionVersion"] == "2" and "RoutingConfig" not in a, a
assert [x["Name"] for x in lam.list_aliases(FunctionName="lapi")["Aliases"]] == ["live"]

# Concurrency and the asynchronous settings.
lam.put_function_concurrency(FunctionName="lapi", ReservedConcurrentExecutions=5)
assert lam.get_function(FunctionName="lapi")["Concurrency"]["ReservedConcurrentExecutions"] == 5
p = lam.put_provisioned_concurrency_config(FunctionName="lapi", Qualifier="live",
                                           ProvisionedConcurrentExecutions=1)
assert p["RequestedProvisionedConcurrentExecutions"] == 1, p
lam.delete_provisioned_concurrency_config(FunctionName="lapi", Qualifier="live")
lam.put_function_event_invoke_config(
    FunctionName="lapi", MaximumRetryAttempts=0, MaximumEventAgeInSeconds=120,
    DestinationConfig={"OnFailure": {
        "Destination": "arn:aws:lambda:us-east-1:000000000000:function:lapi:live"}})
e = lam.get_function_event_invoke_config(FunctionName="lapi")
assert e["MaximumRetryAttempts"] == 0 and e["MaximumEventAgeInSeconds"] == 120, e
assert e["DestinationConfig"]["OnFailure"]["Destination"].endswith(":function:lapi:live"), e
try:
    lam.put_function_event_invoke_config(FunctionName="lapi", DestinationConfig={
        "OnFailure": {"Destination": "arn:aws:sqs:us-east-1:000000000000:q"}})
    raise AssertionError("an SQS destination was accepted")
except lam.exceptions.InvalidParameterValueException as e:
    assert "function ARNs" in str(e), e

# Errors come back as the SDK's exception classes.
try:
    lam.get_function(FunctionName="missing")
    raise AssertionError("a missing function was found")
except lam.exceptions.ResourceNotFoundException:
    pass
try:
    lam.invoke(FunctionName="lapi", Qualifier="nosuch", Payload=b"{}")
    raise AssertionError("a missing alias was invoked")
except lam.exceptions.ResourceNotFoundException:
    pass
try:
    lam.create_function(FunctionName="img", PackageType="Image", Role="r",
                        Code={"ImageUri": "x"})
    raise AssertionError("an image was accepted")
except lam.exceptions.InvalidParameterValueException:
    pass

names = [x["FunctionName"] for x in lam.list_functions()["Functions"]]
assert "lapi" in names, names

# Keys: a wrong secret, an unknown key, and a key that may only invoke.
def client(key_id, secret):
    return boto3.client("lambda", endpoint_url=endpoint, region_name="us-east-1",
                        aws_access_key_id=key_id, aws_secret_access_key=secret, config=config)

creds = boto3.Session().get_credentials()
for key_id, secret, code in [(creds.access_key, "wrong" * 8, "InvalidSignatureException"),
                             ("AKIANOTNIMBUS0000000", "x" * 40, "UnrecognizedClientException")]:
    try:
        client(key_id, secret).list_functions()
        raise AssertionError("a bad signature was accepted")
    except botocore.exceptions.ClientError as e:
        assert e.response["Error"]["Code"] == code, e.response
        assert e.response["ResponseMetadata"]["HTTPStatusCode"] == 403
import os
invoker = client(os.environ["INVOKE_KEY_ID"], os.environ["INVOKE_SECRET"])
assert invoker.invoke(FunctionName="lapi", Payload=b"{}")["StatusCode"] == 200
try:
    invoker.delete_function(FunctionName="lapi")
    raise AssertionError("an invoke key deleted a function")
except botocore.exceptions.ClientError as e:
    assert e.response["Error"]["Code"] == "AccessDeniedException", e.response

# A Node ES module from a zip, with Lambda's runtime id, and the client context in Node.
import subprocess, threading
major = subprocess.run(["node", "--version"], capture_output=True, text=True).stdout.strip()[1:].split(".")[0]
buf = io.BytesIO()
with zipfile.ZipFile(buf, "w") as z:
    z.writestr("index.mjs", "export const handler = async (event, context) => "
               "({ custom: context.clientContext.custom, fn: context.functionName });\n")
lam.create_function(FunctionName="lnode", Runtime="nodejs%s.x" % major, Role="r",
                    Handler="index.handler", Code={"ZipFile": buf.getvalue()})
r = lam.invoke(FunctionName="lnode", ClientContext=cc, Payload=b"{}")
assert json.loads(r["Payload"].read()) == {"custom": {"user": "u1"}, "fn": "lnode"}

# Throttling is the SDK's TooManyRequestsException: one instance, busy for 2 s, and a
# second call that waits past the function's queue timeout.
slow = zipped("import time\ndef handler(event, context):\n    time.sleep(2)\n    return 1\n")
lam.create_function(FunctionName="lslow", Runtime=runtime, Role="r", Handler="app.handler",
                    Code={"ZipFile": slow}, Timeout=10)
lam.put_function_concurrency(FunctionName="lslow", ReservedConcurrentExecutions=1)
lam.invoke(FunctionName="lslow", Payload=b"{}")  # warm, so the next call is not a start
first = threading.Thread(target=lambda: lam.invoke(FunctionName="lslow", Payload=b"{}"))
first.start()
import time
time.sleep(0.3)
try:
    lam.invoke(FunctionName="lslow", Payload=b"{}")
    raise AssertionError("a call past the reserved concurrency was not throttled")
except lam.exceptions.TooManyRequestsException:
    pass
first.join()

lam.delete_alias(FunctionName="lapi", Name="live")
lam.delete_function(FunctionName="lapi", Qualifier="1")
assert [v["Version"] for v in lam.list_versions_by_function(FunctionName="lapi")["Versions"]] == ["$LATEST", "2"]
print(json.dumps({"async_id": async_id}))
