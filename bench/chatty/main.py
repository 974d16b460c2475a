import logging

logger = logging.getLogger()


def handler(event, context):
    # Ten lines per call, half through print (stdout), half through the context logger.
    for i in range(5):
        print("processing item", i, "of request", context.request_id)
        context.logger.info("step %d done", i)
    return None
