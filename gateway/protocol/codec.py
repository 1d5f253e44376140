"""Schema-driven codec for Kafka request and response bodies.

Nothing here knows a message layout.  Every (kind, api_key, version) is
compiled once, on first use, from the specs in :mod:`gateway.protocol.schema`
into nested reader and writer closures; the closures are cached, so decoding
does no version checks or spec lookups per field.  Runs of adjacent fixed-size
fields are read with one precompiled ``struct.Struct``.

Decoded bodies are dicts keyed by Kafka's snake_case field names.  Fields not
in the version are absent; tagged fields of the version are always present
(their default when not on the wire); unknown tags are kept as
``_unknown_tags: {tag: bytes}`` and written back verbatim.  ``records`` fields
are zero-copy ``memoryview`` slices of the input, ``bytes`` fields are
``bytes`` and uuids are 16 raw bytes.

The input is treated as hostile.  Every read goes through a few bounded
helpers (varints, length prefixes, spans and fixed-size formats; see "Bounded
reads" below) that check the bytes left first; every count and length is
checked against the bytes left before anything is allocated, and every
failure is a :class:`DecodeError` naming the field path.

Round trip: ``encode(decode(x)) == x`` for every encoding a Kafka
implementation produces.  Decoding is as lenient as Kafka's own generated
readers in three places that therefore normalise on re-encode: a bool byte
other than 0/1, a non-minimal varint, and tagged fields sent out of tag order
or holding their default value (Kafka never writes those).
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Mapping
from operator import itemgetter
from typing import Any

from . import schema
from .schema import FIXED_SIZES, FieldSpec, MessageSpec

__all__ = [
    "DecodeError",
    "EncodeError",
    "decode_request",
    "decode_request_frame",
    "decode_response",
    "decode_response_frame",
    "encode_request",
    "encode_request_frame",
    "encode_response",
    "encode_response_frame",
    "parse_request_header",
    "supports",
    "top_level_error_response",
]


class DecodeError(ValueError):
    """Malformed or hostile input.  The message names the field path."""


class EncodeError(ValueError):
    """A body that cannot be written at the requested version."""


Reader = Callable[[memoryview, int], tuple[Any, int]]
Step = Callable[[memoryview, int, dict], int]
Writer = Callable[[bytearray, Any], None]
StepWriter = Callable[[bytearray, Mapping], None]

_FORMATS = {
    "bool": "?",
    "int8": "b",
    "int16": "h",
    "uint16": "H",
    "int32": "i",
    "int64": "q",
    "float64": "d",
    "uuid": "16s",
}

_CACHED_ARRAY_FORMATS = 16
_MAX_STRING = 0x7FFF  # Kafka rejects longer strings on both read and write.
_MAX_INT32 = 0x7FFFFFFF
_MAX_UVARINT32 = 0xFFFFFFFF
_UNKNOWN_TAGS = "_unknown_tags"
_first_item = itemgetter(0)  # sorts (tag, payload) pairs by tag

_I8 = struct.Struct(">b")
_I16 = struct.Struct(">h")
_I32 = struct.Struct(">i")

# Null markers: compact lengths are "length + 1", so null is 0.
_COMPACT_NULL = b"\x00"
_INT16_NULL = _I16.pack(-1)
_INT32_NULL = _I32.pack(-1)


# --------------------------------------------------------------------------
# Bounded reads: the only code that touches input bytes.  Each one checks the
# bytes left before reading, so slicing and unpacking can never run past the
# buffer, and fails with a DecodeError naming the field.


def _read_uvarint(buf: memoryview, pos: int, path: str) -> tuple[int, int]:
    """An unsigned varint in Kafka's int32 range: at most 5 bytes, at most 2**32 - 1."""
    if pos < len(buf) and buf[pos] < 0x80:
        # One byte: nearly every length, count and tag on the wire.
        return buf[pos], pos + 1
    end = len(buf)
    value = 0
    for shift in (0, 7, 14, 21, 28):
        if pos >= end:
            raise DecodeError(f"{path}: truncated varint")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            if value > _MAX_UVARINT32:
                raise DecodeError(f"{path}: varint out of range")
            return value, pos
    raise DecodeError(f"{path}: varint longer than 5 bytes")


def _compact_length(buf: memoryview, pos: int, path: str) -> tuple[int, int]:
    """A compact length: a varint of length + 1, so null comes back as -1."""
    if pos < len(buf) and buf[pos] < 0x80:
        # The one-byte case again, to save a call on the hot path.
        return buf[pos] - 1, pos + 1
    value, pos = _read_uvarint(buf, pos, path)
    return value - 1, pos


def _int16_length(buf: memoryview, pos: int, path: str) -> tuple[int, int]:
    """A classic string length; negative means null."""
    if pos + 2 > len(buf):
        raise DecodeError(f"{path}: truncated length")
    return _I16.unpack_from(buf, pos)[0], pos + 2


def _int32_length(buf: memoryview, pos: int, path: str) -> tuple[int, int]:
    """A classic bytes/array length; negative means null."""
    if pos + 4 > len(buf):
        raise DecodeError(f"{path}: truncated length")
    return _I32.unpack_from(buf, pos)[0], pos + 4


def _span(buf: memoryview, pos: int, size: int, path: str) -> int:
    """End of a ``size``-byte span at ``pos``, checked against the bytes left."""
    end = pos + size
    if end > len(buf):
        raise DecodeError(f"{path}: length {size} exceeds the {len(buf) - pos} bytes left")
    return end


def _fixed_reader(fmt: struct.Struct, path: str) -> Reader:
    """All values of a precompiled fixed-size format, as a tuple."""
    unpack_from = fmt.unpack_from
    size = fmt.size

    def read(buf: memoryview, pos: int) -> tuple[tuple, int]:
        if pos + size > len(buf):
            raise DecodeError(f"{path}: truncated")
        return unpack_from(buf, pos), pos + size

    return read


def _fixed_value_reader(fmt: struct.Struct, path: str) -> Reader:
    """The single value of a one-field fixed-size format."""
    unpack_from = fmt.unpack_from
    size = fmt.size

    def read(buf: memoryview, pos: int) -> tuple[Any, int]:
        if pos + size > len(buf):
            raise DecodeError(f"{path}: truncated")
        return unpack_from(buf, pos)[0], pos + size

    return read


def _fixed_items_reader(code: str, path: str) -> Callable[[memoryview, int, int], tuple[list, int]]:
    """n fixed-size numbers in one go (an int32 array, say)."""
    size = struct.calcsize(">" + code)
    # Typical arrays (replica lists) are short, so keep one Struct per small
    # count instead of building a format string per read.
    formats = [struct.Struct(f">{n}{code}") for n in range(_CACHED_ARRAY_FORMATS)]

    def read(buf: memoryview, pos: int, n: int) -> tuple[list, int]:
        end = _span(buf, pos, n * size, path)
        fmt = formats[n] if n < _CACHED_ARRAY_FORMATS else struct.Struct(f">{n}{code}")
        return list(fmt.unpack_from(buf, pos)), end

    return read


def _uuids_reader(path: str) -> Callable[[memoryview, int, int], tuple[list, int]]:
    def read(buf: memoryview, pos: int, n: int) -> tuple[list, int]:
        end = _span(buf, pos, n * 16, path)
        return [buf[i : i + 16].tobytes() for i in range(pos, end, 16)], end

    return read


def _null_error(path: str) -> DecodeError:
    return DecodeError(f"{path}: null in a non-nullable field")


# --------------------------------------------------------------------------
# Reader compilation
#
# A struct compiles to a plan of (name, reader) pairs: ``reader(buf, pos)``
# returns ``(value, new_pos)``.  A run of fixed-size fields fills several keys
# at once, so its step takes the dict instead and has no name:
# ``step(buf, pos, d) -> new_pos``.  A run that opens the struct (most do)
# builds the dict directly.  Length prefixes come back as -1 for null.


def _string_reader(path: str, compact: bool, nullable: bool) -> Reader:
    read_length = _compact_length if compact else _int16_length

    def read(buf: memoryview, pos: int) -> tuple[str | None, int]:
        n, pos = read_length(buf, pos, path)
        if n < 0:
            if nullable:
                return None, pos
            raise _null_error(path)
        if n > _MAX_STRING:
            raise DecodeError(f"{path}: string length {n} over {_MAX_STRING}")
        end = _span(buf, pos, n, path)
        try:
            return str(buf[pos:end], "utf-8"), end
        except UnicodeDecodeError:
            raise DecodeError(f"{path}: invalid UTF-8") from None

    return read


def _bytes_reader(path: str, compact: bool, nullable: bool, zero_copy: bool) -> Reader:
    """``bytes`` fields are copied out; ``records`` (zero_copy) stay views of the input."""
    read_length = _compact_length if compact else _int32_length

    def read(buf: memoryview, pos: int) -> tuple[Any, int]:
        n, pos = read_length(buf, pos, path)
        if n < 0:
            if nullable:
                return None, pos
            raise _null_error(path)
        end = _span(buf, pos, n, path)
        return (buf[pos:end] if zero_copy else buf[pos:end].tobytes()), end

    return read


def _array_reader(field: FieldSpec, version: int, compact: bool, flexible: bool, path: str) -> Reader:
    nullable = field.nullable(version)
    read_length = _compact_length if compact else _int32_length
    element = field.element_type
    item_path = path + "[]"
    # Fixed-size elements are read all at once by read_all (which bounds its
    # own span); others one by one, after the count is checked against the
    # bytes left.
    read_all: Callable[[memoryview, int, int], tuple[list, int]] | None = None
    read_item: Reader | None = None
    item_size = 0
    if field.is_struct:
        read_item = _struct_reader(field.fields, version, flexible, item_path)
        # Each element takes at least this many bytes, which bounds the count
        # by the bytes left before any element is built (Kafka uses 1).
        item_size = max(1, _min_struct_size(field.fields, version, flexible))
    elif element == "string":
        read_item = _string_reader(item_path, compact, False)
        item_size = 1 if compact else 2
    elif element == "bytes":
        read_item = _bytes_reader(item_path, compact, False, False)
        item_size = 1 if compact else 4
    elif element == "uuid":
        read_all = _uuids_reader(path)
    else:
        read_all = _fixed_items_reader(_FORMATS[element], path)

    def read(buf: memoryview, pos: int) -> tuple[list | None, int]:
        n, pos = read_length(buf, pos, path)
        if n < 0:
            if nullable:
                return None, pos
            raise _null_error(path)
        if read_all is not None:
            return read_all(buf, pos, n)
        if n * item_size > len(buf) - pos:
            raise DecodeError(f"{path}: {n} elements cannot fit in {len(buf) - pos} bytes")
        items = []
        append = items.append
        for _ in range(n):
            item, pos = read_item(buf, pos)
            append(item)
        return items, pos

    return read


def _nullable_struct_reader(read_struct: Reader, path: str) -> Reader:
    """A nullable (non-tagged) struct: an int8 marker, negative for null, as Kafka reads it."""
    read_marker = _fixed_value_reader(_I8, path)

    def read(buf: memoryview, pos: int) -> tuple[dict | None, int]:
        marker, pos = read_marker(buf, pos)
        if marker < 0:
            return None, pos
        return read_struct(buf, pos)

    return read


def _value_reader(field: FieldSpec, version: int, flexible: bool, compact: bool, path: str) -> Reader:
    """A reader for one field (variable-length, struct or a lone fixed-size value)."""
    ftype = field.type
    if field.is_array:
        return _array_reader(field, version, compact, flexible, path)
    if field.is_struct:
        read_struct = _struct_reader(field.fields, version, flexible, path)
        return _nullable_struct_reader(read_struct, path) if field.nullable(version) else read_struct
    if ftype == "string":
        return _string_reader(path, compact, field.nullable(version))
    if ftype in ("bytes", "records"):
        return _bytes_reader(path, compact, field.nullable(version), ftype == "records")
    return _fixed_value_reader(struct.Struct(">" + _FORMATS[ftype]), path)


def _field_compact(field: FieldSpec, version: int) -> bool:
    """Whether lengths use the compact form; a field may opt out (the header's ClientId)."""
    return schema.in_versions(field.flexible_versions, version)


def _min_struct_size(fields: tuple[FieldSpec, ...], version: int, flexible: bool) -> int:
    """The fewest bytes one encoded struct can take at this version."""
    total = 1 if flexible else 0  # the tagged-field count
    for field in fields:
        if not field.present(version) or (flexible and field.tagged(version)):
            continue
        if field.type in FIXED_SIZES:
            total += FIXED_SIZES[field.type]
        elif field.is_struct and not field.is_array:
            total += 1 if field.nullable(version) else _min_struct_size(field.fields, version, flexible)
        elif _field_compact(field, version):
            total += 1
        else:
            total += 2 if field.type == "string" else 4
    return total


def _run_step(keys: tuple[str, ...], read_run: Reader) -> Step:
    """A run of adjacent fixed-size fields in the middle of a struct."""

    def step(buf: memoryview, pos: int, d: dict) -> int:
        values, pos = read_run(buf, pos)
        # One value per key by construction; zip's strict= keyword would cost
        # more than the rest of this step (it is parsed on a slow path).
        d.update(zip(keys, values))  # noqa: B905
        return pos

    return step


def _tagged_fields_reader(known: dict[int, tuple[str, Reader]], path: str) -> Callable:
    """The ``count`` fields of a non-empty tagged section."""

    def read(buf: memoryview, pos: int, count: int, d: dict) -> int:
        # Each tagged field takes at least two bytes (tag and size).
        if count * 2 > len(buf) - pos:
            raise DecodeError(f"{path}: {count} tagged fields cannot fit in {len(buf) - pos} bytes")
        seen = set()
        unknown = {}
        for _ in range(count):
            tag, pos = _read_uvarint(buf, pos, path)
            size, pos = _read_uvarint(buf, pos, path)
            end = _span(buf, pos, size, path)
            if tag in seen:
                raise DecodeError(f"{path}: duplicate tag {tag}")
            seen.add(tag)
            entry = known.get(tag)
            if entry is None:
                unknown[tag] = buf[pos:end].tobytes()
            else:
                name, read_field = entry
                # Read through a view that ends with the tagged field, so a
                # lying size cannot make the field read past it.
                value, stop = read_field(buf[:end], pos)
                if stop != end:
                    raise DecodeError(f"{path}.{name}: tagged field has {end - stop} unread bytes")
                d[name] = value
            pos = end
        if unknown:
            d[_UNKNOWN_TAGS] = unknown
        return pos

    return read


def _struct_reader(fields: tuple[FieldSpec, ...], version: int, flexible: bool, path: str) -> Reader:
    plan: list[tuple[str | None, Callable]] = []
    run: list[FieldSpec] = []
    tagged: dict[int, tuple[str, Reader]] = {}
    # Known tagged fields start at their default and are overwritten from the
    # wire: immutable defaults are shared, lists and dicts are made per read.
    tag_constants: dict[str, Any] = {}
    tag_makers: list[tuple[str, Callable]] = []
    head_keys: tuple[str, ...] = ()
    read_head: Reader | None = None

    def flush_run() -> None:
        nonlocal head_keys, read_head
        if not run:
            return
        keys = tuple(field.snake_name for field in run)
        fmt = struct.Struct(">" + "".join(_FORMATS[field.type] for field in run))
        where = f"{path}.{keys[0]}" if len(keys) == 1 else f"{path}.{{{','.join(keys)}}}"
        if not plan and read_head is None:
            head_keys, read_head = keys, _fixed_reader(fmt, where)
        elif len(keys) == 1:
            plan.append((keys[0], _fixed_value_reader(fmt, where)))
        else:
            plan.append((None, _run_step(keys, _fixed_reader(fmt, where))))
        run.clear()

    for field in fields:
        if not field.present(version):
            continue
        name = field.snake_name
        field_path = f"{path}.{name}"
        if flexible and field.tagged(version):
            tagged[field.tag] = (name, _value_reader(field, version, flexible, True, field_path))
            value, make = _default_maker(field, version)
            if make is None:
                tag_constants[name] = value
            else:
                tag_makers.append((name, make))
        elif field.type in _FORMATS:
            run.append(field)
        else:
            flush_run()
            compact = _field_compact(field, version)
            plan.append((name, _value_reader(field, version, flexible, compact, field_path)))
    flush_run()
    read_tagged = _tagged_fields_reader(tagged, path)

    def read(buf: memoryview, pos: int) -> tuple[dict, int]:
        if read_head is not None:
            values, pos = read_head(buf, pos)
            d = dict(zip(head_keys, values))  # noqa: B905 - as in _run_step
        else:
            d = {}
        for name, read_field in plan:
            if name is None:
                pos = read_field(buf, pos, d)
            else:
                d[name], pos = read_field(buf, pos)
        if flexible:
            if tag_constants:
                d.update(tag_constants)
            for name, make in tag_makers:
                d[name] = make()
            count, pos = _read_uvarint(buf, pos, path)
            if count:
                pos = read_tagged(buf, pos, count, d)
        return d, pos

    return read


# --------------------------------------------------------------------------
# Defaults


def _default_maker(field: FieldSpec, version: int) -> tuple[Any, Callable | None]:
    """(constant, None) for immutable defaults, (None, factory) for fresh lists/dicts."""
    if field.default is None:
        return None, None
    if field.is_array:
        return None, list
    if field.is_struct:
        return None, _struct_default_factory(field.fields, version)
    return field.default, None


def _struct_default_factory(fields: tuple[FieldSpec, ...], version: int) -> Callable[[], dict]:
    """Builds a struct with every field of the version at its default."""
    constants: dict[str, Any] = {}
    makers: list[tuple[str, Callable]] = []
    for field in fields:
        if field.present(version):
            value, make = _default_maker(field, version)
            if make is None:
                constants[field.snake_name] = value
            else:
                makers.append((field.snake_name, make))
    if not makers:
        return constants.copy

    def make_default() -> dict:
        d = constants.copy()
        for name, make in makers:
            d[name] = make()
        return d

    return make_default


def _encode_default(field: FieldSpec) -> Any:
    """What the writer uses for a missing key (never mutated, so may be shared)."""
    if field.default is None:
        return None
    if field.is_array:
        return ()
    if field.is_struct:
        return {}
    return field.default


# --------------------------------------------------------------------------
# Writer compilation
#
# Mirrors the readers: a struct compiles to a plan of (path, name, default,
# writer) entries where ``writer(out, value)`` appends one field and a missing
# key takes ``default``.  Runs of fixed-size fields have no name and take the
# whole mapping.  Lengths take the one-byte compact form inline and fall back
# to :func:`_write_length` otherwise.


def _write_uvarint(out: bytearray, value: int) -> None:
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)


def _write_length(out: bytearray, n: int, compact: bool, classic: struct.Struct) -> None:
    if compact:
        _write_uvarint(out, n + 1)
    else:
        out += classic.pack(n)


def _null_error_on_write(path: str) -> EncodeError:
    return EncodeError(f"{path}: None in a non-nullable field")


def _string_writer(path: str, compact: bool, nullable: bool) -> Writer:
    null_marker = _COMPACT_NULL if compact else _INT16_NULL

    def write(out: bytearray, value: str | None) -> None:
        if value is None:
            if not nullable:
                raise _null_error_on_write(path)
            out += null_marker
            return
        data = value.encode("utf-8")
        n = len(data)
        if compact and n < 0x7F:
            out.append(n + 1)
        elif n > _MAX_STRING:
            raise EncodeError(f"{path}: string of {n} bytes is over {_MAX_STRING}")
        else:
            _write_length(out, n, compact, _I16)
        out += data

    return write


def _bytes_writer(path: str, compact: bool, nullable: bool) -> Writer:
    """``bytes`` and ``records``: any bytes-like value (records decode as memoryviews)."""
    null_marker = _COMPACT_NULL if compact else _INT32_NULL

    def write(out: bytearray, value: Any) -> None:
        if value is None:
            if not nullable:
                raise _null_error_on_write(path)
            out += null_marker
            return
        n = memoryview(value).nbytes
        if n > _MAX_INT32:
            raise EncodeError(f"{path}: {n} bytes is over the int32 limit")
        if compact and n < 0x7F:
            out.append(n + 1)
        else:
            _write_length(out, n, compact, _I32)
        out += value

    return write


def _uuid_writer(path: str) -> Writer:
    def write(out: bytearray, value: bytes) -> None:
        if len(value) != 16:
            raise EncodeError(f"{path}: a uuid is 16 bytes, got {len(value)}")
        out += value

    return write


def _fixed_items_writer(code: str) -> Callable[[bytearray, Any], None]:
    """Packs a list of fixed-size numbers in one go, with cached formats for short lists."""
    formats = [struct.Struct(f">{n}{code}") for n in range(_CACHED_ARRAY_FORMATS)]

    def write_items(out: bytearray, items: Any) -> None:
        n = len(items)
        fmt = formats[n] if n < _CACHED_ARRAY_FORMATS else struct.Struct(f">{n}{code}")
        out += fmt.pack(*items)

    return write_items


def _array_writer(field: FieldSpec, version: int, compact: bool, flexible: bool, path: str) -> Writer:
    nullable = field.nullable(version)
    null_marker = _COMPACT_NULL if compact else _INT32_NULL
    element = field.element_type
    item_path = path + "[]"
    write_all: Callable[[bytearray, Any], None] | None = None
    if field.is_struct:
        write_item = _struct_writer(field.fields, version, flexible, item_path)
    elif element == "string":
        write_item = _string_writer(item_path, compact, False)
    elif element == "bytes":
        write_item = _bytes_writer(item_path, compact, False)
    elif element == "uuid":
        write_item = _uuid_writer(item_path)
    else:
        write_all = _fixed_items_writer(_FORMATS[element])

    def write(out: bytearray, value: Any) -> None:
        if value is None:
            if not nullable:
                raise _null_error_on_write(path)
            out += null_marker
            return
        n = len(value)
        if compact and n < 0x7F:
            out.append(n + 1)
        else:
            _write_length(out, n, compact, _I32)
        if write_all is not None:
            write_all(out, value)
        else:
            for item in value:
                write_item(out, item)

    return write


def _nullable_struct_writer(write_struct: Writer) -> Writer:
    """The int8 presence marker Kafka writes before a nullable struct."""

    def write(out: bytearray, value: Mapping | None) -> None:
        if value is None:
            out.append(0xFF)
        else:
            out.append(1)
            write_struct(out, value)

    return write


def _value_writer(field: FieldSpec, version: int, flexible: bool, compact: bool, path: str) -> Writer:
    ftype = field.type
    if field.is_array:
        return _array_writer(field, version, compact, flexible, path)
    if field.is_struct:
        write_struct = _struct_writer(field.fields, version, flexible, path)
        return _nullable_struct_writer(write_struct) if field.nullable(version) else write_struct
    if ftype == "string":
        return _string_writer(path, compact, field.nullable(version))
    if ftype in ("bytes", "records"):
        return _bytes_writer(path, compact, field.nullable(version))
    if ftype == "uuid":
        return _uuid_writer(path)
    pack = struct.Struct(">" + _FORMATS[ftype]).pack

    def write_fixed(out: bytearray, value: Any) -> None:
        out += pack(value)

    return write_fixed


def _run_writer(names: tuple[str, ...], codes: tuple[str, ...], defaults: tuple[Any, ...]) -> StepWriter:
    """One precompiled ``struct`` pack for a run of adjacent fixed-size fields."""
    pack = struct.Struct(">" + "".join(codes)).pack

    def write(out: bytearray, d: Mapping) -> None:
        out += pack(*map(d.get, names, defaults))

    return write


def _tagged_fields_writer(known: list[tuple[int, str, Writer, Any, bytes]], path: str) -> StepWriter:
    """Known tags are written only when not at their default (as Kafka does); unknown ones verbatim."""
    known_tags = frozenset(tag for tag, *_ in known)

    def write(out: bytearray, d: Mapping) -> None:
        entries = []
        for tag, name, write_value, default, default_bytes in known:
            if name in d:
                value = d[name]
                if value is default or value == default:
                    continue
                data = bytearray()
                write_value(data, value)
                if data != default_bytes:
                    entries.append((tag, data))
        unknown = d.get(_UNKNOWN_TAGS)
        if unknown:
            for tag in unknown:
                if not (isinstance(tag, int) and 0 <= tag <= _MAX_UVARINT32):
                    raise EncodeError(f"{path}: bad unknown tag {tag!r}")
                if tag in known_tags:
                    # The decoder never puts a known tag here; writing one
                    # would smuggle bytes past that field's own encoding.
                    raise EncodeError(f"{path}: unknown tag {tag} is a known field's tag")
            entries.extend(unknown.items())
            entries.sort(key=_first_item)
        _write_uvarint(out, len(entries))
        for tag, data in entries:
            _write_uvarint(out, tag)
            _write_uvarint(out, len(data))
            out += data

    return write


def _struct_writer(fields: tuple[FieldSpec, ...], version: int, flexible: bool, path: str) -> Writer:
    plan: list[tuple[str, str | None, Any, Callable]] = []
    run: list[tuple[str, str, Any]] = []
    tagged: list[tuple[int, str, Writer, Any, bytes]] = []

    def flush_run() -> None:
        if run:
            names, codes, defaults = zip(*run, strict=True)
            where = f"{path}.{names[0]}" if len(names) == 1 else f"{path}.{{{','.join(names)}}}"
            plan.append((where, None, None, _run_writer(names, codes, defaults)))
            run.clear()

    for field in fields:
        if not field.present(version):
            continue
        name = field.snake_name
        field_path = f"{path}.{name}"
        if flexible and field.tagged(version):
            write_value = _value_writer(field, version, flexible, True, field_path)
            value, make = _default_maker(field, version)
            default = value if make is None else make()
            default_bytes = bytearray()
            write_value(default_bytes, default)
            tagged.append((field.tag, name, write_value, default, bytes(default_bytes)))
        elif field.type in _FORMATS and field.type != "uuid":
            # uuids stay out of runs: struct's "16s" would silently pad or cut.
            run.append((name, _FORMATS[field.type], field.default))
        else:
            flush_run()
            compact = _field_compact(field, version)
            write_value = _value_writer(field, version, flexible, compact, field_path)
            plan.append((field_path, name, _encode_default(field), write_value))
    flush_run()
    tagged.sort(key=_first_item)
    write_tagged = _tagged_fields_writer(tagged, path)

    def write(out: bytearray, d: Mapping) -> None:
        if d is None:
            raise EncodeError(f"{path}: None in a non-nullable struct")
        where = path
        try:
            for where, name, default, write_field in plan:  # noqa: B007 - `where` names the failing field
                if name is None:
                    write_field(out, d)
                else:
                    write_field(out, d.get(name, default))
            if flexible:
                if tagged or _UNKNOWN_TAGS in d:
                    where = path
                    write_tagged(out, d)
                else:
                    out.append(0)  # no tagged fields
        except EncodeError:
            raise
        except (struct.error, TypeError, ValueError, AttributeError, OverflowError) as exc:
            raise EncodeError(f"{where}: {exc}") from None

    return write


# --------------------------------------------------------------------------
# Compiled codecs, cached per (kind, api_key, version)


class _Codec:
    __slots__ = ("name", "read", "write", "make_default")

    def __init__(self, spec: MessageSpec, version: int):
        flexible = spec.flexible(version)
        self.name = f"{spec.name}v{version}"
        self.read = _struct_reader(spec.fields, version, flexible, self.name)
        self.write = _struct_writer(spec.fields, version, flexible, self.name)
        self.make_default = _struct_default_factory(spec.fields, version)


_CODECS: dict[str, dict[tuple[int, int], _Codec]] = {"request": {}, "response": {}}
_REQUEST_CODECS = _CODECS["request"]
_RESPONSE_CODECS = _CODECS["response"]
_HEADER_CODECS: dict[tuple[str, int], _Codec] = {}


def _spec(kind: str, api_key: int) -> MessageSpec | None:
    return (schema.REQUESTS if kind == "request" else schema.RESPONSES).get(api_key)


def _codec(kind: str, api_key: int, version: int) -> _Codec | None:
    """The cached codec, compiled on first use; None for versions the specs do not define."""
    cache = _CODECS[kind]
    codec = cache.get((api_key, version))
    if codec is None:
        spec = _spec(kind, api_key)
        if spec is None or not spec.supports(version):
            return None
        codec = cache[(api_key, version)] = _Codec(spec, version)
    return codec


def _header_codec(name: str, header_version: int) -> _Codec:
    # Header versions are chosen by the body's api key and version, not by
    # the header spec's validVersions: RequestHeader v0 (ControlledShutdown
    # v0 only) is no longer listed there but its fields are.
    key = (name, header_version)
    codec = _HEADER_CODECS.get(key)
    if codec is None:
        codec = _HEADER_CODECS[key] = _Codec(schema.HEADERS[name], header_version)
    return codec


def supports(api_key: int, version: int, kind: str) -> bool:
    """Whether the specs define this version of the request or response."""
    if kind not in ("request", "response"):
        raise ValueError(f"kind must be 'request' or 'response', not {kind!r}")
    spec = _spec(kind, api_key)
    return spec is not None and spec.supports(version)


# --------------------------------------------------------------------------
# Bodies


def _view(buf: Any) -> memoryview:
    """A flat byte view of any buffer (records are returned as slices of it)."""
    view = memoryview(buf)
    if view.format != "B" or view.ndim != 1:
        view = view.cast("B")
    return view


def _decode(cache: dict, kind: str, api_key: int, version: int, buf: Any, offset: int, strict: bool) -> dict:
    codec = cache.get((api_key, version)) or _codec(kind, api_key, version)
    if codec is None:
        raise DecodeError(f"unsupported {kind}: api_key={api_key} version={version}")
    view = _view(buf)
    if not 0 <= offset <= len(view):
        raise DecodeError(f"{codec.name}: offset {offset} outside a {len(view)}-byte buffer")
    body, pos = codec.read(view, offset)
    if strict and pos != len(view):
        raise DecodeError(f"{codec.name}: {len(view) - pos} trailing bytes")
    return body


def _encode_into(out: bytearray, kind: str, api_key: int, version: int, body: Mapping) -> None:
    codec = _codec(kind, api_key, version)
    if codec is None:
        raise EncodeError(f"unsupported {kind}: api_key={api_key} version={version}")
    codec.write(out, body)


def decode_request(api_key: int, version: int, buf: Any, offset: int = 0, strict: bool = True) -> dict:
    """Decode a request body starting at ``offset``; strict requires it to end the buffer."""
    return _decode(_REQUEST_CODECS, "request", api_key, version, buf, offset, strict)


def decode_response(api_key: int, version: int, buf: Any, offset: int = 0, strict: bool = True) -> dict:
    """Decode a response body starting at ``offset``; strict requires it to end the buffer."""
    return _decode(_RESPONSE_CODECS, "response", api_key, version, buf, offset, strict)


def encode_request(api_key: int, version: int, body: Mapping) -> bytes:
    """Encode a request body; missing keys take their spec default, keys of other versions are ignored."""
    out = bytearray()
    _encode_into(out, "request", api_key, version, body)
    return bytes(out)


def encode_response(api_key: int, version: int, body: Mapping) -> bytes:
    """Encode a response body; missing keys take their spec default, keys of other versions are ignored."""
    out = bytearray()
    _encode_into(out, "response", api_key, version, body)
    return bytes(out)


def top_level_error_response(
    api_key: int, version: int, error_code: int, extra: Mapping | None = None
) -> dict | None:
    """A response body with every field at its default and the top-level ``error_code`` set.

    None when that version's response has no top-level (untagged) ErrorCode.
    ``extra`` is merged last (e.g. ``throttle_time_ms``).
    """
    codec = _codec("response", api_key, version)
    if codec is None:
        raise ValueError(f"unsupported response: api_key={api_key} version={version}")
    spec = schema.RESPONSES[api_key]
    has_error_code = any(
        field.name == "ErrorCode" and field.present(version) and not field.tagged(version)
        for field in spec.fields
    )
    if not has_error_code:
        return None
    body = codec.make_default()
    body["error_code"] = error_code
    if extra:
        body.update(extra)
    return body


# --------------------------------------------------------------------------
# Frames: 4-byte big-endian size, header, body


def _frame_view(frame: Any, what: str) -> memoryview:
    view = _view(frame)
    size, _ = _int32_length(view, 0, f"{what} frame size")
    if size != len(view) - 4:
        raise DecodeError(f"{what} frame: size {size} but {len(view) - 4} bytes follow")
    return view


# The api key and version that open every request header, read first to pick
# the header version.
_read_header_keys = _fixed_reader(struct.Struct(">hh"), "RequestHeader.{request_api_key,request_api_version}")


def parse_request_header(frame: Any, offset: int = 4) -> tuple[int, int, int, str | None, int]:
    """(api_key, api_version, correlation_id, client_id, body_offset) of a request.

    Works for any version of a known api key, so that a gateway can answer a
    request for a version it does not support.  Header v2 tagged fields are
    read (bounded) and dropped.
    """
    view = _view(frame)
    if offset < 0:
        raise DecodeError(f"RequestHeader: negative offset {offset}")
    (api_key, api_version), _ = _read_header_keys(view, offset)
    try:
        header_version = schema.request_header_version(api_key, api_version)
    except ValueError:
        raise DecodeError(f"RequestHeader: unknown api key {api_key}") from None
    header, pos = _header_codec("RequestHeader", header_version).read(view, offset)
    return api_key, api_version, header["correlation_id"], header.get("client_id"), pos


def decode_request_frame(frame: Any) -> tuple[tuple[int, int, int, str | None], dict]:
    """((api_key, api_version, correlation_id, client_id), body) of a whole request frame."""
    view = _frame_view(frame, "request")
    api_key, api_version, correlation_id, client_id, pos = parse_request_header(view, 4)
    body = decode_request(api_key, api_version, view, pos)
    return (api_key, api_version, correlation_id, client_id), body


def encode_request_frame(
    api_key: int, version: int, correlation_id: int, client_id: str | None, body: Mapping
) -> bytes:
    """Size prefix, the request header Kafka uses for this api key and version, and the body."""
    try:
        header_version = schema.request_header_version(api_key, version)
    except ValueError as exc:
        raise EncodeError(str(exc)) from None
    out = bytearray(4)
    header = {
        "request_api_key": api_key,
        "request_api_version": version,
        "correlation_id": correlation_id,
        "client_id": client_id,
    }
    _header_codec("RequestHeader", header_version).write(out, header)
    _encode_into(out, "request", api_key, version, body)
    _I32.pack_into(out, 0, len(out) - 4)
    return bytes(out)


def decode_response_frame(api_key: int, version: int, frame: Any) -> tuple[int, dict]:
    """(correlation_id, body) of a whole response frame."""
    view = _frame_view(frame, "response")
    try:
        header_version = schema.response_header_version(api_key, version)
    except ValueError:
        raise DecodeError(f"ResponseHeader: unknown api key {api_key}") from None
    header, pos = _header_codec("ResponseHeader", header_version).read(view, 4)
    return header["correlation_id"], decode_response(api_key, version, view, pos)


def encode_response_frame(api_key: int, version: int, correlation_id: int, body: Mapping) -> bytes:
    """Size prefix, the response header (v0 for ApiVersions, see schema), and the body."""
    try:
        header_version = schema.response_header_version(api_key, version)
    except ValueError as exc:
        raise EncodeError(str(exc)) from None
    out = bytearray(4)
    _header_codec("ResponseHeader", header_version).write(out, {"correlation_id": correlation_id})
    _encode_into(out, "response", api_key, version, body)
    _I32.pack_into(out, 0, len(out) - 4)
    return bytes(out)
