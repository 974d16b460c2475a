# The rules' function of `cargo xtask bench-bus`. It takes a second per event, one at a
# time (max_instances 1), so the deliveries drain slowly and the two cores measure what
# the benchmark is about: committing events, not running Python handlers.
import time


def handler(event, context):
    time.sleep(1)
