"""Every ext4 on-disk structure ext4gen writes, defined once with construct.

Field names follow the kernel's ``fs/ext4/ext4.h`` so that a reader can hold
this file next to the kernel source.  construct is the single source of truth:
the hot paths (inodes, directory entries, extents) use :class:`FastPacker`,
which derives a ``struct.Struct`` from the construct definition, so the two can
never disagree about layout (a unit test checks they produce identical bytes).
"""

from __future__ import annotations

import struct
from typing import Any

from construct import (
    Array,
    Bytes,
    Const,
    FormatField,
    Int8ul,
    Int16ul,
    Int32ul,
    Int64ul,
    Renamed,
    Struct,
)

BLOCK_SIZE = 4096
LOG_BLOCK_SIZE = 2  # s_log_block_size: 1024 << 2
BLOCKS_PER_GROUP = BLOCK_SIZE * 8
INODE_SIZE = 256
GOOD_OLD_INODE_SIZE = 128
EXTRA_ISIZE = 32  # sizeof(struct ext4_inode) - EXT2_GOOD_OLD_INODE_SIZE
INODES_PER_BLOCK = BLOCK_SIZE // INODE_SIZE
DESC_SIZE = 64
DESCS_PER_BLOCK = BLOCK_SIZE // DESC_SIZE
SUPERBLOCK_OFFSET = 1024
FIRST_INO = 11
ROOT_INO = 2
EXT4_LINK_MAX = 65000

EXT4_SUPER_MAGIC = 0xEF53
EXT4_EXT_MAGIC = 0xF30A

# s_feature_compat
COMPAT_EXT_ATTR = 0x0008
COMPAT_DIR_INDEX = 0x0020
COMPAT_SPARSE_SUPER2 = 0x0200
# s_feature_incompat
INCOMPAT_FILETYPE = 0x0002
INCOMPAT_EXTENTS = 0x0040
INCOMPAT_64BIT = 0x0080
INCOMPAT_FLEX_BG = 0x0200
INCOMPAT_LARGEDIR = 0x4000
INCOMPAT_INLINE_DATA = 0x8000
# s_feature_ro_compat
RO_COMPAT_SPARSE_SUPER = 0x0001
RO_COMPAT_LARGE_FILE = 0x0002
RO_COMPAT_HUGE_FILE = 0x0008
RO_COMPAT_DIR_NLINK = 0x0020
RO_COMPAT_EXTRA_ISIZE = 0x0040
RO_COMPAT_METADATA_CSUM = 0x0400
RO_COMPAT_READONLY = 0x1000
RO_COMPAT_SHARED_BLOCKS = 0x4000

FEATURE_NAMES = {
    "compat": {COMPAT_EXT_ATTR: "ext_attr", COMPAT_DIR_INDEX: "dir_index",
               COMPAT_SPARSE_SUPER2: "sparse_super2"},
    "incompat": {INCOMPAT_FILETYPE: "filetype", INCOMPAT_EXTENTS: "extent",
                 INCOMPAT_64BIT: "64bit", INCOMPAT_FLEX_BG: "flex_bg",
                 INCOMPAT_LARGEDIR: "large_dir", INCOMPAT_INLINE_DATA: "inline_data"},
    "ro_compat": {RO_COMPAT_SPARSE_SUPER: "sparse_super", RO_COMPAT_LARGE_FILE: "large_file",
                  RO_COMPAT_HUGE_FILE: "huge_file", RO_COMPAT_DIR_NLINK: "dir_nlink",
                  RO_COMPAT_EXTRA_ISIZE: "extra_isize",
                  RO_COMPAT_METADATA_CSUM: "metadata_csum", RO_COMPAT_READONLY: "read-only",
                  RO_COMPAT_SHARED_BLOCKS: "shared_blocks"},
}

# s_state, s_errors, s_flags, s_default_mount_opts
EXT4_VALID_FS = 0x0001
EXT4_ERRORS_CONTINUE = 1
EXT2_FLAGS_UNSIGNED_HASH = 0x0002
EXT4_DEFM_XATTR_USER = 0x0004
EXT4_DEFM_ACL = 0x0008
EXT4_CRC32C_CHKSUM = 1
DX_HASH_HALF_MD4 = 1

# bg_flags
EXT4_BG_INODE_UNINIT = 0x0001
EXT4_BG_BLOCK_UNINIT = 0x0002
EXT4_BG_INODE_ZEROED = 0x0004

# i_flags
EXT4_INDEX_FL = 0x00001000
EXT4_HUGE_FILE_FL = 0x00040000
EXT4_EXTENTS_FL = 0x00080000
EXT4_INLINE_DATA_FL = 0x10000000

# i_mode file types and directory entry file types
S_IFIFO, S_IFCHR, S_IFDIR, S_IFBLK = 0o010000, 0o020000, 0o040000, 0o060000
S_IFREG, S_IFLNK, S_IFSOCK = 0o100000, 0o120000, 0o140000
FT_UNKNOWN, FT_REG_FILE, FT_DIR, FT_CHRDEV, FT_BLKDEV, FT_FIFO, FT_SOCK, FT_SYMLINK = range(8)
EXT4_FT_DIR_CSUM = 0xDE

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
SUPERBLOCK_CSUM_OFFSET = 0x3FC

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
GROUP_DESC_CSUM_OFFSET = 0x1E

# struct ext4_inode up to i_projid (128 + EXTRA_ISIZE bytes); osd1/osd2 are the
# Linux variants.  The remaining INODE_SIZE - 160 bytes hold in-inode xattrs.
ext4_inode = Struct(
    "i_mode" / Int16ul,
    "i_uid" / Int16ul,
    "i_size_lo" / Int32ul,
    "i_atime" / Int32ul,
    "i_ctime" / Int32ul,
    "i_mtime" / Int32ul,
    "i_dtime" / Int32ul,
    "i_gid" / Int16ul,
    "i_links_count" / Int16ul,
    "i_blocks_lo" / Int32ul,
    "i_flags" / Int32ul,
    "l_i_version" / Int32ul,
    "i_block" / Bytes(60),
    "i_generation" / Int32ul,
    "i_file_acl_lo" / Int32ul,
    "i_size_high" / Int32ul,
    "i_obso_faddr" / Int32ul,
    "l_i_blocks_high" / Int16ul,
    "l_i_file_acl_high" / Int16ul,
    "l_i_uid_high" / Int16ul,
    "l_i_gid_high" / Int16ul,
    "l_i_checksum_lo" / Int16ul,
    "l_i_reserved" / Int16ul,
    "i_extra_isize" / Int16ul,
    "i_checksum_hi" / Int16ul,
    "i_ctime_extra" / Int32ul,
    "i_mtime_extra" / Int32ul,
    "i_atime_extra" / Int32ul,
    "i_crtime" / Int32ul,
    "i_crtime_extra" / Int32ul,
    "i_version_hi" / Int32ul,
    "i_projid" / Int32ul,
)
INODE_CSUM_LO_OFFSET = 0x7C
INODE_CSUM_HI_OFFSET = 0x82

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
ext4_extent_tail = Struct("et_checksum" / Int32ul)
EXTENT_ENTRY_SIZE = 12
EXT_INIT_MAX_LEN = 32768
EXTENTS_IN_INODE = 4
EXTENTS_PER_BLOCK = (BLOCK_SIZE - 12) // EXTENT_ENTRY_SIZE  # 340

# struct ext4_dir_entry_2 header; the name follows, padded to 4 bytes.
ext4_dir_entry_2 = Struct(
    "inode" / Int32ul,
    "rec_len" / Int16ul,
    "name_len" / Int8ul,
    "file_type" / Int8ul,
)
# struct ext4_dir_entry_tail: a fake 12-byte entry ending each leaf block.
ext4_dir_entry_tail = Struct(
    "det_reserved_zero1" / Int32ul,
    "det_rec_len" / Int16ul,
    "det_reserved_zero2" / Int8ul,
    "det_reserved_ft" / Int8ul,
    "det_checksum" / Int32ul,
)
DIR_TAIL_SIZE = 12


# Extended attributes: struct ext4_xattr_header (external block) and
# struct ext4_xattr_entry (name follows, padded to 4 bytes).
EXT4_XATTR_MAGIC = 0xEA020000
ext4_xattr_header = Struct(
    "h_magic" / Int32ul,
    "h_refcount" / Int32ul,
    "h_blocks" / Int32ul,
    "h_hash" / Int32ul,
    "h_checksum" / Int32ul,
    "h_reserved" / Bytes(12),
)
ext4_xattr_ibody_header = Struct("h_magic" / Int32ul)
ext4_xattr_entry = Struct(
    "e_name_len" / Int8ul,
    "e_name_index" / Int8ul,
    "e_value_offs" / Int16ul,
    "e_value_inum" / Int32ul,
    "e_value_size" / Int32ul,
    "e_hash" / Int32ul,
)
XATTR_HEADER_SIZE = 32
XATTR_BLOCK_CSUM_OFFSET = 16
XATTR_REFCOUNT_MAX = 1024  # the kernel stops sharing a block beyond this
INODE_XATTR_SPACE = INODE_SIZE - GOOD_OLD_INODE_SIZE - EXTRA_ISIZE  # 96 bytes after i_projid

# POSIX ACLs: the kernel's VFS xattr form (version 2) and ext4's compact on-disk
# form (version 1, 4-byte entries for the owner/group/mask/other tags).
POSIX_ACL_XATTR_VERSION = 2
EXT4_ACL_VERSION = 1
ACL_USER_OBJ, ACL_USER, ACL_GROUP_OBJ, ACL_GROUP, ACL_MASK, ACL_OTHER = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20
ACL_UNDEFINED_ID = 0xFFFFFFFF
posix_acl_xattr_entry = Struct("e_tag" / Int16ul, "e_perm" / Int16ul, "e_id" / Int32ul)
ext4_acl_entry = Struct("e_tag" / Int16ul, "e_perm" / Int16ul, "e_id" / Int32ul)
ext4_acl_entry_short = Struct("e_tag" / Int16ul, "e_perm" / Int16ul)

class FastPacker:
    """A ``struct.Struct`` derived from a construct ``Struct`` of fixed-size fields.

    construct's ``build`` costs ~40 µs per inode; planning a million inodes
    needs the ~0.5 µs of ``struct.pack``.  Deriving the format keeps the
    construct definition authoritative.
    """

    def __init__(self, definition: Struct) -> None:
        fmt = ["<"]
        self.names: list[str] = []
        defaults: list[Any] = []
        for sub in definition.subcons:
            assert isinstance(sub, Renamed), sub
            inner = sub.subcon
            if isinstance(inner, Const):
                raise TypeError(f"{sub.name}: Const fields are not fast-packable")
            if isinstance(inner, FormatField):
                fmt.append(inner.fmtstr.lstrip("<>="))
                defaults.append(0)
            elif isinstance(inner, Bytes) and isinstance(inner.length, int):
                fmt.append(f"{inner.length}s")
                defaults.append(b"")
            else:
                raise TypeError(f"{sub.name}: {inner!r} is not fast-packable")
            self.names.append(sub.name)
        self.struct = struct.Struct("".join(fmt))
        self.size = self.struct.size
        self._defaults = dict(zip(self.names, defaults, strict=True))
        self.pack_into = self.struct.pack_into
        self.pack_tuple = self.struct.pack
        self.unpack_from = self.struct.unpack_from

    def pack(self, **fields: Any) -> bytes:
        unknown = fields.keys() - self._defaults.keys()
        if unknown:
            raise KeyError(f"unknown fields {sorted(unknown)}")
        return self.struct.pack(*(fields.get(n, d) for n, d in self._defaults.items()))

    def unpack(self, data: bytes, offset: int = 0) -> dict[str, Any]:
        return dict(zip(self.names, self.struct.unpack_from(data, offset), strict=True))


INODE = FastPacker(ext4_inode)
GROUP_DESC = FastPacker(ext4_group_desc)
EXTENT_HEADER = FastPacker(ext4_extent_header)
EXTENT = FastPacker(ext4_extent)
EXTENT_IDX = FastPacker(ext4_extent_idx)
DIR_ENTRY = FastPacker(ext4_dir_entry_2)
DIR_TAIL = FastPacker(ext4_dir_entry_tail)
XATTR_HEADER = FastPacker(ext4_xattr_header)
XATTR_ENTRY = FastPacker(ext4_xattr_entry)
ACL_ENTRY = FastPacker(ext4_acl_entry)
ACL_ENTRY_SHORT = FastPacker(ext4_acl_entry_short)

assert ext4_super_block.sizeof() == 1024
assert GROUP_DESC.size == DESC_SIZE
assert INODE.size == GOOD_OLD_INODE_SIZE + EXTRA_ISIZE
assert EXTENT_HEADER.size == EXTENT.size == EXTENT_IDX.size == EXTENT_ENTRY_SIZE
assert DIR_TAIL.size == DIR_TAIL_SIZE


def feature_names(kind: str, mask: int) -> list[str]:
    names = [n for bit, n in FEATURE_NAMES[kind].items() if mask & bit]
    unknown = mask & ~sum(FEATURE_NAMES[kind])
    if unknown:
        names.append(f"{kind}:{unknown:#x}")
    return names
