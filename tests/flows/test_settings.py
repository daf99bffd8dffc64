"""Settings: environment, config file with line numbers in errors, secrets kept out of output."""

from __future__ import annotations

import pytest

from connectors.redis_store import mask_url
from flows.settings import Settings


def test_environment_overrides_the_config_file_and_lists_are_comma_separated(tmp_path):
    config = tmp_path / "nudgeflow.yaml"
    config.write_text("shards: 8\nevents_topic: from-file\nredis_traits: [city]\n")
    environ = {"NUDGEFLOW_EVENTS_TOPIC": "from-env", "NUDGEFLOW_REDIS_TRAITS": "city,country"}
    settings = Settings.from_env({"NUDGEFLOW_CONFIG": str(config), **environ})
    assert (settings.shards, settings.events_topic, settings.redis_traits) == (8, "from-env", ["city", "country"])


def test_a_bad_config_file_names_the_file_the_line_and_the_key(tmp_path):
    config = tmp_path / "nudgeflow.yaml"
    config.write_text("shards: 8\n\nstart_from: yesterday\nmetrics_port: -1\n")
    with pytest.raises(ValueError) as err:
        Settings.from_env({"NUDGEFLOW_CONFIG": str(config)})
    message = str(err.value)
    assert f"{config}, line 3, start_from:" in message and f"{config}, line 4, metrics_port:" in message


def test_unknown_keys_and_non_mappings_are_refused(tmp_path):
    config = tmp_path / "nudgeflow.yaml"
    config.write_text("shard: 8\n")
    with pytest.raises(ValueError, match="line 1, shard: Extra inputs are not permitted"):
        Settings.from_env({"NUDGEFLOW_CONFIG": str(config)})
    config.write_text("- 1\n")
    with pytest.raises(ValueError, match="line 1: expected a mapping"):
        Settings.from_env({"NUDGEFLOW_CONFIG": str(config)})


def test_secrets_never_appear_in_settings_errors_or_their_printed_form():
    environ = {
        "NUDGEFLOW_KAFKA_SASL_PASSWORD": "hunter2",
        "NUDGEFLOW_REDIS_URL": "redis://user:hunter2@127.0.0.1:1/0",
        "NUDGEFLOW_SHARDS": "many",
    }
    with pytest.raises(ValueError) as err:
        Settings.from_env(environ)
    assert "hunter2" not in str(err.value)
    settings = Settings.from_env({**environ, "NUDGEFLOW_SHARDS": "4"})
    assert "hunter2" not in repr(settings) and "hunter2" not in str(settings.model_dump())
    assert settings.kafka_client_config()["sasl.password"] == "hunter2", "still usable by the client"
    assert "hunter2" not in mask_url(settings.redis_url.get_secret_value()), "what the Redis store logs"


def test_the_age_limit_of_events_reaches_the_engine_in_days():
    assert Settings().engine_config().max_age_ms == 365 * 86_400_000
    assert Settings.from_env({"NUDGEFLOW_MAX_AGE_DAYS": "2.5"}).engine_config().max_age_ms == 216_000_000
    with pytest.raises(ValueError, match="NUDGEFLOW_MAX_AGE_DAYS"):
        Settings.from_env({"NUDGEFLOW_MAX_AGE_DAYS": "0"})
