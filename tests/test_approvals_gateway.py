"""Just-in-time approval through the real gateway, with real consumers, a real webhook receiver, and a fake
clock for grant time (a file the gateway reads: `approvals.clock: file:PATH`), so expiry needs no sleeping.

The story of issue 6, end to end: a consumer is refused and a pending request appears (once, however often
it retries); the webhook receiver gets the signed event; an approver approves for a short duration; the
consumer reads; the grant ends; the consumer gets nothing more within one second, and no record produced
after the end reaches it.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from gateway.approvals.webhooks import verify_signature
from gateway.dev.process import GatewayProcess
from tests.gateway_fixtures import oidc_overrides
from tests.oauth import CLIENTS, librdkafka_settings

HOOK_SECRET = "test-webhook-secret"

POLICY = """\
rules:
  - name: etl-everything
    subjects: ["group:etl"]
    resources: [{topic: {glob: "*"}}, {group: {glob: "*"}}, {transactional_id: {glob: "*"}}, {cluster: true}]
    operations: [all]
  - name: analyst-groups
    subjects: ["user:analyst"]
    resources: [{group: {glob: "*"}}]
    operations: [read, describe]
  - name: analyst-reads-open-topics
    subjects: ["user:analyst"]
    resources: [{topic: {prefix: "open-"}}]
    operations: [read, describe]
  - name: payments-need-approval
    subjects: ["user:analyst", "group:approvers"]
    resources: [{topic: {prefix: "payments-"}}]
    operations: [read]
    approval: required
    approvers: ["group:approvers"]
    max_duration: 1h
"""


class WebhookReceiver:
    """A test HTTP server that records every POST (headers and body); `down()` stops it answering."""

    def __init__(self) -> None:
        self.events: list[tuple[dict, bytes]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.events.append((dict(self.headers.items()), body))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def of_type(self, kind: str) -> list[dict]:
        found = []
        for headers, body in list(self.events):
            if headers.get("X-Streamward-Event") == kind:
                assert verify_signature(HOOK_SECRET.encode(), headers["X-Streamward-Timestamp"], body,
                                        headers["X-Streamward-Signature"]), "webhook signature does not verify"
                found.append(json.loads(body))
        return found

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def wait_for(condition, timeout: float = 20.0, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout} s")


class Admin:
    """The gateway's approvals API, called with real tokens from the dev IdP."""

    def __init__(self, gw: GatewayProcess, idp) -> None:
        self.base = f"http://127.0.0.1:{gw.admin_port}"
        self.idp = idp

    def call(self, who: str, method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
        token = self.idp.mint(who, groups=CLIENTS.get(who, {}).get("groups", []))
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.base + path, data=data, method=method,
                                         headers={"Authorization": f"Bearer {token}",
                                                  "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())

    def pending_for(self, topic: str) -> list[dict]:
        status, answer = self.call("approver", "GET", "/v1/access-requests?status=pending")
        assert status == 200, answer
        return [r for r in answer["requests"] if {"type": "topic", "name": topic} in r["resources"]]


class Clock:
    """The gateway's grant clock: a file holding the time, which the test moves."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.set(time.time())

    def set(self, t: float) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(repr(t))
        tmp.replace(self.path)  # atomic: the gateway never reads half a number
        self.now = t


@contextmanager
def approvals_gateway(kafka_cluster, idp, workdir: Path, port_base: int, hook_url: str, **approvals):
    workdir.mkdir(parents=True, exist_ok=True)
    clock = Clock(workdir / "clock")
    settings = {"clock": f"file:{clock.path}", "webhooks": [{"url": hook_url, "secret": HOOK_SECRET}],
                "webhook_attempts": 3, "webhook_backoff_s": 0.1, **approvals}
    gw = GatewayProcess(workdir / "gw", kafka_cluster, workers=2, port_base=port_base, admin_port=port_base + 8,
                        overrides={**oidc_overrides(idp), "approvals": settings}, policy=POLICY)
    with gw:
        yield gw, clock


@pytest.fixture
def receiver():
    hooks = WebhookReceiver()
    yield hooks
    hooks.close()


class Feed:
    """Produces a record every 20 ms straight to the brokers, each stamped with the time it was sent."""

    def __init__(self, kafka_cluster, topic: str) -> None:
        self.producer = Producer({"bootstrap.servers": kafka_cluster.bootstrap, "security.protocol": "SASL_PLAINTEXT",
                                  "sasl.mechanisms": "SCRAM-SHA-512", "sasl.username": "admin",
                                  "sasl.password": kafka_cluster.passwords["admin"], "linger.ms": 0})
        self.topic = topic
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        seq = 0
        while not self.stop.is_set():
            self.producer.produce(self.topic, value=json.dumps({"seq": seq, "sent": time.time()}).encode())
            self.producer.poll(0)
            seq += 1
            time.sleep(0.02)
        self.producer.flush(10)

    def __enter__(self) -> Feed:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join(10)


class Reader:
    """A confluent-kafka consumer (as the analyst) assigned to partition 0, recording what reaches it and when."""

    def __init__(self, gw: GatewayProcess, idp, topic: str) -> None:
        self.consumer = Consumer({"bootstrap.servers": gw.bootstrap, "group.id": f"g-{uuid.uuid4().hex[:6]}",
                                  "auto.offset.reset": "earliest", "enable.auto.commit": False,
                                  "topic.metadata.refresh.interval.ms": 1000, "fetch.wait.max.ms": 500,
                                  **librdkafka_settings(idp.token_endpoint, "analyst")})
        self.consumer.assign([TopicPartition(topic, 0, 0)])
        self.received: list[tuple[float, dict]] = []  # (time received, record)
        self.errors: list[str] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.is_set():
            for message in self.consumer.consume(100, timeout=0.1):
                if message.error() is not None:
                    self.errors.append(str(message.error()))
                else:
                    self.received.append((time.time(), json.loads(message.value())))

    def close(self) -> None:
        self.stop.set()
        self.thread.join(10)
        self.consumer.close()


def test_refused_then_approved_then_expired_with_a_real_consumer(kafka_cluster, idp, make_topic, tmp_path, receiver):
    topic = make_topic("payments", partitions=1)
    with approvals_gateway(kafka_cluster, idp, tmp_path, 30692, receiver.url) as (gw, clock), \
            Feed(kafka_cluster, topic) as feed:
        admin = Admin(gw, idp)
        reader = Reader(gw, idp, topic)
        try:
            # Refused: a pending request appears, once, however often the consumer retries.
            (request,) = wait_for(lambda: admin.pending_for(topic))
            assert request["requester"] == "analyst" and request["origin"] == "kafka"
            assert request["operations"] == ["read"] and request["rules"] == ["payments-need-approval"]
            time.sleep(3)  # the consumer keeps retrying meanwhile
            assert [r["id"] for r in admin.pending_for(topic)] == [request["id"]]
            assert not reader.received
            (created,) = wait_for(lambda: receiver.of_type("access_request.created"))
            assert created["request"]["id"] == request["id"]

            # Approved for 10 minutes of grant time: the consumer reads.
            status, answer = admin.call("approver", "POST", f"/v1/access-requests/{request['id']}/approve",
                                        {"duration": "10m"})
            assert status == 200, answer
            grant = answer["grant"]
            assert grant["expires_at"] == pytest.approx(clock.now + 600)
            wait_for(lambda: len(reader.received) > 20, timeout=30)
            assert wait_for(lambda: receiver.of_type("access_request.approved"))

            # The grant's end: move the gateway's clock past it.
            clock.set(grant["expires_at"] + 1)
            ended_at = time.time()
            time.sleep(2.5)
            late = [at for at, _ in reader.received if at > ended_at + 1.0]
            assert not late, f"{len(late)} record(s) reached the consumer more than 1 s after the grant ended"
            after_end = [r for _, r in reader.received if r["sent"] > ended_at + 0.05]
            assert not after_end, f"records produced after the grant ended were delivered: {after_end[:3]}"
            assert feed.thread.is_alive()
            expired = wait_for(lambda: receiver.of_type("grant.expired"))
            assert expired[0]["grant"]["id"] == grant["id"]
            status, answer = admin.call("approver", "GET", f"/v1/grants/{grant['id']}")
            assert answer["grant"]["status"] == "expired"
            assert f"access grant {grant['id']} ended" in gw.log_text()
        finally:
            reader.close()


def test_revoke_ends_a_live_consumer_within_a_second(kafka_cluster, idp, make_topic, tmp_path, receiver):
    topic = make_topic("payments", partitions=1)
    with approvals_gateway(kafka_cluster, idp, tmp_path, 30692, receiver.url) as (gw, _clock), \
            Feed(kafka_cluster, topic):
        admin = Admin(gw, idp)
        status, answer = admin.call("analyst", "POST", "/v1/access-requests", {
            "resources": [{"type": "topic", "name": topic}], "operations": ["read"], "duration": "30m",
            "reason": "incident 42"})
        assert status == 201, answer
        status, answer = admin.call("approver", "POST", f"/v1/access-requests/{answer['request']['id']}/approve", {})
        assert status == 200 and answer["grant"] is not None, answer
        reader = Reader(gw, idp, topic)
        try:
            wait_for(lambda: len(reader.received) > 20, timeout=30)
            status, revoked = admin.call("approver", "POST", f"/v1/grants/{answer['grant']['id']}/revoke",
                                         {"reason": "incident closed"})
            revoked_at = time.time()
            assert status == 200 and revoked["grant"]["status"] == "revoked", revoked
            time.sleep(2.5)
            late = [at for at, _ in reader.received if at > revoked_at + 1.0]
            assert not late, f"{len(late)} record(s) arrived more than 1 s after the revoke"
            assert wait_for(lambda: receiver.of_type("grant.revoked"))
        finally:
            reader.close()


def test_approver_rules_through_the_api(kafka_cluster, idp, make_topic, tmp_path, receiver):
    """Self-approval and outsiders refused, durations clipped to the rule's maximum, deny needs a reason."""
    topic = make_topic("payments", partitions=1)
    with approvals_gateway(kafka_cluster, idp, tmp_path, 30692, receiver.url) as (gw, _clock):
        admin = Admin(gw, idp)
        ask = {"resources": [{"type": "topic", "name": topic}], "operations": ["read"], "duration": "8h",
               "reason": "audit"}
        status, answer = admin.call("approver", "POST", "/v1/access-requests", ask)
        assert status == 201, answer
        own = answer["request"]
        assert own["duration_s"] == 3600, "asked 8h, the rule's max_duration is 1h"
        status, answer = admin.call("approver", "POST", f"/v1/access-requests/{own['id']}/approve", {})
        assert status == 403 and "another approver must" in answer["error"], answer

        status, answer = admin.call("analyst", "POST", "/v1/access-requests", {**ask, "duration": "30m"})
        assert status == 201
        request = answer["request"]
        status, answer = admin.call("etl-job", "POST", f"/v1/access-requests/{request['id']}/approve", {})
        assert status in (403, 404), answer  # an outsider may not even see it
        status, answer = admin.call("approver", "POST", f"/v1/access-requests/{request['id']}/deny", {})
        assert status == 400, answer
        status, answer = admin.call("approver", "POST", f"/v1/access-requests/{request['id']}/deny",
                                    {"reason": "not during the freeze"})
        assert status == 200 and answer["request"]["status"] == "denied", answer
        assert wait_for(lambda: receiver.of_type("access_request.denied"))
        status, answer = admin.call("analyst", "POST", "/v1/access-requests", {
            **ask, "resources": [{"type": "topic", "name": "open-data"}]})
        assert status == 409, "a topic the analyst may already read needs no approval"


def test_restart_keeps_grants_and_pending_requests(kafka_cluster, idp, make_topic, tmp_path, receiver):
    topic, other = make_topic("payments", partitions=1), make_topic("payments", partitions=1)
    with approvals_gateway(kafka_cluster, idp, tmp_path, 30692, receiver.url) as (gw, _clock):
        admin = Admin(gw, idp)
        ask = {"operations": ["read"], "duration": "30m", "reason": "restart test"}
        _, granted = admin.call("analyst", "POST", "/v1/access-requests",
                                {**ask, "resources": [{"type": "topic", "name": topic}]})
        _, approved = admin.call("approver", "POST", f"/v1/access-requests/{granted['request']['id']}/approve", {})
        _, pending = admin.call("analyst", "POST", "/v1/access-requests",
                                {**ask, "resources": [{"type": "topic", "name": other}]})
        gw.stop()
        gw.start()
        status, answer = admin.call("approver", "GET", f"/v1/grants/{approved['grant']['id']}")
        assert status == 200 and answer["grant"]["status"] == "active", answer
        assert [r["id"] for r in admin.pending_for(other)] == [pending["request"]["id"]]
        with Feed(kafka_cluster, topic):
            time.sleep(0.2)
        reader = Reader(gw, idp, topic)
        try:
            wait_for(lambda: reader.received, timeout=30)  # the grant still works after the restart
        finally:
            reader.close()


def test_webhook_receiver_down_leaves_the_data_path_alone(kafka_cluster, idp, make_topic, tmp_path):
    """Nothing listens at the webhook URL: consumers are served as usual; the event is retried, then logged."""
    dead = WebhookReceiver()
    url = dead.url
    dead.close()
    topic = make_topic("open", partitions=1)
    with approvals_gateway(kafka_cluster, idp, tmp_path, 30692, url) as (gw, _clock), Feed(kafka_cluster, topic):
        admin = Admin(gw, idp)
        status, _ = admin.call("analyst", "POST", "/v1/access-requests", {
            "resources": [{"type": "topic", "name": "payments-x"}], "operations": ["read"], "reason": "r"})
        assert status == 201
        reader = Reader(gw, idp, topic)
        try:
            wait_for(lambda: len(reader.received) > 20, timeout=30)
        finally:
            reader.close()
        wait_for(lambda: "failed" in gw.log_text() and "access_request.created" in gw.log_text(), timeout=10)
        failures = [line for line in gw.log_text().splitlines() if "webhook" in line.lower() and "failed" in line]
        assert failures and HOOK_SECRET not in gw.log_text()
        assert 'streamward_webhook_deliveries_total{result="failed"} 1' in gw.metrics()


def test_two_gateways_share_grants_through_postgresql(kafka_cluster, idp, make_topic, tmp_path, receiver,
                                                      postgres_db):
    """Approved on one gateway node, used on the other; revoked on the first, the second ends the consumer
    within a second (PostgreSQL LISTEN/NOTIFY carries the change)."""
    topic = make_topic("payments", partitions=1)
    shared = {"store": "postgresql", "database_url": postgres_db}
    with approvals_gateway(kafka_cluster, idp, tmp_path / "a", 30692, receiver.url, **shared) as (gw_a, _), \
            approvals_gateway(kafka_cluster, idp, tmp_path / "b", 30792, receiver.url, **shared) as (gw_b, _), \
            Feed(kafka_cluster, topic):
        admin_a, admin_b = Admin(gw_a, idp), Admin(gw_b, idp)
        status, answer = admin_a.call("analyst", "POST", "/v1/access-requests", {
            "resources": [{"type": "topic", "name": topic}], "operations": ["read"], "duration": "30m",
            "reason": "two nodes"})
        assert status == 201, answer
        status, answer = admin_a.call("approver", "POST", f"/v1/access-requests/{answer['request']['id']}/approve",
                                      {})
        assert status == 200 and answer["grant"], answer
        grant_id = answer["grant"]["id"]
        reader = Reader(gw_b, idp, topic)  # reads through the other node
        try:
            wait_for(lambda: len(reader.received) > 20, timeout=30)
            status, answer = admin_b.call("approver", "GET", f"/v1/grants/{grant_id}")
            assert status == 200 and answer["grant"]["status"] == "active"
            status, revoked = admin_a.call("approver", "POST", f"/v1/grants/{grant_id}/revoke", {"reason": "done"})
            revoked_at = time.time()
            assert status == 200, revoked
            time.sleep(2.5)
            late = [at for at, _ in reader.received if at > revoked_at + 1.0]
            assert not late, f"{len(late)} record(s) reached the consumer on the other node after the revoke"
            assert f"access grant {grant_id} ended" in gw_b.log_text()
        finally:
            reader.close()


def test_the_cli_asks_and_approves_against_the_running_gateway(kafka_cluster, idp, make_topic, tmp_path, receiver):
    """`streamward access request` and `streamward approvals` with each person's own token, from a file."""
    topic = make_topic("payments", partitions=1)
    with approvals_gateway(kafka_cluster, idp, tmp_path, 30692, receiver.url) as (gw, _clock):
        tokens = {}
        for who in ("analyst", "approver"):
            tokens[who] = tmp_path / f"{who}.jwt"
            tokens[who].write_text(idp.mint(who, groups=CLIENTS[who]["groups"]))

        def cli(who: str, *args: str) -> subprocess.CompletedProcess:
            return subprocess.run([sys.executable, "-m", "gateway", *args, "--admin",
                                   f"http://127.0.0.1:{gw.admin_port}",
                                   "--token-file", str(tokens[who]), "--json"], capture_output=True, text=True,
                                  timeout=60)

        asked = cli("analyst", "access", "request", "--topic", topic, "--op", "read", "--duration", "20m",
                    "--reason", "quarterly audit")
        assert asked.returncode == 0, asked.stderr
        request = json.loads(asked.stdout)["request"]
        assert request["requester"] == "analyst" and request["duration_s"] == 1200 and request["origin"] == "api"
        listed = cli("approver", "approvals", "list")
        assert listed.returncode == 0 and request["id"] in listed.stdout, listed.stderr
        own = cli("analyst", "approvals", "approve", request["id"])
        assert own.returncode == 1, "the requester may not approve (refused: exit 1)"
        approved = cli("approver", "approvals", "approve", request["id"], "--duration", "10m")
        assert approved.returncode == 0, approved.stderr
        grant = json.loads(approved.stdout)["grant"]
        assert grant["expires_at"] - grant["starts_at"] == pytest.approx(600)
