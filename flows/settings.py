"""Engine settings: one frozen object, read from ``NUDGEFLOW_*`` environment variables at the entry point."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from operators.engine import EngineConfig
from operators.parse import DEFAULT_MAX_EVENT_BYTES
from operators.rules import STARTER_RULES
from state.affinity import DAY_MS
from state.customer import MINUTE_MS, Lifecycle

REPO = Path(__file__).resolve().parent.parent
SAMPLE_STREAM = REPO / "samples" / "sample.jsonl.gz"
ENV_PREFIX = "NUDGEFLOW_"


class Settings(BaseModel):
    """Every setting, its default, and what it does (see the README's settings table)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    input: list[Path] = Field([SAMPLE_STREAM], description="JSONL recordings to read")
    out: Path = Field(Path("out/run"), description="output folder, created empty")
    replace_output: bool = Field(False, description="replace a non-empty output folder")
    rules: Path = Field(STARTER_RULES, description="rule file (YAML)")
    shards: int = Field(16, ge=1, le=1024, description="customer shards (fixed: changing it re-keys state)")
    lateness_minutes: float = Field(5, ge=0, description="allowed lateness of the event-time clock")
    max_skew_minutes: float = Field(60, gt=0, description="events this far after their receivedAt are dead-lettered")
    max_event_bytes: int = Field(DEFAULT_MAX_EVENT_BYTES, ge=256, description="larger events are dead-lettered")
    session_timeout_minutes: float = Field(30, gt=0, description="inactivity that ends a session")
    new_days: int = Field(30, gt=0, description="a customer is 'new' this long after first seen")
    lapse_days: int = Field(60, gt=0, description="no order (or activity) this long makes a customer 'lapsed'")
    state_ttl_days: int = Field(730, gt=0, description="state of a customer inactive this long is dropped")
    dedupe_per_shard: int = Field(20_000, ge=100, description="message ids remembered per shard for dedupe")
    batch_size: int = Field(1000, ge=1, description="source batch size")
    epoch_seconds: float = Field(10, gt=0, description="Bytewax epoch (snapshot) interval")

    def engine_config(self, snapshots: bool = False, source_partitions: int = 1) -> EngineConfig:
        return EngineConfig(
            lateness_ms=int(self.lateness_minutes * MINUTE_MS),
            max_skew_ms=int(self.max_skew_minutes * MINUTE_MS),
            lifecycle=Lifecycle(
                new_days=self.new_days,
                lapse_days=self.lapse_days,
                session_timeout_ms=int(self.session_timeout_minutes * MINUTE_MS),
            ),
            state_ttl_ms=self.state_ttl_days * DAY_MS,
            dedupe_per_shard=self.dedupe_per_shard,
            source_partitions=source_partitions,
            snapshots=snapshots,
        )

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None, **overrides: Any) -> Settings:
        """Settings from ``NUDGEFLOW_<FIELD>`` variables (``INPUT`` is a comma-separated list), then overrides."""
        environ = dict(os.environ if environ is None else environ)
        values: dict[str, Any] = {}
        for name in cls.model_fields:
            raw = environ.get(ENV_PREFIX + name.upper())
            if raw is not None:
                values[name] = raw.split(",") if name == "input" else raw
        values.update({k: v for k, v in overrides.items() if v is not None})
        try:
            return cls.model_validate(values)
        except ValidationError as err:
            problems = "; ".join(
                f"{ENV_PREFIX}{'.'.join(map(str, e['loc'])).upper()}: {e['msg']}" for e in err.errors()
            )
            raise ValueError(f"invalid settings: {problems}") from None
