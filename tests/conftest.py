"""Factories shared by the tests: events as dicts, raw records and envelopes."""

from __future__ import annotations

import itertools
import os
import pickle
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, settings

from connectors.local_services import local_services, redis_cluster
from operators.engine import CustomerStage, EngineConfig
from operators.parse import parse
from operators.pipeline import Pipeline
from operators.rules import CompiledRules, RuleFileError, load_rules, parse_rules
from schemas.envelope import Envelope
from schemas.items import EndOfInput, Output, RawEvent
from state import codec
from state.store import wait_for_writes

# Property tests judge behaviour, not speed: on a shared, loaded host, drawing an input or running an
# example can take seconds, which Hypothesis would otherwise report as a failure.
settings.register_profile("shared-host", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("shared-host")

T0 = datetime(2026, 1, 5, 10, 0, tzinfo=UTC)
_ids = itertools.count(1)


def at(minutes: float = 0, days: float = 0) -> str:
    """An ISO timestamp ``minutes``/``days`` after T0."""
    return (T0 + timedelta(minutes=minutes, days=days)).isoformat().replace("+00:00", "Z")


def call(kind: str, user: str | None = "u1", minutes: float = 0, days: float = 0, **fields: Any) -> dict[str, Any]:
    """An event dict of type ``kind``; ``anon=`` sets anonymousId, ``message_id=`` the id, the rest top-level fields."""
    event: dict[str, Any] = {
        "type": kind,
        "messageId": fields.pop("message_id", f"m{next(_ids)}"),
        "timestamp": at(minutes, days),
    }
    if user is not None:
        event["userId"] = user
    if (anon := fields.pop("anon", None)) is not None:
        event["anonymousId"] = anon
    event.update(fields)
    return event


def track(name: str, user: str | None = "u1", minutes: float = 0, days: float = 0, **fields: Any) -> dict[str, Any]:
    """A track event dict; ``props=`` sets its properties (see :func:`call` for the rest)."""
    return call("track", user, minutes, days, event=name, properties=fields.pop("props", {}), **fields)


def product_views(count: int, start: int = 0) -> list[dict[str, Any]]:
    """Views of 500 products by 7 customers, a minute apart (sessions link them; 1 in 50 is a checked
    one); view ``i`` has message id ``v<i>``."""
    return [
        track(
            "Product Viewed",
            f"u{i % 7}",
            i,
            props={"product_id": f"p{i * 37 % 500}", "category": f"c{i % 3}"},
            message_id=f"v{i}",
        )
        for i in range(start, start + count)
    ]


def pickled_snapshots(h: EngineHarness) -> tuple[bytes, bytes]:
    """Both stages' snapshots as Bytewax stores them (pickled), once the store thread wrote what they hand it."""
    snapshots = pickle.dumps(h.identity.snapshot()), pickle.dumps(h.customers.snapshot())
    wait_for_writes()
    return snapshots


def restore_snapshots(h: EngineHarness, snapshots: tuple[bytes, bytes]) -> EngineHarness:
    """``h``, both stages restored from :func:`pickled_snapshots`."""
    h.identity.restore(pickle.loads(snapshots[0]))
    h.customers.restore(pickle.loads(snapshots[1]))
    return h


def added(user: str | None = "u1", minutes: float = 0, product: str = "p1", price: float = 20.0, **kw: Any) -> dict:
    props = {"product_id": product, "price": price, "category": "shoes"}
    return track("Product Added", user, minutes, props=props, **kw)


def order(user: str | None = "u1", minutes: float = 0, total: float = 50.0, days: float = 0, **kw: Any) -> dict:
    props = {"order_id": f"o{next(_ids)}", "total": total}
    return track("Order Completed", user, minutes, days=days, props=props, **kw)


def raw_records(events: list[dict[str, Any] | bytes]) -> list[RawEvent]:
    """Events as raw records with line positions, as a file source would read them."""
    out = []
    for line, event in enumerate(events, start=1):
        payload = event if isinstance(event, bytes) else orjson.dumps(event)
        out.append(RawEvent(line, {"source": "test.jsonl", "line": line}, payload))
    return out


def source_records(events: list[dict[str, Any] | bytes]) -> list[RawEvent | EndOfInput]:
    """What a bounded source sends: the raw records, then the end-of-input marker."""
    records: list[RawEvent | EndOfInput] = list(raw_records(events))
    return [*records, EndOfInput(len(records))]


def envelopes(events: list[dict[str, Any]]) -> list[Envelope]:
    out = []
    for raw in raw_records(events):
        env = parse(raw)
        assert isinstance(env, Envelope), env
        out.append(env)
    return out


def decisions(outputs: list[Any], stream_prefix: str = "") -> list[dict[str, Any]]:
    """Decoded output records (optionally of streams starting with ``stream_prefix``)."""
    return [orjson.loads(o.body) for o in outputs if isinstance(o, Output) and o.stream.startswith(stream_prefix)]


class EngineHarness:
    """The engine's pipeline (one shard per stage), fed one event per source batch: a tick after every event."""

    def __init__(self, rules: CompiledRules, config: EngineConfig | None = None) -> None:
        self.pipeline = Pipeline(rules, config)
        self.outputs: list[Output] = []

    @property
    def identity(self) -> CustomerStage:
        return self.pipeline.identity[0].engine

    @property
    def customers(self) -> CustomerStage:
        return self.pipeline.customers[0].engine

    def feed(self, events: list[dict[str, Any]]) -> list[Output]:
        start = len(self.outputs)
        for raw in raw_records(events):
            self.outputs += self.pipeline.feed([raw])
        return self.outputs[start:]

    def finish(self) -> list[Output]:
        """End the input: what is still due, and each stage's ``stats`` output."""
        start = len(self.outputs)
        self.outputs += self.pipeline.finish()
        return self.outputs[start:]


@pytest.fixture(scope="session")
def starter_rules() -> CompiledRules:
    return load_rules()


@pytest.fixture
def harness(starter_rules: CompiledRules) -> EngineHarness:
    return EngineHarness(starter_rules)


CART_RULE = """
version: v
triggers:
  - id: cart
    channel: push
    on: Product Added
    after: 30m
    unless: [Order Completed]
    once_per: cart
"""  # a cart reminder 30 minutes after the last add, unless an order came


def line_of(text: str, needle: str) -> int:
    """The 1-based line of the only line containing ``needle``."""
    found = [n for n, line in enumerate(text.splitlines(), start=1) if needle in line]
    assert len(found) == 1, (needle, found)
    return found[0]


def rule_file_problems(text: str, source: str = "rules/shop.yaml") -> str:
    """What refusing rule-file ``text`` (named ``source``) says."""
    with pytest.raises(RuleFileError) as info:
        parse_rules(text, source)
    return str(info.value)


def rules_from(text: str) -> CompiledRules:
    return parse_rules(text, "test.yaml")


def _service(variable: str, folder: Path, kafka: bool) -> Iterator[dict[str, str]]:
    """``variable`` when set, else the service started here (a local Kafka 4.x or Debian's redis-server)."""
    if os.environ.get(variable):
        yield {variable: os.environ[variable]}
        return
    with local_services(folder, kafka=kafka, redis=not kafka) as started:
        yield started


@pytest.fixture(scope="session")
def kafka_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A real Kafka broker for the whole session: ``KAFKA_BOOTSTRAP_SERVERS``."""
    yield from _service("KAFKA_BOOTSTRAP_SERVERS", tmp_path_factory.mktemp("kafka"), kafka=True)


@pytest.fixture(scope="session")
def redis_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A real Redis server for the whole session: ``REDIS_URL``."""
    yield from _service("REDIS_URL", tmp_path_factory.mktemp("redis"), kafka=False)


@pytest.fixture(scope="session")
def redis_cluster_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real 3-master Redis Cluster for the session (``REDIS_CLUSTER_URL`` when set): one node's URL."""
    if os.environ.get("REDIS_CLUSTER_URL"):
        yield os.environ["REDIS_CLUSTER_URL"]
        return
    with redis_cluster(tmp_path_factory.mktemp("redis-cluster")) as url:
        yield url


@pytest.fixture(scope="session")
def services(kafka_service: dict[str, str], redis_service: dict[str, str]) -> dict[str, str]:
    """Both real services: ``KAFKA_BOOTSTRAP_SERVERS`` and ``REDIS_URL``."""
    return {**kafka_service, **redis_service}


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    """With ``CI=true`` a skipped test is a failure: every test, integration tests included, must run
    (an expected failure, reported as skipped, stays what it is)."""
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if os.environ.get("CI") == "true" and report.skipped and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        report.longrepr = f"skipped in CI, where every test must run: {report.longrepr}"


def run_native_or_python(
    rules: CompiledRules, lines: list[bytes], native: bool, shards: int = 2
) -> tuple[list, dict[str, bytes]]:
    """The outputs of ``lines`` (fed in batches of 37) and every customer's encoded state, with the
    native step or with the Python path."""
    pipeline = Pipeline(rules, shards=shards)
    if not native:
        for logic in (*pipeline.identity, *pipeline.customers):
            logic.engine.step = None
    records = raw_records(lines)
    outputs = []
    for start in range(0, len(records), 37):
        outputs += pipeline.feed(records[start : start + 37])
    outputs += pipeline.feed([EndOfInput(len(records))])
    states = {}
    for logic in (*pipeline.identity, *pipeline.customers):
        engine: CustomerStage = logic.engine
        for customer_id, state in engine.customers.items():
            states[f"{engine.role}/{customer_id}"] = codec.encode(state) + repr(state.audiences).encode()
    outputs += pipeline.finish()
    return [written(o) for o in outputs], states


def written(output: Output) -> tuple:
    """What an output writes (not the wall-clock time its event arrived)."""
    return output.stream, output.key, output.time_ms, output.seq, output.body, output.timer
