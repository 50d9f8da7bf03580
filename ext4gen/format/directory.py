"""Directory blocks: entries, the checksum tail, and the hash-tree (htree) index.

``ext4_dir_entry_2`` and ``ext4_dir_entry_tail`` are in ``fs/ext4/ext4.h``;
the index structures (``fake_dirent``, ``dx_root``, ``dx_node``,
``dx_countlimit``, ``dx_entry``, ``dx_tail``) are private to
``fs/ext4/namei.c``; all are defined in :mod:`.definitions` with the same names,
and this module holds their constants and the packers derived from them.
"""

from __future__ import annotations

from .packing import FastPacker, field, field_offset, structure_size
from .superblock import BLOCK_SIZE

__all__ = [
    "DET_CHECKSUM",
    "DIR_ENTRY",
    "DIR_TAIL",
    "DIR_TAIL_SIZE",
    "DX_COUNTLIMIT",
    "DX_ENTRY",
    "DX_HASH_HALF_MD4",
    "DX_NODE_ENTRIES_OFFSET",
    "DX_NODE_LIMIT",
    "DX_ROOT_ENTRIES_OFFSET",
    "DX_ROOT_INFO",
    "DX_ROOT_INFO_OFFSET",
    "DX_ROOT_LIMIT",
    "DX_TAIL",
    "DX_TAIL_SIZE",
    "EXT4_DIR_PAD",
    "EXT4_FT_DIR_CSUM",
    "EXT4_HTREE_LEVEL",
    "EXT4_HTREE_LEVEL_COMPAT",
    "EXT4_INLINE_DOTDOT_SIZE",
    "EXT4_NAME_LEN",
    "FT_BLKDEV",
    "FT_CHRDEV",
    "FT_DIR",
    "FT_FIFO",
    "FT_REG_FILE",
    "FT_SOCK",
    "FT_SYMLINK",
    "dir_rec_len",
]

# file_type of a directory entry (EXT4_FT_*); 0 is "unknown", which ext4gen never writes
FT_REG_FILE, FT_DIR, FT_CHRDEV, FT_BLKDEV, FT_FIFO, FT_SOCK, FT_SYMLINK = range(1, 8)
EXT4_FT_DIR_CSUM = 0xDE  # the checksum tail's fake file type
EXT4_NAME_LEN = 255
EXT4_DIR_PAD = 4

# dx_root_info.hash_version (the superblock's s_def_hash_version)
DX_HASH_HALF_MD4 = 1
# levels of index blocks, the root included, without and with large_dir
EXT4_HTREE_LEVEL_COMPAT = 2
EXT4_HTREE_LEVEL = 3


_DIRENT_HEADER = structure_size("ext4_dir_entry_2")


def dir_rec_len(name_len: int) -> int:
    """EXT4_DIR_REC_LEN: an entry's header and name, rounded up to EXT4_DIR_PAD."""
    return (_DIRENT_HEADER + name_len + EXT4_DIR_PAD - 1) & ~(EXT4_DIR_PAD - 1)


# -- htree -------------------------------------------------------------------

# inline_data directories start with the parent's inode number instead of "." and ".."
EXT4_INLINE_DOTDOT_SIZE = 4

DIR_ENTRY = FastPacker("ext4_dir_entry_2")
DIR_TAIL = FastPacker("ext4_dir_entry_tail")
DIR_TAIL_SIZE = DIR_TAIL.size
DET_CHECKSUM = DIR_TAIL.field("det_checksum")
DX_ROOT_INFO = FastPacker("dx_root_info")
DX_COUNTLIMIT = FastPacker("dx_countlimit")
DX_ENTRY = FastPacker("dx_entry")
DX_TAIL = FastPacker("dx_tail")
DX_TAIL_SIZE = DX_TAIL.size
DX_ROOT_INFO_OFFSET = field_offset("dx_root", "info")
DX_ROOT_ENTRIES_OFFSET = structure_size("dx_root")  # 32
DX_NODE_ENTRIES_OFFSET = structure_size("dx_node")  # 8
DX_ROOT_LIMIT = (BLOCK_SIZE - DX_ROOT_ENTRIES_OFFSET - DX_TAIL_SIZE) // DX_ENTRY.size  # 507
DX_NODE_LIMIT = (BLOCK_SIZE - DX_NODE_ENTRIES_OFFSET - DX_TAIL_SIZE) // DX_ENTRY.size  # 510

assert DIR_ENTRY.size == structure_size("dx_node") == 8 and DIR_TAIL_SIZE == 12
assert DX_COUNTLIMIT.size + field("dx_entry", "block").size == DX_ENTRY.size
assert (DX_ROOT_LIMIT, DX_NODE_LIMIT) == (507, 510)
