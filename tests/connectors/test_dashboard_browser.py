"""The dashboard in a real headless browser (Debian's chromium driven by Playwright) while the real
engine replays a synthetic recording in this process: the page shows live, changing figures."""

from __future__ import annotations

import asyncio
import hashlib
import re
import shutil
import threading
import time
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import orjson
from aiohttp import web
from bytewax.testing import TestingSink, TestingSource, run_main
from playwright.sync_api import Page, expect, sync_playwright

from connectors.http.app import app_runner, make_app
from connectors.http.auth import KeyRing
from connectors.http.backend import MemoryBackend
from connectors.http.dashboard import dashboard
from connectors.local_services import free_port
from connectors.synthetic import generate_events
from flows.api_validation import contract_validator
from flows.personalization import build_flow
from flows.settings import Settings
from operators.rules import STARTER_RULES
from schemas.api import ApiKeySpec
from schemas.items import EndOfInput, RawEvent

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
KEY = "nf_dashboard-browser-test-key"
INGEST_KEY = "nf_dashboard-browser-test-ingest-key"
EVENTS_PER_SECOND = 4000  # 2,000 customers over 5 days: about 110,000 events, 28 s (the test stops it sooner)


def paced_records(stop: threading.Event) -> Iterator[RawEvent | EndOfInput]:
    """A synthetic recording's events as a file source reads them, at a steady pace (so the dashboard
    sees a live stream, not a replay over in two seconds), ending early when ``stop`` is set."""
    started, line = time.monotonic(), 0
    for line, event in enumerate(generate_events(customers=2000, days=5, seed=11), start=1):
        if line % 200 == 0:
            ahead = line / EVENTS_PER_SECOND - (time.monotonic() - started)
            if stop.wait(max(0.0, ahead)):
                break
        yield RawEvent(line, {"file": "synthetic.jsonl", "line": line}, orjson.dumps(event), arrived=time.time())
    yield EndOfInput(line)


class Replay:
    """The engine replaying the paced recording in a background thread of this process."""

    def __init__(self, folder: Path) -> None:
        self.stop = threading.Event()
        self.outputs: list = []
        rules = folder / "rules.yaml"  # the starter rules with a global holdout: the experiments table fills
        shutil.copy(STARTER_RULES.with_name("offers.yaml"), folder)  # the offers they name
        rules.write_text(STARTER_RULES.read_text() + '\nexperiments:\n  holdout: {share: 0.2, salt: "dashboard"}\n')
        source = TestingSource(paced_records(self.stop), batch_size=200)
        settings = Settings(out=folder / "out", rules=rules)
        flow = build_flow(settings, source=source, sink=TestingSink(self.outputs))
        self.thread = threading.Thread(target=run_main, args=(flow,), name="replay", daemon=True)

    def __enter__(self) -> Replay:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=30)
        assert not self.thread.is_alive(), "the replay ends when told to"


class Server:
    """The API with the dashboard over this process's metrics, served on a free loopback port by an event
    loop in its own thread; it can be stopped and started again on the same port."""

    def __init__(self, keys: KeyRing) -> None:
        self.keys = keys
        self.port = free_port()
        self.loop = asyncio.new_event_loop()
        self.runner: web.AppRunner | None = None
        self.thread = threading.Thread(target=self.loop.run_forever, name="dashboard-server", daemon=True)

    def __enter__(self) -> Server:
        self.thread.start()
        self.start()
        return self

    def start(self) -> None:
        self.runner = app_runner(make_app(MemoryBackend(), contract_validator(), self.keys, extra=[dashboard()]))
        asyncio.run_coroutine_threadsafe(self._start(self.runner), self.loop).result(timeout=10)

    async def _start(self, runner: web.AppRunner) -> None:
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", self.port).start()

    def stop(self) -> None:
        """Stop serving (open dashboard streams are ended, not waited for)."""
        if self.runner is not None:
            asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(timeout=15)
            self.runner = None

    def __exit__(self, *exc: object) -> None:
        self.stop()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)

    def url(self, fragment: str = "") -> str:
        return f"http://127.0.0.1:{self.port}/dashboard{fragment}"


def viewed() -> dict:
    """A valid event, dated now."""
    now = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    props = {"product_id": "p1"}
    return {
        "type": "track",
        "event": "Product Viewed",
        "userId": "u1",
        "messageId": "dashboard-1",
        "timestamp": now,
        "properties": props,
    }


def post_events(server: Server, events: list[dict]) -> dict:
    """POST the events to the API with the ingest key; the answer's counts."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{server.port}/v1/events",
        data=orjson.dumps({"batch": events}),
        headers={"Authorization": f"Bearer {INGEST_KEY}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        answer = orjson.loads(response.read())
    return {status: answer[status] for status in ("accepted", "rejected", "failed")}


def number(page: Page, testid: str) -> float:
    """A figure of the page as a number (``1,234`` and ``12.5`` are read; ``–`` is not a number)."""
    text = page.get_by_test_id(testid).inner_text()
    assert re.fullmatch(r"[\d,]+(\.\d+)?", text), f"{testid} shows {text!r}"
    return float(text.replace(",", ""))


def test_the_dashboard_shows_a_live_replay_reconnects_and_refuses_a_wrong_key(tmp_path):
    assert Path(CHROMIUM).exists(), "Debian's chromium is needed: `make services-deps` installs it"
    keys = KeyRing(
        [
            ApiKeySpec(name="viewer", sha256=hashlib.sha256(KEY.encode()).hexdigest(), scopes=["read"]),
            ApiKeySpec(name="till", sha256=hashlib.sha256(INGEST_KEY.encode()).hexdigest(), scopes=["ingest"]),
        ]
    )
    with Replay(tmp_path) as replay, Server(keys) as server, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(server.url(f"#key={KEY}"))
            expect(page.get_by_test_id("status")).to_have_attribute("data-state", "live", timeout=20_000)
            assert KEY not in page.evaluate("location.href"), "the key is taken out of the address bar"
            assert page.evaluate("sessionStorage.length") == 1, "and kept for this tab only"

            expect(page.get_by_test_id("events-rate")).not_to_have_text(re.compile(r"^(–|0\.0)$"), timeout=20_000)
            expect(page.get_by_test_id("decisions-total")).not_to_have_text(re.compile(r"^(–|0)$"), timeout=20_000)
            first = {name: number(page, name) for name in ("events-rate", "events-total", "decisions-total")}
            page.wait_for_timeout(2500)
            second = {name: number(page, name) for name in ("events-rate", "events-total", "decisions-total")}
            assert first["events-rate"] > 0 and second["events-rate"] > 0
            assert second["events-total"] > first["events-total"], "the figures move with the replay"
            assert second["decisions-total"] >= first["decisions-total"] > 0
            assert second != first
            assert number(page, "customers") > 0, "the engine's customers in state"

            expect(page.get_by_test_id("audience-row").first).to_be_visible(timeout=20_000)
            audiences = page.get_by_test_id("audience-row").all_inner_texts()
            assert any(row.startswith("new_customers") for row in audiences), audiences
            assert page.get_by_test_id("channel-row").count() >= 1
            expect(page.get_by_test_id("experiment-row").first).to_be_visible(timeout=20_000)
            arms = page.get_by_test_id("experiment-row").all_inner_texts()
            assert {row.split()[1] for row in arms} == {"control", "treated"}, arms
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=tmp_path / "dashboard.png", full_page=True)
            shutil.copyfile(tmp_path / "dashboard.png", ARTIFACTS / "dashboard.png")

            before = {name: number(page, name) for name in ("api-accepted", "api-rejected")}
            taken = post_events(server, [viewed(), {"type": "track"}])
            assert taken == {"accepted": 1, "rejected": 1, "failed": 0}, taken
            for name in before:
                page.wait_for_function(
                    "([id, n]) => Number(document.getElementById(id).textContent.replaceAll(',', '')) > n",
                    arg=[name, before[name]],
                    timeout=20_000,
                )

            server.stop()
            status = page.get_by_test_id("status")
            expect(status).to_have_attribute("data-state", "reconnecting", timeout=20_000)
            server.start()
            expect(status).to_have_attribute("data-state", "live", timeout=20_000)
            assert number(page, "events-total") >= second["events-total"], "back with the same key, no prompt"

            stranger = browser.new_context().new_page()
            stranger.goto(server.url("#key=nf_not-a-key"))
            expect(stranger.get_by_test_id("status")).to_have_attribute("data-state", "unauthorized", timeout=20_000)
            expect(stranger.get_by_test_id("status")).to_contain_text("unauthorized")
            expect(stranger.get_by_test_id("key-form")).to_be_visible()
            expect(stranger.get_by_test_id("events-total")).to_have_text("–")
            stranger.get_by_test_id("key-input").fill(KEY)  # the right key, typed in
            stranger.get_by_test_id("key-input").press("Enter")
            expect(stranger.get_by_test_id("status")).to_have_attribute("data-state", "live", timeout=20_000)
            expect(stranger.get_by_test_id("key-form")).to_be_hidden()
        finally:
            browser.close()
    assert replay.outputs, "the engine produced its outputs"
