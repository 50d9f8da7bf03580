"""Superblock feature flags: every known bit, with the name dumpe2fs prints for it.

Values follow the kernel's ``fs/ext4/ext4.h`` (``EXT4_FEATURE_*``), plus the
few that only e2fsprogs defines (lazy_bg, snapshot_bitmap, the snapshot and
replica bits); names are libe2p's, so ``ext4gen inspect`` and ``dumpe2fs -h``
print the same words, and a bit libe2p does not name (btree_dir and snapshot
among them) prints as libe2p prints it: ``FEATURE_R2``, ``FEATURE_C13``...
"""

from __future__ import annotations

__all__ = [
    "COMPAT_DIR_INDEX", "COMPAT_DIR_PREALLOC", "COMPAT_EXCLUDE_BITMAP", "COMPAT_EXT_ATTR",
    "COMPAT_FAST_COMMIT", "COMPAT_HAS_JOURNAL", "COMPAT_IMAGIC_INODES", "COMPAT_LAZY_BG",
    "COMPAT_ORPHAN_FILE", "COMPAT_RESIZE_INODE", "COMPAT_SPARSE_SUPER2", "COMPAT_STABLE_INODES",
    "FEATURE_NAMES", "INCOMPAT_64BIT", "INCOMPAT_CASEFOLD", "INCOMPAT_COMPRESSION",
    "INCOMPAT_CSUM_SEED", "INCOMPAT_DIRDATA", "INCOMPAT_EA_INODE", "INCOMPAT_ENCRYPT",
    "INCOMPAT_EXTENTS", "INCOMPAT_FILETYPE", "INCOMPAT_FLEX_BG", "INCOMPAT_INLINE_DATA",
    "INCOMPAT_JOURNAL_DEV", "INCOMPAT_LARGEDIR", "INCOMPAT_META_BG", "INCOMPAT_MMP",
    "INCOMPAT_RECOVER", "RO_COMPAT_BIGALLOC", "RO_COMPAT_BTREE_DIR", "RO_COMPAT_DIR_NLINK",
    "RO_COMPAT_EXTRA_ISIZE", "RO_COMPAT_GDT_CSUM", "RO_COMPAT_HAS_SNAPSHOT",
    "RO_COMPAT_HUGE_FILE", "RO_COMPAT_LARGE_FILE", "RO_COMPAT_METADATA_CSUM",
    "RO_COMPAT_ORPHAN_PRESENT", "RO_COMPAT_PROJECT", "RO_COMPAT_QUOTA", "RO_COMPAT_READONLY",
    "RO_COMPAT_REPLICA", "RO_COMPAT_SHARED_BLOCKS", "RO_COMPAT_SPARSE_SUPER", "RO_COMPAT_VERITY",
    "feature_names",
]

# s_feature_compat
COMPAT_DIR_PREALLOC = 0x0001
COMPAT_IMAGIC_INODES = 0x0002
COMPAT_HAS_JOURNAL = 0x0004
COMPAT_EXT_ATTR = 0x0008
COMPAT_RESIZE_INODE = 0x0010
COMPAT_DIR_INDEX = 0x0020
COMPAT_LAZY_BG = 0x0040  # e2fsprogs only
COMPAT_EXCLUDE_BITMAP = 0x0100  # e2fsprogs only
COMPAT_SPARSE_SUPER2 = 0x0200
COMPAT_FAST_COMMIT = 0x0400
COMPAT_STABLE_INODES = 0x0800
COMPAT_ORPHAN_FILE = 0x1000

# s_feature_incompat
INCOMPAT_COMPRESSION = 0x0001
INCOMPAT_FILETYPE = 0x0002
INCOMPAT_RECOVER = 0x0004
INCOMPAT_JOURNAL_DEV = 0x0008
INCOMPAT_META_BG = 0x0010
INCOMPAT_EXTENTS = 0x0040
INCOMPAT_64BIT = 0x0080
INCOMPAT_MMP = 0x0100
INCOMPAT_FLEX_BG = 0x0200
INCOMPAT_EA_INODE = 0x0400
INCOMPAT_DIRDATA = 0x1000
INCOMPAT_CSUM_SEED = 0x2000
INCOMPAT_LARGEDIR = 0x4000
INCOMPAT_INLINE_DATA = 0x8000
INCOMPAT_ENCRYPT = 0x10000
INCOMPAT_CASEFOLD = 0x20000

# s_feature_ro_compat
RO_COMPAT_SPARSE_SUPER = 0x0001
RO_COMPAT_LARGE_FILE = 0x0002
RO_COMPAT_BTREE_DIR = 0x0004
RO_COMPAT_HUGE_FILE = 0x0008
RO_COMPAT_GDT_CSUM = 0x0010
RO_COMPAT_DIR_NLINK = 0x0020
RO_COMPAT_EXTRA_ISIZE = 0x0040
RO_COMPAT_HAS_SNAPSHOT = 0x0080  # e2fsprogs only
RO_COMPAT_QUOTA = 0x0100
RO_COMPAT_BIGALLOC = 0x0200
RO_COMPAT_METADATA_CSUM = 0x0400
RO_COMPAT_REPLICA = 0x0800  # e2fsprogs only
RO_COMPAT_READONLY = 0x1000
RO_COMPAT_PROJECT = 0x2000
RO_COMPAT_SHARED_BLOCKS = 0x4000
RO_COMPAT_VERITY = 0x8000
RO_COMPAT_ORPHAN_PRESENT = 0x10000

#: kind → {bit: dumpe2fs name}; the kinds in the order dumpe2fs lists them.
FEATURE_NAMES: dict[str, dict[int, str]] = {
    "compat": {
        COMPAT_DIR_PREALLOC: "dir_prealloc", COMPAT_IMAGIC_INODES: "imagic_inodes",
        COMPAT_HAS_JOURNAL: "has_journal", COMPAT_EXT_ATTR: "ext_attr",
        COMPAT_RESIZE_INODE: "resize_inode", COMPAT_DIR_INDEX: "dir_index",
        COMPAT_LAZY_BG: "lazy_bg", COMPAT_EXCLUDE_BITMAP: "snapshot_bitmap",
        COMPAT_SPARSE_SUPER2: "sparse_super2", COMPAT_FAST_COMMIT: "fast_commit",
        COMPAT_STABLE_INODES: "stable_inodes", COMPAT_ORPHAN_FILE: "orphan_file",
    },
    "incompat": {
        INCOMPAT_COMPRESSION: "compression", INCOMPAT_FILETYPE: "filetype",
        INCOMPAT_RECOVER: "needs_recovery", INCOMPAT_JOURNAL_DEV: "journal_dev",
        INCOMPAT_META_BG: "meta_bg", INCOMPAT_EXTENTS: "extent", INCOMPAT_64BIT: "64bit",
        INCOMPAT_MMP: "mmp", INCOMPAT_FLEX_BG: "flex_bg", INCOMPAT_EA_INODE: "ea_inode",
        INCOMPAT_DIRDATA: "dirdata", INCOMPAT_CSUM_SEED: "metadata_csum_seed",
        INCOMPAT_LARGEDIR: "large_dir", INCOMPAT_INLINE_DATA: "inline_data",
        INCOMPAT_ENCRYPT: "encrypt", INCOMPAT_CASEFOLD: "casefold",
    },
    "ro_compat": {
        RO_COMPAT_SPARSE_SUPER: "sparse_super", RO_COMPAT_LARGE_FILE: "large_file",
        RO_COMPAT_HUGE_FILE: "huge_file",
        RO_COMPAT_GDT_CSUM: "uninit_bg", RO_COMPAT_DIR_NLINK: "dir_nlink",
        RO_COMPAT_EXTRA_ISIZE: "extra_isize",
        RO_COMPAT_QUOTA: "quota", RO_COMPAT_BIGALLOC: "bigalloc",
        RO_COMPAT_METADATA_CSUM: "metadata_csum", RO_COMPAT_REPLICA: "replica",
        RO_COMPAT_READONLY: "read-only", RO_COMPAT_PROJECT: "project",
        RO_COMPAT_SHARED_BLOCKS: "shared_blocks", RO_COMPAT_VERITY: "verity",
        RO_COMPAT_ORPHAN_PRESENT: "orphan_present",
    },
}
_UNKNOWN_PREFIX = {"compat": "FEATURE_C", "incompat": "FEATURE_I", "ro_compat": "FEATURE_R"}


def feature_names(kind: str, mask: int) -> list[str]:
    """The names of the bits set in ``mask``, lowest bit first, as dumpe2fs lists them."""
    names = FEATURE_NAMES[kind]
    out = []
    for bit in range(32):
        if mask >> bit & 1:
            out.append(names.get(1 << bit) or f"{_UNKNOWN_PREFIX[kind]}{bit}")
    return out
