"""Who is on a connection: set by authentication, read by policy and audit."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Principal:
    subject: str
    groups: tuple[str, ...]
    expires_at: float  # epoch seconds; the connection closes then unless re-authenticated
    client_address: str
    client_id: str | None
    mechanism: str

    def describe(self) -> str:
        groups = ",".join(self.groups) or "-"
        return f"principal={self.subject} groups={groups} client_id={self.client_id} from={self.client_address}"


ANONYMOUS_SUBJECT = "ANONYMOUS"  # only when authentication is switched off (development)
