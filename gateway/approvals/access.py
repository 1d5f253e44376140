"""Access requests made by refused Kafka requests: from a worker's hot path to the supervisor, without I/O
waits.

A worker that refuses a request because a rule needs approval sends one datagram on a Unix socket pair
the supervisor made before forking; the send never blocks (a full socket drops the datagram: the client
retries and the next refusal sends again). Workers remember what they sent for a while, so a consumer
retrying ten times a second sends one datagram, not ten; the supervisor's service deduplicates again
across workers and restarts (one pending request per requester, resources and operations).
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable

import orjson

from gateway.policy.model import IMPLIES

log = logging.getLogger("streamward.approvals")

RESEND_AFTER_S = 30.0  # a refusal for the same thing within this time sends nothing
REMEMBERED_LIMIT = 10_000  # bounded memory: a client cycling through names only loses the shortcut
MAX_DATAGRAM = 16 * 1024


def channel() -> tuple[socket.socket, socket.socket]:
    """(worker end, supervisor end): made by the supervisor before it forks."""
    worker_end, supervisor_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    worker_end.setblocking(False)
    return worker_end, supervisor_end


def operations_to_request(operation: str, rule_operations: tuple[str, ...]) -> list[str]:
    """What to ask an approver for when `operation` was refused by an approval-gated rule.

    A describe (Metadata, before any consumer fetches) is what clients ask first; asking an approver for
    "describe" would be useless, so it becomes the rule's operations that imply it (read, for a consumer).
    """
    implying = sorted(op for op in rule_operations if IMPLIES.get(op) == operation)
    return implying or [operation]


class AccessRequester:
    """A worker's side of the channel."""

    def __init__(self, sock: socket.socket, clock: Callable[[], float] = time.monotonic) -> None:
        self._sock = sock
        self._clock = clock
        self._sent: dict[tuple, float] = {}
        self.dropped = 0

    def want(self, subject: str, groups: tuple[str, ...], resource_type: str, name: str, operations: list[str],
             rule: str | None, client: str) -> None:
        key = (subject, groups, resource_type, name, tuple(operations))
        now = self._clock()
        if now - self._sent.get(key, -RESEND_AFTER_S) < RESEND_AFTER_S:
            return
        message = orjson.dumps({"subject": subject, "groups": list(groups), "resource_type": resource_type,
                                "name": name, "operations": operations, "rule": rule, "client": client})
        if len(message) > MAX_DATAGRAM:
            log.warning("access request for %s on %s %s too large to send (%d bytes)", subject, resource_type,
                        name[:100], len(message))
            return
        try:
            self._sock.send(message)
        except (BlockingIOError, OSError) as exc:
            self.dropped += 1
            log.warning("access request for %s on %s %s not sent (%s); the next refusal sends it again",
                        subject, resource_type, name, exc)
            return
        if len(self._sent) >= REMEMBERED_LIMIT:
            self._sent.clear()
        self._sent[key] = now


class AccessInbox:
    """The supervisor's side: a thread that turns datagrams into access requests."""

    def __init__(self, sock: socket.socket, handle: Callable[[dict], None]) -> None:
        self._sock = sock
        self._handle = handle
        self._thread = threading.Thread(target=self._run, name="access-inbox", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        while True:
            try:
                data = self._sock.recv(MAX_DATAGRAM + 1)
            except OSError:
                return
            if not data:
                continue
            try:
                message = orjson.loads(data)
                self._handle(message)
            except Exception:  # noqa: BLE001 - one bad message must not stop the inbox
                log.exception("access request from a worker could not be handled")
