"""Where the /metrics endpoint listens: loopback unless told otherwise."""

from __future__ import annotations

import urllib.request

import pytest
from prometheus_client import CollectorRegistry, Counter

from connectors.local_services import free_port
from flows.metrics import serve
from flows.settings import Settings


def _scrape(host: str, port: int) -> str:
    with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=5) as response:
        return response.read().decode()


def _registry() -> CollectorRegistry:
    registry = CollectorRegistry()
    Counter("nudgeflow_probe", "probe", registry=registry).inc()
    return registry


def test_metrics_listen_on_loopback_only_by_default() -> None:
    port = free_port()
    serve(port, Settings().metrics_host, registry=_registry())
    assert "nudgeflow_probe_total 1.0" in _scrape("127.0.0.1", port)
    # another address of this host (127.0.0.2 is routed to the loopback interface too) is not served
    with pytest.raises(OSError):
        _scrape("127.0.0.2", port)


def test_metrics_host_0000_listens_on_every_interface() -> None:
    port = free_port()
    serve(port, "0.0.0.0", registry=_registry())
    assert "nudgeflow_probe_total 1.0" in _scrape("127.0.0.2", port)
