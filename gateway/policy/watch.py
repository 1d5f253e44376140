"""The supervisor's side of policy: load, validate, publish to shared memory, and notice file changes.

A policy that fails validation is rejected with its error logged, and the
snapshot workers read stays the last good one. Without a configured path an
empty policy is published: every request is denied (fail closed).
"""

from __future__ import annotations

import logging
from pathlib import Path

from gateway.config import PolicySettings
from gateway.policy.loader import load_policies
from gateway.policy.model import PolicyError, PolicySet
from gateway.policy.snapshot import PolicyStore

log = logging.getLogger("streamward.policy")

Signature = tuple[tuple[str, int, int], ...]


def _signature(path: Path) -> Signature:
    """Names, mtimes and sizes of the policy files: cheap to poll, changes with any edit, add or delete."""
    files = [path] if path.is_file() else sorted(path.glob("*.yaml"))
    signature = []
    for file in files:
        try:
            stat = file.stat()
        except OSError:
            continue
        signature.append((str(file), stat.st_mtime_ns, stat.st_size))
    return tuple(signature)


class PolicyWatcher:
    def __init__(self, settings: PolicySettings, store: PolicyStore) -> None:
        self.settings = settings
        self.store = store
        self._signature: Signature | None = None

    def load(self) -> PolicySet:
        """Validate and publish now; raises PolicyError (the published snapshot is then unchanged)."""
        path = self.settings.path
        if path is None:
            policy = PolicySet()
            log.warning("no policy configured: every request will be denied")
        else:
            self._signature = _signature(path)
            policy = load_policies(path)
        generation = self.store.publish(policy)
        log.info("policy published: %d rules, generation %d", len(policy.rules), generation)
        return policy

    def reload(self) -> None:
        """HUP or a file change: keep the old snapshot if the new policy is invalid."""
        try:
            self.load()
        except PolicyError as exc:
            log.error("policy rejected, keeping generation %d: %s", self.store.generation(), exc)

    def poll(self) -> None:
        """Called from the supervisor loop; reloads when a policy file changed."""
        path = self.settings.path
        if path is not None and _signature(path) != self._signature:
            self.reload()
