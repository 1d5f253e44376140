"""The approvals HTTP API as one pure function: (method, path, query, headers, body) → (status, JSON object).

The supervisor's admin HTTP server reads the request and writes the answer; everything in between is here,
so it is tested without sockets. Every route needs ``Authorization: Bearer <token>``; the server adds
``WWW-Authenticate: Bearer`` to a 401. Bodies are JSON objects of at most 64 KiB with only the keys a route
knows. Visibility: a caller sees its own requests and grants and those it may decide; anything else
answers 404 exactly like an unknown id, so ids cannot be probed. docs/openapi.yaml describes the routes.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping
from collections.abc import Set as AbstractSet
from typing import Any

import orjson

from gateway.approvals.service import ApprovalError

log = logging.getLogger("streamward.approvals.api")

MAX_BODY_BYTES = 64 * 1024
MAX_TOKEN_BYTES = 16 * 1024
MAX_DURATION_S = 30 * 86400
MAX_ITEMS = 100  # resources or operations in one request
MAX_TEXT = 1000  # a reason, a resource name
REQUEST_STATUS_FILTERS = ("pending", "approved", "denied", "cancelled", "all")

Authenticate = Callable[[str], tuple[str, tuple[str, ...]]]
Response = tuple[int, dict[str, Any]]


class ApiAuthError(Exception):
    """The bearer token was refused; `reason` says why (logged and returned, never the token itself)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class _HttpError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


# --- durations --------------------------------------------------------------------------------------------

_DURATION = re.compile(r"(?:([0-9]{1,6})d)?(?:([0-9]{1,6})h)?(?:([0-9]{1,6})m)?(?:([0-9]{1,7})s)?")
_UNITS = (86400, 3600, 60, 1)


def parse_duration(value: object) -> int:
    """Seconds from "90s", "30m", "2h", "1d", "1h30m", a string of digits, or a positive int; at most 30 days."""
    if isinstance(value, bool):
        raise ValueError("a duration is a string like 2h or 1h30m, or a number of seconds")
    if isinstance(value, int):
        seconds = value
    elif isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 9:
        seconds = int(value)
    elif isinstance(value, str) and len(value) <= 32 and (match := _DURATION.fullmatch(value)) and value:
        seconds = sum(int(part) * unit for part, unit in zip(match.groups(), _UNITS, strict=True) if part)
    else:
        raise ValueError(f"duration {str(value)[:40]!r} is not like 90s, 30m, 2h, 1d or 1h30m")
    if seconds <= 0:
        raise ValueError("a duration must be positive")
    if seconds > MAX_DURATION_S:
        raise ValueError(f"a duration may be at most 30 days ({MAX_DURATION_S} s)")
    return seconds


# --- routing ----------------------------------------------------------------------------------------------

_ID = "[A-Za-z0-9_-]{1,64}"
ROUTES: tuple[tuple[str, str, str], ...] = (
    # (method, path template as in docs/openapi.yaml, handler method name)
    ("POST", "/v1/access-requests", "_create_request"),
    ("GET", "/v1/access-requests", "_list_requests"),
    ("GET", "/v1/access-requests/{id}", "_show_request"),
    ("POST", "/v1/access-requests/{id}/approve", "_approve"),
    ("POST", "/v1/access-requests/{id}/deny", "_deny"),
    ("GET", "/v1/grants", "_list_grants"),
    ("GET", "/v1/grants/{id}", "_show_grant"),
    ("POST", "/v1/grants/{id}/revoke", "_revoke"),
)
_PATTERNS = {template: re.compile(re.escape(template).replace(re.escape("{id}"), f"({_ID})"))
             for _, template, _ in ROUTES}


class _Caller:
    __slots__ = ("subject", "groups")

    def __init__(self, subject: str, groups: tuple[str, ...]) -> None:
        self.subject = subject
        self.groups = groups


class ApprovalsApi:
    def __init__(self, service: Any, authenticate: Authenticate) -> None:
        self.service = service
        self.authenticate = authenticate

    def handle(self, method: str, path: str, query: Mapping[str, list[str]], headers: Mapping[str, str],
               body: bytes) -> Response:
        try:
            route, ident = self._route(method, path)
            caller = self._caller(headers)
            payload = self._body(body) if method == "POST" else {}
            handler = getattr(self, route)
            return handler(caller, ident, query, payload)
        except _HttpError as exc:
            return exc.status, {"error": str(exc)}
        except ApprovalError as exc:
            return exc.status, {"error": str(exc)}
        except Exception:
            log.exception("approvals API: %s %s failed", method, path[:200])
            return 500, {"error": "internal error"}

    # -- request handling common to every route

    @staticmethod
    def _route(method: str, path: str) -> tuple[str, str | None]:
        path = path.split("?", 1)[0]
        methods: dict[str, tuple[str, str | None]] = {}
        for route_method, template, handler in ROUTES:
            match = _PATTERNS[template].fullmatch(path)
            if match:
                methods[route_method] = (handler, match.group(1) if match.groups() else None)
        if not methods:
            raise _HttpError(404, "no such route")
        if method not in methods:
            raise _HttpError(405, f"method {method[:16]} not allowed here; use {' or '.join(sorted(methods))}")
        return methods[method]

    def _caller(self, headers: Mapping[str, str]) -> _Caller:
        value = _header(headers, "Authorization")
        if value is None:
            raise _HttpError(401, "missing Authorization: Bearer token")
        scheme, _, token = value.strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise _HttpError(401, "Authorization must be: Bearer <token>")
        if len(token) > MAX_TOKEN_BYTES:
            raise _HttpError(401, "bearer token too long")
        try:
            subject, groups = self.authenticate(token)
        except ApiAuthError as exc:
            log.info("approvals API: token refused: %s", exc.reason)
            raise _HttpError(401, f"token refused: {exc.reason}") from None
        return _Caller(subject, tuple(groups))

    @staticmethod
    def _body(body: bytes) -> dict[str, Any]:
        if len(body) > MAX_BODY_BYTES:
            raise _HttpError(413, f"request body over {MAX_BODY_BYTES} bytes")
        if not body.strip():
            return {}
        try:
            payload = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise _HttpError(400, "request body is not valid JSON") from None
        if not isinstance(payload, dict):
            raise _HttpError(400, "request body must be a JSON object")
        return payload

    def _visible_request(self, caller: _Caller, request_id: str) -> Any:
        try:
            request = self.service.get_request(request_id)
        except ApprovalError as exc:
            if exc.status == 404:
                raise _HttpError(404, f"no access request {request_id}") from None
            raise
        if not self._may_see_request(caller, request):
            raise _HttpError(404, f"no access request {request_id}")
        return request

    def _visible_grant(self, caller: _Caller, grant_id: str) -> Any:
        try:
            grant = self.service.get_grant(grant_id)
        except ApprovalError as exc:
            if exc.status == 404:
                raise _HttpError(404, f"no grant {grant_id}") from None
            raise
        if not self._may_see_grant(caller, grant, {}):
            raise _HttpError(404, f"no grant {grant_id}")
        return grant

    def _may_see_request(self, caller: _Caller, request: Any) -> bool:
        return request.requester == caller.subject or self.service.may_decide(request, caller.subject, caller.groups)

    def _may_see_grant(self, caller: _Caller, grant: Any, requests: dict[str, Any]) -> bool:
        if grant.subject == caller.subject:
            return True
        request = requests.get(grant.request_id)
        if request is None:
            try:
                request = self.service.get_request(grant.request_id)
            except ApprovalError:
                return False
        return self.service.may_decide(request, caller.subject, caller.groups)

    def _now(self) -> float:
        return self.service.clock.now()

    # -- routes

    def _create_request(self, caller: _Caller, _: None, query: Mapping[str, list[str]],
                        payload: dict[str, Any]) -> Response:
        _no_query(query)
        _only_keys(payload, {"resources", "operations", "duration", "reason"}, required={"resources", "operations"})
        resources = _resources(payload["resources"])
        operations = _strings(payload["operations"], "operations")
        duration_s = _duration(payload["duration"]) if payload.get("duration") is not None else None
        reason = _text(payload.get("reason", ""), "reason", allow_empty=True)
        request, created = self.service.request_access(caller.subject, caller.groups, resources, operations,
                                                       duration_s, reason, "api", "api")
        return (201 if created else 200), {"request": request.to_json()}

    def _list_requests(self, caller: _Caller, _: None, query: Mapping[str, list[str]],
                       payload: dict[str, Any]) -> Response:
        status = _query_value(query, "status", REQUEST_STATUS_FILTERS, default="all")
        requests = self.service.list_requests(None if status == "all" else status)
        return 200, {"requests": [r.to_json() for r in requests if self._may_see_request(caller, r)]}

    def _show_request(self, caller: _Caller, request_id: str, query: Mapping[str, list[str]],
                      payload: dict[str, Any]) -> Response:
        _no_query(query)
        return 200, {"request": self._visible_request(caller, request_id).to_json()}

    def _approve(self, caller: _Caller, request_id: str, query: Mapping[str, list[str]],
                 payload: dict[str, Any]) -> Response:
        _no_query(query)
        _only_keys(payload, {"duration"})
        duration_s = _duration(payload["duration"]) if payload.get("duration") is not None else None
        self._visible_request(caller, request_id)
        request, grant = self.service.approve(request_id, caller.subject, caller.groups, duration_s)
        return 200, {"request": request.to_json(), "grant": grant.to_json(self._now()) if grant else None}

    def _deny(self, caller: _Caller, request_id: str, query: Mapping[str, list[str]],
              payload: dict[str, Any]) -> Response:
        _no_query(query)
        _only_keys(payload, {"reason"}, required={"reason"})
        reason = _text(payload["reason"], "reason")
        self._visible_request(caller, request_id)
        request = self.service.deny(request_id, caller.subject, caller.groups, reason)
        return 200, {"request": request.to_json()}

    def _list_grants(self, caller: _Caller, _: None, query: Mapping[str, list[str]],
                     payload: dict[str, Any]) -> Response:
        show_all = _query_value(query, "all", ("true", "false"), default="false") == "true"
        grants = self.service.list_grants(active_only=not show_all)
        requests: dict[str, Any] = {}
        if any(grant.subject != caller.subject for grant in grants):
            requests = {request.id: request for request in self.service.list_requests(None)}
        now = self._now()
        return 200, {"grants": [g.to_json(now) for g in grants if self._may_see_grant(caller, g, requests)]}

    def _show_grant(self, caller: _Caller, grant_id: str, query: Mapping[str, list[str]],
                    payload: dict[str, Any]) -> Response:
        _no_query(query)
        return 200, {"grant": self._visible_grant(caller, grant_id).to_json(self._now())}

    def _revoke(self, caller: _Caller, grant_id: str, query: Mapping[str, list[str]],
                payload: dict[str, Any]) -> Response:
        _no_query(query)
        _only_keys(payload, {"reason"})
        reason = _text(payload.get("reason", ""), "reason", allow_empty=True)
        self._visible_grant(caller, grant_id)
        grant = self.service.revoke(grant_id, caller.subject, caller.groups, reason)
        return 200, {"grant": grant.to_json(self._now())}


# --- input checks: every value from the body or the query is hostile until checked -------------------------


def _header(headers: Mapping[str, str], name: str) -> str | None:
    value = headers.get(name)
    if value is None:
        wanted = name.lower()
        value = next((v for k, v in headers.items() if isinstance(k, str) and k.lower() == wanted), None)
    return value if isinstance(value, str) else None


def _no_query(query: Mapping[str, list[str]]) -> None:
    if query:
        raise _HttpError(400, f"unknown query parameter(s): {', '.join(sorted(str(k)[:40] for k in query))}")


def _query_value(query: Mapping[str, list[str]], name: str, allowed: tuple[str, ...], default: str) -> str:
    unknown = set(query) - {name}
    if unknown:
        raise _HttpError(400, f"unknown query parameter(s): {', '.join(sorted(str(k)[:40] for k in unknown))}")
    values = query.get(name)
    if not values:
        return default
    if len(values) != 1 or values[0] not in allowed:
        raise _HttpError(400, f"{name} must be one of {', '.join(allowed)}")
    return values[0]


def _only_keys(payload: dict[str, Any], known: AbstractSet[str], required: AbstractSet[str] = frozenset()) -> None:
    unknown = set(payload) - known
    if unknown:
        raise _HttpError(400, f"unknown key(s): {', '.join(sorted(k[:40] for k in unknown))}")
    missing = required - set(payload)
    if missing:
        raise _HttpError(400, f"missing key(s): {', '.join(sorted(missing))}")


def _text(value: object, name: str, allow_empty: bool = False, strip: bool = True) -> str:
    if not isinstance(value, str):
        raise _HttpError(400, f"{name} must be a string")
    text = value.strip() if strip else value
    if not text and not allow_empty:
        raise _HttpError(400, f"{name} must not be empty")
    if len(text) > MAX_TEXT:
        raise _HttpError(400, f"{name} is longer than {MAX_TEXT} characters")
    return text


def _strings(value: object, name: str) -> list[str]:
    if not isinstance(value, list) or not value:
        raise _HttpError(400, f"{name} must be a non-empty list of strings")
    if len(value) > MAX_ITEMS:
        raise _HttpError(400, f"{name}: at most {MAX_ITEMS}")
    return [_text(item, name) for item in value]


def _resources(value: object) -> list[tuple[str, str]]:
    if not isinstance(value, list) or not value:
        raise _HttpError(400, "resources must be a non-empty list of {type, name} objects")
    if len(value) > MAX_ITEMS:
        raise _HttpError(400, f"resources: at most {MAX_ITEMS}")
    resources = []
    for item in value:
        if not isinstance(item, dict) or set(item) != {"type", "name"}:
            raise _HttpError(400, "each resource must be an object with exactly the keys type and name")
        resources.append((_text(item["type"], "resource type"), _text(item["name"], "resource name", strip=False)))
    return resources


def _duration(value: object) -> int:
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise _HttpError(400, str(exc)) from None
