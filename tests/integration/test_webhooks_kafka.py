"""The Kafka flow with webhooks: the decisions on the trigger topic reach the receiver, and the ones a
destination refuses go to the dead-letter topic, keyed by customer, with the reason in a header."""

from __future__ import annotations

import base64
import os

import orjson
from aiohttp import web
from bytewax.testing import run_main
from conftest import CART_RULE, added, track
from webhook_receiver import Receiver, new_secret, ok

from connectors.kafka import ensure_topics, produce_records, read_topic, readable
from flows.personalization import build_flow
from flows.settings import Settings


async def reject(webhook_id: str, attempt: int) -> web.Response:
    return web.Response(status=422)


def test_kafka_flow_delivers_to_webhooks_and_dead_letters_to_the_topic(kafka_service, tmp_path, monkeypatch):
    servers = kafka_service["KAFKA_BOOTSTRAP_SERVERS"]
    topic, prefix = f"events-webhooks-{os.getpid()}", f"wh{os.getpid()}."
    events = [added(f"k{i}", minutes=i * 0.1) for i in range(12)] + [track("Page Viewed", "late", minutes=90)]
    ensure_topics(servers, [topic], 2)
    produce_records(servers, topic, [orjson.dumps(event) for event in events])
    (tmp_path / "rules.yaml").write_text(CART_RULE)
    with Receiver({"ok": ok, "reject": reject}) as receiver:
        (tmp_path / "hooks.yaml").write_text(
            f"""destinations:
  - {{name: ok, url: "{receiver.url("ok")}", streams: [triggers.push], secret_env: SHOP_SECRET}}
  - {{name: reject, url: "{receiver.url("reject")}", streams: [triggers.push], secret_env: SHOP_SECRET}}
"""
        )
        monkeypatch.setenv("SHOP_SECRET", new_secret())
        settings = Settings(
            source="kafka",
            kafka_bootstrap_servers=servers,
            events_topic=topic,
            until_end=True,
            topic_prefix=prefix,
            topic_partitions=2,
            rules=tmp_path / "rules.yaml",
            webhooks=tmp_path / "hooks.yaml",
        )
        run_main(build_flow(settings))

    on_topic = {orjson.loads(readable(m))["id"] for m in read_topic(servers, prefix + "triggers.push")}
    assert len(on_topic) == 12
    assert {r.headers["webhook-id"] for r in receiver.on("ok")} == on_topic
    dead = list(read_topic(servers, prefix + "dead_letters"))
    assert {orjson.loads(m.value())["position"]["id"] for m in dead} == on_topic
    for message in dead:
        headers = dict(message.headers())
        record = orjson.loads(message.value())
        assert headers["nf_reason"] == b"webhook_undeliverable" and headers["nf_source_source"] == b"webhooks/reject"
        decision = orjson.loads(base64.b64decode(record["payload_base64"]))
        assert message.key() == decision["subject"].encode(), "keyed by customer"
        assert record["messages"] == ["destination 'reject': HTTP 422 (not retried) (1 attempt)"]
