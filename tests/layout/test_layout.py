"""Geometry and allocation: minimal extent trees, several groups, UNINIT groups, exact counters.

The planner promises a filesystem exactly as large as its content, fully
allocated, with counters that add up.  dumpe2fs and debugfs are the
independent readers here: if our own parser agreed with our own writer, a
shared misunderstanding would go unnoticed.
"""

from __future__ import annotations

import re
import struct
import subprocess
from pathlib import Path

import pytest
from conftest import prove
from helpers.readers import dumpe2fs, superblock

import ext4gen
from ext4gen.format.definitions import ext4_extent_header, ext4_inode
from ext4gen.format.ondisk import BLOCK_SIZE, BLOCKS_PER_GROUP, INODE_SIZE
from ext4gen.layout.extents import tree_levels

pytestmark = pytest.mark.root

REQUIRED_FEATURES = {"filetype", "extent", "flex_bg", "64bit", "metadata_csum", "huge_file",
                     "dir_nlink", "extra_isize", "large_file", "sparse_super", "ext_attr",
                     "read-only"}
FORBIDDEN_FEATURES = {"has_journal", "resize_inode"}


def _meta(perm: int = 0o644) -> ext4gen.Meta:
    return ext4gen.Meta(perm, 0, 0, 0, 0, 0, 0)


class BlockPattern(ext4gen.Source):
    """Block ``i`` is unique, derived from ``order[i]`` (so a permuted order reuses blocks)."""

    def __init__(self, order: list[int], salt: int = 0) -> None:
        self.order = order
        self.salt = salt
        self.size = len(order) * BLOCK_SIZE

    def block(self, n: int) -> bytes:
        return struct.pack("<QQ", self.salt + 1, n) * (BLOCK_SIZE // 16)  # never all-zero

    def readinto(self, buf: memoryview, offset: int) -> None:
        first, skip = divmod(offset, BLOCK_SIZE)
        last = -(-(offset + len(buf)) // BLOCK_SIZE)
        data = b"".join(self.block(self.order[i]) for i in range(first, last))
        buf[:] = data[skip : skip + len(buf)]


class StoredZeros(ext4gen.Source):
    """Zeros that claim no holes: with dedup "none" every block is allocated.

    Cheap bulk: the planner allocates real blocks, while the written image file
    stays sparse (all-zero chunks are not written).
    """

    def __init__(self, size: int) -> None:
        self.size = size

    def readinto(self, buf: memoryview, offset: int) -> None:
        buf[:] = bytes(len(buf))


def _tree() -> ext4gen.Tree:
    return ext4gen.Tree(_meta(0o755))


def _add_file(tree: ext4gen.Tree, path: str, source: ext4gen.Source) -> ext4gen.Node:
    return tree.add(path, ext4gen.Node("file", _meta(), source=source))


def _disk_inode(image_path: Path, ino: int) -> dict:
    sb = superblock(image_path)
    with open(image_path, "rb") as f:
        g, idx = divmod(ino - 1, sb.s_inodes_per_group)
        # group descriptor g (block 1 onwards, 64 bytes each): bg_inode_table_lo/_hi
        f.seek(BLOCK_SIZE + g * 64 + 8)
        (it_lo,) = struct.unpack("<I", f.read(4))
        f.seek(BLOCK_SIZE + g * 64 + 0x28)
        (it_hi,) = struct.unpack("<I", f.read(4))
        f.seek(((it_hi << 32) | it_lo) * BLOCK_SIZE + idx * INODE_SIZE)
        return ext4_inode.parse(f.read(INODE_SIZE))


def _debugfs_depth(image_path: Path, path: str) -> int:
    out = subprocess.run(["debugfs", "-R", f"ex {path}", str(image_path)], capture_output=True,
                         text=True, check=True).stdout
    levels = re.findall(r"^\s*\d+/\s*(\d+)\s", out, re.M)
    return int(levels[0]) if levels else 0


@pytest.mark.parametrize("n_extents", [4, 5, 340 * 4, 340 * 4 + 1])
def test_extent_tree_is_minimal(tmp_path: Path, n_extents: int) -> None:
    """A reversed copy of a file dedups onto it with one extent per block, in reverse."""
    tree = _tree()
    _add_file(tree, "/a", BlockPattern(list(range(n_extents))))
    _add_file(tree, "/b", BlockPattern(list(reversed(range(n_extents)))))
    proof = prove(tree, tmp_path)
    ip = dict(proof.image.plan.paths())[b"/b"]
    assert len(ip.extents) == n_extents
    want_depth = 0 if n_extents <= 4 else (1 if n_extents <= 1360 else 2)
    inode = _disk_inode(proof.path, ip.ino)
    header = ext4_extent_header.parse(inode.i_block)
    assert header.eh_magic == 0xF30A
    assert header.eh_depth == want_depth
    assert _debugfs_depth(proof.path, "/b") == want_depth
    # fully packed: one inode slot per top node, leaves of 340 entries
    levels = tree_levels(n_extents)
    assert header.eh_entries == (levels[-1] if levels else n_extents)
    assert proof.image.block_counts()["extent_tree"] == sum(levels)
    # i_blocks counts the tree blocks too
    assert inode.i_blocks_lo == (n_extents + sum(levels)) * (BLOCK_SIZE // 512)


def test_features_exactly_as_specified(tmp_path: Path) -> None:
    tree = _tree()
    _add_file(tree, "/f", ext4gen.InlineSource(b"x"))
    proof = prove(tree, tmp_path, check_rw=False)
    header, _groups = dumpe2fs(proof.path)
    features = set(header["Filesystem features"].split())
    assert REQUIRED_FEATURES <= features
    assert not features & FORBIDDEN_FEATURES
    assert "shared_blocks" not in features
    assert header["Block size"] == "4096"
    assert header["Inode size"] == "256"
    assert header["Reserved block count"] == "0"
    assert header["Free blocks"] == "0"


def _group_stats(lines: list[str]) -> list[dict]:
    groups = []
    for line in lines:
        m = re.match(r"Group (\d+): \(Blocks (\d+)-(\d+)\).*?(\[.*\])?$", line)
        if m:
            groups.append({"first": int(m[2]), "last": int(m[3]), "flags": m[4] or ""})
            continue
        m = re.match(r"\s+(\d+) free blocks, (\d+) free inodes, (\d+) directories", line)
        if m:
            groups[-1].update(free_blocks=int(m[1]), free_inodes=int(m[2]), dirs=int(m[3]))
    return groups


def _distinct_inodes(tree: ext4gen.Tree) -> tuple[int, int]:
    """(inodes, directories) reachable in the tree, counting hard links once."""
    seen: dict[int, ext4gen.Node] = {}
    stack = [tree.root]
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen[id(node)] = node
        if node.children:
            stack.extend(node.children.values())
    dirs = sum(1 for n in seen.values() if n.kind == "dir")
    return len(seen), dirs


def _check_counters(path: Path, tree: ext4gen.Tree, free_blocks: int = 0,
                    ) -> tuple[dict[str, str], list[dict]]:
    header, lines = dumpe2fs(path)
    groups = _group_stats(lines)
    inodes, dirs = _distinct_inodes(tree)  # includes root
    assert tree.root.children is not None
    if b"lost+found" not in tree.root.children:  # planned, though the tree does not hold it
        inodes, dirs = inodes + 1, dirs + 1
    used_inodes = 10 + inodes - 1  # reserved 1..10 (root is 2) plus every other inode
    inode_count = int(header["Inode count"])
    assert int(header["Free inodes"]) == inode_count - used_inodes
    assert int(header["Free blocks"]) == free_blocks
    assert int(header["Block count"]) == groups[-1]["last"] + 1
    assert sum(g["free_blocks"] for g in groups) == free_blocks
    assert sum(g["free_inodes"] for g in groups) == inode_count - used_inodes
    assert sum(g["dirs"] for g in groups) == dirs
    assert len(groups) == -(-int(header["Block count"]) // BLOCKS_PER_GROUP)
    return header, groups


def test_single_group_counters_exact(tmp_path: Path) -> None:
    tree = _tree()
    for i in range(37):
        _add_file(tree, f"/d{i % 4}/f{i}", BlockPattern([i] * (i % 3)))
    proof = prove(tree, tmp_path, check_rw=False)
    header, groups = _check_counters(proof.path, tree)
    assert len(groups) == 1
    counts = proof.image.block_counts()
    assert counts["free"] == 0
    assert sum(v for k, v in counts.items() if k != "free") == int(header["Block count"])
    # inode table no larger than needed
    assert int(header["Inode blocks per group"]) == -(-proof.image.plan.last_ino // 16)


def test_several_groups_hold_data_and_inodes(tmp_path: Path) -> None:
    """> 32768 used blocks and thousands of inodes: every group holds inodes and blocks."""
    tree = _tree()
    _add_file(tree, "/stored", StoredZeros(34_000 * BLOCK_SIZE))
    for i in range(3000):
        _add_file(tree, f"/many/d{i // 100:02d}/f{i:04d}", ext4gen.InlineSource(b"%d\n" % i))
    out = tmp_path / "img"
    out.mkdir()
    proof = prove(tree, out, options=ext4gen.ImageOptions(dedup="none"), check_rw=False)
    header, groups = _check_counters(proof.path, tree)
    assert len(groups) == 2
    ipg = int(header["Inodes per group"])
    assert all(g["free_inodes"] < ipg for g in groups), "every group should hold inodes"
    assert all(g["free_blocks"] == 0 for g in groups)
    assert not any("UNINIT" in g["flags"] for g in groups)


def test_uninit_groups_are_flagged_and_served_as_zeros(tmp_path: Path) -> None:
    """Three groups forced by data, inodes only in group 0: INODE_UNINIT for 1 and 2."""
    tree = _tree()
    _add_file(tree, "/a", StoredZeros((2 * BLOCKS_PER_GROUP + 100) * BLOCK_SIZE))
    _add_file(tree, "/b", ext4gen.InlineSource(b"small"))
    out = tmp_path / "img"
    out.mkdir()
    proof = prove(tree, out, dedup="none", check_rw=False)
    _header, groups = _check_counters(proof.path, tree)
    assert len(groups) == 3
    assert "INODE_UNINIT" not in groups[0]["flags"]
    assert all("INODE_UNINIT" in g["flags"] for g in groups[1:])
    geo = proof.image.plan.geometry
    zero_blocks = {s // BLOCK_SIZE for s, e, kind in proof.image.regions()
                   if kind == "zero" for s in range(s, e, BLOCK_SIZE)}
    for g in (1, 2):
        assert geo.inode_bitmap_start + g in zero_blocks
        assert geo.inode_table_start + g * geo.itable_blocks_per_group in zero_blocks


def test_block_uninit_group_when_inodes_force_groups(tmp_path: Path) -> None:
    """> 65536 inodes need three groups while the blocks fit in one: group 1 is BLOCK_UNINIT."""
    tree = _tree()
    empty = ext4gen.InlineSource(b"")
    for i in range(65_600):
        _add_file(tree, f"/d{i // 500:03d}/{i:05d}", empty)
    # every file is empty: sizes are compared, opening 65,600 files would add nothing
    proof = prove(tree, tmp_path, check_rw=False, check_content=False)
    counts = proof.image.block_counts()
    used = sum(v for k, v in counts.items() if k != "free")
    assert used < BLOCKS_PER_GROUP
    # three groups need a block in the last one: the only padding the planner may add
    _header, groups = _check_counters(proof.path, tree, free_blocks=2 * BLOCKS_PER_GROUP + 1 - used)
    assert len(groups) == 3
    assert "BLOCK_UNINIT" in groups[1]["flags"]
    assert "BLOCK_UNINIT" not in groups[0]["flags"] + groups[2]["flags"]


def test_blocks_count_matches_block_counts(tmp_path: Path) -> None:
    """The image is exactly as large as its content: block_counts add up to the size."""
    tree = _tree()
    _add_file(tree, "/x", BlockPattern([1, 2, 3, 1]))
    _add_file(tree, "/y", ext4gen.ZeroSource(1 << 30))
    image = ext4gen.plan(tree)
    counts = image.block_counts()
    sb = superblock(image)
    total = sb.s_blocks_count_lo | (sb.s_blocks_count_hi << 32)
    assert total * BLOCK_SIZE == image.size
    assert sum(counts.values()) == total
    assert counts["data"] == 3
