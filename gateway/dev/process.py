"""Run the real gateway (`python -m gateway serve`) as a subprocess: for tests, benchmarks and load runs."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]


# Tests and benchmarks that are not about policy run with everything allowed to every signed-in identity.
ALLOW_ALL = """\
rules:
  - name: allow-all-for-tests
    subjects: ["user:*"]
    resources: [{topic: {glob: "*"}}, {group: {glob: "*"}}, {transactional_id: {glob: "*"}}, {cluster: true}]
    operations: [all]
"""


class GatewayProcess:
    def __init__(self, workdir: Path, cluster, *, workers: int = 2, port_base: int = 31092, admin_port: int = 31100,
                 password: str | None = None, overrides: dict | None = None, policy: str = ALLOW_ALL) -> None:
        self.workdir = workdir
        self.cluster = cluster
        self.workers = workers
        # Several test sessions may share a machine (helpers, a CI check beside a session): each can move
        # every gateway port it starts by the same amount.
        shift = int(os.environ.get("STREAMWARD_TEST_PORT_SHIFT", "0"))
        self.port_base = port_base + shift
        self.admin_port = admin_port + shift
        self.password = cluster.passwords["gateway"] if password is None else password
        self.overrides = overrides or {}
        self.config_path = workdir / "gateway.yaml"
        self.policy_dir = workdir / "policies"
        self.policy = policy
        self.log_path = workdir / "gateway.log"
        self.proc: subprocess.Popen | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port_base}"

    @property
    def node_ports(self) -> range:
        return range(self.port_base + 1, self.port_base + 1 + 4)

    def config(self) -> dict:
        config = {
            "listen": {"host": "127.0.0.1", "bootstrap_port": self.port_base, "node_port_base": self.port_base + 1,
                       "first_node_id": 1, "max_nodes": 4, "advertised_host": "127.0.0.1"},
            "upstream": {"bootstrap_servers": self.cluster.bootstrap.split(","),
                         "sasl": {"mechanism": "SCRAM-SHA-512", "username": "gateway",
                                  "password": {"env": "STREAMWARD_UPSTREAM_PASSWORD"}}},
            "admin": {"host": "127.0.0.1", "port": self.admin_port},
            "policy": {"path": str(self.policy_dir), "watch_interval_s": 0.2},
            "workers": self.workers,
            "drain_timeout_s": 10,
            "log_level": "INFO",
        }
        for key, value in self.overrides.items():
            if isinstance(value, dict):
                config.setdefault(key, {}).update(value)
            else:
                config[key] = value
        return config

    def write_config(self) -> None:
        self.policy_dir.mkdir(parents=True, exist_ok=True)
        self.write_policy(self.policy)
        self.config_path.write_text(yaml.safe_dump(self.config()))

    def write_policy(self, text: str) -> None:
        """Replace the policy; a running gateway picks it up within its watch interval."""
        self.policy = text
        # Written aside and renamed into place: the watcher must never read a half-written (or empty) file.
        staged = self.policy_dir / ".policy.yaml.tmp"  # not *.yaml: the loader ignores it
        staged.write_text(text)
        staged.replace(self.policy_dir / "policy.yaml")

    def install_policy(self, text: str, timeout: float = 10) -> int:
        """Replace the policy and wait until the gateway has published it; returns the new generation."""
        before = self.health()["policy_generation"]
        self.write_policy(text)
        deadline = time.monotonic() + timeout
        while True:
            generation = self.health()["policy_generation"]
            if generation > before:
                return generation
            if time.monotonic() >= deadline:
                raise TimeoutError(f"the gateway did not publish the new policy within {timeout} s")
            time.sleep(0.05)

    def start(self, timeout: float = 60) -> GatewayProcess:
        self.write_config()
        env = dict(os.environ, STREAMWARD_UPSTREAM_PASSWORD=self.password, PYTHONPATH=str(REPO))
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "gateway", "serve", "--config", str(self.config_path)],
                                     cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        try:
            self.wait_healthy(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def wait_healthy(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"gateway exited with {self.proc.returncode}:\n{self.log_text()[-3000:]}")
            try:
                if self.health()["status"] == "ok":
                    return
            except OSError:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"gateway not healthy after {timeout} s:\n{self.log_text()[-3000:]}")

    def health(self) -> dict:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.admin_port}/healthz", timeout=2) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:
            return json.loads(exc.read())

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.admin_port}/metrics", timeout=2) as response:
            return response.read().decode()

    def worker_pids(self) -> list[int]:
        return [w["pid"] for w in self.health()["workers"] if w["pid"]]

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    def stop(self, timeout: float = 30) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def __enter__(self) -> GatewayProcess:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0
