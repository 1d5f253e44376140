"""Pytest fixtures for a real, locked-down Kafka cluster shared by the whole session.

tests/conftest.py star-imports this module, so the fixtures and the report hook below are registered as
conftest members (not through pytest_plugins, which would register the hook a second time).

Environment:
- STREAMWARD_TEST_NODES: 1 or 3 (default 3) nodes;
- STREAMWARD_TEST_PORT_BASE: client port of node 1; by default the first of 19092, 20092, ... 29092 whose
  ports are all free, since several sessions may share a machine;
- STREAMWARD_CACHE: where the Kafka jars are cached (see gateway.dev.kafka.ensure_jars).

The cluster's logs stay under the pytest basetemp (`pytest --basetemp` or the last few /tmp/pytest-of-*),
and a failing test that used the cluster gets the tail of every broker's log in its report.
"""

import contextlib
import os
from collections.abc import Generator, Iterator
from pathlib import Path

import pytest

from gateway.dev.kafka import KafkaCluster, busy_ports, ensure_jars

__all__ = ["kafka_jars", "kafka_cluster", "pytest_runtest_makereport"]

_CLUSTER = pytest.StashKey[KafkaCluster]()
_LOG_LINES = 40


@pytest.fixture(scope="session")
def kafka_jars(request: pytest.FixtureRequest) -> Path:
    """The folder of Kafka jars, for gateway.dev.kafka.java_tool (classpath `lib/*`)."""
    # The first run downloads ~100 MB: show progress on the terminal, past pytest's output capture.
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    progress = reporter.write_line if reporter is not None else print
    with capture.global_and_fixture_disabled() if capture is not None else contextlib.nullcontext():
        return ensure_jars(progress=progress)


@pytest.fixture(scope="session")
def kafka_cluster(request: pytest.FixtureRequest, kafka_jars: Path,
                  tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaCluster]:
    """A started KafkaCluster (gateway.dev.kafka), stopped at the end of the session."""
    nodes = int(os.environ.get("STREAMWARD_TEST_NODES", "3"))
    workdir = tmp_path_factory.mktemp(f"kafka-{nodes}node")
    if "STREAMWARD_TEST_PORT_BASE" in os.environ:
        cluster = KafkaCluster(workdir, nodes=nodes, port_base=int(os.environ["STREAMWARD_TEST_PORT_BASE"]))
    else:
        cluster = _cluster_on_free_ports(workdir, nodes)
    cluster.start()
    request.config.stash[_CLUSTER] = cluster
    try:
        yield cluster
    finally:
        cluster.stop()


def _cluster_on_free_ports(workdir: Path, nodes: int) -> KafkaCluster:
    # Blocks of 19092+k*1000 (each spans base..base+202) stay below the gateway tests' 30092 and up.
    for port_base in range(19092, 30000, 1000):
        cluster = KafkaCluster(workdir, nodes=nodes, port_base=port_base)
        if not busy_ports(cluster.ports):
            return cluster
    raise RuntimeError("no free block of ports for a Kafka cluster from 19092 to 29294: set STREAMWARD_TEST_PORT_BASE")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Attach the brokers' log tails to the report of a failed test that used the cluster."""
    report = yield
    cluster = item.config.stash.get(_CLUSTER, None)
    # fixturenames is the whole fixture closure: tests reaching the cluster through another fixture count.
    if report.failed and cluster is not None and "kafka_cluster" in getattr(item, "fixturenames", ()):
        report.sections.append(("Kafka broker logs", cluster.log_tails(_LOG_LINES)))
    return report
