"""The approvals HTTP API (ApprovalsApi.handle) over the real ApprovalService, a SQLite store and a YAML policy."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from gateway.approvals.api import MAX_BODY_BYTES, ROUTES, ApiAuthError, ApprovalsApi, parse_duration
from gateway.approvals.service import ApprovalService
from gateway.approvals.store import SqliteStore
from gateway.clock import FakeClock
from gateway.policy.engine import Engine
from gateway.policy.loader import load_policies

OPENAPI = Path(__file__).resolve().parent.parent / "docs" / "openapi.yaml"

POLICY = """
rules:
  - name: payments-jit
    subjects: ["group:analysts"]
    resources:
      - topic: payments
    operations: [read]
    approval: required
    approvers: ["group:payments-approvers"]
    max_duration: 8h
  - name: ledger-two-person
    subjects: ["group:analysts"]
    resources:
      - topic: ledger
    operations: [read]
    approval: required
    approvers: ["group:payments-approvers", "user:carol"]
    approvals_required: 2
  - name: analysts-read-public
    subjects: ["group:analysts"]
    resources:
      - topic: public
    operations: [read]
"""

# token → (subject, groups), as the OIDC check would give them
IDENTITIES = {
    "tok-alice": ("alice", ("analysts",)),
    "tok-bob": ("bob", ("payments-approvers",)),
    "tok-carol": ("carol", ()),
    "tok-mallory": ("mallory", ("analysts",)),  # a peer of alice: may ask, may not see alice's requests
}
START = 1_795_953_600.0  # 2026-11-29 12:00 UTC


def authenticate(token: str) -> tuple[str, tuple[str, ...]]:
    if token not in IDENTITIES:
        raise ApiAuthError("signature verification failed")
    return IDENTITIES[token]


class World:
    def __init__(self, tmp_path: Path) -> None:
        policy_file = tmp_path / "policy.yaml"
        policy_file.write_text(POLICY)
        engine = Engine(load_policies(policy_file))
        self.clock = FakeClock(START)
        self.store = SqliteStore(tmp_path / "approvals.db")
        self.service = ApprovalService(self.store, lambda: engine, self.clock)
        self.api = ApprovalsApi(self.service, authenticate)

    def call(self, method: str, path: str, token: str | None = "tok-alice", body: Any = None,
             query: dict[str, list[str]] | None = None, raw: bytes | None = None) -> tuple[int, dict[str, Any]]:
        headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
        data = raw if raw is not None else (orjson.dumps(body) if body is not None else b"")
        status, payload = self.api.handle(method, path, query or {}, headers, data)
        assert isinstance(payload, dict)
        orjson.dumps(payload)  # whatever the API answers must serialise as it is
        return status, payload

    def ask(self, token: str = "tok-alice", topic: str = "payments", duration: Any = "2h") -> dict[str, Any]:
        status, payload = self.call("POST", "/v1/access-requests", token, {
            "resources": [{"type": "topic", "name": topic}], "operations": ["read"], "duration": duration,
            "reason": "quarterly audit"})
        assert status == 201, payload
        return payload["request"]


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    made = World(tmp_path)
    yield made
    made.store.close()


def test_every_route_needs_a_valid_bearer_token(world):
    """No header, another scheme, an empty or unknown token: 401 with an error, and the token is never echoed."""
    for method, template, _ in ROUTES:
        path = template.replace("{id}", "req_0123456789abcdef")
        assert world.call(method, path, token=None)[0] == 401
    for headers in ({"Authorization": "Basic YWxpY2U6cw=="}, {"Authorization": "Bearer "}, {"Authorization": ""},
                    {"authorization": "Bearer tok-forged-0xdeadbeef"}):
        status, payload = world.api.handle("GET", "/v1/access-requests", {}, headers, b"")
        assert status == 401
        assert set(payload) == {"error"}
        assert "0xdeadbeef" not in payload["error"] and "YWxpY2U6cw" not in payload["error"]
    status, payload = world.call("GET", "/v1/grants", token="tok-forged")
    assert status == 401 and "signature verification failed" in payload["error"]
    # a lower-case header name and a lower-case scheme are still HTTP
    status, _ = world.api.handle("GET", "/v1/grants", {}, {"authorization": "bearer tok-bob"}, b"")
    assert status == 200


def test_request_list_approve_grant_revoke_flow(world):
    """The whole flow, with what each identity sees at each step."""
    status, payload = world.call("POST", "/v1/access-requests", "tok-alice", {
        "resources": [{"type": "topic", "name": "payments"}], "operations": ["read"], "duration": "2h",
        "reason": "quarterly audit"})
    assert status == 201
    request = payload["request"]
    assert re.fullmatch(r"req_[0-9a-f]{16}", request["id"])
    assert (request["requester"], request["status"], request["duration_s"]) == ("alice", "pending", 7200)
    assert request["resources"] == [{"type": "topic", "name": "payments"}]
    assert (request["client"], request["origin"], request["rules"]) == ("api", "api", ["payments-jit"])

    # Asking again while pending gives the same request back.
    status, again = world.call("POST", "/v1/access-requests", "tok-alice", {
        "resources": [{"type": "topic", "name": "payments"}], "operations": ["read"], "duration": 7200})
    assert status == 200 and again["request"]["id"] == request["id"]

    def listed(token: str, query: dict[str, list[str]] | None = None) -> list[str]:
        status, payload = world.call("GET", "/v1/access-requests", token, query=query)
        assert status == 200
        return [r["id"] for r in payload["requests"]]

    assert listed("tok-alice") == [request["id"]]  # her own
    assert listed("tok-bob", {"status": ["pending"]}) == [request["id"]]  # the approver
    assert listed("tok-mallory") == []  # a peer in the same group
    assert listed("tok-carol") == []  # an approver of another rule only
    assert world.call("GET", f"/v1/access-requests/{request['id']}", "tok-bob")[0] == 200

    # Alice cannot approve her own request; Bob can, for less time than asked.
    status, payload = world.call("POST", f"/v1/access-requests/{request['id']}/approve", "tok-alice", {})
    assert status == 403
    status, payload = world.call("POST", f"/v1/access-requests/{request['id']}/approve", "tok-bob",
                                 {"duration": "1h30m"})
    assert status == 200
    grant = payload["grant"]
    assert payload["request"]["status"] == "approved" and payload["request"]["grant_id"] == grant["id"]
    assert (grant["subject"], grant["status"], grant["approved_by"]) == ("alice", "active", ["bob"])
    assert grant["expires_at"] - grant["starts_at"] == 5400
    assert listed("tok-bob", {"status": ["pending"]}) == []
    assert listed("tok-bob", {"status": ["approved"]}) == [request["id"]]
    assert world.call("POST", f"/v1/access-requests/{request['id']}/approve", "tok-bob", {})[0] == 409

    def grants(token: str, query: dict[str, list[str]] | None = None) -> list[tuple[str, str]]:
        status, payload = world.call("GET", "/v1/grants", token, query=query)
        assert status == 200
        return [(g["id"], g["status"]) for g in payload["grants"]]

    assert grants("tok-alice") == [(grant["id"], "active")]
    assert grants("tok-bob") == [(grant["id"], "active")]
    assert grants("tok-mallory") == []
    assert world.call("GET", f"/v1/grants/{grant['id']}", "tok-alice")[1]["grant"]["id"] == grant["id"]

    world.clock.advance(600)
    status, payload = world.call("POST", f"/v1/grants/{grant['id']}/revoke", "tok-bob", {"reason": "audit done"})
    assert status == 200
    revoked = payload["grant"]
    assert (revoked["status"], revoked["revoked_by"], revoked["revoke_reason"]) == ("revoked", "bob", "audit done")
    assert revoked["revoked_at"] == START + 600
    assert grants("tok-alice") == []  # active only by default
    assert grants("tok-alice", {"all": ["true"]}) == [(grant["id"], "revoked")]
    assert world.call("POST", f"/v1/grants/{grant['id']}/revoke", "tok-bob", {})[0] == 409


def test_two_person_rule_returns_no_grant_until_the_second_approval(world):
    """With approvals_required: 2 the first approval answers grant null; the second starts the grant."""
    request = world.ask(topic="ledger")
    status, payload = world.call("POST", f"/v1/access-requests/{request['id']}/approve", "tok-bob")
    assert status == 200 and payload["grant"] is None and payload["request"]["status"] == "pending"
    status, payload = world.call("POST", f"/v1/access-requests/{request['id']}/approve", "tok-carol")
    assert status == 200 and payload["grant"]["approved_by"] == ["bob", "carol"]


def test_deny_needs_a_reason(world):
    """A deny without a reason, or with only spaces, is 400 and leaves the request pending."""
    request = world.ask()
    path = f"/v1/access-requests/{request['id']}/deny"
    for body in (None, {}, {"reason": ""}, {"reason": "   "}, {"reason": 42}):
        status, payload = world.call("POST", path, "tok-bob", body)
        assert status == 400, body
        assert "reason" in payload["error"]
    assert world.call("GET", f"/v1/access-requests/{request['id']}", "tok-bob")[1]["request"]["status"] == "pending"
    status, payload = world.call("POST", path, "tok-bob", {"reason": "not during the freeze"})
    assert status == 200
    assert (payload["request"]["status"], payload["request"]["decision_reason"]) == ("denied", "not during the freeze")
    assert world.call("POST", path, "tok-bob", {"reason": "again"})[0] == 409


def test_unknown_and_invisible_ids_are_both_404(world):
    """Unknown ids, malformed ids and ids the caller may not see answer alike, so ids cannot be probed."""
    request = world.ask()
    world.call("POST", f"/v1/access-requests/{request['id']}/approve", "tok-bob")
    [grant] = world.service.list_grants()
    for path in ("/v1/access-requests/req_0123456789abcdef", "/v1/access-requests/nonsense",
                 "/v1/grants/grt_0123456789abcdef", "/v1/grants/x"):
        assert world.call("GET", path, "tok-alice")[0] == 404
    unknown = world.call("GET", "/v1/access-requests/req_0123456789abcdef", "tok-mallory")
    invisible = world.call("GET", f"/v1/access-requests/{request['id']}", "tok-mallory")
    assert invisible[0] == unknown[0] == 404
    assert invisible[1]["error"].replace(request["id"], "ID") == unknown[1]["error"].replace("req_0123456789abcdef",
                                                                                              "ID")
    assert world.call("GET", f"/v1/grants/{grant.id}", "tok-mallory")[0] == 404
    assert world.call("POST", f"/v1/grants/{grant.id}/revoke", "tok-mallory", {})[0] == 404
    assert world.service.get_grant(grant.id).revoked_at is None

    pending = world.ask(topic="ledger")
    for action, body in (("approve", {}), ("deny", {"reason": "no"})):
        assert world.call("POST", f"/v1/access-requests/{pending['id']}/{action}", "tok-mallory", body)[0] == 404
    assert world.service.get_request(pending["id"]).status == "pending"
    # path segments that are not ids at all never reach the service
    assert world.call("GET", "/v1/access-requests/" + "a" * 65, "tok-alice")[0] == 404
    assert world.call("GET", "/v1/access-requests/req_1%2F..", "tok-alice")[0] == 404


def test_body_limits_and_shape(world):
    """Over 64 KiB is 413; bodies that are not one JSON object, or carry unknown keys, are 400."""
    big = orjson.dumps({"resources": [{"type": "topic", "name": "payments"}], "operations": ["read"],
                        "reason": "x" * MAX_BODY_BYTES})
    status, payload = world.call("POST", "/v1/access-requests", raw=big)
    assert status == 413 and "error" in payload
    assert world.call("POST", "/v1/access-requests", token=None, raw=big)[0] == 401  # who asks is checked first
    for raw in (b"{", b"[1, 2]", b'"text"', b"\xff\xfe", b"null"):
        assert world.call("POST", "/v1/access-requests", raw=raw)[0] == 400, raw
    for body in ({"resources": [{"type": "topic", "name": "payments"}], "operations": ["read"], "admin": True},
                 {"operations": ["read"]},
                 {"resources": "payments", "operations": ["read"]},
                 {"resources": [{"type": "topic", "name": "payments", "extra": 1}], "operations": ["read"]},
                 {"resources": [{"type": "topic", "name": 7}], "operations": ["read"]},
                 {"resources": [{"type": "topic", "name": "payments"}], "operations": []},
                 {"resources": [{"type": "topic", "name": "payments"}], "operations": ["read"], "duration": "31d"},
                 {"resources": [{"type": "topic", "name": "payments"}], "operations": ["read"], "duration": True},
                 {"resources": [{"type": "topc", "name": "payments"}], "operations": ["read"]},
                 {"resources": [{"type": "topic", "name": "payments"}], "operations": ["fly"]}):
        status, payload = world.call("POST", "/v1/access-requests", body=body)
        assert status == 400, (body, payload)
    assert world.call("GET", "/v1/access-requests", query={"status": ["weird"]})[0] == 400
    assert world.call("GET", "/v1/access-requests", query={"status": ["pending", "denied"]})[0] == 400
    assert world.call("GET", "/v1/grants", query={"all": ["yes"]})[0] == 400
    assert world.call("GET", "/v1/grants", query={"limit": ["5"]})[0] == 400
    assert world.service.list_requests() == []


def test_access_the_policy_does_not_gate_is_refused(world):
    """Asking for access the policy allows outright is 409; access no rule offers is 403."""
    assert world.call("POST", "/v1/access-requests", body={"resources": [{"type": "topic", "name": "public"}],
                                                           "operations": ["read"]})[0] == 409
    assert world.call("POST", "/v1/access-requests", body={"resources": [{"type": "topic", "name": "secret"}],
                                                           "operations": ["read"]})[0] == 403


def test_unknown_path_is_404_and_wrong_method_is_405(world):
    """Routing answers before anything else is looked at."""
    for method, path in (("GET", "/v1/nothing"), ("GET", "/v2/grants"), ("GET", "/v1/grants/"),
                         ("POST", "/v1/access-requests/req_0123456789abcdef/cancel"), ("GET", "/")):
        assert world.call(method, path)[0] == 404, path
    for method, path in (("DELETE", "/v1/grants"), ("PUT", "/v1/access-requests"),
                         ("GET", "/v1/access-requests/req_0123456789abcdef/approve"),
                         ("POST", "/v1/grants/grt_0123456789abcdef"), ("PATCH", "/v1/grants/x/revoke")):
        status, payload = world.call(method, path)
        assert status == 405 and "not allowed" in payload["error"], path


def test_an_unexpected_service_failure_is_a_500_without_details(world, caplog):
    """A bug below the API answers 500 "internal error" (details go to the log, not to the caller)."""
    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("database password is hunter2")

    world.service.list_requests = broken
    status, payload = world.call("GET", "/v1/access-requests")
    assert (status, payload) == (500, {"error": "internal error"})
    assert "hunter2" in caplog.text


@pytest.mark.parametrize(("text", "seconds"), [
    ("90s", 90), ("30m", 1800), ("2h", 7200), ("1d", 86400), ("1h30m", 5400), ("1d2h3m4s", 93784), (7200, 7200),
    ("7200", 7200), ("30d", 2_592_000), (2_592_000, 2_592_000),
])
def test_durations_parse(text, seconds):
    """The documented duration forms give the seconds they say."""
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", [
    "", "0s", 0, -5, "2 h", "2H", "h", "30m2h", "1.5h", "31d", 2_592_001, True, None, 2.5, "1h1h", "٣h", "9" * 40,
    "1d" * 20, [1],
])
def test_bad_durations_are_refused(text):
    """Anything else, including zero, over 30 days and unit orders other than d h m s, is a ValueError."""
    with pytest.raises(ValueError):
        parse_duration(text)


def test_openapi_documents_exactly_the_routes_served():
    """docs/openapi.yaml and ApprovalsApi agree route by route; /healthz and /metrics are there without a token."""
    spec = yaml.safe_load(OPENAPI.read_text())
    assert spec["openapi"].startswith("3.1")
    documented = {(method.upper(), path) for path, item in spec["paths"].items()
                  for method in item if method in ("get", "post", "put", "patch", "delete")}
    served = {(method, template) for method, template, _ in ROUTES}
    assert documented - {("GET", "/healthz"), ("GET", "/metrics")} == served
    assert spec["paths"]["/healthz"]["get"]["security"] == []
    assert spec["paths"]["/metrics"]["get"]["security"] == []
    assert spec["security"] == [{"bearer": []}]
    assert spec["components"]["securitySchemes"]["bearer"] == {**spec["components"]["securitySchemes"]["bearer"],
                                                               "type": "http", "scheme": "bearer"}
    schemas = spec["components"]["schemas"]
    assert {"AccessRequest", "Grant", "Error"} <= set(schemas)


def test_openapi_schemas_match_what_the_api_returns(world):
    """Every key of a real request and grant is in its schema's required list, and nothing more."""
    spec = yaml.safe_load(OPENAPI.read_text())
    request = world.ask()
    _, payload = world.call("POST", f"/v1/access-requests/{request['id']}/approve", "tok-bob")
    assert set(spec["components"]["schemas"]["AccessRequest"]["required"]) == set(payload["request"])
    assert set(spec["components"]["schemas"]["Grant"]["required"]) == set(payload["grant"])
