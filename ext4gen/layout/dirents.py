"""Directory entries: how they split into blocks, and the one packer every directory form uses.

Linear leaf blocks, htree leaves, the "." and ".." of an htree root, the empty
entry that hides an index node, and both halves of an inline directory are all
runs of ``ext4_dir_entry_2`` whose last rec_len reaches the end of its area;
:func:`pack_entries` writes every one of them.  Leaf blocks end with the
12-byte checksum tail that metadata_csum requires.
"""

from __future__ import annotations

from ..format.csum import crc32c_raw
from ..format.directory import (
    DET_CHECKSUM,
    DIR_ENTRY,
    DIR_TAIL,
    DIR_TAIL_SIZE,
    EXT4_DIR_PAD,
    EXT4_FT_DIR_CSUM,
    dir_rec_len,
)
from ..format.superblock import BLOCK_SIZE

DirEntry = tuple[bytes, int, int]  # (name, inode, file_type)
USABLE = BLOCK_SIZE - DIR_TAIL_SIZE
rec_len = dir_rec_len
_HEADER = DIR_ENTRY.size  # the name follows the 8-byte header


def split_blocks(entries: list[DirEntry]) -> list[int]:
    """Index of the first entry of each block."""
    starts = [0]
    used = 0
    header, pad = _HEADER, EXT4_DIR_PAD - 1  # rec_len, inlined: once per entry of every directory
    for i, (name, _ino, _ft) in enumerate(entries):
        need = (header + len(name) + pad) & ~pad
        if used + need > USABLE:
            starts.append(i)
            used = 0
        used += need
    return starts


def fits_one_block(entries: list[DirEntry]) -> bool:
    """``len(split_blocks(entries)) == 1``, stopping at the first entry past the block."""
    used, header, pad = 0, _HEADER, EXT4_DIR_PAD - 1
    for name, _ino, _ft in entries:
        used += (header + len(name) + pad) & ~pad
        if used > USABLE:
            return False
    return True


def pack_entries(buf: bytearray, start: int, end: int, entries: list[DirEntry]) -> None:
    """Write ``entries`` into ``buf[start:end]``, the last one's rec_len reaching ``end``.

    With no entries the area becomes one empty entry (inode 0) spanning it, as
    the kernel expects of an unused area; a zero-length area stays empty.
    ``buf`` must be zero in the area (names are not padded explicitly).
    """
    if not entries:
        if end > start:
            DIR_ENTRY.pack_into(buf, start, 0, end - start, 0, 0)
        return
    pack_into = DIR_ENTRY.pack_into
    header, pad = _HEADER, EXT4_DIR_PAD - 1  # locals: this loop runs once per entry served
    pos = start
    last = len(entries) - 1
    for i, (name, ino, ft) in enumerate(entries):
        n = len(name)
        length = end - pos if i == last else (header + n + pad) & ~pad  # dir_rec_len(n)
        pack_into(buf, pos, ino, length, n, ft)
        buf[pos + header : pos + header + n] = name
        pos += length


def block_bytes(entries: list[DirEntry]) -> bytearray:
    """One leaf block with a zeroed checksum tail (the caller fills det_checksum)."""
    buf = bytearray(BLOCK_SIZE)
    pack_entries(buf, 0, USABLE, entries)
    DIR_TAIL.pack_into(buf, USABLE, 0, DIR_TAIL_SIZE, 0, EXT4_FT_DIR_CSUM, 0)
    return buf


def set_checksum(buf: bytearray, csum_seed: int) -> None:
    """Fill det_checksum: crc32c of everything before the tail, seeded per inode."""
    DET_CHECKSUM.pack_into(buf, crc32c_raw(csum_seed, memoryview(buf)[:USABLE]), USABLE)
