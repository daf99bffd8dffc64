"""The receiver example of docs/webhooks.md, served by a real aiohttp server, takes what the sink sends
and refuses a forged request."""

from __future__ import annotations

import asyncio
import re
import threading
import time
from pathlib import Path

import aiohttp
from aiohttp import web
from test_webhook_sink import ListDeadLetters, decision, destination, partition
from webhook_receiver import new_secret

from connectors.local_services import free_port

DOC = (Path(__file__).resolve().parents[2] / "docs" / "webhooks.md").read_text()


def test_the_documented_receiver_verifies_and_dedupes_what_the_sink_sends(monkeypatch):
    (example,) = [block for block in re.findall(r"```python\n(.*?)```", DOC, re.S) if "Webhook(" in block]
    secret = new_secret()
    monkeypatch.setenv("PUSH_WEBHOOK_SECRET", secret)
    namespace: dict = {}
    exec(compile(example, "docs/webhooks.md", "exec"), namespace)  # the doc's own code, as written
    acted: list[str] = []
    original = namespace["seen"]

    class Recording(set):
        def add(self, webhook_id: str) -> None:
            acted.append(webhook_id)
            super().add(webhook_id)

    namespace["seen"] = Recording(original)
    port = free_port()
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    app = web.Application()
    app.router.add_post("/hooks", namespace["receive"])
    runner = web.AppRunner(app, access_log=None)

    def serve() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(runner.setup())
        loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", port).start())
        ready.set()
        loop.run_forever()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    assert ready.wait(10)
    try:
        url = f"http://127.0.0.1:{port}/hooks"
        dead = ListDeadLetters()
        for _ in range(2):  # the second engine re-sends the same decisions, as after a restart
            sink = partition(destination(url, secret, max_attempts=1), dead)
            sink.write_batch([decision(n) for n in range(3)])
            sink.close()
        forged = asyncio.run_coroutine_threadsafe(_post_forged(url), loop).result(10)
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
    assert not dead.records, "every request was answered 2xx"
    assert sorted(acted) == ["d0000", "d0001", "d0002"], "acted on once each, though each came twice"
    assert forged == 401


async def _post_forged(url: str) -> int:
    headers = {"webhook-id": "x", "webhook-timestamp": str(int(time.time())), "webhook-signature": "v1,AAAA"}
    async with aiohttp.ClientSession() as session, session.post(url, data=b"{}", headers=headers) as response:
        return response.status
