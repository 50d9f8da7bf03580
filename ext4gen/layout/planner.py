"""Turn a :class:`Tree` into a complete block layout before any byte is produced.

The image is laid out as::

    block 0           boot area + superblock (sparse_super2, no backups)
    1 .. gdt          group descriptors
    G blocks          block bitmaps, one per group
    G blocks          inode bitmaps, one per group
    G * itb blocks    inode tables (UNINIT groups' tables are served as zeros)
    dir blocks        every directory's leaf blocks, in inode order
    tree blocks       extent index/leaf blocks of fragmented files
    xattr blocks      external xattr blocks, each shared by inodes with equal sets
    data blocks       unique file data, in inode order; shared blocks appear once

Metadata never shares blocks (the kernel's system zone and e2fsck forbid it);
data blocks may be shared (RO_COMPAT_SHARED_BLOCKS).  Everything is allocated:
the filesystem is exactly as large as its content, with exact free counters.

Each step lives in its own module: inode numbering and directory entries
(numbering), data and extent-tree blocks (allocation), directory storage
(directories), xattr placement (xattr_placement), UUID and hash seed
(identity), group geometry (geometry).  The result, a :class:`Plan`, holds no
reference into the tree and leaves it as it was.
"""

from __future__ import annotations

from ..format.dirhash import seed_words
from ..model.options import ImageOptions
from ..model.tree import Tree
from .allocation import FAST_SYMLINK_MAX, allocate_data, place_extent_trees
from .dedup import DataAllocator
from .directories import place_directories
from .geometry import Geometry, group_usage, solve_geometry
from .identity import choose_uuid_and_seed, identity_digest, identity_map
from .numbering import LOST_FOUND, TYPE_BITS, number_inodes
from .plan import InodePlan, Plan, XattrBlock
from .xattr_placement import place_xattrs

__all__ = ["FAST_SYMLINK_MAX", "LOST_FOUND", "TYPE_BITS", "Geometry", "InodePlan", "Plan",
           "XattrBlock", "identity_map", "plan_tree"]


def plan_tree(tree: Tree, options: ImageOptions | None = None) -> Plan:
    """Lay out every block of ``tree``; the tree is read, never changed (hard links aside).

    ``tree.resolve_links()`` completes the tree's own deferred hard links first:
    that is the tree finishing its description, not the planner editing it.
    """
    options = options or ImageOptions()
    tree.resolve_links()
    numbered = number_inodes(tree, options.base_map)
    inodes, nodes = numbered.inodes, numbered.nodes
    allocator = DataAllocator(options.dedup)
    inline_bytes = allocate_data(inodes, nodes, options, allocator)
    # After the data: the default UUID and hash seed digest the content read for dedup.
    digest = identity_digest(options, inodes, nodes, allocator.content_digest())
    uuid, hash_seed = choose_uuid_and_seed(options, digest)
    dirs = place_directories(inodes, nodes, options, seed_words(hash_seed))
    trees = place_extent_trees(inodes)
    xattr_blocks = place_xattrs(inodes, nodes)
    del numbered, nodes  # from here on nothing refers to the tree
    last_ino = len(inodes) - 1
    geo = solve_geometry(last_ino, dirs.nblocks, trees.nblocks, len(xattr_blocks), allocator.next_block)
    usage = group_usage(inodes, geo)
    return Plan(
        options=options,
        uuid=uuid,
        hash_seed=hash_seed,
        large_dir=dirs.large_dir,
        geometry=geo,
        inodes=inodes,
        last_ino=last_ino,
        dir_block_owner=dirs.owner,
        tree_block_owner=trees.owner,
        xattr_blocks=xattr_blocks,
        runs=allocator.runs,
        shared_blocks=allocator.shared,
        dedup_stats=allocator.stats,
        used_dirs_per_group=usage.dirs,
        used_inodes_per_group=usage.used,
        last_used_index_per_group=usage.last_index,
        inline_bytes=inline_bytes,
    )
