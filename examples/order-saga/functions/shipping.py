"""Shipping: the last step of an order; when it fails, the flow refunds and releases."""


class ShippingUnavailable(Exception):
    pass


def ship(event, context):
    if event.get("address") == "nowhere":
        raise ShippingUnavailable(f"no carrier delivers to {event['address']!r}")
    return {"tracking": f"trk-{event['order_id']}", "address": event.get("address")}
