"""Extent trees: header, leaf entry, index entry and the checksum tail (``fs/ext4/ext4_extents.h``)."""

from __future__ import annotations

from construct import Int16ul, Int32ul, Struct

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
    "ext4_extent",
    "ext4_extent_header",
    "ext4_extent_idx",
    "ext4_extent_tail",
]

EXT4_EXT_MAGIC = 0xF30A
EXT_INIT_MAX_LEN = 32768  # longest initialized extent (ee_len's top bit marks unwritten ones)

ext4_extent_header = Struct(
    "eh_magic" / Int16ul,
    "eh_entries" / Int16ul,
    "eh_max" / Int16ul,
    "eh_depth" / Int16ul,
    "eh_generation" / Int32ul,
)
ext4_extent = Struct(
    "ee_block" / Int32ul,
    "ee_len" / Int16ul,
    "ee_start_hi" / Int16ul,
    "ee_start_lo" / Int32ul,
)
ext4_extent_idx = Struct(
    "ei_block" / Int32ul,
    "ei_leaf_lo" / Int32ul,
    "ei_leaf_hi" / Int16ul,
    "ei_unused" / Int16ul,
)
# follows the last slot (eh_max) of a tree block: crc32c(uuid+inum+igeneration+block)
ext4_extent_tail = Struct("et_checksum" / Int32ul)

EXTENT_HEADER = FastPacker(ext4_extent_header)
EXTENT = FastPacker(ext4_extent)
EXTENT_IDX = FastPacker(ext4_extent_idx)
EXTENT_TAIL = FastPacker(ext4_extent_tail)
EXTENT_ENTRY_SIZE = EXTENT.size
EXTENTS_IN_INODE = (I_BLOCK_SIZE - EXTENT_HEADER.size) // EXTENT_ENTRY_SIZE  # 4
EXTENTS_PER_BLOCK = (BLOCK_SIZE - EXTENT_HEADER.size - EXTENT_TAIL.size) // EXTENT_ENTRY_SIZE  # 340
EXTENT_TAIL_OFFSET = EXTENT_HEADER.size + EXTENT_ENTRY_SIZE * EXTENTS_PER_BLOCK  # 4092

assert EXTENT_HEADER.size == EXTENT.size == EXTENT_IDX.size == 12
assert (EXTENTS_IN_INODE, EXTENTS_PER_BLOCK) == (4, 340)
