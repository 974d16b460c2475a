"""A Lambda-style Python handler: it runs unchanged on AWS Lambda and on Nimbus."""

import os

# Module-level state lives as long as the instance: it is kept warm between calls.
invocations = 0


def handler(event, context):
    global invocations
    invocations += 1
    name = event.get("name", "world") if isinstance(event, dict) else "world"
    print(f"greeting {name} (call {invocations} of this instance)")
    return {
        "message": f"{os.environ.get('GREETING', 'Hello')}, {name}!",
        "request_id": context.aws_request_id,
        "invocations": invocations,
    }
