"""Group geometry on its own: group count, inode-table size, area starts, per-group usage."""

from __future__ import annotations

import random
from dataclasses import dataclass

import pytest

from ext4gen.format.ondisk import BLOCKS_PER_GROUP, DESCS_PER_BLOCK, INODES_PER_BLOCK
from ext4gen.layout.geometry import group_usage, solve_geometry


def test_one_group_lays_the_areas_back_to_back() -> None:
    geo = solve_geometry(last_ino=20, dir_blocks=3, tree_blocks=2, xattr_blocks=1, data_blocks=10)
    assert geo.groups == 1 and geo.gdt_blocks == 1
    assert geo.itable_blocks_per_group == 2  # 20 inodes, 16 per block
    assert geo.inodes_per_group == 2 * INODES_PER_BLOCK
    assert (geo.block_bitmap_start, geo.inode_bitmap_start, geo.inode_table_start) == (2, 3, 4)
    assert (geo.dir_start, geo.tree_start, geo.xattr_start, geo.data_start) == (6, 9, 11, 12)
    assert geo.used_blocks == geo.blocks_count == 22 and geo.free_blocks == 0
    assert geo.group_block_range(0) == (0, 22)


def test_content_past_one_group_adds_groups_and_pads_only_the_forced_last_one() -> None:
    geo = solve_geometry(last_ino=11, dir_blocks=1, tree_blocks=0, xattr_blocks=0,
                         data_blocks=BLOCKS_PER_GROUP)
    assert geo.groups == 2
    assert geo.blocks_count == geo.used_blocks > BLOCKS_PER_GROUP
    assert geo.group_block_range(1) == (BLOCKS_PER_GROUP, geo.blocks_count)


def test_many_inodes_alone_force_groups_and_the_last_group_holds_a_block() -> None:
    last_ino = 3 * BLOCKS_PER_GROUP
    geo = solve_geometry(last_ino, 1, 0, 0, 0)
    assert geo.groups >= 3 and geo.inodes_count >= last_ino
    assert geo.blocks_count == max(geo.used_blocks, (geo.groups - 1) * BLOCKS_PER_GROUP + 1)
    assert geo.gdt_blocks == -(-geo.groups // DESCS_PER_BLOCK)


@dataclass
class _Kinded:
    ino: int
    kind: str


def _with(plans: dict[int, str], last_ino: int) -> list[_Kinded | None]:
    inodes: list[_Kinded | None] = [None] * (last_ino + 1)
    for ino, kind in plans.items():
        inodes[ino] = _Kinded(ino, kind)
    return inodes


def test_group_usage_counts_reserved_inodes_directories_and_the_last_used_index() -> None:
    geo = solve_geometry(last_ino=40, dir_blocks=0, tree_blocks=0, xattr_blocks=0, data_blocks=0)
    inodes = _with({2: "dir", 11: "dir", 12: "file", 40: "symlink"}, 40)  # a gap from 13 to 39
    usage = group_usage(inodes, geo)
    assert usage.used == [10 + 3]  # inodes 1..10 are always in use, then 11, 12 and 40
    assert usage.dirs == [2]
    assert usage.last_index == [39]


def _usage_one_inode_at_a_time(inodes: list[_Kinded | None], ipg: int, groups: int) -> tuple:
    """The definition, inode by inode: what group_usage computes a group at a time."""
    dirs, used, last = [0] * groups, [0] * groups, [-1] * groups
    for ino in range(1, len(inodes)):
        g, idx = divmod(ino - 1, ipg)
        ip = inodes[ino]
        if ino < 11 or ip is not None:
            used[g] += 1
            last[g] = idx
            if ip is not None and ip.kind == "dir":
                dirs[g] += 1
    return dirs, used, last


@pytest.mark.parametrize("seed", range(12))
def test_group_usage_over_many_groups_with_gaps(seed: int) -> None:
    rng = random.Random(seed)
    last_ino = rng.choice([11, 12, 5000, 40_000, 70_001])
    plans = {2: "dir", 11: "dir"} | {ino: rng.choice(["dir", "file", "symlink"])
                                     for ino in range(12, last_ino + 1) if rng.random() < 0.7}
    plans[last_ino] = "file"
    geo = solve_geometry(last_ino=last_ino, dir_blocks=3, tree_blocks=0, xattr_blocks=0,
                         data_blocks=rng.randint(0, 1 << 20))
    inodes = _with(plans, last_ino)
    usage = group_usage(inodes, geo)
    assert (usage.dirs, usage.used, usage.last_index) == _usage_one_inode_at_a_time(
        inodes, geo.inodes_per_group, geo.groups)
