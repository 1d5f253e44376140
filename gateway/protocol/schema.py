"""Model of Kafka's own message specs (the JSON files vendored in ``messages/``).

The files are copied unmodified from the kafka-clients 4.2.1 jar.  They are
JSON with ``//`` comments.  Only ``request``, ``response`` and ``header`` specs
are loaded; the ``data`` specs (records, consumer protocol) are not part of
the request/response wire protocol.

``REQUESTS``, ``RESPONSES`` (keyed by api key) and ``HEADERS`` (keyed by spec
name) are loaded on first access and then cached as plain module globals.
APIs that Kafka 4 removed entirely (``"validVersions": "none"``, e.g.
ControlledShutdown) have no versions and no fields, so they are left out.

Every spec is validated while loading, so that the codec compiler can trust
the model: unknown types, duplicate tags, clashing snake_case names or
impossible defaults fail loudly here rather than on some rare message.
"""

from __future__ import annotations

import json
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

__all__ = [
    "FIXED_SIZES",
    "HEADERS",
    "REQUESTS",
    "RESPONSES",
    "FieldSpec",
    "MessageSpec",
    "SchemaError",
    "Versions",
    "build_spec",
    "in_versions",
    "parse_versions",
    "request_header_version",
    "response_header_version",
    "snake_case",
    "strip_comments",
]

MESSAGES_DIR = Path(__file__).with_name("messages")

# An inclusive (low, high) version range; None means "none".
Versions = tuple[int, int] | None

# Kafka versions are int16; "N+" ranges are open-ended up to the int16 maximum.
_MAX_VERSION = 0x7FFF

# Wire widths of the fixed-size types; "bool" and "int8" are one byte.
FIXED_SIZES = MappingProxyType(
    {"bool": 1, "int8": 1, "int16": 2, "uint16": 2, "int32": 4, "int64": 8, "float64": 8, "uuid": 16}
)
VARIABLE_TYPES = frozenset({"string", "bytes", "records"})

_INT_RANGES = {
    "int8": (-(1 << 7), (1 << 7) - 1),
    "int16": (-(1 << 15), (1 << 15) - 1),
    "uint16": (0, (1 << 16) - 1),
    "int32": (-(1 << 31), (1 << 31) - 1),
    "int64": (-(1 << 63), (1 << 63) - 1),
}

# The ApiVersions and ControlledShutdown quirks of Kafka's header selection.
_API_VERSIONS_KEY = 18
_CONTROLLED_SHUTDOWN_KEY = 7


class SchemaError(ValueError):
    """A spec file that this loader cannot model faithfully."""


def parse_versions(text: str | None) -> Versions:
    """Parse a Kafka version range: ``"none"``, ``"3"``, ``"3+"`` or ``"3-7"``."""
    if text is None or text == "none":
        return None
    if text.endswith("+"):
        return int(text[:-1]), _MAX_VERSION
    low, sep, high = text.partition("-")
    return (int(low), int(high)) if sep else (int(low), int(low))


def in_versions(versions: Versions, version: int) -> bool:
    return versions is not None and versions[0] <= version <= versions[1]


def _covers(outer: Versions, inner: Versions) -> bool:
    """Whether every version of ``inner`` (a non-empty range) is in ``outer``."""
    return outer is not None and inner is not None and outer[0] <= inner[0] and inner[1] <= outer[1]


def snake_case(name: str) -> str:
    """Kafka's own ``MessageGenerator.toSnakeCase``: ``NodeId`` -> ``node_id``.

    An underscore goes before a capital only when the previous character was
    not a capital, so runs of capitals stay together (``KRaftVersion`` ->
    ``kraft_version``), exactly as Kafka names the fields in its docs.
    """
    out = []
    prev_upper = True
    for ch in name:
        if ch.isupper():
            if not prev_upper:
                out.append("_")
            out.append(ch.lower())
            prev_upper = True
        else:
            out.append(ch)
            prev_upper = False
    return "".join(out)


@dataclass(frozen=True, slots=True)
class FieldSpec:
    """One field of a message or struct, with its version ranges resolved.

    ``type`` is the spec's type string (``"int32"``, ``"[]string"``,
    ``"[]MetadataResponseTopic"``, ``"LeaderIdAndEpoch"``).  For struct and
    struct-array fields ``fields`` holds the struct's fields, whether they were
    declared inline or in the spec's ``commonStructs``.

    ``default`` is the parsed default: an int/float/bool/str/bytes for scalars,
    None where the spec says ``"null"``, and ``()`` for the non-null default of
    an array (empty) or a struct (every field at its own default).
    ``flexible_versions`` are the versions in which the field's lengths use the
    compact encoding: the message's flexible versions unless the field
    overrides them (only the request header's ClientId does, with "none").
    """

    name: str
    snake_name: str
    type: str
    versions: Versions
    nullable_versions: Versions
    tagged_versions: Versions
    tag: int | None
    default: Any
    entity_type: str | None
    fields: tuple[FieldSpec, ...]
    ignorable: bool
    map_key: bool
    zero_copy: bool
    flexible_versions: Versions
    about: str

    @property
    def is_array(self) -> bool:
        return self.type.startswith("[]")

    @property
    def element_type(self) -> str:
        """The element type of an array field, else the field's own type."""
        return self.type[2:] if self.is_array else self.type

    @property
    def is_struct(self) -> bool:
        """A struct or an array of structs (the field has sub-fields)."""
        return bool(self.fields)

    def present(self, version: int) -> bool:
        return in_versions(self.versions, version)

    def nullable(self, version: int) -> bool:
        return in_versions(self.nullable_versions, version)

    def tagged(self, version: int) -> bool:
        return in_versions(self.tagged_versions, version)


@dataclass(frozen=True, slots=True)
class MessageSpec:
    """A request, response or header spec.  ``api_key`` is None for headers."""

    api_key: int | None
    name: str
    kind: str
    valid_versions: tuple[int, int]
    flexible_min: int | None
    fields: tuple[FieldSpec, ...]

    def supports(self, version: int) -> bool:
        return self.valid_versions[0] <= version <= self.valid_versions[1]

    def flexible(self, version: int) -> bool:
        return self.flexible_min is not None and version >= self.flexible_min


# --------------------------------------------------------------------------
# Loading


_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|//[^\n]*')


def strip_comments(text: str) -> str:
    """Drop ``//`` comments while leaving string literals (which may contain ``//``) intact."""
    return _TOKEN.sub(lambda m: m.group(0) if m.group(0)[0] == '"' else "", text)


def _parse_default(raw: Any, ftype: str, struct_fields: bool, where: str) -> Any:
    """Kafka's ``FieldSpec`` default rules, evaluated once at load time."""
    if raw == "null":
        return None
    if ftype.startswith("[]"):
        if raw not in (None, ""):
            raise SchemaError(f"{where}: array default must be null or empty, got {raw!r}")
        return ()
    if struct_fields:
        if raw not in (None, ""):
            raise SchemaError(f"{where}: struct default must be null, got {raw!r}")
        return ()
    if ftype in _INT_RANGES:
        if raw is None or raw == "":
            return 0
        value = raw if isinstance(raw, int) else int(raw, 0)
        low, high = _INT_RANGES[ftype]
        if not low <= value <= high:
            raise SchemaError(f"{where}: default {raw!r} out of range for {ftype}")
        return value
    if ftype == "bool":
        if raw is None or raw == "":
            return False
        if isinstance(raw, bool):
            return raw
        if raw in ("true", "false"):
            return raw == "true"
        raise SchemaError(f"{where}: bad bool default {raw!r}")
    if ftype == "float64":
        return 0.0 if raw is None or raw == "" else float(raw)
    if ftype == "string":
        return "" if raw is None else str(raw)
    if ftype == "uuid":
        if raw not in (None, ""):
            raise SchemaError(f"{where}: uuid defaults are not supported, got {raw!r}")
        return bytes(16)
    if ftype in ("bytes", "records"):
        if raw not in (None, ""):
            raise SchemaError(f"{where}: {ftype} default must be null or empty, got {raw!r}")
        return b""
    raise SchemaError(f"{where}: unknown type {ftype!r}")


def _build_field(
    raw: dict[str, Any], common: dict[str, list[dict[str, Any]]], flexible: Versions, where: str
) -> FieldSpec:
    name = raw["name"]
    ftype = raw["type"]
    where = f"{where}.{name}"
    versions = parse_versions(raw["versions"])
    nullable = parse_versions(raw.get("nullableVersions"))
    tagged = parse_versions(raw.get("taggedVersions"))
    tag = raw.get("tag")
    element = ftype[2:] if ftype.startswith("[]") else ftype

    if element in FIXED_SIZES or element in VARIABLE_TYPES:
        if "fields" in raw:
            raise SchemaError(f"{where}: primitive type {ftype!r} with sub-fields")
        sub_raw = None
    elif "fields" in raw:
        sub_raw = raw["fields"]
    elif element in common:
        sub_raw = common[element]
    else:
        raise SchemaError(f"{where}: unknown type {ftype!r}")
    if ftype.startswith("[]") and element == "records":
        raise SchemaError(f"{where}: arrays of records are not a Kafka type")
    if sub_raw is not None and not sub_raw:
        raise SchemaError(f"{where}: struct without fields")
    sub_fields = _build_fields(sub_raw or (), common, flexible, where)

    # Nullability is only representable for variable-length types and structs.
    if nullable is not None and element in FIXED_SIZES and not ftype.startswith("[]"):
        raise SchemaError(f"{where}: fixed-size type {ftype!r} cannot be nullable")
    if (tag is None) != (tagged is None):
        raise SchemaError(f"{where}: tag and taggedVersions must come together")
    if tagged is not None:
        if not _covers(versions, tagged):
            raise SchemaError(f"{where}: taggedVersions must lie within versions")
        if flexible is None or tagged[0] < flexible[0]:
            raise SchemaError(f"{where}: tagged in non-flexible versions")
        if element == "records":
            raise SchemaError(f"{where}: records cannot be tagged")
        if sub_raw is not None and not ftype.startswith("[]") and nullable is not None:
            # Kafka writes a varint presence marker here instead of an int8; no
            # 4.2 spec has such a field, so refuse it rather than guess.
            raise SchemaError(f"{where}: nullable tagged struct fields are not supported")

    default = _parse_default(raw.get("default"), ftype, sub_raw is not None, where)
    if default is None and not _covers(nullable, versions):
        raise SchemaError(f"{where}: default null on a field that is not nullable in all its versions")

    return FieldSpec(
        name=name,
        snake_name=snake_case(name),
        type=ftype,
        versions=versions,
        nullable_versions=nullable,
        tagged_versions=tagged,
        tag=tag,
        default=default,
        entity_type=raw.get("entityType"),
        fields=sub_fields,
        ignorable=bool(raw.get("ignorable", False)),
        map_key=bool(raw.get("mapKey", False)),
        zero_copy=bool(raw.get("zeroCopy", False)),
        flexible_versions=parse_versions(raw["flexibleVersions"]) if "flexibleVersions" in raw else flexible,
        about=raw.get("about", ""),
    )


def _build_fields(
    raws: Any, common: dict[str, list[dict[str, Any]]], flexible: Versions, where: str
) -> tuple[FieldSpec, ...]:
    fields = tuple(_build_field(raw, common, flexible, where) for raw in raws)
    names = [f.snake_name for f in fields]
    if len(set(names)) != len(names):
        raise SchemaError(f"{where}: two fields share a snake_case name")
    tags = [f.tag for f in fields if f.tag is not None]
    if len(set(tags)) != len(tags):
        raise SchemaError(f"{where}: duplicate tag")
    return fields


def _read_spec_json(path: Path) -> dict[str, Any]:
    return json.loads(strip_comments(path.read_text(encoding="utf-8")))


def build_spec(raw: dict[str, Any]) -> MessageSpec | None:
    """Model one parsed spec file; None for specs with no versions (removed APIs)."""
    valid = parse_versions(raw["validVersions"])
    if valid is None:
        return None
    flexible = parse_versions(raw.get("flexibleVersions"))
    if flexible is not None and flexible[1] != _MAX_VERSION:
        raise SchemaError(f"{raw['name']}: flexibleVersions must be open-ended")
    common = {struct["name"]: struct["fields"] for struct in raw.get("commonStructs", ())}
    return MessageSpec(
        api_key=raw.get("apiKey"),
        name=raw["name"],
        kind=raw["type"],
        valid_versions=valid,
        flexible_min=flexible[0] if flexible is not None else None,
        fields=_build_fields(raw.get("fields", ()), common, flexible, raw["name"]),
    )


# Declared, not assigned: the first access goes through __getattr__ below,
# which loads every spec and binds these as plain globals.
REQUESTS: dict[int, MessageSpec]
RESPONSES: dict[int, MessageSpec]
HEADERS: dict[str, MessageSpec]

_lock = threading.Lock()


def _load() -> None:
    requests: dict[int, MessageSpec] = {}
    responses: dict[int, MessageSpec] = {}
    headers: dict[str, MessageSpec] = {}
    for path in sorted(MESSAGES_DIR.glob("*.json")):
        raw = _read_spec_json(path)
        if raw["type"] not in ("request", "response", "header"):
            continue
        spec = build_spec(raw)
        if spec is None:
            continue
        if spec.kind == "header":
            headers[spec.name] = spec
        else:
            table = requests if spec.kind == "request" else responses
            if spec.api_key in table:
                raise SchemaError(f"{spec.name}: api key {spec.api_key} defined twice")
            table[spec.api_key] = spec
    globals().update(REQUESTS=requests, RESPONSES=responses, HEADERS=headers)


def __getattr__(name: str) -> Any:
    # PEP 562 lazy module attributes: the ~190 files are parsed on first use
    # only, then the globals shadow this hook.
    if name in ("REQUESTS", "RESPONSES", "HEADERS"):
        with _lock:
            if name not in globals():
                _load()
        return globals()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# --------------------------------------------------------------------------
# Header selection (Kafka's ApiMessageType.requestHeaderVersion / responseHeaderVersion)


def _spec_for(table_name: str, api_key: int) -> MessageSpec:
    spec = __getattr__(table_name).get(api_key)
    if spec is None:
        raise ValueError(f"unknown api key {api_key}")
    return spec


def request_header_version(api_key: int, version: int) -> int:
    """Request header v2 for flexible versions, else v1; ControlledShutdown v0 uses v0.

    Flexible ranges are open-ended, so versions newer than the spec's maximum
    still get the right header (a broker must parse the header of an
    ApiVersions request it cannot serve in order to answer it).
    """
    if api_key == _CONTROLLED_SHUTDOWN_KEY and version == 0:
        # ControlledShutdown v0 predates the client id; Kafka 4 removed the API
        # entirely but keeps this rule.
        return 0
    return 2 if _spec_for("REQUESTS", api_key).flexible(version) else 1


def response_header_version(api_key: int, version: int) -> int:
    """Response header v1 for flexible versions, else v0; ApiVersions always v0 (KIP-511)."""
    if api_key == _API_VERSIONS_KEY:
        # A client that sent a too-new ApiVersions request must still be able
        # to read the (downgraded) answer, so its header never grows.
        return 0
    return 1 if _spec_for("RESPONSES", api_key).flexible(version) else 0
