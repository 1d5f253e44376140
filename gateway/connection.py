"""One client connection and the upstream connection that serves it.

States::

    AUTHENTICATING --SaslAuthenticate ok--> CONNECTING --upstream ready--> READY --drain--> DRAINING
          |          (skipped when sign-in     |                            |  ^              |
          |           is switched off)         |                 re-auth ok |  | same subject  | in-flight empty
          |                                    |                            +--+              v
          +------ bad token, wrong request, token expiry, any error -----------------------> CLOSED

Requests are cut by the Cython FrameReader, which also peeks api_key, version
and correlation id. Each request is decoded once and decided by the policy; one
that passes unchanged is written upstream as the bytes it arrived as, batched
per received chunk. Kafka answers requests on a connection in order, so an
in-flight FIFO of (correlation id, api key, version, local answer, response
fix-up) pairs each response with its request; answers the gateway makes itself
wait in that FIFO for their turn so the client sees them in order. Only
responses that must change (broker addresses, refused parts merged back, masked
records) are decoded.

Sign-in is asynchronous (a key may have to be fetched): while it runs, reading
pauses and frames that already arrived wait in ``deferred``, so order holds.
No upstream connection exists before the first sign-in succeeds.
"""

from __future__ import annotations

import asyncio
import logging
import struct
import time
import weakref
from collections import deque
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, NamedTuple

from _fastpath import FrameError, FrameReader, WalkError
from gateway.approvals import access
from gateway.auth.principal import ANONYMOUS_SUBJECT, Principal
from gateway.authz import Outcome, authorize
from gateway.cluster import UnmappableNode
from gateway.handlers import addresses, apiversions, masking, produce_masking, read_ahead, sasl
from gateway.handlers.read_ahead import ReadAhead, same_fetch
from gateway.handlers.share_sessions import ShareSessionError, ShareSessions
from gateway.policy.snapshot import ViewHolder
from gateway.protocol import codec
from gateway.protocol.apis import (
    API_VERSIONS,
    DESCRIBE_CLUSTER,
    FETCH,
    FIND_COORDINATOR,
    METADATA,
    NEVER_FORWARDED,
    PRODUCE,
    SASL_AUTHENTICATE,
    SASL_HANDSHAKE,
    SHARE_ACKNOWLEDGE,
    SHARE_FETCH,
)
from gateway.protocol.errors import UNSUPPORTED_VERSION
from gateway.protocol.walkplan import plan_for
from gateway.upstream import Upstream, UpstreamError

if TYPE_CHECKING:
    from gateway.policy.engine import PrincipalView
    from gateway.worker import WorkerContext

log = logging.getLogger("streamward.connection")

AUTHENTICATING, CONNECTING, READY, DRAINING, CLOSED = range(5)

_INT32 = struct.Struct(">i")
_RECORD_READS = (FETCH, SHARE_FETCH)  # the APIs whose answers carry records, checked again on delivery
_NODE_ENDPOINTS_TAG = 0  # ProduceResponse v10+ and FetchResponse v16+ top-level tagged field

# api_key -> (first version that needs it, rewrite(body, version, ctx) -> changed?)
ResponseRewrite = Callable[[dict[str, Any], int, "WorkerContext"], bool]
RESPONSE_REWRITES: dict[int, tuple[int, ResponseRewrite]] = {
    METADATA: (0, lambda body, version, ctx: addresses.rewrite_metadata(body, version, ctx.cluster)),
    FIND_COORDINATOR: (0, lambda body, version, ctx: addresses.rewrite_find_coordinator(body, version, ctx.cluster)),
    DESCRIBE_CLUSTER: (0, lambda body, version, ctx: addresses.rewrite_describe_cluster(body, version, ctx.cluster)),
    PRODUCE: (10, lambda body, version, ctx: addresses.rewrite_node_endpoints(body, version, ctx.cluster)),
    FETCH: (16, lambda body, version, ctx: addresses.rewrite_node_endpoints(body, version, ctx.cluster)),
    SHARE_FETCH: (0, lambda body, version, ctx: addresses.rewrite_node_endpoints(body, version, ctx.cluster)),
    SHARE_ACKNOWLEDGE: (0, lambda body, version, ctx: addresses.rewrite_node_endpoints(body, version, ctx.cluster)),
}


FixResponse = Callable[[dict[str, Any]], dict[str, Any]]
_UNKNOWN_TOPIC_IDS = object()


class _TopicsUnknown(Exception):
    """A response fix-up met topic ids this worker has not looked up yet."""


def _then(first: FixResponse | None, second: FixResponse | None) -> FixResponse | None:
    """Both response fix-ups, in order (authorization first: masking sees only what may be read)."""
    if first is None or second is None:
        return first or second
    return lambda body: second(first(body))


class _RecordingTopicIds:
    """The worker's topic id map, noting ids and names it does not know yet (so the worker can look them
    up once before deciding: a topic created since the last look must not be taken for a missing one)."""

    def __init__(self, cluster: Any) -> None:
        self.cluster = cluster
        self.missed = False

    def name_of(self, topic_id: bytes) -> str | None:
        name = self.cluster.name_of(topic_id)
        if name is None:
            self.missed = True
        return name

    def id_of(self, name: str) -> bytes | None:
        topic_id = self.cluster.id_of(name)
        if topic_id is None:
            self.missed = True
        return topic_id


def _expects_response(api_key: int, version: int, body: dict[str, Any]) -> bool:
    """Produce with acks=0 gets no response; a Fetch from anything but a consumer is refused outright."""
    if api_key == PRODUCE:
        return body["acks"] != 0
    if api_key == FETCH:
        # v15+ carries the replica id in the ReplicaState tagged field (-1 when absent)
        replica_id = body["replica_id"] if version < 15 else body["replica_state"]["replica_id"]
        if replica_id != -1:
            raise Refusal(f"Fetch with replica id {replica_id}: only consumers may fetch through the gateway")
    return True


def _sessionless(frame: Any, version: int) -> bytes:
    """Fetch v7+: force a session-less full fetch (session 0, epoch -1) so that the broker never holds a
    fetch session for the client. Every Fetch then names its partitions and is authorized whole; an
    incremental fetch naming nothing cannot keep serving partitions the policy stopped allowing."""
    plan = plan_for("request", FETCH, version, ("session_id", "session_epoch"))
    session_at, epoch_at = plan.walk(frame)[:2]
    if _INT32.unpack_from(frame, session_at)[0] == 0 and _INT32.unpack_from(frame, epoch_at)[0] == -1:
        return frame
    patched = bytearray(frame)
    _INT32.pack_into(patched, session_at, 0)
    _INT32.pack_into(patched, epoch_at, -1)
    return bytes(patched)


class Refusal(Exception):
    """A request the gateway will not forward and cannot answer: close the connection, log the reason."""


class _Delivery(NamedTuple):
    """What a response must still be checked against when it comes back, because it may have waited at the
    broker (a long poll) while things changed: the access grants its request relied on (they may end), and for
    a Fetch or ShareFetch the policy view its topics were authorized and masked under with the request itself
    (a policy published meanwhile may refuse or mask them now)."""

    grants: tuple[str, ...]
    view: PrincipalView | None
    topics: tuple[str | bytes, ...]  # the topics it may answer with records of, by name or (Fetch v13+) id


class ClientConnection(asyncio.Protocol):
    def __init__(self, ctx: WorkerContext, node_id: int | None) -> None:
        self.ctx = ctx
        self.node_id = node_id  # None: the bootstrap listener
        self.state = AUTHENTICATING if ctx.validator is not None else CONNECTING
        self.peer = "?"
        self.transport: asyncio.Transport | None = None
        self.upstream: Upstream | None = None
        self.requests = FrameReader(ctx.config.limits.pre_auth_max_bytes, True)
        # (correlation id, api key, version, gateway-made answer or None, response fix-up or None,
        #  what to check before delivering the response, or None)
        self.inflight: deque[tuple[int, int, int, bytes | None, FixResponse | None, _Delivery | None]] = deque()
        self.grants_used: set[str] = set()  # ids of the access grants this connection relied on
        self.share_sessions = ShareSessions()  # what this connection's share sessions hold on the broker
        self.request_grants: list[str] = []  # the grants the request being decided relies on
        self.pending: list[bytes] = []  # chunks received while the upstream opens (sign-in switched off)
        self.pending_bytes = 0
        self.deferred: list[tuple[Any, int, int, int]] | None = None  # frames waiting for a sign-in to finish
        self.principal: Principal | None = None
        self.views: ViewHolder | None = None  # the policy as it applies to this principal
        self.fresh_topics = False  # set while handling frames right after a topic lookup made for them
        # Responses held (in order) while the worker looks up topic ids a response fix-up met, or None.
        self.held_responses: list[tuple[Any, int]] | None = None
        self.fresh_response_topics = False  # set while handling responses right after such a lookup
        self.mechanism: str | None = None  # chosen by SaslHandshake, consumed by SaslAuthenticate
        self.expiry: asyncio.TimerHandle | None = None
        self.last_active = 0.0
        self.reading_paused_for_inflight = False
        self.close_reason: str | None = None
        # Masked Fetches forwarded as the client sent them, by correlation id: (version, body, client id), what a
        # read-ahead after their response would build on.
        self.fetches_asked: dict[int, tuple[int, dict[str, Any], str | None]] = {}
        self.read_ahead: ReadAhead | None = None  # the Fetch the gateway sent ahead of the client, if any
        self.read_ahead_ids = 0  # its correlation ids count down from -1, apart from the client's

    # -- asyncio.Protocol: client side --------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's transports are not asyncio subclasses
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if peer else "?"
        self.transport.set_write_buffer_limits(high=self.ctx.config.limits.write_buffer_high)
        self.last_active = self.ctx.loop.time()
        self.ctx.connection_opened(self)
        if self.state == CONNECTING:
            self._set_principal(Principal(ANONYMOUS_SUBJECT, (), float("inf"), self.peer, None, "none"))
            self.ctx.loop.create_task(self._connect_upstream())

    async def _connect_upstream(self) -> None:
        settings = self.ctx.config.upstream
        if self.node_id is None:
            candidates = list(settings.bootstrap_servers)
        else:
            address = self.ctx.cluster.upstream_address(self.node_id)
            if address is None:
                self.close(f"no broker known for node id {self.node_id}")
                return
            candidates = [address]
        error: UpstreamError | None = None
        for address in candidates:
            try:
                self.ctx.upstream_connects_total += 1
                upstream = await Upstream.open(settings, self.ctx.config.limits, address)
                break
            except UpstreamError as exc:
                error = exc
        else:
            self.close(f"upstream unavailable: {error}")
            return
        if self.state != CONNECTING:
            upstream.close()
            return
        self.upstream = upstream
        upstream.attach(self)
        self.state = READY
        self.requests.max_frame = self.ctx.config.limits.max_request_bytes
        if self.deferred is not None:  # frames that arrived behind a sign-in
            deferred, self.deferred = self.deferred, None
            if self.transport is not None:
                self.transport.resume_reading()
            self._handle(deferred)
            return
        pending, self.pending = self.pending, []
        for chunk in pending:
            self._on_client_data(chunk)

    def data_received(self, data: bytes) -> None:
        if self.state == READY or self.state == AUTHENTICATING or self.deferred is not None:
            self._on_client_data(data)
        elif self.state == CONNECTING:
            # uvloop keeps delivering even if reading is paused this early: hold it, bounded.
            self.pending_bytes += len(data)
            if self.pending_bytes > self.ctx.config.limits.max_request_bytes:
                self.close("client sent too much before the upstream connection was ready")
                return
            self.pending.append(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.close("client closed the connection" if exc is None else f"client connection lost: {exc!r}",
                   quiet=exc is None)

    def pause_writing(self) -> None:
        if self.upstream is not None:
            self.upstream.pause_reading()

    def resume_writing(self) -> None:
        if self.upstream is not None:
            self.upstream.resume_reading()

    # -- requests ------------------------------------------------------------------------------------
    def _on_client_data(self, data: bytes) -> None:
        self.last_active = self.ctx.loop.time()
        try:
            frames = self.requests.feed(data)
        except FrameError as exc:
            self.close(f"unframeable request: {exc}")
            return
        if not frames:
            return
        self.ctx.requests_total += len(frames)
        if self.deferred is not None:
            self.deferred += frames
            if len(self.deferred) > self.ctx.config.limits.max_inflight:
                self.close("client kept sending while its sign-in was checked")
            return
        self._handle(frames)

    def _handle(self, frames: list[tuple[Any, int, int, int]]) -> None:
        """Forward what may pass, answer what the gateway answers; stop at a sign-in and resume after it."""
        if self.state == AUTHENTICATING:
            self._handle_unauthenticated(frames)
            return
        allowed = self.ctx.versions
        inflight = self.inflight
        forward = []
        for index, (frame, api_key, version, correlation_id) in enumerate(frames):
            versions = allowed.get(api_key)
            fix = None
            read_ahead_basis = False  # a masked Fetch as the client sent it, which a read-ahead may follow
            self.request_grants = []
            try:
                if versions is None or not versions[0] <= version <= versions[1]:
                    if api_key == SASL_AUTHENTICATE and self.mechanism is not None:
                        self._flush_forward(forward)
                        self._start_sign_in(frame, version, correlation_id, frames[index + 1:])
                        return
                    self._answer(correlation_id, self._local_answer(frame, api_key, version, correlation_id))
                    continue
                body = codec.decode_request(api_key, version, frame, codec.parse_request_header(frame)[4])
                expects_response = _expects_response(api_key, version, body)
                # The view a Fetch or ShareFetch is decided by, asked again when its answer comes back.
                view = self.views.view() if self.views is not None and api_key in _RECORD_READS else None
                outcome = self._authorize(api_key, version, body)
                if outcome is _UNKNOWN_TOPIC_IDS:
                    # Another worker's client learned these ids; ask the brokers once, then decide.
                    self._flush_forward(forward)
                    self._defer(frames[index:], self.ctx.refresh_topics(self.ctx.loop.time()), fresh_topics=True)
                    return
                if outcome is not None:
                    if outcome.close is not None:
                        raise Refusal(outcome.close)
                    if outcome.answer is not None:
                        if expects_response:
                            self._answer(correlation_id, codec.encode_response_frame(
                                api_key, version, correlation_id, outcome.answer))
                        continue
                    if outcome.forward is not None:
                        frame = self._reencode(frame, api_key, version, correlation_id, outcome.forward)
                        body = outcome.forward  # masking decides on what is actually fetched
                    fix = outcome.fix_response
                elif api_key == FETCH and version >= 7:
                    frame = _sessionless(frame, version)
                if api_key == FETCH:
                    masked = self._fetch_masking(body, version)
                    fix = _then(fix, masked)
                    if outcome is None and masked is not None and self.ctx.config.limits.read_ahead:
                        ahead, self.read_ahead = self.read_ahead, None
                        if ahead is not None and not ahead.arrived.done():
                            # The broker answers a read-ahead at once: decide this Fetch when it has.
                            self.read_ahead = ahead
                            self._flush_forward(forward)
                            self._defer(frames[index:], ahead.arrived)
                            return
                        if ahead is not None:
                            if self._read_ahead_answers(ahead, body, view):
                                self._flush_forward(forward)
                                forward = []
                                self._answer_from(ahead, correlation_id)
                                continue
                            self.ctx.read_ahead_dropped_total += 1
                        read_ahead_basis = True
                elif api_key == SHARE_FETCH:
                    shared = self._share_fetch_masking(body, version)
                    fix = _then(fix, shared)
                elif api_key == SHARE_ACKNOWLEDGE:
                    self.share_sessions.acknowledge(body)
                elif api_key == PRODUCE and self.ctx.policy.engine().masks_on_produce:
                    produced = self._produce_masking(body, version)
                    if produced is not None:
                        # Ours first: the authorization fix-up then finds every topic it expects.
                        fix = _then(produced.fix_response(version), fix)
                        if not produced.anything_left:
                            if not expects_response:
                                raise Refusal("produce refused by masking rules (acks=0)")
                            assert fix is not None  # something was refused, so there is a fix-up
                            self._answer(correlation_id, codec.encode_response_frame(
                                api_key, version, correlation_id, fix(produced.answer(version))))
                            continue
                        if produced.changed:
                            frame = self._reencode(frame, api_key, version, correlation_id, produced.body)
                        if produced.refused and not expects_response:
                            # As Kafka: append what passed, then close, as no response can carry the error.
                            forward.append(frame)
                            self._flush_forward(forward)
                            raise Refusal("produce partly refused by masking rules (acks=0)")
            except (Refusal, codec.DecodeError, WalkError) as exc:
                self.close(f"refused api_key={api_key} v{version}: {exc}")
                return
            if expects_response:
                delivery = None
                if api_key == FETCH:
                    delivery = _Delivery(tuple(self.request_grants), view, tuple(
                        topic["topic_id"] if version >= 13 else topic["topic"] for topic in body["topics"]))
                    if read_ahead_basis:
                        self.fetches_asked[correlation_id] = (version, body, codec.parse_request_header(frame)[3])
                elif api_key == SHARE_FETCH:
                    delivery = _Delivery(tuple(self.request_grants), view, tuple(shared.expected or ()))
                elif self.request_grants:
                    delivery = _Delivery(tuple(self.request_grants), None, ())
                inflight.append((correlation_id, api_key, version, None, fix, delivery))
            forward.append(frame)
        self._flush_forward(forward)
        if len(inflight) >= self.ctx.config.limits.max_inflight and self.transport is not None:
            self.reading_paused_for_inflight = True
            self.transport.pause_reading()

    def _flush_forward(self, forward: list[Any]) -> None:
        if forward and self.upstream is not None:
            self.upstream.write(forward)

    def _handle_unauthenticated(self, frames: list[tuple[Any, int, int, int]]) -> None:
        """Before sign-in only ApiVersions, SaslHandshake and SaslAuthenticate; anything else closes."""
        for index, (frame, api_key, version, correlation_id) in enumerate(frames):
            if api_key == SASL_AUTHENTICATE and self.mechanism is not None and self._version_ok(api_key, version):
                self._start_sign_in(frame, version, correlation_id, frames[index + 1:])
                return
            if api_key not in (API_VERSIONS, SASL_HANDSHAKE, SASL_AUTHENTICATE):
                self.close(f"api_key={api_key} before authentication")
                return
            try:
                self._answer(correlation_id, self._local_answer(frame, api_key, version, correlation_id))
            except (Refusal, codec.DecodeError) as exc:
                self.close(f"refused api_key={api_key} v{version} before authentication: {exc}")
                return

    def _version_ok(self, api_key: int, version: int) -> bool:
        versions = self.ctx.advertised.get(api_key)
        return versions is not None and versions[0] <= version <= versions[1]

    def _authorize(self, api_key: int, version: int, body: dict[str, Any]) -> Outcome | None | object:
        """The policy's verdict on one decoded request: None when it passes exactly as it came,
        _UNKNOWN_TOPIC_IDS when it names topics this worker has not seen yet and may still look up."""
        assert self.views is not None
        topics = _RecordingTopicIds(self.ctx.cluster)
        outcome = authorize(api_key, version, body, self._decide, topics)
        if topics.missed and not self.fresh_topics:
            return _UNKNOWN_TOPIC_IDS
        if outcome.denied:
            self.ctx.denied_total += 1
            log.info("%s: denied %s: %s", self.peer, self.principal.describe() if self.principal else "-",
                     ", ".join(f"{op} {kind}:{name}" for kind, name, op in outcome.denied[:5]))
            if self.ctx.access is not None:
                self._want_access(outcome.denied)
        if outcome.close is None and outcome.answer is None and outcome.forward is None and \
                outcome.fix_response is None:
            return None
        if outcome.fix_response is not None:
            outcome.fix_response = self._looking_up_topics(outcome.fix_response, topics)
        return outcome

    def _looking_up_topics(self, fix: FixResponse, topics: _RecordingTopicIds) -> FixResponse:
        """The fix-up, raising _TopicsUnknown when it met topic ids this worker does not know (a topic newer
        than its last look), unless they were just looked up: the response then waits for the lookup (an
        assignment filtered down once, for instance, would never be sent again)."""
        def fix_knowing_topics(body: dict[str, Any]) -> dict[str, Any]:
            topics.missed = False
            fixed = fix(body)
            if topics.missed and not self.fresh_response_topics:
                raise _TopicsUnknown()
            return fixed
        return fix_knowing_topics

    def _fetch_masking(self, body: dict[str, Any], version: int) -> masking.FetchMasking | None:
        assert self.views is not None
        return masking.fetch_masking(body, version, self.views.view(), self.ctx.policy.engine(), self.ctx.maskers,
                                     self.ctx.cluster.name_of, self.ctx.config.limits.max_response_bytes, self.peer)

    def _share_fetch_masking(self, body: dict[str, Any], version: int) -> masking.FetchMasking:
        """The share session this ShareFetch (as forwarded) leaves behind, every partition of it authorized
        again, and the masking of whatever the session answers with (Refusal closes the connection)."""
        assert self.views is not None
        try:
            topic_ids = self.share_sessions.fetch(body, self._may_read_topic)
        except ShareSessionError as exc:
            raise Refusal(str(exc)) from exc
        return masking.share_fetch_masking(topic_ids, version, self.views.view(), self.ctx.policy.engine(),
                                           self.ctx.maskers, self.ctx.cluster.name_of,
                                           self.ctx.config.limits.max_response_bytes, self.peer)

    def _may_read_topic(self, topic_id: bytes) -> bool:
        """A topic a share session holds may still be read (a topic the gateway no longer knows may not)."""
        name = self.ctx.cluster.name_of(topic_id)
        return name is not None and self._decide("topic", name, "read")

    def _produce_masking(self, body: dict[str, Any], version: int) -> produce_masking.ProduceMasking | None:
        assert self.views is not None
        return produce_masking.produce_masking(body, version, self.views.view(), self.ctx.policy.engine(),
                                               self.ctx.maskers, self.ctx.cluster.name_of,
                                               self.ctx.config.limits.max_request_bytes, self.peer)

    def _decide(self, resource_type: str, name: str, operation: str) -> bool:
        assert self.views is not None
        decision = self.views.view().decide(resource_type, name, operation)
        if decision.allowed:
            return True
        if decision.approval_required and self.ctx.grants is not None:
            grant = self.ctx.grants.find(self.views.subject, resource_type, name, operation, self.ctx.clock.now())
            if grant is not None:
                self.request_grants.append(grant.id)
                if grant.id not in self.grants_used:
                    self.grants_used.add(grant.id)
                    self.ctx.granted_connections.add(self)
                    log.info("%s: %s uses access grant %s for %s on %s %s", self.peer, self.views.subject,
                             grant.id, operation, resource_type, name)
                return True
        return False

    def _want_access(self, denied: list[tuple[str, str, str]]) -> None:
        """Refusals an approver could lift become (deduplicated) pending access requests."""
        assert self.views is not None and self.ctx.access is not None
        view = self.views.view()
        for resource_type, name, operation in denied:
            decision = view.decide(resource_type, name, operation)
            if not decision.approval_required or decision.rule is None:
                continue
            rule = self.ctx.policy.engine().rules.get(decision.rule)
            operations = access.operations_to_request(operation, rule.operations if rule else ())
            client_id = self.principal.client_id if self.principal else None
            self.ctx.access.want(self.views.subject, self.views.groups, resource_type, name, operations,
                                 decision.rule, f"{self.peer} client_id={client_id}")

    def _undeliverable(self, delivery: _Delivery) -> str | None:
        """Why this response may no longer go to the client, or None."""
        if delivery.grants:
            ended = self._ended_grant(delivery.grants)
            if ended is not None:
                return f"access grant {ended} ended"
        if delivery.view is None or self.views is None:
            return None
        now = self.views.view()
        if now is delivery.view:    # the same policy generation: the usual case, settled by one comparison
            return None
        for topic in delivery.topics:
            name = topic if type(topic) is str else self.ctx.cluster.name_of(topic)
            if name is None:    # its decision cannot be asked again: fail closed
                return f"the policy changed while a fetch waited at the broker, and topic id {topic.hex()} is unknown"
            before = delivery.view.decide("topic", name, "read")
            after = now.decide("topic", name, "read")
            if (after.allowed, after.approval_required, after.masking) != (
                    before.allowed, before.approval_required, before.masking):
                return f"the policy changed for topic {name} while a fetch of it waited at the broker"
        return None

    def _ended_grant(self, grants: tuple[str, ...]) -> str | None:
        """The first of these grants that is no longer in force (revoked, expired), or None."""
        table = self.ctx.grants
        if table is None:
            return grants[0]
        table.refresh()
        now = self.ctx.clock.now()
        return next((grant for grant in grants if not table.active(grant, now)), None)

    def check_grants(self) -> None:
        """Close the connection if any grant it relied on has ended (called by the worker's grant watch)."""
        ended = self._ended_grant(tuple(self.grants_used))
        if ended is not None:
            self.close(f"access grant {ended} ended")

    def _reencode(self, frame: Any, api_key: int, version: int, correlation_id: int, body: dict[str, Any]) -> bytes:
        client_id = codec.parse_request_header(frame)[3]
        return codec.encode_request_frame(api_key, version, correlation_id, client_id, body)

    def _set_principal(self, principal: Principal) -> None:
        if self.views is None or (self.views.subject, self.views.groups) != (principal.subject, principal.groups):
            self.views = ViewHolder(self.ctx.policy, principal.subject, principal.groups)
        self.principal = principal

    def _local_answer(self, frame: Any, api_key: int, version: int, correlation_id: int) -> bytes:
        """The gateway's own answer to an API it serves or refuses; Refusal when it must close instead."""
        if api_key == API_VERSIONS:
            if not self._version_ok(api_key, version):
                return apiversions.too_new_response(correlation_id)
            return apiversions.local_response(version, correlation_id, self.ctx.broker_api_versions,
                                              self.ctx.advertised)
        if self.ctx.validator is not None and self._version_ok(api_key, version):
            if api_key == SASL_HANDSHAKE:
                response, self.mechanism = sasl.handshake(frame, version, correlation_id,
                                                          sasl.mechanisms(self.ctx.config.auth.sasl_plain))
                return response
            if api_key == SASL_AUTHENTICATE:  # no handshake came first
                return sasl.out_of_order_response(version, correlation_id)
        reason = NEVER_FORWARDED.get(api_key, "not supported by the gateway")
        log.info("%s: refusing api_key=%d v%d (%s)", self.peer, api_key, version, reason)
        self.ctx.refused_total += 1
        if codec.supports(api_key, version, "response"):
            body = codec.top_level_error_response(api_key, version, UNSUPPORTED_VERSION)
            if body is not None:
                return codec.encode_response_frame(api_key, version, correlation_id, body)
        raise Refusal(reason)

    def _answer(self, correlation_id: int, response: bytes) -> None:
        """Send a gateway-made response now, or after the responses the client is still waiting for."""
        if self.inflight:
            self.inflight.append((correlation_id, -1, -1, response, None, None))
        elif self.transport is not None:
            self.transport.write(response)

    def _defer(self, frames: list, step: Awaitable[Any], fresh_topics: bool = False) -> None:
        """Hold these frames (and whatever arrives) until an asynchronous step is done, then handle them.
        With fresh_topics, the worker has just looked topics up: names and ids it still does not know are
        missing, and are decided as such rather than looked up again."""
        self.deferred = list(frames)
        if self.transport is not None:
            self.transport.pause_reading()

        async def run() -> None:
            await step
            if self.state == CLOSED:
                return
            deferred, self.deferred = self.deferred or [], None
            if self.transport is not None and not self.reading_paused_for_inflight:
                self.transport.resume_reading()
            self.fresh_topics = fresh_topics
            try:
                self._handle(deferred)
            finally:
                self.fresh_topics = False

        self.ctx.loop.create_task(run())

    # -- sign-in -------------------------------------------------------------------------------------
    def _start_sign_in(self, frame: Any, version: int, correlation_id: int, rest: list) -> None:
        self.deferred = list(rest)
        if self.transport is not None:
            self.transport.pause_reading()
        self.ctx.loop.create_task(self._sign_in(frame, version, correlation_id))

    async def _sign_in(self, frame: Any, version: int, correlation_id: int) -> None:
        mechanism, self.mechanism = self.mechanism, None  # each SaslAuthenticate needs its own handshake
        header, body = codec.decode_request_frame(frame)
        validator = self.ctx.validator
        assert validator is not None and mechanism is not None
        try:
            outcome: sasl.SignIn | sasl.AuthFailure = await sasl.sign_in(
                mechanism, bytes(body["auth_bytes"]), validator.validate, self.peer, header[3], self.ctx.token_error)
            if self.principal is not None and outcome.principal.subject != self.principal.subject:
                outcome = sasl.AuthFailure(f"re-authentication as {outcome.principal.subject} on a connection "
                                           f"of {self.principal.subject}")
        except sasl.AuthFailure as failure:
            outcome = failure
        if self.state == CLOSED:
            return
        self._answer(correlation_id, sasl.authenticate_response(version, correlation_id, outcome))
        if isinstance(outcome, sasl.AuthFailure):
            self.ctx.auth_failures_total += 1
            log.warning("%s: sign-in failed (%s): %s", self.peer, mechanism, outcome.reason)
            self.close(f"authentication failed: {outcome.reason}", quiet=True)
            return
        first = self.principal is None
        self._set_principal(outcome.principal)
        self._schedule_expiry(outcome.principal.expires_at)
        log.info("%s: %s %s, session %d s", self.peer, "signed in" if first else "re-authenticated",
                 outcome.principal.describe(), outcome.lifetime_ms // 1000)
        if first:
            # Reading stays paused until the upstream is ready; frames that came behind the
            # sign-in stay in ``deferred`` and are handled then, in order.
            self.state = CONNECTING
            self.requests.max_frame = self.ctx.config.limits.max_request_bytes
            self.ctx.loop.create_task(self._connect_upstream())
            return
        deferred, self.deferred = self.deferred or [], None
        if self.transport is not None and not self.reading_paused_for_inflight:
            self.transport.resume_reading()
        if deferred:
            self._handle(deferred)

    def _schedule_expiry(self, expires_at: float) -> None:
        """A connection lives no longer than its token, long poll or not (closed at expiry, not after)."""
        if self.expiry is not None:
            self.expiry.cancel()
        delay = max(0.0, expires_at - time.time())
        self.expiry = self.ctx.loop.call_later(delay, self.close, "token expired")

    # -- responses -----------------------------------------------------------------------------------
    def upstream_frames(self, frames: list[tuple[Any, int]]) -> None:
        self.last_active = self.ctx.loop.time()
        if self.held_responses is not None:
            self.held_responses += frames  # behind the one waiting for a topic lookup, in order
            return
        inflight = self.inflight
        out: list[Any] = []
        read_from = None  # (what a masked Fetch asked, its response) when a read-ahead may follow it
        for index, (frame, correlation_id) in enumerate(frames):
            while inflight and inflight[0][3] is not None:
                out.append(inflight.popleft()[3])
            if not inflight:
                self.close(f"broker sent correlation id {correlation_id} that no request is waiting for")
                return
            expected, api_key, version, _, fix, delivery = inflight.popleft()
            if correlation_id != expected:
                self.close(f"broker answered correlation id {correlation_id}, expected {expected}")
                return
            ahead = self.read_ahead
            if ahead is not None and fix is ahead.masking:
                # The gateway's own Fetch: kept for the client's next one, not sent.
                try:
                    ahead.keep(ahead.masking.splice(frame), frame, self.ctx.loop, self._drop_read_ahead)
                except WalkError as exc:
                    self.close(f"cannot mask a read-ahead Fetch response: {exc}")
                    return
                continue
            asked = self.fetches_asked.pop(expected, None) if self.fetches_asked else None
            if asked is not None:
                asked = (*asked, delivery)
            if delivery is not None:
                # A long poll answered after a grant ended, or after a policy change that refuses or masks its
                # topics differently, must not deliver: close instead (the client fetches again, and is decided
                # afresh; nothing is lost, as nothing was delivered).
                reason = self._undeliverable(delivery)
                if reason is not None:
                    self.close(reason)
                    return
            if type(fix) is masking.FetchMasking:
                try:
                    spliced = fix.splice(frame)
                except WalkError as exc:
                    self.close(f"cannot mask api_key={api_key} v{version} response: {exc}")
                    return
                if spliced is not None:
                    out += spliced
                    if asked is not None:
                        read_from = (asked, frame)
                    continue
            rewrite = RESPONSE_REWRITES.get(api_key)
            if fix is not None or (rewrite is not None and version >= rewrite[0]):
                try:
                    frame = self._rewrite(frame, api_key, version,
                                          rewrite[1] if rewrite is not None and version >= rewrite[0] else None, fix)
                except (codec.DecodeError, WalkError, UnmappableNode) as exc:
                    self.close(f"cannot rewrite api_key={api_key} v{version} response: {exc}")
                    return
                except _TopicsUnknown:
                    inflight.appendleft((expected, api_key, version, None, fix, delivery))
                    self._hold_responses(frames[index:], out)
                    return
            out.append(frame)
        while inflight and inflight[0][3] is not None:
            out.append(inflight.popleft()[3])
        if self.transport is not None:
            self.transport.writelines(out)
        if read_from is not None:
            (version, body, client_id, delivery), frame = read_from
            self._start_read_ahead(version, body, client_id, delivery, read_ahead.read(frame, version))
        if self.reading_paused_for_inflight and len(inflight) < self.ctx.config.limits.max_inflight // 2:
            self.reading_paused_for_inflight = False
            if self.state == READY and self.transport is not None and self.deferred is None:
                self.transport.resume_reading()
        if self.state == DRAINING and not inflight:
            self.close("drained")

    def _hold_responses(self, frames: list[tuple[Any, int]], out: list[Any]) -> None:
        """Send what is ready, hold these responses (and any behind them) until the worker has looked up its
        topics, then handle them again, unknown ids now decided as unknown."""
        if self.transport is not None and out:
            self.transport.writelines(out)
        self.held_responses = list(frames)
        if self.upstream is not None:
            self.upstream.pause_reading()

        async def run() -> None:
            await self.ctx.refresh_topics(self.ctx.loop.time())
            held, self.held_responses = self.held_responses or [], None
            if self.state == CLOSED:
                return
            if self.upstream is not None:
                self.upstream.resume_reading()
            self.fresh_response_topics = True
            try:
                self.upstream_frames(held)
            finally:
                self.fresh_response_topics = False

        self.ctx.loop.create_task(run())

    # -- read-ahead (gateway/handlers/read_ahead.py) --------------------------------------------------------
    def _start_read_ahead(self, version: int, body: dict[str, Any], client_id: str | None, delivery: _Delivery,
                          response: read_ahead.Read) -> None:
        """Send the broker the Fetch the client will most likely send next, when the response to ``body`` shows a
        backlog and nothing else is in flight."""
        if self.inflight or self.read_ahead is not None or self.state != READY or self.deferred is not None or \
                self.upstream is None:
            return
        predicted = read_ahead.predict(body, version, response)
        if predicted is None:
            return
        if version >= 7:
            predicted.update(session_id=0, session_epoch=-1)
        masked = masking.fetch_masking(predicted, version, delivery.view, self.ctx.policy.engine(), self.ctx.maskers,
                                       self.ctx.cluster.name_of, self.ctx.config.limits.max_response_bytes,
                                       self.peer, hold_counts=True)
        if masked is None:
            return
        self.read_ahead_ids -= 1
        correlation_id = self.read_ahead_ids
        self.read_ahead = ReadAhead(correlation_id, version, predicted, masked, delivery, client_id,
                                    self.ctx.loop.create_future())
        self.inflight.append((correlation_id, FETCH, version, None, masked, None))
        self.upstream.write([codec.encode_request_frame(FETCH, version, correlation_id, client_id, predicted)])

    def _drop_read_ahead(self, kept: weakref.ref[ReadAhead]) -> None:
        """A read-ahead the client has not asked for in read_ahead.KEEP_S: its records may be older than the
        broker would still serve (retention), and its memory is the client's whole fetch size."""
        if self.read_ahead is not None and self.read_ahead is kept():
            self.read_ahead = None
            self.ctx.read_ahead_dropped_total += 1

    def _read_ahead_answers(self, ahead: ReadAhead, body: dict[str, Any], view: Any) -> bool:
        """Whether the kept read-ahead answers this Fetch: asked exactly, holding records, under the same policy
        view and grants still in force."""
        if ahead.chunks is None or not ahead.read.has_records or not same_fetch(body, ahead.body, ahead.read.diverged):
            return False
        delivery = ahead.delivery
        return delivery.view is view and not (delivery.grants and self._ended_grant(delivery.grants) is not None)

    def _answer_from(self, ahead: ReadAhead, correlation_id: int) -> None:
        """Answer the client's Fetch with the kept read-ahead, then read ahead of that in turn."""
        self.ctx.read_ahead_answered_total += 1
        chunks = ahead.answer(correlation_id)
        if self.inflight:
            self._answer(correlation_id, b"".join(chunks))
        elif self.transport is not None:
            self.transport.writelines(chunks)
        self._start_read_ahead(ahead.version, ahead.body, ahead.client_id, ahead.delivery, ahead.read)

    def upstream_progress(self, frame: bytearray, received: int) -> None:
        """The first ``received`` bytes of a large response are in: a masked Fetch's masking runs ahead on them."""
        for expected, _, _, answer, fix, _ in self.inflight:
            if answer is None:
                if type(fix) is masking.FetchMasking and received >= 8 and _INT32.unpack_from(frame, 4)[0] == expected:
                    fix.advance(frame, received)
                return

    def _rewrite(self, frame: Any, api_key: int, version: int, rewrite: ResponseRewrite | None,
                 fix: FixResponse | None) -> Any:
        """Broker addresses out, refused parts back in; the frame is decoded only when something changes."""
        if fix is None and (api_key == PRODUCE or api_key == FETCH):
            # Leader hints (KIP-951) are rare: walk the frame, decode it only when they are there.
            plan = plan_for("response", api_key, version)
            if plan.walk(frame)[plan.tag_base + _NODE_ENDPOINTS_TAG] < 0:
                return frame
        correlation_id, body = codec.decode_response_frame(api_key, version, frame)
        changed = rewrite(body, version, self.ctx) if rewrite is not None else False
        if fix is not None:
            body = fix(body)
            changed = True
        if not changed:
            return frame
        return codec.encode_response_frame(api_key, version, correlation_id, body)

    def upstream_closed(self, reason: str) -> None:
        self.close(f"upstream: {reason}")

    def upstream_pause_writing(self) -> None:
        if self.transport is not None:
            self.transport.pause_reading()

    def upstream_resume_writing(self) -> None:
        if (self.transport is not None and self.state == READY and not self.reading_paused_for_inflight
                and self.deferred is None):
            self.transport.resume_reading()

    # -- lifecycle -----------------------------------------------------------------------------------
    def begin_drain(self) -> None:
        """Stop taking requests; close once every forwarded request has its response."""
        if self.state in (DRAINING, CLOSED):
            return
        if not self.inflight or self.state != READY:
            self.close("drained")
            return
        self.state = DRAINING
        if self.transport is not None:
            self.transport.pause_reading()

    def idle_for(self, now: float) -> float:
        return 0.0 if self.inflight else now - self.last_active

    def close(self, reason: str, quiet: bool = False) -> None:
        if self.state == CLOSED:
            return
        self.state = CLOSED
        self.close_reason = reason
        if self.read_ahead is not None and not self.read_ahead.arrived.done():
            self.read_ahead.arrived.set_result(None)  # a Fetch deferred behind it is dropped with the connection
        if not quiet:
            log.info("%s: closing connection: %s", self.peer, reason)
        if self.expiry is not None:
            self.expiry.cancel()
        self.ctx.granted_connections.discard(self)
        if self.transport is not None:
            self.transport.close()
        if self.upstream is not None:
            self.upstream.close()
        self.ctx.connection_closed(self)
