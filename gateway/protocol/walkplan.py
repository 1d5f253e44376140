"""Compile walk plans for the Cython walker (``_fastpath.walker``) from Kafka's message specs.

A plan covers a whole frame after its size prefix: the header of the right
version, then the body, field by field as the spec lays it out at that version.
Top-level fields named in ``marks`` get a MARK (their position is reported),
and the top-level tagged-field section reports where tags 0..7 start, so the
caller can tell e.g. that a Produce response carries NodeEndpoints (tag 0)
without decoding it. Fields at any depth named in ``logs`` by their dotted path
(``responses.partitions.records``) get a LOG: ``walk_logged`` reports where each
occurrence starts, once per array element, in frame order.
"""

from __future__ import annotations

from functools import lru_cache

from _fastpath.walker import OPS, Plan
from gateway.protocol import schema
from gateway.protocol.schema import FIXED_SIZES, FieldSpec, in_versions

TAG_SLOTS = 8  # tags 0..7 of the top-level tagged section are reported


class WalkPlan:
    """A compiled plan plus where to find what it marks."""

    def __init__(self, plan: Plan, mark_slots: dict[str, int], tag_base: int) -> None:
        self.plan = plan
        self.mark_slots = mark_slots
        self.tag_base = tag_base

    def walk(self, frame: object) -> list[int]:
        return self.plan.walk(frame, 4)

    def walk_logged(self, frame: object, received: int = -1) -> tuple[list[int], list[tuple[int, int]]]:
        """The marks, and [(index in logs, position)] for every logged field passed; with ``received``, the
        fields logged within the first ``received`` bytes, raising nothing (see Plan.walk_logged)."""
        return self.plan.walk_logged(frame, 4, received)


def _fields(fields: tuple[FieldSpec, ...], version: int, flexible: bool, top_marks: dict[str, int] | None,
            tag_watch: int, logs: dict[str, int], path: str) -> list[int]:
    ops: list[int] = []
    for field in fields:
        if not field.present(version) or (flexible and field.tagged(version)):
            continue
        if top_marks is not None and field.snake_name in top_marks:
            ops += [OPS["MARK"], top_marks[field.snake_name]]
        if path + field.snake_name in logs:
            ops += [OPS["LOG"], logs[path + field.snake_name]]
        ops += _field(field, version, flexible, logs, f"{path}{field.snake_name}.")
    if flexible:
        ops += [OPS["TAGS"], tag_watch]
    return _merge_skips(ops)


def _field(field: FieldSpec, version: int, flexible: bool, logs: dict[str, int], path: str) -> list[int]:
    compact = in_versions(field.flexible_versions, version)
    nullable = int(field.nullable(version))
    if field.is_array:
        body = _element(field, version, flexible, logs, path)
        return [OPS["ARRAYC" if compact else "ARRAY32"], nullable, len(body), *body]
    if field.is_struct:
        body = _fields(field.fields, version, flexible, None, -1, logs, path)
        if nullable:
            return [OPS["NSTRUCT"], len(body), *body]
        return body
    return _scalar(field.type, compact, nullable)


def _element(field: FieldSpec, version: int, flexible: bool, logs: dict[str, int], path: str) -> list[int]:
    if field.is_struct:
        return _fields(field.fields, version, flexible, None, -1, logs, path)
    compact = in_versions(field.flexible_versions, version)
    return _scalar(field.element_type, compact, 0)


def _scalar(type_name: str, compact: bool, nullable: int) -> list[int]:
    if type_name in FIXED_SIZES:
        return [OPS["SKIP"], FIXED_SIZES[type_name]]
    if type_name == "string":
        return [OPS["STRC" if compact else "STR16"], nullable]
    if type_name in ("bytes", "records"):
        return [OPS["BYTESC" if compact else "BYTES32"], nullable]
    raise schema.SchemaError(f"no walk op for type {type_name}")


def _merge_skips(ops: list[int]) -> list[int]:
    """Adjacent fixed-size fields become one SKIP (the walker then does one bounds check for the run)."""
    out: list[int] = []
    i = 0
    skip = OPS["SKIP"]
    while i < len(ops):
        op = ops[i]
        if op == skip and len(out) >= 2 and out[-2] == skip and _ends_with_skip(out):
            out[-1] += ops[i + 1]
            i += 2
            continue
        width = _width(ops, i)
        out += ops[i:i + width]
        i += width
    return out


def _ends_with_skip(out: list[int]) -> bool:
    """Whether the last op in ``out`` is a SKIP (walking from the start, since operands look like ops)."""
    i = last = 0
    while i < len(out):
        last = i
        i += _width(out, i)
    return out[last] == OPS["SKIP"] if out else False


def _width(ops: list[int], i: int) -> int:
    op = ops[i]
    if op in (OPS["ARRAY32"], OPS["ARRAYC"]):
        return 3 + ops[i + 2]
    if op == OPS["NSTRUCT"]:
        return 2 + ops[i + 1]
    return 2


@lru_cache(maxsize=512)
def plan_for(kind: str, api_key: int, version: int, marks: tuple[str, ...] = (),
             logs: tuple[str, ...] = ()) -> WalkPlan:
    """The plan for a request or response frame of (api_key, version), marking the named top-level fields
    and logging the fields at the dotted paths in logs (code: the index in logs)."""
    if kind == "request":
        spec = schema.REQUESTS[api_key]
        header_version = schema.request_header_version(api_key, version)
        header = [OPS["SKIP"], 8, OPS["STR16"], 1] + ([OPS["TAGS"], -1] if header_version >= 2 else [])
    else:
        spec = schema.RESPONSES[api_key]
        header_version = schema.response_header_version(api_key, version)
        header = [OPS["SKIP"], 4] + ([OPS["TAGS"], -1] if header_version >= 1 else [])
    if not spec.supports(version):
        raise schema.SchemaError(f"{spec.name} has no version {version}")
    mark_slots = {name: slot for slot, name in enumerate(marks)}
    tag_base = len(marks)
    flexible = spec.flexible_min is not None and version >= spec.flexible_min
    body = _fields(spec.fields, version, flexible, mark_slots, tag_base if flexible else -1,
                   {path: code for code, path in enumerate(logs)}, "")
    return WalkPlan(Plan(header + body, tag_base + TAG_SLOTS), mark_slots, tag_base)
