"""Extent trees: header, leaf entry, index entry and the checksum tail (``fs/ext4/ext4_extents.h``)."""

from __future__ import annotations

from .inode import I_BLOCK_SIZE
from .packing import FastPacker
from .superblock import BLOCK_SIZE

__all__ = [
    "EXT4_EXT_MAGIC",
    "EXTENT",
    "EXTENTS_IN_INODE",
    "EXTENTS_PER_BLOCK",
    "EXTENT_ENTRY_SIZE",
    "EXTENT_HEADER",
    "EXTENT_IDX",
    "EXTENT_TAIL",
    "EXTENT_TAIL_OFFSET",
    "EXT_INIT_MAX_LEN",
]

EXT4_EXT_MAGIC = 0xF30A
EXT_INIT_MAX_LEN = 32768  # longest initialized extent (ee_len's top bit marks unwritten ones)

EXTENT_HEADER = FastPacker("ext4_extent_header")
EXTENT = FastPacker("ext4_extent")
EXTENT_IDX = FastPacker("ext4_extent_idx")
# follows the last slot (eh_max) of a tree block: crc32c(uuid+inum+igeneration+block)
EXTENT_TAIL = FastPacker("ext4_extent_tail")
EXTENT_ENTRY_SIZE = EXTENT.size
EXTENTS_IN_INODE = (I_BLOCK_SIZE - EXTENT_HEADER.size) // EXTENT_ENTRY_SIZE  # 4
EXTENTS_PER_BLOCK = (BLOCK_SIZE - EXTENT_HEADER.size - EXTENT_TAIL.size) // EXTENT_ENTRY_SIZE  # 340
EXTENT_TAIL_OFFSET = EXTENT_HEADER.size + EXTENT_ENTRY_SIZE * EXTENTS_PER_BLOCK  # 4092

assert EXTENT_HEADER.size == EXTENT.size == EXTENT_IDX.size == 12
assert (EXTENTS_IN_INODE, EXTENTS_PER_BLOCK) == (4, 340)
