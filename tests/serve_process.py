"""``nudgeflow serve`` run as a process for tests: started on a free port, its stderr read as it comes."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from connectors.local_services import free_port
from schemas.api import key_entry, new_key

REPO = Path(__file__).resolve().parents[1]
START_SECONDS = 60.0


class Server:
    """A ``nudgeflow serve`` process; its stderr is read as it comes (so it never blocks on a full pipe)."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        self.port = free_port()
        clean = {k: v for k, v in os.environ.items() if not k.startswith("NUDGEFLOW_")}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "flows.cli", "serve", "--port", str(self.port), *args],
            cwd=REPO,
            env={**clean, **env},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stderr is not None
        for raw in self.process.stderr:
            self.lines.append(raw.decode(errors="replace"))

    @property
    def stderr(self) -> str:
        return "".join(self.lines)

    def wait_for(self, pattern: str, timeout: float = START_SECONDS) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if found := re.search(pattern, self.stderr):
                return found
            if self.process.poll() is not None:
                self._reader.join(5)
                raise AssertionError(f"serve exited with {self.process.returncode}:\n{self.stderr}")
            time.sleep(0.05)
        raise AssertionError(f"no {pattern!r} within {timeout} s:\n{self.stderr}")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def terminate(self) -> float:
        """SIGTERM; the seconds it took to exit (it must exit with 0)."""
        started = time.monotonic()
        self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout=60)
        took = time.monotonic() - started
        self._reader.join(5)
        assert code == 0, self.stderr
        return took

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)


@contextlib.contextmanager
def serving(args: list[str], env: dict[str, str]) -> Iterator[Server]:
    """A ``nudgeflow serve`` process with ``args`` and ``env`` (no other ``NUDGEFLOW_*`` setting), killed
    at the end if still running."""
    server = Server(args, env)
    try:
        yield server
    finally:
        server.kill()


def front_env(services: dict[str, str], topic: str, prefix: str) -> dict[str, str]:
    """The settings of a Kafka front on the session's services: its events topic and Redis key prefix."""
    return {
        "NUDGEFLOW_KAFKA_BOOTSTRAP_SERVERS": services["KAFKA_BOOTSTRAP_SERVERS"],
        "NUDGEFLOW_EVENTS_TOPIC": topic,
        "NUDGEFLOW_REDIS_URL": services["REDIS_URL"],
        "NUDGEFLOW_REDIS_PREFIX": prefix,
    }


def keys_file(folder: Path, **scopes: list[str]) -> tuple[Path, dict[str, str]]:
    """A keys file with one new key per name in ``scopes`` (its scopes); the keys by name."""
    secrets = {name: new_key() for name in scopes}
    entries = "".join(key_entry(name, scopes[name], secret).removeprefix("keys:\n") for name, secret in secrets.items())
    path = folder / "keys.yaml"
    path.write_text("keys:\n" + entries)
    return path, secrets
