"""Resize one object: the Map state calls this once per object, up to ten at a time.

Pretend work: a real one would read `bucket`/`key` through the S3 API (boto3 with the
endpoint Nimbus sets, as examples/thumbnail does) and write a resized copy.
"""


def handler(event, context):
    key = event["key"]
    print(f"resizing s3://{event['bucket']}/{key}")
    return {"key": key, "size": len(key.encode())}
