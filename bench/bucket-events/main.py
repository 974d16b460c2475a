# The handler of `cargo xtask bench-bucket-events`: when it started, read first thing.
# The benchmark takes the object's key from the event it was given.
import time


def handler(event, context):
    return time.time()
