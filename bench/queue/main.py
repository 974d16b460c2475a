import time


def handler(event, context):
    # One line per batch: when the handler started, then each message's body (its publish
    # time), read back by `cargo xtask bench-queue` from the function's logs.
    print('T %.6f %s' % (time.time(), ' '.join(r['body'] for r in event['Records'])))
