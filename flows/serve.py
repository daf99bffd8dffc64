"""``nudgeflow serve``: the HTTP API (:mod:`connectors.http`) in one of two modes.

Local (the default): the engine runs in this process (:mod:`flows.local_engine`). Accepted events
are appended to the event journal the flow reads, decisions go to the output folder's files, and
profiles and audiences are answered from the flow's own state: one command, nothing else to run.

Kafka (``--kafka``, or ``NUDGEFLOW_SOURCE=kafka``): a stateless front. Events go to the events
topic and answers come from the Redis store that the engine (``nudgeflow run --kafka``) keeps;
run as many copies as the load needs.

SIGINT or SIGTERM stops taking requests, lets those in flight finish, then (local) lets the flow
read what the journal holds and waits for it. Without any API key configured, one admin key is
made for the run and printed once on stderr, with the dashboard's address.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from aiohttp import web

from connectors.ad_audiences import add_export
from connectors.http.app import ApiLimits, app_runner, make_app
from connectors.http.auth import LOG_FORMAT, KeyRing, RequestIdFilter, generated_admin_key, load_keyring
from connectors.http.backend import Backend
from connectors.http.dashboard import dashboard
from flows.api_validation import contract_validator
from flows.local_engine import LocalEngine, start_local_engine
from flows.metrics import serve as serve_metrics
from flows.settings import Settings
from schemas.errors import ConfigurationError, ServiceError
from state.customer import MINUTE_MS

log = logging.getLogger("nudgeflow.serve")

STOP_SECONDS = 10.0
"""How long requests in flight may take to finish once a stop is asked."""
WATCH_SECONDS = 1.0
"""How often the local engine is checked: a flow that stopped with an error stops the server."""

RouteAdder = Callable[[web.Application], None]


@dataclass(frozen=True)
class Served:
    """What a server runs on: the backend, and the local engine behind it (None for the Kafka front)."""

    backend: Backend
    engine: LocalEngine | None


def run_server(settings: Settings, kafka: bool, workers: int = 1, extra: Sequence[RouteAdder] = ()) -> None:
    """Serve the API, the audience export and the dashboard with the ``api_*`` settings until SIGINT or
    SIGTERM (see the module doc); ``extra`` add more routes."""
    keys, generated = keyring(settings)
    with logging_to_stderr():
        if settings.metrics_port is not None:  # this process's metrics (the API's, and the engine's in-process)
            serve_metrics(settings.metrics_port, settings.metrics_host)
        served = open_backend(settings, kafka, workers)
        try:
            limits = ApiLimits(settings.api_max_body_bytes, settings.api_max_batch, settings.max_event_bytes)
            validator = contract_validator(settings.max_event_bytes, int(settings.max_skew_minutes * MINUTE_MS))
            routes = [dashboard(settings.dashboard_metrics_urls), add_export, *extra]
            app = make_app(served.backend, validator, keys, limits, routes)
            asyncio.run(_serve(app, settings, served, generated))
        finally:
            if served.engine is not None:
                served.engine.stop()
                log.info("the engine has stopped")


@contextlib.contextmanager
def logging_to_stderr(level: int = logging.INFO) -> Iterator[None]:
    """Log records (``level`` and above) on stderr while serving, each with the id of the request being
    handled (``-`` outside requests)."""
    root = logging.getLogger()
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    previous = root.level
    root.addHandler(handler)
    root.setLevel(level)
    try:
        yield
    finally:
        root.removeHandler(handler)
        root.setLevel(previous)


def keyring(settings: Settings) -> tuple[KeyRing, str | None]:
    """The configured API keys; without any, one admin key made for this run (returned to be shown once)."""
    keys = load_keyring(settings.api_keys_file, settings.api_keys)
    if len(keys):
        return keys, None
    return generated_admin_key()


def open_backend(settings: Settings, kafka: bool, workers: int) -> Served:
    """The Kafka + Redis backend (``kafka``), else the engine started in-process and its backend."""
    if not kafka:
        engine = start_local_engine(settings, settings.out, workers)
        return Served(engine.backend, engine)
    from connectors.http.kafka_redis import KafkaRedisBackend

    if settings.redis_url is None:
        raise ConfigurationError(
            "serve --kafka answers profiles and audiences from the Redis store: set NUDGEFLOW_REDIS_URL"
        )
    _ensure_events_topic(settings)
    backend = KafkaRedisBackend(
        settings.kafka_bootstrap_servers,
        settings.events_topic,
        settings.redis_url.get_secret_value(),
        client_config=settings.kafka_client_config(),
        cluster=settings.redis_cluster,
        prefix=settings.redis_prefix,
    )
    return Served(backend, None)


def _ensure_events_topic(settings: Settings) -> None:
    """Create the events topic when missing (as ``produce`` does); a Kafka that does not answer yet
    is only logged: ``/readyz`` tells when it does."""
    if not settings.create_topics:
        return
    from connectors.kafka import ensure_topics

    try:
        client = settings.kafka_client_config()
        ensure_topics(settings.kafka_bootstrap_servers, [settings.events_topic], settings.topic_partitions, client)
    except ServiceError as err:
        log.warning("events topic not checked at start: %s", err)


async def _serve(app: web.Application, settings: Settings, served: Served, generated: str | None) -> None:
    runner = app_runner(app, handle_signals=False, shutdown_timeout=STOP_SECONDS)
    await runner.setup()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        site = web.TCPSite(runner, settings.api_host, settings.api_port)
        await site.start()
        port = runner.addresses[0][1]
        _announce(settings, served, port, generated)
        await _wait_for_stop(stop, served.engine)
        log.info("stopping: no new requests; waiting for those in flight")
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
        await runner.cleanup()
        await served.backend.close()


async def _wait_for_stop(stop: asyncio.Event, engine: LocalEngine | None) -> None:
    """Until a stop is asked, or the local engine's flow has stopped by itself."""
    while not stop.is_set():
        if engine is not None and not engine.thread.is_alive():
            log.error("the engine stopped; stopping the server")
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), WATCH_SECONDS)


def _announce(settings: Settings, served: Served, port: int, generated: str | None) -> None:
    """Where the API listens, and the run's generated admin key (if any) in the dashboard's address."""
    host = settings.api_host
    mode = f"local engine, outputs in {settings.out}" if served.engine is not None else "front on Kafka and Redis"
    print(f"nudgeflow: serving the API on http://{_url_host(host)}:{port} ({mode})", file=sys.stderr, flush=True)
    if generated is not None:
        page = f"http://{_url_host(host)}:{port}/dashboard#key={generated}"
        print(
            "nudgeflow: no API keys configured: this run has one admin key, shown only here."
            f" Dashboard: {page}",
            file=sys.stderr,
            flush=True,
        )


def _url_host(host: str) -> str:
    """The host to print in an address: loopback for an address that means every interface."""
    if host in ("0.0.0.0", "::", ""):
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host


__all__ = ["Served", "keyring", "logging_to_stderr", "open_backend", "run_server"]
