"""Next-basket evaluation on invoices: each order after a customer's first is predicted before it is
learnt, by the recommender (as the engine runs it, and with the customer's own products) and by the
most-popular and buy-again baselines."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest

from flows.basket_evaluation import METHODS, evaluate_baskets, render_baskets

HEADER = "InvoiceNo,StockCode,Description,Quantity,InvoiceDate,UnitPrice,CustomerID,Country"
UCI = Path(__file__).resolve().parents[3] / "shared" / "data" / "online-retail-uci.csv.gz"


def invoices(path: Path, rows: list[tuple[str, str, int, str, str]]) -> Path:
    """A UCI file of ``(invoice, stock code, quantity, date, customer)`` rows."""
    lines = [HEADER, *(f"{n},{code},ITEM {code},{q},{date},1.25,{c},United Kingdom" for n, code, q, date, c in rows)]
    path.write_bytes(gzip.compress("\n".join(lines).encode()))
    return path


def test_each_repeat_order_is_predicted_once_before_it_is_learnt(tmp_path):
    big = [("536400", code, 1, "2011-01-20 10:00", "12347") for code in ["B", *(f"P{n:03d}" for n in range(159))]]
    path = invoices(
        tmp_path / "uci.csv.gz",
        [
            ("536365", "A", 6, "2011-01-03 08:26", "12346"),
            ("536365", "B", 6, "2011-01-03 08:26", "12346"),
            ("536366", "B", 2, "2011-01-04 09:00", "12347"),
            ("536367", "C", 1, "2011-01-05 09:00", ""),  # a guest: learnt, never predicted
            ("536368", "A", 1, "2011-01-10 10:00", "12346"),
            ("536368", "C", 1, "2011-01-10 10:00", "12346"),
            *big,  # 160 lines: two events, one order
            ("536401", "B", 1, "2011-01-21 10:00", "12347"),
        ],
    )
    r = evaluate_baskets(path)
    assert (r["orders"], r["predictions"], r["k"]) == (6, 3, 10)
    assert r["products_learnt"] == 162
    for method in METHODS:
        assert 0 <= r[method]["recall@10"] <= r[method]["hit_rate@10"] <= 1
    assert r["buy_again"] == {"hit_rate@10": 1.0, "recall@10": round((1 / 2 + 1 / 160 + 1) / 3, 4)}
    table = "\n".join(render_baskets(r))
    assert "| buy again (the customer's own most frequently ordered products, ties by the latest) | 1.0 |" in table
    assert render_baskets(None) == []


@pytest.mark.realdata
def test_on_real_invoices_buy_again_wins_and_own_products_help_the_recommender():
    if not UCI.exists():
        pytest.skip(f"real data not found at {UCI}")
    r = evaluate_baskets(UCI, rows=60_000)
    assert r["predictions"] > 500 and r["products_learnt"] > 1000
    hit = {method: r[method]["hit_rate@10"] for method in METHODS}
    assert hit["buy_again"] > hit["most_popular"], "re-buying is what these customers do"
    assert hit["recommender_with_bought"] > hit["recommender"]
