"""The image's identity: its UUID and htree hash seed, and the map that keeps them.

By default both derive from a digest of everything that defines the image, so
the same tree gives the same image; a base map (``--base-map``) carries them,
and inode numbers and generations, over from an earlier build.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Sequence

from ..model.identity import IdentityMap
from ..model.options import ImageOptions
from ..model.sources import HostFileSource, InlineSource, ZeroSource
from ..model.times import NS
from ..model.tree import Node
from .plan import InodePlan, Plan


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
    pack = _DIGEST_INODE.pack
    parts: list[bytes] = []  # hashed in batches: one update per inode cost more than the packing
    update = parts.append
    for ip, n in zip(inodes, nodes, strict=True):
        if ip is None or n is None:
            continue
        m = n.meta
        a, b, c, d = m.atime, m.mtime, m.ctime, m.crtime  # (seconds, ns) as divmod gives them
        update(pack(ip.ino, ip.mode, m.uid, m.gid, a // NS, a % NS, b // NS, b % NS, c // NS, c % NS,
                    d // NS, d % NS, n.size, n.rdev[0], n.rdev[1]))
        if n.target:
            update(n.target)
        if n.xattrs:
            update(repr(sorted(n.xattrs.items())).encode())
        if isinstance(n.source, InlineSource):
            update(hashlib.sha256(n.source.data).digest())
        elif n.source is not None and not isinstance(n.source, (ZeroSource, HostFileSource)):
            update(n.source.describe().encode("utf-8", "surrogateescape"))  # generators: name, identity
        if ip.extents:
            update(repr(ip.extents).encode())
        if ip.entries:
            for name, ino, _ft in ip.entries:
                update(name)
                update(ino.to_bytes(4, "little"))
        if len(parts) > 8192:
            h.update(b"".join(parts))
            parts.clear()
    h.update(b"".join(parts))
    return h.digest()


_DIGEST_INODE = struct.Struct("<IIII" + "qI" * 4 + "QII")  # times as (seconds, ns): they pass 2^63 ns


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
