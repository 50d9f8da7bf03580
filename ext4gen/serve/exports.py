"""Export names for ``ext4gen serve SOURCE [SOURCE …]``: one NBD export per SOURCE.

Shared by the CLI and the nbdkit plugin, so both name exports the same way:
an argument is ``NAME=SOURCE`` or just ``SOURCE``, whose export is then named
after the file (``site.toml`` → ``site``, ``rootfs.tar.gz`` → ``rootfs``,
``/srv/data/`` → ``data``).  Names are restricted to characters that need no
escaping in an NBD URI (``nbd+unix:///NAME?socket=…``), because that URI is
how users will type them.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from ..errors import Ext4genError

NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
# Longest first: "x.tar.gz" must lose both suffixes, not just ".gz".
_SUFFIXES = (".tar.gz", ".tar.xz", ".tar.bz2", ".tar.zst", ".toml", ".json", ".tar", ".tgz",
             ".txz", ".tbz2", ".tbz")


class ExportError(Ext4genError):
    """Export names that cannot work (duplicates, bad characters): input, not environment."""


@dataclass(frozen=True)
class ExportSpec:
    name: str
    source: str


def valid_name(name: str) -> bool:
    return NAME_RE.fullmatch(name) is not None


def default_name(source: str) -> str:
    """The export name of a SOURCE given without ``NAME=``: its basename, less its extension.

    Characters a URI would need escaped become ``-``; a name that still is not
    valid (``.toml`` alone, say) falls back to ``export``.
    """
    base = os.path.basename(os.path.normpath(source))
    if not os.path.isdir(source):
        lower = base.lower()
        for suffix in _SUFFIXES:
            if lower.endswith(suffix) and len(base) > len(suffix):
                base = base[: -len(suffix)]
                break
        else:
            stem, _ext = os.path.splitext(base)
            base = stem or base
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", base).strip("-.")[:64]
    return name if valid_name(name) else "export"


def parse_export_arg(arg: str) -> tuple[str | None, str]:
    """``NAME=SOURCE`` → (NAME, SOURCE); anything else → (None, arg).

    An argument that names an existing path is always a SOURCE, even if it
    contains ``=``; so is one whose text before ``=`` is not a valid name
    (``./a=b.toml``).
    """
    name, sep, rest = arg.partition("=")
    if sep and rest and valid_name(name) and not os.path.exists(arg):
        return name, rest
    return None, arg


def resolve_exports(args: list[str]) -> list[ExportSpec]:
    """Name every SOURCE argument; the first is the default export.  Raises ExportError."""
    if not args:
        raise ExportError("no SOURCE given")
    specs: list[ExportSpec] = []
    seen: dict[str, str] = {}
    for arg in args:
        name, source = parse_export_arg(arg)
        if name is None:
            name = default_name(source)
        if name in seen:
            raise ExportError(f"two exports named {name!r} ({seen[name]} and {source}): "
                              f"name them with NAME=SOURCE")
        seen[name] = source
        specs.append(ExportSpec(name, source))
    return specs
