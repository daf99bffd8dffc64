"""A real aiohttp webhook receiver on 127.0.0.1, run in its own thread, that records every request."""

from __future__ import annotations

import asyncio
import base64
import os
import threading
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web

from connectors.local_services import free_port


@dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float  # monotonic arrival time


Behaviour = Callable[[str, int], Awaitable[web.Response]]
"""How a path answers: (webhook-id, attempt number of that id on that path, from 1) -> response."""


def new_secret() -> str:
    return "whsec_" + base64.b64encode(os.urandom(32)).decode()


async def ok(webhook_id: str, attempt: int) -> web.Response:
    return web.Response(status=204)


class Receiver:
    """Answers ``POST /<path>`` as ``behaviours[path]`` says; ``requests`` lists what came, in order."""

    def __init__(self, behaviours: dict[str, Behaviour], port: int | None = None) -> None:
        self.behaviours = behaviours
        self.port = port or free_port()
        self.requests: list[Received] = []
        self._attempts: dict[tuple[str, str], int] = defaultdict(int)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._runner: web.AppRunner | None = None

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}/{path}"

    def __enter__(self) -> Receiver:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)  # type: ignore[union-attr]
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def on(self, path: str) -> list[Received]:
        return [r for r in self.requests if r.path == path]

    def wait_for(self, done: Callable[[Receiver], bool], timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while not done(self):
            assert time.monotonic() < deadline, f"the receiver did not get what was expected within {timeout} s"
            time.sleep(0.05)

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_post("/{path}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def _handle(self, request: web.Request) -> web.Response:
        path = request.match_info["path"]
        body = await request.read()
        webhook_id = request.headers.get("webhook-id", "")
        self.requests.append(Received(path, dict(request.headers), body, time.monotonic()))
        self._attempts[(path, webhook_id)] += 1
        return await self.behaviours[path](webhook_id, self._attempts[(path, webhook_id)])
