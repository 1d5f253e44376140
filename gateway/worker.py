"""A worker process: one uvloop event loop serving every listener through SO_REUSEPORT.

Lifecycle::

    DISCOVERING --broker versions + nodes known--> SERVING --TERM--> DRAINING --all closed / timeout--> STOPPED

Signals only set state through the loop (``add_signal_handler``): TERM drains,
HUP reloads the config file in place (open connections stay), INT is left to
the supervisor, which owns the terminal.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import signal
import socket
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import uvloop

from gateway.approvals.access import AccessRequester
from gateway.approvals.grants import GrantCache, GrantTable
from gateway.auth.jwks import JwksCache
from gateway.auth.tokens import TokenError, TokenValidator
from gateway.clock import Clock, SystemClock, clock_from_spec
from gateway.cluster import ClusterView, UnmappableNode
from gateway.config import ConfigError, GatewayConfig, load_config
from gateway.connection import ClientConnection
from gateway.handlers import apiversions
from gateway.handlers.masking import MaskerCache
from gateway.policy.snapshot import PolicyCache, PolicyStore
from gateway.protocol.apis import API_VERSIONS, METADATA
from gateway.stats import WorkerStats
from gateway.upstream import Upstream, UpstreamError

log = logging.getLogger("streamward.worker")

DISCOVERY_INTERVAL_S = 10.0
IDLE_SWEEP_INTERVAL_S = 5.0
STATS_INTERVAL_S = 1.0
TOPIC_REFRESH_INTERVAL_S = 0.25  # on-demand topic lookups of one worker, at most 4 per second


# glibc's malloc hands blocks over 128 KiB (then a moving threshold) to mmap and trims the heap's top once
# 128 KiB is free: a worker that receives a multi-megabyte Fetch response, masks it into a new buffer and
# frees both, pays fresh page faults and kernel zeroing for every response. Keeping freed memory for reuse
# cut the masking worker's CPU per GB by a third (py-spy: most time was memcpy into just-mapped pages).
MALLOC_MMAP_THRESHOLD_BYTES = 32 * 1024 * 1024  # glibc's largest allowed value on 64-bit
MALLOC_TRIM_THRESHOLD_BYTES = 256 * 1024 * 1024  # free heap kept for reuse, at most (bounded by use)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt parameters (malloc.h)


def keep_freed_memory() -> None:
    """Tune glibc malloc for large, short-lived buffers; nothing elsewhere (musl, macOS)."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        ok = libc.mallopt(_M_MMAP_THRESHOLD, MALLOC_MMAP_THRESHOLD_BYTES) and \
            libc.mallopt(_M_TRIM_THRESHOLD, MALLOC_TRIM_THRESHOLD_BYTES)
    except (OSError, AttributeError):
        return
    if not ok:
        log.warning("mallopt refused the worker's malloc settings; large responses cost extra page faults")


async def _never_discovered() -> bool:
    return False


class WorkerContext:
    """What every connection of this worker shares: settings, broker view, negotiated versions, counters."""

    def __init__(self, loop: asyncio.AbstractEventLoop, config: GatewayConfig, cluster: ClusterView,
                 policy: PolicyCache) -> None:
        self.loop = loop
        self.config = config
        self.cluster = cluster
        self.policy = policy  # the supervisor's published snapshot, checked once per request
        self.maskers = MaskerCache(b"")  # replaced by the Worker with the deployment's HMAC key
        self.versions: apiversions.VersionTable = {}  # forwarded (api_key -> version range)
        self.advertised: apiversions.VersionTable = {}  # what ApiVersions tells clients
        self.broker_api_versions: dict[str, Any] = {}  # the broker's own ApiVersions answer (features included)
        self.validator: TokenValidator | None = None  # None: sign-in switched off (development only)
        self.token_error: type[Exception] = TokenError
        self.connections: set[ClientConnection] = set()
        self.connections_total = 0
        self.requests_total = 0
        self.refused_total = 0
        self.denied_total = 0
        self.upstream_connects_total = 0
        self.auth_failures_total = 0
        self.read_ahead_answered_total = 0  # client Fetches answered with what the gateway had read ahead
        self.read_ahead_dropped_total = 0  # read-aheads no Fetch of the client asked for, or not in time to use
        self.discover: Callable[[], Awaitable[bool]] = _never_discovered  # set by the Worker
        # Just-in-time access: the supervisor's grant table, where refusals that need approval go, and
        # the clock grants are timed by (injectable: tests move it instead of sleeping).
        self.grants: GrantCache | None = None
        self.access: AccessRequester | None = None
        self.clock: Clock = SystemClock()
        self.granted_connections: set[ClientConnection] = set()  # connections that rely on a grant
        self.topics_refreshed_at = -TOPIC_REFRESH_INTERVAL_S
        self._topic_refresh: asyncio.Task[bool] | None = None

    async def refresh_topics(self, requested_at: float) -> None:
        """Return once a topic lookup that started after `requested_at` has finished.

        A lookup already running may have started before the topic was created, so it does not count.
        Waiting connections share one lookup (single-flight), and lookups start at most every
        TOPIC_REFRESH_INTERVAL_S, however many requests name topics the worker does not know.
        """
        while self.topics_refreshed_at < requested_at:
            if self._topic_refresh is None or self._topic_refresh.done():
                wait = self.topics_refreshed_at + TOPIC_REFRESH_INTERVAL_S - self.loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                    continue
                self.topics_refreshed_at = self.loop.time()
                self._topic_refresh = self.loop.create_task(self.discover())
            await asyncio.shield(self._topic_refresh)

    def connection_opened(self, connection: ClientConnection) -> None:
        self.connections.add(connection)
        self.connections_total += 1

    def connection_closed(self, connection: ClientConnection) -> None:
        self.connections.discard(connection)


class Worker:
    def __init__(self, config: GatewayConfig, slot: int, stats: WorkerStats, policy_store: PolicyStore,
                 masking_key: bytes, grant_table: GrantTable | None = None, access: AccessRequester | None = None
                 ) -> None:
        self.config = config
        self.grant_table = grant_table
        self.access = access
        self.policy_store = policy_store
        self.masking_key = masking_key
        self.slot = slot
        self.stats = stats
        self.ctx: WorkerContext | None = None
        self.servers: dict[int | None, asyncio.AbstractServer] = {}
        self.stopping: asyncio.Event | None = None
        self.keys: JwksCache | None = None

    def run(self) -> int:
        keep_freed_memory()
        uvloop.run(self._main())
        return 0

    async def _main(self) -> None:
        loop = asyncio.get_running_loop()
        self.stopping = asyncio.Event()
        self.ctx = WorkerContext(loop, self.config, ClusterView(self.config.listen, self._bind_node),
                                 PolicyCache(self.policy_store))
        self.ctx.discover = self._discover
        threads = self.config.limits.mask_threads
        pool = ThreadPoolExecutor(threads, thread_name_prefix="mask") if threads else None
        self.ctx.maskers = MaskerCache(self.masking_key, pool)
        if self.grant_table is not None:
            self.ctx.grants = GrantCache(self.grant_table)
            self.ctx.access = self.access
            self.ctx.clock = clock_from_spec(self.config.approvals.clock)
        loop.add_signal_handler(signal.SIGTERM, self._on_term)
        loop.add_signal_handler(signal.SIGHUP, lambda: loop.create_task(self._reload()))
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        tasks = [loop.create_task(self._publish_stats()), loop.create_task(self._sweep_idle()),
                 loop.create_task(self._watch_grants())]
        await self._start_auth()
        while not self.ctx.versions and not self.stopping.is_set():
            if not await self._discover():
                await asyncio.sleep(2.0)
        if not self.stopping.is_set():
            if self._bind(self.config.listen.bootstrap_port, None):
                log.info("worker %d serving on %s:%d", self.slot, self.config.listen.host,
                         self.config.listen.bootstrap_port)
            tasks.append(loop.create_task(self._rediscover()))
        await self.stopping.wait()
        await self._drain()
        if self.keys is not None:
            self.keys.close()
        for task in tasks:
            task.cancel()
        self._write_stats()

    async def _start_auth(self) -> None:
        """(Re)build the token validator; connections already signed in keep their principals."""
        assert self.ctx is not None
        if self.keys is not None:
            self.keys.close()
            self.keys = None
        oidc = self.config.auth.oidc
        self.ctx.validator = None
        if oidc is not None:
            # Each worker keeps its own key cache: single-flight and rate-limited, fetched off the loop.
            self.keys = JwksCache(oidc)
            await self.keys.start()
            self.ctx.validator = TokenValidator(oidc, self.keys)
        if self.ctx.versions:
            self.ctx.advertised = apiversions.advertised_versions(self.ctx.versions, sasl=oidc is not None)

    # -- discovery ------------------------------------------------------------------------------------
    async def _discover(self) -> bool:
        """Learn the broker's API versions and nodes with the gateway's own credential."""
        assert self.ctx is not None
        upstream_settings = self.ctx.config.upstream
        for address in upstream_settings.bootstrap_servers:
            try:
                upstream = await Upstream.open(upstream_settings, self.ctx.config.limits, address)
            except UpstreamError as exc:
                log.warning("discovery: %s", exc)
                continue
            try:
                versions = await upstream.request(API_VERSIONS, 3, {"client_software_name": "streamward",
                                                                    "client_software_version": "0.1.0"})
                if versions["error_code"] != 0:
                    raise UpstreamError(f"ApiVersions error {versions['error_code']}")
                forwarded = apiversions.forwarded_versions(apiversions.broker_versions(versions))
                self.ctx.broker_api_versions = versions
                self.ctx.advertised = apiversions.advertised_versions(forwarded, sasl=self.ctx.validator is not None)
                self.ctx.versions = forwarded
                # All topics: the gateway's own topic id -> name map, for requests that name topics by id.
                metadata = await upstream.request(METADATA, 12, {"topics": None, "allow_auto_topic_creation": False})
                for broker in metadata["brokers"]:
                    self.ctx.cluster.learn(broker["node_id"], broker["host"], broker["port"])
                for topic in metadata["topics"]:
                    if topic["error_code"] == 0 and topic["name"]:
                        self.ctx.cluster.learn_topic(topic["name"], topic["topic_id"])
                return True
            except (UpstreamError, UnmappableNode, KeyError) as exc:
                log.warning("discovery via %s:%d failed: %s", address[0], address[1], exc)
            finally:
                upstream.close()
        return False

    async def _rediscover(self) -> None:
        while True:
            await asyncio.sleep(DISCOVERY_INTERVAL_S)
            await self._discover()

    # -- listeners ------------------------------------------------------------------------------------
    def _bind_node(self, node_id: int) -> None:
        port = self.config.listen.node_port(node_id)
        if port is not None and node_id not in self.servers:
            self._bind(port, node_id)

    def _bind(self, port: int, node_id: int | None) -> bool:
        """Each worker owns its own listening socket on the shared port (SO_REUSEPORT)."""
        assert self.ctx is not None
        host = self.config.listen.host
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((host, port))
            sock.listen(1024)
            sock.setblocking(False)
        except OSError as exc:
            sock.close()
            log.error("cannot listen on %s:%d for %s: %s", host, port,
                      "bootstrap" if node_id is None else f"node {node_id}", exc)
            return False
        ctx = self.ctx
        self.servers[node_id] = None  # type: ignore[assignment]  # reserved while create_server runs

        async def start() -> None:
            server = await ctx.loop.create_server(lambda: ClientConnection(ctx, node_id), sock=sock)
            if self.stopping is not None and self.stopping.is_set():
                server.close()
            else:
                self.servers[node_id] = server

        ctx.loop.create_task(start())
        return True

    def _close_listeners(self) -> None:
        for server in self.servers.values():
            if server is not None:
                server.close()
        self.servers.clear()

    # -- signals ---------------------------------------------------------------------------------------
    def _on_term(self) -> None:
        assert self.stopping is not None
        if self.stopping.is_set():
            os._exit(1)  # a second TERM forces
        log.info("worker %d draining", self.slot)
        self.stopping.set()

    async def _drain(self) -> None:
        assert self.ctx is not None
        self._close_listeners()
        for connection in list(self.ctx.connections):
            connection.begin_drain()
        deadline = time.monotonic() + self.ctx.config.drain_timeout_s
        while self.ctx.connections and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for connection in list(self.ctx.connections):
            connection.close("drain timeout")
        log.info("worker %d stopped", self.slot)

    async def _reload(self) -> None:
        assert self.ctx is not None
        try:
            config = load_config(self.config.path)
        except ConfigError as exc:
            log.error("reload refused, keeping the running config: %s", exc)
            return
        listen_changed = config.listen != self.config.listen
        auth_changed = config.auth != self.config.auth
        self.config = config
        self.ctx.config = config
        if auth_changed:
            await self._start_auth()
        self.ctx.cluster.listen = config.listen
        if listen_changed:
            self._close_listeners()
            self._bind(config.listen.bootstrap_port, None)
            for node_id in self.ctx.cluster.node_ids:
                self._bind_node(node_id)
        log.info("worker %d reloaded %s (%d open connections kept)", self.slot, config.path, len(self.ctx.connections))

    # -- housekeeping ----------------------------------------------------------------------------------
    async def _sweep_idle(self) -> None:
        assert self.ctx is not None
        while True:
            await asyncio.sleep(IDLE_SWEEP_INTERVAL_S)
            now = self.ctx.loop.time()
            limit = self.ctx.config.limits.idle_timeout_s
            for connection in list(self.ctx.connections):
                if connection.idle_for(now) > limit:
                    connection.close(f"idle for more than {limit:.0f} s")

    async def _watch_grants(self) -> None:
        """Connections that relied on a grant that has ended (expired on this worker's clock, or revoked and so
        gone from the table) are closed within one check interval, long poll or not."""
        ctx = self.ctx
        assert ctx is not None
        while True:
            await asyncio.sleep(self.config.approvals.check_interval_s)
            if ctx.grants is None or not ctx.granted_connections:
                continue
            for connection in list(ctx.granted_connections):
                connection.check_grants()

    async def _publish_stats(self) -> None:
        while True:
            self._write_stats()
            await asyncio.sleep(STATS_INTERVAL_S)

    def _write_stats(self) -> None:
        ctx: Any = self.ctx
        self.stats.write(self.slot, pid=os.getpid(), serving=int(None in self.servers),
                         connections_open=len(ctx.connections),
                         connections_total=ctx.connections_total, requests_total=ctx.requests_total,
                         refused_total=ctx.refused_total, denied_total=ctx.denied_total,
                         upstream_connects_total=ctx.upstream_connects_total,
                         auth_failures_total=ctx.auth_failures_total,
                         read_ahead_answered_total=ctx.read_ahead_answered_total,
                         read_ahead_dropped_total=ctx.read_ahead_dropped_total, heartbeat_ms=int(time.time() * 1000))
        if ctx.maskers.counts:
            self.stats.write_labelled(self.slot, {"masked_fields_total": dict(ctx.maskers.counts)})
