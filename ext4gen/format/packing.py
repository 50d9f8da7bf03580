"""Packers derived from the construct definitions: construct says what the bytes are, once.

construct's ``build`` is the readable, declarative definition (:mod:`.definitions`),
but costs tens of microseconds per structure, and importing construct costs every
serve's start; rendering a million inodes needs ``struct``.  Every fast path here
is *derived* from a definition, through its layout in ``_layouts.py`` (field
offsets, sizes, ``struct`` codes and constants, which the tests hold equal to what
construct says), so the two cannot disagree, and fields are always given by name:

- :class:`FastPacker` — the whole structure as one ``struct.Struct``;
  ``pack(**fields)`` fills unnamed fields with zero (and constants with their value).
- :meth:`FastPacker.fields` — a packer precompiled for one fixed set of field
  names (keyword-only, all required), every other field zero: the hot paths'
  named packing at nearly positional speed.
- :class:`Field` — one field's offset and format (checksums patched in after the
  fact, a magic number probed in a file).
"""

from __future__ import annotations

import keyword
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ._layouts import LAYOUTS

__all__ = ["FastPacker", "Field", "NamedPacker", "field", "field_offset", "structure_size"]

# One field of a structure: name, offset, size, struct code (None: a nested structure,
# not packed flat) and constant value (None: set by the caller).
FieldLayout = tuple[str, int, int, "str | None", "int | None"]
Layout = tuple[FieldLayout, ...]


def structure_size(name: str) -> int:
    """sizeof the structure ``name`` (a key of ``_layouts.LAYOUTS``)."""
    *_, (_, offset, size, _, _) = LAYOUTS[name]
    return offset + size


def field_offset(name: str, field_name: str) -> int:
    """Where ``field_name`` starts in the structure ``name`` (nested structures included)."""
    return next(f[1] for f in LAYOUTS[name] if f[0] == field_name)


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


def field(structure: str, name: str) -> Field:
    """The :class:`Field` ``name`` of the structure ``structure``."""
    for f in LAYOUTS[structure]:
        if f[0] == name:
            return _field(structure, f)
    raise KeyError(f"{structure} has no field {name!r}")


def _field(structure: str, f: FieldLayout) -> Field:
    name, offset, size, code, _ = f
    if code is None:
        raise TypeError(f"{structure}.{name} is a nested structure, not one field")
    return Field(name, offset, size, struct.Struct("<" + code))


class FastPacker:
    """A ``struct.Struct`` derived from a structure of fixed-size fields.

    ``name`` is the structure's name in :mod:`.definitions` (its layout is
    ``_layouts.LAYOUTS[name]``, unless a ``layout`` is given).
    ``pack_tuple``/``pack_into`` take every field in definition order (for the
    small, fixed structures whose four or five fields read plainly at the call);
    ``pack(**fields)`` and :meth:`fields` take names.
    """

    def __init__(self, name: str, layout: Layout | None = None) -> None:
        self.name = name
        self.layout = LAYOUTS[name] if layout is None else layout
        self.names: list[str] = []
        self.offsets: dict[str, int] = {}
        self._fields: dict[str, FieldLayout] = {}
        self._defaults: dict[str, Any] = {}  # every field's value unless named: zero, or a constant
        self._constants: set[str] = set()  # (which pack() refuses to set)
        for f in self.layout:
            fname, offset, _size, code, const = f
            if code is None:
                raise TypeError(f"{name}.{fname}: a nested structure is not fast-packable")
            self.names.append(fname)
            self.offsets[fname] = offset
            self._fields[fname] = f
            if const is not None:
                self._constants.add(fname)
            self._defaults[fname] = const if const is not None else b"" if code.endswith("s") else 0
        self._settable = self._defaults.keys() - self._constants
        self.struct = struct.Struct("<" + "".join(f[3] for f in self._fields.values()))  # type: ignore[misc]
        self.size = self.struct.size
        assert self.size == sum(f[2] for f in self.layout), name
        self.pack_into = self.struct.pack_into
        self.pack_tuple = self.struct.pack
        self.unpack_from = self.struct.unpack_from

    @property
    def definition(self) -> Any:
        """The construct definition this packer derives from (loads construct: tests only)."""
        from .definitions import STRUCTURES

        return STRUCTURES[self.name]

    def pack(self, **fields: Any) -> bytes:
        """The structure with the named fields set and every other field zero."""
        unknown = fields.keys() - self._settable
        if unknown:
            raise KeyError(f"unknown fields {sorted(unknown)}")
        return self.struct.pack(*(fields.get(n, d) for n, d in self._defaults.items()))

    def unpack(self, data: bytes | bytearray | memoryview, offset: int = 0) -> dict[str, Any]:
        return dict(zip(self.names, self.struct.unpack_from(data, offset), strict=True))

    def field(self, name: str) -> Field:
        return _field(self.name, self._fields[name])

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
        if packer._constants:  # unnamed fields become pad bytes: a constant would be lost
            raise TypeError(f"{packer.name} has constants: pack it with pack()")
        self.names = tuple(n for n in packer.names if n in names)  # definition order
        self.size = packer.size
        fmt = ["<"]
        for n in packer.names:
            _, _, size, code, _ = packer._fields[n]
            fmt.append(code if n in names else f"{size}x")  # type: ignore[arg-type]
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
