"""Approval notifications: signed HTTP POSTs to webhooks (generic JSON or Slack), retried in the background.

`Notifier.notify` is called while a request is being handled, so it only formats the body and puts it on a
queue: it never blocks and never raises. Each webhook has its own bounded queue and its own daemon sender
thread. That is the simplest way to keep one slow or dead receiver from holding back the others: its
thread may sit in a 5 s timeout or a 30 s back-off, and only its own deliveries wait (in order, which keeps
a Slack channel readable). Retries are slept inline on that thread for the same reason: nothing else is
behind them.

Every delivery is signed the way receivers expect from GitHub or Stripe: ``X-Streamward-Signature:
sha256=<hex HMAC-SHA256(secret, timestamp + "." + body)>`` with the timestamp in ``X-Streamward-Timestamp``;
`verify_signature` is the receiver's side. Redirects are never followed (a webhook that answers 3xx is
misconfigured, and following it would send signed events somewhere nobody configured).
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import logging
import queue
import re
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson

log = logging.getLogger("streamward.approvals.webhooks")

FORMATS = ("generic", "slack")
EVENT_KINDS = ("access_request.created", "access_request.approved", "access_request.denied", "grant.revoked",
               "grant.expired")
RETRY_STATUSES = frozenset({408, 429})
# A receiver's answer is never needed; a little is read so a keep-alive server sees the response consumed.
_RESPONSE_READ_LIMIT = 64 * 1024
_OVERFLOW_LOG_INTERVAL_S = 10.0
_REASON_LIMIT = 300


@dataclass(frozen=True)
class Webhook:
    url: str
    secret: bytes = field(repr=False)
    format: str = "generic"

    def __post_init__(self) -> None:
        parts = urllib.parse.urlsplit(self.url)
        # urllib would also open file:, ftp: and data: URLs; a webhook is HTTP or nothing.
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"webhook url must be an http:// or https:// URL with a host, not {self.url!r}")
        if self.format not in FORMATS:
            raise ValueError(f"webhook format must be one of {', '.join(FORMATS)}, not {self.format!r}")
        if not isinstance(self.secret, bytes):
            raise ValueError("webhook secret must be bytes")
        # Slack's incoming-webhook URL is itself the credential and Slack ignores our signature;
        # a generic receiver has nothing but the signature to tell our events from forgeries.
        if self.format == "generic" and not self.secret:
            raise ValueError("a generic webhook needs a non-empty secret")

    @property
    def display_url(self) -> str:
        """The URL as it may be logged: no user info, query or fragment; a Slack URL's token part hidden."""
        parts = urllib.parse.urlsplit(self.url)
        host = parts.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        netloc = f"{host}:{parts.port}" if parts.port else host
        path = parts.path
        if self.format == "slack" and "/" in path.strip("/"):
            path = path.rstrip("/").rsplit("/", 1)[0] + "/…"
        return f"{parts.scheme}://{netloc}{path}"


@dataclass
class _Delivery:
    kind: str
    delivery_id: str
    body: bytes
    attempt: int = 0


def sign(secret: bytes, timestamp: str, body: bytes) -> str:
    """The X-Streamward-Signature header value for one delivery attempt."""
    digest = hmac.new(secret, timestamp.encode("ascii") + b"." + body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


_TIMESTAMP = re.compile(r"[0-9]{1,12}")
_SIGNATURE = re.compile(r"sha256=[0-9a-f]{64}")


def verify_signature(secret: bytes, timestamp: str, body: bytes, header: str, *, now: float | None = None,
                     tolerance_s: float = 300) -> bool:
    """True when `header` signs `timestamp` + body with `secret` and the timestamp is within `tolerance_s` of now.

    For receivers. The stale-timestamp check stops a captured delivery being replayed later; the comparison is
    constant-time. Anything malformed (wrong type, not digits, not 64 hex digits) is simply False.
    """
    if not (isinstance(secret, bytes) and isinstance(timestamp, str) and isinstance(body, bytes)
            and isinstance(header, str)):
        return False
    if not _TIMESTAMP.fullmatch(timestamp) or not _SIGNATURE.fullmatch(header):
        return False
    current = time.time() if now is None else now
    if abs(current - int(timestamp)) > tolerance_s:
        return False
    return hmac.compare_digest(sign(secret, timestamp, body).encode("ascii"), header.encode("ascii"))


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None  # urllib then raises HTTPError with the 3xx status, which is not retried


class _Refused(Exception):
    """A delivery the receiver refused for good (a 4xx other than 408/429, or a redirect)."""


class _Retryable(Exception):
    def __init__(self, reason: str, retry_after_s: float | None = None) -> None:
        super().__init__(reason)
        self.retry_after_s = retry_after_s


class _Sender:
    """One webhook's queue and thread."""

    def __init__(self, notifier: Notifier, webhook: Webhook, index: int) -> None:
        self.notifier = notifier
        self.webhook = webhook
        # Unbounded underneath so close() can always add the stop marker; offer() keeps the limit (give or take
        # a concurrent caller or two, which is all a bound on memory needs).
        self.queue: queue.SimpleQueue[_Delivery | None] = queue.SimpleQueue()
        self.last_overflow_log = float("-inf")
        self.dropped_since_log = 0
        self.thread = threading.Thread(target=self.run, name=f"streamward-webhook-{index}", daemon=True)
        self.thread.start()

    def run(self) -> None:
        notifier = self.notifier
        while True:
            delivery = self.queue.get()
            if delivery is None:  # close(): everything queued before it has been tried
                return
            if notifier._abandoned.is_set():
                self.abandon(delivery)
                return
            self.deliver(delivery)

    def stop(self) -> None:
        self.queue.put(None)

    def abandon(self, first: _Delivery) -> None:
        deliveries = [first]
        while True:
            try:
                item = self.queue.get_nowait()
            except queue.Empty:
                break
            if item is not None:
                deliveries.append(item)
        for _ in deliveries:
            self.notifier._count("notifier.failed")
        log.error("webhook %s: %d queued delivery(ies) abandoned: the notifier closed (first: %s %s)",
                  self.webhook.display_url, len(deliveries), deliveries[0].kind, deliveries[0].delivery_id)

    def deliver(self, delivery: _Delivery) -> None:
        notifier = self.notifier
        while True:
            delivery.attempt += 1
            try:
                self.post(delivery)
            except _Refused as exc:
                self.failed(delivery, str(exc))
                return
            except _Retryable as exc:
                if delivery.attempt >= notifier.attempts:
                    self.failed(delivery, str(exc))
                    return
                delay = min(notifier.backoff_s * 2 ** (delivery.attempt - 1), notifier.max_backoff_s)
                if exc.retry_after_s is not None:
                    delay = min(max(delay, exc.retry_after_s), notifier.max_backoff_s)
                notifier._count("notifier.retried")
                log.info("webhook %s: %s delivery %s attempt %d of %d failed (%s); retrying in %.3g s",
                         self.webhook.display_url, delivery.kind, delivery.delivery_id, delivery.attempt,
                         notifier.attempts, exc, delay)
                # Event.wait, not sleep: close() past its timeout cuts the back-off short.
                if notifier._abandoned.wait(delay):
                    self.failed(delivery, f"{exc}; the notifier closed before the next attempt")
                    return
                continue
            notifier._count("notifier.delivered")
            log.debug("webhook %s: %s delivery %s delivered (attempt %d)", self.webhook.display_url, delivery.kind,
                      delivery.delivery_id, delivery.attempt)
            return

    def failed(self, delivery: _Delivery, reason: str) -> None:
        self.notifier._count("notifier.failed")
        log.error("webhook %s: %s delivery %s failed after %d attempt(s): %s", self.webhook.display_url,
                  delivery.kind, delivery.delivery_id, delivery.attempt, reason)

    def post(self, delivery: _Delivery) -> None:
        timestamp = str(int(time.time()))
        request = urllib.request.Request(self.webhook.url, data=delivery.body, method="POST", headers={
            "Content-Type": "application/json",
            "User-Agent": "streamward-webhooks/1",
            "X-Streamward-Event": delivery.kind,
            "X-Streamward-Delivery": delivery.delivery_id,
            "X-Streamward-Timestamp": timestamp,
            "X-Streamward-Signature": sign(self.webhook.secret, timestamp, delivery.body),
        })
        try:
            with self.notifier._opener.open(request, timeout=self.notifier.timeout_s) as response:
                response.read(_RESPONSE_READ_LIMIT)
        except urllib.error.HTTPError as exc:
            status = exc.code
            exc.close()
            if status >= 500 or status in RETRY_STATUSES:
                raise _Retryable(f"HTTP {status}", _retry_after(exc.headers.get("Retry-After"))) from None
            raise _Refused(f"HTTP {status} (not retried)") from None
        except urllib.error.URLError as exc:
            raise _Retryable(_describe(exc.reason)) from None
        except (OSError, http.client.HTTPException) as exc:  # timeouts, resets, malformed responses
            raise _Retryable(_describe(exc)) from None

    def offer(self, delivery: _Delivery) -> None:
        if self.queue.qsize() < self.notifier.queue_limit:
            self.queue.put(delivery)
        else:
            self.notifier._count("notifier.dropped")
            self.dropped_since_log += 1
            now = time.monotonic()
            # One line per interval: a dead receiver under load must not turn into a log flood.
            if now - self.last_overflow_log >= _OVERFLOW_LOG_INTERVAL_S:
                log.warning("webhook %s: queue full (%d deliveries); dropped %d event(s), the latest %s",
                            self.webhook.display_url, self.notifier.queue_limit, self.dropped_since_log,
                            delivery.kind)
                self.last_overflow_log = now
                self.dropped_since_log = 0


def _retry_after(value: str | None) -> float | None:
    if value and value.strip().isdigit() and len(value.strip()) <= 6:
        return float(value.strip())
    return None


def _describe(reason: object) -> str:
    if isinstance(reason, TimeoutError):
        return "timed out"
    if isinstance(reason, ConnectionRefusedError):
        return "connection refused"
    return str(reason) or type(reason).__name__


class Notifier:
    """Sends approval events to every configured webhook, in the background."""

    def __init__(self, webhooks: Iterable[Webhook], *, attempts: int = 6, backoff_s: float = 0.5,
                 max_backoff_s: float = 30, timeout_s: float = 5, queue_limit: int = 1000) -> None:
        if attempts < 1 or backoff_s < 0 or max_backoff_s < 0 or timeout_s <= 0 or queue_limit < 1:
            raise ValueError("attempts and queue_limit must be at least 1, timeout_s positive, back-offs not negative")
        self.attempts = attempts
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.timeout_s = timeout_s
        self.queue_limit = queue_limit
        self._opener = urllib.request.build_opener(_NoRedirects)
        self._counters = {"notifier.delivered": 0, "notifier.failed": 0, "notifier.retried": 0,
                          "notifier.dropped": 0}
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._abandoned = threading.Event()
        self._senders: list[_Sender] = []
        for index, webhook in enumerate(webhooks):
            self._senders.append(_Sender(self, webhook, index))

    @property
    def webhooks(self) -> Sequence[Webhook]:
        return tuple(sender.webhook for sender in self._senders)

    def counters(self) -> dict[str, int]:
        """delivered, failed (given up, or abandoned at close), retried (attempts that will be retried), dropped."""
        with self._lock:
            return dict(self._counters)

    def notify(self, kind: str, event: dict[str, Any]) -> None:
        """Queue `event` for every webhook. Never blocks, never raises."""
        try:
            if self._closing.is_set():
                log.warning("%s event after the notifier closed: not sent", kind)
                return
            for sender in self._senders:
                delivery_id = str(uuid.uuid4())
                if sender.webhook.format == "slack":
                    body = orjson.dumps({"text": slack_text(kind, event)})
                else:
                    body = orjson.dumps({**event, "delivery": delivery_id})
                sender.offer(_Delivery(kind, delivery_id, body))
        except Exception:
            log.exception("cannot queue %s event for webhooks", kind)

    def close(self, timeout: float = 5.0) -> None:
        """Stop the senders, trying what is queued for up to `timeout` seconds; the rest is counted as failed."""
        self._closing.set()
        for sender in self._senders:
            sender.stop()
        deadline = time.monotonic() + timeout
        for sender in self._senders:
            sender.thread.join(max(0.0, deadline - time.monotonic()))
        self._abandoned.set()
        # A sender stuck in a receiver's timeout notices only when that returns; it is a daemon thread.
        for sender in self._senders:
            sender.thread.join(0.2)

    def _count(self, name: str) -> None:
        with self._lock:
            self._counters[name] += 1


# --- Slack text -------------------------------------------------------------------------------------------


def slack_text(kind: str, event: dict[str, Any]) -> str:
    """One readable line for a Slack channel."""
    request = event.get("request") or {}
    grant = event.get("grant") or {}
    actor = _plain(event.get("actor") or "someone")
    if kind == "access_request.created":
        request_id = _plain(request.get("id", "?"))
        reason = _quoted(request.get("reason"))
        return (f"*{_plain(request.get('requester', '?'))}* asks for {_access(request)} for "
                f"{_duration(request.get('duration_s'))}{': ' + reason if reason else ''} ({request_id})"
                f" — approve with `streamward approvals approve {request_id}`")
    if kind == "access_request.approved":
        who = _plain(request.get("requester", "?"))
        request_id = _plain(request.get("id", "?"))
        if grant:
            return (f"{actor} approved {request_id} for {who}: {_access(request)} until "
                    f"{_when(grant.get('expires_at'))} ({_plain(grant.get('id', '?'))})")
        count = len(request.get("approvals") or [])
        return (f"{actor} approved {request_id} for {who}: {_access(request)}; waiting for another approver "
                f"({count} approval{'s' if count != 1 else ''} so far)")
    if kind == "access_request.denied":
        reason = _quoted(request.get("decision_reason"))
        return (f"{actor} denied {_plain(request.get('id', '?'))} for {_plain(request.get('requester', '?'))}: "
                f"{_access(request)}{': ' + reason if reason else ''}")
    if kind == "grant.revoked":
        reason = _quoted(grant.get("revoke_reason"))
        return (f"{actor} revoked {_plain(grant.get('id', '?'))} of {_plain(grant.get('subject', '?'))}: "
                f"{_access(grant)}{' — ' + reason if reason else ''}")
    if kind == "grant.expired":
        return (f"grant {_plain(grant.get('id', '?'))} of {_plain(grant.get('subject', '?'))} expired: "
                f"{_access(grant)} ({_plain(grant.get('request_id', '?'))})")
    subject = request.get("id") or grant.get("id") or ""
    return f"{_plain(kind)} {_plain(subject)}".strip()


def _access(item: dict[str, Any]) -> str:
    operations = ", ".join(_plain(op) for op in item.get("operations") or []) or "?"
    resources = ", ".join(f"{_plain(str(r.get('type', '?')).replace('_', ' '))} {_plain(r.get('name', '?'))}"
                          for r in item.get("resources") or [] if isinstance(r, dict)) or "?"
    return f"{operations} on {resources}"


def _quoted(text: object) -> str:
    if not text:
        return ""
    plain = _plain(text)
    if len(plain) > _REASON_LIMIT:
        plain = plain[:_REASON_LIMIT - 1] + "…"
    return f"“{plain}”"


def _plain(text: object) -> str:
    """Text from a request made safe for one Slack line: whitespace collapsed, Slack's control characters escaped.

    Without the escaping a reason of ``<!channel>`` would page a whole channel.
    """
    collapsed = " ".join(str(text).split())
    return collapsed.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _duration(seconds: object) -> str:
    if not isinstance(seconds, int) or isinstance(seconds, bool) or seconds <= 0:
        return "the default duration"
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= size:
            parts.append(f"{seconds // size}{unit}")
            seconds %= size
    return "".join(parts)


def _when(epoch: object) -> str:
    if not isinstance(epoch, int | float) or isinstance(epoch, bool):
        return "?"
    try:
        return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M UTC")
    except (OverflowError, OSError, ValueError):
        return "?"
