"""Serving the Prometheus metrics of one engine process (defined in :mod:`schemas.metrics`).

Each engine process serves its own ``/metrics`` (``NUDGEFLOW_METRICS_PORT``, plus the process
id when several processes share a host); Prometheus scrapes every process and sums with
``sum by (...)``. Counters are updated in batches by the operators and sinks, not per event.
"""

from __future__ import annotations

from prometheus_client import REGISTRY, CollectorRegistry, start_http_server

import schemas.metrics  # noqa: F401  (registers the metrics served)


def serve(port: int, host: str = "127.0.0.1", registry: CollectorRegistry = REGISTRY) -> None:
    """Serve ``/metrics`` on ``host`` (loopback by default; ``0.0.0.0``: every interface) at ``port``."""
    start_http_server(port, addr=host, registry=registry)
