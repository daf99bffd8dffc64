# The nudgeflow engine: `nudgeflow run`, which serves /metrics (NUDGEFLOW_METRICS_PORT) and
# snapshots to the recovery store (NUDGEFLOW_RECOVERY_DIR) itself.
#
#   docker build -t nudgeflow .
#   docker run --rm -e NUDGEFLOW_SOURCE=kafka -e NUDGEFLOW_KAFKA_BOOTSTRAP_SERVERS=... nudgeflow [-w N]
#
# Settings come from NUDGEFLOW_* environment variables; arguments are passed on to
# `nudgeflow run` (default: one worker thread; see `nudgeflow run --help`).
#
# Two stages: `build` compiles the engine's native module (state/native, Rust) with Debian's
# Rust and makes wheels of the project and its dependencies; the runtime image installs only
# those wheels, with no compiler.
FROM python:3.11.13-slim-bookworm AS build

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1

# cargo-web: bookworm's current Rust (its plain `cargo` is too old for the crates.io index); gcc builds
# the module's allocator (mimalloc, C)
RUN apt-get update \
 && apt-get install -y --no-install-recommends cargo-web gcc \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /src

COPY pyproject.toml README.md ./
COPY flows ./flows
COPY operators ./operators
COPY state ./state
COPY connectors ./connectors
COPY schemas ./schemas

# /wheels: nudgeflow's wheel (with the compiled state/_native*.so) and its dependencies'; /native: the module alone.
RUN pip wheel --wheel-dir /wheels . \
 && python -m zipfile -e /wheels/nudgeflow-*.whl /tmp/nudgeflow \
 && mkdir /native \
 && cp /tmp/nudgeflow/state/_native*.so /native/

FROM python:3.11.13-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONPATH=/app

RUN groupadd --system --gid 10001 nudgeflow \
 && useradd --system --uid 10001 --gid nudgeflow --home-dir /app --no-create-home --shell /usr/sbin/nologin nudgeflow

WORKDIR /app

# The built wheels only (--no-index): the dependencies and the `nudgeflow` command.
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index --find-links /wheels nudgeflow

# The packages are imported from /app (PYTHONPATH), so the bundled rules/ and samples/
# resolve next to them; the compiled module goes beside its package's sources.
COPY pyproject.toml README.md ./
COPY flows ./flows
COPY operators ./operators
COPY state ./state
COPY --from=build /native/ ./state/
COPY connectors ./connectors
COPY schemas ./schemas
COPY rules ./rules
COPY samples ./samples

RUN mkdir -p /var/lib/nudgeflow/recovery \
 && chown -R nudgeflow:nudgeflow /var/lib/nudgeflow

USER 10001:10001

EXPOSE 9464

ENTRYPOINT ["nudgeflow", "run"]
CMD ["-w", "1"]
