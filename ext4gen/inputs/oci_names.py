"""Container image SOURCE strings (``TRANSPORT:PATH[:REF]``): recognised, split, made absolute.

Apart from :mod:`.oci` so that ``ext4gen serve``'s supervisor, which only passes the
SOURCE on to nbdkit, does not load the layer readers and the tree model.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from ..errors import ManifestError

TRANSPORTS = ("oci", "oci-archive", "docker-archive")
PLATFORM_ENV = "EXT4GEN_PLATFORM"


def is_oci_source(source: object) -> bool:
    """True for a SOURCE string naming a container image (by its transport prefix)."""
    return isinstance(source, str) and source.partition(":")[0] in TRANSPORTS and ":" in source


def split_source(source: str, base_dir: str = "") -> tuple[str, str, str]:
    """``TRANSPORT:PATH[:REF]`` → (transport, path, ref).

    A path may itself contain ``:``: the whole remainder is the path when it
    exists (relative to ``base_dir``); otherwise the text after the last ``:``
    is the reference.
    """
    transport, _, rest = source.partition(":")
    if transport not in TRANSPORTS or not rest:
        raise ManifestError(source, f"expected {transport or 'oci'}:PATH[:REF]")
    if os.path.exists(os.path.join(base_dir, rest)) or ":" not in rest:
        return transport, rest, ""
    pos = rest.find(":")
    while pos > 0:  # a docker reference may hold ":" and "/" (name:tag): the first existing path wins
        if os.path.exists(os.path.join(base_dir, rest[:pos])):
            return transport, rest[:pos], rest[pos + 1 :]
        pos = rest.find(":", pos + 1)
    head, _, tail = rest.rpartition(":")
    if head and "/" not in tail:
        return transport, head, tail
    return transport, rest, ""


def absolute_source(source: str, resolve: Callable[[str], str] = os.path.abspath,
                    base_dir: str = "") -> str:
    """The same SOURCE with its path made absolute by ``resolve`` (nbdkit plans it from
    another directory; a manifest's ``[[import]]`` resolves it against the manifest)."""
    transport, path, ref = split_source(source, base_dir)
    return f"{transport}:{os.path.abspath(resolve(path))}" + (f":{ref}" if ref else "")


def absolute_any(source: str) -> str:
    """os.path.abspath for any SOURCE, keeping a container image's transport and reference."""
    if is_oci_source(source) and not os.path.exists(source):
        return absolute_source(source)
    return os.path.abspath(source)
