"""Directory storage on its own: inline, one block, or an htree in the directory area."""

from __future__ import annotations

import ext4gen
from ext4gen.format.dirhash import seed_words
from ext4gen.format.ondisk import BLOCK_SIZE, EXT4_INDEX_FL, EXT4_INLINE_DATA_FL
from ext4gen.layout.directories import place_directories
from ext4gen.layout.numbering import number_inodes
from ext4gen.model.options import ImageOptions

SEED = seed_words(bytes(range(16)))


def _meta(perm: int = 0o755) -> ext4gen.Meta:
    return ext4gen.Meta(perm, 0, 0, 0, 0, 0, 0)


def _plan_dirs(n_big: int, inline: bool):  # type: ignore[no-untyped-def]
    tree = ext4gen.Tree(_meta())
    tree.add("/small/f", ext4gen.Node("fifo", _meta(0o644)))
    for i in range(n_big):
        tree.add(f"/big/{i:0200d}", ext4gen.Node("fifo", _meta(0o644)))
    n = number_inodes(tree, None)
    area = place_directories(n.inodes, n.nodes, ImageOptions(inline_data=inline), SEED)
    dirs = {ip.entries[0][1]: ip for ip in n.inodes if ip is not None and ip.kind == "dir"}
    return area, dirs


def test_root_and_lost_found_keep_blocks_while_small_directories_go_inline() -> None:
    area, dirs = _plan_dirs(0, inline=True)
    root, lost_found, small = dirs[2], dirs[11], dirs[12]
    assert small.flags & EXT4_INLINE_DATA_FL and small.inline_size == small.size > 0
    assert not small.extents
    assert [list(d.extents) for d in (root, lost_found)] == [[(0, 1, 0)], [(0, 1, 1)]]
    assert area.nblocks == 2  # root and lost+found only
    assert not root.in_data_area and root.size == BLOCK_SIZE


def test_a_directory_past_one_block_becomes_an_htree_with_consecutive_blocks() -> None:
    area, dirs = _plan_dirs(40, inline=False)  # 40 entries of 200+ bytes: three leaves or more
    big = next(d for d in dirs.values() if d.htree is not None)
    assert big.flags & EXT4_INDEX_FL
    first = big.extents[0][2]
    assert list(big.extents) == [(0, big.htree.nblocks, first)]
    assert [k for ip, k in area.owner if ip is big] == list(range(big.htree.nblocks))
    assert area.nblocks == sum(e[1] for d in dirs.values() for e in d.extents)
    assert not area.large_dir
