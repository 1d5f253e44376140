"""The supervisor: forks the workers, keeps them alive, and turns signals into actions.

Signal handlers only enqueue and wake the main loop (the gunicorn arbiter
pattern); the loop then handles them one at a time::

    RUNNING --HUP--> validate config --ok--> HUP every worker (in-place reload, connections kept)
       |                           \\--bad--> log, keep the running config
       |--TERM/INT--> STOPPING: TERM every worker (each drains) --all exited--> exit 0
       |                 \\--second TERM/INT--> KILL every worker, exit 1
       \\--CHLD--> reap; respawn the slot, delayed by the crash-loop guard

The admin HTTP endpoint (health, metrics) runs on a thread of this process and
reads the workers' counters from shared memory.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import secrets
import select
import signal
import sys
import threading
import time
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import orjson

from gateway.approvals.runtime import Approvals
from gateway.config import ConfigError, GatewayConfig, load_config
from gateway.policy.model import PolicyError
from gateway.policy.snapshot import PolicyCache, PolicyStore
from gateway.policy.watch import PolicyWatcher
from gateway.stats import FIELDS, WorkerStats

log = logging.getLogger("streamward.supervisor")

MAX_ADMIN_BODY = 64 * 1024  # the approvals API's bodies are small JSON objects
CRASH_WINDOW_S = 30.0
CRASHES_BEFORE_BACKOFF = 3
MAX_BACKOFF_S = 30.0


class Supervisor:
    def __init__(self, config: GatewayConfig) -> None:
        self.config = config
        self.slots = config.worker_count
        self.stats = WorkerStats(self.slots)
        # Created before any fork: workers inherit the mapping and read snapshots without a syscall.
        self.policy_store = PolicyStore(config.policy.max_bytes)
        self.policy = PolicyWatcher(config.policy, self.policy_store)
        # The grant table and the workers' channel for access requests are inherited at fork too.
        self.approvals = Approvals(config, PolicyCache(self.policy_store).engine)
        # Masking's hash strategy must give every worker the same token for the same input.
        if config.masking_key is not None:
            self.masking_key = config.masking_key.reveal().encode()
        else:
            self.masking_key = secrets.token_bytes(32)
            log.warning("no masking.hmac_key configured: hashed values change at every restart")
        self.next_policy_poll = 0.0
        self.workers: dict[int, int] = {}  # pid -> slot
        self.respawn_at: dict[int, float] = {}  # slot -> monotonic time of its next start
        self.deaths: dict[int, deque[float]] = {slot: deque(maxlen=16) for slot in range(self.slots)}
        self.signals: deque[int] = deque()
        self.stopping = False
        self.wake_r, self.wake_w = os.pipe()
        self.admin: ThreadingHTTPServer | None = None

    # -- main loop ------------------------------------------------------------------------------------
    def run(self) -> int:
        for flag_fd in (self.wake_r, self.wake_w):
            os.set_blocking(flag_fd, False)
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD):
            signal.signal(signum, self._enqueue)
        try:
            self.policy.load()
        except PolicyError as exc:
            log.error("cannot start: %s", exc)
            return 2
        try:
            self.approvals.start()  # before the workers: grants that survived a restart are in force at once
        except Exception as exc:  # noqa: BLE001 - any store failure stops the start, with its reason
            log.error("cannot start: approvals store: %s", exc)
            return 2
        log.info("supervisor %d starting %d workers (config %s)", os.getpid(), self.slots, self.config.path)
        for slot in range(self.slots):
            self._spawn(slot)
        self._start_admin()
        while True:
            readable, _, _ = select.select([self.wake_r], [], [], 0.2)
            if readable:
                try:
                    while os.read(self.wake_r, 512):
                        pass
                except BlockingIOError:
                    pass
            while self.signals:
                result = self._handle(self.signals.popleft())
                if result is not None:
                    return result
            self._reap()
            if self.stopping:
                if not self.workers:
                    self.approvals.close()
                    log.info("supervisor stopped")
                    return 0
                continue
            self.approvals.tick()
            now = time.monotonic()
            if now >= self.next_policy_poll:
                self.next_policy_poll = now + self.config.policy.watch_interval_s
                self.policy.poll()
            for slot, when in list(self.respawn_at.items()):
                if now >= when:
                    del self.respawn_at[slot]
                    self._spawn(slot)

    def _enqueue(self, signum: int, _frame: object) -> None:
        self.signals.append(signum)
        try:
            os.write(self.wake_w, b"!")
        except BlockingIOError:
            pass

    def _handle(self, signum: int) -> int | None:
        if signum == signal.SIGCHLD:
            return None
        if signum == signal.SIGHUP:
            self._reload()
            return None
        if self.stopping:
            log.warning("second stop signal: killing workers")
            self._signal_workers(signal.SIGKILL)
            return 1
        log.info("stop signal: draining workers (timeout %.0f s)", self.config.drain_timeout_s)
        self.stopping = True
        self.respawn_at.clear()
        self._signal_workers(signal.SIGTERM)
        return None

    def _reload(self) -> None:
        try:
            config = load_config(self.config.path)
        except ConfigError as exc:
            log.error("reload refused, keeping the running config: %s", exc)
            return
        self.config = config
        logging.getLogger().setLevel(config.log_level)
        log.info("config %s validated; reloading workers", config.path)
        if config.policy.max_bytes != self.policy_store.max_bytes:
            log.warning("policy.max_bytes changes only at restart")
        self.policy.settings = config.policy
        self.policy.reload()
        self._signal_workers(signal.SIGHUP)

    def _signal_workers(self, signum: int) -> None:
        for pid in list(self.workers):
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                pass

    # -- workers --------------------------------------------------------------------------------------
    def _spawn(self, slot: int) -> None:
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                self._become_worker(slot)
                code = 0
            except BaseException:
                log.exception("worker %d crashed", slot)
            finally:
                logging.shutdown()
                os._exit(code)
        self.workers[pid] = slot
        log.info("worker %d started as pid %d", slot, pid)

    def _become_worker(self, slot: int) -> None:
        from gateway.approvals.access import AccessRequester
        from gateway.worker import (
            Worker,  # imported in the child only: uvloop must not start in the supervisor
        )

        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD):
            signal.signal(signum, signal.SIG_DFL)
        os.close(self.wake_r)
        os.close(self.wake_w)
        if self.admin is not None:
            self.admin.socket.close()
        self.approvals.supervisor_end.close()
        requester = AccessRequester(self.approvals.worker_end)
        Worker(self.config, slot, self.stats, self.policy_store, self.masking_key, self.approvals.table,
               requester).run()

    def _reap(self) -> None:
        while self.workers:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            slot = self.workers.pop(pid, None)
            if slot is None:
                continue
            self.stats.clear(slot)
            if self.stopping:
                log.info("worker %d (pid %d) exited", slot, pid)
                continue
            self._schedule_respawn(slot, pid, status)

    def _schedule_respawn(self, slot: int, pid: int, status: int) -> None:
        """Respawn at once, unless the slot keeps dying: then wait, doubling up to MAX_BACKOFF_S."""
        now = time.monotonic()
        deaths = self.deaths[slot]
        deaths.append(now)
        recent = sum(1 for t in deaths if now - t < CRASH_WINDOW_S)
        delay = 0.0
        if recent > CRASHES_BEFORE_BACKOFF:
            delay = min(MAX_BACKOFF_S, 2.0 ** (recent - CRASHES_BEFORE_BACKOFF))
        if os.WIFSIGNALED(status):
            how = f"signal {os.WTERMSIG(status)}"
        else:
            how = f"exit code {os.waitstatus_to_exitcode(status)}"
        log.warning("worker %d (pid %d) died (%s); respawning in %.1f s", slot, pid, how, delay)
        self.respawn_at[slot] = now + delay

    # -- admin HTTP -----------------------------------------------------------------------------------
    def health(self) -> dict[str, object]:
        workers = [self.stats.read(slot) | {"slot": slot} for slot in range(self.slots)]
        serving = [w for w in workers if w["pid"] and w["serving"]]
        return {"status": "ok" if len(serving) == self.slots and not self.stopping else "degraded",
                "policy_generation": self.policy_store.generation(), "workers": workers}

    def metrics_text(self) -> str:
        lines = []
        for field in FIELDS[2:-1]:
            kind = "gauge" if field == "connections_open" else "counter"
            lines.append(f"# TYPE streamward_{field} {kind}")
            for slot in range(self.slots):
                lines.append(f'streamward_{field}{{worker="{slot}"}} {self.stats.read(slot)[field]}')
        labelled = [self.stats.read_labelled(slot) for slot in range(self.slots)]
        lines.append("# HELP streamward_masked_fields_total Fields masked, per topic and masking rule "
                     "(Fetch and Produce).")
        lines.append("# TYPE streamward_masked_fields_total counter")
        for slot, counters in enumerate(labelled):
            for key, count in sorted(counters.get("masked_fields_total", {}).items()):
                topic, _, rule = key.rpartition("/")
                lines.append(f'streamward_masked_fields_total{{worker="{slot}",topic="{_label(topic)}",'
                             f'rule="{_label(rule)}"}} {count}')
        lines += self.approvals.metrics_lines()
        return "\n".join(lines) + "\n"

    def _start_admin(self) -> None:
        supervisor = self

        class Handler(BaseHTTPRequestHandler):
            timeout = 10  # seconds a client may take to send its request: a stalled one loses its thread
            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                if self.path == "/healthz":
                    health = supervisor.health()
                    self._send(200 if health["status"] == "ok" else 503, orjson.dumps(health), "application/json")
                elif self.path == "/metrics":
                    self._send(200, supervisor.metrics_text().encode(), "text/plain; version=0.0.4")
                elif self.path.startswith("/v1/"):
                    self._api("GET")
                else:
                    self._send(404, b"not found\n", "text/plain")

            def do_POST(self) -> None:  # noqa: N802
                if self.path.startswith("/v1/"):
                    self._api("POST")
                else:
                    self._send(404, b"not found\n", "text/plain")

            def _api(self, method: str) -> None:
                """The approvals API (gateway/approvals/api.py, docs/openapi.yaml)."""
                api = supervisor.approvals.api
                if api is None:
                    self._send(503, b'{"error": "approvals are not running"}', "application/json")
                    return
                try:
                    length = int(self.headers.get("Content-Length") or 0)
                except ValueError:
                    length = -1
                if not 0 <= length <= MAX_ADMIN_BODY:
                    self._send(413, b'{"error": "request body too large"}', "application/json")
                    return
                body = self.rfile.read(length) if length else b""
                url = urlsplit(self.path)
                # self.headers looks names up without regard to case, as HTTP wants.
                status, answer = api.handle(method, url.path, parse_qs(url.query), self.headers, body)
                extra = {"WWW-Authenticate": "Bearer"} if status == 401 else {}
                self._send(status, orjson.dumps(answer), "application/json", extra)

            def _send(self, code: int, body: bytes, content_type: str, extra: dict[str, str] | None = None) -> None:
                self.send_response(code)
                for name, value in (extra or {}).items():
                    self.send_header(name, value)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        try:
            self.admin = ThreadingHTTPServer((self.config.admin.host, self.config.admin.port), Handler)
        except OSError as exc:
            log.error("admin HTTP cannot listen on %s:%d: %s", self.config.admin.host, self.config.admin.port, exc)
            return
        self.admin.daemon_threads = True
        threading.Thread(target=self.admin.serve_forever, name="admin-http", daemon=True).start()
        log.info("admin HTTP on http://%s:%d (/healthz, /metrics, /v1 approvals API)", self.config.admin.host,
                 self.config.admin.port)


def _label(value: str) -> str:
    """A Prometheus label value: backslash, quote and newline escaped (topic names are client-chosen)."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def configure_logging(level: str) -> None:
    logging.basicConfig(level=level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s [%(process)d] %(name)s: %(message)s")


def serve(config_path: str, workers: int | None = None) -> int:
    try:
        config = load_config(config_path)
    except ConfigError as exc:
        print(f"streamward: {exc}", file=sys.stderr)
        return 2
    if workers is not None:
        config = dataclasses.replace(config, workers=workers)
    configure_logging(config.log_level)
    return Supervisor(config).run()
