"""The searches for the next lapse-risk and P(alive) steps as first written: a bisection over event
time, the score computed at every probe. The references that the compiled searches
(``next_boundary`` with ``risk_steps``, ``alive_steps``) must agree with exactly
(``tests/state/test_customer.py``)."""

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


def next_alive_step(state: CustomerState, now_ms: int, lc: Lifecycle) -> int | None:
    """When ``p_alive`` (falling with silence once there is a repeat order) next drops below the
    highest tenth at or under its value now: a span of days doubled until it gets there (at most
    2^14 days), then bisected."""
    if state.orders < 2:
        return None
    step = math.floor(state.p_alive(now_ms, lc) * 10 + 1e-9) / 10  # type: ignore[operator]
    if step <= 0:
        return None

    def below(at: int) -> bool:
        return state.p_alive(at, lc) < step  # type: ignore[operator]

    span = DAY_MS
    while not below(now_ms + span):
        if span > (1 << 14) * DAY_MS:
            return None
        span *= 2
    low, high = now_ms, now_ms + span
    while high - low > MINUTE_MS:
        middle = (low + high) // 2
        if below(middle):
            high = middle
        else:
            low = middle
    return high
