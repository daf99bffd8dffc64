"""The live dashboard: a page, its static files and a stream of one JSON frame per second.

:class:`MetricsSampler` reads the Prometheus text exposition (this process's registry, or the
engines' ``/metrics`` summed) every second and computes a frame: events/s, decisions/s by channel,
event-to-decision latency quantiles, dead letters, events the HTTP API took or refused, suppressions,
audience sizes over 10 minutes, model quality, experiments' lift and webhook deliveries.
:func:`add_dashboard` serves the page at ``/dashboard`` and the frames as server-sent events at
``/dashboard/stream`` (``read`` scope).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from aiohttp import web
from prometheus_client import REGISTRY, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from connectors.http.auth import requires
from schemas.experiments import CONTROL

STATIC = Path(__file__).with_name("static")
INTERVAL_SECONDS = 1.0  # one frame per interval
RATE_SECONDS = 3.0  # rates are averaged over this span (the engines publish counters every 0.25 s)
LATENCY_SECONDS = 10.0  # latency quantiles come from the histogram's growth over this span
SERIES_POINTS = 60  # the sparklines' points: one per frame
AUDIENCE_STEP_SECONDS = 10.0  # audience sizes are kept at this step ...
AUDIENCE_POINTS = 60  # ... for 10 minutes
HEARTBEAT_SECONDS = 15.0  # a comment line when no frame came for this long (keeps proxies from closing)
SCRAPE_TIMEOUT_SECONDS = 2.0
QUANTILES = (0.5, 0.95, 0.99)
CLOSING = b""  # handed to the streams' queues when the app shuts down
WEBHOOK_DELIVERIES = "nudgeflow_webhook_deliveries_total"
SOURCE_UP = "nudgeflow_dashboard_source_up"  # added by :class:`ScrapedMetrics`, one sample per engine

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]  # (sample name, sorted labels) -> value


def parse_samples(text: str) -> Samples:
    """The ``nudgeflow_*`` samples of a text exposition; samples named alike (several engines) are summed."""
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        if not family.name.startswith("nudgeflow_"):
            continue
        for sample in family.samples:
            if sample.name.endswith("_created"):
                continue  # creation timestamps, not counts
            key = (sample.name, tuple(sorted(sample.labels.items())))
            out[key] = out.get(key, 0.0) + sample.value
    return out


def by_label(samples: Samples, name: str, *labels: str) -> dict[tuple[str, ...], float]:
    """The sum of sample ``name`` over every label but ``labels``, keyed by their values."""
    out: dict[tuple[str, ...], float] = {}
    for (sample, pairs), value in samples.items():
        if sample == name:
            found = dict(pairs)
            key = tuple(found.get(label, "") for label in labels)
            out[key] = out.get(key, 0.0) + value
    return out


def total(samples: Samples, name: str) -> float:
    """The sum of sample ``name`` over all its labels."""
    return sum(value for (sample, _), value in samples.items() if sample == name)


def growth(now: float, before: float) -> float:
    """How much a counter grew; a counter lower than before was reset (an engine restarted)."""
    return now - before if now >= before else now


def histogram_quantile(q: float, buckets: Sequence[tuple[float, float]]) -> float | None:
    """The ``q`` quantile of cumulative ``(upper bound, count)`` buckets sorted by bound, the last ``+Inf``,
    interpolated linearly within its bucket as Prometheus' ``histogram_quantile`` does."""
    if not buckets or buckets[-1][1] <= 0:
        return None
    rank = q * buckets[-1][1]
    lower, below = 0.0, 0.0
    for i, (bound, count) in enumerate(buckets):
        if count >= rank:
            if math.isinf(bound):
                return buckets[i - 1][0] if i else None  # the highest finite bound, as Prometheus
            if count == below:
                return bound
            return lower + (bound - lower) * (rank - below) / (count - below)
        lower, below = bound, count
    return None


def auc_from_counts(positives: Sequence[float], negatives: Sequence[float]) -> float | None:
    """ROC AUC of scores known only by bucket (ascending): P(a positive's bucket is above a negative's),
    pairs within one bucket counting half."""
    pos, neg = sum(positives), sum(negatives)
    if not pos or not neg:
        return None
    below, area = 0.0, 0.0
    for p, n in zip(positives, negatives, strict=True):
        area += p * (below + n / 2)
        below += n
    return area / (pos * neg)


def experiments(exposed: Mapping[tuple[str, ...], float], converted: Mapping[tuple[str, ...], float]) -> list[dict]:
    """Per (experiment, arm): exposures, conversions, conversion rate, and lift against the ``control`` arm
    (``rate / control rate - 1``; ``None`` for the control itself or without one)."""
    rates = {key: (converted.get(key, 0.0) / n if n else None) for key, n in exposed.items()}
    rows = []
    for (experiment, arm), n in sorted(exposed.items()):
        rate, control = rates[(experiment, arm)], rates.get((experiment, CONTROL))
        lift = None
        if arm != CONTROL and rate is not None and control:
            lift = rate / control - 1
        rows.append(
            {
                "experiment": experiment,
                "arm": arm,
                "exposed": n,
                "conversions": converted.get((experiment, arm), 0.0),
                "rate": rate,
                "lift": lift,
            }
        )
    return rows


@dataclass(frozen=True, slots=True)
class _Snapshot:
    at: float  # monotonic seconds
    samples: Samples


class MetricsSampler:
    """Reads the metrics every ``interval`` seconds and hands each computed frame to its subscribers.

    ``read_metrics`` returns a Prometheus text exposition (:func:`local_metrics`, :class:`ScrapedMetrics`);
    ``clock`` gives monotonic seconds.
    """

    def __init__(
        self,
        read_metrics: Callable[[], Awaitable[str]],
        interval: float = INTERVAL_SECONDS,
        clock: Callable[[], float] = time.monotonic,
        heartbeat: float = HEARTBEAT_SECONDS,
    ) -> None:
        self.read_metrics = read_metrics
        self.interval = interval
        self.heartbeat = heartbeat  # the streams' comment line when no frame came for this long
        self.clock = clock
        self.latest: dict[str, Any] | None = None
        self._history: deque[_Snapshot] = deque()
        self._series: deque[tuple[float, float, float]] = deque(maxlen=SERIES_POINTS)  # (at, events/s, decisions/s)
        self._audiences: deque[tuple[float, dict[str, float]]] = deque(maxlen=AUDIENCE_POINTS)
        self._started: float | None = None
        self._subscribers: set[asyncio.Queue[bytes]] = set()

    @property
    def subscribers(self) -> int:
        return len(self._subscribers)

    def subscribe(self) -> asyncio.Queue[bytes]:
        """A queue receiving each new frame (encoded JSON); the oldest is dropped for a slow reader."""
        queue: asyncio.Queue[bytes] = asyncio.Queue(maxsize=2)
        self._subscribers.add(queue)
        return queue

    def unsubscribe(self, queue: asyncio.Queue[bytes]) -> None:
        self._subscribers.discard(queue)

    async def run(self) -> None:
        """Sample forever, one frame per interval (a failed read gives a frame with its ``error``)."""
        while True:
            started = self.clock()
            try:
                frame = await self.sample()
            except Exception as exc:  # the dashboard shows the error and keeps going
                frame = {"time": int(time.time() * 1000), "error": f"{type(exc).__name__}: {exc}"[:200]}
                self.latest = frame
            self._publish(orjson.dumps(frame))
            await asyncio.sleep(max(0.0, self.interval - (self.clock() - started)))

    def end_streams(self) -> None:
        """Tell every stream to end (the app is shutting down)."""
        self._publish(CLOSING)

    def _publish(self, data: bytes) -> None:
        for queue in self._subscribers:
            if queue.full():
                queue.get_nowait()
            queue.put_nowait(data)

    async def sample(self) -> dict[str, Any]:
        """Read the metrics once, remember them and compute the frame (also kept as :attr:`latest`)."""
        samples = parse_samples(await self.read_metrics())
        now = self.clock()
        self._started = now if self._started is None else self._started
        self._history.append(_Snapshot(now, samples))
        while self._history[0].at < now - LATENCY_SECONDS - self.interval / 2:
            self._history.popleft()
        self.latest = self._frame(now)
        return self.latest

    def _ago(self, seconds: float) -> _Snapshot:
        """The oldest snapshot within ``seconds`` (plus half an interval) of the newest."""
        newest = self._history[-1]
        return next(s for s in self._history if s.at >= newest.at - seconds - self.interval / 2)

    def _rates(self, name: str, *labels: str) -> tuple[dict[tuple[str, ...], float], dict[tuple[str, ...], float]]:
        """Totals of a counter by ``labels`` now, and their growth per second over :data:`RATE_SECONDS`."""
        newest, base = self._history[-1], self._ago(RATE_SECONDS)
        now, before = by_label(newest.samples, name, *labels), by_label(base.samples, name, *labels)
        span = newest.at - base.at
        rates = {key: (growth(value, before.get(key, 0.0)) / span if span > 0 else 0.0) for key, value in now.items()}
        return now, rates

    def _frame(self, now: float) -> dict[str, Any]:
        """The frame of the newest snapshot (see the module docstring)."""
        samples = self._history[-1].samples
        events, event_rates = self._rates("nudgeflow_events_total")
        decisions, decision_rates = self._rates("nudgeflow_decisions_total", "channel")
        dead, dead_rates = self._rates("nudgeflow_invalid_events_total", "reason")
        api, api_rates = self._rates("nudgeflow_http_events_total", "result")
        events_rate, decisions_rate = sum(event_rates.values()), sum(decision_rates.values())
        self._series.append((now, events_rate, decisions_rate))
        return {
            "time": int(time.time() * 1000),
            "uptime_s": round(now - (self._started or now), 1),
            "events": {"rate": events_rate, "total": sum(events.values())},
            "decisions": {
                "rate": decisions_rate,
                "total": sum(decisions.values()),
                "by_channel": [
                    {"channel": ch, "rate": decision_rates[(ch,)], "total": n} for (ch,), n in sorted(decisions.items())
                ],
            },
            "series": {
                "events": [round(e, 2) for _, e, _ in self._series],
                "decisions": [round(d, 2) for _, _, d in self._series],
            },
            "latency": self._latency(),
            "dead_letters": {
                "rate": sum(dead_rates.values()),
                "total": sum(dead.values()),
                "by_reason": [
                    {"reason": r, "rate": dead_rates[(r,)], "total": n} for (r,), n in sorted(dead.items()) if n
                ],
            },
            "engine": {
                "customers": total(samples, "nudgeflow_customers_in_state"),
                "kafka_lag": total(samples, "nudgeflow_kafka_lag_messages")
                if any(name == "nudgeflow_kafka_lag_messages" for name, _ in samples)
                else None,
            },
            "api_events": [
                {"result": result, "rate": api_rates[(result,)], "total": n} for (result,), n in sorted(api.items())
            ],
            "suppressions": _table(by_label(samples, "nudgeflow_suppressions_total", "reason"), "reason"),
            "audiences": self._audience_sizes(now, samples),
            "model": _model(samples),
            "experiments": experiments(
                by_label(samples, "nudgeflow_experiment_exposures_total", "experiment", "arm"),
                by_label(samples, "nudgeflow_experiment_conversions_total", "experiment", "arm"),
            ),
            "webhooks": _webhooks(samples, self._rates(WEBHOOK_DELIVERIES, "destination", "result")[1]),
            "sources": _sources(samples),
        }

    def _latency(self) -> dict[str, Any]:
        """p50/p95/p99 (seconds) of the decisions delivered within :data:`LATENCY_SECONDS`, from bucket growth."""
        name = "nudgeflow_decision_latency_seconds_bucket"
        now, before = by_label(self._history[-1].samples, name, "le"), by_label(self._history[0].samples, name, "le")
        buckets = sorted((float(le), growth(n, before.get((le,), 0.0))) for (le,), n in now.items())
        buckets = _cumulative(buckets)
        out: dict[str, Any] = {f"p{round(q * 100)}": histogram_quantile(q, buckets) for q in QUANTILES}
        out["count"] = buckets[-1][1] if buckets else 0.0
        out["window_s"] = round(self._history[-1].at - self._history[0].at, 1)
        return out

    def _audience_sizes(self, now: float, samples: Samples) -> list[dict[str, Any]]:
        """Each audience's size (entered minus exited) and its sizes at :data:`AUDIENCE_STEP_SECONDS` steps
        over the last 10 minutes, then now."""
        changes = by_label(samples, "nudgeflow_audience_changes_total", "audience", "change")
        sizes: dict[str, float] = {}
        for (audience, change), n in changes.items():
            sizes[audience] = sizes.get(audience, 0.0) + (n if change == "entered" else -n)
        if not self._audiences or now - self._audiences[-1][0] >= AUDIENCE_STEP_SECONDS - self.interval / 2:
            self._audiences.append((now, sizes))
        return [
            {
                "id": audience,
                "size": size,
                "entered": changes.get((audience, "entered"), 0.0),
                "exited": changes.get((audience, "exited"), 0.0),
                "history": [kept.get(audience, 0.0) for _, kept in self._audiences]
                + ([] if self._audiences[-1][0] == now else [size]),
            }
            for audience, size in sorted(sizes.items())
        ]


def _cumulative(buckets: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Bucket growths made cumulative again (a reset in one bucket may leave them out of order)."""
    out, highest = [], 0.0
    for bound, count in buckets:
        highest = max(highest, count)
        out.append((bound, highest))
    return out


def _table(values: Mapping[tuple[str, ...], float], label: str) -> dict[str, Any]:
    rows = [{label: key[0], "total": n} for key, n in sorted(values.items()) if n]
    return {"total": sum(values.values()), f"by_{label}": rows}


def _model(samples: Samples) -> dict[str, Any]:
    """The propensity model's progressive ROC AUC and, per decile of its score, the mean prediction and
    the observed positive rate."""
    counts = by_label(samples, "nudgeflow_model_outcomes_total", "model", "decile", "outcome")
    predicted = by_label(samples, "nudgeflow_model_predicted_total", "model", "decile")
    deciles = range(10)
    positives = [counts.get(("propensity", str(d), "positive"), 0.0) for d in deciles]
    negatives = [counts.get(("propensity", str(d), "negative"), 0.0) for d in deciles]
    outcomes = sum(positives) + sum(negatives)
    reliability = [
        {
            "decile": d,
            "predicted": predicted[("propensity", str(d))] / (p + n)
            if p + n and ("propensity", str(d)) in predicted
            else (d + 0.5) / 10,  # the mean prediction (the decile's middle before it is known)
            "outcomes": p + n,
            "observed": p / (p + n) if p + n else None,
        }
        for d, p, n in zip(deciles, positives, negatives, strict=True)
    ]
    return {
        "outcomes": outcomes,
        "positive_rate": sum(positives) / outcomes if outcomes else None,
        "roc_auc": auc_from_counts(positives, negatives),
        "reliability": reliability,
    }


def _webhooks(samples: Samples, delivered_rates: Mapping[tuple[str, ...], float]) -> list[dict[str, Any]]:
    """Per webhook destination: decisions delivered (and per second), dead-lettered, failed attempts
    (retried or given up) and pending (empty when no webhooks are configured)."""
    results = by_label(samples, "nudgeflow_webhook_deliveries_total", "destination", "result")
    attempts = by_label(samples, "nudgeflow_webhook_attempts_total", "destination", "outcome")
    pending = by_label(samples, "nudgeflow_webhook_pending", "destination")
    destinations = sorted({key[0] for key in (*results, *attempts, *pending)})
    return [
        {
            "destination": name,
            "delivered": results.get((name, "delivered"), 0.0),
            "rate": delivered_rates.get((name, "delivered"), 0.0),
            "dead_lettered": results.get((name, "dead_lettered"), 0.0),
            "failed_attempts": sum(n for (d, outcome), n in attempts.items() if d == name and outcome != "ok"),
            "pending": pending.get((name,), 0.0),
        }
        for name in destinations
    ]


def _sources(samples: Samples) -> list[dict[str, Any]]:
    """The engines scraped and whether each answered (none: this process's own metrics)."""
    rows = []
    for (name, pairs), value in sorted(samples.items()):
        if name == SOURCE_UP:
            labels = dict(pairs)
            rows.append({"source": labels.get("source", ""), "up": value > 0, "error": labels.get("error") or None})
    return rows


async def local_metrics() -> str:
    """This process's registry as text (read in a thread: the engine's workers update it meanwhile)."""
    return (await asyncio.to_thread(generate_latest, REGISTRY)).decode()


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", " ")


class ScrapedMetrics:
    """The engines' ``/metrics`` fetched together, and ``own`` (a front's own metrics: the HTTP API's
    counts); their samples sum up when parsed. Each engine also gives a sample :data:`SOURCE_UP` (1 up,
    0 with its error), so an unreachable one is shown as such."""

    def __init__(
        self,
        urls: Iterable[str],
        timeout: float = SCRAPE_TIMEOUT_SECONDS,
        own: Callable[[], Awaitable[str]] | None = None,
    ) -> None:
        self.urls = list(urls)
        self.own = own
        self.timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None

    async def _fetch(self, url: str) -> tuple[str, str | None]:
        assert self._session is not None
        try:
            async with self._session.get(url) as response:
                if response.status != 200:
                    return "", f"HTTP {response.status}"
                text = await response.text()
            list(text_string_to_metric_families(text))  # one bad engine must not hide the others
        except ValueError:
            return "", "not Prometheus text"
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            return "", (str(exc) or type(exc).__name__)[:120]
        return text, None

    async def __call__(self) -> str:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self.timeout)
        results = await asyncio.gather(*(self._fetch(url) for url in self.urls))
        parts = [await self.own() if self.own else "", f"# TYPE {SOURCE_UP} gauge"]
        for url, (_, error) in zip(self.urls, results, strict=True):
            up = 0 if error else 1
            parts.append(f'{SOURCE_UP}{{source="{_label(url)}",error="{_label(error or "")}"}} {up}')
        return "\n".join([*(text for text, _ in results if text), *parts, ""])

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def scraped_metrics(urls: Iterable[str], own: Callable[[], Awaitable[str]] | None = None) -> ScrapedMetrics:
    """A reader of the engines' ``/metrics`` at ``urls``, summed with ``own`` (for the stateless front)."""
    return ScrapedMetrics(urls, own=own)


async def local_http_metrics() -> str:
    """This process's HTTP API counts (``nudgeflow_http_*``) as text: what a front adds to the engines'."""
    text = await local_metrics()
    return "".join(line + "\n" for line in text.splitlines() if _metric_name(line).startswith(HTTP_FAMILY))


def _metric_name(line: str) -> str:
    """The metric a line of the text exposition is about (``# HELP name ...``, ``name{...} value``)."""
    if line.startswith("#"):
        words = line.split(" ", 3)
        return words[2] if len(words) > 2 else ""
    return line.split("{", 1)[0].split(" ", 1)[0]


HTTP_FAMILY = "nudgeflow_http_"
"""The metrics of the HTTP API itself (requests, events taken), which a front counts on its own."""

SAMPLER = web.AppKey("dashboard_sampler", MetricsSampler)


@requires("read")
async def _stream(request: web.Request) -> web.StreamResponse:
    """Server-sent events: the latest frame now, then one ``data:`` line per frame and a comment when idle."""
    sampler = request.app[SAMPLER]
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store", "X-Accel-Buffering": "no"}
    )
    await response.prepare(request)
    queue = sampler.subscribe()
    try:
        await response.write(b": live\n\n")
        if sampler.latest is not None:
            await response.write(b"data: " + orjson.dumps(sampler.latest) + b"\n\n")
        while True:
            try:
                data = await asyncio.wait_for(queue.get(), sampler.heartbeat)
            except TimeoutError:
                await response.write(b": heartbeat\n\n")
                continue
            if data == CLOSING:
                break
            await response.write(b"data: " + data + b"\n\n")
    except ConnectionResetError:
        pass  # the client went away
    finally:
        sampler.unsubscribe(queue)
    return response


PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
}


async def _page(request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC / "index.html", headers={**PAGE_HEADERS, "Cache-Control": "no-cache"})


def add_dashboard(app: web.Application, sampler: MetricsSampler) -> None:
    """``GET /dashboard`` (the page), ``/dashboard/static/...`` and ``/dashboard/stream`` (SSE, ``read``
    scope); the sampler runs while the app does."""
    app[SAMPLER] = sampler

    async def sampling(app: web.Application) -> AsyncIterator[None]:
        task = asyncio.create_task(sampler.run(), name="dashboard-sampler")
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        close = getattr(sampler.read_metrics, "close", None)
        if close is not None:
            await close()

    async def end_streams(app: web.Application) -> None:
        sampler.end_streams()

    app.cleanup_ctx.append(sampling)
    app.on_shutdown.append(end_streams)
    app.router.add_get("/dashboard", _page)
    app.router.add_get("/dashboard/stream", _stream)
    app.router.add_static("/dashboard/static", STATIC, append_version=False)


def dashboard(metrics_urls: Sequence[str] = ()) -> Callable[[web.Application], None]:
    """The route adder for ``make_app(extra=...)``: the dashboard over this process's metrics (the engine
    runs in-process), or over the engines' ``/metrics`` at ``metrics_urls``, summed (a stateless front)."""

    def add(app: web.Application) -> None:
        read = scraped_metrics(metrics_urls, own=local_http_metrics) if metrics_urls else local_metrics
        add_dashboard(app, MetricsSampler(read))

    return add
