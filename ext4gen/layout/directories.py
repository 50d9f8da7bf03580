"""Directory storage: inline in the inode, one linear block, or an htree.

Directory blocks are metadata: they get their own area (before the extent trees)
in inode order, with extents relative to that area's start.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from ..errors import ManifestError
from ..format.ondisk import BLOCK_SIZE, EXT4_INDEX_FL, EXT4_INLINE_DATA_FL, FIRST_INO, ROOT_INO
from ..model.options import ImageOptions
from ..model.tree import DIR, Node
from . import dirents
from .dedup import ExtentBuilder
from .htree import DirectoryTooLarge, Htree
from .inline import inline_dir_size
from .plan import InodePlan
from .xattr_placement import xattrs_fit_beside


@dataclass
class DirectoryArea:
    """The directory area: its size, per block (directory, block index), and large_dir."""

    nblocks: int = 0
    owner: list[tuple[InodePlan, int]] = field(default_factory=list)
    large_dir: bool = False  # some htree needs three levels (INCOMPAT_LARGEDIR)


def place_directories(inodes: Sequence[InodePlan | None], nodes: Sequence[Node | None],
                      options: ImageOptions, hash_words: tuple[int, int, int, int]) -> DirectoryArea:
    """Choose each directory's storage and give the block-based ones their blocks."""
    area = DirectoryArea()
    for ip, node in zip(inodes, nodes, strict=True):
        if ip is None or node is None or ip.kind != DIR:
            continue
        assert ip.entries is not None
        # the kernel rejects a root without blocks; e2fsck wants lost+found in blocks
        inline_size = (inline_dir_size(ip.entries)
                       if options.inline_data and ip.ino not in (ROOT_INO, FIRST_INO) else None)
        if inline_size is not None and xattrs_fit_beside(node.xattrs, inline_size):
            ip.inline_size = inline_size
            ip.size = inline_size
            ip.flags |= EXT4_INLINE_DATA_FL
            continue
        nblocks = _index_if_needed(ip, node, hash_words, area)
        ip.in_data_area = False
        ip.size = nblocks * BLOCK_SIZE
        builder = ExtentBuilder()
        builder.add(0, area.nblocks, nblocks)
        ip.extents = builder.finish()
        area.owner.extend((ip, i) for i in range(nblocks))
        area.nblocks += nblocks
    return area


def _index_if_needed(ip: InodePlan, node: Node, hash_words: tuple[int, int, int, int],
                     area: DirectoryArea) -> int:
    """One block if the entries fit it, else an htree; return the block count."""
    assert ip.entries is not None
    if dirents.fits_one_block(ip.entries):
        return 1
    try:
        ip.htree = Htree(ip.entries[2:], hash_words)
    except DirectoryTooLarge as e:
        raise ManifestError(node.key, str(e)) from None
    ip.flags |= EXT4_INDEX_FL
    area.large_dir = area.large_dir or ip.htree.indirect_levels > 1
    return ip.htree.nblocks
