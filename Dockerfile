# The nudgeflow engine: `nudgeflow run`, which serves /metrics (NUDGEFLOW_METRICS_PORT) and
# snapshots to the recovery store (NUDGEFLOW_RECOVERY_DIR) itself.
#
#   docker build -t nudgeflow .
#   docker run --rm -e NUDGEFLOW_SOURCE=kafka -e NUDGEFLOW_KAFKA_BOOTSTRAP_SERVERS=... nudgeflow [-w N]
#
# Settings come from NUDGEFLOW_* environment variables; arguments are passed on to
# `nudgeflow run` (default: one worker thread; see `nudgeflow run --help`).
FROM python:3.11.13-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONPATH=/app

RUN groupadd --system --gid 10001 nudgeflow \
 && useradd --system --uid 10001 --gid nudgeflow --home-dir /app --no-create-home --shell /usr/sbin/nologin nudgeflow

WORKDIR /app

COPY pyproject.toml README.md ./
COPY flows ./flows
COPY operators ./operators
COPY state ./state
COPY connectors ./connectors
COPY schemas ./schemas
COPY rules ./rules
COPY samples ./samples

# The packages are imported from /app (PYTHONPATH), so the bundled rules/ and samples/
# resolve next to them; the install brings the dependencies and the `nudgeflow` command.
RUN pip install --no-cache-dir . \
 && rm -rf build ./*.egg-info

RUN mkdir -p /var/lib/nudgeflow/recovery \
 && chown -R nudgeflow:nudgeflow /var/lib/nudgeflow

USER 10001:10001

EXPOSE 9464

ENTRYPOINT ["nudgeflow", "run"]
CMD ["-w", "1"]
