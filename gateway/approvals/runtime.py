"""Just-in-time approval inside the supervisor: the store, the service, webhooks, the grant table, the
inbox of access requests from workers, and who is calling the admin API.

Everything here runs in the supervisor process (its main loop and the admin HTTP threads), never in a
worker: workers only read the grant table in shared memory and send refusals down the access channel.

    workers --(datagram: refused, approval needed)--> AccessInbox --> ApprovalService.request_access
    admin HTTP /v1/... --> ApprovalsApi --> ApprovalService --> store (SQLite / PostgreSQL)
                                                     \\--> Notifier (webhooks, own threads)
    any change, expiry tick, PostgreSQL NOTIFY --> publish() --> GrantTable (shared memory) --> workers
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from typing import Any

from gateway.approvals import access
from gateway.approvals.api import ApiAuthError, ApprovalsApi
from gateway.approvals.grants import GrantTable
from gateway.approvals.service import ApprovalError, ApprovalService
from gateway.approvals.store import SqliteStore
from gateway.approvals.webhooks import Notifier, Webhook
from gateway.auth.jwks import JwksCache
from gateway.auth.tokens import TokenError, TokenValidator
from gateway.clock import clock_from_spec
from gateway.config import GatewayConfig
from gateway.policy.engine import Engine
from gateway.shm import SnapshotError

log = logging.getLogger("streamward.approvals")

AUTH_TIMEOUT_S = 10.0


class Approvals:
    """Made before the workers fork (the grant table and the access channel must be inherited); started
    right after, in the supervisor."""

    def __init__(self, config: GatewayConfig, engine: Callable[[], Engine]) -> None:
        self.config = config
        self.settings = config.approvals
        self.engine = engine
        self.clock = clock_from_spec(self.settings.clock)
        self.table = GrantTable(self.settings.max_bytes)
        self.worker_end, self.supervisor_end = access.channel()
        self.service: ApprovalService | None = None
        self.api: ApprovalsApi | None = None
        self.notifier: Notifier | None = None
        self._publish_lock = threading.Lock()
        self._store: Any = None
        self._listener: Any = None
        self._auth_loop: asyncio.AbstractEventLoop | None = None
        self._validator: TokenValidator | None = None
        self._keys: JwksCache | None = None

    # -- lifecycle -------------------------------------------------------------------------------------
    def start(self) -> None:
        """Open the store, publish the grants it holds (a restart keeps them), start the inbox and the API."""
        settings = self.settings
        if settings.store == "postgresql":
            from gateway.approvals.postgres import PostgresStore  # psycopg only where PostgreSQL is used

            assert settings.database_url is not None
            self._store = PostgresStore(settings.database_url.reveal())
        else:
            settings.data_dir.mkdir(parents=True, exist_ok=True)
            self._store = SqliteStore(settings.data_dir / "approvals.sqlite3")
        self.notifier = Notifier([Webhook(hook.url, hook.secret.reveal().encode(), hook.format)
                                  for hook in settings.webhooks],
                                 attempts=settings.webhook_attempts, backoff_s=settings.webhook_backoff_s)
        self.service = ApprovalService(self._store, self.engine, self.clock, notify=self._notify,
                                       default_duration_s=settings.default_duration_s)
        self.publish()
        # Another gateway node changed something (PostgreSQL NOTIFY): publish what the store now says.
        self._listener = self._store.listen(self.publish)
        access.AccessInbox(self.supervisor_end, self._from_worker).start()
        self._start_auth()
        self.api = ApprovalsApi(self.service, self.authenticate)
        pending = self.service.list_requests("pending")
        log.info("approvals: %s store, %d active grant(s), %d pending request(s), %d webhook(s)",
                 settings.store, len(self.service.active_grants()), len(pending), len(settings.webhooks))

    def close(self) -> None:
        if self.notifier is not None:
            self.notifier.close(timeout=2.0)
        if self._keys is not None:
            self._keys.close()
        if self._auth_loop is not None:
            self._auth_loop.call_soon_threadsafe(self._auth_loop.stop)
        if self._store is not None:
            self._store.close()

    # -- the grant table ------------------------------------------------------------------------------
    def publish(self) -> None:
        """Publish every active grant to the workers (the supervisor is the table's only writer)."""
        if self.service is None:
            return
        with self._publish_lock:
            grants = self.service.active_grants()
            try:
                generation = self.table.publish(grants)
            except SnapshotError as exc:
                # Keeping the previous table would keep revoked grants alive: fail closed instead.
                generation = self.table.publish([])
                log.error("grant table: %s (%d active grants; approvals.max_bytes is %d): no grant is "
                          "honoured until they fit", exc, len(grants), self.table.max_bytes)
        log.debug("grant table generation %d: %d active grant(s)", generation, len(grants))

    def tick(self) -> None:
        """From the supervisor's loop: announce grants that expired, and drop them from the table. Workers
        do not wait for this: they compare each grant's end with their own clock."""
        if self.service is None:
            return
        try:
            if self.service.expire_due():
                self.publish()
        except Exception:  # noqa: BLE001 - the store may be down for a moment; the next tick tries again
            log.exception("approvals: expiry check failed")

    def _notify(self, kind: str, event: dict) -> None:
        if kind in ("access_request.approved", "grant.revoked"):
            self.publish()  # before the webhook: access changes now, whatever the receivers do
        log.info("approvals: %s %s", kind, _summary(event))
        if self.notifier is not None:
            self.notifier.notify(kind, event)

    # -- requests from workers ------------------------------------------------------------------------
    def _from_worker(self, message: dict) -> None:
        assert self.service is not None
        operations = [str(op) for op in message["operations"]]
        resource_type, name = str(message["resource_type"]), str(message["name"])
        try:
            request, created = self.service.request_access(
                str(message["subject"]), tuple(str(g) for g in message["groups"]), [(resource_type, name)],
                operations, None, f"refused Kafka request: {', '.join(operations)} on {resource_type} {name}",
                str(message["client"])[:300], "kafka")
        except ApprovalError as exc:
            log.info("approvals: no access request for %s (%s on %s %s): %s", message["subject"],
                     ",".join(operations), resource_type, name, exc)
            return
        if created:
            log.info("approvals: pending access request %s by %s (%s on %s %s)", request.id, request.requester,
                     ",".join(operations), resource_type, name)

    # -- who is calling the admin API -----------------------------------------------------------------
    def _start_auth(self) -> None:
        """The admin API checks bearer tokens exactly as the Kafka listeners do, on a loop of its own."""
        oidc = self.config.auth.oidc
        if oidc is None:
            return
        loop = asyncio.new_event_loop()
        threading.Thread(target=loop.run_forever, name="admin-auth", daemon=True).start()
        self._auth_loop = loop
        self._keys = JwksCache(oidc)
        asyncio.run_coroutine_threadsafe(self._keys.start(), loop).result(timeout=AUTH_TIMEOUT_S + 20)
        self._validator = TokenValidator(oidc, self._keys)

    def authenticate(self, token: str) -> tuple[str, tuple[str, ...]]:
        if self._validator is None or self._auth_loop is None:
            raise ApiAuthError("the gateway has no OIDC settings: the approvals API is unavailable")
        try:
            claims = asyncio.run_coroutine_threadsafe(self._validator.validate(token), self._auth_loop).result(
                timeout=AUTH_TIMEOUT_S)
        except TokenError as exc:
            raise ApiAuthError(exc.reason) from None
        except TimeoutError:
            raise ApiAuthError("token could not be checked in time (identity provider keys unavailable)") from None
        return claims.subject, claims.groups

    def metrics_lines(self) -> list[str]:
        if self.service is None:
            return []
        lines = ["# TYPE streamward_access_requests_pending gauge",
                 f"streamward_access_requests_pending {len(self.service.list_requests('pending'))}",
                 "# TYPE streamward_grants_active gauge",
                 f"streamward_grants_active {len(self.service.active_grants())}"]
        if self.notifier is not None:
            lines.append("# TYPE streamward_webhook_deliveries_total counter")
            for name, count in sorted(self.notifier.counters().items()):
                lines.append(f'streamward_webhook_deliveries_total{{result="{name.removeprefix("notifier.")}"}} '
                             f'{count}')
        return lines


def _summary(event: dict) -> str:
    request, grant = event.get("request") or {}, event.get("grant") or {}
    parts = [f"by {event.get('actor')}" if event.get("actor") else "",
             request.get("id", ""), grant.get("id", ""), f"for {request.get('requester') or grant.get('subject')}"]
    return " ".join(part for part in parts if part)
