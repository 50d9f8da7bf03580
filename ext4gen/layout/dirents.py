"""Linear directory blocks: how entries split into blocks, and the bytes of each block.

Entries are packed in order; each block ends with the 12-byte checksum tail
that metadata_csum requires, and the last real entry's rec_len stretches to it.
"""

from __future__ import annotations

import struct

from ..format.csum import crc32c_raw
from ..format.ondisk import BLOCK_SIZE, DIR_ENTRY, DIR_TAIL, DIR_TAIL_SIZE, EXT4_FT_DIR_CSUM

DirEntry = tuple[bytes, int, int]  # (name, inode, file_type)
USABLE = BLOCK_SIZE - DIR_TAIL_SIZE


def rec_len(name_len: int) -> int:
    return (8 + name_len + 3) & ~3


def split_blocks(entries: list[DirEntry]) -> list[int]:
    """Index of the first entry of each block."""
    starts = [0]
    used = 0
    for i, (name, _ino, _ft) in enumerate(entries):
        need = rec_len(len(name))
        if used + need > USABLE:
            starts.append(i)
            used = 0
        used += need
    return starts


def block_bytes(entries: list[DirEntry]) -> bytearray:
    """One leaf block with a zeroed checksum tail (the caller fills det_checksum)."""
    buf = bytearray(BLOCK_SIZE)
    pos = 0
    last = len(entries) - 1
    for i, (name, ino, ft) in enumerate(entries):
        n = len(name)
        length = USABLE - pos if i == last else rec_len(n)
        DIR_ENTRY.pack_into(buf, pos, ino, length, n, ft)
        buf[pos + 8 : pos + 8 + n] = name
        pos += length
    DIR_TAIL.pack_into(buf, USABLE, 0, DIR_TAIL_SIZE, 0, EXT4_FT_DIR_CSUM, 0)
    return buf


def set_checksum(buf: bytearray, csum_seed: int) -> None:
    """Fill det_checksum: crc32c of everything before the tail, seeded per inode."""
    struct.pack_into("<I", buf, BLOCK_SIZE - 4, crc32c_raw(csum_seed, memoryview(buf)[:USABLE]))
