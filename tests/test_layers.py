"""Imports only point down: the packages form floors, and none imports from a floor above it."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("schemas", "state", "operators", "connectors", "flows")
MAY_IMPORT = {
    "schemas": {"schemas"},  # the ground floor: item types, records, metric definitions, errors
    "state": {"state", "schemas"},
    "operators": {"operators", "state", "schemas"},
    "connectors": {"connectors", "state", "schemas"},
    "flows": set(PACKAGES),  # the wiring: anything
}


def imported_packages(source: Path) -> set[str]:
    """The first-party packages a module imports (at its top or inside functions)."""
    found = set()
    for node in ast.walk(ast.parse(source.read_text(), str(source))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        found.update(name.split(".")[0] for name in names if name.split(".")[0] in PACKAGES)
    return found


@pytest.mark.parametrize("package", PACKAGES)
def test_a_package_imports_only_from_its_own_floor_or_below(package):
    wrong = {}
    for source in sorted((REPO / package).rglob("*.py")):
        above = imported_packages(source) - MAY_IMPORT[package]
        if above:
            wrong[str(source.relative_to(REPO))] = sorted(above)
    assert not wrong, f"imports from a higher floor: {wrong}"


def test_relative_imports_are_not_used_so_the_check_sees_every_import():
    relative = [
        str(source.relative_to(REPO))
        for package in PACKAGES
        for source in (REPO / package).rglob("*.py")
        for node in ast.walk(ast.parse(source.read_text()))
        if isinstance(node, ast.ImportFrom) and node.level > 0
    ]
    assert not relative


def test_starting_the_command_line_loads_neither_river_nor_scipy():
    """River loads SciPy, about a second of CPU: it is imported with the first model, so commands
    and runs without models start without it."""
    code = "import sys, flows.cli; print(sorted(name for name in ('river', 'scipy') if name in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
