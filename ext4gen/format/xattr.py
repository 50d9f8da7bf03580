"""Extended attributes and POSIX ACLs on disk (``fs/ext4/xattr.h``, ``fs/ext4/acl.h``).

An inode's spare bytes after i_projid start with ``ext4_xattr_ibody_header``;
an external xattr block starts with ``ext4_xattr_header``.  Both continue with
``ext4_xattr_entry`` records (name following, padded to 4 bytes) ended by four
zero bytes, and the values packed from the far end.  ACLs reach the filesystem
in the kernel's VFS form (``posix_acl_xattr_*``, version 2) and are stored in
ext4's compact form (``ext4_acl_*``, version 1).
"""

from __future__ import annotations

from .packing import FastPacker

__all__ = [
    "ACL_ENTRY", "ACL_ENTRY_SHORT", "ACL_EXECUTE", "ACL_GROUP", "ACL_GROUP_OBJ", "ACL_HEADER",
    "ACL_MASK", "ACL_OTHER", "ACL_READ", "ACL_UNDEFINED_ID", "ACL_USER", "ACL_USER_OBJ", "ACL_WRITE",
    "EXT4_ACL_VERSION", "EXT4_XATTR_INDEX_POSIX_ACL_ACCESS", "EXT4_XATTR_INDEX_POSIX_ACL_DEFAULT",
    "EXT4_XATTR_INDEX_SECURITY", "EXT4_XATTR_INDEX_SYSTEM", "EXT4_XATTR_INDEX_TRUSTED",
    "EXT4_XATTR_INDEX_USER", "EXT4_XATTR_MAGIC", "EXT4_XATTR_PAD", "H_CHECKSUM",
    "POSIX_ACL_XATTR_VERSION", "VFS_ACL_ENTRY", "VFS_ACL_HEADER", "XATTR_BLOCK_CSUM_OFFSET",
    "XATTR_END_SIZE", "XATTR_ENTRY", "XATTR_HEADER", "XATTR_HEADER_SIZE", "XATTR_IBODY_HEADER",
    "XATTR_REFCOUNT_MAX",
]

EXT4_XATTR_MAGIC = 0xEA020000
XATTR_REFCOUNT_MAX = 1024  # the kernel stops sharing a block beyond this
EXT4_XATTR_PAD = 4
XATTR_END_SIZE = 4  # the zero word after the last entry

# e_name_index: the namespace prefix the name had ("user.", ...), which is not stored
EXT4_XATTR_INDEX_USER = 1
EXT4_XATTR_INDEX_POSIX_ACL_ACCESS = 2
EXT4_XATTR_INDEX_POSIX_ACL_DEFAULT = 3
EXT4_XATTR_INDEX_TRUSTED = 4
EXT4_XATTR_INDEX_SECURITY = 6
EXT4_XATTR_INDEX_SYSTEM = 7


# POSIX ACL tags and permission bits (include/uapi/linux/posix_acl.h)
ACL_USER_OBJ, ACL_USER, ACL_GROUP_OBJ, ACL_GROUP, ACL_MASK, ACL_OTHER = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20
ACL_READ, ACL_WRITE, ACL_EXECUTE = 0x04, 0x02, 0x01
ACL_UNDEFINED_ID = 0xFFFFFFFF
POSIX_ACL_XATTR_VERSION = 2
EXT4_ACL_VERSION = 1

XATTR_HEADER = FastPacker("ext4_xattr_header")
XATTR_IBODY_HEADER = FastPacker("ext4_xattr_ibody_header")
XATTR_ENTRY = FastPacker("ext4_xattr_entry")
XATTR_HEADER_SIZE = XATTR_HEADER.size
H_CHECKSUM = XATTR_HEADER.field("h_checksum")
XATTR_BLOCK_CSUM_OFFSET = H_CHECKSUM.offset
VFS_ACL_HEADER = FastPacker("posix_acl_xattr_header")
VFS_ACL_ENTRY = FastPacker("posix_acl_xattr_entry")
ACL_HEADER = FastPacker("ext4_acl_header")
ACL_ENTRY = FastPacker("ext4_acl_entry")
ACL_ENTRY_SHORT = FastPacker("ext4_acl_entry_short")

assert XATTR_HEADER_SIZE == 32 and XATTR_ENTRY.size == 16
