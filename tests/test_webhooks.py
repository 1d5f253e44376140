"""Approval webhooks against real HTTP receivers on 127.0.0.1: signing, Slack text, retries, isolation, overflow."""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import orjson
import pytest

from gateway.approvals.service import ApprovalService
from gateway.approvals.store import SqliteStore
from gateway.approvals.webhooks import Notifier, Webhook, sign, slack_text, verify_signature
from gateway.clock import FakeClock
from gateway.policy.engine import Engine
from gateway.policy.loader import load_policies
from tests.waiting import wait_until

SECRET = b"s3cret-for-tests"

REQUEST = {
    "id": "req_7f3a", "requester": "alice", "groups": ["analysts"],
    "resources": [{"type": "topic", "name": "payments"}], "operations": ["read"], "duration_s": 7200,
    "reason": "quarterly audit", "client": "kafka", "origin": "10.0.0.7", "rules": ["payments-jit"],
    "status": "pending", "created_at": 1795953600, "approvals": [], "decided_by": None, "decided_at": None,
    "decision_reason": None, "grant_id": None,
}
GRANT = {
    "id": "grt_91c2", "request_id": "req_7f3a", "subject": "alice",
    "resources": [{"type": "topic", "name": "payments"}], "operations": ["read"], "starts_at": 1795953600,
    "expires_at": 1795960800, "approved_by": ["bob"],
    "status": "active", "revoked_at": None, "revoked_by": None, "revoke_reason": None,
}


def created_event() -> dict:
    return {"type": "access_request.created", "at": 1795960800, "actor": "alice", "request": REQUEST, "grant": None}


class Receiver:
    """A real HTTP server in a thread that records every POST and answers with scripted statuses."""

    def __init__(self, statuses: list[int] | None = None, delay_s: float = 0.0) -> None:
        self.statuses = list(statuses or [])
        self.delay_s = delay_s
        self.received: list[tuple[dict[str, str], bytes, float]] = []
        self.arrived = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                if receiver.delay_s:
                    time.sleep(receiver.delay_s)
                with receiver.arrived:
                    receiver.received.append((dict(self.headers.items()), body, time.monotonic()))
                    status = receiver.statuses.pop(0) if receiver.statuses else 200
                    receiver.arrived.notify_all()
                self.send_response(status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait_for(self, count: int, timeout: float = 5.0) -> list[tuple[dict[str, str], bytes, float]]:
        with self.arrived:
            self.arrived.wait_for(lambda: len(self.received) >= count, timeout)
            return list(self.received)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receivers() -> Iterator[list[Receiver]]:
    made: list[Receiver] = []
    yield made
    for receiver in made:
        receiver.close()


@pytest.fixture
def refused_url() -> Iterator[str]:
    """A port that is bound but never listens: connecting to it is refused, and nobody else can take it."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    yield f"http://127.0.0.1:{sock.getsockname()[1]}/hook"
    sock.close()


@pytest.fixture
def silent_url() -> Iterator[str]:
    """A port that accepts connections (into the backlog) and never answers: the worst receiver."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(200)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}/hook"
    sock.close()



def test_signed_generic_event_is_received_and_verifies(receivers):
    """A generic webhook gets the event as given plus its delivery id, with headers a receiver can verify."""
    receiver = Receiver()
    receivers.append(receiver)
    notifier = Notifier([Webhook(receiver.url, SECRET, "generic")], backoff_s=0.01)
    notifier.notify("access_request.created", created_event())
    [(headers, body, _)] = receiver.wait_for(1)
    notifier.close(2)

    assert headers["Content-Type"] == "application/json"
    assert headers["X-Streamward-Event"] == "access_request.created"
    payload = orjson.loads(body)
    assert payload["delivery"] == headers["X-Streamward-Delivery"]
    assert {k: v for k, v in payload.items() if k != "delivery"} == created_event()
    timestamp = headers["X-Streamward-Timestamp"]
    assert abs(int(timestamp) - time.time()) < 60
    assert verify_signature(SECRET, timestamp, body, headers["X-Streamward-Signature"])
    assert not verify_signature(b"another secret", timestamp, body, headers["X-Streamward-Signature"])
    assert not verify_signature(SECRET, timestamp, body + b" ", headers["X-Streamward-Signature"])
    assert notifier.counters()["notifier.delivered"] == 1


def test_verify_signature_refuses_stale_and_malformed_input():
    """Replays outside the tolerance and malformed headers or timestamps are refused, never an exception."""
    body = b'{"a":1}'
    header = sign(SECRET, "1000000", body)
    assert verify_signature(SECRET, "1000000", body, header, now=1000000 + 300)
    assert not verify_signature(SECRET, "1000000", body, header, now=1000000 + 301)
    assert not verify_signature(SECRET, "1000000", body, header, now=1000000 - 301)
    for timestamp, bad_header in (("1000000", header.upper()), ("1000000", header[:-1]),
                                  ("1000000", header.removeprefix("sha256=")), ("1e6", header),
                                  ("-1000000", header), ("1000000 ", header), ("", header)):
        assert not verify_signature(SECRET, timestamp, body, bad_header, now=1000000)
    assert not verify_signature(SECRET, "1000000", body, None, now=1000000)  # type: ignore[arg-type]


def test_slack_text_for_every_event_kind(receivers):
    """Slack gets {"text": one readable line} per kind, and request text cannot ping a channel."""
    receiver = Receiver()
    receivers.append(receiver)
    notifier = Notifier([Webhook(receiver.url, b"", "slack")], backoff_s=0.01)
    notifier.notify("access_request.created", created_event())
    [(headers, body, _)] = receiver.wait_for(1)
    notifier.close(2)
    assert set(orjson.loads(body)) == {"text"}
    assert orjson.loads(body)["text"] == (
        "*alice* asks for read on topic payments for 2h: “quarterly audit” (req_7f3a)"
        " — approve with `streamward approvals approve req_7f3a`")
    assert headers["X-Streamward-Event"] == "access_request.created"

    approved = {**REQUEST, "status": "approved", "approvals": [{"approver": "bob", "at": 1795960800,
                                                                 "duration_s": 7200}], "grant_id": "grt_91c2"}
    event = {"type": "access_request.approved", "at": 1795960800, "actor": "bob", "request": approved, "grant": GRANT}
    assert slack_text("access_request.approved", event) == (
        "bob approved req_7f3a for alice: read on topic payments until 2026-11-29 14:00 UTC (grt_91c2)")
    waiting = {**event, "grant": None}
    assert slack_text("access_request.approved", waiting) == (
        "bob approved req_7f3a for alice: read on topic payments; waiting for another approver (1 approval so far)")
    denied = {**REQUEST, "status": "denied", "decided_by": "bob", "decision_reason": "not\nduring the freeze"}
    assert slack_text("access_request.denied", {"actor": "bob", "request": denied, "grant": None}) == (
        "bob denied req_7f3a for alice: read on topic payments: “not during the freeze”")
    revoked = {**GRANT, "status": "revoked", "revoked_by": "carol", "revoke_reason": "done early"}
    assert slack_text("grant.revoked", {"actor": "carol", "request": None, "grant": revoked}) == (
        "carol revoked grt_91c2 of alice: read on topic payments — “done early”")
    assert slack_text("grant.expired", {"actor": None, "request": None, "grant": {**GRANT, "status": "expired"}}) == (
        "grant grt_91c2 of alice expired: read on topic payments (req_7f3a)")
    hostile = {**REQUEST, "reason": "<!channel> & <https://evil|click>"}
    text = slack_text("access_request.created", {"actor": "alice", "request": hostile, "grant": None})
    assert "<" not in text and ">" not in text and "&lt;!channel&gt; &amp; &lt;https://evil|click&gt;" in text


def test_500_twice_then_200_is_delivered_on_the_third_attempt_with_one_delivery_id(receivers):
    """5xx is retried with back-off; every attempt carries the same delivery id and a fresh valid signature."""
    receiver = Receiver(statuses=[500, 503, 200])
    receivers.append(receiver)
    notifier = Notifier([Webhook(receiver.url, SECRET)], backoff_s=0.05)
    notifier.notify("grant.expired", {"type": "grant.expired", "at": 1, "actor": None, "request": None,
                                      "grant": GRANT})
    received = receiver.wait_for(3)
    assert len(received) == 3
    assert wait_until(lambda: notifier.counters()["notifier.delivered"] == 1)
    notifier.close(2)
    ids = {headers["X-Streamward-Delivery"] for headers, _, _ in received}
    assert len(ids) == 1
    for headers, body, _ in received:
        assert verify_signature(SECRET, headers["X-Streamward-Timestamp"], body, headers["X-Streamward-Signature"])
    gaps = [b[2] - a[2] for a, b in zip(received, received[1:], strict=False)]
    assert gaps[0] >= 0.04 and gaps[1] >= 0.09  # 0.05 s, then doubled
    assert notifier.counters() == {"notifier.delivered": 1, "notifier.failed": 0, "notifier.retried": 2,
                                   "notifier.dropped": 0}


@pytest.mark.parametrize("status", [408, 429])
def test_408_and_429_are_retried(receivers, status):
    """408 and 429 are the two 4xx answers that mean "try again"."""
    receiver = Receiver(statuses=[status, 200])
    receivers.append(receiver)
    notifier = Notifier([Webhook(receiver.url, SECRET)], backoff_s=0.01)
    notifier.notify("grant.expired", {"type": "grant.expired", "grant": GRANT})
    assert len(receiver.wait_for(2)) == 2
    assert wait_until(lambda: notifier.counters()["notifier.delivered"] == 1)
    notifier.close(2)


@pytest.mark.parametrize("status", [400, 401, 404, 410, 301])
def test_other_4xx_and_redirects_are_not_retried(receivers, caplog, status):
    """A 4xx (other than 408/429) or a redirect is given up at once: one attempt, counted as failed."""
    receiver = Receiver(statuses=[status, 200, 200])
    receivers.append(receiver)
    notifier = Notifier([Webhook(receiver.url, SECRET)], backoff_s=0.01)
    with caplog.at_level(logging.ERROR, logger="streamward.approvals.webhooks"):
        notifier.notify("grant.expired", {"type": "grant.expired", "grant": GRANT})
        assert wait_until(lambda: notifier.counters()["notifier.failed"] == 1)
        time.sleep(0.1)
    notifier.close(2)
    assert len(receiver.received) == 1
    assert notifier.counters()["notifier.retried"] == 0
    assert f"HTTP {status}" in caplog.text


def test_receiver_down_notify_returns_at_once_then_retries_and_fails_loudly(refused_url, caplog):
    """Connection refused: notify() takes under 5 ms; the delivery is retried, then logged at ERROR and counted."""
    webhook = Webhook(refused_url + "?token=query-secret", b"never-logged-secret")
    notifier = Notifier([webhook], attempts=3, backoff_s=0.01)
    with caplog.at_level(logging.INFO, logger="streamward.approvals.webhooks"):
        started = time.perf_counter()
        notifier.notify("access_request.created", created_event())
        elapsed = time.perf_counter() - started
        assert elapsed < 0.005, f"notify() took {elapsed * 1000:.2f} ms"
        assert wait_until(lambda: notifier.counters()["notifier.failed"] == 1)
    notifier.close(2)
    assert notifier.counters()["notifier.retried"] == 2
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1
    message = errors[0].getMessage()
    assert refused_url in message and "access_request.created" in message and "connection refused" in message
    assert "after 3 attempt(s)" in message
    assert "never-logged-secret" not in caplog.text and "query-secret" not in caplog.text


def test_slack_url_token_is_not_logged(refused_url, caplog):
    """A Slack webhook URL is a credential: its last path segment never reaches the log."""
    webhook = Webhook(refused_url.replace("/hook", "/services/T000/B000/XXXXSLACKTOKEN"), b"", "slack")
    notifier = Notifier([webhook], attempts=1)
    with caplog.at_level(logging.INFO, logger="streamward.approvals.webhooks"):
        notifier.notify("grant.expired", {"type": "grant.expired", "grant": GRANT})
        assert wait_until(lambda: notifier.counters()["notifier.failed"] == 1)
    notifier.close(2)
    assert "/services/T000/B000/…" in caplog.text
    assert "XXXXSLACKTOKEN" not in caplog.text


def test_queue_overflow_drops_and_counts_without_blocking(silent_url, caplog):
    """With the receiver stuck and the queue full, notify() still returns at once; the overflow is counted."""
    notifier = Notifier([Webhook(silent_url, SECRET)], timeout_s=5, queue_limit=3)
    with caplog.at_level(logging.WARNING, logger="streamward.approvals.webhooks"):
        started = time.perf_counter()
        for _ in range(100):
            notifier.notify("grant.expired", {"type": "grant.expired", "grant": GRANT})
        elapsed = time.perf_counter() - started
    assert elapsed < 0.1, f"100 notify() calls took {elapsed * 1000:.1f} ms"
    dropped = notifier.counters()["notifier.dropped"]
    assert 96 <= dropped <= 97  # 3 queued, and at most one taken off by the sender
    assert len([r for r in caplog.records if "queue full" in r.getMessage()]) == 1  # rate-limited, not 97 lines
    notifier.close(0.1)


def test_a_healthy_webhook_is_not_held_back_by_a_dead_one(receivers, silent_url, refused_url):
    """Events reach the healthy receiver promptly while the others hang in a timeout or retry refused connects."""
    receiver = Receiver()
    receivers.append(receiver)
    notifier = Notifier([Webhook(silent_url, SECRET), Webhook(refused_url, SECRET), Webhook(receiver.url, SECRET)],
                        timeout_s=5, backoff_s=1)
    started = time.monotonic()
    for _ in range(3):
        notifier.notify("access_request.created", created_event())
    received = receiver.wait_for(3, timeout=4)
    assert len(received) == 3
    assert received[-1][2] - started < 1.0
    notifier.close(0.1)


def test_close_sends_what_is_queued_within_the_timeout(receivers):
    """close() lets the sender finish the queue when there is time, then the thread ends."""
    receiver = Receiver(delay_s=0.02)
    receivers.append(receiver)
    notifier = Notifier([Webhook(receiver.url, SECRET)])
    for _ in range(5):
        notifier.notify("grant.expired", {"type": "grant.expired", "grant": GRANT})
    notifier.close(5)
    assert len(receiver.received) == 5
    assert notifier.counters()["notifier.delivered"] == 5
    assert not any(sender.thread.is_alive() for sender in notifier._senders)


def test_close_gives_up_on_a_dead_receiver_at_the_timeout(refused_url, caplog):
    """A receiver in back-off does not keep close() waiting: what is left is counted as failed."""
    notifier = Notifier([Webhook(refused_url, SECRET)], attempts=6, backoff_s=10)
    for _ in range(3):
        notifier.notify("grant.expired", {"type": "grant.expired", "grant": GRANT})
    assert wait_until(lambda: notifier.counters()["notifier.retried"] == 1)
    started = time.monotonic()
    with caplog.at_level(logging.ERROR, logger="streamward.approvals.webhooks"):
        notifier.close(0.2)
    assert time.monotonic() - started < 1.0
    assert wait_until(lambda: notifier.counters()["notifier.failed"] == 3)
    assert not any(sender.thread.is_alive() for sender in notifier._senders)


def test_notify_never_raises():
    """An event that cannot be serialised, or a notify after close, is logged and dropped, never raised."""
    notifier = Notifier([Webhook("http://127.0.0.1:9/hook", SECRET)], attempts=1)
    notifier.notify("grant.expired", {"type": "grant.expired", "grant": object()})
    notifier.close(0.1)
    notifier.notify("grant.expired", {"type": "grant.expired", "grant": GRANT})


def test_webhook_configuration_is_checked():
    """Only http(s) URLs with a host, known formats, and a secret for generic receivers are accepted."""
    for url in ("file:///etc/passwd", "ftp://example.com/x", "http:///nohost", "example.com/hook"):
        with pytest.raises(ValueError):
            Webhook(url, SECRET)
    with pytest.raises(ValueError):
        Webhook("https://example.com/hook", SECRET, "teams")
    with pytest.raises(ValueError):
        Webhook("https://example.com/hook", b"", "generic")
    assert "s3cret" not in repr(Webhook("https://example.com/hook", SECRET))


def test_events_from_the_real_approval_service_arrive_signed(receivers, tmp_path):
    """Wired as ApprovalService's notify, the notifier delivers created, approved and revoked events in order."""
    policy = tmp_path / "policy.yaml"
    policy.write_text("rules:\n  - name: payments-jit\n    subjects: ['group:analysts']\n"
                      "    resources: [{topic: payments}]\n    operations: [read]\n    approval: required\n"
                      "    approvers: ['user:bob']\n")
    engine = Engine(load_policies(policy))
    receiver = Receiver()
    receivers.append(receiver)
    notifier = Notifier([Webhook(receiver.url, SECRET)], backoff_s=0.01)
    store = SqliteStore(tmp_path / "approvals.db")
    service = ApprovalService(store, lambda: engine, FakeClock(1_795_953_600), notify=notifier.notify)
    request, _ = service.request_access("alice", ("analysts",), [("topic", "payments")], ["read"], 7200, "audit",
                                        "api", "api")
    _, grant = service.approve(request.id, "bob", ())
    service.revoke(grant.id, "bob", (), "done")
    received = receiver.wait_for(3)
    notifier.close(2)
    store.close()
    assert [headers["X-Streamward-Event"] for headers, _, _ in received] == [
        "access_request.created", "access_request.approved", "grant.revoked"]
    for headers, body, _ in received:
        assert verify_signature(SECRET, headers["X-Streamward-Timestamp"], body, headers["X-Streamward-Signature"])
    approved = orjson.loads(received[1][1])
    assert (approved["actor"], approved["request"]["id"], approved["grant"]["id"]) == ("bob", request.id, grant.id)
