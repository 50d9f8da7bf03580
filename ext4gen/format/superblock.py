"""The superblock and the group descriptor, with the geometry constants ext4gen fixes.

Field names and order follow the kernel's ``struct ext4_super_block`` and
``struct ext4_group_desc`` (``fs/ext4/ext4.h``); checksum and magic positions
are read off these definitions, never written by hand.
"""

from __future__ import annotations

from construct import Array, Bytes, Const, Int8ul, Int16ul, Int32ul, Int64ul, Struct

from .packing import FastPacker, field

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
    "SUPERBLOCK_CSUM_OFFSET",
    "SUPERBLOCK_OFFSET",
    "SUPERBLOCK_SIZE",
    "S_CHECKSUM",
    "S_MAGIC",
    "ext4_group_desc",
    "ext4_super_block",
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

ext4_super_block = Struct(
    "s_inodes_count" / Int32ul,
    "s_blocks_count_lo" / Int32ul,
    "s_r_blocks_count_lo" / Int32ul,
    "s_free_blocks_count_lo" / Int32ul,
    "s_free_inodes_count" / Int32ul,
    "s_first_data_block" / Int32ul,
    "s_log_block_size" / Int32ul,
    "s_log_cluster_size" / Int32ul,
    "s_blocks_per_group" / Int32ul,
    "s_clusters_per_group" / Int32ul,
    "s_inodes_per_group" / Int32ul,
    "s_mtime" / Int32ul,
    "s_wtime" / Int32ul,
    "s_mnt_count" / Int16ul,
    "s_max_mnt_count" / Int16ul,
    "s_magic" / Const(EXT4_SUPER_MAGIC, Int16ul),
    "s_state" / Int16ul,
    "s_errors" / Int16ul,
    "s_minor_rev_level" / Int16ul,
    "s_lastcheck" / Int32ul,
    "s_checkinterval" / Int32ul,
    "s_creator_os" / Int32ul,
    "s_rev_level" / Int32ul,
    "s_def_resuid" / Int16ul,
    "s_def_resgid" / Int16ul,
    "s_first_ino" / Int32ul,
    "s_inode_size" / Int16ul,
    "s_block_group_nr" / Int16ul,
    "s_feature_compat" / Int32ul,
    "s_feature_incompat" / Int32ul,
    "s_feature_ro_compat" / Int32ul,
    "s_uuid" / Bytes(16),
    "s_volume_name" / Bytes(16),
    "s_last_mounted" / Bytes(64),
    "s_algorithm_usage_bitmap" / Int32ul,
    "s_prealloc_blocks" / Int8ul,
    "s_prealloc_dir_blocks" / Int8ul,
    "s_reserved_gdt_blocks" / Int16ul,
    "s_journal_uuid" / Bytes(16),
    "s_journal_inum" / Int32ul,
    "s_journal_dev" / Int32ul,
    "s_last_orphan" / Int32ul,
    "s_hash_seed" / Bytes(16),
    "s_def_hash_version" / Int8ul,
    "s_jnl_backup_type" / Int8ul,
    "s_desc_size" / Int16ul,
    "s_default_mount_opts" / Int32ul,
    "s_first_meta_bg" / Int32ul,
    "s_mkfs_time" / Int32ul,
    "s_jnl_blocks" / Array(17, Int32ul),
    "s_blocks_count_hi" / Int32ul,
    "s_r_blocks_count_hi" / Int32ul,
    "s_free_blocks_count_hi" / Int32ul,
    "s_min_extra_isize" / Int16ul,
    "s_want_extra_isize" / Int16ul,
    "s_flags" / Int32ul,
    "s_raid_stride" / Int16ul,
    "s_mmp_update_interval" / Int16ul,
    "s_mmp_block" / Int64ul,
    "s_raid_stripe_width" / Int32ul,
    "s_log_groups_per_flex" / Int8ul,
    "s_checksum_type" / Int8ul,
    "s_encryption_level" / Int8ul,
    "s_reserved_pad" / Int8ul,
    "s_kbytes_written" / Int64ul,
    "s_snapshot_inum" / Int32ul,
    "s_snapshot_id" / Int32ul,
    "s_snapshot_r_blocks_count" / Int64ul,
    "s_snapshot_list" / Int32ul,
    "s_error_count" / Int32ul,
    "s_first_error_time" / Int32ul,
    "s_first_error_ino" / Int32ul,
    "s_first_error_block" / Int64ul,
    "s_first_error_func" / Bytes(32),
    "s_first_error_line" / Int32ul,
    "s_last_error_time" / Int32ul,
    "s_last_error_ino" / Int32ul,
    "s_last_error_line" / Int32ul,
    "s_last_error_block" / Int64ul,
    "s_last_error_func" / Bytes(32),
    "s_mount_opts" / Bytes(64),
    "s_usr_quota_inum" / Int32ul,
    "s_grp_quota_inum" / Int32ul,
    "s_overhead_clusters" / Int32ul,
    "s_backup_bgs" / Array(2, Int32ul),
    "s_encrypt_algos" / Bytes(4),
    "s_encrypt_pw_salt" / Bytes(16),
    "s_lpf_ino" / Int32ul,
    "s_prj_quota_inum" / Int32ul,
    "s_checksum_seed" / Int32ul,
    "s_wtime_hi" / Int8ul,
    "s_mtime_hi" / Int8ul,
    "s_mkfs_time_hi" / Int8ul,
    "s_lastcheck_hi" / Int8ul,
    "s_first_error_time_hi" / Int8ul,
    "s_last_error_time_hi" / Int8ul,
    "s_first_error_errcode" / Int8ul,
    "s_last_error_errcode" / Int8ul,
    "s_encoding" / Int16ul,
    "s_encoding_flags" / Int16ul,
    "s_orphan_file_inum" / Int32ul,
    "s_reserved" / Bytes(94 * 4),
    "s_checksum" / Int32ul,
)
S_MAGIC = field(ext4_super_block, "s_magic")
EXT4_LABEL_MAX = field(ext4_super_block, "s_volume_name").size  # 16
S_CHECKSUM = field(ext4_super_block, "s_checksum")  # crc32c of every byte before it
SUPERBLOCK_CSUM_OFFSET = S_CHECKSUM.offset

ext4_group_desc = Struct(
    "bg_block_bitmap_lo" / Int32ul,
    "bg_inode_bitmap_lo" / Int32ul,
    "bg_inode_table_lo" / Int32ul,
    "bg_free_blocks_count_lo" / Int16ul,
    "bg_free_inodes_count_lo" / Int16ul,
    "bg_used_dirs_count_lo" / Int16ul,
    "bg_flags" / Int16ul,
    "bg_exclude_bitmap_lo" / Int32ul,
    "bg_block_bitmap_csum_lo" / Int16ul,
    "bg_inode_bitmap_csum_lo" / Int16ul,
    "bg_itable_unused_lo" / Int16ul,
    "bg_checksum" / Int16ul,
    "bg_block_bitmap_hi" / Int32ul,
    "bg_inode_bitmap_hi" / Int32ul,
    "bg_inode_table_hi" / Int32ul,
    "bg_free_blocks_count_hi" / Int16ul,
    "bg_free_inodes_count_hi" / Int16ul,
    "bg_used_dirs_count_hi" / Int16ul,
    "bg_itable_unused_hi" / Int16ul,
    "bg_exclude_bitmap_hi" / Int32ul,
    "bg_block_bitmap_csum_hi" / Int16ul,
    "bg_inode_bitmap_csum_hi" / Int16ul,
    "bg_reserved" / Int32ul,
)
GROUP_DESC = FastPacker(ext4_group_desc)
DESC_SIZE = GROUP_DESC.size  # the 64bit feature's descriptor: s_desc_size
DESCS_PER_BLOCK = BLOCK_SIZE // DESC_SIZE
BG_CHECKSUM = GROUP_DESC.field("bg_checksum")
GROUP_DESC_CSUM_OFFSET = BG_CHECKSUM.offset

assert ext4_super_block.sizeof() == SUPERBLOCK_SIZE
assert DESC_SIZE == 64
