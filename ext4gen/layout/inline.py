"""inline_data: files and directories small enough to live inside their inode.

The first 60 bytes go in i_block, the rest in the ``system.data`` xattr in the
inode's spare bytes (which must exist even when empty).  An inline directory
stores its parent's inode number and then entries without "." and "..": 56
bytes in i_block, the rest in system.data, each part's last rec_len reaching
its end.
"""

from __future__ import annotations

import struct

from ..format.ondisk import DIR_ENTRY, INODE_XATTR_SPACE
from ..model.xattrs import DiskXattr
from .dirents import DirEntry, rec_len

I_BLOCK_SIZE = 60
_DATA_ENTRY = DiskXattr(7, b"data", b"")
# magic + end marker + the system.data entry header; what remains holds the value
MAX_INLINE_VALUE = INODE_XATTR_SPACE - 4 - 4 - _DATA_ENTRY.entry_size  # 68
MAX_INLINE_SIZE = I_BLOCK_SIZE + MAX_INLINE_VALUE  # 128
DIR_I_BLOCK_ENTRIES = I_BLOCK_SIZE - 4  # after the parent inode number


def system_data(value: bytes) -> DiskXattr:
    return DiskXattr(7, b"data", value)


def inline_xattr_cost(inline_size: int) -> int:
    """Inode xattr space taken by system.data (entry and padded value)."""
    value = max(0, inline_size - I_BLOCK_SIZE)
    return _DATA_ENTRY.entry_size + ((value + 3) & ~3)


def _split(entries: list[DirEntry]) -> tuple[list[DirEntry], list[DirEntry], int] | None:
    """Entries for i_block and for system.data, and the value size; None if too big."""
    first: list[DirEntry] = []
    rest: list[DirEntry] = []
    used = 0
    for e in entries[2:]:  # no "." and ".." in an inline directory
        need = rec_len(len(e[0]))
        if not rest and used + need <= DIR_I_BLOCK_ENTRIES:
            first.append(e)
            used += need
        else:
            rest.append(e)
    value = sum(rec_len(len(e[0])) for e in rest)
    if value > MAX_INLINE_VALUE:
        return None
    return first, rest, value


def inline_dir_size(entries: list[DirEntry]) -> int | None:
    """i_size of the directory stored inline (60 + system.data size), None if it does not fit."""
    split = _split(entries)
    return None if split is None else I_BLOCK_SIZE + split[2]


def _pack(entries: list[DirEntry], size: int) -> bytes:
    buf = bytearray(size)
    if not entries:
        if size:
            DIR_ENTRY.pack_into(buf, 0, 0, size, 0, 0)  # one empty entry spanning the area
        return bytes(buf)
    pos = 0
    for i, (name, ino, ft) in enumerate(entries):
        length = size - pos if i == len(entries) - 1 else rec_len(len(name))
        DIR_ENTRY.pack_into(buf, pos, ino, length, len(name), ft)
        buf[pos + 8 : pos + 8 + len(name)] = name
        pos += length
    return bytes(buf)


def dir_content(entries: list[DirEntry]) -> bytes:
    split = _split(entries)
    assert split is not None
    first, rest, value = split
    parent = entries[1][1]
    return struct.pack("<I", parent) + _pack(first, DIR_I_BLOCK_ENTRIES) + _pack(rest, value)
