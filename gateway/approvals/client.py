"""`streamward access …` and `streamward approvals …`: the command-line client of the approvals HTTP API.

The token comes from --token-file or STREAMWARD_TOKEN, never from an argument (arguments show in `ps` and
in shell history). Exit codes: 0 done, 1 refused by the gateway (a 4xx answer), 2 usage error, unreachable
gateway, or a gateway that failed (5xx, or an answer that is not the API's JSON).
"""

from __future__ import annotations

import argparse
import os
import sys
import urllib.error
import urllib.parse
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

import orjson

DEFAULT_ADMIN_URL = "http://127.0.0.1:9100"
ADMIN_URL_ENV = "STREAMWARD_ADMIN_URL"
TOKEN_ENV = "STREAMWARD_TOKEN"
MAX_TOKEN_FILE_BYTES = 64 * 1024
MAX_RESPONSE_BYTES = 16 * 1024 * 1024
TIMEOUT_S = 15.0

EXIT_OK, EXIT_REFUSED, EXIT_ERROR = 0, 1, 2


class CommandError(Exception):
    def __init__(self, exit_code: int, message: str) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    # urllib would repeat the Authorization header to wherever a redirect points.
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


class ApprovalsClient:
    def __init__(self, admin_url: str, token: str, timeout_s: float = TIMEOUT_S) -> None:
        parts = urllib.parse.urlsplit(admin_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise CommandError(EXIT_ERROR, f"--admin must be an http:// or https:// URL, not {admin_url!r}")
        self.admin_url = admin_url.rstrip("/")
        self._token = token
        self.timeout_s = timeout_s
        self._opener = urllib.request.build_opener(_NoRedirects)

    def call(self, method: str, path: str, body: dict[str, Any] | None = None,
             query: dict[str, str] | None = None) -> dict[str, Any]:
        """The JSON object the API answered with; CommandError for a refusal, a failure or no answer."""
        url = self.admin_url + path + ("?" + urllib.parse.urlencode(query) if query else "")
        data = orjson.dumps(body) if body is not None else None
        request = urllib.request.Request(url, data=data, method=method, headers={
            "Authorization": f"Bearer {self._token}", "Accept": "application/json",
            **({"Content-Type": "application/json"} if data is not None else {})})
        try:
            with self._opener.open(request, timeout=self.timeout_s) as response:
                status, raw = response.status, response.read(MAX_RESPONSE_BYTES + 1)
        except urllib.error.HTTPError as exc:
            status, raw = exc.code, exc.read(MAX_RESPONSE_BYTES + 1)
            exc.close()
        except urllib.error.URLError as exc:
            raise CommandError(EXIT_ERROR, f"cannot reach the gateway admin API at {self.admin_url}: "
                                           f"{_reason(exc.reason)}") from None
        except (OSError, ValueError) as exc:
            raise CommandError(EXIT_ERROR, f"cannot reach the gateway admin API at {self.admin_url}: "
                                           f"{_reason(exc)}") from None
        answer = _json_object(raw) if len(raw) <= MAX_RESPONSE_BYTES else None
        if 200 <= status < 300 and answer is not None:
            return answer
        message = str(answer["error"]) if answer and "error" in answer else None
        if 400 <= status < 500:
            raise CommandError(EXIT_REFUSED, f"refused (HTTP {status}): {message or 'no reason given'}")
        detail = message or "not a JSON answer from the approvals API"
        raise CommandError(EXIT_ERROR, f"the gateway admin API at {self.admin_url} failed (HTTP {status}): {detail}")


def _json_object(raw: bytes) -> dict[str, Any] | None:
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


def _reason(reason: object) -> str:
    if isinstance(reason, ConnectionRefusedError):
        return "connection refused"
    if isinstance(reason, TimeoutError):
        return "timed out"
    if isinstance(reason, OSError) and reason.strerror:
        return reason.strerror
    return str(reason) or type(reason).__name__


def read_token(token_file: str | None, environ: dict[str, str] | os._Environ[str] = os.environ) -> str:
    if token_file:
        try:
            with open(token_file, "rb") as file:
                raw = file.read(MAX_TOKEN_FILE_BYTES + 1)
        except OSError as exc:
            raise CommandError(EXIT_ERROR, f"cannot read the token file {token_file}: "
                                           f"{exc.strerror or exc}") from None
        if len(raw) > MAX_TOKEN_FILE_BYTES:
            raise CommandError(EXIT_ERROR, f"the token file {token_file} is larger than a token can be")
        try:
            token = raw.decode("ascii").strip()
        except UnicodeDecodeError:
            raise CommandError(EXIT_ERROR, f"the token file {token_file} does not hold a token") from None
        where = f"the token file {token_file}"
    else:
        token = environ.get(TOKEN_ENV, "").strip()
        where = TOKEN_ENV
        if not token:
            raise CommandError(EXIT_ERROR, f"no token: pass --token-file FILE or set {TOKEN_ENV}")
    if not token or any(c.isspace() for c in token):
        raise CommandError(EXIT_ERROR, f"{where} does not hold a single bearer token")
    return token


# --- the commands ------------------------------------------------------------------------------------------


def add_common_options(parser: argparse.ArgumentParser) -> None:
    """--admin, --token-file, --json: on every `access` and `approvals` command."""
    parser.add_argument("--admin", metavar="URL", default=None,
                        help=f"the gateway admin API (default: ${ADMIN_URL_ENV}, else {DEFAULT_ADMIN_URL})")
    parser.add_argument("--token-file", metavar="FILE", type=token_path,
                        help=f"file holding your OIDC bearer token (default: ${TOKEN_ENV}). There is no --token "
                             "option on purpose: command-line arguments are visible to every user in `ps`")
    # Declared only to refuse it: otherwise argparse would take `--token X` as an abbreviation of --token-file.
    parser.add_argument("--token", dest="token_argument", help=argparse.SUPPRESS)
    parser.add_argument("--json", action="store_true", help="print the API's JSON answer instead of a summary")


def run(args: argparse.Namespace, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Run a parsed `access` or `approvals` command; the exit code."""
    out = out or sys.stdout
    err = err or sys.stderr
    if args.token_argument is not None:
        print(f"streamward: there is no --token option: command-line arguments are visible to every user in `ps`; "
              f"use --token-file FILE or set {TOKEN_ENV}", file=err)
        return EXIT_ERROR
    try:
        client = ApprovalsClient(args.admin or os.environ.get(ADMIN_URL_ENV) or DEFAULT_ADMIN_URL,
                                 read_token(args.token_file))
        if args.command == "access":
            return _request_access(client, args, out)
        command = _APPROVALS_COMMANDS[args.approvals_command]
        return command(client, args, out)
    except CommandError as exc:
        print(f"streamward: {exc}", file=err)
        return exc.exit_code


def _request_access(client: ApprovalsClient, args: argparse.Namespace, out: TextIO) -> int:
    resources = ([{"type": "topic", "name": name} for name in args.topic or []]
                 + [{"type": "group", "name": name} for name in args.group or []]
                 + [{"type": "transactional_id", "name": name} for name in args.transactional_id or []])
    if not resources:
        raise CommandError(EXIT_ERROR, "name at least one --topic, --group or --transactional-id")
    body: dict[str, Any] = {"resources": resources, "operations": args.op, "reason": args.reason}
    if args.duration is not None:
        body["duration"] = args.duration
    answer = client.call("POST", "/v1/access-requests", body)
    if args.json:
        return _print_json(answer, out)
    request = answer["request"]
    if request.get("status") == "pending":
        print(f"Access request {request['id']} is pending: {_access(request)} for "
              f"{format_duration(request.get('duration_s') or 0)}", file=out)
        print(f"An approver can run: streamward approvals approve {request['id']}", file=out)
    else:
        print(f"Access request {request['id']} is {request.get('status')}: {_access(request)}", file=out)
    return EXIT_OK


def _list(client: ApprovalsClient, args: argparse.Namespace, out: TextIO) -> int:
    answer = client.call("GET", "/v1/access-requests", query={"status": args.status})
    if args.json:
        return _print_json(answer, out)
    requests = answer.get("requests") or []
    if not requests:
        print(f"No {'' if args.status == 'all' else args.status + ' '}access requests you can see.", file=out)
        return EXIT_OK
    rows = [[r["id"], r.get("status", ""), r.get("requester", ""), _access(r),
             format_duration(r.get("duration_s") or 0), _when(r.get("created_at")), _one_line(r.get("reason"))]
            for r in requests]
    _print_table(["ID", "STATUS", "REQUESTER", "ACCESS", "FOR", "CREATED (UTC)", "REASON"], rows, out)
    return EXIT_OK


def _show(client: ApprovalsClient, args: argparse.Namespace, out: TextIO) -> int:
    answer = client.call("GET", f"/v1/access-requests/{_path_id(args.id)}")
    if args.json:
        return _print_json(answer, out)
    r = answer["request"]
    approvals = ", ".join(f"{a.get('approver')} at {_when(a.get('at'))}" for a in r.get("approvals") or [])
    fields = [
        ("request", r["id"]), ("status", r.get("status")), ("requester", r.get("requester")),
        ("groups", ", ".join(r.get("groups") or []) or "-"), ("access", _access(r)),
        ("duration", format_duration(r.get("duration_s") or 0)), ("reason", _one_line(r.get("reason")) or "-"),
        ("client", r.get("client")), ("origin", r.get("origin")), ("rules", ", ".join(r.get("rules") or [])),
        ("created", _when(r.get("created_at"))), ("approvals", approvals or "-"),
    ]
    if r.get("decided_by"):
        fields += [("decided by", r["decided_by"]), ("decided", _when(r.get("decided_at"))),
                   ("decision reason", _one_line(r.get("decision_reason")) or "-")]
    if r.get("grant_id"):
        fields.append(("grant", r["grant_id"]))
    _print_fields(fields, out)
    return EXIT_OK


def _approve(client: ApprovalsClient, args: argparse.Namespace, out: TextIO) -> int:
    body = {"duration": args.duration} if args.duration is not None else {}
    answer = client.call("POST", f"/v1/access-requests/{_path_id(args.id)}/approve", body)
    if args.json:
        return _print_json(answer, out)
    request, grant = answer["request"], answer.get("grant")
    if grant:
        print(f"Approved {request['id']}: grant {grant['id']} lets {grant.get('subject')} {_access(grant)} "
              f"until {_when(grant.get('expires_at'))}", file=out)
    else:
        print(f"Approval of {request['id']} recorded ({len(request.get('approvals') or [])} so far); "
              f"the grant starts when enough approvers have approved", file=out)
    return EXIT_OK


def _deny(client: ApprovalsClient, args: argparse.Namespace, out: TextIO) -> int:
    answer = client.call("POST", f"/v1/access-requests/{_path_id(args.id)}/deny", {"reason": args.reason})
    if args.json:
        return _print_json(answer, out)
    request = answer["request"]
    print(f"Denied {request['id']} of {request.get('requester')}: {_access(request)}", file=out)
    return EXIT_OK


def _revoke(client: ApprovalsClient, args: argparse.Namespace, out: TextIO) -> int:
    body = {"reason": args.reason} if args.reason is not None else {}
    answer = client.call("POST", f"/v1/grants/{_path_id(args.grant_id)}/revoke", body)
    if args.json:
        return _print_json(answer, out)
    grant = answer["grant"]
    print(f"Revoked {grant['id']} of {grant.get('subject')}: {_access(grant)}", file=out)
    return EXIT_OK


def _grants(client: ApprovalsClient, args: argparse.Namespace, out: TextIO) -> int:
    answer = client.call("GET", "/v1/grants", query={"all": "true"} if args.all else None)
    if args.json:
        return _print_json(answer, out)
    grants = answer.get("grants") or []
    if not grants:
        print(f"No {'' if args.all else 'active '}grants you can see.", file=out)
        return EXIT_OK
    rows = [[g["id"], g.get("status", ""), g.get("subject", ""), _access(g), _when(g.get("starts_at")),
             _when(g.get("expires_at")), ", ".join(g.get("approved_by") or []), g.get("request_id", "")]
            for g in grants]
    _print_table(["ID", "STATUS", "SUBJECT", "ACCESS", "STARTS (UTC)", "EXPIRES (UTC)", "APPROVED BY", "REQUEST"],
                 rows, out)
    return EXIT_OK


_APPROVALS_COMMANDS = {"list": _list, "show": _show, "approve": _approve, "deny": _deny, "revoke": _revoke,
                       "grants": _grants}


# --- output ------------------------------------------------------------------------------------------------


def format_duration(seconds: float) -> str:
    """7200 → "2h", 5400 → "1h30m", 90 → "1m30s" (the syntax the API and the policy files accept)."""
    remaining = max(0, int(seconds))
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if remaining >= size:
            parts.append(f"{remaining // size}{unit}")
            remaining %= size
    return "".join(parts) or "0s"


def _path_id(value: str) -> str:
    return urllib.parse.quote(value, safe="")


def _print_json(answer: dict[str, Any], out: TextIO) -> int:
    print(orjson.dumps(answer, option=orjson.OPT_INDENT_2).decode(), file=out)
    return EXIT_OK


def _access(item: dict[str, Any]) -> str:
    operations = ", ".join(str(op) for op in item.get("operations") or [])
    resources = ", ".join(f"{str(r.get('type', '?')).replace('_', ' ')} {r.get('name', '?')}"
                          for r in item.get("resources") or [] if isinstance(r, dict))
    return _one_line(f"{operations} on {resources}")


def _when(epoch: object) -> str:
    if not isinstance(epoch, int | float) or isinstance(epoch, bool):
        return "-"
    try:
        return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    except (OverflowError, OSError, ValueError):
        return "-"


def _one_line(text: object) -> str:
    # Whatever a requester typed must not break the table or send terminal escapes.
    cleaned = "".join(c if c.isprintable() else " " for c in str(text or ""))
    return " ".join(cleaned.split())


def _print_table(headers: list[str], rows: list[list[str]], out: TextIO) -> None:
    cells = [[_one_line(cell) for cell in row] for row in rows]
    widths = [max(len(headers[i]), *(len(row[i]) for row in cells)) for i in range(len(headers))]
    for row in [headers, *cells]:
        print("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip(), file=out)


def _print_fields(fields: list[tuple[str, object]], out: TextIO) -> None:
    width = max(len(name) for name, _ in fields)
    for name, value in fields:
        print(f"{name + ':':<{width + 1}} {_one_line(value)}", file=out)


def token_path(value: str) -> str:
    """argparse type for --token-file: the path as given (kept a function so `~` works like in a shell)."""
    return str(Path(value).expanduser())
