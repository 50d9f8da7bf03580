"""Data and extent-tree allocation on their own, after numbering and before directories."""

from __future__ import annotations

import pytest

import ext4gen
from ext4gen.errors import ManifestError
from ext4gen.format.ondisk import BLOCK_SIZE, EXT4_EXTENTS_FL, EXT4_INLINE_DATA_FL
from ext4gen.layout.allocation import FAST_SYMLINK_MAX, allocate_data, place_extent_trees
from ext4gen.layout.dedup import DataAllocator
from ext4gen.layout.numbering import Numbered, number_inodes
from ext4gen.layout.plan import InodePlan
from ext4gen.model.options import ImageOptions


def _meta(perm: int = 0o644) -> ext4gen.Meta:
    return ext4gen.Meta(perm, 0, 0, 0, 0, 0, 0)


def _numbered(files: dict[str, bytes], links: dict[str, bytes] | None = None) -> Numbered:
    tree = ext4gen.Tree(_meta(0o755))
    for path, data in files.items():
        tree.add(path, ext4gen.Node("file", _meta(), source=ext4gen.InlineSource(data)))
    for path, target in (links or {}).items():
        tree.add(path, ext4gen.Node("symlink", _meta(0o777), target=target))
    return number_inodes(tree, None)


def _by_size(n: Numbered) -> dict[int, InodePlan]:
    return {ip.size: ip for ip in n.inodes if ip is not None and ip.kind != "dir"}


def test_small_files_go_inline_and_others_get_blocks_in_inode_order() -> None:
    n = _numbered({"/a": b"x" * 100, "/b": b"y" * (2 * BLOCK_SIZE), "/c": b"z" * (BLOCK_SIZE + 1)})
    allocator = DataAllocator("none")  # repeated bytes: with dedup they would share one block
    inline_bytes = allocate_data(n.inodes, n.nodes, ImageOptions(inline_data=True), allocator)
    assert inline_bytes == {}  # only host files are read at plan time
    by_size = _by_size(n)
    small, two, over_one = by_size[100], by_size[2 * BLOCK_SIZE], by_size[BLOCK_SIZE + 1]
    assert small.inline_size == 100 and small.flags & EXT4_INLINE_DATA_FL and not small.extents
    assert list(two.extents) == [(0, 2, 0)]
    assert list(over_one.extents) == [(0, 2, 2)]
    assert allocator.next_block == 4


def test_without_inline_data_every_non_empty_file_has_blocks() -> None:
    n = _numbered({"/a": b"x" * 100, "/e": b""})
    allocate_data(n.inodes, n.nodes, ImageOptions(inline_data=False), DataAllocator("content"))
    by_size = _by_size(n)
    assert by_size[100].inline_size == -1 and list(by_size[100].extents) == [(0, 1, 0)]
    assert not by_size[0].extents


def test_only_symlinks_longer_than_i_block_get_a_data_block() -> None:
    n = _numbered({}, {"/fast": b"t" * FAST_SYMLINK_MAX, "/slow": b"t" * (FAST_SYMLINK_MAX + 1)})
    allocate_data(n.inodes, n.nodes, ImageOptions(), DataAllocator("content"))
    by_size = _by_size(n)
    assert not by_size[FAST_SYMLINK_MAX].extents
    assert list(by_size[FAST_SYMLINK_MAX + 1].extents) == [(0, 1, 0)]


def test_a_file_over_ext4s_size_limit_is_refused_with_its_key() -> None:
    n = _numbered({"/a": b""})
    ip = _by_size(n)[0]
    ip.source = n.nodes[ip.ino].source = ext4gen.ZeroSource(1 << 60)  # type: ignore[union-attr]
    n.nodes[ip.ino].key = "files.a"  # type: ignore[union-attr]
    with pytest.raises(ManifestError, match=r"files\.a.*file size limit"):
        allocate_data(n.inodes, n.nodes, ImageOptions(), DataAllocator("content"))


def test_extent_trees_get_blocks_only_past_four_extents() -> None:
    def ip(n_extents: int, kind: str = "file") -> InodePlan:
        p = InodePlan(ino=12, kind=kind, meta=_meta(), mode=0)
        p.extents = [(2 * i, 1, 2 * i) for i in range(n_extents)]
        return p

    four, five, symlink, fifo = ip(4), ip(5), ip(1, "symlink"), ip(0, "fifo")
    area = place_extent_trees([None, four, five, symlink, fifo])
    assert area.nblocks == 1 and area.owner == [(five, 0)]
    assert (four.n_tree_blocks, five.n_tree_blocks, five.tree_start) == (0, 1, 0)
    assert (four.blocks_4k, five.blocks_4k, symlink.blocks_4k) == (4, 5 + 1, 1)
    assert four.flags & EXT4_EXTENTS_FL and symlink.flags & EXT4_EXTENTS_FL
    assert not fifo.flags & EXT4_EXTENTS_FL  # nothing to map
