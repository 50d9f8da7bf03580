"""Owners in the image other than the source's: root owner, squashing, id-range maps.

The forms are those of the tools users know: ``UID:GID[:MODE]`` as in mke2fs
``-E root_owner``, one owner for everything as genext2fs ``-U`` / tar2ext4 do,
and ``CONTAINER:HOST:COUNT`` ranges read like a line of ``/proc/PID/uid_map``
(rootless containers keep their files under shifted host ids; the map shifts
them back).  Parsing raises ValueError with a message in the user's terms;
callers add the flag or manifest key.
"""

from __future__ import annotations

import itertools
import struct
from collections.abc import Mapping

from ..model.options import IdRange

MAX_ID = (1 << 32) - 2  # (uid_t)-1 is no owner
#: What an id outside every range of a map becomes, as the kernel shows such ids
#: inside a user namespace (/proc/sys/kernel/overflowuid, overflowgid).
OVERFLOW_ID = 65534
_ACL_HEADER = struct.Struct("<I")
_ACL_ENTRY = struct.Struct("<HHI")


def _id(text: str, what: str) -> int:
    text = text.strip()
    if not text.isdigit():
        raise ValueError(f"{what} {text!r} is not a number")
    v = int(text)
    if v > MAX_ID:
        raise ValueError(f"{what} {v} is over {MAX_ID}")
    return v


def parse_owner(text: str) -> tuple[int, int]:
    """``UID:GID`` (numbers, as in the image: host names would make the image depend on the host)."""
    parts = text.split(":")
    if len(parts) != 2:
        raise ValueError(f"expected UID:GID, got {text!r}")
    return _id(parts[0], "uid"), _id(parts[1], "gid")


def parse_root_owner(text: str) -> tuple[int, int, int | None]:
    """``UID:GID`` or ``UID:GID:MODE`` (MODE octal permission bits, e.g. 0755)."""
    parts = text.split(":")
    if len(parts) not in (2, 3):
        raise ValueError(f"expected UID:GID or UID:GID:MODE, got {text!r}")
    uid, gid = parse_owner(":".join(parts[:2]))
    mode = None
    if len(parts) == 3:
        try:
            mode = int(parts[2], 8)
        except ValueError:
            raise ValueError(f"mode {parts[2]!r} is not octal (e.g. 0755)") from None
        if not 0 <= mode <= 0o7777:
            raise ValueError(f"mode {parts[2]} is not between 0 and 07777")
    return uid, gid, mode


def parse_id_range(text: str) -> IdRange:
    """``CONTAINER:HOST:COUNT``."""
    parts = text.split(":")
    if len(parts) != 3:
        raise ValueError(f"expected CONTAINER:HOST:COUNT, got {text!r}")
    container, host = _id(parts[0], "container id"), _id(parts[1], "host id")
    count = _id(parts[2], "count")
    if count == 0:
        raise ValueError(f"{text}: the count must be at least 1")
    if container + count - 1 > MAX_ID or host + count - 1 > MAX_ID:
        raise ValueError(f"{text}: the range passes {MAX_ID}")
    return IdRange(container, host, count)


def check_id_map(ranges: tuple[IdRange, ...]) -> None:
    """Ranges may not overlap on either side, as the kernel requires of uid_map."""
    for side in ("host", "container"):
        spans = sorted(ranges, key=lambda r: getattr(r, side))
        for r0, r1 in itertools.pairwise(spans):
            if getattr(r1, side) < getattr(r0, side) + r0.count:
                raise ValueError(f"ranges {r0} and {r1} overlap on the {side} side")


class IdMap:
    """A uid or gid map as a lookup; ids outside every range become OVERFLOW_ID."""

    def __init__(self, ranges: tuple[IdRange, ...]) -> None:
        check_id_map(ranges)
        self.ranges = sorted(ranges, key=lambda r: r.host)
        self._cache: dict[int, int] = {}

    def __call__(self, host_id: int) -> int:
        got = self._cache.get(host_id)
        if got is None:
            got = OVERFLOW_ID
            for r in self.ranges:
                if r.host <= host_id < r.host + r.count:
                    got = r.container + (host_id - r.host)
                    break
            self._cache[host_id] = got
        return got


def map_acl_ids(xattrs: Mapping[bytes, bytes], uid_map: IdMap | None,
                gid_map: IdMap | None) -> dict[bytes, bytes] | None:
    """``xattrs`` with the named users and groups of its POSIX ACLs mapped (None: unchanged).

    Two named entries that map to one id would make an invalid ACL: ValueError.
    """
    from ..format.ondisk import ACL_GROUP, ACL_USER  # here: argument parsing needs none of this
    from ..model.xattrs import ACL_ACCESS, ACL_DEFAULT, normalize_vfs_acl

    out = None
    for name in (ACL_ACCESS, ACL_DEFAULT):
        value = xattrs.get(name)
        if value is None:
            continue
        entries = []
        changed = False
        for tag, perm, ident in _ACL_ENTRY.iter_unpack(value[_ACL_HEADER.size:]):
            new = ident
            if tag == ACL_USER and uid_map is not None:
                new = uid_map(ident)
            elif tag == ACL_GROUP and gid_map is not None:
                new = gid_map(ident)
            changed = changed or new != ident
            entries.append((tag, perm, new))
        if not changed:
            continue
        named = [(t, i) for t, _p, i in entries if t in (ACL_USER, ACL_GROUP)]
        if len(set(named)) != len(named):
            raise ValueError(f"{name.decode()}: two named entries map to the same id")
        raw = value[:_ACL_HEADER.size] + b"".join(_ACL_ENTRY.pack(*e) for e in entries)
        out = dict(xattrs) if out is None else out
        out[name] = normalize_vfs_acl(raw)
    return out
