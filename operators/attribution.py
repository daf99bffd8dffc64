"""Attribution: each order credited to the deliveries that preceded it within their channel's window.

A delivered trigger is a customer's *touch* (kept in its state's ``touches``, newest last, at most
:data:`MAX_TOUCHES` and none older than the longest window). An order (``Order Completed``, online
or at the till) is credited to its touches within their channel's window before it, in two models:
``last_touch`` (all to the latest) and ``linear`` (equal shares). Each credit is an ``attributions``
record: a CloudEvent whose id is derived from the order event, the model and the decision.
"""

from __future__ import annotations

from typing import Any

from operators.decisions import DecisionWriter, bump, unbump
from schemas.experiments import Attribution
from schemas.items import Output
from schemas.records import ATTRIBUTION_TYPE, cloud_event, decision_id, iso_ms
from schemas.streams import ATTRIBUTIONS
from state.customer import MAX_TOUCHES, TOUCH_FIELDS

MODELS = ("last_touch", "linear")

Touch = tuple[int, str, str, str, str]
"""A delivery as read: (delivered at, decision id, rule id, channel, offer id or "")."""


def stamp(at_ms: int, event_id: str) -> bytes:
    """A touch's time and decision id (32 hex digits) as 24 bytes, in time order."""
    return at_ms.to_bytes(8, "big") + bytes.fromhex(event_id)


def read_touches(touches: tuple[Any, ...]) -> list[Touch]:
    """A customer's touches (see :data:`state.customer.TOUCH_FIELDS`), oldest first."""
    return [
        (int.from_bytes(touches[at][:8], "big"), touches[at][8:].hex(), *touches[at + 1 : at + TOUCH_FIELDS])
        for at in range(0, len(touches), TOUCH_FIELDS)
    ]


def touched(touches: tuple[Any, ...], touch: Touch, keep_ms: int) -> tuple[Any, ...]:
    """``touches`` with ``touch`` added, less those older than ``keep_ms`` before it and beyond
    :data:`MAX_TOUCHES`."""
    since = max(touch[0] - keep_ms, 0).to_bytes(8, "big")
    kept = [touches[at : at + TOUCH_FIELDS] for at in range(0, len(touches), TOUCH_FIELDS)]
    kept = [t for t in kept if t[0][:8] >= since][-(MAX_TOUCHES - 1) :]
    at_ms, event_id, *rest = touch
    return tuple(value for t in (*kept, (stamp(at_ms, event_id), *rest)) for value in t)


def credits(touches: tuple[Any, ...], order_ms: int, windows: dict[str, int]) -> dict[str, list[tuple[Touch, float]]]:
    """Each model's credit of an order at ``order_ms`` to the touches within their channel's window
    before it (none: no credit)."""
    eligible = [t for t in read_touches(touches) if t[0] <= order_ms <= t[0] + windows[t[3]]]
    if not eligible:
        return {}
    share = 1 / len(eligible)
    return {"last_touch": [(eligible[-1], 1.0)], "linear": [(touch, share) for touch in eligible]}


class Attributor:
    """Keeps customers' touches and writes the ``attributions`` records of their orders."""

    def __init__(self, config: Attribution, writer: DecisionWriter) -> None:
        self.windows = dict(config.windows)
        self.keep_ms = max(self.windows.values())
        self.writer = writer
        writer.uncounters[ATTRIBUTIONS] = uncount_attribution

    def delivered(
        self, state: Any, at_ms: int, event_id: str, rule_id: str, channel: str, offer_id: str | None
    ) -> None:
        """Note a delivered trigger as one of the customer's touches."""
        state.touches = touched(state.touches, (at_ms, event_id, rule_id, channel, offer_id or ""), self.keep_ms)

    def ordered(self, state: Any, order_ms: int, order_id: str, amount: float, message_id: str, out: list[Any]) -> None:
        """Credit an order to the customer's touches before it."""
        for model, credited in credits(state.touches, order_ms, self.windows).items():
            for (at_ms, event_id, rule_id, channel, offer_id), credit in credited:
                data = {
                    "model": model,
                    "order_id": order_id,
                    "order_revenue": amount,
                    "credit": round(credit, 6),
                    "revenue": round(amount * credit, 2),
                    "decision_id": event_id,
                    "rule_id": rule_id,
                    "channel": channel,
                    "offer_id": offer_id or None,
                    "delivered_at": iso_ms(at_ms),
                    "ruleset_version": self.writer.version,
                    "caused_by": [message_id],
                }
                record_id = decision_id(state.id, message_id, model, event_id)
                body = cloud_event(
                    type_=ATTRIBUTION_TYPE, event_id=record_id, time_ms=order_ms, subject=state.id, data=data
                )
                out.append(Output(ATTRIBUTIONS, state.id, order_ms, self.writer.seq, body))
                count_attribution(self.writer.stats, data, 1)


def uncount_attribution(stats: dict[str, Any], record: dict[str, Any]) -> None:
    """Take back the counts of an ``attributions`` record (of a step that failed)."""
    count_attribution(stats, record["data"], -1)


def count_attribution(stats: dict[str, Any], data: dict[str, Any], sign: int) -> None:
    """Count (``sign`` 1) or take back (-1) an attribution in ``stats``: records and revenue in cents,
    by model and rule."""
    key = f"{data['model']}.{data['rule_id']}"
    counts, revenue = stats.setdefault("attributions", {}), stats.setdefault("attributed_revenue_cents", {})
    if sign > 0:
        bump(counts, key)
        bump(revenue, key, round(data["revenue"] * 100))
    else:
        unbump(counts, key)
        bump(revenue, key, -round(data["revenue"] * 100))
