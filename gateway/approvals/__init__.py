"""Just-in-time approval: access requests, approvers' decisions, and the time-boxed grants they start.

model     requests, approvals and grants as data, and their JSON
store     the Store protocol, the SQL shared by both databases, SqliteStore (one node)
postgres  PostgresStore (several nodes, LISTEN/NOTIFY); imported on its own, as it needs psycopg
service   ApprovalService: the rules of approval, over a Store, the current policy and a clock
api       the /v1 HTTP API as one pure function (docs/openapi.yaml)
webhooks  signed notifications with retries, one sender thread per webhook
client    the `streamward access` and `streamward approvals` commands (over the HTTP API)
grants    the table of active grants in shared memory, and a worker's index of it
access    refusals that need approval, from a worker to the supervisor (non-blocking datagrams)
runtime   the supervisor's wiring of all of the above (docs/approvals.md)
"""

from gateway.approvals.model import AccessRequest, Approval, Grant, Resource
from gateway.approvals.service import ApprovalError, ApprovalService
from gateway.approvals.store import SqliteStore, Store

__all__ = ["AccessRequest", "ApprovalError", "ApprovalService", "Approval", "Grant", "Resource", "SqliteStore",
           "Store"]
