"""Next-basket recommendations on real invoices (``nudgeflow evaluate --uci``).

Every order of a customer after their first is a prediction: before the recommender learns it,
each method names ``k`` products, and the order is a hit when any of its products is among them;
recall is the share of the order's distinct products found. The orders are replayed in time order,
learning as they go (the recommender as the engine runs it: one replica, its features and its
basket learning through :class:`~operators.models.ShardModels`). Methods:

- ``recommender``: a trigger's ``recommend: k`` as the engine answers it (leaving out the cart and
  the last order);
- ``recommender_with_bought``: the same with ``include_bought`` (the customer's own products first);
- ``most_popular``: the products most often ordered so far;
- ``buy_again``: the customer's own most frequently ordered products so far, ties by the latest
  order, then by id (the baseline that wins in grocery).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from operators.models import ShardModels
from operators.models.recommend import K
from operators.parse import Rejected, parse
from schemas.envelope import Envelope
from schemas.items import RawEvent
from state.customer import CustomerState, Lifecycle
from state.update import apply_event

METHODS = ("recommender", "recommender_with_bought", "most_popular", "buy_again")


@dataclass
class Score:
    """Hits and summed recall of one method over the predictions."""

    hits: int = 0
    recall: float = 0.0

    def add(self, predicted: list[str], basket: set[str]) -> None:
        found = len(basket.intersection(predicted))
        self.hits += found > 0
        self.recall += found / len(basket)


@dataclass
class BuyAgain:
    """One customer's products ordered so far: in how many orders, and the last order's number."""

    orders: dict[str, tuple[int, int]] = field(default_factory=dict)

    def top(self, k: int) -> list[str]:
        ranked = sorted(self.orders.items(), key=lambda item: (-item[1][0], -item[1][1], item[0]))
        return [product for product, _ in ranked[:k]]

    def ordered(self, basket: set[str], number: int) -> None:
        for product in basket:
            count, _ = self.orders.get(product, (0, 0))
            self.orders[product] = (count + 1, number)


def invoices(path: Path, rows: int | None) -> Iterator[list[Envelope]]:
    """The UCI invoices as ``Order Completed`` envelopes in time order, the parts of one invoice
    (a big one is split into several events) together."""
    from connectors.uci_retail import Rejected as RejectedRow
    from connectors.uci_retail import read_invoices

    parts: list[Envelope] = []
    for n, item in enumerate(read_invoices(path, rows)):
        if isinstance(item, RejectedRow) or item.get("event") != "Order Completed":
            continue
        env = parse(RawEvent(n, {}, orjson.dumps(item)))
        if isinstance(env, Rejected):
            continue
        if parts and _order_key(parts[0]) != _order_key(env):
            yield parts
            parts = []
        parts.append(env)
    if parts:
        yield parts


def _order_key(env: Envelope) -> tuple[str, str]:
    return env.customer_id, str(env.event.properties.order_id)


def evaluate_baskets(path: Path, rows: int | None = None, k: int = K) -> dict[str, Any]:
    """Next-basket hit rate and recall at ``k`` of each of :data:`METHODS` on the UCI invoices."""
    lifecycle = Lifecycle()
    models = ShardModels("learn", 7 * 86_400_000, session_timeout_ms=lifecycle.session_timeout_ms)
    states: dict[str, CustomerState] = {}
    own: dict[str, BuyAgain] = {}
    scores = {method: Score() for method in METHODS}
    predictions = orders = 0
    for parts in invoices(path, rows):
        first = parts[0]
        customer, at_ms = first.customer_id, first.ts_ms
        basket = {line.product_id for env in parts for line in env.event.properties.products if line.quantity >= 0}
        state = states.get(customer)
        if state is None:
            state = states[customer] = CustomerState(customer, at_ms)
        history = own.setdefault(customer, BuyAgain())
        if history.orders and basket:
            predictions += 1
            predicted = {
                "recommender": models.recommend(state, k, at_ms),
                "recommender_with_bought": models.recommend(state, k, at_ms, include_bought=True),
                "most_popular": models.recommender.most_popular((), k),
                "buy_again": history.top(k),
            }
            for method, products in predicted.items():
                scores[method].add(products, basket)
        for env in parts:
            apply_event(state, env, lifecycle)
            models.order_completed(env.event.properties.products)
        orders += 1
        history.ordered(basket, orders)
    return {
        "orders": orders,
        "customers": len(states),
        "predictions": predictions,
        "k": k,
        "products_learnt": models.recommender.stats()["products"],
        **{
            method: {
                f"hit_rate@{k}": round(score.hits / predictions, 4) if predictions else None,
                f"recall@{k}": round(score.recall / predictions, 4) if predictions else None,
            }
            for method, score in scores.items()
        },
    }


LABELS = {
    "recommender": "recommender (`recommend: 10`: leaves out the cart and the last order)",
    "recommender_with_bought": "recommender with `include_bought: true` (own products first)",
    "most_popular": "most popular (products in the most orders so far)",
    "buy_again": "buy again (the customer's own most frequently ordered products, ties by the latest)",
}


def render_baskets(results: dict[str, Any] | None) -> list[str]:
    """The printed table of :func:`evaluate_baskets` (none without results)."""
    if not results:
        return []
    k = results["k"]
    return [
        f"UCI Online Retail, next basket: {results['predictions']:,} orders after a customer's first"
        f" ({results['orders']:,} orders, {results['products_learnt']:,} products learnt); {k} products"
        " predicted before each order is learnt.",
        "",
        f"| next basket | hit rate@{k} | recall@{k} |",
        "| --- | ---: | ---: |",
        *(
            f"| {LABELS[method]} | {results[method][f'hit_rate@{k}']} | {results[method][f'recall@{k}']} |"
            for method in METHODS
        ),
        "",
    ]
