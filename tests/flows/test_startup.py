"""What a run pays for before its first event: a replay imports only what it uses."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson

REPO = Path(__file__).resolve().parents[2]
GOLDEN = Path(__file__).parent / "golden"
UNUSED_BY_A_REPLAY = (
    "aiohttp",  # the services' clients and servers
    "confluent_kafka",
    "redis",
    "tqdm",  # produce's progress bar
    "scipy.stats._stats_py",  # what River imports and the models never run (operators/models/libraries.py)
    "river.tree.hoeffding_tree",
)


def test_a_replay_gives_the_golden_outputs_without_importing_the_services_clients_or_unused_libraries(tmp_path):
    out = tmp_path / "out"
    code = (
        "import sys, orjson\nfrom flows.cli import main\n"
        f"status = main(['replay', {str(GOLDEN / 'stream.jsonl.gz')!r}, '--out', {str(out)!r}, '--quiet'])\n"
        f"print(orjson.dumps([status, [m for m in {UNUSED_BY_A_REPLAY!r} if m in sys.modules]]).decode())"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    status, imported = orjson.loads(done.stdout.splitlines()[-1])
    assert (status, imported) == (0, [])
    expected = GOLDEN / "expected"
    assert {p.name: p.read_bytes() for p in out.iterdir()} == {p.name: p.read_bytes() for p in expected.iterdir()}
