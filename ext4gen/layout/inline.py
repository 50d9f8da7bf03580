"""inline_data: files and directories small enough to live inside their inode.

The first 60 bytes go in i_block, the rest in the ``system.data`` xattr in
the inode's spare bytes (which must exist even when empty).  An
inline directory stores its parent's inode number and then entries without
"." and "..": 56 bytes in i_block, the rest in system.data, each part's last
rec_len reaching its end.
"""

from __future__ import annotations

from ..format.directory import EXT4_INLINE_DOTDOT_SIZE
from ..format.inode import I_BLOCK_SIZE, INODE_XATTR_SPACE
from ..format.xattr import EXT4_XATTR_INDEX_SYSTEM, XATTR_END_SIZE, XATTR_IBODY_HEADER
from ..model.xattrs import DiskXattr
from .dirents import DirEntry, pack_entries, rec_len

SYSTEM_DATA_SUFFIX = b"data"  # "system.data" without its namespace prefix
_DATA_ENTRY = DiskXattr(EXT4_XATTR_INDEX_SYSTEM, SYSTEM_DATA_SUFFIX, b"")
# ibody header + end marker + the system.data entry header; what remains holds the value
MAX_INLINE_VALUE = INODE_XATTR_SPACE - XATTR_IBODY_HEADER.size - XATTR_END_SIZE - _DATA_ENTRY.entry_size
MAX_INLINE_SIZE = I_BLOCK_SIZE + MAX_INLINE_VALUE  # 128
DIR_I_BLOCK_ENTRIES = I_BLOCK_SIZE - EXT4_INLINE_DOTDOT_SIZE  # after the parent inode number

assert (MAX_INLINE_VALUE, MAX_INLINE_SIZE) == (68, 128)


def system_data(value: bytes) -> DiskXattr:
    return DiskXattr(EXT4_XATTR_INDEX_SYSTEM, SYSTEM_DATA_SUFFIX, value)


def inline_xattr_cost(inline_size: int) -> int:
    """Inode xattr space taken by system.data (entry and padded value)."""
    value = max(0, inline_size - I_BLOCK_SIZE)
    return _DATA_ENTRY.entry_size + ((value + 3) & ~3)


def _split(entries: list[DirEntry]) -> tuple[list[DirEntry], list[DirEntry], int] | None:
    """Entries for i_block and for system.data, and the value size; None if too big."""
    first: list[DirEntry] = []
    rest: list[DirEntry] = []
    used = value = 0
    for e in entries[2:]:  # no "." and ".." in an inline directory
        need = rec_len(len(e[0]))
        if not rest and used + need <= DIR_I_BLOCK_ENTRIES:
            first.append(e)
            used += need
        else:
            rest.append(e)
            value += need
            if value > MAX_INLINE_VALUE:  # too big: a directory of 1,000 names stops here
                return None
    return first, rest, value


def inline_dir_size(entries: list[DirEntry]) -> int | None:
    """i_size of the directory stored inline (60 + system.data size), None if it does not fit."""
    split = _split(entries)
    return None if split is None else I_BLOCK_SIZE + split[2]


def dir_content(entries: list[DirEntry]) -> bytes:
    """The inline directory's bytes: parent inode, the i_block entries, the system.data entries."""
    split = _split(entries)
    assert split is not None
    first, rest, value = split
    buf = bytearray(I_BLOCK_SIZE + value)
    buf[:EXT4_INLINE_DOTDOT_SIZE] = entries[1][1].to_bytes(EXT4_INLINE_DOTDOT_SIZE, "little")
    pack_entries(buf, EXT4_INLINE_DOTDOT_SIZE, I_BLOCK_SIZE, first)
    pack_entries(buf, I_BLOCK_SIZE, I_BLOCK_SIZE + value, rest)
    return bytes(buf)
