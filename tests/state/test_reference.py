"""Reference data: stores and products from CSV or JSON Lines, bad rows refused at start-up, and the
events they enrich."""

from __future__ import annotations

import pytest
from conftest import EngineHarness, rules_from, track

from operators.engine import EngineConfig
from schemas.errors import ConfigurationError
from state.reference import load_reference

STORES_CSV = """id,name,timezone,latitude,longitude
tokyo,Ginza,Asia/Tokyo,35.6717,139.765
paris,Rivoli,Europe/Paris,48.8566,2.3522
"""
PRODUCTS_JSONL = """{"id": "p1", "category": "shoes", "price": 89.5}

{"id": "p2", "category": "books", "price": 12}
"""


def test_stores_and_products_load_from_csv_and_json_lines(tmp_path):
    (tmp_path / "stores.csv").write_text(STORES_CSV)
    (tmp_path / "products.jsonl").write_text(PRODUCTS_JSONL)
    reference = load_reference(tmp_path / "stores.csv", tmp_path / "products.jsonl")
    assert reference.store_zone("tokyo") == "Asia/Tokyo" and reference.store_zone("nowhere") is None
    assert reference.products["p2"].category == "books" and reference.products["p2"].price == 12.0
    assert reference.distance_km("paris", "tokyo") == pytest.approx(9714, abs=10)


@pytest.mark.parametrize(
    ("name", "text", "expected"),
    [
        ("stores.csv", STORES_CSV + "x,,Europe/Pariss,1,2\n", ":4: field 'timezone': Value error, 'Europe/Pariss'"),
        ("stores.csv", STORES_CSV + "x,,UTC,91,2\n", ":4: field 'latitude': Input should be less than or equal to 90"),
        ("stores.csv", STORES_CSV + "paris,,UTC,1,2\n", ":4: field 'id': store 'paris' is listed twice"),
        ("stores.csv", "", ":1: the file has no header line"),
        ("products.jsonl", PRODUCTS_JSONL + '{"id": "p3", "price": -1}\n', ":4: field 'category': Field required"),
        ("products.jsonl", PRODUCTS_JSONL + "{oops\n", ":4: not valid JSON"),
        ("products.txt", "", ": name a .csv or .jsonl file"),
    ],
)
def test_a_bad_row_stops_the_start_naming_the_file_line_and_field(tmp_path, name, text, expected):
    path = tmp_path / name
    path.write_text(text)
    kind = "stores" if name.startswith("stores") else "products"
    with pytest.raises(ConfigurationError) as err:
        load_reference(**{kind: path, ("products" if kind == "stores" else "stores"): None})
    assert f"{path}{expected}" in str(err.value)


def test_every_bad_row_is_named_at_once(tmp_path):
    path = tmp_path / "products.csv"
    path.write_text("id,category,price\np1,shoes,x\np2,,3\np3,books,4\n")
    with pytest.raises(ConfigurationError) as err:
        load_reference(None, path)
    assert [line.split(": field")[0] for line in str(err.value).splitlines()] == [f"{path}:2", f"{path}:3"]


RULES = """
version: v
triggers:
  - {id: hello, channel: push, on: Hello}
"""


def test_a_point_of_sale_event_without_a_time_zone_takes_its_stores(tmp_path):
    (tmp_path / "stores.csv").write_text(STORES_CSV)
    reference = load_reference(tmp_path / "stores.csv", None)
    pos = {"channel": "pos", "store": {"id": "tokyo"}}
    visit = [track("Page", "u1", 0, context=pos)]  # 10:00 UTC: 19:00 in Tokyo
    plain, enriched = (
        EngineHarness(rules_from(RULES)),
        EngineHarness(rules_from(RULES), EngineConfig(reference=reference)),
    )
    plain.feed(visit)
    enriched.feed(visit)
    assert plain.customers.customers["u1"].features.preferred_hour() == 10
    assert enriched.customers.customers["u1"].features.preferred_hour() == 19
    named = [track("Page", "u2", 1, context={**pos, "timezone": "Europe/Paris"})]
    enriched.feed(named)
    assert enriched.customers.customers["u2"].features.preferred_hour() == 11, "the event's own zone wins"


def test_a_product_event_without_category_or_price_takes_the_products(tmp_path):
    (tmp_path / "products.jsonl").write_text(PRODUCTS_JSONL)
    reference = load_reference(None, tmp_path / "products.jsonl")
    h = EngineHarness(rules_from(RULES), EngineConfig(reference=reference))
    h.feed(
        [
            track("Product Added", "u1", 0, props={"product_id": "p1"}),
            track("Product Added", "u1", 1, props={"product_id": "p2", "price": 10.0, "category": "gifts"}),
            track("Product Added", "u1", 2, props={"product_id": "unknown"}),
        ]
    )
    features = h.customers.customers["u1"].features
    assert features.cart_value == pytest.approx(89.5 + 10.0), "a price sent is kept; an unknown product has none"
    assert sorted(features.category_scores) == ["gifts", "shoes"]


def test_the_sample_reference_files_cover_the_generated_stores_and_products():
    from pathlib import Path

    from connectors.synthetic import CATALOG, STORES

    samples = Path(__file__).resolve().parents[2] / "samples"
    reference = load_reference(samples / "stores.csv", samples / "products.csv")
    assert {store.id: store.city.timezone for store in STORES} == {s.id: s.timezone for s in reference.stores.values()}
    items = [item for category in CATALOG.values() for item in category]
    assert {(i.id, i.category, i.price) for i in items} == {
        (p.id, p.category, p.price) for p in reference.products.values()
    }


def test_a_tills_store_gives_the_customer_its_time_zone(tmp_path):
    (tmp_path / "stores.csv").write_text(STORES_CSV)
    h = EngineHarness(rules_from(RULES), EngineConfig(reference=load_reference(tmp_path / "stores.csv", None)))
    h.feed(
        [track("Order Completed", "u1", 0, props={"order_id": "o1", "total": 5.0}, context={"store": {"id": "tokyo"}})]
    )
    assert h.customers.customers["u1"].timezone == "Asia/Tokyo"
    h.feed([track("Page", "u1", 1, context={"timezone": "Europe/Paris"})])
    assert h.customers.customers["u1"].timezone == "Europe/Paris"
