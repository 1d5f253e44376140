"""Run a real, locked-down Apache Kafka cluster on 127.0.0.1 for development and tests.

The broker and its tools are plain Maven jars (no tarball, no Docker): `ensure_jars` resolves them once
into a cache folder, `KafkaCluster` formats and starts 1 or 3 combined broker+controller KRaft nodes, and
`java_tool` runs any Kafka command-line tool (console clients, perf tools...) against any address.

The cluster is locked down the way the gateway expects to find a production cluster:
- clients sign in with SASL/SCRAM-SHA-512 only, on SASL_PLAINTEXT (no unauthenticated listener at all);
- the nodes talk to each other with SASL/PLAIN as `broker` on separate controller and internal listeners;
- StandardAuthorizer with allow.everyone.if.no.acl.found=false: only the super users
  (broker, admin, gateway) can do anything until ACLs say otherwise. `nobody` is a SCRAM user with no ACLs.

Command line: `python scripts/kafka.py start --nodes 3` or `python scripts/kafka.py jars`.
"""

from __future__ import annotations

import argparse
import base64
import collections
import fcntl
import hashlib
import hmac
import os
import re
import secrets
import shutil
import signal
import socket
import string
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Literal, overload

KAFKA_VERSION = "4.2.1"
HOST = "127.0.0.1"

# SCRAM users created at format time. `broker` is not among them: it exists only as a PLAIN user on the
# controller and internal listeners, which clients never reach.
DEFAULT_USERS = ("admin", "gateway", "nobody")
SUPER_USERS = ("broker", "admin", "gateway")

BROKER_HEAP = "384m"
TOOL_HEAP = "256m"
# The JVM flags Kafka's own scripts use (KAFKA_JVM_PERFORMANCE_OPTS), minus JMX.
_GC_FLAGS = (
    "-XX:+UseG1GC",
    "-XX:MaxGCPauseMillis=20",
    "-XX:InitiatingHeapOccupancyPercent=35",
    "-XX:+ExplicitGCInvokesConcurrent",
    "-Djava.awt.headless=true",
)
# For JVMs that live a second or two (format, topic and ACL commands): C1 only halves their CPU time, which
# counts when three of them (or the brokers) share two cores. Never for brokers or perf tools.
_SHORT_LIVED_JVM = ("-XX:TieredStopAtLevel=1",)

_POM_TEMPLATE = Path(__file__).with_name("kafka-pom.xml")
_DEPENDENCY_PLUGIN = "org.apache.maven.plugins:maven-dependency-plugin:3.6.1:copy-dependencies"

# Brokers log INFO to stdout, which start() redirects to node<i>/server.log.
_BROKER_LOG4J = """\
status = warn
appender.stdout.type = Console
appender.stdout.name = STDOUT
appender.stdout.target = SYSTEM_OUT
appender.stdout.layout.type = PatternLayout
appender.stdout.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.stdout.ref = STDOUT
"""

# Tools log WARN to stderr only: their stdout is data (ConsoleConsumer output, perf results).
_TOOLS_LOG4J = """\
status = warn
appender.stderr.type = Console
appender.stderr.name = STDERR
appender.stderr.target = SYSTEM_ERR
appender.stderr.layout.type = PatternLayout
appender.stderr.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = WARN
rootLogger.appenderRef.stderr.ref = STDERR
"""

# User names and passwords end up unquoted in StorageTool's --add-scram (which splits on commas) and in
# JAAS strings and SCRAM messages (where '"', ',' and '=' are special): keep both to a safe alphabet.
_SAFE_CREDENTIAL = re.compile(r"[A-Za-z0-9._-]+")


def default_cache_dir() -> Path:
    """`$STREAMWARD_CACHE`, or ~/.cache/streamward."""
    env = os.environ.get("STREAMWARD_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "streamward"


def ensure_jars(cache_dir: Path | None = None, progress: Callable[[str], object] = print) -> Path:
    """Resolve the Kafka broker and tools jars with Maven and return the folder holding them (`lib/*`).

    The jars land in `<cache_dir>/kafka-<version>/lib`. A marker file records the pom the folder was
    resolved from, so later calls return at once, and a changed pom template triggers a fresh resolution.
    A file lock keeps concurrent test sessions from resolving into the same folder at the same time.
    """
    root = Path(cache_dir or default_cache_dir()) / f"kafka-{KAFKA_VERSION}"
    lib = root / "lib"
    marker = root / "resolved.sha256"
    pom_text = _POM_TEMPLATE.read_text().replace("@KAFKA_VERSION@", KAFKA_VERSION)
    pom_digest = hashlib.sha256(pom_text.encode()).hexdigest()
    if _read_text(marker) == pom_digest:
        return lib

    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _read_text(marker) == pom_digest:  # another process resolved them while we waited
            return lib
        mvn = shutil.which("mvn")
        if mvn is None:
            raise RuntimeError("Maven (mvn) is needed to fetch the Kafka jars; install it or put it on PATH")
        # Start from an empty folder so that jars of an earlier pom never linger on the classpath.
        shutil.rmtree(lib, ignore_errors=True)
        pom = root / "pom.xml"
        pom.write_text(pom_text)
        progress(f"Resolving Kafka {KAFKA_VERSION} jars into {lib} (Maven Central, first run only)")
        command = [mvn, "-B", "-f", str(pom), _DEPENDENCY_PLUGIN,
                   "-DincludeScope=runtime", f"-DoutputDirectory={lib}"]
        _run_maven(command, progress)
        marker.write_text(pom_digest)
    progress(f"Kafka jars ready: {lib}")
    return lib


def _run_maven(command: list[str], progress: Callable[[str], object]) -> None:
    """Run Maven, condensing its output to one line per downloaded jar; raise with the output's tail."""
    downloaded = re.compile(r"Downloaded from \S+: \S+/([^/\s]+\.jar) \(([^)]*?)(?: at [^)]*)?\)")
    tail: collections.deque[str] = collections.deque(maxlen=60)
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            line = line.rstrip()
            tail.append(line)
            match = downloaded.search(line)
            if match:
                progress(f"  downloaded {match.group(1)} ({match.group(2)})")
            elif line.startswith("[ERROR]"):
                progress(line)
    if proc.returncode != 0:
        raise RuntimeError(f"Maven failed (exit {proc.returncode}): {' '.join(command)}\n" + "\n".join(tail))


@overload
def java_tool(lib_dir: Path, main_class: str, args: Iterable[str], *, input: bytes | None = None,
              timeout: float = 120, heap: str = ..., extra_jvm_args: Iterable[str] = (),
              env: Mapping[str, str] | None = None,
              background: Literal[False] = False) -> subprocess.CompletedProcess[bytes]: ...


@overload
def java_tool(lib_dir: Path, main_class: str, args: Iterable[str], *, input: None = None,
              timeout: float = 120, heap: str = ..., extra_jvm_args: Iterable[str] = (),
              env: Mapping[str, str] | None = None,
              background: Literal[True]) -> subprocess.Popen[bytes]: ...


def java_tool(
    lib_dir: Path,
    main_class: str,
    args: Iterable[str],
    *,
    input: bytes | None = None,
    timeout: float = 120,
    heap: str = TOOL_HEAP,
    extra_jvm_args: Iterable[str] = (),
    env: Mapping[str, str] | None = None,
    background: bool = False,
) -> subprocess.CompletedProcess[bytes] | subprocess.Popen[bytes]:
    """Run a Kafka command-line tool (`main_class` with `args`) on the classpath `lib_dir/*`.

    Nothing here knows about a broker: pass `--bootstrap-server` and a `--command-config` (see
    `KafkaCluster.write_client_config`) in `args`, pointing at a broker or at the gateway.
    The tool logs WARN and above to stderr; stdout is left to the tool's own output.
    `env` adds variables to the current environment.

    Foreground (default): returns the CompletedProcess (bytes stdout/stderr) without checking the exit
    code; raises subprocess.TimeoutExpired after `timeout` seconds (the JVM is killed).
    background=True: returns the Popen at once with stdin, stdout and stderr as pipes, which the caller
    must drain (or the tool blocks) and eventually stop; `input` and `timeout` do not apply.
    """
    if background and input is not None:
        raise ValueError("input is for foreground runs; write to the Popen's stdin in background runs")
    log_config = Path(lib_dir).parent / "tools-log4j2.properties"
    _write_if_changed(log_config, _TOOLS_LOG4J)
    command = _java_command(lib_dir, [f"-Xmx{heap}"], log_config, [*extra_jvm_args], main_class, [*args])
    full_env = {**os.environ, **env} if env is not None else None
    if background:
        return subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, env=full_env)
    return subprocess.run(command, input=input, capture_output=True, timeout=timeout, env=full_env)


class KafkaCluster:
    """A 1- or 3-node Kafka cluster (KRaft, every node broker+controller) on 127.0.0.1.

    Node i (node.id i, 1-based) listens on port_base+i-1 (CLIENT, SASL_PLAINTEXT + SCRAM-SHA-512),
    port_base+100+i-1 (CONTROLLER, PLAIN) and port_base+200+i-1 (INTERNAL, PLAIN). Everything lives
    under `workdir/node<i>/` (server.properties, data/, server.log); `start()` wipes data/ and formats
    a new cluster each time.

    `passwords` adds SCRAM users or sets the password of the default ones (admin, gateway, nobody);
    the others get random passwords.
    """

    def __init__(self, workdir: Path, nodes: int = 1, port_base: int = 19092,
                 passwords: dict[str, str] | None = None) -> None:
        if nodes not in (1, 3):
            raise ValueError(f"nodes must be 1 or 3, not {nodes}")
        self.workdir = Path(workdir).resolve()
        self.nodes = nodes
        self.port_base = port_base
        self.passwords: dict[str, str] = {user: _random_password() for user in DEFAULT_USERS}
        self.passwords.update(passwords or {})
        for user, password in self.passwords.items():
            if not (_SAFE_CREDENTIAL.fullmatch(user) and _SAFE_CREDENTIAL.fullmatch(password)):
                raise ValueError(f"user {user!r}: names and passwords must match {_SAFE_CREDENTIAL.pattern}")
        self._broker_password = _random_password()
        self.lib_dir: Path | None = None  # set by start(), from ensure_jars()
        self._procs: dict[int, subprocess.Popen[bytes]] = {}

    # -- addresses and client settings -------------------------------------------------------------

    @property
    def node_ids(self) -> list[int]:
        return list(range(1, self.nodes + 1))

    @property
    def node_addresses(self) -> dict[int, tuple[str, int]]:
        """node id -> (host, port) of its client (SCRAM) listener."""
        return {i: (HOST, self.port_base + i - 1) for i in self.node_ids}

    @property
    def ports(self) -> list[int]:
        """Every port the nodes listen on: client, controller and internal."""
        return [port for i in self.node_ids
                for port in (self.node_addresses[i][1], self._controller_port(i), self._internal_port(i))]

    @property
    def bootstrap(self) -> str:
        return ",".join(f"{host}:{port}" for host, port in self.node_addresses.values())

    def client_config(self, user: str) -> dict[str, str]:
        """Java client properties to sign in as `user` with SCRAM-SHA-512 (no bootstrap.servers)."""
        return {
            "security.protocol": "SASL_PLAINTEXT",
            "sasl.mechanism": "SCRAM-SHA-512",
            "sasl.jaas.config": (
                "org.apache.kafka.common.security.scram.ScramLoginModule required "
                f'username="{user}" password="{self.passwords[user]}";'
            ),
        }

    def write_client_config(self, user: str, path: Path) -> Path:
        """Write `client_config(user)` as a .properties file (for --command-config and the like)."""
        path = Path(path)
        path.write_text("".join(f"{key}={value}\n" for key, value in self.client_config(user).items()))
        return path

    def node_dir(self, node_id: int) -> Path:
        return self.workdir / f"node{node_id}"

    def log_paths(self) -> dict[int, Path]:
        """node id -> the node's server.log (format output, then the broker's stdout and stderr)."""
        return {i: self.node_dir(i) / "server.log" for i in self.node_ids}

    def log_tails(self, lines: int = 40) -> str:
        """The last `lines` lines of every node's log, each under a header naming its path."""
        parts = []
        for node_id, path in self.log_paths().items():
            tail = _tail(path, lines)
            parts.append(f"--- node {node_id}: {path} (last {lines} lines) ---\n{tail}")
        return "\n".join(parts)

    # -- lifecycle ---------------------------------------------------------------------------------

    def start(self, timeout: float = 120) -> KafkaCluster:
        """Format a fresh cluster, launch every node and wait until each accepts SCRAM logins and lists
        all nodes in its metadata. Raises RuntimeError with the logs' tails (and stops what it started)
        if that does not happen within `timeout` seconds."""
        if self._procs:
            raise RuntimeError("cluster already started")
        self.lib_dir = ensure_jars()
        # A clear message beats a broker dying with "Address already in use" deep in its log.
        busy = busy_ports(self.ports)
        if busy:
            raise RuntimeError(f"ports {busy} on {HOST} are in use: is another cluster running? "
                               "Pick another port_base")
        self.workdir.mkdir(parents=True, exist_ok=True)
        log_config = self.workdir / "log4j2.properties"
        log_config.write_text(_BROKER_LOG4J)
        for user in ("admin", "gateway"):
            self.write_client_config(user, self.workdir / f"client-{user}.properties")
        try:
            self._format(_random_cluster_id(), log_config)
            for node_id in self.node_ids:
                self._launch(node_id, log_config)
            self._wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """SIGTERM every node, SIGKILL those still running 15 s later. Logs and data stay on disk."""
        procs, self._procs = self._procs, {}
        for proc in procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 15
        for proc in procs.values():
            try:
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def check_alive(self) -> None:
        """Raise RuntimeError, with the logs' tails, if any node's process has exited."""
        exited = {node_id: proc.returncode for node_id, proc in self._procs.items()
                  if proc.poll() is not None}
        if exited:
            raise RuntimeError(f"Kafka node(s) exited (node id: exit code) {exited}\n{self.log_tails()}")

    def __enter__(self) -> KafkaCluster:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- admin helpers (Kafka's own tools, signed in as admin) ------------------------------------

    def create_topic(self, name: str, partitions: int = 1, replication_factor: int = 1,
                     configs: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[bytes]:
        """Create a topic with kafka-topics (TopicCommand) as admin; raise RuntimeError if it fails."""
        args = ["--create", "--topic", name, "--partitions", str(partitions),
                "--replication-factor", str(replication_factor)]
        for key, value in (configs or {}).items():
            args += ["--config", f"{key}={value}"]
        return self._admin_tool("org.apache.kafka.tools.TopicCommand", args)

    def add_acl(self, *args: str) -> subprocess.CompletedProcess[bytes]:
        """Run `kafka-acls --add <args>` (AclCommand) as admin, e.g.
        add_acl("--allow-principal", "User:alice", "--operation", "Read", "--topic", "orders")."""
        return self._admin_tool("org.apache.kafka.tools.AclCommand", ["--add", *args])

    def _admin_tool(self, main_class: str, args: list[str]) -> subprocess.CompletedProcess[bytes]:
        if self.lib_dir is None:
            raise RuntimeError("start the cluster first")
        command_config = self.workdir / "client-admin.properties"
        connection = ["--bootstrap-server", self.bootstrap, "--command-config", str(command_config)]
        result = java_tool(self.lib_dir, main_class, [*connection, *args], extra_jvm_args=_SHORT_LIVED_JVM)
        if result.returncode != 0:
            raise RuntimeError(
                f"{main_class} {' '.join(args)} failed (exit {result.returncode}):\n"
                f"{result.stdout.decode(errors='replace')}{result.stderr.decode(errors='replace')}"
            )
        return result

    # -- start() steps -----------------------------------------------------------------------------

    def _controller_port(self, node_id: int) -> int:
        return self.port_base + 100 + node_id - 1

    def _internal_port(self, node_id: int) -> int:
        return self.port_base + 200 + node_id - 1

    def _server_properties(self, node_id: int) -> str:
        client_port = self.node_addresses[node_id][1]
        controller_port = self._controller_port(node_id)
        internal_port = self._internal_port(node_id)
        voters = ",".join(f"{i}@{HOST}:{self._controller_port(i)}" for i in self.node_ids)
        # One PLAIN user, `broker`, both signs in (username/password) and is accepted (user_broker) on the
        # node-to-node listeners. SCRAM there is widely reported not to work between controllers.
        plain_jaas = (
            "org.apache.kafka.common.security.plain.PlainLoginModule required "
            f'username="broker" password="{self._broker_password}" user_broker="{self._broker_password}";'
        )
        # Internal topics need every node to hold a replica on 3 nodes (RF 3, min ISR 2), and must fit on 1.
        replication = 3 if self.nodes == 3 else 1
        min_isr = 2 if self.nodes == 3 else 1
        properties = {
            "process.roles": "broker,controller",
            "node.id": node_id,
            # Static quorum: format then needs no --standalone/--initial-controllers.
            "controller.quorum.voters": voters,
            "listeners": (f"CLIENT://{HOST}:{client_port},CONTROLLER://{HOST}:{controller_port},"
                          f"INTERNAL://{HOST}:{internal_port}"),
            "advertised.listeners": f"CLIENT://{HOST}:{client_port},INTERNAL://{HOST}:{internal_port}",
            "listener.security.protocol.map":
                "CLIENT:SASL_PLAINTEXT,CONTROLLER:SASL_PLAINTEXT,INTERNAL:SASL_PLAINTEXT",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "INTERNAL",
            "sasl.mechanism.controller.protocol": "PLAIN",
            "sasl.mechanism.inter.broker.protocol": "PLAIN",
            "listener.name.client.sasl.enabled.mechanisms": "SCRAM-SHA-512",
            "listener.name.client.scram-sha-512.sasl.jaas.config":
                "org.apache.kafka.common.security.scram.ScramLoginModule required;",
            "listener.name.controller.sasl.enabled.mechanisms": "PLAIN",
            "listener.name.controller.plain.sasl.jaas.config": plain_jaas,
            "listener.name.internal.sasl.enabled.mechanisms": "PLAIN",
            "listener.name.internal.plain.sasl.jaas.config": plain_jaas,
            "authorizer.class.name": "org.apache.kafka.metadata.authorizer.StandardAuthorizer",
            "allow.everyone.if.no.acl.found": "false",
            "super.users": ";".join(f"User:{user}" for user in SUPER_USERS),
            "log.dirs": str(self.node_dir(node_id) / "data"),
            "num.partitions": 1,
            "auto.create.topics.enable": "false",
            "default.replication.factor": replication,
            # min.insync.replicas stays at its default of 1, so that create_topic's RF 1 topics accept
            # acks=all on 3 nodes too (Kafka 4 copies it into the cluster metadata at format time, as a
            # cluster-wide dynamic default); internal topics get their own min ISR below.
            "offsets.topic.replication.factor": replication,
            "transaction.state.log.replication.factor": replication,
            "transaction.state.log.min.isr": min_isr,
            "share.coordinator.state.topic.replication.factor": replication,
            "share.coordinator.state.topic.min.isr": min_isr,
            # 50 partitions each by default, all created (x3 replicas) while the first consumer group or
            # transactional producer waits. 6 still spreads the coordinators over all 3 nodes.
            "offsets.topic.num.partitions": 6,
            "transaction.state.log.num.partitions": 6,
            "share.coordinator.state.topic.num.partitions": 6,
            # Tests join groups one after another: don't wait 3 s for more members each time.
            "group.initial.rebalance.delay.ms": 0,
        }
        return "".join(f"{key}={value}\n" for key, value in properties.items())

    def _format(self, cluster_id: str, log_config: Path) -> None:
        """Write each node's server.properties, then format all nodes in parallel (one JVM each), adding
        the SCRAM users to each node's bootstrap metadata. The output starts each node's server.log."""
        scram_args = []
        for user, password in self.passwords.items():
            scram_args += ["--add-scram", f"SCRAM-SHA-512=[name={user},password={password}]"]
        assert self.lib_dir is not None
        running = {}
        for node_id in self.node_ids:
            node_dir = self.node_dir(node_id)
            shutil.rmtree(node_dir / "data", ignore_errors=True)
            node_dir.mkdir(parents=True, exist_ok=True)
            properties = node_dir / "server.properties"
            properties.write_text(self._server_properties(node_id))
            command = _java_command(
                self.lib_dir, [f"-Xmx{TOOL_HEAP}"], log_config, [*_SHORT_LIVED_JVM],
                "kafka.tools.StorageTool", ["format", "-t", cluster_id, "-c", str(properties), *scram_args],
            )
            with open(self.log_paths()[node_id], "wb") as log:
                running[node_id] = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                                    stdin=subprocess.DEVNULL)
        exit_codes = {node_id: proc.wait() for node_id, proc in running.items()}
        failed = {node_id: code for node_id, code in exit_codes.items() if code != 0}
        if failed:
            raise RuntimeError(
                f"kafka-storage format failed (node id: exit code) {failed}\n{self.log_tails()}")

    def _launch(self, node_id: int, log_config: Path) -> None:
        assert self.lib_dir is not None
        node_dir = self.node_dir(node_id)
        command = _java_command(
            self.lib_dir, [f"-Xmx{BROKER_HEAP}", f"-Xms{BROKER_HEAP}"], log_config, [],
            "kafka.Kafka", [str(node_dir / "server.properties")],
        )
        with open(self.log_paths()[node_id], "ab") as log:
            # Same process group as ours on purpose: a closed terminal (SIGHUP) or Ctrl-C reaches the brokers
            # too, so they do not outlive a Python process that had no chance to call stop().
            self._procs[node_id] = subprocess.Popen(
                command, cwd=node_dir, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            )

    def _wait_ready(self, timeout: float) -> None:
        """Poll every node's client listener: sign in as admin with SCRAM and read the broker list from
        Metadata. Ready when every node answers with every node id (brokers appear there once unfenced)."""
        deadline = time.monotonic() + timeout
        expected = set(self.node_ids)
        while True:
            self.check_alive()
            pending = {}
            for node_id, (host, port) in self.node_addresses.items():
                try:
                    listed = _probe_broker(host, port, "admin", self.passwords["admin"])
                except (OSError, _ProbeError) as exc:
                    pending[node_id] = f"{type(exc).__name__}: {exc}"
                    continue
                if listed != expected:
                    pending[node_id] = f"metadata lists nodes {sorted(listed)}"
            if not pending:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"Kafka not ready after {timeout:.0f} s: {pending}\n{self.log_tails()}")
            time.sleep(0.5)


# -- a minimal Kafka protocol client, just enough for the readiness probe --------------------------
# The probe runs every half second while the nodes start: a Python check costs milliseconds where a Java
# tool would cost a JVM start on a machine the brokers already keep busy. It must not use the gateway's
# own protocol code either, since this cluster is what that code gets tested against.


class _ProbeError(Exception):
    """The broker answered, but with an error (or not the answer expected)."""


def _probe_broker(host: str, port: int, user: str, password: str, timeout: float = 5) -> set[int]:
    """Sign in to a SASL_PLAINTEXT listener with SCRAM-SHA-512 and return the broker ids in its metadata."""
    with socket.create_connection((host, port), timeout=timeout) as sock:
        correlation = iter(range(1, 100))

        def call(api_key: int, api_version: int, body: bytes) -> memoryview:
            # Request header v1: api_key, api_version, correlation_id, client_id; response header v0.
            header = struct.pack(">hhih", api_key, api_version, next(correlation), len(b"probe")) + b"probe"
            sock.sendall(struct.pack(">i", len(header) + len(body)) + header + body)
            (size,) = struct.unpack(">i", _recv_exactly(sock, 4))
            return memoryview(_recv_exactly(sock, size))[4:]  # skip the correlation id

        # SaslHandshake v1: mechanism -> error_code, [mechanisms]
        (error,) = struct.unpack_from(">h", call(17, 1, _kafka_string("SCRAM-SHA-512")))
        if error:
            raise _ProbeError(f"SaslHandshake error code {error}")

        def authenticate(auth_bytes: bytes) -> bytes:
            # SaslAuthenticate v1: auth_bytes -> error_code, error_message, auth_bytes, session_lifetime_ms
            reply = call(36, 1, struct.pack(">i", len(auth_bytes)) + auth_bytes)
            (error,) = struct.unpack_from(">h", reply)
            message, offset = _read_nullable_string(reply, 2)
            if error:
                raise _ProbeError(f"SaslAuthenticate error code {error}: {message}")
            (length,) = struct.unpack_from(">i", reply, offset)
            return bytes(reply[offset + 4:offset + 4 + length])

        scram = _ScramSha512(user, password)
        server_first = authenticate(scram.client_first())
        scram.verify_server_final(authenticate(scram.client_final(server_first)))

        # Metadata v8: topics=[] (none), allow_auto_topic_creation, include cluster/topic authorized ops.
        reply = call(3, 8, struct.pack(">i???", 0, False, False, False))
        (count,) = struct.unpack_from(">i", reply, 4)  # after throttle_time_ms
        offset, node_ids = 8, set()
        for _ in range(count):  # brokers: node_id, host, port, rack
            (node_id,) = struct.unpack_from(">i", reply, offset)
            _, offset = _read_nullable_string(reply, offset + 4)
            _, offset = _read_nullable_string(reply, offset + 4)
            node_ids.add(node_id)
        return node_ids


def _recv_exactly(sock: socket.socket, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionError("connection closed by the broker")
        data += chunk
    return bytes(data)


def _kafka_string(value: str) -> bytes:
    encoded = value.encode()
    return struct.pack(">h", len(encoded)) + encoded


def _read_nullable_string(buffer: memoryview, offset: int) -> tuple[str | None, int]:
    (length,) = struct.unpack_from(">h", buffer, offset)
    if length < 0:
        return None, offset + 2
    return bytes(buffer[offset + 2:offset + 2 + length]).decode(), offset + 2 + length


class _ScramSha512:
    """The client side of SCRAM-SHA-512 (RFC 5802) without channel binding, as Kafka uses it."""

    def __init__(self, user: str, password: str) -> None:
        self._password = password.encode()
        self._nonce = secrets.token_urlsafe(18)
        # The user name needs no escaping: _SAFE_CREDENTIAL excludes ',' and '='.
        self._client_first_bare = f"n={user},r={self._nonce}"
        self._server_signature = b""

    def client_first(self) -> bytes:
        return f"n,,{self._client_first_bare}".encode()

    def client_final(self, server_first: bytes) -> bytes:
        text = server_first.decode()
        fields = dict(item.split("=", 1) for item in text.split(","))
        if not fields["r"].startswith(self._nonce):
            raise _ProbeError("SCRAM server nonce does not extend ours")
        salt, iterations = base64.b64decode(fields["s"]), int(fields["i"])
        salted = hashlib.pbkdf2_hmac("sha512", self._password, salt, iterations)
        client_key = hmac.digest(salted, b"Client Key", "sha512")
        without_proof = f"c=biws,r={fields['r']}"  # biws = base64("n,,")
        auth_message = f"{self._client_first_bare},{text},{without_proof}".encode()
        signature = hmac.digest(hashlib.sha512(client_key).digest(), auth_message, "sha512")
        proof = bytes(a ^ b for a, b in zip(client_key, signature, strict=True))
        server_key = hmac.digest(salted, b"Server Key", "sha512")
        self._server_signature = hmac.digest(server_key, auth_message, "sha512")
        return f"{without_proof},p={base64.b64encode(proof).decode()}".encode()

    def verify_server_final(self, server_final: bytes) -> None:
        if server_final.decode() != f"v={base64.b64encode(self._server_signature).decode()}":
            raise _ProbeError("SCRAM server signature does not match: not the server we formatted")


# -- helpers ----------------------------------------------------------------------------------------


def busy_ports(ports: Iterable[int]) -> list[int]:
    """The ports among `ports` that something already holds on 127.0.0.1 (a bind there fails)."""
    busy = []
    for port in ports:
        with socket.socket() as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the JVM does
            try:
                probe.bind((HOST, port))
            except OSError:
                busy.append(port)
    return busy


def _java_command(lib_dir: Path, heap_args: list[str], log_config: Path, extra_jvm_args: list[str],
                  main_class: str, args: list[str]) -> list[str]:
    java_home = os.environ.get("JAVA_HOME")
    java = str(Path(java_home) / "bin" / "java") if java_home else "java"
    return [java, *heap_args, *_GC_FLAGS, f"-Dlog4j2.configurationFile={log_config}", *extra_jvm_args,
            "-cp", f"{Path(lib_dir)}/*", main_class, *args]


def _random_password() -> str:
    alphabet = string.ascii_letters + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(24))


def _random_cluster_id() -> str:
    """What `kafka-storage random-uuid` prints (16 random bytes, URL-safe base64 without padding),
    without starting a JVM. Like Kafka, avoid a leading '-', which command lines take for an option."""
    while True:
        cluster_id = base64.urlsafe_b64encode(secrets.token_bytes(16)).decode().rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text()
    except FileNotFoundError:
        return None


def _write_if_changed(path: Path, text: str) -> None:
    # Write to a temporary name, then rename: a JVM starting at the same moment never reads half a file.
    if _read_text(path) != text:
        temporary = path.with_name(f".{path.name}.{os.getpid()}")
        temporary.write_text(text)
        temporary.replace(path)


def _tail(path: Path, lines: int) -> str:
    try:
        with open(path, errors="replace") as file:
            return "".join(collections.deque(file, maxlen=lines))
    except FileNotFoundError:
        return "(no log yet)\n"


# -- command line ------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kafka.py",
                                     description="A local, locked-down Kafka cluster for Streamward.")
    commands = parser.add_subparsers(dest="command", required=True)
    start = commands.add_parser("start", help="run a cluster in the foreground until Ctrl-C or SIGTERM")
    start.add_argument("--nodes", type=int, choices=(1, 3), default=1)
    start.add_argument("--workdir", type=Path, default=Path("var") / "kafka",
                       help="configs, data and logs (default: var/kafka; data is wiped at each start)")
    start.add_argument("--port-base", type=int, default=19092, help="client port of node 1 (default: 19092)")
    commands.add_parser("jars", help="resolve the Kafka jars and print the lib folder")
    options = parser.parse_args(argv)

    if options.command == "jars":
        print(ensure_jars())
        return 0

    # SIGTERM unwinds like Ctrl-C, through the `with` below, which stops the nodes.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    cluster = KafkaCluster(options.workdir, nodes=options.nodes, port_base=options.port_base)
    started = time.monotonic()
    try:
        with cluster:
            elapsed = time.monotonic() - started
            print(f"Kafka {KAFKA_VERSION}, {options.nodes} node(s), ready in {elapsed:.1f} s")
            print(f"bootstrap: {cluster.bootstrap}")
            for user, password in cluster.passwords.items():
                role = "super user" if user in SUPER_USERS else "no ACLs"
                print(f"user {user} ({role}): password {password}")
            for user in ("admin", "gateway"):
                print(f"{user} client config: {cluster.workdir / f'client-{user}.properties'}")
            print(f"logs: {', '.join(str(path) for path in cluster.log_paths().values())}")
            print("Ctrl-C to stop", flush=True)
            while True:
                cluster.check_alive()
                time.sleep(1)
    except KeyboardInterrupt:
        pass
    except RuntimeError as exc:
        print(exc, file=sys.stderr)
        return 1
    return 0
