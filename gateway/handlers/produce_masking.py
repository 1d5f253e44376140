"""Masking on the Produce path: personal data never lands in a topic unmasked.

A masking rule with ``on_produce: mask`` or ``on_produce: reject``, named by the allow rule that lets a
client write a topic, applies to what that client produces:

- ``mask``: the records are rewritten by the same Cython kernel as on the Fetch path before they go
  upstream. Batch headers stay exactly as the producer wrote them (producer id, epoch, base sequence,
  transactional and control bits, offsets deltas, timestamps), so idempotence and transactions work;
  the batch length and CRC are recomputed.
- ``reject``: a partition whose records contain anything the rule would mask is not forwarded; the
  producer gets INVALID_RECORD with a message naming the rule. Other partitions go on.

Records the kernel cannot parse are refused as INVALID_RECORD too (never forwarded unchecked). With
acks=0 there is no response to carry the error: Kafka closes the connection in that case, and so does
the gateway, after forwarding what passed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from _fastpath.record_batch import UnmaskableRecords, mask_records
from gateway.authz.common import response
from gateway.handlers.masking import MaskerCache
from gateway.policy.engine import Engine, PrincipalView
from gateway.protocol.apis import PRODUCE
from gateway.protocol.errors import INVALID_RECORD

log = logging.getLogger("streamward.masking")

FixResponse = Callable[[dict[str, Any]], dict[str, Any]]


@dataclass
class ProduceMasking:
    """What the produce-side rules did to one Produce request."""

    body: dict[str, Any]  # the request to forward (the original dict, changed in place where records changed)
    changed: bool = False  # records were rewritten or partitions taken out: the request must be re-encoded
    refused: dict[Any, list[dict[str, Any]]] = field(default_factory=dict)  # topic key -> refused partition responses

    @property
    def anything_left(self) -> bool:
        return any(topic["partition_data"] for topic in self.body["topic_data"])

    def fix_response(self, version: int) -> FixResponse | None:
        """Put the refused partitions back into the broker's answer (clients match them by topic and index)."""
        if not self.refused:
            return None
        key_name = "topic_id" if version >= 13 else "name"
        refused = self.refused

        def fix(body: dict[str, Any]) -> dict[str, Any]:
            topics = body["responses"]
            by_key = {topic[key_name]: topic for topic in topics}
            for key, partitions in refused.items():
                topic = by_key.get(key)
                if topic is None:
                    topics.append(response(PRODUCE, version, "responses", **{key_name: key},
                                           partition_responses=list(partitions)))
                else:
                    topic["partition_responses"].extend(partitions)
            return body

        return fix

    def answer(self, version: int) -> dict[str, Any]:
        """The whole response, when nothing was left to forward."""
        body = response(PRODUCE, version, responses=[])
        fix = self.fix_response(version)
        return fix(body) if fix is not None else body


def produce_masking(body: dict[str, Any], version: int, view: PrincipalView, engine: Engine, cache: MaskerCache,
                    name_of: Callable[[bytes], str | None], max_output: int, peer: str) -> ProduceMasking | None:
    """Apply the produce-side masking rules of every topic this request writes; None when no topic has any."""
    plans: list[tuple[dict[str, Any], str, tuple[str, ...], tuple[str, ...]]] = []
    for topic in body["topic_data"]:
        name = name_of(topic["topic_id"]) if version >= 13 else topic["name"]
        if name is None:
            continue  # authorization already refused what the gateway cannot name
        names = view.decide("topic", name, "write").masking
        if not names:
            continue
        mask = tuple(n for n in names if engine.masking[n].on_produce == "mask")
        reject = tuple(n for n in names if engine.masking[n].on_produce == "reject")
        if mask or reject:
            plans.append((topic, name, mask, reject))
    if not plans:
        return None

    result = ProduceMasking(body)
    for topic, name, mask, reject in plans:
        key = topic["topic_id"] if version >= 13 else topic["name"]
        kept = []
        for partition in topic["partition_data"]:
            error, masked = _check_partition(partition, name, mask, reject, engine, cache, max_output)
            if error is None:
                kept.append(partition)
                result.changed = result.changed or masked
                continue
            log.info("%s: refused produce to %s[%d]: %s", peer, name, partition["index"], error)
            result.refused.setdefault(key, []).append(response(
                PRODUCE, version, "responses.partition_responses", index=partition["index"],
                error_code=INVALID_RECORD, base_offset=-1, log_append_time_ms=-1, log_start_offset=-1,
                error_message=error))
        if len(kept) != len(topic["partition_data"]):
            topic["partition_data"] = kept
            result.changed = True
    if result.changed:
        result.body["topic_data"] = [topic for topic in body["topic_data"] if topic["partition_data"]]
    return result


def _check_partition(partition: dict[str, Any], topic: str, mask: tuple[str, ...], reject: tuple[str, ...],
                     engine: Engine, cache: MaskerCache, max_output: int) -> tuple[str | None, bool]:
    """Reject-rules first (nothing is stored if any matches), then mask-rules: (error message or None,
    whether the partition's records were rewritten)."""
    records = partition["records"]
    if not records:
        return None, False
    try:
        if reject:
            found = mask_records(records, cache.masker(engine, reject), max_output=max_output)
            if found.changed and found.counts:
                rules = ", ".join(sorted(found.counts))
                return (f"the record batch contains data that masking rule(s) {rules} refuse on produce "
                        f"(on_produce: reject)"), False
        if mask:
            masked = mask_records(records, cache.masker(engine, mask), max_output=max_output)
            if masked.changed:
                partition["records"] = masked.data
                cache.count(topic, masked.counts)
                return None, True
    except UnmaskableRecords as exc:
        return f"the record batch could not be checked by the masking rules: {exc}", False
    return None, False
