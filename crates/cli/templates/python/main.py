"""The function: Nimbus calls handler(event, context) once per invocation."""

# Module state lives as long as the instance, so work done here (clients, models,
# configuration) is paid once per cold start, not once per call.
GREETING = "Hello"


def handler(event, context):
    """Greets whoever the event names. `event` is the decoded JSON of the call."""
    name = (event or {}).get("name", "world")
    return {"message": f"{GREETING}, {name}!"}
