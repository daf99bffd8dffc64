"""Property: random schema-valid events with extreme values never stop the engine, and every input
is accounted for (accepted + dead letters + duplicates = read)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import orjson
from bytewax.testing import TestingSink, TestingSource, run_main
from conftest import T0, raw_records, source_records
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flows.personalization import build_flow
from flows.settings import Settings
from operators.engine import EngineConfig, Forward, ShardEngine, Tick
from operators.parse import InputMarks, Rejected, parse
from operators.rules import load_rules
from schemas.items import Output

RULES = load_rules()  # the starter rules: triggers, timers, audiences, offers and models
ENGINE_EXAMPLES = settings(
    derandomize=True, database=None, max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
FLOW_EXAMPLES = settings(
    derandomize=True, database=None, max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)

# --- schema-valid events with extreme but valid values --------------------------------------
offsets = st.sampled_from([UTC, timezone(timedelta(hours=14)), timezone(timedelta(hours=-12, minutes=-30))])
any_time = st.datetimes(datetime(1, 1, 1), datetime(9999, 12, 31, 23, 59, 59), timezones=offsets)
near_time = st.integers(-3 * 24 * 60, 40 * 24 * 60).map(lambda minutes: T0 + timedelta(minutes=minutes))
moments = st.one_of(near_time, near_time, near_time, any_time)  # mostly one stream, sometimes anywhere

texts = st.one_of(st.sampled_from(["p1", "p2", "shoes", "Berlin"]), st.text(min_size=1, max_size=200))
ids = st.one_of(st.sampled_from(["u1", "u2", "a1", "a2"]), st.text(min_size=1, max_size=200))
money = st.one_of(st.sampled_from([0.0, 0.01, 1e9]), st.floats(0, 1e9))
quantities = st.one_of(st.sampled_from([1, 100_000]), st.integers(1, 100_000))
product = st.fixed_dictionaries(
    {"product_id": texts}, optional={"category": texts, "price": money, "quantity": quantities}
)


track_properties = {
    "Product Viewed": product,
    "Product Added": st.fixed_dictionaries(
        {"product_id": texts}, optional={"price": money, "quantity": quantities, "cart_id": texts, "category": texts}
    ),
    "Product Removed": st.fixed_dictionaries({"product_id": texts}, optional={"quantity": quantities}),
    "Order Completed": st.fixed_dictionaries(
        {"order_id": texts},
        optional={"total": money, "revenue": money, "products": st.lists(product, max_size=25)},
    ),
    "Order Refunded": st.fixed_dictionaries({"order_id": texts}, optional={"total": money}),
    "Checkout Started": st.fixed_dictionaries({}, optional={"value": money}),
    "Coupon Applied": st.fixed_dictionaries({}, optional={"coupon_id": texts}),
    "Promotion Clicked": st.fixed_dictionaries({"promotion_id": texts}),
    "Push Notification Tapped": st.fixed_dictionaries({}, optional={"trigger_id": texts}),
    "Signed Up": st.just({}),
    "Application Opened": st.just({}),
    "Consent Updated": st.fixed_dictionaries(
        {"channel": st.sampled_from(["push", "in_app", "email", "sms", "ads", "all"]), "granted": st.booleans()}
    ),
    "Store Visited": st.fixed_dictionaries({"store_id": texts}),
    "Erasure Requested": st.fixed_dictionaries({"request_id": texts}),
    "Something Else": st.dictionaries(texts, texts, max_size=3),
}
context = st.fixed_dictionaries(
    {},
    optional={
        "timezone": st.one_of(st.sampled_from(["Europe/Berlin", "Pacific/Kiritimati", "Not/AZone"]), texts),
        "location": st.fixed_dictionaries({}, optional={"city": texts, "country": texts}),
        "store": st.fixed_dictionaries({"id": texts}),
        "channel": st.sampled_from(["web", "app", "pos"]),
    },
)
traits = st.fixed_dictionaries(
    {},
    optional={"age": st.integers(0, 130), "city": texts, "urban": st.booleans(), "loyalty_tier": texts},
)


@st.composite
def events(draw: st.DrawFn) -> dict[str, Any]:
    moment = draw(moments)
    event: dict[str, Any] = {"messageId": draw(st.one_of(ids, st.uuids().map(str))), "timestamp": moment.isoformat()}
    who = draw(st.sampled_from(["user", "anonymous", "both"]))
    if who != "anonymous":
        event["userId"] = draw(ids)
    if who != "user":
        event["anonymousId"] = draw(ids)
    if draw(st.booleans()):
        event["receivedAt"] = draw(st.one_of(st.just(moment), moments)).isoformat()
    if draw(st.booleans()):
        event["context"] = draw(context)
    kind = draw(st.sampled_from(["track", "track", "track", "identify", "page", "alias"]))
    event["type"] = kind
    if kind == "track":
        name = draw(st.sampled_from(sorted(track_properties)))
        event["event"] = name
        event["properties"] = draw(track_properties[name])
    elif kind == "identify":
        event["traits"] = draw(traits)
    elif kind == "alias":
        event["previousId"] = draw(ids)
        event["userId"] = draw(ids)
    return event


# a quarter of each stream is sent twice (resends, for dedupe)
streams = st.lists(events(), min_size=1, max_size=40).map(lambda batch: [*batch, *batch[: len(batch) // 4]])


# --- the engine, both stages ----------------------------------------------------------------
def run_engine(events: list[dict[str, Any]]) -> tuple[list[Output], list[dict[str, Any]]]:
    """Every event through parse and both stages (a tick after each), a snapshot and its restore, then
    the end of input; the outputs and each stage's counters."""
    config = EngineConfig(snapshots=True, profile_ms=1000)
    identity = ShardEngine(RULES, config, "identity")
    customers = ShardEngine(RULES, config, "customer")
    marks, outputs = InputMarks(config.max_skew_ms), []

    def identity_stage(item: Any) -> None:
        forwarded: list[Any] = []
        identity.process(item, forwarded)
        for value in forwarded:
            if isinstance(value, Forward | Tick):
                customers.process(value, outputs)
            else:
                outputs.append(value)

    for raw in raw_records(events):
        result = parse(raw)
        if isinstance(result, Rejected):
            outputs.append(Output("dead_letters", result.key, 0, raw.seq, result.body))
            continue
        marks.stamp(result, 0)
        identity_stage(result)
        identity_stage(Tick(marks.reached.get(0), result.seq, 0))
    identity_stage(Tick(marks.reached.get(0), 0, 0, idle=True))
    for engine in (identity, customers):
        engine.profiles(outputs)
        engine.restore(engine.snapshot())  # type: ignore[arg-type]
    return outputs, [identity.finish(outputs), customers.finish(outputs)]


def accounted(outputs: list[Output], stats: list[dict[str, Any]]) -> int:
    """Accepted events + dead letters of inputs + duplicates."""
    accepted = sum(sum(s.get("events", {}).values()) + sum(s.get("unknown_events", {}).values()) for s in stats)
    dead = [orjson.loads(o.body) for o in outputs if o.stream == "dead_letters"]
    of_inputs = [d for d in dead if d["position"]["source"] != "timer"]
    return accepted + len(of_inputs) + sum(s.get("duplicates", 0) for s in stats)


@ENGINE_EXAMPLES
@given(streams)
def test_no_exception_escapes_the_engine_and_every_input_is_accounted_for(events):
    outputs, stats = run_engine(events)  # raises if anything escapes
    assert accounted(outputs, stats) == len(events)
    for output in outputs:
        if output.stream.startswith(("triggers.", "audience_changes")):
            assert orjson.loads(output.body)["time"][:4].isdigit()


# --- the real flow ----------------------------------------------------------------------------
@FLOW_EXAMPLES
@given(streams)
def test_no_exception_escapes_the_flow_and_every_input_is_accounted_for(tmp_path_factory, events):
    captured: list[tuple[str, Output]] = []
    settings_ = Settings(out=tmp_path_factory.mktemp("unused"), shards=4)
    source = TestingSource(source_records(events), batch_size=5)
    run_main(build_flow(settings_, source=source, sink=TestingSink(captured)))
    outputs = [output for _, output in captured]
    stats = [orjson.loads(o.body) for o in outputs if o.stream == "stats"]
    assert accounted(outputs, stats) == len(events)
