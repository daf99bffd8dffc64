"""Static checks of the deployment files: docker-compose.yml, the Dockerfile, Prometheus and Grafana.

Nothing is started: the files are parsed and checked against the engine's settings, metrics and
output streams, so a renamed setting, metric or topic fails here rather than at start-up.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import REGISTRY
from prometheus_client.metrics import MetricWrapperBase

import schemas.metrics as metrics
from flows.cli import _parser
from flows.personalization import ledger_topic, output_topics
from flows.settings import ENV_PREFIX, Settings
from schemas.streams import KAFKA_STREAMS

REPO = Path(__file__).resolve().parent.parent
COMPOSE = REPO / "docker-compose.yml"
DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
PROMETHEUS = REPO / "deploy" / "prometheus.yml"
GRAFANA = REPO / "deploy" / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "nudgeflow.json"
DATASOURCES = GRAFANA / "provisioning" / "datasources" / "prometheus.yml"
DASHBOARD_PROVIDERS = GRAFANA / "provisioning" / "dashboards" / "dashboards.yml"
MAKEFILE = REPO / "Makefile"
NATIVE_CRATE = REPO / "state" / "native"
NATIVE_MODULE = "state._native"

ENGINE = "engine"
CONFIG_FILE_VARIABLE = ENV_PREFIX + "CONFIG"  # names a YAML file of settings (Settings.from_env)
# Every stream the engine writes to Kafka, as ``topic_prefix + stream``.
OUTPUT_STREAMS = set(KAFKA_STREAMS)
# An exact version in the tag (``7.4.1``, ``v3.5.0``, ``3.11.13-slim-bookworm``), or a digest.
PINNED_TAG = re.compile(r"v?\d+\.\d+\.\d+([.+-][\w.+-]*)?")
PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless", "offset"}


# --- helpers -------------------------------------------------------------------------------------


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = load_yaml(COMPOSE)
    assert isinstance(data, dict) and isinstance(data.get("services"), dict), "no services in docker-compose.yml"
    return data


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


@pytest.fixture(scope="module")
def engine_env(services: dict[str, dict[str, Any]]) -> dict[str, str]:
    assert ENGINE in services, f"no {ENGINE!r} service"
    return environment(services[ENGINE])


def environment(service: dict[str, Any]) -> dict[str, str]:
    """A service's environment (mapping or ``KEY=VALUE`` list syntax) as strings, like Compose passes it."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    out = {}
    for key, value in env.items():
        assert not isinstance(value, bool), f"{key}: Compose needs booleans quoted as strings"
        out[key] = "" if value is None else str(value)
    return out


def image_is_pinned(ref: str) -> bool:
    """``name:tag`` with an exact version in the tag, or ``name@sha256:...``; never ``latest`` or no tag."""
    if "@sha256:" in ref:
        return True
    name, _, tag = ref.rpartition(":")
    if not name or "/" in tag:  # no tag (the colon, if any, belonged to a registry port)
        return False
    return tag != "latest" and PINNED_TAG.fullmatch(tag) is not None


def mounts(service: dict[str, Any]) -> list[tuple[str, str, str]]:
    """``(type, source, target)`` of a service's volumes, short or long syntax; type is bind or volume."""
    out = []
    for entry in service.get("volumes") or []:
        if isinstance(entry, dict):
            out.append((entry.get("type", "volume"), str(entry.get("source", "")), entry["target"]))
            continue
        source, target = entry.split(":")[:2]
        kind = "bind" if source.startswith((".", "/", "~")) else "volume"
        out.append((kind, source, target))
    return out


def container_ports(service: dict[str, Any]) -> set[int]:
    """Container ports a service publishes (``ports``) or exposes to other services (``expose``)."""
    found = set()
    for entry in service.get("ports") or []:
        if isinstance(entry, dict):
            found.add(int(entry["target"]))
        else:
            found.add(int(str(entry).split("/")[0].rsplit(":", 1)[-1]))
    found.update(int(str(entry).split("/")[0]) for entry in service.get("expose") or [])
    return found


def command_text(service: dict[str, Any]) -> str:
    command = service.get("command") or ""
    return "\n".join(command) if isinstance(command, list) else command


def native_sources() -> list[Path]:
    """What the compiled module is built from: the crate's manifest, lock file and Rust sources."""
    return [NATIVE_CRATE / "Cargo.toml", NATIVE_CRATE / "Cargo.lock", *sorted((NATIVE_CRATE / "src").rglob("*.rs"))]


def is_build_product(rel: str) -> bool:
    """A file a local build leaves in the source tree (cargo's target/, a compiled module)."""
    return "target" in rel.split("/") or rel.endswith(".so")


def make_database() -> str:
    """The Makefile's rules as make reads them (``make -qp``: nothing is run)."""
    done = subprocess.run(["make", "-qp", "venv"], cwd=REPO, capture_output=True, text=True, check=False)
    return done.stdout


def make_rule(database: str, target: str) -> tuple[list[str], list[str]]:
    """A target's prerequisites (order-only ones after ``|``) and recipe lines, from :func:`make_database`."""
    lines = database.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"{target}:"))
    prerequisites = lines[start].split(":", 1)[1].split()
    recipe = []
    for line in lines[start + 1 :]:
        if line.startswith("#"):
            continue
        if not line.startswith("\t"):
            break
        recipe.append(line.strip())
    return prerequisites, recipe


def dockerfile_stages() -> list[list[tuple[str, str]]]:
    """The Dockerfile's instructions, one list per stage (each starting with its FROM)."""
    stages: list[list[tuple[str, str]]] = []
    for kind, args in dockerfile_instructions():
        if kind == "FROM":
            stages.append([])
        stages[-1].append((kind, args))
    return stages


def dockerfile_instructions() -> list[tuple[str, str]]:
    """``(INSTRUCTION, arguments)`` of the Dockerfile, continuation lines joined, comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for line in DOCKERFILE.read_text().splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        full = (pending + stripped).strip()
        pending = ""
        keyword, _, args = full.partition(" ")
        out.append((keyword.upper(), args.strip()))
    return out


def copy_sources(args: str) -> list[str]:
    """Sources of a COPY/ADD (shell or JSON form), flags dropped; none for copies from another build stage."""
    words = json.loads(args) if args.startswith("[") else shlex.split(args)
    flags = [w for w in words if w.startswith("--")]
    if any(f.startswith("--from") for f in flags):
        return []
    paths = [w for w in words if not w.startswith("--")]
    assert len(paths) >= 2, f"COPY needs a source and a destination: {args}"
    return paths[:-1]


def dockerignore_regex(pattern: str) -> re.Pattern[str]:
    """A .dockerignore pattern as a regular expression over slash-separated paths of the context."""
    pattern = pattern.strip("/")
    out = ""
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out += "(?:.*/)?"
            i += 3
        elif pattern.startswith("**", i):
            out += ".*"
            i += 2
        elif pattern[i] == "*":
            out += "[^/]*"
            i += 1
        elif pattern[i] == "?":
            out += "[^/]"
            i += 1
        elif pattern[i] == "[":
            end = pattern.index("]", i)
            out += pattern[i : end + 1]
            i = end + 1
        else:
            out += re.escape(pattern[i])
            i += 1
    return re.compile(out)


def ignored(rel: str, patterns: list[str]) -> bool:
    """Whether the build context leaves out ``rel``: the last pattern matching it or a parent folder wins."""
    parts = rel.split("/")
    candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    result = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        regex = dockerignore_regex(pattern.removeprefix("!"))
        if any(regex.fullmatch(c) for c in candidates):
            result = not negate
    return result


def exposed_metric_names() -> dict[str, set[str]]:
    """Every sample name the default registry exposes, with its label names (``le`` for buckets)."""
    # prometheus-client keeps a metric's label names only on the metric object
    labels_of = {m._name: set(m._labelnames) for m in vars(metrics).values() if isinstance(m, MetricWrapperBase)}
    suffixes = {
        "counter": ["_total", "_created"],
        "histogram": ["_bucket", "_sum", "_count", "_created"],
        "summary": ["", "_sum", "_count", "_created"],
        "info": ["_info"],
    }
    names: dict[str, set[str]] = {}
    for family in REGISTRY.collect():
        labels = labels_of.get(family.name, set())
        for suffix in suffixes.get(family.type, [""]):
            names[family.name + suffix] = labels | ({"le"} if suffix == "_bucket" else set())
    return names


def promql_metrics(expr: str) -> tuple[set[str], set[str]]:
    """The metric names an expression selects, and the label names it groups ``by``."""
    grouped = {label.strip() for group in re.findall(r"\bby\s*\(([^)]*)\)", expr) for label in group.split(",")}
    bare = re.sub(r'"(?:[^"\\]|\\.)*"', "", expr)  # strings
    bare = re.sub(r"\{[^}]*\}|\[[^\]]*\]", "", bare)  # label matchers, ranges
    bare = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", bare)
    bare = re.sub(r"\$\w+", "", bare)  # dashboard variables
    names = set()
    for match in re.finditer(r"(?<![\w.$])([A-Za-z_:][\w:]*)\s*(\()?", bare):
        if match.group(2) is None and match.group(1) not in PROMQL_WORDS:
            names.add(match.group(1))
    return names, {label for label in grouped if label}


def dashboard_targets() -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """``(panel, target)`` for every query of the dashboard, rows' nested panels included."""
    dashboard = json.loads(DASHBOARD.read_text())
    panels = []
    for panel in dashboard.get("panels", []):
        panels.append(panel)
        panels.extend(panel.get("panels", []))
    return [(panel, target) for panel in panels for target in panel.get("targets", [])]


# --- docker-compose.yml --------------------------------------------------------------------------


def test_compose_has_no_version_key_and_every_image_is_pinned(compose: dict[str, Any]) -> None:
    assert "version" not in compose, "the Compose spec has no top-level 'version'"
    for name, service in compose["services"].items():
        assert "image" in service or "build" in service, f"{name}: neither image nor build"
        if "image" in service:
            assert image_is_pinned(service["image"]), f"{name}: image {service['image']!r} is not an exact version"


def test_compose_build_context_and_bind_mounts_exist(compose: dict[str, Any]) -> None:
    declared = set(compose.get("volumes") or {})
    for name, service in compose["services"].items():
        if "build" in service:
            build = service["build"]
            build = build if isinstance(build, dict) else {"context": build}
            context = (REPO / build.get("context", ".")).resolve()
            assert context.is_dir(), f"{name}: build context {context} is missing"
            dockerfile = context / build.get("dockerfile", "Dockerfile")
            assert dockerfile.is_file(), f"{name}: {dockerfile} is missing"
        for kind, source, target in mounts(service):
            if kind == "bind":
                assert source.startswith("./"), f"{name}: bind mount {source} is not inside the repository"
                assert (REPO / source).exists(), f"{name}: {source} (mounted at {target}) is missing"
            else:
                assert source in declared, f"{name}: named volume {source!r} is not declared under 'volumes'"


def test_compose_waits_only_on_services_that_can_report(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        depends = service.get("depends_on") or {}
        if isinstance(depends, list):
            depends = {other: {"condition": "service_started"} for other in depends}
        for other, spec in depends.items():
            assert other in services, f"{name} depends on an unknown service {other!r}"
            if spec.get("condition") == "service_healthy":
                assert "healthcheck" in services[other], f"{name} waits for {other} to be healthy: no healthcheck"
            if spec.get("condition") == "service_completed_successfully":
                assert services[other].get("restart", "no") in ("no", False), (
                    f"{other} runs once, so it must not restart"
                )


def test_engine_environment_names_settings_fields(engine_env: dict[str, str]) -> None:
    ours = {key for key in engine_env if key.startswith(ENV_PREFIX)}
    assert ours, "the engine has no NUDGEFLOW_* settings"
    fields = {ENV_PREFIX + name.upper() for name in Settings.model_fields} | {CONFIG_FILE_VARIABLE}
    unknown = sorted(ours - fields)
    assert not unknown, f"not settings fields of flows.settings.Settings: {unknown}"


def test_engine_environment_is_valid_settings(engine_env: dict[str, str]) -> None:
    settings = Settings.from_env(engine_env)
    assert settings.source == "kafka"


def test_the_api_is_a_kafka_front_on_the_engines_services(services: dict[str, dict[str, Any]]) -> None:
    api = services["api"]
    arguments = [*api["entrypoint"], *api["command"]]
    args = _parser().parse_args(arguments[1:])
    assert arguments[0] == "nudgeflow" and args.command.__name__ == "_serve_api" and args.kafka
    settings = Settings.from_env(environment(api))
    engine = Settings.from_env(environment(services[ENGINE]))
    assert (settings.kafka_bootstrap_servers, settings.redis_url) == (
        engine.kafka_bootstrap_servers,
        engine.redis_url,
    ), "the API reads and writes what the engine does"
    assert any(port.endswith(f":{settings.api_port}") for port in api["ports"])
    assert all(url.startswith(f"http://{ENGINE}:{engine.metrics_port}/") for url in settings.dashboard_metrics_urls)


def test_engine_recovery_dir_is_a_volume_created_in_the_image(
    services: dict[str, dict[str, Any]], engine_env: dict[str, str]
) -> None:
    recovery = engine_env["NUDGEFLOW_RECOVERY_DIR"]
    targets = {target for _, _, target in mounts(services[ENGINE])}
    assert recovery in targets, f"the recovery directory {recovery} is not on a volume: snapshots would be lost"
    assert recovery in DOCKERFILE.read_text(), f"the image does not create {recovery} for its user"


def test_prometheus_scrapes_the_engine_metrics_port(
    services: dict[str, dict[str, Any]], engine_env: dict[str, str]
) -> None:
    port = int(engine_env["NUDGEFLOW_METRICS_PORT"])
    config = load_yaml(PROMETHEUS)
    targets = [
        target
        for job in config.get("scrape_configs", [])
        for static in job.get("static_configs", [])
        for target in static.get("targets", [])
    ]
    engine_targets = [t for t in targets if t.rsplit(":", 1)[0] == ENGINE]
    assert engine_targets, f"Prometheus scrapes no {ENGINE} target: {targets}"
    for target in engine_targets:
        assert int(target.rsplit(":", 1)[1]) == port, f"Prometheus scrapes {target}, the engine serves :{port}"
    assert port in container_ports(services[ENGINE]), f"the engine service does not publish port {port}"
    exposed = {a.split("/")[0] for kind, args in dockerfile_instructions() if kind == "EXPOSE" for a in args.split()}
    assert str(port) in exposed, f"the Dockerfile does not EXPOSE {port}"
    prometheus = [s for s in services.values() if str(s.get("image", "")).startswith("prom/prometheus:")]
    assert prometheus, "no Prometheus service"
    mounted = {(REPO / source).resolve() for _, source, _ in mounts(prometheus[0]) if source.startswith("./")}
    assert PROMETHEUS.resolve() in mounted, "deploy/prometheus.yml is not mounted into Prometheus"


def test_kafka_init_creates_every_topic_of_the_engine(
    services: dict[str, dict[str, Any]], engine_env: dict[str, str]
) -> None:
    settings = Settings.from_env(engine_env)
    expected = {settings.events_topic, *output_topics(settings)}
    expected |= {settings.topic_prefix + stream for stream in OUTPUT_STREAMS}
    script = command_text(services["kafka-init"])
    creates = [line for line in script.splitlines() if "kafka-topics.sh" in line and "--create" in line]
    for line in creates:
        assert "--if-not-exists" in line, f"kafka-init fails on a restart: {line.strip()}"
        servers = re.search(r"--bootstrap-server[ =](\S+)", line)
        assert servers and servers.group(1) == engine_env["NUDGEFLOW_KAFKA_BOOTSTRAP_SERVERS"], line.strip()
    created = {m.group(1) for line in creates for m in re.finditer(r"--topic[ =](\S+)", line)}
    missing = sorted(expected - created)
    assert not missing, f"kafka-init does not create {missing}"
    ledger = next(line for line in creates if f"--topic {ledger_topic(settings)} " in line)
    assert "--config cleanup.policy=compact" in ledger, "the erasure ledger must keep every customer's latest record"


# --- Grafana and Prometheus ----------------------------------------------------------------------


def test_dashboard_queries_only_metrics_the_engine_defines() -> None:
    exposed = exposed_metric_names()
    targets = dashboard_targets()
    assert targets, "the dashboard has no queries"
    for panel, target in targets:
        names, grouped = promql_metrics(target["expr"])
        where = f"panel {panel.get('title')!r}: {target['expr']}"
        assert names, f"no metric in {where}"
        unknown = sorted(names - set(exposed))
        assert not unknown, f"{unknown} are not metrics of schemas.metrics ({where})"
        labels = set().union(*(exposed[name] for name in names))
        assert grouped <= labels, f"grouped by {sorted(grouped - labels)}, labels the metrics lack ({where})"


def test_dashboard_uses_the_provisioned_datasource() -> None:
    datasources = load_yaml(DATASOURCES)["datasources"]
    uids = {ds["uid"] for ds in datasources if ds.get("type") == "prometheus"}
    assert len(uids) == 1, f"expected one provisioned Prometheus datasource, got {uids}"
    for panel, target in dashboard_targets():
        for owner in (panel, target):
            datasource = owner.get("datasource")
            assert isinstance(datasource, dict), f"panel {panel.get('title')!r}: no fixed datasource"
            assert datasource.get("uid") in uids, f"panel {panel.get('title')!r}: unknown datasource {datasource}"


def test_grafana_mounts_the_provisioning_and_dashboard_folders(services: dict[str, dict[str, Any]]) -> None:
    grafana = [s for s in services.values() if str(s.get("image", "")).startswith("grafana/grafana:")]
    assert grafana, "no Grafana service"
    binds = {(REPO / source).resolve(): target for kind, source, target in mounts(grafana[0]) if kind == "bind"}
    assert binds.get((GRAFANA / "provisioning").resolve()) == "/etc/grafana/provisioning"
    providers = load_yaml(DASHBOARD_PROVIDERS)["providers"]
    paths = {provider["options"]["path"] for provider in providers}
    assert binds.get(DASHBOARD.parent.resolve()) in paths, "the dashboards folder is not where the provider reads"
    for ds in load_yaml(DATASOURCES)["datasources"]:
        host = re.match(r"https?://([^:/]+)", ds["url"])
        assert host and host.group(1) in services, f"datasource {ds['name']} points at {ds['url']}: no such service"


# --- Dockerfile ----------------------------------------------------------------------------------


def test_dockerfile_base_image_is_pinned_and_copied_files_exist() -> None:
    instructions = dockerfile_instructions()
    bases = [args.split()[0] for kind, args in instructions if kind == "FROM"]
    assert bases, "the Dockerfile has no FROM"
    for base in bases:
        assert image_is_pinned(base), f"base image {base!r} is not an exact version"
    assert any(kind == "USER" and args.split(":")[0] not in ("root", "0") for kind, args in instructions), (
        "the image runs as root"
    )
    patterns = [line.strip() for line in DOCKERIGNORE.read_text().splitlines()]
    patterns = [p for p in patterns if p and not p.startswith("#")]
    sources = [source for kind, args in instructions if kind in ("COPY", "ADD") for source in copy_sources(args)]
    assert sources, "the Dockerfile copies nothing"
    for source in sources:
        path = REPO / source
        assert path.exists(), f"COPY {source}: missing"
        files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
        for file in files:
            rel = file.relative_to(REPO).as_posix()
            if "__pycache__" in rel.split("/") or is_build_product(rel):
                continue
            assert not ignored(rel, patterns), f"COPY {source}: .dockerignore leaves out {rel}"
    for heavy in (".git", ".venv", "out"):
        assert ignored(heavy, patterns), f".dockerignore does not leave out {heavy}"


def test_dockerfile_command_is_the_engine_command_line() -> None:
    instructions = dict(dockerfile_instructions())
    command = json.loads(instructions["ENTRYPOINT"]) + json.loads(instructions.get("CMD", "[]"))
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert command[0] in scripts, f"ENTRYPOINT runs {command[0]!r}, not a command the package installs"
    args = _parser().parse_args(command[1:])  # exits (fails) on an unknown subcommand or option
    assert args.command.__name__ == "_run", f"the image does not run the engine: {command}"


def test_dockerfile_compiles_the_native_module_in_a_build_stage_and_ships_no_compiler() -> None:
    build, *_, runtime = dockerfile_stages()
    assert build is not runtime, "one stage: the compiler would stay in the runtime image"
    name = build[0][1].split()[-1]
    assert build[0][1].split()[-2].upper() == "AS", f"the build stage has no name: FROM {build[0][1]}"
    build_runs = " ".join(args for kind, args in build if kind == "RUN")
    assert re.search(r"apt-get install .*\bcargo", build_runs), "the build stage installs no Rust toolchain"
    assert "pip wheel" in build_runs, "the build stage makes no wheels"
    assert ("COPY", "state ./state") in build, "the build stage does not copy state/ (with the crate)"
    runtime_runs = " ".join(args for kind, args in runtime if kind == "RUN")
    assert "cargo" not in runtime_runs and "rustc" not in runtime_runs, "the runtime image installs a compiler"
    installs = [args for kind, args in runtime if kind == "RUN" and "pip install" in args]
    assert installs, "the runtime image installs nothing"
    for args in installs:
        assert "--no-index" in args and f"from={name}" in args, f"the runtime builds from source: RUN {args}"
    # the packages are imported from /app (PYTHONPATH): the compiled module must sit beside state/'s sources
    copies = [args.split() for kind, args in runtime if kind == "COPY" and f"--from={name}" in args]
    assert any(words[-1] in ("./state/", "/app/state/") for words in copies), "the runtime lacks the compiled module"


def test_dockerignore_leaves_out_local_build_products() -> None:
    patterns = [line.strip() for line in DOCKERIGNORE.read_text().splitlines()]
    patterns = [p for p in patterns if p and not p.startswith("#")]
    for product in ("state/native/target/release/lib_native.so", "state/_native.cpython-311-x86_64-linux-gnu.so"):
        # a host's build in the context would shadow the image's own (Python prefers the cpython-311 name)
        assert ignored(product, patterns), f".dockerignore does not leave out {product}"


def test_the_package_builds_the_native_module_from_the_locked_crate() -> None:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert any(req.startswith("setuptools-rust") for req in pyproject["build-system"]["requires"])
    modules = {m["target"]: m for m in pyproject["tool"]["setuptools-rust"]["ext-modules"]}
    assert NATIVE_MODULE in modules, f"pip install builds no {NATIVE_MODULE}"
    assert (REPO / modules[NATIVE_MODULE]["path"]).resolve() == NATIVE_CRATE / "Cargo.toml"
    assert (NATIVE_CRATE / "Cargo.lock").is_file(), "the crate's dependencies are not locked"
    tracked = subprocess.run(
        ["git", "ls-files", "--error-unmatch", "Cargo.lock"], cwd=NATIVE_CRATE, capture_output=True, check=False
    )
    assert tracked.returncode == 0, "state/native/Cargo.lock is not committed"


def test_make_rebuilds_the_venv_when_the_rust_sources_change() -> None:
    prerequisites, _ = make_rule(make_database(), ".venv/.installed")
    missing = [str(p.relative_to(REPO)) for p in native_sources() if str(p.relative_to(REPO)) not in prerequisites]
    assert not missing, f"a change to {missing} would leave a stale compiled module in .venv's install"


def test_make_finds_rustups_cargo_and_runs_the_crate_tests() -> None:
    assert re.search(r"^export PATH := \$\(HOME\)/\.cargo/bin:\$\(PATH\)$", MAKEFILE.read_text(), re.M), (
        "make does not look for rustup's cargo in ~/.cargo/bin"
    )
    database = make_database()
    _, recipe = make_rule(database, "test")
    native = re.search(r"^NATIVE := (.*)$", database, re.M)
    recipe = [line.replace("$(NATIVE)", native.group(1) if native else "") for line in recipe]
    assert any(line.startswith("cargo test") and "state/native/" in line for line in recipe), (
        "make test skips the crate"
    )
    prerequisites, _ = make_rule(database, ".venv/.installed")
    assert "rust-deps" in prerequisites, "make venv does not install Rust where it is missing"


def test_prometheus_scrapes_every_service_that_serves_metrics(services: dict[str, dict[str, Any]]) -> None:
    """The engine and the HTTP API front each serve their own /metrics; Prometheus must scrape both."""
    config = load_yaml(PROMETHEUS)
    targets = {
        target
        for job in config.get("scrape_configs", [])
        for static in job.get("static_configs", [])
        for target in static.get("targets", [])
    }
    serving = {
        f"{name}:{environment['NUDGEFLOW_METRICS_PORT']}"
        for name, service in services.items()
        if "NUDGEFLOW_METRICS_PORT" in (environment := service.get("environment") or {})
    }
    assert len(serving) >= 2 and serving <= targets, f"serving {sorted(serving)}, scraped {sorted(targets)}"
