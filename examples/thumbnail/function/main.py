"""An S3 upload handler as it would run on Lambda: boto3 finds the object store and its
credentials in the environment Nimbus gives every function."""
import io
from urllib.parse import unquote_plus

import boto3
from PIL import Image, ImageDraw

s3 = boto3.client("s3")

THUMBNAIL_PX = 128


def handler(event, context):
    made = []
    for record in event["Records"]:
        bucket = record["s3"]["bucket"]["name"]
        # Keys in S3 records are form-encoded (a space is "+").
        key = unquote_plus(record["s3"]["object"]["key"])
        name = key.split("/", 1)[1]
        original = Image.open(io.BytesIO(s3.get_object(Bucket=bucket, Key=key)["Body"].read()))
        original = original.convert("RGB")

        thumb = original.copy()
        thumb.thumbnail((THUMBNAIL_PX, THUMBNAIL_PX))
        made.append(put(bucket, "thumbnails/" + name, thumb))

        marked = original.copy()
        draw = ImageDraw.Draw(marked)
        draw.text((10, marked.height - 20), "nimbus", fill=(255, 255, 255))
        made.append(put(bucket, "watermarked/" + name, marked))
    return {"made": made}


def put(bucket, key, image):
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=85)
    s3.put_object(Bucket=bucket, Key=key, Body=out.getvalue(), ContentType="image/jpeg")
    return key
