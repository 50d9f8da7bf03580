"""Packers derived from the construct definitions: construct says what the bytes are, once.

construct's ``build`` is the readable, declarative definition, but costs tens of
microseconds per structure; rendering a million inodes needs ``struct``.  Every
fast path here is *derived* from a construct ``Struct`` (formats, offsets, sizes),
so the two cannot disagree, and fields are always given by name:

- :class:`FastPacker` — the whole structure as one ``struct.Struct``;
  ``pack(**fields)`` fills unnamed fields with zero.
- :meth:`FastPacker.fields` — a packer precompiled for one fixed set of field
  names (keyword-only, all required), every other field zero: the hot paths'
  named packing at nearly positional speed.
- :class:`Field` — one field's offset and format (checksums patched in after the
  fact, a magic number probed in a file).
- :func:`build` — construct's own build with zero defaults, for structures with
  arrays or constants that are rendered rarely (the superblock).
"""

from __future__ import annotations

import keyword
import struct
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from construct import Array, Bytes, Const, FormatField, Renamed, Struct

__all__ = ["FastPacker", "Field", "NamedPacker", "build", "field", "field_offsets", "zero_fields"]


def _leaf(sub: Renamed) -> Any:
    inner = sub.subcon
    return inner.subcon if isinstance(inner, Const) else inner


def _format(sub: Renamed) -> str:
    """The ``struct`` code of one fixed-size field (no byte-order prefix)."""
    inner = _leaf(sub)
    if isinstance(inner, FormatField):
        return inner.fmtstr.lstrip("<>=")
    if isinstance(inner, Bytes) and isinstance(inner.length, int):
        return f"{inner.length}s"
    raise TypeError(f"{sub.name}: {inner!r} has no single struct format")


def _zero(con: Any) -> Any:
    if isinstance(con, FormatField):
        return 0
    if isinstance(con, Bytes):
        return bytes(con.length)
    if isinstance(con, Array):
        return [_zero(con.subcon)] * con.count
    if isinstance(con, Struct):
        return zero_fields(con)
    raise TypeError(f"no zero value for {con!r}")


def field_offsets(definition: Struct) -> dict[str, int]:
    """Byte offset of every top-level field (fixed-size structures only)."""
    out, pos = {}, 0
    for sub in definition.subcons:
        out[sub.name] = pos
        pos += sub.sizeof()
    return out


def zero_fields(definition: Struct) -> dict[str, Any]:
    """A value for every non-constant field: 0, zero bytes, arrays and sub-structures of zeros."""
    return {sub.name: _zero(sub.subcon) for sub in definition.subcons if not isinstance(sub.subcon, Const)}


def build(definition: Struct, **fields: Any) -> bytes:
    """construct's build with every field not named here zero (constants keep their value).

    A misspelt name raises instead of silently leaving the real field zero.
    """
    values = dict(_zeros(definition))
    unknown = fields.keys() - values.keys()
    if unknown:
        raise KeyError(f"unknown fields {sorted(unknown)}")
    values.update(fields)
    return definition.build(values)


@lru_cache(maxsize=32)
def _zeros(definition: Struct) -> dict[str, Any]:
    return zero_fields(definition)


@dataclass(frozen=True, slots=True)
class Field:
    """One field of a structure: where it is and how it is encoded."""

    name: str
    offset: int
    size: int
    struct: struct.Struct

    def pack_into(self, buf: bytearray | memoryview, value: Any, base: int = 0) -> None:
        self.struct.pack_into(buf, base + self.offset, value)

    def pack(self, value: Any) -> bytes:
        return self.struct.pack(value)

    def unpack_from(self, buf: bytes | bytearray | memoryview, base: int = 0) -> Any:
        return self.struct.unpack_from(buf, base + self.offset)[0]


def field(definition: Struct, name: str) -> Field:
    """The :class:`Field` ``name`` of ``definition``, its offset summed from the definition."""
    offset = field_offsets(definition)[name]
    sub = next(s for s in definition.subcons if s.name == name)
    fmt = struct.Struct("<" + _format(sub))
    return Field(name, offset, fmt.size, fmt)


class FastPacker:
    """A ``struct.Struct`` derived from a construct ``Struct`` of fixed-size fields.

    ``pack_tuple``/``pack_into`` take every field in definition order (for the
    small, fixed structures whose four or five fields read plainly at the call);
    ``pack(**fields)`` and :meth:`fields` take names.
    """

    def __init__(self, definition: Struct) -> None:
        self.definition = definition
        self.names: list[str] = []
        self._subs: dict[str, Renamed] = {}
        defaults: list[Any] = []
        for sub in definition.subcons:
            assert isinstance(sub, Renamed), sub
            if isinstance(sub.subcon, Const):
                raise TypeError(f"{sub.name}: Const fields are not fast-packable")
            _format(sub)  # raises for fields struct cannot express
            self.names.append(sub.name)
            self._subs[sub.name] = sub
            defaults.append(0 if isinstance(sub.subcon, FormatField) else b"")
        self.struct = struct.Struct("<" + "".join(_format(s) for s in self._subs.values()))
        self.size = self.struct.size
        self.offsets = field_offsets(definition)
        self._defaults = dict(zip(self.names, defaults, strict=True))
        self.pack_into = self.struct.pack_into
        self.pack_tuple = self.struct.pack
        self.unpack_from = self.struct.unpack_from

    def pack(self, **fields: Any) -> bytes:
        """The structure with the named fields set and every other field zero."""
        unknown = fields.keys() - self._defaults.keys()
        if unknown:
            raise KeyError(f"unknown fields {sorted(unknown)}")
        return self.struct.pack(*(fields.get(n, d) for n, d in self._defaults.items()))

    def unpack(self, data: bytes | bytearray | memoryview, offset: int = 0) -> dict[str, Any]:
        return dict(zip(self.names, self.struct.unpack_from(data, offset), strict=True))

    def field(self, name: str) -> Field:
        return field(self.definition, name)

    def fields(self, *names: str) -> NamedPacker:
        """A packer for exactly ``names`` (keyword-only, all required); the rest packs as zeros."""
        return NamedPacker(self, names)


class NamedPacker:
    """Packs one structure from a fixed set of named fields; every other field is zero.

    Built once per call site: the unnamed fields become ``struct`` pad bytes
    (written as zeros), and ``pack_into`` is a generated function whose
    parameters are the field names, keyword-only.  A missing, extra or
    misspelt name is a ``TypeError`` at the call, and a field that moves in
    the definition moves here with it; the call costs about one microsecond
    more than positional ``struct.pack_into``, where a ``**kwargs`` dict
    lookup would cost two.  (Generating the function from validated
    identifiers is the technique ``collections.namedtuple`` uses.)
    """

    def __init__(self, packer: FastPacker, names: tuple[str, ...]) -> None:
        unknown = [n for n in names if n not in packer.offsets]
        if unknown or len(set(names)) != len(names):
            raise KeyError(f"unknown or repeated fields {unknown or sorted(names)}")
        self.names = tuple(n for n in packer.names if n in names)  # definition order
        self.size = packer.size
        fmt = ["<"]
        for n in packer.names:
            sub = packer._subs[n]
            fmt.append(_format(sub) if n in names else f"{sub.sizeof()}x")
        self.struct = struct.Struct("".join(fmt))
        assert self.struct.size == packer.size
        self.pack_into: Callable[..., None] = _keyword_function(self.struct.pack_into, self.names)

    def pack(self, **fields: Any) -> bytes:
        buf = bytearray(self.size)
        self.pack_into(buf, 0, **fields)
        return bytes(buf)


def _keyword_function(pack_into: Callable[..., None], names: tuple[str, ...]) -> Callable[..., None]:
    for n in names:  # only identifiers taken from a construct definition reach the source below
        if not n.isidentifier() or keyword.iskeyword(n):
            raise ValueError(f"field name {n!r} is not an identifier")
    params = ", ".join(names)
    source = f"def pack_into(buf, offset, /, *, {params}):\n    _pack_into(buf, offset, {params})\n"
    namespace: dict[str, Any] = {"_pack_into": pack_into}
    exec(source, namespace)
    return namespace["pack_into"]
