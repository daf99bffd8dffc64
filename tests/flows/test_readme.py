"""The README documents every setting and every metric the engine has."""

from __future__ import annotations

from pathlib import Path

from prometheus_client import REGISTRY

import schemas.metrics  # noqa: F401  (registers the metrics)
from flows.settings import Settings

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def test_every_setting_is_in_the_readme_with_its_description():
    for name, field in Settings.model_fields.items():
        row = next((line for line in README.splitlines() if line.startswith(f"| `NUDGEFLOW_{name.upper()}` |")), "")
        assert field.description in row, f"NUDGEFLOW_{name.upper()} is not documented"


def test_every_metric_is_in_the_readme():
    names = {family.name for family in REGISTRY.collect() if family.name.startswith("nudgeflow_")}
    assert names
    for name in names:
        documented = name + "_total" if f"`{name}_total`" in README else name
        assert f"`{documented}`" in README, f"{name} is not documented"


def test_every_feature_is_in_the_rules_catalogue():
    from state.catalogue import FEATURES

    catalogue = (Path(__file__).resolve().parents[2] / "docs" / "rules.md").read_text()
    for name, feature in FEATURES.items():
        assert f"| `{name}` | {feature.doc} |" in catalogue, f"{name} is not in docs/rules.md"
