"""The dashboard's frames computed from Prometheus text, its engine scraping and its event stream."""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import math
from collections.abc import Callable

import aiohttp
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from prometheus_client import REGISTRY

from connectors.http.app import make_app
from connectors.http.auth import KeyRing
from connectors.http.backend import MemoryBackend
from connectors.http.dashboard import (
    MetricsSampler,
    add_dashboard,
    auc_from_counts,
    dashboard,
    experiments,
    histogram_quantile,
    scraped_metrics,
)
from connectors.http.openapi import PATHS, served_routes
from connectors.local_services import free_port
from flows.api_validation import contract_validator
from schemas.api import ApiKeySpec
from schemas.metrics import HTTP_EVENTS

BOUNDS = ("0.01", "0.1", "0.5", "1.0", "+Inf")


def exposition(
    events: float = 0,
    decisions: dict[str, float] | None = None,
    latency: tuple[float, ...] = (0, 0, 0, 0, 0),
    audiences: dict[tuple[str, str], float] | None = None,
    dead: dict[str, float] | None = None,
    outcomes: dict[tuple[int, str], float] | None = None,
    predicted: dict[tuple[str, int], float] | None = None,
) -> str:
    """Prometheus text as an engine serves it: ``latency`` gives the cumulative bucket counts of ``BOUNDS``."""
    lines = ["# TYPE nudgeflow_events counter", f'nudgeflow_events_total{{event="Product Viewed"}} {events}']
    lines += ["# TYPE nudgeflow_decisions counter"]
    for n, (channel, count) in enumerate((decisions or {}).items()):
        lines.append(f'nudgeflow_decisions_total{{channel="{channel}",rule="r{n}"}} {count}')
    lines.append(f'nudgeflow_decisions_created{{channel="push",rule="r0"}} {1.7e9}')
    lines += ["# TYPE nudgeflow_decision_latency_seconds histogram"]
    for bound, count in zip(BOUNDS, latency, strict=True):
        lines.append(f'nudgeflow_decision_latency_seconds_bucket{{le="{bound}",origin="event"}} {count}')
    lines.append(f'nudgeflow_decision_latency_seconds_count{{origin="event"}} {latency[-1]}')
    lines += ["# TYPE nudgeflow_audience_changes counter"]
    for (audience, change), count in (audiences or {}).items():
        lines.append(f'nudgeflow_audience_changes_total{{audience="{audience}",change="{change}"}} {count}')
    lines += ["# TYPE nudgeflow_invalid_events counter"]
    for reason, count in (dead or {}).items():
        lines.append(f'nudgeflow_invalid_events_total{{reason="{reason}"}} {count}')
    lines += ["# TYPE nudgeflow_model_outcomes counter"]
    for (decile, outcome), count in (outcomes or {}).items():
        lines.append(
            f'nudgeflow_model_outcomes_total{{decile="{decile}",model="propensity",outcome="{outcome}"}} {count}'
        )
    lines += ["# TYPE nudgeflow_model_predicted counter"]
    for (model, decile), total in (predicted or {}).items():
        lines.append(f'nudgeflow_model_predicted_total{{decile="{decile}",model="{model}"}} {total}')
    return "\n".join(lines) + "\n"


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def sampler_over(texts: list[str]) -> tuple[MetricsSampler, Clock, Callable[[], dict]]:
    """A sampler reading ``texts`` one per call, a second apart on its clock; ``step()`` samples the next."""
    clock, pending = Clock(), iter(texts)

    async def read() -> str:
        return next(pending)

    sampler = MetricsSampler(read, clock=clock)

    def step() -> dict:
        frame = asyncio.run(sampler.sample())
        clock.now += 1.0
        return frame

    return sampler, clock, step


def test_prometheus_quantiles_interpolate_within_the_bucket_holding_the_rank():
    buckets = [(0.1, 10.0), (0.5, 30.0), (1.0, 40.0), (math.inf, 40.0)]
    # p50: rank 20 is the 10th of the 20 in (0.1, 0.5]: 0.1 + 0.4 * 10/20
    assert histogram_quantile(0.5, buckets) == pytest.approx(0.3)
    # p95: rank 38 is the 8th of the 10 in (0.5, 1.0]
    assert histogram_quantile(0.95, buckets) == pytest.approx(0.9)
    # p5: rank 2 is the 2nd of the 10 in (0, 0.1]: the first bucket starts at 0
    assert histogram_quantile(0.05, buckets) == pytest.approx(0.02)
    over = [(0.1, 1.0), (0.5, 2.0), (math.inf, 10.0)]
    assert histogram_quantile(0.9, over) == 0.5, "a rank in +Inf gives the highest finite bound"
    assert histogram_quantile(0.5, [(0.1, 0.0), (math.inf, 0.0)]) is None, "nothing observed: no figure"


def test_rates_are_counter_growth_per_second_and_totals_since_the_engines_started():
    texts = [exposition(events=1000 + 300 * s, decisions={"push": 10 * s, "email": 2 * s}) for s in range(6)]
    _, _, step = sampler_over(texts)
    first = step()
    assert first["events"] == {"rate": 0.0, "total": 1000.0}, "one reading: no rate yet"
    frames = [step() for _ in range(5)]
    assert [f["events"]["rate"] for f in frames] == [300.0] * 5
    assert frames[-1]["events"]["total"] == 2500.0
    decisions = frames[-1]["decisions"]
    assert decisions["rate"] == pytest.approx(12.0) and decisions["total"] == 60.0
    assert decisions["by_channel"] == [
        {"channel": "email", "rate": pytest.approx(2.0), "total": 10.0},
        {"channel": "push", "rate": pytest.approx(10.0), "total": 50.0},
    ]
    assert frames[-1]["series"]["events"][-5:] == [300.0] * 5, "the sparkline's points"
    assert frames[-1]["engine"] == {"customers": 0.0, "kafka_lag": None}, "no Kafka source: no lag figure"


def test_an_engine_restart_counts_its_new_counts_not_a_negative_rate():
    _, _, step = sampler_over([exposition(events=5000), exposition(events=50)])
    step()
    assert step()["events"]["rate"] == 50.0


def test_latency_quantiles_come_from_the_buckets_grown_within_the_last_10_seconds():
    """An hour of fast decisions already counted must not hide the slow ones of the last seconds."""
    old = (5000, 5000, 5000, 5000, 5000)  # all under 10 ms
    grown = [(0, 0, 0, 0, 0)] + [(0, 0, 2 * s, 4 * s, 4 * s) for s in range(1, 12)]  # 2/s in 0.1-0.5, 2/s in 0.5-1
    texts = [exposition(latency=tuple(o + g for o, g in zip(old, lat, strict=True))) for lat in grown]
    _, _, step = sampler_over(texts)
    frames = [step() for _ in texts]
    latency = frames[-1]["latency"]
    # the window holds the last 10 s: readings 1..11, growth 20 in (0.1, 0.5] and 20 in (0.5, 1.0]
    assert latency["count"] == 40 and latency["window_s"] == 10.0
    assert latency["p50"] == pytest.approx(0.5)
    assert latency["p95"] == pytest.approx(0.5 + 0.5 * (38 - 20) / 20)
    assert latency["p99"] == pytest.approx(0.5 + 0.5 * (39.6 - 20) / 20)
    assert frames[0]["latency"]["p50"] is None, "no decision delivered in the window: no figure"


def test_audience_sizes_are_entries_less_exits_kept_every_10_seconds_for_10_minutes():
    texts = [
        exposition(audiences={("vip", "entered"): 10 + s, ("vip", "exited"): s // 2, ("lapsed", "entered"): 3})
        for s in range(700)
    ]
    _, _, step = sampler_over(texts)
    frames = [step() for _ in texts]
    vip = next(a for a in frames[-1]["audiences"] if a["id"] == "vip")
    assert vip["size"] == 10 + 699 - 699 // 2 and vip["entered"] == 709 and vip["exited"] == 349
    assert len(vip["history"]) == 61, "10 minutes at a 10 s step, then now"
    assert vip["history"][0] == 10 + 100 - 50 and vip["history"][-2] == 10 + 690 - 345
    assert vip["history"][-1] == vip["size"]
    assert [a["id"] for a in frames[-1]["audiences"]] == ["lapsed", "vip"]


def test_dead_letters_list_their_reasons():
    _, _, step = sampler_over([exposition(dead={"invalid_json": 3, "schema_invalid": 0, "too_large": 1})])
    dead = step()["dead_letters"]
    assert dead["total"] == 4
    assert [row["reason"] for row in dead["by_reason"]] == ["invalid_json", "too_large"]


def pairwise_auc(positives: list[int], negatives: list[int]) -> float:
    """ROC AUC by comparing every (positive, negative) pair of scores: 1 when the positive's is higher."""
    pos = [d for d, n in enumerate(positives) for _ in range(n)]
    neg = [d for d, n in enumerate(negatives) for _ in range(n)]
    wins = sum(1.0 if p > q else 0.5 if p == q else 0.0 for p, q in itertools.product(pos, neg))
    return wins / (len(pos) * len(neg))


def test_roc_auc_from_decile_counts_matches_comparing_every_pair():
    positives = [0, 1, 1, 2, 3, 5, 4, 6, 7, 9]
    negatives = [9, 8, 6, 7, 5, 3, 2, 2, 1, 0]
    assert auc_from_counts(positives, negatives) == pytest.approx(pairwise_auc(positives, negatives))
    assert auc_from_counts([0, 2], [2, 0]) == 1.0
    assert auc_from_counts([1, 1], [1, 1]) == 0.5
    assert auc_from_counts([3, 0], [0, 0]) is None, "no negatives: undefined"


def test_the_model_tile_gives_auc_and_the_observed_rate_per_decile():
    outcomes = {(2, "positive"): 1, (2, "negative"): 3, (8, "positive"): 6, (8, "negative"): 2}
    _, _, step = sampler_over([exposition(outcomes=outcomes)])
    model = step()["model"]
    assert model["outcomes"] == 12 and model["positive_rate"] == pytest.approx(7 / 12)
    assert model["roc_auc"] == pytest.approx(pairwise_auc([0, 0, 1, 0, 0, 0, 0, 0, 6], [0, 0, 3, 0, 0, 0, 0, 0, 2]))
    assert model["reliability"][2] == {"decile": 2, "predicted": 0.25, "outcomes": 4, "observed": 0.25}
    assert model["reliability"][0]["observed"] is None


def test_the_model_tile_reads_the_mean_prediction_per_decile_and_only_the_propensity_model():
    """The offer policy counts its outcomes under the same metrics: the tile keeps to propensity."""
    text = exposition(outcomes={(2, "positive"): 1, (2, "negative"): 3}, predicted={("propensity", 2): 0.88})
    text += 'nudgeflow_model_outcomes_total{decile="2",model="next_best_offer",outcome="positive"} 50\n'
    text += 'nudgeflow_model_predicted_total{decile="2",model="next_best_offer"} 12.5\n'
    _, _, step = sampler_over([text])
    model = step()["model"]
    assert model["outcomes"] == 4
    assert model["reliability"][2] == {"decile": 2, "predicted": pytest.approx(0.22), "outcomes": 4, "observed": 0.25}


def test_lift_is_each_arms_conversion_rate_against_the_control_arm():
    exposed = {("holdout", "control"): 1000.0, ("holdout", "treated"): 9000.0, ("subject", "a"): 10.0}
    converted = {("holdout", "control"): 50.0, ("holdout", "treated"): 540.0, ("subject", "a"): 1.0}
    rows = {(r["experiment"], r["arm"]): r for r in experiments(exposed, converted)}
    assert rows[("holdout", "treated")]["rate"] == pytest.approx(0.06)
    assert rows[("holdout", "treated")]["lift"] == pytest.approx(0.06 / 0.05 - 1)
    assert rows[("holdout", "control")]["lift"] is None, "the control is the reference"
    assert rows[("subject", "a")]["lift"] is None, "no control arm: no lift"


async def _metrics_server(text: str) -> TestServer:
    async def metrics(request: web.Request) -> web.Response:
        return web.Response(text=text, content_type="text/plain")

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    return server


def test_scraped_engines_are_summed_and_an_unreachable_or_wrong_one_is_shown_not_failed():
    async def scenario() -> tuple[dict, list[str]]:
        one = await _metrics_server(exposition(events=100, decisions={"push": 4}))
        two = await _metrics_server(exposition(events=250, decisions={"push": 1, "email": 2}))
        page = await _metrics_server("<html><body>a login page</body></html>\n")
        urls = [str(server.make_url("/metrics")) for server in (one, two, page)]
        urls.append(f"http://127.0.0.1:{free_port()}/metrics")  # nothing listens there
        reader = scraped_metrics(urls)
        try:
            return await MetricsSampler(reader).sample(), urls
        finally:
            await reader.close()
            for server in (one, two, page):
                await server.close()

    frame, urls = asyncio.run(scenario())
    assert frame["events"]["total"] == 350.0
    assert {row["channel"]: row["total"] for row in frame["decisions"]["by_channel"]} == {"email": 2.0, "push": 5.0}
    sources = {s["source"]: s for s in frame["sources"]}
    assert [sources[url]["up"] for url in urls] == [True, True, False, False]
    assert sources[urls[2]]["error"] == "not Prometheus text"
    assert sources[urls[3]]["error"], "the connection error is named"


def test_a_failing_read_gives_a_frame_with_the_error_and_sampling_goes_on():
    calls = itertools.count()

    async def read() -> str:
        if next(calls) == 0:
            raise RuntimeError("registry unavailable")
        return exposition(events=7)

    async def scenario() -> list[dict]:
        sampler = MetricsSampler(read, interval=0.05)
        queue = sampler.subscribe()
        task = asyncio.create_task(sampler.run())
        frames = [orjson.loads(await asyncio.wait_for(queue.get(), 5)) for _ in range(2)]
        task.cancel()
        return frames

    failed, recovered = asyncio.run(scenario())
    assert failed["error"] == "RuntimeError: registry unavailable"
    assert recovered["events"]["total"] == 7.0


KEYS = {"reader": "nf_reader-key", "writer": "nf_writer-key"}


def keyring() -> KeyRing:
    scopes = {"reader": ["read"], "writer": ["ingest"]}
    return KeyRing(
        ApiKeySpec(name=name, sha256=hashlib.sha256(secret.encode()).hexdigest(), scopes=scopes[name])
        for name, secret in KEYS.items()
    )


def test_the_stream_sends_frames_to_read_keys_only_and_forgets_clients_that_leave():
    async def read() -> str:
        return exposition(events=42, decisions={"push": 3})

    sampler = MetricsSampler(read, interval=0.05)
    app = make_app(MemoryBackend(), contract_validator(), keyring(), extra=[lambda app: add_dashboard(app, sampler)])

    async def scenario() -> dict:
        server = TestServer(app, host="127.0.0.1")
        await server.start_server()
        url = str(server.make_url("/dashboard/stream"))
        timeout = aiohttp.ClientTimeout(total=10)
        try:
            async with aiohttp.ClientSession(timeout=timeout) as session:
                async with session.get(url) as anonymous:
                    refused = (anonymous.status, await anonymous.json())
                async with session.get(url, headers={"Authorization": f"Bearer {KEYS['writer']}"}) as writer:
                    forbidden = (writer.status, await writer.json())
                headers = {"Authorization": f"Bearer {KEYS['reader']}"}
                async with session.get(url, headers=headers) as stream:
                    content_type = stream.headers["Content-Type"]
                    frames = []
                    while len(frames) < 2:
                        line = await stream.content.readline()
                        if line.startswith(b"data: "):
                            frames.append(orjson.loads(line[6:]))
                    listening = sampler.subscribers
                for _ in range(100):  # the server notices at its next write
                    if sampler.subscribers == 0:
                        break
                    await asyncio.sleep(0.05)
                page = await session.get(str(server.make_url("/dashboard")))
                script = await session.get(str(server.make_url("/dashboard/static/dashboard.js")))
                return {
                    "refused": refused,
                    "forbidden": forbidden,
                    "content_type": content_type,
                    "frames": frames,
                    "listening": listening,
                    "left": sampler.subscribers,
                    "page": (page.status, page.headers.get("Content-Security-Policy"), await page.text()),
                    "script": (script.status, await script.text()),
                }
        finally:
            await server.close()

    seen = asyncio.run(scenario())
    assert seen["refused"] == (401, {"error": "unauthorized"})
    assert seen["forbidden"] == (403, {"error": "forbidden"})
    assert seen["content_type"] == "text/event-stream"
    assert [f["events"]["total"] for f in seen["frames"]] == [42.0, 42.0]
    assert seen["listening"] == 1 and seen["left"] == 0, "a client that went away is no longer fed"
    status, policy, html = seen["page"]
    assert status == 200 and "default-src 'self'" in policy, "the page needs no key and loads nothing from elsewhere"
    assert 'data-testid="events-rate"' in html
    assert seen["script"][0] == 200 and "Authorization" in seen["script"][1]


async def _stream_lines(app: web.Application, wanted: Callable[[list[bytes]], bool]) -> list[bytes]:
    """The non-empty lines of ``/dashboard/stream`` (read with the reader's key) until ``wanted`` of them."""
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    lines: list[bytes] = []
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
            headers = {"Authorization": f"Bearer {KEYS['reader']}"}
            async with session.get(str(server.make_url("/dashboard/stream")), headers=headers) as stream:
                while not wanted(lines):
                    line = (await stream.content.readline()).strip()
                    if line:
                        lines.append(line)
    finally:
        await server.close()
    return lines


def test_a_quiet_stream_sends_heartbeat_comments():
    async def read() -> str:
        return exposition(events=1)

    sampler = MetricsSampler(read, interval=60, heartbeat=0.05)  # one frame, then nothing for a minute
    app = make_app(MemoryBackend(), contract_validator(), keyring(), extra=[lambda app: add_dashboard(app, sampler)])
    lines = asyncio.run(_stream_lines(app, lambda lines: lines.count(b": heartbeat") >= 2))
    assert sum(line.startswith(b"data: ") for line in lines) == 1


def test_a_fronts_dashboard_sums_the_engines_and_names_the_one_that_does_not_answer():
    async def scenario() -> list[bytes]:
        engines = [await _metrics_server(exposition(events=n, decisions={"push": n})) for n in (10, 32)]
        urls = [str(engine.make_url("/metrics")) for engine in engines]
        down = f"http://127.0.0.1:{free_port()}/metrics"
        app = make_app(MemoryBackend(), contract_validator(), keyring(), extra=[dashboard([*urls, down])])
        try:
            return await _stream_lines(app, lambda lines: any(line.startswith(b"data: ") for line in lines))
        finally:
            for engine in engines:
                await engine.close()

    accepted_before = REGISTRY.get_sample_value("nudgeflow_http_events_total", {"result": "accepted"}) or 0.0
    HTTP_EVENTS.labels("accepted").inc(7)  # what this front took itself
    frame = orjson.loads(next(line for line in asyncio.run(scenario()) if line.startswith(b"data: "))[6:])
    assert frame["events"]["total"] == 42.0 and frame["decisions"]["total"] == 42.0, "the engines', summed"
    api = {row["result"]: row["total"] for row in frame["api_events"]}
    assert api["accepted"] == accepted_before + 7, "and the front's own HTTP counts"
    assert [(s["up"], bool(s["error"])) for s in frame["sources"]].count((False, True)) == 1


def webhook_exposition(delivered: float) -> str:
    return "\n".join(
        [
            "# TYPE nudgeflow_webhook_deliveries counter",
            f'nudgeflow_webhook_deliveries_total{{destination="push",result="delivered"}} {delivered}',
            'nudgeflow_webhook_deliveries_total{destination="push",result="dead_lettered"} 2',
            "# TYPE nudgeflow_webhook_attempts counter",
            f'nudgeflow_webhook_attempts_total{{destination="push",outcome="ok"}} {delivered}',
            'nudgeflow_webhook_attempts_total{destination="push",outcome="http_5xx"} 5',
            'nudgeflow_webhook_attempts_total{destination="push",outcome="timeout"} 3',
            "# TYPE nudgeflow_webhook_pending gauge",
            'nudgeflow_webhook_pending{destination="push"} 4',
            'nudgeflow_webhook_pending{destination="crm"} 0',
            "",
        ]
    )


def test_webhook_deliveries_by_destination_when_webhooks_are_configured():
    _, _, step = sampler_over(
        [exposition(), exposition() + webhook_exposition(100), exposition() + webhook_exposition(160)]
    )
    assert step()["webhooks"] == [], "no webhook metrics: no webhook table"
    step()
    crm, push = step()["webhooks"]
    assert push == {
        "destination": "push",
        "delivered": 160.0,
        "rate": 80.0,  # 160 delivered since the reading without webhook metrics, 2 s before
        "dead_lettered": 2.0,
        "failed_attempts": 8.0,
        "pending": 4.0,
    }
    assert crm["destination"] == "crm" and crm["delivered"] == 0.0


def test_the_dashboards_routes_are_the_ones_the_openapi_document_describes():
    app = make_app(MemoryBackend(), contract_validator(), keyring(), extra=[dashboard()])
    served = {path: methods for path, methods in served_routes(app).items() if path.startswith("/dashboard")}
    assert served == {"/dashboard": {"get"}, "/dashboard/stream": {"get"}}, "static files are not API routes"
    for path, methods in served.items():
        assert set(PATHS[path]) == methods
