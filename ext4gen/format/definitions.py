"""Every on-disk structure, declared once with construct: what the bytes are.

Field names and order follow the kernel (``fs/ext4/ext4.h``, ``fs/ext4/namei.c``,
``fs/ext4/xattr.h``, ``fs/ext4/acl.h``, ``fs/ext4/ext4_extents.h``).  Everything
ext4gen packs is derived from these definitions: ``_layouts.py`` holds each
structure's fields (offset, size, ``struct`` code, constant) as
:func:`derive_layouts` computes them, and the packers of :mod:`.packing` are
built from that.  So serving, which packs these structures, never imports
construct (about 25 ms of every start of nbdkit's interpreter), while this module
stays the one statement of each layout: the tests fail when ``_layouts.py`` and
these definitions disagree, and ``python -m ext4gen.format.definitions`` rewrites it.

This module is for the tests, ``ext4gen inspect`` (which parses with these
definitions) and that check; the family modules (:mod:`.superblock`,
:mod:`.inode` …) hold the constants and the derived packers.
"""

from __future__ import annotations

import sys
from functools import lru_cache
from pathlib import Path
from typing import Any

from construct import Array, Bytes, Const, FormatField, Int8ul, Int16ul, Int32ul, Int64ul, Renamed, Struct

from .inode import EXT4_N_BLOCKS
from .packing import FieldLayout, Layout
from .superblock import EXT4_SUPER_MAGIC

# -- superblock.py: the superblock and the group descriptor ---------------------------------

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

# -- inode.py -----------------------------------------------------------------------------

# struct ext4_inode up to i_projid, with the Linux variants of osd1/osd2: the
# 128-byte "good old" inode plus i_extra_isize bytes.  The rest of an
# INODE_SIZE slot holds in-inode xattrs (see xattr.py).
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
    "i_block" / Bytes(EXT4_N_BLOCKS * 4),
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

# -- extents.py ---------------------------------------------------------------------------

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

# -- directory.py: entries, the checksum tail, the htree index (namei.c's own structures) ----

# struct ext4_dir_entry_2 header; the name follows, padded to EXT4_DIR_PAD.
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
# namei.c's fake_dirent (the header that hides an index block from linear readers) is
# ext4_dir_entry_2's header under another name
fake_dirent = ext4_dir_entry_2
dx_root_info = Struct(
    "reserved_zero" / Int32ul,
    "hash_version" / Int8ul,
    "info_length" / Int8ul,
    "indirect_levels" / Int8ul,
    "unused_flags" / Int8ul,
)
# block 0 of an indexed directory: "." and ".." (whose rec_len spans the block),
# then the info, then the dx_entry array
dx_root = Struct(
    "dot" / fake_dirent,
    "dot_name" / Bytes(4),
    "dotdot" / fake_dirent,
    "dotdot_name" / Bytes(4),
    "info" / dx_root_info,
)
dx_node = Struct("fake" / fake_dirent)  # an interior index block: one empty entry, then entries
# the first dx_entry of every index block: its hash slot holds the count and limit
dx_countlimit = Struct(
    "limit" / Int16ul,
    "count" / Int16ul,
)
dx_entry = Struct(
    "hash" / Int32ul,
    "block" / Int32ul,
)
dx_tail = Struct(  # ends an index block's entry area under metadata_csum
    "dt_reserved" / Int32ul,
    "dt_checksum" / Int32ul,
)

# -- xattr.py: xattr blocks and entries, and POSIX ACLs in their VFS and ext4 forms ---------

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
posix_acl_xattr_header = Struct("a_version" / Int32ul)
posix_acl_xattr_entry = Struct("e_tag" / Int16ul, "e_perm" / Int16ul, "e_id" / Int32ul)
ext4_acl_header = Struct("a_version" / Int32ul)
ext4_acl_entry = Struct("e_tag" / Int16ul, "e_perm" / Int16ul, "e_id" / Int32ul)
ext4_acl_entry_short = Struct("e_tag" / Int16ul, "e_perm" / Int16ul)  # tags without an id


# Every structure by its name (fake_dirent is ext4_dir_entry_2 under namei.c's name).
STRUCTURES: dict[str, Struct] = {
    name: value for name, value in globals().items()
    if isinstance(value, Struct) and name != "fake_dirent"
}


def _leaf(sub: Renamed) -> Any:
    inner = sub.subcon
    return inner.subcon if isinstance(inner, Const) else inner


def _code(sub: Renamed) -> str | None:
    """The ``struct`` code of one field; None for a nested structure (not packed flat).

    An array of numbers is packed from its bytes: ext4gen sets none (s_jnl_blocks and
    s_backup_bgs stay zero), and its offset and size are all the rest needs.
    """
    inner = _leaf(sub)
    if isinstance(inner, FormatField):
        return inner.fmtstr.lstrip("<>=")
    if isinstance(inner, Bytes) and isinstance(inner.length, int):
        return f"{inner.length}s"
    if isinstance(inner, Array) and isinstance(inner.subcon, FormatField):
        return f"{sub.sizeof()}s"
    return None


def layout_of(definition: Struct) -> Layout:
    """Each field of ``definition``: (name, offset, size, struct code, constant or None)."""
    out: list[FieldLayout] = []
    pos = 0
    for sub in definition.subcons:
        assert isinstance(sub, Renamed), sub
        size = sub.sizeof()
        const = sub.subcon.value if isinstance(sub.subcon, Const) else None
        out.append((sub.name, pos, size, _code(sub), const))
        pos += size
    return tuple(out)


def derive_layouts() -> dict[str, Layout]:
    return {name: layout_of(definition) for name, definition in STRUCTURES.items()}


LAYOUTS_FILE = Path(__file__).with_name("_layouts.py")


def layouts_text() -> str:
    """The text of ``_layouts.py`` for these definitions."""
    lines = ['"""Generated by ``python -m ext4gen.format.definitions`` from the construct definitions',
             "in definitions.py: do not edit (the tests fail when the two disagree).",
             "",
             "Each structure's fields: (name, offset, size, struct code, constant or None).",
             '"""',
             "",
             "LAYOUTS = {"]
    for name, fields in derive_layouts().items():
        lines.append(f"    {name!r}: (")
        lines += [f"        {f!r}," for f in fields]
        lines.append("    ),")
    lines.append("}")
    return "\n".join(lines) + "\n"


# -- construct's own build and parse helpers (tests, ``inspect``) --------------------------

def _zero(con: Any) -> Any:
    if isinstance(con, FormatField):
        return 0
    if isinstance(con, Bytes):
        return bytes(con.length)
    if isinstance(con, Array):
        return [_zero(con.subcon)] * con.count
    if isinstance(con, Struct):
        return zero_fields(con)
    raise TypeError(f"no zero value for {con!r}")


def field_offsets(definition: Struct) -> dict[str, int]:
    """Byte offset of every top-level field (fixed-size structures only)."""
    return {name: offset for name, offset, *_ in layout_of(definition)}


def zero_fields(definition: Struct) -> dict[str, Any]:
    """A value for every non-constant field: 0, zero bytes, arrays and sub-structures of zeros."""
    return {sub.name: _zero(sub.subcon) for sub in definition.subcons if not isinstance(sub.subcon, Const)}


def build(definition: Struct, **fields: Any) -> bytes:
    """construct's build with every field not named here zero (constants keep their value).

    A misspelt name raises instead of silently leaving the real field zero.
    """
    values = dict(_zeros(definition))
    unknown = fields.keys() - values.keys()
    if unknown:
        raise KeyError(f"unknown fields {sorted(unknown)}")
    values.update(fields)
    return definition.build(values)


@lru_cache(maxsize=32)
def _zeros(definition: Struct) -> dict[str, Any]:
    return zero_fields(definition)


if __name__ == "__main__":  # python -m ext4gen.format.definitions [--check]
    current = LAYOUTS_FILE.read_text() if LAYOUTS_FILE.exists() else ""
    if "--check" in sys.argv[1:]:
        sys.exit(0 if current == layouts_text() else f"{LAYOUTS_FILE} is out of date")
    if current != layouts_text():
        LAYOUTS_FILE.write_text(layouts_text())
        print(f"wrote {LAYOUTS_FILE}")
