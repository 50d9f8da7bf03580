"""Apply image layers to a tree as the OCI image spec (layer.md) says.

Layers apply bottom first.  Within a layer, whiteouts act on the layers below
only (so they are applied before the layer's own entries, whatever their order
in the tar): ``.wh.NAME`` deletes NAME, ``.wh..wh..opq`` empties its directory.
An entry replaces whatever a lower layer had at its path, of any type; a
directory entry over a directory keeps the children and takes the new metadata.
Hard links name a path already present when they are read (their target comes
earlier in the layer, or lies below it).  Member metadata, xattrs and ACLs come
from :func:`ext4gen.inputs.tar.member_node`, shared with tar imports.
"""

from __future__ import annotations

import tarfile
from collections.abc import Callable

from ..errors import ManifestError
from ..model.layer_sources import DigestedLayerMemberSource, LayerMemberSource
from ..model.sources import HostFileSource, InlineSource, Source
from ..model.tree import DIR, Node, Tree, split_path
from .layer_scan import ScannedLayer
from .tar import member_node

WHITEOUT = b".wh."
OPAQUE = b".wh..wh..opq"


def _components(name: str) -> list[bytes]:
    raw = name.encode("utf-8", "surrogateescape")
    return [p for p in raw.split(b"/") if p and p != b"."]


def source_maker(scanned: ScannedLayer) -> Callable[[tarfile.TarInfo], Source]:
    """How a regular member's bytes are served: by offset from a plain layer, else decompressed."""
    blob = scanned.layer.blob
    stream = scanned.stream

    def runs(m: tarfile.TarInfo, shift: int) -> list[tuple[int, int, int]]:
        out, pos = [], m.offset_data
        for off, length in m.sparse or ():
            if length:
                out.append((off, length, shift + pos))
            pos += length
        return out

    def make(m: tarfile.TarInfo) -> Source:
        if not m.size:
            return InlineSource(b"")
        if stream is not None:
            digest = scanned.digests.get(m.offset_data)
            if digest is not None and not m.sparse:
                return DigestedLayerMemberSource(stream, m.offset_data, m.size, digest)
            return LayerMemberSource(stream, m.offset_data, m.size, runs(m, 0) if m.sparse else None)
        if m.sparse:
            return HostFileSource(blob.file, size=m.size, segments=runs(m, blob.offset))
        return HostFileSource(blob.file, base_offset=blob.offset + m.offset_data, size=m.size)

    return make


def apply_layer(tree: Tree, scanned: ScannedLayer, shown: str, base: list[bytes] | None = None) -> int:
    """Apply one layer under ``base`` (image root: []); returns how many lower-layer entries
    its whiteouts removed."""
    base = base or []
    adds: list[tarfile.TarInfo] = []
    opaque: list[list[bytes]] = []
    whiteouts: list[list[bytes]] = []
    scanned.member_count = len(scanned.members)
    for m in scanned.members:
        parts = _components(m.name)
        if b".." in parts:
            raise ManifestError(f"{shown}:{m.name}", "member path escapes the layer root ('..')")
        if parts and parts[-1] == OPAQUE:
            opaque.append(parts[:-1])
        elif parts and parts[-1].startswith(WHITEOUT):
            whiteouts.append([*parts[:-1], parts[-1][len(WHITEOUT) :]])
        else:
            adds.append(m)
    scanned.whiteouts = len(opaque) + len(whiteouts)
    scanned.members = []  # the nodes hold what is needed now
    removed = 0
    for d in opaque:
        node = tree.lookup(base + d)
        if node is not None and node.kind == DIR and node.children:
            removed += len(node.children)
            node.children.clear()
    for w in whiteouts:
        parent = tree.lookup(base + w[:-1])
        if parent is not None and parent.children is not None and parent.children.pop(w[-1], None):
            removed += 1
    tree.forget_parents()  # a removal may have detached the parents Tree.add remembers
    make = source_maker(scanned)
    for m in adds:
        mem = member_node(m, base, shown, make)
        node = mem.node
        if node is None:
            assert mem.link is not None
            node = tree.lookup(split_path(mem.link, mem.shown))
            if node is None:
                raise ManifestError(mem.shown, f"hard link target {mem.link.decode(errors='replace')} "
                                    "does not exist in this layer or below")
            if node.kind == DIR:
                raise ManifestError(mem.shown, "hard links to directories are not allowed")
        _place(tree, mem.path, node, mem.shown)
    return removed


def _place(tree: Tree, path: bytes, node: Node, shown: str) -> None:
    parts = split_path(path, shown)
    old = tree.lookup(parts) if parts else None
    if old is node:
        return
    if old is not None and old.kind == DIR and node.kind != DIR:
        parent = tree.lookup(parts[:-1])
        assert parent is not None and parent.children is not None
        del parent.children[parts[-1]]  # a file (or link …) replaces a whole directory
        tree.forget_parents()
    elif old is not None and old.kind != DIR and node.kind == DIR:
        parent = tree.lookup(parts[:-1])
        assert parent is not None and parent.children is not None
        del parent.children[parts[-1]]
    tree.add(path, node)

