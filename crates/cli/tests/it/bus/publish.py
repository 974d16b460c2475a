"""Publishes to a Nimbus bus with the CloudEvents SDK (PyPI `cloudevents`) in both modes,
a batch, and a PutEvents request; prints what the server answered, one JSON per line.

argv: endpoint, invoke key.
"""
import json, sys, urllib.request

from cloudevents.v1.http import CloudEvent, to_binary, to_structured

endpoint, key = sys.argv[1], sys.argv[2]


def post(headers, body):
    headers = dict(headers)
    headers["x-nimbus-key"] = key
    req = urllib.request.Request(endpoint + "/v1/events", data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(req) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def event(id, source, type, data):
    return CloudEvent({"id": id, "source": source, "type": type}, data)


out = []
# Structured mode: a pro signup, and the same event again (a publisher's retry).
signup = event("u-1", "app.users", "com.example.user.created", {"plan": "pro-annual", "amount": 250})
out.append(post(*to_structured(signup)))
out.append(post(*to_structured(signup)))
# Binary mode: a free signup (no prefix match) from the same source.
out.append(post(*to_binary(event("u-2", "app.users", "com.example.user.created", {"plan": "free", "amount": 0}))))
# A batch from another source.
batch = [json.loads(to_structured(event("o-%d" % i, "app.orders", "com.example.order", {"amount": i * 100}))[1]) for i in range(1, 3)]
out.append(post({"content-type": "application/cloudevents-batch+json"}, json.dumps(batch).encode()))
# EventBridge's PutEvents shape, with one bad entry.
out.append(post({"content-type": "application/json"}, json.dumps({"Entries": [
    {"Source": "app.orders", "DetailType": "OrderPlaced", "Detail": json.dumps({"amount": 120})},
    {"Source": "app.orders", "DetailType": "OrderPlaced"},
]}).encode()))
# Not a CloudEvent at all.
out.append(post({"content-type": "text/plain"}, b"hello"))
for status, body in out:
    print(json.dumps({"status": status, "body": body}))
