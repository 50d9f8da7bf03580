"""The on-disk inode (``struct ext4_inode``), its flags, and the inode constants ext4gen fixes."""

from __future__ import annotations

from .packing import FastPacker
from .superblock import BLOCK_SIZE

__all__ = [
    "EXT4_EXTENTS_FL",
    "EXT4_INDEX_FL",
    "EXT4_INLINE_DATA_FL",
    "EXT4_LINK_MAX",
    "EXT4_N_BLOCKS",
    "EXTRA_ISIZE",
    "FIRST_INO",
    "GOOD_OLD_INODE_SIZE",
    "INODE",
    "INODES_PER_BLOCK",
    "INODE_CSUM_HI_OFFSET",
    "INODE_CSUM_LO_OFFSET",
    "INODE_SIZE",
    "INODE_XATTR_SPACE",
    "I_BLOCKS_UNIT",
    "I_BLOCK_SIZE",
    "I_CHECKSUM_HI",
    "I_CHECKSUM_LO",
    "ROOT_INO",
    "S_IFBLK",
    "S_IFCHR",
    "S_IFDIR",
    "S_IFIFO",
    "S_IFLNK",
    "S_IFREG",
    "S_IFSOCK",
]

INODE_SIZE = 256  # s_inode_size: room for the extra fields and 96 bytes of in-inode xattrs
GOOD_OLD_INODE_SIZE = 128
FIRST_INO = 11  # s_first_ino: inodes below are reserved (lost+found gets 11)
ROOT_INO = 2
EXT4_LINK_MAX = 65000
EXT4_N_BLOCKS = 15  # i_block holds 15 32-bit words
I_BLOCKS_UNIT = 512  # i_blocks counts 512-byte sectors (no EXT4_HUGE_FILE_FL on any inode)

# i_flags
EXT4_INDEX_FL = 0x00001000
EXT4_EXTENTS_FL = 0x00080000
EXT4_INLINE_DATA_FL = 0x10000000

# i_mode file types
S_IFIFO, S_IFCHR, S_IFDIR, S_IFBLK = 0o010000, 0o020000, 0o040000, 0o060000
S_IFREG, S_IFLNK, S_IFSOCK = 0o100000, 0o120000, 0o140000

# struct ext4_inode up to i_projid (see definitions.py): the 128-byte "good old" inode
# plus i_extra_isize bytes; the rest of an INODE_SIZE slot holds in-inode xattrs.
INODE = FastPacker("ext4_inode")
EXTRA_ISIZE = INODE.size - GOOD_OLD_INODE_SIZE  # i_extra_isize: every field above is present
INODES_PER_BLOCK = BLOCK_SIZE // INODE_SIZE
I_BLOCK_SIZE = INODE.field("i_block").size  # 60
I_CHECKSUM_LO = INODE.field("l_i_checksum_lo")
I_CHECKSUM_HI = INODE.field("i_checksum_hi")
INODE_CSUM_LO_OFFSET = I_CHECKSUM_LO.offset
INODE_CSUM_HI_OFFSET = I_CHECKSUM_HI.offset
INODE_XATTR_SPACE = INODE_SIZE - INODE.size  # 96 bytes after i_projid

assert EXTRA_ISIZE == 32 and I_BLOCK_SIZE == 60
