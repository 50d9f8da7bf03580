"""The on-disk inode (``struct ext4_inode``), its flags, and the inode constants ext4gen fixes."""

from __future__ import annotations

from construct import Bytes, Int16ul, Int32ul, Struct

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
    "ext4_inode",
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
INODE = FastPacker(ext4_inode)
EXTRA_ISIZE = INODE.size - GOOD_OLD_INODE_SIZE  # i_extra_isize: every field above is present
INODES_PER_BLOCK = BLOCK_SIZE // INODE_SIZE
I_BLOCK_SIZE = INODE.field("i_block").size  # 60
I_CHECKSUM_LO = INODE.field("l_i_checksum_lo")
I_CHECKSUM_HI = INODE.field("i_checksum_hi")
INODE_CSUM_LO_OFFSET = I_CHECKSUM_LO.offset
INODE_CSUM_HI_OFFSET = I_CHECKSUM_HI.offset
INODE_XATTR_SPACE = INODE_SIZE - INODE.size  # 96 bytes after i_projid

assert EXTRA_ISIZE == 32 and I_BLOCK_SIZE == 60
