"""xattr values in the kernel's VFS layout, written here rather than taken from ext4gen.

Host trees are made with these, so a misunderstanding shared by ext4gen's own
encoder and its decoder cannot hide.
"""

from __future__ import annotations

import struct

# POSIX ACL tags and the kernel's VFS xattr layout (linux/posix_acl_xattr.h)
ACL_USER_OBJ, ACL_USER, ACL_GROUP_OBJ, ACL_GROUP, ACL_MASK, ACL_OTHER = 1, 2, 4, 8, 16, 32
ACL_UNDEFINED_ID = 0xFFFFFFFF
_TAGS = {"u": (ACL_USER_OBJ, ACL_USER), "g": (ACL_GROUP_OBJ, ACL_GROUP), "m": (ACL_MASK, ACL_MASK),
         "o": (ACL_OTHER, ACL_OTHER)}


def vfs_acl(text: str) -> bytes:
    """``"u::rw-,u:1000:r--,g::r--,m::r--,o::---"`` → what setxattr(system.posix_acl_*) takes.

    Written here rather than borrowed from ext4gen.model.xattrs, so host trees are
    made without the code under test.  Entries must be given in kernel order.
    """
    out = [struct.pack("<I", 2)]
    for item in text.split(","):
        tag_s, qual, perm_s = item.split(":")
        perm = sum(bit for ch, bit in zip(perm_s, (4, 2, 1), strict=True) if ch != "-")
        obj_tag, named_tag = _TAGS[tag_s]
        tag, qid = (named_tag, int(qual)) if qual else (obj_tag, ACL_UNDEFINED_ID)
        out.append(struct.pack("<HHI", tag, perm, qid))
    return b"".join(out)


def capability_v2(permitted: int, inheritable: int = 0, effective: bool = True) -> bytes:
    """A VFS_CAP_REVISION_2 ``security.capability`` value (linux/capability.h)."""
    magic = 0x02000000 | (1 if effective else 0)
    return struct.pack("<IIIII", magic, permitted & 0xFFFFFFFF, inheritable & 0xFFFFFFFF,
                       permitted >> 32, inheritable >> 32)

