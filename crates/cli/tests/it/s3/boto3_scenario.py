"""The S3 API with boto3 as it comes (its default checksums, its multipart thresholds):
buckets, objects, metadata, conditions, ranges, listings over 2,500 keys, copies,
DeleteObjects, multipart uploads and their failures, presigned URLs, bad signatures.
Usage: boto3_scenario.py S3_ENDPOINT WORK_DIR; credentials from the environment. Prints
one JSON line of what it saw at the end."""

import concurrent.futures
import hashlib
import json
import os
import sys
import time
import urllib.error
import urllib.request

import boto3
import botocore
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import ClientError

endpoint, work = sys.argv[1], sys.argv[2]
s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                  config=Config(retries={"max_attempts": 1}))


def code(fn, *args, **kwargs):
    try:
        fn(*args, **kwargs)
    except ClientError as e:
        print(f"{fn.__name__}: {e}", file=sys.stderr)
        return e.response["Error"]["Code"], e.response["ResponseMetadata"]["HTTPStatusCode"]
    raise AssertionError(f"{fn.__name__} succeeded; an error was expected")


seen = {}

# Buckets.
s3.create_bucket(Bucket="photos")
assert code(s3.create_bucket, Bucket="photos")[0] == "BucketAlreadyOwnedByYou"
assert code(s3.create_bucket, Bucket="Bad_Name")[0] == "InvalidBucketName"
assert [b["Name"] for b in s3.list_buckets()["Buckets"]] == ["photos"]
s3.head_bucket(Bucket="photos")
assert code(s3.head_bucket, Bucket="nope")[1] == 404
assert s3.get_bucket_location(Bucket="photos").get("LocationConstraint") in (None, "")

# Objects: put with headers and metadata, get, head, conditions, ranges.
put = s3.put_object(Bucket="photos", Key="a/cat.txt", Body=b"meow" * 1000,
                    ContentType="text/plain", ContentEncoding="identity",
                    ContentDisposition="inline", CacheControl="max-age=60",
                    Metadata={"Owner": "ana", "x": "1"})
etag = put["ETag"]
assert etag == '"%s"' % hashlib.md5(b"meow" * 1000).hexdigest(), etag
got = s3.get_object(Bucket="photos", Key="a/cat.txt", ChecksumMode="ENABLED")
assert got["Body"].read() == b"meow" * 1000
assert got["ContentType"] == "text/plain"
assert got["ContentEncoding"] == "identity"
assert got["ContentDisposition"] == "inline"
assert got["CacheControl"] == "max-age=60"
assert got["Metadata"] == {"owner": "ana", "x": "1"}, got["Metadata"]
seen["checksum_crc32"] = got.get("ChecksumCRC32")
head = s3.head_object(Bucket="photos", Key="a/cat.txt")
assert head["ContentLength"] == 4000 and head["ETag"] == etag
assert code(s3.get_object, Bucket="photos", Key="missing") == ("NoSuchKey", 404)
assert code(s3.get_object, Bucket="nope", Key="x") == ("NoSuchBucket", 404)
assert code(s3.put_object, Bucket="nope", Key="x", Body=b"1")[0] == "NoSuchBucket"
ranged = s3.get_object(Bucket="photos", Key="a/cat.txt", Range="bytes=4-7")
assert ranged["Body"].read() == b"meow" and ranged["ContentRange"] == "bytes 4-7/4000"
assert s3.get_object(Bucket="photos", Key="a/cat.txt", Range="bytes=-3")["Body"].read() == b"eow"
assert code(s3.get_object, Bucket="photos", Key="a/cat.txt", Range="bytes=5000-6000") == ("InvalidRange", 416)
assert code(s3.get_object, Bucket="photos", Key="a/cat.txt", IfNoneMatch=etag)[1] == 304
assert code(s3.get_object, Bucket="photos", Key="a/cat.txt", IfMatch='"nope"') == ("PreconditionFailed", 412)
assert s3.get_object(Bucket="photos", Key="a/cat.txt", IfMatch=etag)["Body"].read()
future = head["LastModified"].replace(year=head["LastModified"].year + 1)
past = head["LastModified"].replace(year=2000)
assert code(s3.get_object, Bucket="photos", Key="a/cat.txt", IfModifiedSince=future)[1] == 304
assert code(s3.get_object, Bucket="photos", Key="a/cat.txt", IfUnmodifiedSince=past)[1] == 412
assert s3.get_object(Bucket="photos", Key="a/cat.txt", IfModifiedSince=past)["Body"].read()
assert code(s3.put_object, Bucket="photos", Key="k" * 1025, Body=b"1")[0] == "KeyTooLongError"
assert code(s3.put_object, Bucket="photos", Key="a/cat.txt", Body=b"x", IfNoneMatch="*")[0] == "PreconditionFailed"
# A wrong checksum is refused, and the object stays as it was.
assert code(s3.put_object, Bucket="photos", Key="a/cat.txt", Body=b"changed",
            ChecksumSHA256="n4bQgYhMfWWaL+qgxVrQFaO/TxsrC4Is0V1sFbDwCgg=")[0] == "BadDigest"
assert s3.head_object(Bucket="photos", Key="a/cat.txt")["ETag"] == etag
# Unsigned payloads (as presigned and some SDKs send).
unsigned = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                        config=Config(s3={"payload_signing_enabled": False},
                                      request_checksum_calculation="when_required"))
unsigned.put_object(Bucket="photos", Key="unsigned", Body=b"u" * 100)
assert s3.get_object(Bucket="photos", Key="unsigned")["Body"].read() == b"u" * 100

# Copy, with metadata copied or replaced.
s3.copy_object(Bucket="photos", Key="b/copy.txt", CopySource={"Bucket": "photos", "Key": "a/cat.txt"})
copied = s3.head_object(Bucket="photos", Key="b/copy.txt")
assert copied["Metadata"] == {"owner": "ana", "x": "1"} and copied["ETag"] == etag
s3.copy_object(Bucket="photos", Key="b/copy.txt", CopySource="photos/b/copy.txt",
               MetadataDirective="REPLACE", Metadata={"new": "yes"}, ContentType="text/x-cat")
replaced = s3.get_object(Bucket="photos", Key="b/copy.txt")
assert replaced["Metadata"] == {"new": "yes"} and replaced["ContentType"] == "text/x-cat"
assert replaced["Body"].read() == b"meow" * 1000
assert code(s3.copy_object, Bucket="photos", Key="b/copy.txt", CopySource="photos/b/copy.txt")[0] == "InvalidRequest"
assert code(s3.copy_object, Bucket="photos", Key="c", CopySource="photos/missing")[0] == "NoSuchKey"

# Listing 2,500 keys: pages, delimiters, start-after, url encoding.
def put_one(i):
    s3.put_object(Bucket="photos", Key=f"many/{i // 100:02d}/{i:04d}", Body=b"x")
with concurrent.futures.ThreadPoolExecutor(16) as pool:
    list(pool.map(put_one, range(2500)))
pages = list(s3.get_paginator("list_objects_v2").paginate(Bucket="photos", Prefix="many/",
                                                          PaginationConfig={"PageSize": 1000}))
assert len(pages) == 3, len(pages)
keys = [o["Key"] for p in pages for o in p.get("Contents", [])]
assert keys == sorted(keys) and len(keys) == 2500 and keys[0] == "many/00/0000"
v1 = [o["Key"] for p in s3.get_paginator("list_objects").paginate(Bucket="photos", Prefix="many/",
                                                                  PaginationConfig={"PageSize": 700})
      for o in p.get("Contents", [])]
assert v1 == keys
dirs = s3.list_objects_v2(Bucket="photos", Prefix="many/", Delimiter="/")
assert [p["Prefix"] for p in dirs["CommonPrefixes"]] == [f"many/{i:02d}/" for i in range(25)]
assert "Contents" not in dirs
small = s3.list_objects_v2(Bucket="photos", Prefix="many/", Delimiter="/", MaxKeys=10)
assert small["IsTruncated"] and small["KeyCount"] == 10
rest = s3.list_objects_v2(Bucket="photos", Prefix="many/", Delimiter="/",
                          ContinuationToken=small["NextContinuationToken"])
assert len(rest["CommonPrefixes"]) == 15 and not rest["IsTruncated"]
after = s3.list_objects_v2(Bucket="photos", Prefix="many/", StartAfter="many/24/2497")
assert [o["Key"] for o in after["Contents"]] == ["many/24/2498", "many/24/2499"]
s3.put_object(Bucket="photos", Key="odd/a b+c&ü.txt", Body=b"1")
odd = s3.list_objects_v2(Bucket="photos", Prefix="odd/")  # boto3 asks for url encoding
assert [o["Key"] for o in odd["Contents"]] == ["odd/a b+c&ü.txt"], odd["Contents"]
top = s3.list_objects(Bucket="photos", Delimiter="/")
assert [p["Prefix"] for p in top["CommonPrefixes"]] == ["a/", "b/", "many/", "odd/"]

# DeleteObjects, some of them missing (S3 answers them deleted too).
gone = s3.delete_objects(Bucket="photos", Delete={"Objects": [{"Key": f"many/00/{i:04d}"} for i in range(100)]
                                                   + [{"Key": "never-there"}]})
assert len(gone["Deleted"]) == 101 and not gone.get("Errors")
assert s3.list_objects_v2(Bucket="photos", Prefix="many/00/")["KeyCount"] == 0
s3.delete_object(Bucket="photos", Key="unsigned")
s3.delete_object(Bucket="photos", Key="unsigned")  # twice: no error, as S3

# Multipart: upload_file of 20 MB (8 MB parts), download_file in ranges.
big = os.path.join(work, "big.bin")
with open(big, "wb") as f:
    f.write(os.urandom(20 * 1024 * 1024))
config = TransferConfig(multipart_threshold=8 * 1024 * 1024, multipart_chunksize=8 * 1024 * 1024,
                        max_concurrency=4)
s3.upload_file(big, "photos", "big.bin", Config=config)
big_head = s3.head_object(Bucket="photos", Key="big.bin")
assert big_head["ContentLength"] == 20 * 1024 * 1024
assert big_head["ETag"].endswith('-3"'), big_head["ETag"]
back = os.path.join(work, "back.bin")
s3.download_file("photos", "big.bin", back, Config=config)
assert open(back, "rb").read() == open(big, "rb").read()

# Multipart by hand: the failures, list parts and uploads, copy a part, abort.
up = s3.create_multipart_upload(Bucket="photos", Key="parts")["UploadId"]
five = b"p" * (5 * 1024 * 1024)
e1 = s3.upload_part(Bucket="photos", Key="parts", UploadId=up, PartNumber=1, Body=b"small")["ETag"]
e2 = s3.upload_part(Bucket="photos", Key="parts", UploadId=up, PartNumber=2, Body=b"tail")["ETag"]
assert code(s3.upload_part, Bucket="photos", Key="parts", UploadId=up, PartNumber=0, Body=b"x")[0] == "InvalidArgument"
assert code(s3.upload_part, Bucket="photos", Key="parts", UploadId="0" * 32, PartNumber=1, Body=b"x")[0] == "NoSuchUpload"
assert code(s3.complete_multipart_upload, Bucket="photos", Key="parts", UploadId=up,
            MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": e1}, {"PartNumber": 2, "ETag": e2}]})[0] == "EntityTooSmall"
assert code(s3.complete_multipart_upload, Bucket="photos", Key="parts", UploadId=up,
            MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": e1}, {"PartNumber": 3, "ETag": e2}]})[0] == "InvalidPart"
assert code(s3.complete_multipart_upload, Bucket="photos", Key="parts", UploadId=up,
            MultipartUpload={"Parts": [{"PartNumber": 2, "ETag": e2}, {"PartNumber": 1, "ETag": e1}]})[0] == "InvalidPartOrder"
e1 = s3.upload_part(Bucket="photos", Key="parts", UploadId=up, PartNumber=1, Body=five)["ETag"]
s3.put_object(Bucket="photos", Key="src", Body=b"0123456789")
e3 = s3.upload_part_copy(Bucket="photos", Key="parts", UploadId=up, PartNumber=3,
                         CopySource="photos/src", CopySourceRange="bytes=2-5")["CopyPartResult"]["ETag"]
listed = s3.list_parts(Bucket="photos", Key="parts", UploadId=up)
assert [p["PartNumber"] for p in listed["Parts"]] == [1, 2, 3]
assert [u["UploadId"] for u in s3.list_multipart_uploads(Bucket="photos")["Uploads"]] == [up]
assert code(s3.get_object, Bucket="photos", Key="parts")[0] == "NoSuchKey"  # nothing visible yet
done = s3.complete_multipart_upload(Bucket="photos", Key="parts", UploadId=up,
                                    MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": e1},
                                                               {"PartNumber": 3, "ETag": e3}]})
assert s3.get_object(Bucket="photos", Key="parts")["Body"].read() == five + b"2345"
assert code(s3.list_parts, Bucket="photos", Key="parts", UploadId=up)[0] == "NoSuchUpload"
up2 = s3.create_multipart_upload(Bucket="photos", Key="dropped")["UploadId"]
s3.upload_part(Bucket="photos", Key="dropped", UploadId=up2, PartNumber=1, Body=b"x")
s3.abort_multipart_upload(Bucket="photos", Key="dropped", UploadId=up2)
assert "Uploads" not in s3.list_multipart_uploads(Bucket="photos")

# Presigned GET and PUT (SigV4, and boto3's default SigV2 for a GET); an expired one is
# refused.
v2_url = s3.generate_presigned_url("get_object", Params={"Bucket": "photos", "Key": "a/cat.txt"}, ExpiresIn=60)
assert urllib.request.urlopen(v2_url).read() == b"meow" * 1000
s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                  config=Config(signature_version="s3v4", retries={"max_attempts": 1}))
url = s3.generate_presigned_url("get_object", Params={"Bucket": "photos", "Key": "a/cat.txt"}, ExpiresIn=60)
assert urllib.request.urlopen(url).read() == b"meow" * 1000
put_url = s3.generate_presigned_url("put_object", Params={"Bucket": "photos", "Key": "presigned"}, ExpiresIn=60)
urllib.request.urlopen(urllib.request.Request(put_url, data=b"via url", method="PUT")).read()
assert s3.get_object(Bucket="photos", Key="presigned")["Body"].read() == b"via url"
expired = s3.generate_presigned_url("get_object", Params={"Bucket": "photos", "Key": "a/cat.txt"}, ExpiresIn=1)
time.sleep(2)
try:
    urllib.request.urlopen(expired)
    raise AssertionError("an expired URL was accepted")
except urllib.error.HTTPError as e:
    assert e.code == 403, e.code
    seen["expired"] = e.read().decode()

# A wrong signature, an unknown key and no signature at all are refused.
creds = boto3.session.Session().get_credentials()
wrong = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                     aws_access_key_id=creds.access_key, aws_secret_access_key="wrong" + creds.secret_key)
assert code(wrong.list_buckets) == ("SignatureDoesNotMatch", 403)
unknown = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                       aws_access_key_id="NKIAUNKNOWN", aws_secret_access_key="x")
assert code(unknown.list_buckets)[0] == "InvalidAccessKeyId"
anonymous = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                         config=Config(signature_version=botocore.UNSIGNED))
assert code(anonymous.get_object, Bucket="photos", Key="a/cat.txt") == ("AccessDenied", 403)
if os.environ.get("INVOKE_KEY_ID"):
    invoke = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                          aws_access_key_id=os.environ["INVOKE_KEY_ID"],
                          aws_secret_access_key=os.environ["INVOKE_SECRET"])
    assert code(invoke.list_buckets) == ("AccessDenied", 403)

# A bucket with objects cannot go; emptied, it can.
assert code(s3.delete_bucket, Bucket="photos") == ("BucketNotEmpty", 409)
s3.create_bucket(Bucket="empty-one")
s3.delete_bucket(Bucket="empty-one")
assert code(s3.delete_bucket, Bucket="empty-one")[0] == "NoSuchBucket"

print(json.dumps(seen))
