"""An API Gateway (HTTP API, payload 2.0) Lambda handler; it runs unchanged on Nimbus."""

import json

ITEMS = {"42": {"id": "42", "name": "teapot"}}


def handler(event, context):
    method = event["requestContext"]["http"]["method"]
    params = event.get("pathParameters") or {}
    if "id" in params:
        item = ITEMS.get(params["id"])
        if item is None:
            return {"statusCode": 404, "body": json.dumps({"message": "no such item"})}
        return item
    if "proxy" in params:
        return {
            "statusCode": 200,
            "headers": {"content-type": "text/plain"},
            "body": "static file " + params["proxy"],
        }
    if method == "POST":
        item = json.loads(event.get("body") or "{}")
        item["id"] = str(len(ITEMS) + 40)
        ITEMS[item["id"]] = item
        return {
            "statusCode": 201,
            "headers": {"location": "/catalog/" + item["id"]},
            "cookies": ["last_created=" + item["id"] + "; Path=/"],
            "body": json.dumps(item),
        }
    return {"items": sorted(ITEMS.values(), key=lambda i: i["id"]), "query": event.get("queryStringParameters")}
