"""Where each inode's xattrs go: its spare in-inode bytes, then one shared external block.

Inline data competes for the same in-inode space (``system.data`` comes first),
so the inline decisions ask :func:`xattrs_fit_beside` before taking it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from ..errors import ManifestError
from ..format.ondisk import INODE_XATTR_SPACE, XATTR_REFCOUNT_MAX
from ..model.tree import DIR, FILE, Node
from ..model.xattrs import DiskXattr, XattrError, split_placement, to_disk
from .inline import inline_xattr_cost
from .plan import InodePlan, XattrBlock


def xattrs_fit_beside(xattrs: Mapping[bytes, bytes], inline_size: int) -> bool:
    """Inline data takes inode space from xattrs; inline only if the xattrs still fit."""
    if not xattrs:
        return True
    try:
        split_placement(to_disk(xattrs), INODE_XATTR_SPACE - inline_xattr_cost(inline_size))
    except XattrError:
        return False
    return True


def place_xattrs(inodes: Sequence[InodePlan | None], nodes: Sequence[Node | None]) -> list[XattrBlock]:
    """Split each inode's xattrs between its spare bytes and a shared external block.

    Blocks with equal content are shared up to the kernel's refcount limit; each
    inode with a block counts it in ``blocks_4k``.
    """
    blocks: list[XattrBlock] = []
    by_content: dict[tuple[DiskXattr, ...], int] = {}
    for ip, node in zip(inodes, nodes, strict=True):
        if ip is None or node is None or not node.xattrs:
            continue
        in_inode, in_block = _split(ip, node)
        ip.xattr_inode = in_inode
        if in_block:
            key = tuple(in_block)
            index = by_content.get(key)
            if index is None or blocks[index].refcount >= XATTR_REFCOUNT_MAX:
                index = len(blocks)
                blocks.append(XattrBlock(in_block, 0))
                by_content[key] = index
            blocks[index].refcount += 1
            ip.xattr_block = index
            ip.blocks_4k += 1
    return blocks


def _split(ip: InodePlan, node: Node) -> tuple[list[DiskXattr], list[DiskXattr]]:
    space = INODE_XATTR_SPACE
    if ip.inline_size >= 0:  # system.data comes first and always stays in the inode
        space -= inline_xattr_cost(ip.inline_size)
    try:
        if ip.kind not in (FILE, DIR) and any(n.startswith(b"user.") for n in node.xattrs):
            raise XattrError("the kernel allows user.* attributes only on regular files "
                             "and directories")
        return split_placement(to_disk(node.xattrs), space)
    except XattrError as e:
        raise ManifestError(node.key + ".xattrs", str(e)) from None
