"""Payment: charge the card, and refund the charge when a later step fails.

A raised exception's class name is the error a state's Retry and Catch match:
`PaymentDeclined` is caught (the saga undoes the reservation), `PaymentGatewayTimeout` is
retried.
"""

import os


class PaymentDeclined(Exception):
    pass


class PaymentGatewayTimeout(Exception):
    pass


def charge(event, context):
    card = event.get("card")
    if card == "declined":
        raise PaymentDeclined(f"card of order {event['order_id']} was declined")
    if card == "flaky":
        # A gateway that times out on the first try of each order: the marker in /tmp
        # survives into the retry, which runs on the same warm instance.
        marker = f"/tmp/charged-once-{event['order_id']}"
        if not os.path.exists(marker):
            open(marker, "w").close()
            raise PaymentGatewayTimeout("the payment gateway did not answer in time")
    amount = sum(item.get("price", 0) for item in event.get("items", []))
    return {"payment_id": f"pay-{event['order_id']}", "amount": amount}


def refund(event, context):
    payment = event["payment"]
    return {"refund_id": f"ref-{payment['payment_id']}", "amount": payment["amount"]}
