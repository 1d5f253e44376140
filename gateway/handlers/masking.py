"""Inline masking on the Fetch path: records of topics whose policy names masking rules are rewritten
before the client sees them.

Which topics are masked is decided per request from the principal's policy view (the allow rules'
``masking:`` names); the masking itself runs in the Cython kernel (``_fastpath.record_batch`` and
``_fastpath.mask``). A partition whose records cannot be parsed or masked is emptied, answered with
CORRUPT_MESSAGE and the event logged (rate-limited): its records are never passed through. Topics
without masking rules are not touched.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from _fastpath.mask import Masker
from _fastpath.record_batch import UnmaskableRecords, mask_records
from gateway.policy.engine import Engine, PrincipalView
from gateway.policy.model import MaskingRule
from gateway.protocol.errors import CORRUPT_MESSAGE

log = logging.getLogger("streamward.masking")

# A client stuck on an unmaskable partition refetches it in a loop: one warning per partition per this long.
WARN_EVERY_S = 10.0
WARNED_LIMIT = 4096

FixResponse = Callable[[dict[str, Any]], dict[str, Any]]


class MaskerCache:
    """One compiled Masker per set of masking rule names, per policy generation (rules can change)."""

    def __init__(self, hmac_key: bytes) -> None:
        self.hmac_key = hmac_key
        self._engine: Engine | None = None
        self._maskers: dict[tuple[str, ...], Masker] = {}
        self.counts: dict[str, int] = {}  # fields masked per "topic/rule", for metrics and audit
        self.emptied: dict[tuple[str, int], float] = {}  # (topic, partition) -> when last warned about
        self.emptied_total = 0

    def warn_emptied(self, peer: str, topic: str, partition: int, reason: str) -> None:
        self.emptied_total += 1
        now = time.monotonic()
        key = (topic, partition)
        if now - self.emptied.get(key, -WARN_EVERY_S) < WARN_EVERY_S:
            return
        if len(self.emptied) >= WARNED_LIMIT:
            self.emptied.clear()
        self.emptied[key] = now
        log.warning("%s: emptied %s[%d]: records could not be masked (%s); answered CORRUPT_MESSAGE "
                    "(%d emptied fetches so far in this worker)", peer, topic, partition, reason, self.emptied_total)

    def masker(self, engine: Engine, names: tuple[str, ...]) -> Masker:
        if engine is not self._engine:
            self._engine, self._maskers = engine, {}
        masker = self._maskers.get(names)
        if masker is None:
            rules: list[MaskingRule] = [engine.masking[name] for name in names]
            masker = Masker([kernel for rule in rules for kernel in rule.kernel_rules()], self.hmac_key)
            self._maskers[names] = masker
        return masker

    def count(self, topic: str, counts: dict[str, int]) -> None:
        for rule, n in counts.items():
            key = f"{topic}/{rule}"
            self.counts[key] = self.counts.get(key, 0) + n


def fetch_masking(body: dict[str, Any], version: int, view: PrincipalView, engine: Engine, cache: MaskerCache,
                  name_of: Callable[[bytes], str | None], max_output: int, peer: str) -> FixResponse | None:
    """The response fix-up masking this Fetch's masked topics, or None when none of them is masked."""
    maskers: dict[Any, tuple[str, Masker]] = {}
    for topic in body["topics"]:
        key = topic["topic_id"] if version >= 13 else topic["topic"]
        name = name_of(key) if version >= 13 else key
        if name is None:
            continue
        names = view.decide("topic", name, "read").masking
        if names:
            maskers[key] = (name, cache.masker(engine, tuple(names)))
    if not maskers:
        return None

    def mask(response: dict[str, Any]) -> dict[str, Any]:
        for topic in response["responses"]:
            entry = maskers.get(topic["topic_id"] if version >= 13 else topic["topic"])
            if entry is None:
                continue
            name, masker = entry
            for partition in topic["partitions"]:
                records = partition["records"]
                if not records:
                    continue
                try:
                    result = mask_records(records, masker, max_output=max_output)
                except UnmaskableRecords as exc:
                    # Never passed through; and the client is told (its own error for bad data), rather
                    # than seeing an empty partition and refetching it forever in silence.
                    cache.warn_emptied(peer, name, partition["partition_index"], str(exc))
                    partition["records"] = b""
                    partition["error_code"] = CORRUPT_MESSAGE
                    continue
                if result.changed:
                    partition["records"] = result.data
                    cache.count(name, result.counts)
        return response

    return mask
