"""The superblock and the group descriptor, with the geometry constants ext4gen fixes.

The structures (``struct ext4_super_block`` and ``struct ext4_group_desc`` of
``fs/ext4/ext4.h``) are defined in :mod:`.definitions`; checksum and magic
positions are read off their derived layouts, never written by hand.
"""

from __future__ import annotations

from .packing import FastPacker

__all__ = [
    "BG_CHECKSUM",
    "BLOCKS_PER_GROUP",
    "BLOCK_SIZE",
    "DESCS_PER_BLOCK",
    "DESC_SIZE",
    "EXT2_FLAGS_UNSIGNED_HASH",
    "EXT4_BG_BLOCK_UNINIT",
    "EXT4_BG_INODE_UNINIT",
    "EXT4_BG_INODE_ZEROED",
    "EXT4_CRC32C_CHKSUM",
    "EXT4_DEFM_ACL",
    "EXT4_DEFM_XATTR_USER",
    "EXT4_DYNAMIC_REV",
    "EXT4_ERRORS_CONTINUE",
    "EXT4_LABEL_MAX",
    "EXT4_MIN_BLOCK_LOG_SIZE",
    "EXT4_OS_LINUX",
    "EXT4_SUPER_MAGIC",
    "EXT4_VALID_FS",
    "GROUP_DESC",
    "GROUP_DESC_CSUM_OFFSET",
    "LOG_BLOCK_SIZE",
    "MAX_MNT_COUNT_NEVER",
    "SUPERBLOCK",
    "SUPERBLOCK_CSUM_OFFSET",
    "SUPERBLOCK_OFFSET",
    "SUPERBLOCK_SIZE",
    "S_CHECKSUM",
    "S_MAGIC",
]

BLOCK_SIZE = 4096  # the only block size ext4gen writes
EXT4_MIN_BLOCK_LOG_SIZE = 10
LOG_BLOCK_SIZE = BLOCK_SIZE.bit_length() - 1 - EXT4_MIN_BLOCK_LOG_SIZE  # s_log_block_size
BLOCKS_PER_GROUP = BLOCK_SIZE * 8  # one block bitmap per group
SUPERBLOCK_OFFSET = 1024  # the primary superblock's byte offset, whatever the block size
SUPERBLOCK_SIZE = 1024

EXT4_SUPER_MAGIC = 0xEF53
EXT4_DYNAMIC_REV = 1  # s_rev_level: dynamic inode sizes and feature flags
EXT4_OS_LINUX = 0
MAX_MNT_COUNT_NEVER = 0xFFFF  # s_max_mnt_count -1: no mount-count-triggered check

# s_state, s_errors, s_flags, s_default_mount_opts, s_checksum_type
EXT4_VALID_FS = 0x0001
EXT4_ERRORS_CONTINUE = 1
EXT2_FLAGS_UNSIGNED_HASH = 0x0002
EXT4_DEFM_XATTR_USER = 0x0004
EXT4_DEFM_ACL = 0x0008
EXT4_CRC32C_CHKSUM = 1

# bg_flags
EXT4_BG_INODE_UNINIT = 0x0001
EXT4_BG_BLOCK_UNINIT = 0x0002
EXT4_BG_INODE_ZEROED = 0x0004

SUPERBLOCK = FastPacker("ext4_super_block")  # s_magic packs as its constant
S_MAGIC = SUPERBLOCK.field("s_magic")
EXT4_LABEL_MAX = SUPERBLOCK.field("s_volume_name").size  # 16
S_CHECKSUM = SUPERBLOCK.field("s_checksum")  # crc32c of every byte before it
SUPERBLOCK_CSUM_OFFSET = S_CHECKSUM.offset

GROUP_DESC = FastPacker("ext4_group_desc")
DESC_SIZE = GROUP_DESC.size  # the 64bit feature's descriptor: s_desc_size
DESCS_PER_BLOCK = BLOCK_SIZE // DESC_SIZE
BG_CHECKSUM = GROUP_DESC.field("bg_checksum")
GROUP_DESC_CSUM_OFFSET = BG_CHECKSUM.offset

assert SUPERBLOCK.size == SUPERBLOCK_SIZE
assert DESC_SIZE == 64
