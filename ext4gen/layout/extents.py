"""Minimal extent trees: their shape at plan time, their bytes on demand.

e2fsck -fn reports trees that "could be narrower/shorter", so a tree is depth 0
while it fits the inode's four slots, and otherwise the shallowest tree with
every block but the last of each level full.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..format.extents import (
    EXT4_EXT_MAGIC,
    EXTENT,
    EXTENT_HEADER,
    EXTENT_IDX,
    EXTENTS_IN_INODE,
    EXTENTS_PER_BLOCK,
)
from ..format.inode import I_BLOCK_SIZE
from ..format.superblock import BLOCK_SIZE
from .dedup import Extent


def tree_levels(n_extents: int) -> list[int]:
    """Block counts per level, leaves first; ``[]`` when the extents fit the inode."""
    levels: list[int] = []
    count = n_extents
    while count > EXTENTS_IN_INODE:
        count = -(-count // EXTENTS_PER_BLOCK)
        levels.append(count)
    return levels


class ExtentTree:
    """The extent tree of one inode.

    ``blocks`` are the absolute block numbers of the tree's blocks, leaves
    first then each index level; ``extents`` carry physical blocks relative to
    ``base`` (the plan keeps them relative: no second, absolute copy per file).
    """

    __slots__ = ("base", "blocks", "extents", "levels")

    def __init__(self, extents: Sequence[Extent], levels: list[int], blocks: Sequence[int],
                 base: int = 0) -> None:
        self.extents = extents
        self.levels = levels
        self.blocks = blocks
        self.base = base

    @property
    def depth(self) -> int:
        return len(self.levels)

    def _level_items(self, level: int) -> list[tuple[int, int]]:
        """(first logical block, block number) of each block at ``level``."""
        start = sum(self.levels[:level])
        blocks = self.blocks[start : start + self.levels[level]]
        if level == 0:
            return [(self.extents[i * EXTENTS_PER_BLOCK][0], b) for i, b in enumerate(blocks)]
        below = self._level_items(level - 1)
        return [(below[i * EXTENTS_PER_BLOCK][0], b) for i, b in enumerate(blocks)]

    def root_bytes(self) -> bytes:
        """The i_block content (60 bytes)."""
        if not self.levels:
            return _node(self.extents, self.base, 0, EXTENTS_IN_INODE).ljust(I_BLOCK_SIZE, b"\0")
        top = self._level_items(self.depth - 1)
        return _index_node(top, self.depth, EXTENTS_IN_INODE).ljust(I_BLOCK_SIZE, b"\0")

    def block_bytes(self, index: int) -> bytes:
        """Content (without the checksum tail) of tree block ``self.blocks[index]``."""
        level = 0
        while index >= self.levels[level]:
            index -= self.levels[level]
            level += 1
        lo = index * EXTENTS_PER_BLOCK
        if level == 0:
            body = _node(self.extents[lo : lo + EXTENTS_PER_BLOCK], self.base, 0, EXTENTS_PER_BLOCK)
        else:
            below = self._level_items(level - 1)
            body = _index_node(below[lo : lo + EXTENTS_PER_BLOCK], level, EXTENTS_PER_BLOCK)
        return body.ljust(BLOCK_SIZE, b"\0")


def _node(extents: Sequence[Extent], base: int, depth: int, eh_max: int) -> bytes:
    parts = [EXTENT_HEADER.pack_tuple(EXT4_EXT_MAGIC, len(extents), eh_max, depth, 0)]
    for logical, length, rel in extents:
        phys = base + rel
        parts.append(EXTENT.pack_tuple(logical, length, phys >> 32, phys & 0xFFFFFFFF))
    return b"".join(parts)


def _index_node(items: list[tuple[int, int]], depth: int, eh_max: int) -> bytes:
    parts = [EXTENT_HEADER.pack_tuple(EXT4_EXT_MAGIC, len(items), eh_max, depth, 0)]
    for logical, block in items:
        parts.append(EXTENT_IDX.pack_tuple(logical, block & 0xFFFFFFFF, block >> 32, 0))
    return b"".join(parts)

