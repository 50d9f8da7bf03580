"""Extended attributes: name prefixes, POSIX ACL encodings, and their on-disk placement.

Trees hold xattrs as the kernel's VFS hands them out (``os.getxattr``), so a
read-back compares equal; this module converts to ext4's on-disk forms.  An
inode's xattrs go into its 96 spare bytes first and the rest into one external
block, which inodes with identical remainders share (``h_refcount``).
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from dataclasses import dataclass

from ..format.csum import crc32c_raw
from ..format.inode import INODE_XATTR_SPACE
from ..format.superblock import BLOCK_SIZE
from ..format.xattr import (
    ACL_ENTRY,
    ACL_ENTRY_SHORT,
    ACL_EXECUTE,
    ACL_GROUP,
    ACL_GROUP_OBJ,
    ACL_HEADER,
    ACL_MASK,
    ACL_OTHER,
    ACL_READ,
    ACL_UNDEFINED_ID,
    ACL_USER,
    ACL_USER_OBJ,
    ACL_WRITE,
    EXT4_ACL_VERSION,
    EXT4_XATTR_INDEX_POSIX_ACL_ACCESS,
    EXT4_XATTR_INDEX_POSIX_ACL_DEFAULT,
    EXT4_XATTR_INDEX_SECURITY,
    EXT4_XATTR_INDEX_SYSTEM,
    EXT4_XATTR_INDEX_TRUSTED,
    EXT4_XATTR_INDEX_USER,
    EXT4_XATTR_MAGIC,
    EXT4_XATTR_PAD,
    H_CHECKSUM,
    POSIX_ACL_XATTR_VERSION,
    VFS_ACL_ENTRY,
    VFS_ACL_HEADER,
    XATTR_END_SIZE,
    XATTR_ENTRY,
    XATTR_HEADER,
    XATTR_HEADER_SIZE,
    XATTR_IBODY_HEADER,
)

ACL_ACCESS = b"system.posix_acl_access"
ACL_DEFAULT = b"system.posix_acl_default"
SYSTEM_DATA = b"system.data"
# (prefix, e_name_index); exact names first, longest prefixes before shorter ones.
_EXACT = {ACL_ACCESS: EXT4_XATTR_INDEX_POSIX_ACL_ACCESS, ACL_DEFAULT: EXT4_XATTR_INDEX_POSIX_ACL_DEFAULT}
_ACL_INDEXES = frozenset(_EXACT.values())
_PREFIXES = ((b"user.", EXT4_XATTR_INDEX_USER), (b"trusted.", EXT4_XATTR_INDEX_TRUSTED),
             (b"security.", EXT4_XATTR_INDEX_SECURITY), (b"system.", EXT4_XATTR_INDEX_SYSTEM))
_SHORT_TAGS = (ACL_USER_OBJ, ACL_GROUP_OBJ, ACL_MASK, ACL_OTHER)
_TAG_ORDER = {ACL_USER_OBJ: 0, ACL_USER: 1, ACL_GROUP_OBJ: 2, ACL_GROUP: 3, ACL_MASK: 4, ACL_OTHER: 5}
_PERM_BITS = {"r": ACL_READ, "w": ACL_WRITE, "x": ACL_EXECUTE}
_ACL_ENTRIES = VFS_ACL_HEADER.size  # VFS ACL entries start after the version word
_IBODY_ENTRIES = XATTR_IBODY_HEADER.size


def _round(n: int) -> int:
    return (n + EXT4_XATTR_PAD - 1) & ~(EXT4_XATTR_PAD - 1)


class XattrError(ValueError):
    """An attribute that ext4 cannot store; the caller adds the manifest key."""


def split_name(name: bytes) -> tuple[int, bytes]:
    """(e_name_index, suffix) for a full attribute name such as ``b"user.mime"``."""
    if name in _EXACT:
        return _EXACT[name], b""
    for prefix, index in _PREFIXES:
        if name.startswith(prefix) and len(name) > len(prefix):
            suffix = name[len(prefix) :]
            if name == SYSTEM_DATA:
                raise XattrError(f"{name.decode()} is reserved for inline data")
            if b"\0" in suffix:
                raise XattrError("attribute names must not contain NUL")
            if len(suffix) > 255:
                raise XattrError("attribute name longer than 255 bytes")
            return index, suffix
    raise XattrError(f"unsupported attribute namespace in {name!r} (user., trusted., "
                     "security., system.posix_acl_access/default)")


# -- POSIX ACLs ---------------------------------------------------------------
def parse_acl_text(text: str) -> bytes:
    """``"u::rwx,u:1000:r-x,g::r-x,m::r-x,o::---"`` → the kernel's VFS xattr value."""
    entries = []
    for item in text.replace("\n", ",").split(","):
        item = item.strip()
        if not item:
            continue
        parts = item.split(":")
        if len(parts) != 3:
            raise XattrError(f"bad ACL entry {item!r} (expected tag:qualifier:perms)")
        tag_s, qual, perm_s = parts
        tag_s = {"user": "u", "group": "g", "mask": "m", "other": "o"}.get(tag_s, tag_s)
        perm = _parse_perm(perm_s, item)
        if tag_s in ("u", "g"):
            if qual == "":
                tag, qid = (ACL_USER_OBJ if tag_s == "u" else ACL_GROUP_OBJ), ACL_UNDEFINED_ID
            else:
                if not qual.isdigit() or int(qual) >= ACL_UNDEFINED_ID:
                    raise XattrError(f"ACL entry {item!r}: qualifier must be a numeric id")
                tag, qid = (ACL_USER if tag_s == "u" else ACL_GROUP), int(qual)
        elif tag_s in ("m", "o") and qual == "":
            tag, qid = (ACL_MASK if tag_s == "m" else ACL_OTHER), ACL_UNDEFINED_ID
        else:
            raise XattrError(f"bad ACL entry {item!r}")
        entries.append((tag, perm, qid))
    return _vfs_acl(entries)


def _parse_perm(s: str, item: str) -> int:
    if s.isdigit() and len(s) == 1 and int(s) < 8:
        return int(s)
    perm = 0
    for ch in s:
        if ch in _PERM_BITS:
            perm |= _PERM_BITS[ch]
        elif ch != "-":
            raise XattrError(f"bad permissions in ACL entry {item!r}")
    return perm


def _vfs_acl(entries: list[tuple[int, int, int]]) -> bytes:
    """Validate like the kernel's posix_acl_valid and return the canonical VFS form."""
    entries = sorted(entries, key=lambda e: (_TAG_ORDER[e[0]], e[2] if e[0] in (ACL_USER, ACL_GROUP) else 0))
    tags = [e[0] for e in entries]
    for t in (ACL_USER_OBJ, ACL_GROUP_OBJ, ACL_OTHER):
        if tags.count(t) != 1:
            raise XattrError("an ACL needs exactly one owner (u::), group (g::) and other (o::) entry")
    if tags.count(ACL_MASK) > 1:
        raise XattrError("an ACL has at most one mask entry")
    if (ACL_USER in tags or ACL_GROUP in tags) and ACL_MASK not in tags:
        raise XattrError("an ACL with named user or group entries needs a mask (m::)")
    seen = set()
    for tag, _perm, qid in entries:
        if tag in (ACL_USER, ACL_GROUP):
            if (tag, qid) in seen:
                raise XattrError("duplicate named entry in ACL")
            seen.add((tag, qid))
    out = [VFS_ACL_HEADER.pack_tuple(POSIX_ACL_XATTR_VERSION)]
    for tag, perm, qid in entries:
        qid = qid if tag in (ACL_USER, ACL_GROUP) else ACL_UNDEFINED_ID
        out.append(VFS_ACL_ENTRY.pack_tuple(tag, perm, qid))
    return b"".join(out)


def normalize_vfs_acl(value: bytes) -> bytes:
    """Validate an ACL in VFS form (e.g. from ``os.getxattr``) and canonicalize it."""
    if (len(value) < _ACL_ENTRIES or (len(value) - _ACL_ENTRIES) % VFS_ACL_ENTRY.size
            or VFS_ACL_HEADER.unpack_from(value)[0] != POSIX_ACL_XATTR_VERSION):
        raise XattrError("not a POSIX ACL in the kernel's xattr format (version 2)")
    entries = [VFS_ACL_ENTRY.unpack_from(value, off)
               for off in range(_ACL_ENTRIES, len(value), VFS_ACL_ENTRY.size)]
    for tag, perm, _qid in entries:
        if tag not in _TAG_ORDER or perm > 7:
            raise XattrError("unknown tag or permission bits in ACL")
    return _vfs_acl(entries)


def acl_to_disk(value: bytes) -> bytes:
    """VFS ACL → ext4's compact on-disk ACL."""
    out = [ACL_HEADER.pack_tuple(EXT4_ACL_VERSION)]
    for off in range(_ACL_ENTRIES, len(value), VFS_ACL_ENTRY.size):
        tag, perm, qid = VFS_ACL_ENTRY.unpack_from(value, off)
        if tag in _SHORT_TAGS:
            out.append(ACL_ENTRY_SHORT.pack_tuple(tag, perm))
        else:
            out.append(ACL_ENTRY.pack_tuple(tag, perm, qid))
    return b"".join(out)


def reconcile_access_acl(perm: int, xattrs: dict[bytes, bytes]) -> int:
    """Make the mode and the access ACL agree, as the kernel does on setfacl.

    The owner/other permission bits come from ``u::``/``o::`` and the group bits
    from the mask (or ``g::`` without one).  An ACL of only those three entries
    says nothing the mode does not, and ext4 never stores it: it is dropped.
    Returns the new permission bits; ``xattrs`` is updated in place.
    """
    value = xattrs.get(ACL_ACCESS)
    if value is None:
        return perm
    bits = {}
    named = False
    for off in range(_ACL_ENTRIES, len(value), VFS_ACL_ENTRY.size):
        tag, p, _qid = VFS_ACL_ENTRY.unpack_from(value, off)
        bits[tag] = p
        named = named or tag in (ACL_USER, ACL_GROUP)
    group = bits.get(ACL_MASK, bits[ACL_GROUP_OBJ])
    perm = (perm & 0o7000) | (bits[ACL_USER_OBJ] << 6) | (group << 3) | bits[ACL_OTHER]
    if not named and ACL_MASK not in bits:
        del xattrs[ACL_ACCESS]
    return perm


# -- on-disk entries ------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class DiskXattr:
    index: int
    suffix: bytes
    value: bytes  # on-disk value (ACLs already compact)

    @property
    def entry_size(self) -> int:
        return _round(XATTR_ENTRY.size + len(self.suffix))

    @property
    def value_size(self) -> int:
        return _round(len(self.value))

    @property
    def sort_key(self) -> tuple[int, int, bytes]:
        return (self.index, len(self.suffix), self.suffix)

    def hash(self) -> int:
        """ext4_xattr_hash_entry over the name and the zero-padded value words."""
        h = 0
        for c in self.suffix:
            h = ((h << 5) & 0xFFFFFFFF) ^ (h >> 27) ^ c
        padded = self.value.ljust(self.value_size, b"\0")
        for (word,) in struct.iter_unpack("<I", padded):
            h = ((h << 16) & 0xFFFFFFFF) ^ (h >> 16) ^ word
        return h


def to_disk(xattrs: Mapping[bytes, bytes]) -> list[DiskXattr]:
    """Sorted on-disk entries (ext4 keeps block entries sorted by index, length, name)."""
    out = []
    for name, value in xattrs.items():
        index, suffix = split_name(name)
        if index in _ACL_INDEXES:
            value = acl_to_disk(normalize_vfs_acl(value))
        out.append(DiskXattr(index, suffix, value))
    return sorted(out, key=lambda x: x.sort_key)


def split_placement(entries: list[DiskXattr], inode_space: int = INODE_XATTR_SPACE
                    ) -> tuple[list[DiskXattr], list[DiskXattr]]:
    """Greedy in sorted order: whatever still fits the inode stays there, the rest (still
    sorted, as the kernel's block lookup requires) goes to the external block."""
    room = inode_space - _IBODY_ENTRIES - XATTR_END_SIZE
    inode, block = [], []
    for x in entries:
        need = x.entry_size + x.value_size
        if need <= room:
            inode.append(x)
            room -= need
        else:
            block.append(x)
    if block:
        need = XATTR_HEADER_SIZE + XATTR_END_SIZE + sum(x.entry_size + x.value_size for x in block)
        if need > BLOCK_SIZE:
            raise XattrError(f"extended attributes need {need} bytes beyond the inode, more than "
                             f"one {BLOCK_SIZE}-byte block holds")
    return inode, block


def ibody_bytes(entries: list[DiskXattr], space: int = INODE_XATTR_SPACE) -> bytes:
    """The in-inode xattr area: magic, entries, end marker, values packed at the end."""
    if not entries:
        return bytes(space)
    buf = bytearray(space)
    XATTR_IBODY_HEADER.pack_into(buf, 0, EXT4_XATTR_MAGIC)
    # e_value_offs in the inode counts from the first entry, right after the header
    _pack_entries(buf, entries, first=_IBODY_ENTRIES, end=space, offs_base=_IBODY_ENTRIES)
    return bytes(buf)


def block_bytes(entries: list[DiskXattr], refcount: int, blocknr: int, fs_seed: int) -> bytes:
    buf = bytearray(BLOCK_SIZE)
    hashes = _pack_entries(buf, entries, first=XATTR_HEADER_SIZE, end=BLOCK_SIZE, offs_base=0)
    h = 0
    for eh in hashes:
        h = ((h << 16) & 0xFFFFFFFF) ^ (h >> 16) ^ eh
    buf[:XATTR_HEADER_SIZE] = XATTR_HEADER.pack(h_magic=EXT4_XATTR_MAGIC, h_refcount=refcount,
                                                h_blocks=1, h_hash=h)
    # ext4_xattr_block_csum: the block number, then the block with h_checksum zero
    csum = crc32c_raw(fs_seed, struct.pack("<Q", blocknr))
    csum = crc32c_raw(csum, buf)
    H_CHECKSUM.pack_into(buf, csum)
    return bytes(buf)


def _pack_entries(buf: bytearray, entries: list[DiskXattr], *, first: int, end: int,
                  offs_base: int) -> list[int]:
    pos = first
    value_end = end
    hashes = []
    for x in entries:
        if x.value:
            value_end -= x.value_size
            buf[value_end : value_end + len(x.value)] = x.value
            offs = value_end - offs_base
        else:
            offs = 0
        eh = x.hash()
        hashes.append(eh)
        XATTR_ENTRY.pack_into(buf, pos, len(x.suffix), x.index, offs, 0, len(x.value), eh)
        name = pos + XATTR_ENTRY.size
        buf[name : name + len(x.suffix)] = x.suffix
        pos += x.entry_size
    assert pos + XATTR_END_SIZE <= value_end, "xattr entries overlap values"
    return hashes
