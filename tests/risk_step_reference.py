"""The search for the next lapse-risk step as it was first written: a bisection over event time,
the risk computed at every probe. The reference that the compiled search (``next_boundary`` with
``risk_steps``) must agree with exactly (``tests/state/test_customer.py``)."""

from __future__ import annotations

import math

from state.affinity import DAY_MS
from state.customer import MINUTE_MS, CustomerState, Lifecycle


def next_risk_step(state: CustomerState, now_ms: int, lc: Lifecycle) -> int | None:
    """When ``lapse_risk`` (rising with silence) next reaches a tenth above its value now."""
    risk = state.lapse_risk(now_ms, lc)
    if risk is None or risk >= 0.9:
        return None
    step = (math.floor(risk * 10 + 1e-9) + 1) / 10
    low, high = now_ms, state.last_order_ms + lc.lapse_days * DAY_MS  # type: ignore[operator]
    while high - low > MINUTE_MS:  # the first minute at which the risk has reached the step
        middle = (low + high) // 2
        if state.lapse_risk(middle, lc) >= step:  # type: ignore[operator]
            high = middle
        else:
            low = middle
    return high
