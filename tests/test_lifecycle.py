"""Process lifecycle: a killed worker is respawned and only its connections reset; TERM drains; HUP reloads."""

from __future__ import annotations

import os
import signal
import time

import yaml

from gateway.dev.process import GatewayProcess
from gateway.protocol.apis import FETCH, METADATA
from tests.wire import WireClient


def metadata(wire: WireClient) -> dict:
    return wire.request(METADATA, 12, {"topics": [], "allow_auto_topic_creation": False})


def test_killed_worker_is_respawned_and_only_its_connections_reset(kafka_cluster, tmp_path):
    with GatewayProcess(tmp_path, kafka_cluster, workers=2, port_base=30092, admin_port=30100) as gw:
        clients = [WireClient(gw.bootstrap) for _ in range(24)]
        for wire in clients:
            metadata(wire)
        time.sleep(1.5)  # counters reach shared memory once a second
        workers = gw.health()["workers"]
        victim = workers[0]
        assert victim["connections_open"] > 0 and workers[1]["connections_open"] > 0, workers
        os.kill(victim["pid"], signal.SIGKILL)

        survived = reset = 0
        for wire in clients:
            try:
                metadata(wire)
                survived += 1
            except (ConnectionError, OSError):
                reset += 1
        assert reset == victim["connections_open"], (reset, workers)
        assert survived == workers[1]["connections_open"], (survived, workers)

        gw.wait_healthy(timeout=20)
        assert victim["pid"] not in gw.worker_pids()
        with WireClient(gw.bootstrap) as fresh:
            assert metadata(fresh)["brokers"]
        for wire in clients:
            wire.close()
    assert "died (signal 9)" in gw.log_text()


def test_term_drains_in_flight_requests(kafka_cluster, make_topic, tmp_path):
    topic = make_topic("drain", partitions=1)
    with GatewayProcess(tmp_path, kafka_cluster, workers=1, port_base=30192, admin_port=30200) as gw:
        with WireClient(gw.bootstrap) as wire:
            leader = metadata_for(wire, topic)["topics"][0]["partitions"][0]["leader_id"]
        wire = WireClient(f"127.0.0.1:{gw.port_base + leader}")
        fetch = {"replica_id": -1, "max_wait_ms": 3000, "min_bytes": 1, "max_bytes": 1 << 20,
                 "isolation_level": 0, "topics": [{"topic": topic, "partitions": [
                     {"partition": 0, "fetch_offset": 0, "partition_max_bytes": 1 << 20}]}]}
        from gateway.protocol import codec

        wire.send_raw(codec.encode_request_frame(FETCH, 12, 77, "drain-test", fetch))
        time.sleep(0.5)  # the long poll is now waiting at the broker
        started = time.monotonic()
        gw.signal(signal.SIGTERM)
        correlation_id, response = codec.decode_response_frame(FETCH, 12, wire.read_frame())
        assert correlation_id == 77 and response["error_code"] == 0
        assert wire.closed_by_peer(timeout=10), "the drained connection should close after its last response"
        wire.close()
        assert gw.proc.wait(timeout=20) == 0
        assert time.monotonic() - started >= 2.0, "the response should have come from the finished long poll"


def metadata_for(wire: WireClient, topic: str) -> dict:
    return wire.request(METADATA, 12, {"topics": [{"name": topic}], "allow_auto_topic_creation": False})


def test_hup_reloads_without_dropping_connections(kafka_cluster, tmp_path):
    with GatewayProcess(tmp_path, kafka_cluster, workers=2, port_base=30292, admin_port=30300) as gw:
        clients = [WireClient(gw.bootstrap) for _ in range(8)]
        for wire in clients:
            metadata(wire)
        config = yaml.safe_load(gw.config_path.read_text())
        config["limits"] = {"idle_timeout_s": 1234}
        gw.config_path.write_text(yaml.safe_dump(config))
        gw.signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while gw.log_text().count("reloaded") < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert gw.log_text().count("reloaded") == 2
        for wire in clients:
            assert metadata(wire)["brokers"], "a connection was dropped by the reload"

        gw.config_path.write_text("upstream: [this is not valid\n")
        gw.signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while "reload refused" not in gw.log_text() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert "reload refused" in gw.log_text()
        for wire in clients:
            assert metadata(wire)["brokers"]
            wire.close()
        assert gw.health()["status"] == "ok"
