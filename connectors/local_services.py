"""A real Apache Kafka broker (KRaft, single node) and a real Redis server on free loopback ports.

For development and tests. The broker runs from the official Kafka jars, fetched once from
Maven Central with ``mvn`` into a cache folder (``~/.cache/nudgeflow`` or ``$NUDGEFLOW_SERVICES_CACHE``);
Redis runs from the ``redis-server`` binary, and :func:`redis_cluster` starts a 3-master Redis
Cluster (slots assigned with ``redis-cli``, which Debian's redis-server package brings along).
Every wait is bounded, and only processes started here are ever stopped, by their PID.

Command line::

    python -m connectors.local_services run -- CMD ARGS...     # services up, CMD run with their addresses, down again
    python -m connectors.local_services start --dir .services  # services up in the background; prints KEY=VALUE lines
    python -m connectors.local_services stop --dir .services   # stops the services recorded in .services/services.json
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import fcntl
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "KAFKA_VERSION",
    "RunningService",
    "ensure_kafka_jars",
    "kafka_server_properties",
    "local_services",
    "main",
    "redis_cluster",
    "start_kafka",
    "start_redis",
    "start_redis_cluster",
]

Log = Callable[[str], None]

KAFKA_VERSION = "4.1.1"
SCALA_VERSION = "2.13"
LOG4J_VERSION = "2.24.3"
DEPENDENCY_PLUGIN = "org.apache.maven.plugins:maven-dependency-plugin:3.8.1"
JAVA = os.environ.get("NUDGEFLOW_JAVA", "java")
KAFKA_HEAP = ("-Xms512m", "-Xmx1g")
READY_TIMEOUT = {"kafka": 90.0, "redis": 15.0}  # seconds until a started server must answer
MAVEN_TIMEOUT = 900.0
FORMAT_TIMEOUT = 120.0
STATE_FILE = "services.json"
JAVA_INSTALL_HINT = "apt-get install -y openjdk-17-jre-headless"
REDIS_INSTALL_HINT = "apt-get update && apt-get install -y redis-server"
HOST = "127.0.0.1"


# --- processes ------------------------------------------------------------------------------


@dataclass
class RunningService:
    """A service process started by this module; ``stop`` ends it by PID (SIGTERM, then SIGKILL)."""

    name: str
    address: str
    pid: int
    workdir: Path
    _process: subprocess.Popen | None = field(default=None, repr=False, compare=False)

    def stop(self, timeout: float = 30) -> None:
        """SIGTERM, wait up to ``timeout`` seconds, then SIGKILL; a no-op once the process is gone."""
        if self._process is not None:
            stop_process(self._process, timeout)
        elif _is_ours(self.pid, self.workdir):
            _stop_pid(self.pid, timeout)

    def as_json(self) -> dict[str, str | int]:
        return {"name": self.name, "address": self.address, "pid": self.pid, "workdir": str(self.workdir)}


def stop_process(process: subprocess.Popen, timeout: float) -> None:
    """SIGTERM a child process, SIGKILL it if it has not ended after ``timeout`` seconds."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(10)


def _stop_pid(pid: int, timeout: float) -> None:
    """Stop a process that is not our child (started by an earlier ``start`` command)."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
        if not _wait_gone(pid, timeout):
            os.kill(pid, signal.SIGKILL)
            _wait_gone(pid, 10)


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not process_alive(pid):
            return True
        time.sleep(0.1)
    return not process_alive(pid)


def process_alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie waiting for its parent does not count)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    stat = Path(f"/proc/{pid}/stat")
    with contextlib.suppress(OSError):
        return stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"
    return True


def _is_ours(pid: int, workdir: Path) -> bool:
    """Guard against PID reuse: our services run with their work dir as current directory."""
    if not Path("/proc/self/cwd").exists():
        return process_alive(pid)
    try:
        return Path(os.readlink(f"/proc/{pid}/cwd")) == workdir.resolve()
    except OSError:
        return False


def free_port() -> int:
    """A loopback TCP port that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
        return True


def _port_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(1)
        return sock.connect_ex((HOST, port)) == 0


def _tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"({path} not readable)"
    return "\n".join(text.splitlines()[-lines:])


def _spawn(cmd: list[str], workdir: Path, output: Path) -> subprocess.Popen:
    """Start ``cmd`` in ``workdir``, in its own session (terminal signals and our exit leave it alone)."""
    with output.open("ab") as out:
        return subprocess.Popen(
            cmd, cwd=workdir, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )


# --- Kafka jars -----------------------------------------------------------------------------


def cache_root() -> Path:
    """Where downloaded jars are kept: ``$NUDGEFLOW_SERVICES_CACHE`` or ``~/.cache/nudgeflow``."""
    env = os.environ.get("NUDGEFLOW_SERVICES_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "nudgeflow"


def kafka_pom() -> str:
    """A dependency-only POM: the Kafka broker plus the Log4j 2 backend its POM leaves out."""
    deps = [
        ("org.apache.kafka", f"kafka_{SCALA_VERSION}", KAFKA_VERSION),
        ("org.apache.logging.log4j", "log4j-slf4j-impl", LOG4J_VERSION),
        ("org.apache.logging.log4j", "log4j-core", LOG4J_VERSION),
    ]
    body = "".join(
        f"    <dependency><groupId>{g}</groupId><artifactId>{a}</artifactId><version>{v}</version></dependency>\n"
        for g, a, v in deps
    )
    return (
        '<project xmlns="http://maven.apache.org/POM/4.0.0">\n'
        "  <modelVersion>4.0.0</modelVersion>\n"
        "  <groupId>nudgeflow.local</groupId><artifactId>kafka-runtime</artifactId>"
        f"<version>{KAFKA_VERSION}</version>\n"
        "  <packaging>pom</packaging>\n"
        f"  <dependencies>\n{body}  </dependencies>\n"
        "</project>\n"
    )


def ensure_kafka_jars(log: Log = print) -> Path:
    """The folder of Kafka runtime jars, downloaded with Maven on first use (one process at a time)."""
    home = cache_root() / f"kafka-{KAFKA_VERSION}"
    libs, marker = home / "libs", home / "COMPLETE"
    if marker.exists():
        return libs
    home.mkdir(parents=True, exist_ok=True)
    with (home / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not marker.exists():
            _download_jars(home, libs, log)
            marker.write_text(f"kafka {KAFKA_VERSION}, log4j {LOG4J_VERSION}\n")
    return libs


def _download_jars(home: Path, libs: Path, log: Log) -> None:
    if shutil.which("mvn") is None:
        raise RuntimeError("Maven (mvn) is needed once to download the Kafka jars: apt-get install -y maven")
    partial = home / "libs.partial"
    shutil.rmtree(partial, ignore_errors=True)
    shutil.rmtree(libs, ignore_errors=True)
    pom = home / "pom.xml"
    pom.write_text(kafka_pom())
    log(f"kafka: downloading Kafka {KAFKA_VERSION} jars with Maven into {libs} (first start only)")
    started = time.monotonic()
    cmd = ["mvn", "-B", "-q", "-f", str(pom), f"{DEPENDENCY_PLUGIN}:copy-dependencies",
           "-DincludeScope=runtime", f"-DoutputDirectory={partial}"]  # fmt: skip
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=MAVEN_TIMEOUT, check=False)
    if result.returncode != 0:
        output = f"{result.stdout}{result.stderr}"
        raise RuntimeError(f"Maven could not fetch the Kafka jars (exit {result.returncode}):\n{output}")
    if not (partial / f"kafka_{SCALA_VERSION}-{KAFKA_VERSION}.jar").exists():
        raise RuntimeError(f"Maven finished but {partial} has no kafka_{SCALA_VERSION}-{KAFKA_VERSION}.jar")
    partial.rename(libs)
    log(f"kafka: {len(list(libs.glob('*.jar')))} jars in {time.monotonic() - started:.1f} s")


# --- Kafka broker ---------------------------------------------------------------------------


def kafka_server_properties(broker_port: int, controller_port: int, log_dir: Path) -> str:
    """server.properties of a single combined broker+controller node (KRaft) on loopback."""
    settings = {
        "process.roles": "broker,controller",
        "node.id": "1",
        "controller.quorum.voters": f"1@{HOST}:{controller_port}",
        "listeners": f"PLAINTEXT://{HOST}:{broker_port},CONTROLLER://{HOST}:{controller_port}",
        "advertised.listeners": f"PLAINTEXT://{HOST}:{broker_port}",
        "inter.broker.listener.name": "PLAINTEXT",
        "controller.listener.names": "CONTROLLER",
        "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
        "log.dirs": str(log_dir),
        "num.partitions": "4",
        "offsets.topic.replication.factor": "1",
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "share.coordinator.state.topic.replication.factor": "1",
        "share.coordinator.state.topic.min.isr": "1",
        "group.initial.rebalance.delay.ms": "0",
    }
    return "".join(f"{key}={value}\n" for key, value in settings.items())


def log4j2_properties(log_file: Path) -> str:
    """Log4j 2 configuration: INFO and above to one file; no Log4j shutdown hook, so Kafka's shutdown is logged."""
    return (
        "status = warn\n"
        "shutdownHook = disable\n"
        "appender.file.type = File\n"
        "appender.file.name = FILE\n"
        f"appender.file.fileName = {log_file}\n"
        "appender.file.layout.type = PatternLayout\n"
        "appender.file.layout.pattern = [%d] %p %m (%c)%n\n"
        "rootLogger.level = INFO\n"
        "rootLogger.appenderRef.file.ref = FILE\n"
        "logger.request.name = kafka.request.logger\n"
        "logger.request.level = WARN\n"
    )


def new_cluster_id() -> str:
    """A Kafka cluster id: 22 characters of URL-safe base64 of a random UUID, not starting with '-'."""
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id


def _kafka_ports(workdir: Path) -> tuple[int, int]:
    """The ports of the previous start in ``workdir`` when still free (a restart keeps its address), else new ones."""
    ports_file = workdir / "ports.json"
    with contextlib.suppress(OSError, ValueError, KeyError):
        saved = json.loads(ports_file.read_text())
        broker, controller = int(saved["broker"]), int(saved["controller"])
        if _port_free(broker) and _port_free(controller):
            return broker, controller
    broker = free_port()
    controller = free_port()
    while controller == broker:
        controller = free_port()
    ports_file.write_text(json.dumps({"broker": broker, "controller": controller}))
    return broker, controller


def _format_storage(libs: Path, config: Path, log4j: Path, log_dir: Path, log: Log) -> None:
    """Format the KRaft log dir once; a restart on a formatted dir keeps its data."""
    if (log_dir / "meta.properties").exists():
        return
    cluster_id = new_cluster_id()
    log(f"kafka: formatting {log_dir} (cluster {cluster_id})")
    cmd = [JAVA, f"-Dlog4j2.configurationFile=file:{log4j}", "-cp", f"{libs}/*", "kafka.tools.StorageTool",
           "format", f"--cluster-id={cluster_id}", "-c", str(config)]  # fmt: skip
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=FORMAT_TIMEOUT, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"kafka storage format failed ({result.returncode}):\n{result.stdout}{result.stderr}")


def _kafka_command(libs: Path, config: Path, log4j: Path, logs_dir: Path) -> list[str]:
    return [JAVA, *KAFKA_HEAP, f"-Dlog4j2.configurationFile=file:{log4j}", f"-Dkafka.logs.dir={logs_dir}",
            "-cp", f"{libs}/*", "kafka.Kafka", str(config)]  # fmt: skip


def start_kafka(workdir: Path, *, log: Log = print) -> RunningService:
    """Start a single-node KRaft broker with its data in ``workdir``; returns once it answers metadata requests."""
    if shutil.which(JAVA) is None:
        raise RuntimeError(f"Java 17+ is needed for Kafka ({JAVA!r} not found): {JAVA_INSTALL_HINT}")
    libs = ensure_kafka_jars(log)
    workdir = workdir.resolve()
    logs_dir, data_dir = workdir / "logs", workdir / "data"
    logs_dir.mkdir(parents=True, exist_ok=True)
    broker_port, controller_port = _kafka_ports(workdir)
    config, log4j = workdir / "server.properties", workdir / "log4j2.properties"
    config.write_text(kafka_server_properties(broker_port, controller_port, data_dir))
    log4j.write_text(log4j2_properties(logs_dir / "server.log"))
    _format_storage(libs, config, log4j, data_dir, log)
    command = _kafka_command(libs, config, log4j, logs_dir)
    service = _launch("kafka", f"{HOST}:{broker_port}", command, workdir, logs_dir / "kafka.out", _wait_kafka)
    log(f"kafka: broker {service.address} ready (pid {service.pid})")
    return service


def _launch(name: str, address: str, command: list[str], workdir: Path, output: Path, wait: Callable) -> RunningService:
    """Start a server process and wait until it answers; stop it again if it does not."""
    process = _spawn(command, workdir, output)
    service = RunningService(name, address, process.pid, workdir, process)
    try:
        wait(service, process, READY_TIMEOUT[name])
    except BaseException:
        service.stop(10)
        raise
    return service


def _wait_kafka(service: RunningService, process: subprocess.Popen, timeout: float) -> None:
    from confluent_kafka.admin import AdminClient

    port = int(service.address.rsplit(":", 1)[1])
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"kafka exited with code {process.returncode}:\n{_kafka_log_tail(service.workdir)}")
        if _port_open(port):
            admin = AdminClient({"bootstrap.servers": service.address, "log_level": 0})
            with contextlib.suppress(Exception):
                if admin.list_topics(timeout=min(5.0, max(0.5, deadline - time.monotonic()))).brokers:
                    return
        time.sleep(0.2)
    raise RuntimeError(f"kafka did not answer on {service.address} within {timeout:.0f} s:\n"
                       f"{_kafka_log_tail(service.workdir)}")  # fmt: skip


def _kafka_log_tail(workdir: Path) -> str:
    files = (workdir / "logs" / "server.log", workdir / "logs" / "kafka.out")
    return "\n".join(f"--- {path}\n{_tail(path)}" for path in files)


# --- Redis ----------------------------------------------------------------------------------


def _redis_binary() -> str:
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError(f"redis-server not found; install it with: {REDIS_INSTALL_HINT}")
    return binary


def start_redis(
    workdir: Path, *, port: int | None = None, persistent: bool = False, log: Log = print
) -> RunningService:
    """Start a throwaway Redis on ``port`` (default: a free loopback port); returns once it answers
    PING. ``persistent``: an append-only file in ``workdir``, so a restart there keeps the data."""
    binary = _redis_binary()
    workdir = workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    cmd = [binary, "--port", str(port), "--bind", HOST, "--save", "", "--appendonly", "yes" if persistent else "no",
           "--dir", str(workdir), "--daemonize", "no"]  # fmt: skip
    service = _launch("redis", f"redis://{HOST}:{port}/0", cmd, workdir, workdir / "redis.log", _wait_redis)
    log(f"redis: {service.address} ready (pid {service.pid})")
    return service


def _wait_redis(service: RunningService, process: subprocess.Popen, timeout: float) -> None:
    import redis

    client = redis.Redis.from_url(service.address, socket_connect_timeout=1, socket_timeout=1)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                log_file = service.workdir / "redis.log"
                raise RuntimeError(f"redis-server exited with code {process.returncode}:\n{_tail(log_file)}")
            with contextlib.suppress(redis.exceptions.ConnectionError, redis.exceptions.TimeoutError):
                if client.ping():
                    return
            time.sleep(0.05)
    finally:
        client.close()
    raise RuntimeError(f"redis did not answer PING on {service.address} within {timeout:.0f} s")


def start_redis_cluster(workdir: Path, *, masters: int = 3, log: Log = print) -> list[RunningService]:
    """Start a Redis Cluster of ``masters`` nodes (no replicas, no persistence) on free loopback
    ports, with its slots assigned by ``redis-cli --cluster create``; returns once every node
    reports the cluster ``ok``. The first node's address names the cluster."""
    if shutil.which("redis-cli") is None:
        raise RuntimeError(f"redis-cli not found; install it with: {REDIS_INSTALL_HINT}")
    binary = _redis_binary()
    workdir = workdir.resolve()
    nodes: list[RunningService] = []
    try:
        for n in range(masters):
            folder = workdir / f"node{n}"
            folder.mkdir(parents=True, exist_ok=True)
            port, bus_port = free_port(), free_port()  # the bus port is explicit: port + 10000 may be taken
            cmd = [binary, "--port", str(port), "--bind", HOST, "--save", "", "--appendonly", "no",
                   "--cluster-enabled", "yes", "--cluster-port", str(bus_port),
                   "--cluster-config-file", str(folder / "nodes.conf"),
                   "--dir", str(folder), "--daemonize", "no"]  # fmt: skip
            nodes.append(_launch("redis", f"redis://{HOST}:{port}/0", cmd, folder, folder / "redis.log", _wait_redis))
        addresses = [service.address.removeprefix("redis://").removesuffix("/0") for service in nodes]
        create = ["redis-cli", "--cluster", "create", *addresses, "--cluster-replicas", "0", "--cluster-yes"]
        result = subprocess.run(create, capture_output=True, text=True, timeout=60, check=False)
        if result.returncode != 0:
            output = f"{result.stdout}{result.stderr}"
            raise RuntimeError(f"redis-cli --cluster create failed ({result.returncode}):\n{output}")
        _wait_cluster_ok(nodes, READY_TIMEOUT["redis"])
    except BaseException:
        _stop_all(nodes)
        raise
    log(f"redis cluster: {', '.join(addresses)} ready (pids {', '.join(str(s.pid) for s in nodes)})")
    return nodes


def _wait_cluster_ok(nodes: list[RunningService], timeout: float) -> None:
    import redis

    deadline = time.monotonic() + timeout
    for node in nodes:
        client = redis.Redis.from_url(node.address, socket_timeout=1)
        try:
            while client.cluster("info").get("cluster_state") != "ok":
                if time.monotonic() > deadline:
                    raise RuntimeError(f"redis cluster node {node.address} not ok within {timeout:.0f} s")
                time.sleep(0.1)
        finally:
            client.close()


@contextlib.contextmanager
def redis_cluster(workdir: Path, *, masters: int = 3, log: Log = print) -> Iterator[str]:
    """Run a Redis Cluster for the ``with`` block; yields the URL of one of its nodes."""
    nodes = start_redis_cluster(workdir, masters=masters, log=log)
    try:
        yield nodes[0].address
    finally:
        _stop_all(nodes)


# --- both -----------------------------------------------------------------------------------


def service_env(services: list[RunningService]) -> dict[str, str]:
    """The environment variables naming the running services."""
    names = {"kafka": "KAFKA_BOOTSTRAP_SERVERS", "redis": "REDIS_URL"}
    return {names[s.name]: s.address for s in services}


def _start_all(workdir: Path, kafka: bool, redis: bool, log: Log) -> list[RunningService]:
    """Start the asked services under ``workdir`` and record them in ``workdir/services.json``."""
    services: list[RunningService] = []
    try:
        if kafka:
            services.append(start_kafka(workdir / "kafka", log=log))
        if redis:
            services.append(start_redis(workdir / "redis", log=log))
    except BaseException:
        _stop_all(services)
        raise
    state = {"services": [s.as_json() for s in services], "env": service_env(services)}
    (workdir / STATE_FILE).write_text(json.dumps(state, indent=2) + "\n")
    return services


def _stop_all(services: list[RunningService], timeout: float = 30) -> None:
    for service in reversed(services):
        service.stop(timeout)


@contextlib.contextmanager
def local_services(
    workdir: Path | None = None, *, kafka: bool = True, redis: bool = True, log: Log = print
) -> Iterator[dict[str, str]]:
    """Run Kafka and/or Redis for the ``with`` block; yields their ``KAFKA_BOOTSTRAP_SERVERS``/``REDIS_URL``."""
    with contextlib.ExitStack() as stack:
        if workdir is None:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="nudgeflow-services-")))
        workdir.mkdir(parents=True, exist_ok=True)
        services = _start_all(workdir, kafka, redis, log)
        stack.callback(_stop_all, services)
        yield service_env(services)


# --- command line ---------------------------------------------------------------------------


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _recorded(workdir: Path) -> list[RunningService]:
    state_file = workdir / STATE_FILE
    if not state_file.exists():
        return []
    state = json.loads(state_file.read_text())
    return [
        RunningService(s["name"], s["address"], int(s["pid"]), Path(s["workdir"])) for s in state.get("services", [])
    ]


@contextlib.contextmanager
def _sigterm_exits() -> Iterator[None]:
    """Turn SIGTERM into SystemExit for the block, so the services are stopped on SIGTERM too."""
    previous = signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _cmd_run(args: argparse.Namespace) -> int:
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        _stderr("run: give the command after --, e.g. run -- pytest -q")
        return 2
    with _sigterm_exits(), local_services(args.dir, log=_stderr) as env:
        try:
            code = subprocess.run(command, env={**os.environ, **env}, check=False).returncode
        except FileNotFoundError:
            _stderr(f"run: command not found: {command[0]}")
            return 127
    return 128 - code if code < 0 else code


def _cmd_start(args: argparse.Namespace) -> int:
    workdir: Path = args.dir.resolve()
    if any(_is_ours(s.pid, s.workdir) for s in _recorded(workdir)):
        _stderr(f"start: services recorded in {workdir / STATE_FILE} are still running; stop them first")
        return 1
    workdir.mkdir(parents=True, exist_ok=True)
    services = _start_all(workdir, True, True, _stderr)
    for key, value in service_env(services).items():
        print(f"{key}={value}")
    return 0


def _cmd_stop(args: argparse.Namespace) -> int:
    workdir: Path = args.dir.resolve()
    services = _recorded(workdir)
    if not services:
        _stderr(f"stop: nothing recorded in {workdir / STATE_FILE}")
        return 1
    _stop_all(services)
    (workdir / STATE_FILE).unlink(missing_ok=True)
    _stderr(f"stop: stopped {', '.join(f'{s.name} (pid {s.pid})' for s in services)}")
    return 0


def _cmd_jars(args: argparse.Namespace) -> int:
    print(ensure_kafka_jars(log=_stderr))
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m connectors.local_services", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="action", required=True)
    run = commands.add_parser("run", help="start Kafka and Redis, run a command with their addresses, stop them")
    run.add_argument("--dir", type=Path, default=None, help="work folder (default: a temporary one)")
    run.add_argument("command", nargs=argparse.REMAINDER, help="-- CMD ARGS...")
    run.set_defaults(handler=_cmd_run)
    jars = commands.add_parser("jars", help="download the Kafka broker's jars (cached) and print their folder")
    jars.set_defaults(handler=_cmd_jars)
    for name, handler, text in (
        ("start", _cmd_start, "start Kafka and Redis in the background; prints KAFKA_BOOTSTRAP_SERVERS and REDIS_URL"),
        ("stop", _cmd_stop, "stop the services recorded by start"),
    ):
        sub = commands.add_parser(name, help=text)
        sub.add_argument("--dir", type=Path, required=True, help="work folder holding services.json")
        sub.set_defaults(handler=handler)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return args.handler(args)
    except RuntimeError as exc:
        _stderr(f"error: {exc}")
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
