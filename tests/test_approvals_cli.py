"""`streamward access` and `streamward approvals` against a real HTTP server serving ApprovalsApi (real service)."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import threading
import urllib.parse
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import orjson
import pytest

from gateway.approvals.api import MAX_BODY_BYTES, ApprovalsApi
from gateway.approvals.client import format_duration
from gateway.cli import main
from tests.test_approvals_api import World

ROOT = Path(__file__).resolve().parent.parent


def serve(api: ApprovalsApi) -> ThreadingHTTPServer:
    """The API behind a ThreadingHTTPServer on 127.0.0.1, the way the supervisor's admin server calls it."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            self._handle()

        def do_POST(self) -> None:  # noqa: N802
            self._handle()

        def _handle(self) -> None:
            parts = urllib.parse.urlsplit(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(min(length, MAX_BODY_BYTES + 1))
            status, payload = api.handle(self.command, parts.path, urllib.parse.parse_qs(parts.query),
                                         self.headers, body)
            data = orjson.dumps(payload)
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            if status == 401:
                self.send_header("WWW-Authenticate", "Bearer")
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


class Gateway:
    def __init__(self, tmp_path: Path) -> None:
        self.world = World(tmp_path)
        self.server = serve(self.world.api)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.tokens = tmp_path / "tokens"
        self.tokens.mkdir()
        for name in ("alice", "bob", "carol", "mallory"):
            (self.tokens / name).write_text(f"tok-{name}\n")


@pytest.fixture
def gateway(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Gateway]:
    monkeypatch.delenv("STREAMWARD_TOKEN", raising=False)
    monkeypatch.delenv("STREAMWARD_ADMIN_URL", raising=False)
    made = Gateway(tmp_path)
    yield made
    made.server.shutdown()
    made.server.server_close()
    made.world.store.close()


def cli(gateway: Gateway, capsys: pytest.CaptureFixture[str], who: str | None, *argv: str) -> tuple[int, str, str]:
    """Run `streamward ARGV` in this process as `who` (via --token-file); (exit code, stdout, stderr)."""
    args = [*argv, "--admin", gateway.url]
    if who is not None:
        args += ["--token-file", str(gateway.tokens / who)]
    try:
        code = main(args)
    except SystemExit as exc:  # argparse's usage errors
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def test_request_approve_list_revoke_through_the_cli(gateway, capsys):
    """The whole flow from the command line: readable output, times in UTC, durations like 2h, exit code 0."""
    code, out, err = cli(gateway, capsys, "alice", "access", "request", "--topic", "payments", "--op", "read",
                         "--duration", "2h", "--reason", "quarterly audit")
    assert code == 0, err
    request_id = re.search(r"Access request (req_[0-9a-f]{16}) is pending: read on topic payments for 2h", out)[1]
    assert f"streamward approvals approve {request_id}" in out

    code, out, _ = cli(gateway, capsys, "bob", "approvals", "list")
    assert code == 0
    header, row = out.splitlines()
    assert header.split() == ["ID", "STATUS", "REQUESTER", "ACCESS", "FOR", "CREATED", "(UTC)", "REASON"]
    assert row.split()[:3] == [request_id, "pending", "alice"]
    assert "read on topic payments" in row and "2h" in row and "2026-11-29T12:00:00Z" in row
    assert row.endswith("quarterly audit")

    code, out, _ = cli(gateway, capsys, "mallory", "approvals", "list", "--status", "all")
    assert (code, out) == (0, "No access requests you can see.\n")

    code, out, _ = cli(gateway, capsys, "bob", "approvals", "show", request_id)
    assert code == 0
    assert "status:" in out and "requester: alice" in out.replace("  ", " ") and "rules:" in out

    code, out, err = cli(gateway, capsys, "bob", "approvals", "approve", request_id, "--duration", "1h")
    assert code == 0, err
    match = re.fullmatch(rf"Approved {request_id}: grant (grt_[0-9a-f]{{16}}) lets alice read on topic payments "
                         r"until 2026-11-29T13:00:00Z\n", out)
    assert match, out
    grant_id = match[1]

    code, out, _ = cli(gateway, capsys, "alice", "approvals", "grants")
    assert code == 0
    [row] = out.splitlines()[1:]
    assert row.split()[:3] == [grant_id, "active", "alice"]
    assert "2026-11-29T12:00:00Z" in row and "2026-11-29T13:00:00Z" in row and request_id in row

    code, out, _ = cli(gateway, capsys, "alice", "approvals", "grants", "--json")
    assert code == 0 and [g["id"] for g in orjson.loads(out)["grants"]] == [grant_id]

    code, out, _ = cli(gateway, capsys, "bob", "approvals", "revoke", grant_id, "--reason", "done")
    assert (code, out) == (0, f"Revoked {grant_id} of alice: read on topic payments\n")
    code, out, _ = cli(gateway, capsys, "alice", "approvals", "grants")
    assert (code, out) == (0, "No active grants you can see.\n")
    code, out, _ = cli(gateway, capsys, "alice", "approvals", "grants", "--all")
    assert code == 0 and "revoked" in out


def test_deny_and_json_output(gateway, capsys):
    """deny needs --reason (usage error, 2); with it the request is denied and --json shows the API's answer."""
    request = gateway.world.ask()
    code, _, err = cli(gateway, capsys, "bob", "approvals", "deny", request["id"])
    assert code == 2 and "--reason" in err
    code, out, _ = cli(gateway, capsys, "bob", "approvals", "deny", request["id"], "--reason", "freeze")
    assert (code, out) == (0, f"Denied {request['id']} of alice: read on topic payments\n")
    code, out, _ = cli(gateway, capsys, "alice", "approvals", "show", request["id"], "--json")
    assert code == 0
    shown = orjson.loads(out)["request"]
    assert (shown["status"], shown["decided_by"], shown["decision_reason"]) == ("denied", "bob", "freeze")
    code, out, _ = cli(gateway, capsys, "alice", "approvals", "list", "--status", "denied")
    assert code == 0 and request["id"] in out


def test_refusals_exit_1_with_the_gateway_reason(gateway, capsys):
    """A 4xx answer is exit 1 and says why: own request, not visible, bad token."""
    request = gateway.world.ask()
    code, out, err = cli(gateway, capsys, "alice", "approvals", "approve", request["id"])
    assert (code, out) == (1, "")
    assert err.startswith("streamward: refused (HTTP 403): alice asked for") and "cannot decide it" in err
    code, _, err = cli(gateway, capsys, "mallory", "approvals", "show", request["id"])
    assert code == 1 and "refused (HTTP 404)" in err
    (gateway.tokens / "forged").write_text("tok-forged")
    code, _, err = cli(gateway, capsys, "forged", "approvals", "list")
    assert code == 1 and "refused (HTTP 401): token refused: signature verification failed" in err
    code, _, err = cli(gateway, capsys, "alice", "access", "request", "--topic", "payments", "--op", "read",
                       "--duration", "45d", "--reason", "x")
    assert code == 1 and "at most 30 days" in err


def test_connection_and_usage_errors_exit_2(gateway, capsys, monkeypatch):
    """Unreachable gateway, no token, a --token argument, no resource: exit 2 with a message naming the cause."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
    down = f"http://127.0.0.1:{sock.getsockname()[1]}"
    try:
        code = main(["approvals", "list", "--admin", down, "--token-file", str(gateway.tokens / "bob")])
    finally:
        sock.close()
    _, err = capsys.readouterr()
    assert code == 2
    assert err == f"streamward: cannot reach the gateway admin API at {down}: connection refused\n"

    code, _, err = cli(gateway, capsys, None, "approvals", "list")
    assert code == 2 and "no token: pass --token-file FILE or set STREAMWARD_TOKEN" in err
    code, _, err = cli(gateway, capsys, None, "approvals", "list", "--token", "tok-bob")
    assert code == 2 and "no --token option" in err and "tok-bob" not in err
    code, _, err = cli(gateway, capsys, "nobody", "approvals", "list")
    assert code == 2 and "cannot read the token file" in err
    code, _, err = cli(gateway, capsys, "alice", "access", "request", "--op", "read", "--reason", "x")
    assert code == 2 and "--topic" in err
    code, _, err = cli(gateway, capsys, "alice", "approvals", "list", "--status", "weird")
    assert code == 2
    code = main(["approvals", "list", "--admin", "file:///etc/passwd", "--token-file", str(gateway.tokens / "bob")])
    assert code == 2 and "--admin must be an http" in capsys.readouterr().err


def test_token_and_admin_url_from_the_environment(gateway, capsys, monkeypatch):
    """STREAMWARD_TOKEN and STREAMWARD_ADMIN_URL stand in for --token-file and --admin."""
    gateway.world.ask()
    monkeypatch.setenv("STREAMWARD_TOKEN", "tok-bob")
    monkeypatch.setenv("STREAMWARD_ADMIN_URL", gateway.url)
    assert main(["approvals", "list"]) == 0
    assert "alice" in capsys.readouterr().out


def test_a_failing_gateway_exits_2(gateway, capsys):
    """A 5xx is the gateway's failure, not a refusal: exit 2 with the API's error."""
    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("boom")

    gateway.world.service.list_grants = broken
    code, _, err = cli(gateway, capsys, "alice", "approvals", "grants")
    assert code == 2 and f"the gateway admin API at {gateway.url} failed (HTTP 500): internal error" in err


def test_the_installed_command_runs_as_a_subprocess(gateway):
    """`python -m gateway approvals ...` works end to end, and --help says why there is no --token."""
    request = gateway.world.ask()
    env = {**os.environ, "STREAMWARD_TOKEN": "tok-bob", "STREAMWARD_ADMIN_URL": gateway.url}
    done = subprocess.run([sys.executable, "-m", "gateway", "approvals", "list"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert request["id"] in done.stdout
    done = subprocess.run([sys.executable, "-m", "gateway", "approvals", "approve", "--help"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0
    assert "ps" in done.stdout and "--token-file" in done.stdout


@pytest.mark.parametrize(("seconds", "text"), [(90, "1m30s"), (1800, "30m"), (7200, "2h"), (5400, "1h30m"),
                                               (86400, "1d"), (0, "0s")])
def test_durations_are_printed_the_way_they_are_written(seconds, text):
    """The CLI prints durations in the syntax it accepts."""
    assert format_duration(seconds) == text
