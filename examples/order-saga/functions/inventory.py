"""Inventory: reserve an order's items, and release them when the order is undone.

The state is the event: what a step needs is in the order the flow passes along, and what
it returns lands under the key its state's ResultPath names ($.reservation, $.release).
"""


def reserve(event, context):
    order = event["order_id"]
    return {"reservation_id": f"res-{order}", "items": event.get("items", [])}


def release(event, context):
    return {"released": event["reservation"]["reservation_id"]}
