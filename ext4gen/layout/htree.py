"""Hash-indexed (dir_index) directories: layout at plan time, bytes on demand.

A directory needing more than one block becomes an htree: logical block 0 is
the dx_root, then index nodes (top level first), then leaf blocks holding the
entries in (hash, minor hash, name) order, fully packed.  A leaf whose first
hash equals the previous leaf's last hash gets the collision bit (hash | 1) in
its index entry, as the kernel expects when a hash run spans leaves.
"""

from __future__ import annotations

from ..format.csum import crc32c_raw
from ..format.directory import (
    DX_COUNTLIMIT,
    DX_ENTRY,
    DX_HASH_HALF_MD4,
    DX_NODE_ENTRIES_OFFSET,
    DX_NODE_LIMIT,
    DX_ROOT_ENTRIES_OFFSET,
    DX_ROOT_INFO,
    DX_ROOT_INFO_OFFSET,
    DX_ROOT_LIMIT,
    DX_TAIL,
    EXT4_HTREE_LEVEL,
    FT_DIR,
)
from ..format.dirhash import half_md4_many
from ..format.superblock import BLOCK_SIZE
from . import dirents

MAX_INDIRECT_LEVELS = EXT4_HTREE_LEVEL - 1  # 2 needs large_dir; the planner sets it then
_ENTRY = DX_ENTRY.size
_ZERO_TAIL = DX_TAIL.pack()  # ext4_dx_csum covers dt_reserved and a zero dt_checksum


class DirectoryTooLarge(ValueError):
    pass


class Htree:
    """The index of one directory.

    ``levels[0]`` lists the leaves as (first hash incl. collision bit, entry start);
    each higher level lists (first hash, first child index) of its nodes.
    """

    __slots__ = ("entries", "first_leaf_block", "leaf_hashes", "leaf_starts", "levels", "node_blocks")

    def __init__(self, entries: list[dirents.DirEntry], seed: tuple[int, int, int, int]) -> None:
        # The kernel orders a leaf run by (hash, minor hash); ``entries`` come in name order
        # and the sort is stable, so equal hashes stay in name order.  The entry tuples are
        # shared with the caller's list, not copied.
        pairs = half_md4_many([e[0] for e in entries], seed)
        keys = [(major << 32) | minor for major, minor in pairs]
        order = sorted(range(len(entries)), key=keys.__getitem__)
        self.entries: list[dirents.DirEntry] = [entries[i] for i in order]
        hashes = [keys[i] >> 32 for i in order]
        self.leaf_starts = dirents.split_blocks(self.entries)
        self.leaf_hashes = []
        for i, start in enumerate(self.leaf_starts):
            h = hashes[start]
            if i and hashes[start - 1] == h:
                h |= 1
            self.leaf_hashes.append(h)
        # levels of index nodes below the root, bottom-up; each node holds <= DX_NODE_LIMIT children
        counts = [len(self.leaf_starts)]
        while counts[-1] > DX_ROOT_LIMIT:
            if len(counts) > MAX_INDIRECT_LEVELS:
                raise DirectoryTooLarge("directory too large even for a 3-level htree")
            counts.append(-(-counts[-1] // DX_NODE_LIMIT))
        self.levels = counts  # counts[0] = leaves, counts[k] = nodes at indirect level k
        self.node_blocks = sum(counts[1:])
        self.first_leaf_block = 1 + self.node_blocks

    @property
    def indirect_levels(self) -> int:
        return len(self.levels) - 1

    @property
    def nblocks(self) -> int:
        return self.first_leaf_block + len(self.leaf_starts)

    def _level_first_block(self, level: int) -> int:
        """Logical block of the first node at ``level`` (top level right after the root)."""
        if level == 0:
            return self.first_leaf_block
        return 1 + sum(self.levels[level + 1 :])

    def _children(self, level: int, first: int, count: int) -> list[tuple[int, int]]:
        """(hash, logical block) of children ``first..first+count`` at ``level``."""
        base = self._level_first_block(level)
        out = []
        for i in range(first, first + count):
            out.append((self._first_hash(level, i), base + i))
        return out

    def _first_hash(self, level: int, index: int) -> int:
        while level > 0:
            index *= DX_NODE_LIMIT
            level -= 1
        return self.leaf_hashes[index]

    def block_bytes(self, k: int, dir_ino: int, parent_ino: int, csum_seed: int) -> bytes:
        """Logical block ``k`` of the directory, checksummed with the inode's seed."""
        if k >= self.first_leaf_block:
            leaf = k - self.first_leaf_block
            starts = self.leaf_starts
            end = starts[leaf + 1] if leaf + 1 < len(starts) else len(self.entries)
            buf = dirents.block_bytes(self.entries[starts[leaf] : end])
            dirents.set_checksum(buf, csum_seed)
            return bytes(buf)
        if k == 0:
            top = self.indirect_levels
            children = self._children(top, 0, self.levels[top])
            buf = bytearray(BLOCK_SIZE)
            # dx_root: "." and ".." (its rec_len covers the rest of the block), then the info
            dirents.pack_entries(buf, 0, BLOCK_SIZE, [(b".", dir_ino, FT_DIR), (b"..", parent_ino, FT_DIR)])
            DX_ROOT_INFO.pack_into(buf, DX_ROOT_INFO_OFFSET, 0, DX_HASH_HALF_MD4, DX_ROOT_INFO.size, top, 0)
            return _finish_index(buf, DX_ROOT_ENTRIES_OFFSET, DX_ROOT_LIMIT, children, csum_seed)
        # an index node: find its level and position
        rel = k - 1
        level = self.indirect_levels
        while rel >= self.levels[level]:
            rel -= self.levels[level]
            level -= 1
        below = self.levels[level - 1]
        first = rel * DX_NODE_LIMIT
        children = self._children(level - 1, first, min(DX_NODE_LIMIT, below - first))
        buf = bytearray(BLOCK_SIZE)
        dirents.pack_entries(buf, 0, BLOCK_SIZE, [])  # dx_node's fake dirent: one empty entry
        return _finish_index(buf, DX_NODE_ENTRIES_OFFSET, DX_NODE_LIMIT, children, csum_seed)


def _finish_index(buf: bytearray, offset: int, limit: int, children: list[tuple[int, int]],
                  csum_seed: int) -> bytes:
    """Write the dx_entry array at ``offset`` and the dx_tail after its ``limit`` slots."""
    DX_ENTRY.pack_into(buf, offset, 0, children[0][1])  # entry 0: the hash slot holds count/limit
    DX_COUNTLIMIT.pack_into(buf, offset, limit, len(children))
    for i, (h, block) in enumerate(children[1:], start=1):
        DX_ENTRY.pack_into(buf, offset + _ENTRY * i, h, block)
    tail = offset + _ENTRY * limit
    # ext4_dx_csum: the block up to the last used entry, then the tail with a zero checksum
    csum = crc32c_raw(csum_seed, memoryview(buf)[: offset + _ENTRY * len(children)])
    csum = crc32c_raw(csum, _ZERO_TAIL)
    DX_TAIL.pack_into(buf, tail, 0, csum)
    return bytes(buf)
