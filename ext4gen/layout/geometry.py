"""Block groups: how many, how big their inode tables, where each area starts.

Solved last, once the sizes of the directory, extent-tree, xattr and data areas
are known, so the filesystem is exactly as large as its content.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from ..errors import ManifestError
from ..format.ondisk import BLOCKS_PER_GROUP, DESCS_PER_BLOCK, FIRST_INO, INODES_PER_BLOCK
from ..model.tree import DIR


@dataclass
class Geometry:
    groups: int
    inodes_per_group: int
    itable_blocks_per_group: int
    gdt_blocks: int
    blocks_count: int
    used_blocks: int
    block_bitmap_start: int
    inode_bitmap_start: int
    inode_table_start: int
    dir_start: int
    tree_start: int
    xattr_start: int
    data_start: int
    log_groups_per_flex: int

    @property
    def inodes_count(self) -> int:
        return self.groups * self.inodes_per_group

    @property
    def free_blocks(self) -> int:
        return self.blocks_count - self.used_blocks

    def group_block_range(self, g: int) -> tuple[int, int]:
        start = g * BLOCKS_PER_GROUP
        return start, min(start + BLOCKS_PER_GROUP, self.blocks_count)


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def solve_geometry(last_ino: int, dir_blocks: int, tree_blocks: int, xattr_blocks: int,
                   data_blocks: int) -> Geometry:
    """Smallest group count whose metadata plus content fits; pad only if forced."""

    def layout(groups: int) -> tuple[int, int, int, int]:
        itb = max(1, ceil_div(ceil_div(last_ino, groups), INODES_PER_BLOCK))
        ipg = itb * INODES_PER_BLOCK
        gdt = ceil_div(groups, DESCS_PER_BLOCK)
        used = (1 + gdt + 2 * groups + groups * itb + dir_blocks + tree_blocks + xattr_blocks
                + data_blocks)
        return ipg, itb, gdt, used

    groups = max(1, ceil_div(last_ino, BLOCKS_PER_GROUP))
    while True:
        ipg, itb, gdt, used = layout(groups)
        need = ceil_div(used, BLOCKS_PER_GROUP)
        if need <= groups:
            break
        groups += 1
    if used >= 1 << 48:
        raise ManifestError("/", "the image would exceed ext4's 2^48-block limit")
    # Every group must hold at least one block; pad the last one if the fit is loose.
    blocks_count = max(used, (groups - 1) * BLOCKS_PER_GROUP + 1)
    bb = 1 + gdt
    ib = bb + groups
    it = ib + groups
    dir_start = it + groups * itb
    flex = max(4, (groups - 1).bit_length())
    return Geometry(
        groups=groups, inodes_per_group=ipg, itable_blocks_per_group=itb, gdt_blocks=gdt,
        blocks_count=blocks_count, used_blocks=used, block_bitmap_start=bb,
        inode_bitmap_start=ib, inode_table_start=it, dir_start=dir_start,
        tree_start=dir_start + dir_blocks, xattr_start=dir_start + dir_blocks + tree_blocks,
        data_start=dir_start + dir_blocks + tree_blocks + xattr_blocks,
        log_groups_per_flex=min(flex, 31),
    )


class _HasKind(Protocol):
    ino: int
    kind: str


@dataclass
class GroupUsage:
    """Per group: directories, used inodes, and the index of the last used inode (-1: none)."""

    dirs: list[int]
    used: list[int]
    last_index: list[int]


def group_usage(inodes: Sequence[_HasKind | None], geo: Geometry) -> GroupUsage:
    """Count what each group's descriptor and inode bitmap report.

    Reserved inodes 1..10 are in use whether or not they have a plan.
    """
    ipg = geo.inodes_per_group
    usage = GroupUsage([0] * geo.groups, [0] * geo.groups, [-1] * geo.groups)
    dirs, used, last_idx = usage.dirs, usage.used, usage.last_index
    # a group at a time (slices and list.count run in C); inode numbers start at 1
    for g in range(min(geo.groups, -(-(len(inodes) - 1) // ipg))):
        lo = g * ipg + 1
        chunk = inodes[lo : lo + ipg]
        reserved = max(0, min(FIRST_INO - lo, len(chunk)))  # inodes 1..10: in use, plan or not
        used[g] = len(chunk) - chunk.count(None) + chunk[:reserved].count(None)
        last = len(chunk) - 1
        while last >= reserved and chunk[last] is None:
            last -= 1
        last_idx[g] = max(last, reserved - 1)
    for ip in inodes:
        if ip is not None and ip.kind == DIR:
            dirs[(ip.ino - 1) // ipg] += 1
    return usage
