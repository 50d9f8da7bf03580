"""The image's identity: its UUID and htree hash seed, and the map that keeps them.

By default both derive from a digest of everything that defines the image, so
the same tree gives the same image; a base map (``--base-map``) carries them,
and inode numbers and generations, over from an earlier build.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Callable, Mapping, Sequence

from ..model.identity import IdentityMap
from ..model.options import ImageOptions
from ..model.sources import HostFileSource, InlineSource, Source, ZeroSource
from ..model.times import NS
from ..model.tree import FILE, SYMLINK, Node
from ..switches import pure_python_requested
from .plan import InodePlan, Plan

try:
    from . import _identity  # type: ignore[attr-defined]
except ImportError:  # not built: the digest's loop runs in Python
    _identity = None


def choose_uuid_and_seed(options: ImageOptions, digest: bytes) -> tuple[bytes, bytes]:
    """The options' values, else the base map's, else ones derived from ``digest``."""
    base = options.base_map
    uuid = options.uuid or (base.uuid if base else None) or uuid_from(digest[:16])
    hash_seed = options.hash_seed or (base.hash_seed if base else None) or uuid_from(digest[16:32])
    return uuid, hash_seed


def identity_digest(options: ImageOptions, inodes: Sequence[InodePlan | None],
                    nodes: Sequence[Node | None], content: bytes) -> bytes:
    """A digest of everything that defines the image, for the default UUID and hash seed.

    It never names where a host file lives (the same tree built from a relative
    or an absolute path, or from another checkout, is the same image): host
    files count by their size and layout (extents), and by their bytes through
    ``content``, the digest of every block dedup read; with ``dedup = "none"``
    nothing is read at plan time, so two trees that differ only in host file
    bytes then share a UUID unless one is given.
    """
    h = hashlib.sha256(b"ext4gen-3\0")
    h.update(content)
    h.update(options.label.encode() + b"\0" + options.dedup.encode() + b"\0")
    h.update(options.epoch_ns.to_bytes(16, "little", signed=True))
    h.update(b"inline" if options.inline_data else b"blocks")
    if _identity is not None and not pure_python_requested():
        _identity.digest_inodes(h.update, inodes, nodes, _xattr_bytes, _source_bytes, InlineSource,
                                (ZeroSource, HostFileSource), FILE, SYMLINK, hashlib.sha256)
    else:
        _digest_inodes(h.update, inodes, nodes)
    return h.digest()


def _digest_inodes(update_hash: Callable[[bytes], object], inodes: Sequence[InodePlan | None],
                   nodes: Sequence[Node | None]) -> None:
    """Every inode's part of :func:`identity_digest` (``_identity.c`` writes the same bytes)."""
    pack_ino, pack_meta, pack_rest = _DIGEST_INO.pack, _DIGEST_META.pack, _DIGEST_REST.pack
    parts: list[bytes] = []  # hashed in batches: one update per inode cost more than the packing
    update = parts.append
    last_meta, meta_bytes = None, b""
    for ip, n in zip(inodes, nodes, strict=True):
        if ip is None or n is None:
            continue
        m = n.meta
        if m is not last_meta:  # a manifest's entries share one Meta per (mode, uid, gid)
            a, b, c, d = m.atime, m.mtime, m.ctime, m.crtime  # (seconds, ns) as divmod gives them
            meta_bytes = pack_meta(m.uid, m.gid, a // NS, a % NS, b // NS, b % NS, c // NS, c % NS,
                                   d // NS, d % NS)
            last_meta = m
        update(pack_ino(ip.ino, ip.mode))
        update(meta_bytes)
        update(pack_rest(n.size, n.rdev[0], n.rdev[1]))
        if n.target:
            update(n.target)
        if n.xattrs:
            update(_xattr_bytes(n.xattrs))
        if n.source is not None:
            got = _source_bytes(n.source)
            if got is not None:
                update(got)
        if ip.extents:
            update(repr(ip.extents).encode())
        if ip.entries:
            update(b"".join([name + ino.to_bytes(4, "little") for name, ino, _ft in ip.entries]))
        if len(parts) > 8192:
            update_hash(b"".join(parts))
            parts.clear()
    update_hash(b"".join(parts))


def _xattr_bytes(xattrs: Mapping[bytes, bytes]) -> bytes:
    return repr(sorted(xattrs.items())).encode()


def _source_bytes(src: Source) -> bytes | None:
    """Inline bytes by their SHA-256; generators by name and identity; host files and zeros
    not at all (their size and extents count)."""
    if isinstance(src, InlineSource):
        return hashlib.sha256(src.data).digest()
    if isinstance(src, (ZeroSource, HostFileSource)):
        return None
    return src.describe().encode("utf-8", "surrogateescape")


# Per inode, in this order and without padding ("<"): ino, mode; uid, gid, the four times as
# (seconds, ns) since they pass 2^63 ns; size, rdev major, minor.  Packed in three pieces so
# the middle one, the metadata, is packed once for entries that share a Meta.
_DIGEST_INO = struct.Struct("<II")
_DIGEST_META = struct.Struct("<II" + "qI" * 4)
_DIGEST_REST = struct.Struct("<QII")


def uuid_from(raw: bytes) -> bytes:
    """Shape 16 bytes as an RFC 4122 version-4-style UUID (deterministic here)."""
    b = bytearray(raw)
    b[6] = (b[6] & 0x0F) | 0x40
    b[8] = (b[8] & 0x3F) | 0x80
    return bytes(b)


def identity_map(plan: Plan) -> IdentityMap:
    """The map a later build can use as ``--base-map`` to keep these identities."""
    m = IdentityMap(uuid=plan.uuid, hash_seed=plan.hash_seed)
    for path, ip in plan.paths():
        m.paths[path] = (ip.ino, ip.generation, ip.kind)
    used = {ip.ino for ip in plan.inodes if ip is not None}
    base = plan.options.base_map
    if base is not None:
        for ino, gen in base.retired.items():
            if ino not in used:
                m.retired[ino] = gen
        for ino, gen, _kind in base.paths.values():
            if ino not in used:
                m.retired[ino] = max(gen, m.retired.get(ino, gen))
    return m
