"""The Prometheus endpoint of an engine process, scraped over HTTP after a Kafka run."""

from __future__ import annotations

import urllib.request

from bytewax.testing import run_main
from conftest import added, call, order, track
from prometheus_client.parser import text_string_to_metric_families
from test_kafka_flow import produce

from connectors.local_services import free_port
from flows.metrics import serve
from flows.personalization import build_flow
from flows.settings import Settings


def scrape(port: int) -> dict[tuple[str, tuple], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: dict, name: str, **labels: str) -> float:
    return sum(v for (n, ls), v in samples.items() if n == name and set(labels.items()) <= set(ls))


def test_metrics_count_events_decisions_dead_letters_lag_and_latency(services, tmp_path):
    import orjson

    events = [
        call("identify", "m1", 0, traits={"city": "Berlin"}),
        added("m1", 1),
        track("Signed Up", "m2", 2),
        order("m1", 3, total=9000.0),
        track("Product Viewed", "m1", 3, message_id="same", props={"product_id": "p1"}),
        track("Product Viewed", "m1", 3, message_id="same", props={"product_id": "p1"}),
    ]
    topic = produce(services, [*map(orjson.dumps, events), b"{broken"], partitions=2)
    port = free_port()
    serve(port)
    before = scrape(port)
    settings = Settings(
        source="kafka",
        kafka_bootstrap_servers=services["KAFKA_BOOTSTRAP_SERVERS"],
        events_topic=topic,
        topic_prefix=f"{topic}.",
        until_end=True,
        shards=4,
    )
    run_main(build_flow(settings))
    after = scrape(port)

    def grew(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert grew("nudgeflow_events_total", event="Product Added") == 1
    assert grew("nudgeflow_events_total", event="Product Viewed") == 1
    assert grew("nudgeflow_duplicate_events_total") == 1
    assert grew("nudgeflow_invalid_events_total", reason="invalid_json") == 1
    assert grew("nudgeflow_decisions_total", channel="push", rule="onboarding_welcome_push") == 1
    assert grew("nudgeflow_audience_changes_total", audience="high_value", change="entered") == 1
    delivered = grew("nudgeflow_decision_latency_seconds_count", origin="event")
    assert delivered >= 2, "decisions caused by events are timed when Kafka confirms them"
    assert grew("nudgeflow_sink_records_total", sink="kafka", stream="dead_letters") == 1
    lag = [v for (n, ls), v in after.items() if n == "nudgeflow_kafka_lag_messages" and ("topic", topic) in ls]
    assert len(lag) == 2 and all(v == 0 for v in lag), "each partition read to its end"
    assert value(after, "nudgeflow_customers_in_state", stage="customer") >= 2
