"""Engine settings: one frozen object, read from ``NUDGEFLOW_*`` environment variables at the entry point."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal

import phonenumbers
import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator

from flows.runtime import STATE_STORE
from operators.engine import EngineConfig
from operators.models import ModelMode
from operators.models import files as model_files
from operators.rules import STARTER_RULES
from schemas.erasures import Ledger
from schemas.errors import ConfigurationError
from schemas.items import DEFAULT_MAX_EVENT_BYTES
from state.affinity import DAY_MS
from state.btyd import DEFAULT_BTYD, BtydParameters
from state.customer import MINUTE_MS, Lifecycle
from state.reference import load_reference

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
    max_age_days: float = Field(
        365, gt=0, description="events this far before the event time already reached are dead-lettered"
    )
    max_event_bytes: int = Field(DEFAULT_MAX_EVENT_BYTES, ge=256, description="larger events are dead-lettered")
    session_timeout_minutes: float = Field(30, gt=0, description="inactivity that ends a session")
    new_days: int = Field(30, gt=0, description="a customer is 'new' this long after first seen")
    lapse_days: int = Field(60, gt=0, description="no order (or activity) this long makes a customer 'lapsed'")
    clv_horizon_days: float = Field(365, gt=0, description="days ahead that expected_orders and clv look")
    state_ttl_days: int = Field(730, gt=0, description="state of a customer inactive this long is dropped")
    dedupe_per_shard: int = Field(20_000, ge=100, description="message ids remembered per shard for dedupe")
    batch_size: int = Field(1000, ge=1, description="source batch size")
    snapshot_seconds: float = Field(10, gt=0, description="Bytewax epoch when recovering: state snapshot interval")
    progress_seconds: float = Field(10, gt=0, description="progress line interval when stderr is not a terminal")
    models: ModelMode = Field("learn", description="online models: learn from outcomes, score only (frozen), or off")
    model_file: Path | None = Field(None, description="model parameters to start from (a run's models.json)")
    propensity_horizon_days: float = Field(7, gt=0, description="an order this soon after a decision is a success")
    stores: Path | None = Field(None, description="stores: id, time zone, latitude, longitude (CSV or JSONL)")
    products: Path | None = Field(None, description="products: id, category, price (CSV or JSONL)")
    source: Literal["files", "kafka"] = Field("files", description="read recordings (files) or a Kafka topic")
    kafka_bootstrap_servers: str = Field("127.0.0.1:9092", description="Kafka brokers, host:port[,host:port]")
    kafka_security_protocol: str | None = Field(None, description="librdkafka security.protocol (e.g. SASL_SSL)")
    kafka_sasl_mechanism: str | None = Field(None, description="librdkafka sasl.mechanism (e.g. SCRAM-SHA-512)")
    kafka_sasl_username: str | None = Field(None, description="SASL user name")
    kafka_sasl_password: SecretStr | None = Field(None, description="SASL password (never logged)")
    events_topic: str = Field("nudgeflow.events", description="topic the events are read from")
    kafka_poll_ms: float = Field(
        10, ge=1, le=1000, description="a caught-up partition reads again this much later: more, less CPU per event"
    )
    start_from: Literal["earliest", "latest"] = Field(
        "earliest", description="where to start reading when no recovery snapshot says where to resume"
    )
    until_end: bool = Field(False, description="stop at the end of the events topic (as it was at start)")
    topic_prefix: str = Field("nudgeflow.", description="output topic = prefix + stream (triggers.push, ...)")
    create_topics: bool = Field(True, description="create missing output topics at start")
    topic_partitions: int = Field(8, ge=1, description="partitions of output topics the engine creates")
    redis_url: SecretStr | None = Field(None, description="Redis for the live profile store (off when unset)")
    redis_cluster: bool = Field(False, description="the Redis URL names a node of a Redis Cluster")
    redis_prefix: str = Field("nf", description="prefix of every Redis key")
    redis_ttl_days: float | None = Field(None, gt=0, description="expire profiles this long after their last update")
    redis_traits: list[str] = Field([], description="traits copied to Redis profiles (none: personal data stays out)")
    profile_seconds: float = Field(1.0, gt=0, description="changed profiles are sent to Redis at most this often")
    metrics_port: int | None = Field(None, ge=0, le=65535, description="Prometheus /metrics port (+ process id)")
    metrics_host: str = Field(
        "127.0.0.1", min_length=1, description="address /metrics listens on (0.0.0.0: every interface)"
    )
    dashboard_metrics_urls: list[Annotated[str, Field(pattern=r"^https?://")]] = Field(
        [], description="engines' /metrics URLs the dashboard of nudgeflow serve sums (none: its own process's)"
    )
    erasure_ledger: Path | None = Field(
        None, description="erasure ledger file runs on recordings read first and add to (default: OUT/erasures.jsonl)"
    )
    phone_region: str = Field(
        "US", description="region (ISO 3166 alpha-2) of a national phone number when the customer's country is unknown"
    )
    recovery_dir: Path | None = Field(None, description="Bytewax recovery store (off when unset)")
    recovery_partitions: int = Field(1, ge=1, description="recovery store partitions created when it is new")
    backup_seconds: float = Field(60, ge=0, description="how long superseded snapshots are kept")
    api_host: str = Field("127.0.0.1", min_length=1, description="address nudgeflow serve listens on")
    api_port: int = Field(8080, ge=0, le=65535, description="port nudgeflow serve listens on")
    api_keys_file: Path | None = Field(None, description="API keys file (YAML: names, SHA-256 of the keys, scopes)")
    api_keys: str | None = Field(
        None, description="API keys as name:scope+scope:sha256[,...] (with the keys file's, if any)"
    )
    api_max_body_bytes: int = Field(1 << 20, ge=1024, description="largest request body the API takes (inflated)")
    api_max_batch: int = Field(1000, ge=1, description="most events in one POST /v1/events")
    webhooks: Path | None = Field(None, description="webhook destinations file (YAML; off when unset)")

    def engine_config(
        self, snapshots: bool = False, source_partitions: int = 1, profiles: bool = False, erased: Ledger | None = None
    ) -> EngineConfig:
        initial_models = model_files.read(self.model_file) if self.model_file else None
        return EngineConfig(
            lateness_ms=int(self.lateness_minutes * MINUTE_MS),
            max_skew_ms=int(self.max_skew_minutes * MINUTE_MS),
            max_age_ms=int(self.max_age_days * DAY_MS),
            lifecycle=Lifecycle(
                new_days=self.new_days,
                lapse_days=self.lapse_days,
                session_timeout_ms=int(self.session_timeout_minutes * MINUTE_MS),
                btyd=self._btyd(initial_models),
                clv_horizon_days=self.clv_horizon_days,
            ),
            state_ttl_ms=self.state_ttl_days * DAY_MS,
            dedupe_per_shard=self.dedupe_per_shard,
            source_partitions=source_partitions,
            snapshots=snapshots,
            state_store=self.recovery_dir / STATE_STORE if snapshots and self.recovery_dir is not None else None,
            profile_ms=int(self.profile_seconds * 1000) if profiles else None,
            models=self.models,
            initial_models=initial_models,
            propensity_horizon_ms=int(self.propensity_horizon_days * DAY_MS),
            reference=load_reference(self.stores, self.products) if self.stores or self.products else None,
            erased=erased or {},
            phone_region=self.phone_region,
        )

    def _btyd(self, models: dict[str, Any] | None) -> BtydParameters:
        """The buy-till-you-die parameters of the model file's ``clv`` entry (``nudgeflow fit``), else
        the defaults."""
        entry = (models or {}).get("clv")
        return BtydParameters.from_model_file(entry, f"model file {self.model_file}") if entry else DEFAULT_BTYD

    @field_validator("phone_region")
    @classmethod
    def _known_region(cls, region: str) -> str:
        if region.upper() not in phonenumbers.SUPPORTED_REGIONS:
            raise ValueError(f"{region!r} is not a region code phone numbers are read in (e.g. US, DE, GB)")
        return region.upper()

    def kafka_client_config(self) -> dict[str, Any]:
        """librdkafka settings shared by consumers and producers (security included)."""
        config: dict[str, Any] = {}
        if self.kafka_security_protocol:
            config["security.protocol"] = self.kafka_security_protocol
        if self.kafka_sasl_mechanism:
            config["sasl.mechanism"] = self.kafka_sasl_mechanism
        if self.kafka_sasl_username:
            config["sasl.username"] = self.kafka_sasl_username
        if self.kafka_sasl_password is not None:
            config["sasl.password"] = self.kafka_sasl_password.get_secret_value()
        return config

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None, **overrides: Any) -> Settings:
        """Settings from the config file named by ``NUDGEFLOW_CONFIG`` (YAML), then ``NUDGEFLOW_<FIELD>``
        variables (lists comma-separated), then ``overrides``."""
        environ = dict(os.environ if environ is None else environ)
        values: dict[str, Any] = {}
        lines: dict[str, int] = {}
        config_file = environ.get(ENV_PREFIX + "CONFIG")
        if config_file:
            values, lines = _read_config_file(Path(config_file))
        for name in cls.model_fields:
            raw = environ.get(ENV_PREFIX + name.upper())
            if raw is not None:
                values[name] = raw.split(",") if name in LIST_FIELDS else raw
                lines.pop(name, None)
        values.update({k: v for k, v in overrides.items() if v is not None})
        try:
            return cls.model_validate(values)
        except ValidationError as err:
            raise ConfigurationError(f"invalid settings: {_problems(err, config_file, lines)}") from None


LIST_FIELDS = frozenset({"input", "redis_traits", "dashboard_metrics_urls"})


def _read_config_file(path: Path) -> tuple[dict[str, Any], dict[str, int]]:
    """The settings in a YAML file, and the line of each (for error messages)."""
    try:
        document = yaml.compose(path.read_text())
    except FileNotFoundError:
        raise ConfigurationError(f"config file {path} does not exist") from None
    except yaml.YAMLError as err:
        raise ConfigurationError(f"config file {path}: not valid YAML: {err}") from None
    if document is None:
        return {}, {}
    if not isinstance(document, yaml.MappingNode):
        line = document.start_mark.line + 1
        raise ConfigurationError(f"config file {path}, line {line}: expected a mapping of settings")
    values = yaml.safe_load(path.read_text())
    lines = {key.value: key.start_mark.line + 1 for key, _ in document.value if isinstance(key, yaml.ScalarNode)}
    return values, lines


def _problems(err: ValidationError, config_file: str | None, lines: dict[str, int]) -> str:
    problems = []
    for e in err.errors():
        field = ".".join(map(str, e["loc"]))
        top = str(e["loc"][0]) if e["loc"] else ""
        if config_file and top in lines:
            problems.append(f"{config_file}, line {lines[top]}, {field}: {e['msg']}")
        else:
            problems.append(f"{ENV_PREFIX}{field.upper()}: {e['msg']}")
    return "; ".join(problems)
