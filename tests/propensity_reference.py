"""The propensity model's inputs as the engine computed them in plain Python, from a feature view:
the reference the compiled ``state._native.decision_features`` is checked against, to the bit."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from operators.models.propensity import NO_ORDER_DAYS


def decision_features(view: Mapping[str, Any]) -> tuple[float, ...]:
    """The model's inputs from a feature view, in :data:`FEATURES` order (no later knowledge)."""
    cart, session = view["cart"], view["session"]
    day, week, month = view["counts_24h"], view["counts_7d"], view["counts_30d"]
    recency = view["recency_days"]
    gap = view["mean_order_gap_days"]
    return (
        NO_ORDER_DAYS if recency is None else min(recency, NO_ORDER_DAYS),
        float(view["days_since_seen"]),
        float(view["tenure_days"]),
        math.log1p(view["orders"]),
        math.log1p(max(0.0, view["monetary"] or 0.0)),
        NO_ORDER_DAYS if gap is None else min(gap, NO_ORDER_DAYS),
        math.log1p(cart["value"]),
        float(cart["items"]),
        float(session["products_viewed"]) if session is not None else 0.0,
        math.log1p(day["product_viewed"]),
        math.log1p(day["product_added"]),
        math.log1p(week["product_viewed"]),
        math.log1p(week["product_added"]),
        math.log1p(month["order_completed"]),
    )
